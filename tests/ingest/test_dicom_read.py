"""Tests for reading DICOM series into volumes (myoflow.ingest.dicom, myoflow.core.volume) and for
``myoflow convert-series``: known synthetic series in several orientations, every refusal
reason, echo splitting, and real MR files shipped with pydicom and nibabel, with
dcm2niix as the reference for geometry and values."""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
import SimpleITK as sitk
from dicom_helpers import TEST_PATIENT, UID_ROOT, dcm2niix_binary, write_slice
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform
from pydicom.dataset import Dataset
from pydicom.pixels.decoders import JPEG2000LosslessDecoder, JPEGLSLosslessDecoder

from myoflow.commands import convert_series
from myoflow.core.errors import MyoflowError
from myoflow.core.volume import Volume
from myoflow.ingest.dicom import group_by_series, read_datasets, series_volumes
from myoflow.ingest.dicom_errors import SERIES_REASONS, DicomError
from myoflow.ingest.image_class import image_class
from myoflow.ingest.image_types import SubSeries, group_by_subseries
from myoflow.synth.dicom_writer import SeriesInfo, write_series
from myoflow.synth.enhanced import pack_enhanced

# Odd, unequal sizes and spacings: any swap of i/j, rows/columns or PixelSpacing order
# changes a shape or a position.
SHAPE = (13, 9, 7)
SPACING = (1.3, 2.1, 3.7)
ORIGIN = (-20.5, 13.25, -101.0)
PATIENT = TEST_PATIENT
WATER = SeriesInfo(protocol="ukbb", channel="water", station=1, series_number=7, uid_seed="r")

# Columns are the LPS unit vectors of the written i, j, k axes.
GEOMETRIES = {
    "axial_head_first": np.eye(3),
    # k towards the feet with a right-handed frame: the slice normal (row x column)
    # points to the feet too, so our k follows the file order.
    "axial_feet_first": np.diag([1.0, -1.0, -1.0]),
    # k towards the feet but the normal points to the head: we reverse the file order.
    "axial_feet_first_left_handed": np.diag([1.0, 1.0, -1.0]),
    # i -> L, j -> inferior, k -> P.
    "coronal": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
}

PYDICOM_DATA = Path(pydicom.data.get_testdata_file("MR_small.dcm")).parent
NIBABEL_DATA = Path(nib.__file__).parent / "nicom" / "tests" / "data"


needs_dcm2niix = pytest.mark.skipif(
    dcm2niix_binary() is None, reason="dcm2niix binary not installed"
)


# --- helpers ---------------------------------------------------------------------------


def _volume(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    volume = np.random.default_rng(seed).uniform(0.0, 2500.0, shape).astype(np.float32)
    volume[0, 0, :] = 0.0
    return volume


def _write(
    folder: Path,
    direction: np.ndarray,
    volume: np.ndarray | None = None,
    series: SeriesInfo = WATER,
) -> list[Path]:
    return write_series(
        _volume() if volume is None else volume,
        origin_lps_mm=ORIGIN,
        spacing_mm=SPACING,
        direction=direction,
        out_dir=folder,
        series=series,
        patient=PATIENT,
    )


def _slope(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).RescaleSlope)


def _expected(direction: np.ndarray, volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The array and LPS affine series_volumes must return for a written series."""
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(SPACING)
    affine[:3, 3] = ORIGIN
    if np.linalg.det(direction) > 0:
        return volume, affine
    # The slice normal is -k: slices come out in reverse file order.
    affine[:3, 3] = affine[:3, 3] + affine[:3, 2] * (volume.shape[2] - 1)
    affine[:3, 2] *= -1
    return volume[:, :, ::-1], affine


def convert(*argv: str) -> int:
    """Run ``myoflow convert-series`` through its own parser (cli.py registers it)."""
    parser = argparse.ArgumentParser(prog="myoflow")
    convert_series.add_parser(parser.add_subparsers())
    args = parser.parse_args(["convert-series", *argv])
    return args.func(args)


def dcm2niix(series_dir: Path, out_dir: Path, *flags: str) -> tuple[str, list[Path]]:
    """Run ``dcm2niix -z n -f x -o OUT_DIR SERIES_DIR``; return its log and NIfTIs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [dcm2niix_binary(), "-z", "n", "-f", "x", *flags, "-o", str(out_dir), str(series_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout + result.stderr, sorted(out_dir.glob("*.nii"))


def assert_same_world_image(ours: Path, reference: Path, *, atol: float, tol_mm: float = 0.01):
    """Assert two NIfTIs hold the same image in world space, whatever their voxel order.

    The reference is reoriented onto our axes with nibabel's orientation tools; then the
    affines must agree within ``tol_mm``, every reference voxel centre must land on one
    of our voxel centres (the reference -> our index map is an integer signed
    permutation plus an integer shift), and the values must agree within ``atol``.
    """
    a, b = nib.load(ours), nib.load(reference)
    assert a.ndim == b.ndim == 3, (a.shape, b.shape)
    to_ours = np.linalg.solve(a.affine, b.affine)  # reference index -> our index
    ours_mm = np.linalg.norm(a.affine[:3, :3], axis=0)[:, None]  # mm per index unit
    assert np.all(np.abs(to_ours[:3] - np.rint(to_ours[:3])) * ours_mm < tol_mm), to_ours
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in b.shape], indexing="ij"))
    mapped = np.rint(to_ours[:3, :3] @ corners.reshape(3, -1) + to_ours[:3, 3:])
    assert mapped.min() >= 0 and np.all(mapped.max(axis=1) == np.array(a.shape) - 1)

    transform = ornt_transform(io_orientation(b.affine), io_orientation(a.affine))
    b_data = apply_orientation(b.get_fdata(), transform)
    b_affine = b.affine @ inv_ornt_aff(transform, b.shape)
    np.testing.assert_allclose(b_affine, a.affine, rtol=0, atol=tol_mm)
    assert b_data.shape == a.shape
    np.testing.assert_allclose(a.get_fdata(), b_data, rtol=0, atol=atol)


def _read(folder: Path) -> list[Dataset]:
    return read_datasets([folder])


@pytest.fixture(scope="module", params=list(GEOMETRIES))
def written(request, tmp_path_factory) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp(request.param) / "series"
    _write(folder, GEOMETRIES[request.param])
    return request.param, folder


@pytest.fixture(scope="module")
def axial(tmp_path_factory) -> Path:
    """An axial head-first series of SHAPE written once; copy it before changing files."""
    folder = tmp_path_factory.mktemp("axial") / "series"
    _write(folder, np.eye(3))
    return folder


# --- synthetic series: values and geometry ------------------------------------------------


def test_series_volumes_recovers_values_and_geometry(written):
    name, folder = written
    (volume,) = series_volumes(_read(folder))
    array, affine = _expected(GEOMETRIES[name], _volume())
    step = _slope(folder / "IM_0001.dcm")
    assert volume.echo is None
    assert volume.array.dtype == np.float32 and volume.array.shape == SHAPE
    np.testing.assert_allclose(volume.array, array, rtol=0, atol=step / 2 + 1e-3)
    np.testing.assert_allclose(volume.affine_lps, affine, rtol=0, atol=1e-4)
    np.testing.assert_allclose(volume.affine_ras(), np.diag([-1, -1, 1, 1]) @ affine, atol=1e-4)
    np.testing.assert_allclose(volume.spacing_mm, SPACING, atol=1e-5)
    np.testing.assert_allclose(volume.origin_lps_mm, affine[:3, 3], atol=1e-4)
    np.testing.assert_allclose(volume.direction, affine[:3, :3] / SPACING, atol=1e-6)


def test_slices_are_sorted_by_position_not_instance_number(axial):
    datasets = _read(axial)
    (reference,) = series_volumes(datasets)
    shuffled = [datasets[i] for i in (4, 0, 6, 2, 5, 1, 3)]
    for number, ds in enumerate(shuffled, 1):
        ds.InstanceNumber = number  # now contradicts the positions
    (volume,) = series_volumes(shuffled)
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_array_equal(volume.affine_lps, reference.affine_lps)


def test_rescale_slope_and_intercept_apply_per_slice(axial):
    datasets = _read(axial)
    (plain,) = series_volumes(datasets)
    slope = float(datasets[0].RescaleSlope)
    for ds in datasets:
        ds.RescaleIntercept = "-100.5"
    datasets[3].RescaleSlope = str(2 * slope)
    (volume,) = series_volumes(datasets)
    expected = plain.array - 100.5
    expected[:, :, 3] = 2 * plain.array[:, :, 3] - 100.5
    np.testing.assert_allclose(volume.array, expected, rtol=1e-6, atol=1e-3)


def test_unused_high_bits_are_ignored(axial, tmp_path):
    """BitsStored is 12 of 16: bits above it (overlays, garbage) are not part of the value,
    as pydicom's pixel_array also masks them."""
    (clean,) = series_volumes(_read(axial))
    folder = tmp_path / "series"
    shutil.copytree(axial, folder)
    ds = pydicom.dcmread(folder / "IM_0004.dcm")
    ds.PixelData = (np.frombuffer(ds.PixelData, "<u2") | np.uint16(0xA000)).tobytes()
    ds.save_as(folder / "IM_0004.dcm")
    (volume,) = series_volumes(_read(folder))
    np.testing.assert_array_equal(volume.array, clean.array)
    expected = ds.pixel_array * float(ds.RescaleSlope)  # pydicom masks the high bits
    np.testing.assert_allclose(volume.array[:, :, 3].T, expected, rtol=1e-6)


@needs_dcm2niix
@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_convert_series_matches_dcm2niix(written, dtype, tmp_path):
    name, folder = written
    ours = tmp_path / "ours.nii.gz"
    assert convert(str(folder), str(ours), "--dtype", dtype) == 0
    log, (theirs,) = dcm2niix(folder, tmp_path / "dcm2niix")
    assert "Warning" not in log and "Error" not in log, log
    assert nib.load(ours).get_data_dtype() == np.dtype(dtype)
    step = _slope(folder / "IM_0001.dcm")
    quantum = _volume().max() / 60000 if dtype == "int16" else 1e-3
    assert_same_world_image(ours, theirs, atol=quantum + 1e-3 * step)


def test_to_nifti_int16_and_float32(tmp_path):
    values = np.random.default_rng(3).normal(0, 400, (5, 6, 7)).astype(np.float32)
    values[1, 2, 3] = 0.0
    affine = np.array([[0, 0, 2.5, -10], [-1.5, 0, 0, 20], [0, 2, 0, 30], [0, 0, 0, 1.0]])
    volume = Volume(values, affine, echo=2)
    volume.to_nifti(tmp_path / "i.nii.gz", dtype="int16")
    volume.to_nifti(tmp_path / "f.nii", dtype="float32")
    as_int, as_float = nib.load(tmp_path / "i.nii.gz"), nib.load(tmp_path / "f.nii")
    assert as_int.get_data_dtype() == np.int16 and as_float.get_data_dtype() == np.float32
    peak = np.abs(values).max()
    assert np.abs(np.asanyarray(as_int.dataobj.get_unscaled())).max() == 30000
    assert np.abs(as_int.get_fdata() - values).max() < 1e-4 * peak
    assert as_int.get_fdata()[1, 2, 3] == 0.0
    np.testing.assert_array_equal(as_float.get_fdata(), values)
    for image in (as_int, as_float):
        np.testing.assert_allclose(image.affine, np.diag([-1, -1, 1, 1]) @ affine, atol=1e-6)
        assert image.header["sform_code"] == image.header["qform_code"] == 1
        assert image.header["descrip"].tobytes().rstrip(b"\0") == b"myoflow echo 2"
    with pytest.raises(ValueError, match="dtype"):
        volume.to_nifti(tmp_path / "u.nii", dtype="uint8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3-D"):
        Volume(values[0], affine)


# --- refusals: one test per reason --------------------------------------------------------


def _drop_slice(folder: Path) -> None:
    (folder / "IM_0004.dcm").unlink()


def _duplicate_file(folder: Path) -> None:
    shutil.copy(folder / "IM_0003.dcm", folder / "IM_0003_copy.dcm")


def _mutate(change):
    """Turn a change of the fourth slice's dataset into a change of its file."""

    def apply(folder: Path) -> None:
        path = folder / "IM_0004.dcm"
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)

    return apply


def _tilt(ds: Dataset) -> None:
    angle = np.radians(2.0)
    ds.ImageOrientationPatient = [np.cos(angle), np.sin(angle), 0, -np.sin(angle), np.cos(angle), 0]


def _move(ds: Dataset, offset_mm) -> None:
    ds.ImagePositionPatient = [
        float(v) + o for v, o in zip(ds.ImagePositionPatient, offset_mm, strict=True)
    ]


def _resize(ds: Dataset) -> None:
    ds.Rows = SHAPE[1] - 1
    ds.PixelData = ds.PixelData[: 2 * SHAPE[0] * (SHAPE[1] - 1)]


REFUSALS = {
    "not_mr": _mutate(lambda ds: setattr(ds, "Modality", "CT")),
    "missing_geometry/position": _mutate(lambda ds: delattr(ds, "ImagePositionPatient")),
    "missing_geometry/spacing": _mutate(lambda ds: delattr(ds, "PixelSpacing")),
    "missing_geometry/five_cosines": _mutate(
        lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1])
    ),
    "missing_geometry/not_perpendicular": _mutate(
        lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0.6, 0.8, 0])
    ),
    "mixed_orientation": _mutate(_tilt),
    "mixed_size/pixel_spacing": _mutate(
        lambda ds: setattr(ds, "PixelSpacing", [SPACING[1], SPACING[0] * 1.01])
    ),
    "mixed_size/rows": _mutate(_resize),
    "duplicate_slices": _duplicate_file,
    "slice_gap": _drop_slice,
    "nonuniform_spacing/step": _mutate(lambda ds: _move(ds, (0, 0, 0.2 * SPACING[2]))),
    "nonuniform_spacing/sheared": _mutate(lambda ds: _move(ds, (0.5, 0, 0))),
    "multiframe/mosaic": _mutate(
        lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "M", "MOSAIC"])
    ),
    "multiframe/no_functional_groups": _mutate(lambda ds: setattr(ds, "NumberOfFrames", 2)),
    "pixel_data/missing": _mutate(lambda ds: delattr(ds, "PixelData")),
    "pixel_data/truncated": _mutate(lambda ds: setattr(ds, "PixelData", ds.PixelData[:-20])),
    "pixel_data/colour": _mutate(lambda ds: setattr(ds, "SamplesPerPixel", 3)),
}


def test_every_reason_has_a_refusal_case():
    assert {case.split("/")[0] for case in REFUSALS} == SERIES_REASONS


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal_reason(case, axial, tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(axial, folder)
    series_volumes(_read(folder))  # the untouched copy converts
    REFUSALS[case](folder)
    with pytest.raises(DicomError) as caught:
        series_volumes(_read(folder))
    assert caught.value.reason == case.split("/")[0]
    assert str(folder) in caught.value.detail  # the message names the file(s)
    assert str(caught.value) == f"{caught.value.reason}: {caught.value.detail}"


def test_slice_gap_names_the_neighbours_and_cli_raises_it(axial, tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(axial, folder)
    _drop_slice(folder)
    with pytest.raises(DicomError, match="IM_0003.dcm -> .*IM_0005.dcm.*1 slice") as caught:
        convert(str(folder), str(tmp_path / "out.nii.gz"))
    assert caught.value.reason == "slice_gap"
    assert not (tmp_path / "out.nii.gz").exists()


def test_unknown_reason_is_a_bug():
    with pytest.raises(ValueError, match="reason"):
        DicomError("no_such_reason", "x")


# --- enhanced multi-frame ----------------------------------------------------------------


def test_enhanced_multiframe_gives_the_single_frame_volume(axial):
    datasets = _read(axial)
    (single,) = series_volumes(datasets)
    (multi,) = series_volumes([pack_enhanced(datasets, order=[3, 0, 6, 1, 5, 2, 4])])
    np.testing.assert_array_equal(multi.array, single.array)
    np.testing.assert_allclose(multi.affine_lps, single.affine_lps, atol=1e-9)


def test_enhanced_multiframe_splits_echoes_and_refuses_4d(axial):
    datasets = _read(axial)
    (single,) = series_volumes(datasets)
    twice = list(range(7)) * 2
    echoes = series_volumes([pack_enhanced(datasets, [4.77] * 7 + [2.39] * 7, twice)])
    assert [v.echo for v in echoes] == [1, 2]  # ranked by echo time
    for volume in echoes:
        np.testing.assert_array_equal(volume.array, single.array)
    with pytest.raises(DicomError, match="4-D") as caught:
        series_volumes([pack_enhanced(datasets, order=twice)])
    assert caught.value.reason == "multiframe"


# --- echoes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_echoes(tmp_path_factory) -> Path:
    """One series whose files alternate EchoNumbers 1 and 2 at the same positions."""
    root = tmp_path_factory.mktemp("echoes")
    opp = SeriesInfo(protocol="ukbb", channel="opp", station=1, series_number=7, uid_seed="r")
    first = _write(root / "e1", np.eye(3), _volume(1), series=opp)
    second = _write(root / "e2", np.eye(3), _volume(2), series=WATER)
    folder = root / "series"
    folder.mkdir()
    for k, (a, b) in enumerate(zip(first, second, strict=True), 1):
        echo1, echo2 = pydicom.dcmread(a), pydicom.dcmread(b)
        assert (echo1.EchoNumbers, echo2.EchoNumbers) == (1, 2)
        for keyword in ("SeriesInstanceUID", "SeriesDescription"):
            setattr(echo2, keyword, echo1.data_element(keyword).value)
        # A plain multi-echo magnitude; dcm2niix reads "PHASE" in OPPOSED_PHASE as a
        # phase image and would name its outputs x_e1_ph.
        echo1.ImageType = echo2.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        echo1.save_as(folder / f"IM_{2 * k - 1:04d}.dcm")
        echo2.save_as(folder / f"IM_{2 * k:04d}.dcm")
    return folder


def test_interleaved_echoes_give_one_volume_each(two_echoes):
    datasets = _read(two_echoes)
    assert len(group_by_series(datasets)) == 1
    volumes = series_volumes(datasets)
    assert [v.echo for v in volumes] == [1, 2]
    for volume, seed in zip(volumes, (1, 2), strict=True):
        step = volume.array.max() / 4000
        np.testing.assert_allclose(volume.array, _volume(seed), rtol=0, atol=step)
        np.testing.assert_allclose(volume.spacing_mm, SPACING, atol=1e-5)
    # Without EchoNumbers the echo times (2.39 and 4.77 ms) split the echoes.
    for ds in datasets:
        del ds.EchoNumbers
    by_time = series_volumes(datasets)
    assert [v.echo for v in by_time] == [1, 2]
    np.testing.assert_array_equal(by_time[0].array, volumes[0].array)


@needs_dcm2niix
def test_interleaved_echoes_match_dcm2niix(two_echoes, tmp_path):
    assert convert(str(two_echoes), str(tmp_path / "ours.nii.gz"), "--dtype", "float32") == 0
    assert not (tmp_path / "ours.nii.gz").exists()
    log, theirs = dcm2niix(two_echoes, tmp_path / "dcm2niix")
    # dcm2niix suffixes the echo number, as we do.
    assert [p.name for p in theirs] == ["x_e1.nii", "x_e2.nii"], log
    for echo, reference in enumerate(theirs, 1):
        assert_same_world_image(tmp_path / f"ours_e{echo}.nii.gz", reference, atol=1e-2)


# --- one series, several image types: split as dcm2niix splits it --------------------------

PHILIPS_MAGNITUDE = ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"]
PHILIPS_PHASE = ["ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"]


def _mixed_series(folder: Path, images: list[tuple[list[str], dict]], z_mm=(0.0, 3.0, 6.0)):
    """One series holding, at every position, one image per (ImageType, tags) of
    ``images``; each image's pixels are 10 * (its index in ``images`` + 1) + slice."""
    n = 0
    for k, z in enumerate(z_mm):
        for index, (image_type, tags) in enumerate(images):
            n += 1
            path = folder / f"IM_{n:04d}.dcm"
            write_slice(
                path,
                series_uid=f"{UID_ROOT}.55",
                instance=n,
                description="T1 FFE dual echo",
                image_type=image_type,
                z_mm=z,
            )
            ds = pydicom.dcmread(path)
            for keyword, value in tags.items():
                setattr(ds, keyword, value)
            ds.PixelData = np.full(35, 10 * (index + 1) + k, np.uint16).tobytes()
            ds.save_as(path)
    return folder


@pytest.fixture(scope="module")
def magnitude_and_phase(tmp_path_factory) -> Path:
    """A Philips dual-echo series: magnitude and phase of both echoes at every position."""
    return _mixed_series(
        tmp_path_factory.mktemp("philips") / "series",
        [
            (image_type, {"EchoNumbers": echo, "EchoTime": te})
            for echo, te in ((1, 2.3), (2, 4.6))
            for image_type in (PHILIPS_MAGNITUDE, PHILIPS_PHASE)
        ],
    )


def test_image_class_reads_complex_parts_and_dixon_maps():
    def of(*values: str, **tags) -> str:
        ds = Dataset()
        ds.ImageType = list(values)
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        return image_class(ds)

    assert of(*PHILIPS_MAGNITUDE) == "magnitude"
    assert of(*PHILIPS_PHASE) == "phase"
    assert of("ORIGINAL", "PRIMARY", "P", "ND") == "phase"  # Siemens phase
    assert of("ORIGINAL", "PRIMARY", "R", "ND") == "real"
    assert of("ORIGINAL", "PRIMARY", "OTHER", ComplexImageComponent="IMAGINARY") == "imaginary"
    # IN_PHASE / OUT_PHASE / OPP_PHASE are Dixon maps, not phase images (dcm2niix reads
    # any "PHASE" as phase).
    assert of("ORIGINAL", "PRIMARY", "DIXON", "OPP_PHASE") == "opp"
    assert of("ORIGINAL", "PRIMARY", "OUT_PHASE") == "opp"
    assert of("ORIGINAL", "PRIMARY", "IN_PHASE") == "in"
    assert of("DERIVED", "PRIMARY", "W", "W", "DERIVED") == "water"
    assert of("DERIVED", "PRIMARY", "DIXON", "FAT") == "fat"


def test_magnitude_and_phase_of_two_echoes_split_into_four(magnitude_and_phase):
    datasets = _read(magnitude_and_phase)
    with pytest.raises(DicomError) as caught:  # unsplit, the images share positions
        series_volumes(datasets)
    assert caught.value.reason == "duplicate_slices"
    parts = group_by_subseries(datasets)
    uid = f"{UID_ROOT}.55"
    assert list(parts) == [
        SubSeries(uid, 1, "magnitude"),
        SubSeries(uid, 1, "phase"),
        SubSeries(uid, 2, "magnitude"),
        SubSeries(uid, 2, "phase"),
    ]
    for index, members in enumerate(parts.values()):
        (volume,) = series_volumes(members)
        np.testing.assert_array_equal(volume.array[0, 0], 10 * (index + 1) + np.arange(3))


@needs_dcm2niix
def test_convert_series_splits_magnitude_and_phase_as_dcm2niix(
    magnitude_and_phase, tmp_path, capsys
):
    out = tmp_path / "ours.nii"
    assert convert(str(magnitude_and_phase), str(out), "--dtype", "float32") == 0
    printed = capsys.readouterr().out
    assert "magnitude images" in printed and "phase images" in printed
    log, theirs = dcm2niix(magnitude_and_phase, tmp_path / "dcm2niix")
    names = ["x_e1.nii", "x_e1_ph.nii", "x_e2.nii", "x_e2_ph.nii"]
    assert [p.name for p in theirs] == names, log
    for reference in theirs:
        ours = tmp_path / reference.name.replace("x_", "ours_")
        assert_same_world_image(ours, reference, atol=1e-3)


def test_convert_series_writes_each_dixon_map_of_one_series(tmp_path):
    maps = {
        "water": ["DERIVED", "PRIMARY", "W", "W", "DERIVED"],
        "fat": ["DERIVED", "PRIMARY", "F", "F", "DERIVED"],
        "in": ["ORIGINAL", "PRIMARY", "IP", "IP", "DERIVED"],
        "opp": ["ORIGINAL", "PRIMARY", "OP", "OP", "DERIVED"],
    }
    folder = _mixed_series(tmp_path / "mdixon", [(t, {}) for t in maps.values()])
    assert convert(str(folder), str(tmp_path / "out.nii.gz"), "--dtype", "float32") == 0
    for index, name in enumerate(maps):
        image = nib.load(tmp_path / f"out_{name}.nii.gz")
        np.testing.assert_array_equal(image.get_fdata()[0, 0], 10 * (index + 1) + np.arange(3))
    assert sorted(p.name for p in tmp_path.glob("out*")) == sorted(
        f"out_{name}.nii.gz" for name in maps
    )


# --- reading folders and choosing series ---------------------------------------------------


def test_read_datasets_skips_non_dicom_and_dicomdir(axial, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(axial, folder / "a")
    (folder / "notes.txt").write_text("not DICOM\n")
    shutil.copy(PYDICOM_DATA / "dicomdirtests" / "DICOMDIR", folder / "DICOMDIR")
    skipped = []
    datasets = read_datasets([folder], on_skip=lambda path, why: skipped.append((path, why)))
    assert len(datasets) == SHAPE[2]
    assert sorted((p.name, "DICOMDIR" in why) for p, why in skipped) == [
        ("DICOMDIR", True),
        ("notes.txt", False),
    ]
    assert [Path(ds.filename).name for ds in datasets] == sorted(p.name for p in axial.iterdir())
    with pytest.raises(MyoflowError, match="does not exist"):
        read_datasets([tmp_path / "nowhere"])


def test_convert_series_chooses_among_several_series(axial, two_echoes, tmp_path, capsys):
    folder = tmp_path / "two"
    shutil.copytree(axial, folder / "water")
    shutil.copytree(two_echoes, folder / "echoes")
    (folder / "notes.txt").write_text("not DICOM\n")
    uids = list(group_by_series(_read(folder)))
    assert len(uids) == 2
    with pytest.raises(MyoflowError, match="2 series; choose one with --series-uid") as caught:
        convert(str(folder), str(tmp_path / "out.nii.gz"))
    assert all(uid in str(caught.value) for uid in uids)
    with pytest.raises(MyoflowError, match="no series 1.2.3"):
        convert(str(folder), str(tmp_path / "out.nii.gz"), "--series-uid", "1.2.3")
    water_uid = pydicom.dcmread(axial / "IM_0001.dcm").SeriesInstanceUID
    assert convert(str(folder), str(tmp_path / "out.nii"), "--series-uid", water_uid) == 0
    written = nib.load(tmp_path / "out.nii")
    assert written.shape == SHAPE and written.get_data_dtype() == np.int16  # the default
    err = capsys.readouterr().err
    assert "note: ignored" in err and "notes.txt (not a DICOM file)" in err
    with pytest.raises(SystemExit):
        convert(str(folder), str(tmp_path / "out.mgz"))


def test_echo_path():
    assert convert_series.echo_path(Path("a/b.nii.gz"), 2) == Path("a/b_e2.nii.gz")
    assert convert_series.echo_path(Path("b.x.nii"), 1) == Path("b.x_e1.nii")


# --- real MR files shipped with pydicom and nibabel ---------------------------------------

MR1 = PYDICOM_DATA / "dicomdirtests" / "98892003" / "MR1"
MR2 = PYDICOM_DATA / "dicomdirtests" / "98892003" / "MR2"
MR700 = PYDICOM_DATA / "dicomdirtests" / "98892003" / "MR700"
NIBABEL_MOSAIC = Path(nib.__file__).parent / "tests" / "data"  # same bytes as nicom's

# label -> (files of one series, extra dcm2niix flags, decoder the file needs).
MATCHES_DCM2NIIX = {
    "MR_small": ([PYDICOM_DATA / "MR_small.dcm"], (), None),
    "MR_small_RLE": ([PYDICOM_DATA / "MR_small_RLE.dcm"], (), None),
    "MR_small_bigendian": ([PYDICOM_DATA / "MR_small_bigendian.dcm"], (), None),
    "MR_small_expb": ([PYDICOM_DATA / "MR_small_expb.dcm"], (), None),
    "MR_small_implicit": ([PYDICOM_DATA / "MR_small_implicit.dcm"], (), None),
    "MR_small_padded": ([PYDICOM_DATA / "MR_small_padded.dcm"], (), None),
    "MR_small_jp2klossless": (
        [PYDICOM_DATA / "MR_small_jp2klossless.dcm"],
        (),
        JPEG2000LosslessDecoder,
    ),
    "MR_small_jpeg_ls_lossless": (
        [PYDICOM_DATA / "MR_small_jpeg_ls_lossless.dcm"],
        (),
        JPEGLSLosslessDecoder,
    ),
    "zipMR": ([PYDICOM_DATA / "zipMR.gz"], (), None),  # gzipped MR_small
    # Three one-slice series of one study; the slab thickness gives the third axis.
    "MR1_15820": ([MR1 / "15820"], (), None),
    "MR1_4919": ([MR1 / "4919"], (), None),
    "MR1_5641": ([MR1 / "5641"], (), None),
    "MR2_15970": ([MR2 / "15970"], (), None),
    # dcm2niix also writes the overlay plane as x_ROI1.nii; we ignore overlays.
    "examples_overlay": ([PYDICOM_DATA / "examples_overlay.dcm"], (), None),
    # Siemens "real part" image (ImageType R): dcm2niix names it x_real. Oblique.
    "decimal_rescale": ([NIBABEL_DATA / "decimal_rescale.dcm"], (), None),
    # Philips enhanced multi-frame 3-D (176 frames, oblique). By default dcm2niix applies
    # Philips' private "precise" scaling (2005,100E); -p n makes it use RescaleSlope and
    # RescaleIntercept from the functional groups, as we do.
    "philips_mprage": ([NIBABEL_DATA / "philips_mprage.dcm.gz"], ("-p", "n"), None),
}

# label -> (files, our reason, shapes of the NIfTIs dcm2niix writes), for files we refuse.
REFUSED = {
    # Both refuse: the pixel data stops 62 bytes short.
    "MR_truncated": ([PYDICOM_DATA / "MR_truncated.dcm"], "pixel_data", []),
    # Both refuse: a mosaic header with no pixel data at all.
    "csa_slice_norm": ([NIBABEL_DATA / "csa_slice_norm.dcm"], "multiframe", []),
    # Siemens mosaics: dcm2niix unpacks the tiles into a 3-D volume; we refuse them.
    "mosaic_0": ([NIBABEL_DATA / "0.dcm"], "multiframe", [(36, 36, 48)]),
    "mosaic_1": ([NIBABEL_DATA / "1.dcm"], "multiframe", [(36, 36, 48)]),
    "mosaic_0_tests": ([NIBABEL_MOSAIC / "0.dcm"], "multiframe", [(36, 36, 48)]),
    "mosaic_1_tests": ([NIBABEL_MOSAIC / "1.dcm"], "multiframe", [(36, 36, 48)]),
    "siemens_dwi_0": ([NIBABEL_DATA / "siemens_dwi_0.dcm.gz"], "multiframe", [(128, 128, 48)]),
    "siemens_dwi_1000": (
        [NIBABEL_DATA / "siemens_dwi_1000.dcm.gz"],
        "multiframe",
        [(128, 128, 48)],
    ),
    # Three-plane localisers and radial slices: dcm2niix says "Slices not stacked:
    # orientation varies" and writes one single-slice NIfTI per file.
    "MR2_localiser_136": (
        [MR2 / "4950", MR2 / "4981", MR2 / "5011"],
        "mixed_orientation",
        [(16, 16, 1)] * 3,
    ),
    "MR2_localiser_17": (
        [MR2 / "6273", MR2 / "6605", MR2 / "6935"],
        "mixed_orientation",
        [(16, 16, 1)] * 3,
    ),
    "MR700_radial": (sorted(MR700.iterdir()), "mixed_orientation", [(16, 16, 1)] * 7),
}

# A Siemens MIP in JPEG 2000 that dcm2niix's OpenJPEG cannot decode ("OpenJPEG failed to
# read the header"); pydicom (through Pillow) and SimpleITK (GDCM) both decode it, so
# SimpleITK is the reference here.
NOT_DECODED_BY_DCM2NIIX = NIBABEL_DATA / "slicethickness_empty_string.dcm"


def _stage(folder: Path, files: list[Path]) -> Path:
    """Copy ``files`` into ``folder``, gunzipping ``*.gz``."""
    folder.mkdir(parents=True)
    for path in files:
        assert path.is_file(), f"{path} no longer ships with the installed package"
        if path.suffix == ".gz":
            (folder / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
        else:
            shutil.copy(path, folder / path.name)
    return folder


def _mr_files(folder: Path) -> set[Path]:
    found = set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".gz":
            try:
                data = gzip.decompress(data)
            except OSError:
                continue
        try:
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
        except Exception:  # not DICOM, or not readable at all: nothing to convert
            continue
        if ds.get("Modality") == "MR":
            found.add(path)
    return found


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_every_shipped_mr_file_is_compared():
    shipped = _mr_files(PYDICOM_DATA) | _mr_files(NIBABEL_DATA) | _mr_files(NIBABEL_MOSAIC)
    used = {NOT_DECODED_BY_DCM2NIIX}
    for files, *_ in [*MATCHES_DCM2NIIX.values(), *REFUSED.values()]:
        used.update(files)
    assert shipped == used


@needs_dcm2niix
@pytest.mark.parametrize("label", list(MATCHES_DCM2NIIX))
def test_real_file_matches_dcm2niix(label, tmp_path):
    files, flags, decoder = MATCHES_DCM2NIIX[label]
    folder = _stage(tmp_path / "in", files)
    log, theirs = dcm2niix(folder, tmp_path / "dcm2niix", *flags)
    theirs = [p for p in theirs if "_ROI" not in p.name]
    assert len(theirs) == 1, log
    if decoder is not None and not decoder.is_available:
        # dcm2niix has its own decoders (OpenJPEG, CharLS); pydicom needs a plugin
        # (pylibjpeg-libjpeg, pyjpegls or gdcm) that this environment does not install.
        with pytest.raises(DicomError) as caught:
            series_volumes(_read(folder))
        assert caught.value.reason == "pixel_data"
        return
    ours = tmp_path / "ours.nii"
    assert convert(str(folder), str(ours), "--dtype", "float32") == 0
    peak = np.abs(nib.load(theirs[0]).get_fdata()).max()
    assert_same_world_image(ours, theirs[0], atol=1e-5 * max(peak, 1.0))


@needs_dcm2niix
@pytest.mark.parametrize("label", list(REFUSED))
def test_real_file_refused(label, tmp_path):
    files, reason, dcm2niix_shapes = REFUSED[label]
    folder = _stage(tmp_path / "in", files)
    with pytest.raises(DicomError) as caught:
        series_volumes(_read(folder))
    assert caught.value.reason == reason
    log, theirs = dcm2niix(folder, tmp_path / "dcm2niix")
    assert [nib.load(p).shape for p in theirs] == dcm2niix_shapes, log


def test_real_jpeg2000_file_matches_simpleitk(tmp_path):
    folder = _stage(tmp_path / "in", [NOT_DECODED_BY_DCM2NIIX])
    if not JPEG2000LosslessDecoder.is_available:
        with pytest.raises(DicomError, match="decode"):
            series_volumes(_read(folder))
        return
    ours = tmp_path / "ours.nii"
    assert convert(str(folder), str(ours), "--dtype", "float32") == 0
    reference = tmp_path / "itk.nii"
    sitk.WriteImage(sitk.ReadImage(str(folder / NOT_DECODED_BY_DCM2NIIX.name)), str(reference))
    # SimpleITK gives a single slice 1 mm thickness when SliceThickness is empty; so do we.
    assert_same_world_image(ours, reference, atol=1e-3)
