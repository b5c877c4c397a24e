"""Conversion of synthetic participants: stitched channels against the generator's truth,
de-identification, reruns, and a real workflow run with broken deliveries."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from dicom_helpers import progress_outcomes, write_sheet, zip_folder
from pydicom.uid import RLELossless
from scipy import ndimage
from test_workflow import INGESTION, ROOT, check, copy_workflow, job_counts, snakemake

from myoflow.cli import main
from myoflow.core.io import read_tsv
from myoflow.ingest import convert as conv
from myoflow.ingest.settings import IngestSettings
from myoflow.ingest.sources import IgnoredFile, read_member
from myoflow.ingest.stitch import UKBB_SPACING_MM
from myoflow.synth.cohort import CohortSpec, generate_cohort
from myoflow.synth.geometry import protocol
from myoflow.synth.signal import NOISE_SIGMA, ArtefactRates

NO_ARTEFACTS = ArtefactRates(swap=0, partial_swap=0, missing_station=0, missing_channel=0)
NATIVE = IngestSettings(spacing_mm=None)
BODY = 5 * NOISE_SIGMA
"""Noiseless water above 5 sigma: where Rician noise is as good as Gaussian (bias < 1 %)."""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Three small UK Biobank participants without artefacts, with noiseless water."""
    out = tmp_path_factory.mktemp("cohort")
    spec = CohortSpec(
        out=out,
        participants=3,
        protocol="ukbb",
        seed=21,
        size="small",
        rates=NO_ARTEFACTS,
        noiseless=True,
    )
    generate_cohort(spec)
    return out


def convert(dicom: Path, out: Path, settings: IngestSettings, pid: str = "P1") -> list[str]:
    """Convert one participant through the shard function; return its log lines."""
    members = pd.DataFrame({"participant_id": [pid], "shard": ["r1-0000"], "dicom_path": [dicom]})
    inventory = pd.DataFrame({"participant_id": [pid], "status": ["ok"], "reason": [""]})
    lines: list[str] = []
    conv.convert_shard(members, out, inventory, settings, log=lines.append)
    return progress_outcomes(lines)


@pytest.fixture(scope="module")
def native(cohort, tmp_path_factory) -> Path:
    """ukbb000001 converted at native spacing; returns its dixon folder."""
    out = tmp_path_factory.mktemp("native")
    convert(cohort / "dicom" / "ukbb000001", out, NATIVE)
    return out / "P1" / "dixon"


@pytest.fixture(scope="module")
def ukbb_grid(cohort, tmp_path_factory) -> Path:
    """ukbb000001 converted onto the default (UK Biobank, 2.232 mm) grid."""
    out = tmp_path_factory.mktemp("ukbb_grid")
    convert(cohort / "dicom" / "ukbb000001", out, IngestSettings())
    return out / "P1" / "dixon"


def truth(cohort: Path, name: str) -> nib.Nifti1Image:
    return nib.load(cohort / "truth" / "ukbb000001" / f"{name}.nii.gz")


def voxel_map(source: nib.Nifti1Image, target: nib.Nifti1Image) -> np.ndarray:
    """(3, *target.shape) voxel indices into ``source`` of every voxel of ``target``."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in target.shape], indexing="ij"))
    to_source = np.linalg.inv(source.affine) @ target.affine
    points = to_source[:3, :3] @ index.reshape(3, -1) + to_source[:3, 3:4]
    return points.reshape(3, *target.shape)


def nearest(labels: nib.Nifti1Image, target: nib.Nifti1Image) -> np.ndarray:
    """``labels`` resampled nearest-neighbour onto ``target``'s grid (0 outside)."""
    index = np.rint(voxel_map(labels, target)).astype(int)
    inside = np.all((index >= 0) & (index < np.array(labels.shape)[:, None, None, None]), axis=0)
    out = np.zeros(target.shape, dtype=np.asarray(labels.dataobj).dtype)
    out[inside] = np.asarray(labels.dataobj)[tuple(index[:, inside])]
    return out


def rms_inside_body(ours: nib.Nifti1Image, noiseless: nib.Nifti1Image) -> float:
    """RMS of our water, linearly resampled onto the truth grid, minus the truth, in the body."""
    back = ndimage.map_coordinates(
        ours.get_fdata(dtype=np.float32), voxel_map(ours, noiseless), order=1, mode="nearest"
    )
    expected = noiseless.get_fdata(dtype=np.float32)
    body = expected > BODY
    return float(np.sqrt(np.mean((back - expected)[body] ** 2)))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def test_native_water_equals_the_noiseless_water_within_the_noise(cohort, native):
    ours, noiseless = nib.load(native / "water.nii.gz"), truth(cohort, "water_noiseless")
    assert ours.shape == noiseless.shape
    np.testing.assert_allclose(ours.affine, noiseless.affine, atol=1e-4)
    rms = rms_inside_body(ours, noiseless)
    # Only noise remains (a little less where overlapping stations are averaged).
    assert 0.8 * NOISE_SIGMA < rms < 1.2 * NOISE_SIGMA


def test_no_seam_at_station_junctions(cohort, native):
    ours = nib.load(native / "water.nii.gz").get_fdata(dtype=np.float32)
    expected = truth(cohort, "water_noiseless").get_fdata(dtype=np.float32)
    body = expected > BODY
    stations = protocol("ukbb", "small").stations
    for upper, lower in zip(stations, stations[1:], strict=False):
        overlap = lower.stop - upper.start  # slices both stations imaged
        slabs = {
            "below": slice(upper.start - 3, upper.start),  # the lower station alone
            "overlap": slice(upper.start, lower.stop),
            "above": slice(lower.stop, lower.stop + 3),  # the upper station alone
        }
        assert overlap == 3
        means = {
            name: (
                ours[:, :, part][body[:, :, part]].mean(),
                expected[:, :, part][body[:, :, part]].mean(),
            )
            for name, part in slabs.items()
        }
        step_ours = means["above"][0] / means["below"][0] - 1
        step_truth = means["above"][1] / means["below"][1] - 1
        assert abs(step_ours - step_truth) < 0.02, (upper.number, step_ours, step_truth)
        for name, (mean_ours, mean_truth) in means.items():
            assert mean_ours == pytest.approx(mean_truth, rel=0.01), (upper.number, name)


@pytest.mark.parametrize("grid", ["native", "ukbb_grid"])
def test_truth_labels_land_on_the_right_anatomy(cohort, grid, request):
    ours = nib.load(request.getfixturevalue(grid) / "water.nii.gz")
    labels = truth(cohort, "labels")
    on_ours = nib.Nifti1Image(nearest(labels, ours), ours.affine)
    back = nearest(on_ours, labels)
    original = np.asarray(labels.dataobj)
    for label in np.unique(original)[1:]:
        assert dice(original == label, back == label) > 0.99, label
    # And our image sits where the truth says: resampled back, it matches the noiseless
    # water within the noise; half a slice off, it would not.
    noiseless = truth(cohort, "water_noiseless")
    assert rms_inside_body(ours, noiseless) < 1.2 * NOISE_SIGMA
    moved = ours.affine.copy()
    moved[2, 3] += ours.header.get_zooms()[2] / 2
    off = nib.Nifti1Image(ours.get_fdata(dtype=np.float32), moved)
    assert rms_inside_body(off, noiseless) > 1.5 * NOISE_SIGMA


def test_default_grid_is_the_uk_biobank_grid(ukbb_grid):
    image = nib.load(ukbb_grid / "water.nii.gz")
    np.testing.assert_allclose(image.header.get_zooms(), UKBB_SPACING_MM, rtol=1e-6)
    assert image.shape == (223, 173, 369)  # the small cohort's field of view at 2.232 mm
    # Axis-aligned LPS: i -> L, j -> P, k -> S (RAS affine diag(-sx, -sy, sz)).
    np.testing.assert_allclose(np.sign(np.diag(image.affine)[:3]), [-1, -1, 1])
    assert not image.affine[:3, :3][~np.eye(3, dtype=bool)].any()


def test_channels_share_the_grid_and_hold_their_signal(cohort, native):
    images = {c: nib.load(native / f"{c}.nii.gz") for c in conv.CHANNELS}
    for image in images.values():
        assert image.shape == images["water"].shape
        assert np.array_equal(image.affine, images["water"].affine)
        assert image.get_data_dtype() == np.int16
    data = {c: image.get_fdata(dtype=np.float32) for c, image in images.items()}
    body = data["in"] > BODY
    # In-phase is water + fat and opposed-phase |water - fat| (Rician noise biases the
    # sum of two magnitudes by a few units only).
    np.testing.assert_allclose(
        data["in"][body].mean(), (data["water"] + data["fat"])[body].mean(), rtol=0.02
    )
    np.testing.assert_allclose(
        data["opp"][body].mean(), np.abs(data["water"] - data["fat"])[body].mean(), rtol=0.03
    )
    # Inside the labelled muscles (same grid at native spacing), water dominates fat.
    muscle = ndimage.binary_erosion(np.asarray(truth(cohort, "labels").dataobj) > 0)
    assert data["water"][muscle].mean() > 3 * data["fat"][muscle].mean()


def test_acquisition_record(native):
    record = json.loads((native / "acquisition.json").read_text())
    assert record["protocol"] == "ukbb" and record["source"] == "folder"
    assert record["scanner"] == {
        "manufacturer": "SIEMENS",
        "model": "Aera",
        "field_strength_t": 1.5,
        "software_versions": "syngo MR D13A",
    }
    assert record["sequence"]["echo_times_ms"] == {
        "water": 4.77,
        "fat": 4.77,
        "in": 4.77,
        "opp": 2.39,
    }
    assert record["n_stations"] == 6
    proto = protocol("ukbb", "small")
    z = proto.grid.axis_mm(2)
    for station, expected in zip(record["stations"], proto.stations, strict=True):
        assert station["station"] == expected.number
        assert station["z_min_mm"] == pytest.approx(z[expected.start], abs=1e-3)
        assert station["z_max_mm"] == pytest.approx(z[expected.stop - 1], abs=1e-3)
        assert station["shape"] == [112, 87, expected.count]
    assert record["grid"]["shape"] == list(proto.grid.shape)
    assert record["provenance"]["convert_version"] == conv.CONVERT_VERSION


def identifiers(cohort: Path, pid: str) -> list[str]:
    """The planted identifiers of a participant, and the UIDs of its DICOM headers."""
    row = pd.read_csv(cohort / "identifiers.tsv", sep="\t", dtype=str).set_index("participant_id")
    planted = row.loc[pid]
    found = [*planted["patient_name"].split("^"), planted["patient_id"], planted["birth_date"]]
    found += [planted["institution"], planted["study_date"], planted["study_time"]]
    for folder in sorted((cohort / "dicom" / pid).iterdir()):
        ds = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
        found += [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID]
        found += [ds.FrameOfReferenceUID, ds.AccessionNumber, ds.StationName]
    return found


def test_outputs_hold_no_identifiers(cohort, native):
    written = (native / "acquisition.json").read_text()
    for channel in conv.CHANNELS:
        image = nib.load(native / f"{channel}.nii.gz")
        assert image.header["descrip"].item() == b"myoflow"
        assert image.header["aux_file"].item() == b""
        assert not image.header.extensions
        written += image.header.binaryblock.decode("latin-1")
    secrets = identifiers(cohort, "ukbb000001")
    assert len(secrets) > 100
    for secret in secrets:
        assert str(secret) not in written


def test_rerun_skips_complete_participants_and_redoes_on_new_settings(cohort, tmp_path):
    dicom = cohort / "dicom" / "ukbb000002"
    assert convert(dicom, tmp_path, NATIVE)[0].startswith("P1: ok")
    marker = tmp_path / "P1" / "dixon" / "acquisition.json"
    first = marker.stat().st_mtime_ns
    assert convert(dicom, tmp_path, NATIVE) == ["P1: complete, skipped"]
    assert marker.stat().st_mtime_ns == first
    coarse = IngestSettings(spacing_mm=(9.0, 9.0, 12.0))
    assert convert(dicom, tmp_path, coarse)[0].startswith("P1: ok")
    assert nib.load(tmp_path / "P1" / "dixon" / "fat.nii.gz").header.get_zooms() == (9, 9, 12)


def test_junk_files_are_reported_and_ignored(cohort, tmp_path):
    delivery = tmp_path / "P1"
    shutil.copytree(cohort / "dicom" / "ukbb000003", delivery)
    (delivery / "S002" / "notes.txt").write_text("console export\n")
    ct = pydicom.dcmread(delivery / "S001" / "IM_0001.dcm")
    ct.Modality = "CT"
    ct.save_as(delivery / "ct.dcm")
    localiser = pydicom.dcmread(delivery / "S001" / "IM_0001.dcm")
    localiser.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    localiser.SeriesDescription, localiser.ImageType = "localizer", ["ORIGINAL", "PRIMARY", "M"]
    localiser.save_as(delivery / "loc.dcm")
    out = tmp_path / "out"
    assert convert(delivery, out, NATIVE)[0].startswith("P1: ok")
    record = json.loads((out / "P1" / "dixon" / "acquisition.json").read_text())
    assert record["ignored_files"] == {"not_dicom": 1, "not_mr": 1}
    (ignored,) = record["ignored_series"]
    assert (ignored["series_description"], ignored["reason"]) == ("localizer", "not_dixon")


def test_an_empty_file_excludes_the_participant(cohort, tmp_path):
    delivery = tmp_path / "P1"
    shutil.copytree(cohort / "dicom" / "ukbb000003", delivery)
    (delivery / "S003" / "IM_0004.dcm").write_bytes(b"")
    lines = convert(delivery, tmp_path / "out", NATIVE)
    assert lines[0].startswith("P1: excluded, corrupt_file: S003/IM_0004.dcm: an empty file")
    record = json.loads((tmp_path / "out" / "P1" / "exclusion.json").read_text())
    assert record == {
        "participant_id": "P1",
        "stage": "convert",
        "reason": "corrupt_file",
        "detail": record["detail"],
    }
    assert not (tmp_path / "out" / "P1" / "dixon").exists()


def test_nako_participant(tmp_path):
    generate_cohort(
        CohortSpec(
            out=tmp_path, participants=1, protocol="nako", seed=4, size="small", rates=NO_ARTEFACTS
        )
    )
    convert(tmp_path / "dicom" / "nako000001", tmp_path / "out", NATIVE)
    record = json.loads((tmp_path / "out" / "P1" / "dixon" / "acquisition.json").read_text())
    assert (record["protocol"], record["n_stations"]) == ("nako", 4)
    assert record["scanner"]["field_strength_t"] == 3.0
    labels = nib.load(tmp_path / "truth" / "nako000001" / "labels.nii.gz")
    water = nib.load(tmp_path / "out" / "P1" / "dixon" / "water.nii.gz")
    on_water = nearest(labels, water)
    muscle = water.get_fdata(dtype=np.float32)[ndimage.binary_erosion(on_water > 0)]
    assert muscle.mean() > 400  # muscle water signal is ~590; air or fat would be far lower


def test_read_member_gives_the_pixels_pydicom_gives(cohort):
    path = cohort / "dicom" / "ukbb000001" / "S001" / "IM_0002.dcm"
    whole = pydicom.dcmread(path)
    compressed = pydicom.dcmread(path)
    compressed.compress(RLELossless)  # encapsulated: no length to read the pixels by
    buffer = io.BytesIO()
    compressed.save_as(buffer, enforce_file_format=True)
    for data in (path.read_bytes(), buffer.getvalue()):
        ds = read_member("IM_0002.dcm", lambda data=data: io.BytesIO(data), pixels=True)
        np.testing.assert_array_equal(ds.pixel_array, whole.pixel_array)
    header_only = read_member("IM_0002.dcm", lambda: path.open("rb"))
    assert "PixelData" not in header_only and header_only.SeriesInstanceUID
    cut = read_member("IM_0002.dcm", lambda: io.BytesIO(path.read_bytes()[:-2]), pixels=True)
    assert isinstance(cut, IgnoredFile) and cut.reason == "truncated"


def test_config_ships_the_package_defaults_and_the_schema_checks_them():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert config["ingest"] == IngestSettings().to_config()
    assert IngestSettings.from_config(config["ingest"]) == IngestSettings()
    schema = yaml.safe_load((ROOT / "config" / "schemas" / "config.schema.yaml").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(config))
    for bad in (
        {"channel": "water"},  # no condition
        {"channel": "blood", "image_type": "BLOOD"},
        {"channel": "fat", "series_description": "_F$", "echo": 2},
    ):
        broken = config | {"ingest": config["ingest"] | {"channel_rules": [bad]}}
        assert list(validator.iter_errors(broken)), bad
    native = config | {"ingest": config["ingest"] | {"grid": {"spacing_mm": "native"}}}
    assert not list(validator.iter_errors(native))
    assert IngestSettings.from_config(native["ingest"]).spacing_mm is None


@pytest.mark.parametrize(
    ("ingest", "message"),
    [
        ("{not json", "argument --ingest: not JSON"),
        ('["water"]', "argument --ingest: expected a JSON object"),
        ('{"grid": {"spacing_mm": "fine"}}', "'native' or three positive numbers"),
        ('{"channel_rules": [{"channel": "water"}]}', "give image_type, series_description"),
    ],
)
def test_cli_refuses_malformed_ingest_settings(tmp_path, capsys, ingest, message):
    argv = ["convert", "--sheet", "s.tsv", "--shard", "r1-0000", "--shard-size", "1",
            "--inventory", "i.tsv", "--participants-dir", str(tmp_path), "--out", "o.tsv",
            "--ingest", ingest]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


# --- the workflow, for real -------------------------------------------------------------


def _remove_slices(series: Path, count: int) -> None:
    """Delete the ``count`` lowest slices (the writer numbers slices from the feet up)."""
    for path in sorted(series.glob("IM_*.dcm"))[:count]:
        path.unlink()


def _truncate(path: Path) -> None:
    """Cut a file to half its bytes, inside its pixel data (a broken transfer)."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _tilt(series: Path, degrees: float = 10.0) -> None:
    """Rewrite every slice's ImageOrientationPatient: turned about z (a re-planned series)."""
    angle = np.radians(degrees)
    row, column = [np.cos(angle), np.sin(angle), 0.0], [-np.sin(angle), np.cos(angle), 0.0]
    for path in series.glob("IM_*.dcm"):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in row + column]
        ds.save_as(path)


# Series folders: S{(station - 1) * 4 + channel + 1:03d}, channels water, fat, in, opp.
BROKEN = {
    "truncated": lambda d, other: _truncate(d / "S005" / "IM_0010.dcm"),
    "no_in_phase": lambda d, other: shutil.rmtree(d / "S007"),
    "no_station_4": lambda d, other: [shutil.rmtree(d / f"S{n:03d}") for n in range(13, 17)],
    # Station 2 loses its 5 lowest slices in every channel: 2 more than it shares with 3.
    "gap": lambda d, other: [_remove_slices(d / f"S{n:03d}", 5) for n in range(5, 9)],
    "mixed": lambda d, other: shutil.copytree(other / "S001", d / "S901"),
    "tilted": lambda d, other: _tilt(d / "S010"),
}
EXPECTED_REASON = {
    "truncated": "corrupt_file",
    "no_in_phase": "missing_channel",
    "no_station_4": "missing_station",
    "gap": "station_gap",
    "mixed": "mixed_participants",
    "tilted": "orientation_mismatch",
}


@pytest.fixture
def workdir(cohort, tmp_path) -> Path:
    """The workflow with 10 participants: 2 folders and a zip that convert, 6 broken
    deliveries made from copies of a good one, and one whose folder is missing."""
    copy_workflow(tmp_path)
    dicom = tmp_path / "data" / "dicom"
    good = cohort / "dicom"
    shutil.copytree(good / "ukbb000001", dicom / "A1")
    shutil.copytree(good / "ukbb000002", dicom / "A2")
    zip_folder(good / "ukbb000003", dicom / "A3.zip")
    rows = [("A1", "dicom/A1", "r1"), ("A2", "dicom/A2", "r1"), ("A3", "dicom/A3.zip", "r1")]
    for name, damage in BROKEN.items():
        shutil.copytree(good / "ukbb000002", dicom / name)
        damage(dicom / name, good / "ukbb000001")
        rows.append((name, f"dicom/{name}", "r1"))
    rows.append(("gone", "dicom/gone", "r1"))
    write_sheet(tmp_path / "data" / "participants.tsv", rows)
    config = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    config |= {"participants": "data/participants.tsv", "shards": {"size": 5}}
    config["ingest"]["grid"]["spacing_mm"] = "native"  # a quarter of the voxels: faster
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


@pytest.mark.workflow
def test_workflow_converts_good_participants_and_excludes_broken_ones(workdir):
    check(snakemake(*INGESTION, "--profile", "config/profiles/local", "--cores", "2", cwd=workdir))

    table = read_tsv(workdir / "results" / "cohort" / "convert.tsv").set_index("participant_id")
    assert len(table) == 10
    participants = workdir / "results" / "participants"
    for pid in ("A1", "A2", "A3"):
        assert (table.loc[pid, "status"], table.loc[pid, "n_stations"]) == ("ok", 6)
        for channel in conv.CHANNELS:
            image = nib.load(participants / pid / "dixon" / f"{channel}.nii.gz")
            assert image.shape == (112, 87, 185)
        assert not (participants / pid / "exclusion.json").exists()
    source = json.loads((participants / "A3" / "dixon" / "acquisition.json").read_text())
    assert source["source"] == "zip"
    for pid, reason in EXPECTED_REASON.items():
        assert (table.loc[pid, "status"], table.loc[pid, "stage"]) == ("excluded", "convert")
        record = json.loads((participants / pid / "exclusion.json").read_text())
        assert (record["participant_id"], record["stage"]) == (pid, "convert")
        assert record["reason"] == reason == table.loc[pid, "reason"], record
        assert not (participants / pid / "dixon").exists()
    assert (table.loc["gone", "stage"], table.loc["gone", "reason"]) == (
        "inventory",
        "dicom_missing",
    )
    assert (
        json.loads((participants / "gone" / "exclusion.json").read_text())["stage"] == "inventory"
    )
    log = "".join(
        (workdir / "logs" / "shards" / shard / "convert.log").read_text()
        for shard in ("r1-0000", "r1-0001")
    )
    assert "tilted: excluded, orientation_mismatch: " in log
    for shard in ("r1-0000", "r1-0001"):
        assert (workdir / "benchmarks" / "shards" / shard / "convert.tsv").is_file()

    assert "Nothing to be done" in check(
        snakemake(*INGESTION, "-n", "--profile", "config/profiles/local", cwd=workdir)
    )
    # Another grid is another conversion: every convert shard reruns, no inventory.
    config_path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["ingest"]["grid"]["spacing_mm"] = [3.0, 3.0, 4.0]
    config_path.write_text(yaml.safe_dump(config))
    output = check(snakemake(*INGESTION, "-n", "--profile", "config/profiles/local", cwd=workdir))
    assert job_counts(output) == {"convert_shard": 2, "convert_cohort": 1}
