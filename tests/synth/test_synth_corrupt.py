"""The bad-input corpus: every case does the damage it claims, and is recorded."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from myoflow.core.sheet import SheetError, validate_sheet
from myoflow.synth import corrupt
from myoflow.synth.cohort import CohortSpec, bad_input_cases, generate_cohort
from myoflow.synth.signal import ArtefactRates

CLEAN = ArtefactRates(swap=0, partial_swap=0, missing_station=0, missing_channel=0)


@pytest.fixture(scope="module")
def participant(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    generate_cohort(
        CohortSpec(out=out, participants=1, protocol="ukbb", seed=21, size="small", rates=CLEAN)
    )
    return out / "dicom" / "ukbb000001"


@pytest.fixture
def damaged(participant, tmp_path, request) -> tuple[Path, str]:
    copy = tmp_path / "p"
    shutil.copytree(participant, copy)
    function, _ = corrupt.DICOM_CASES[request.param]
    detail = function(copy, np.random.default_rng(0))
    return copy, detail


def _headers(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    out = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            try:
                out.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
            except pydicom.errors.InvalidDicomError:
                continue
    return out


def _series(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    groups: dict[str, list[pydicom.Dataset]] = {}
    for _, header in _headers(folder):
        groups.setdefault(header.SeriesInstanceUID, []).append(header)
    return groups


def _file_sizes(folder: Path) -> list[int]:
    return sorted(p.stat().st_size for p in folder.rglob("*.dcm"))


@pytest.mark.parametrize("damaged", ["truncated_file"], indirect=True)
def test_truncated_file(damaged, participant):
    folder, detail = damaged
    sizes, original = _file_sizes(folder), _file_sizes(participant)
    assert len(sizes) == len(original) and sizes[0] < 0.6 * original[0]
    assert "half" in detail


@pytest.mark.parametrize("damaged", ["zero_byte_file"], indirect=True)
def test_zero_byte_file(damaged):
    folder, _ = damaged
    assert _file_sizes(folder)[0] == 0


@pytest.mark.parametrize("damaged", ["duplicated_slice"], indirect=True)
def test_duplicated_slice(damaged):
    folder, _ = damaged
    positions: dict[tuple, int] = {}
    for header in (h for group in _series(folder).values() for h in group):
        key = (header.SeriesInstanceUID, tuple(float(v) for v in header.ImagePositionPatient))
        positions[key] = positions.get(key, 0) + 1
    assert sorted(positions.values())[-1] == 2


@pytest.mark.parametrize("damaged", ["station_gap"], indirect=True)
def test_station_gap_leaves_space_between_stations(damaged):
    folder, _ = damaged
    ranges = sorted(
        (
            min(float(h.ImagePositionPatient[2]) for h in group),
            max(float(h.ImagePositionPatient[2]) for h in group),
        )
        for group in _series(folder).values()
        if "WATER" in group[0].ImageType
    )
    gaps = [low - high for (_, high), (low, _) in zip(ranges, ranges[1:], strict=False)]
    assert max(gaps) > 0  # some station no longer overlaps or touches the next


@pytest.mark.parametrize("damaged", ["mixed_participants"], indirect=True)
def test_mixed_participants(damaged):
    folder, _ = damaged
    assert len({h.PatientID for _, h in _headers(folder)}) == 2


@pytest.mark.parametrize("damaged", ["inconsistent_orientation"], indirect=True)
def test_inconsistent_orientation(damaged):
    folder, _ = damaged
    orientations = {
        tuple(round(float(v), 4) for v in g[0].ImageOrientationPatient)
        for g in _series(folder).values()
    }
    assert len(orientations) == 2


@pytest.mark.parametrize("damaged", ["missing_channel", "missing_station"], indirect=True)
def test_missing_series(damaged):
    folder, detail = damaged
    count = len(_series(folder))
    assert count == (23 if "series" in detail else 20)


@pytest.mark.parametrize(
    ("damaged", "expected_modality", "expected_non_dicom"),
    [("non_dicom_files", None, 2), ("non_mr_file", "PR", 0), ("ct_series", "CT", 0)],
    indirect=["damaged"],
)
def test_junk_that_must_be_ignored_leaves_all_mr_series(
    damaged, expected_modality, expected_non_dicom
):
    folder, _ = damaged
    groups = _series(folder).values()
    assert len([g for g in groups if g[0].Modality == "MR"]) == 24
    assert {g[0].Modality for g in groups if g[0].Modality != "MR"} == (
        {expected_modality} - {None}
    )
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    assert files - len(_headers(folder)) == expected_non_dicom


def test_corrupt_zip_is_unreadable(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for n in range(5):
        (source / f"f{n}.bin").write_bytes(np.random.default_rng(n).bytes(20_000))
    archive = tmp_path / "p.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.iterdir()):
            zf.write(path, path.name)
    corrupt.corrupt_zip(archive, np.random.default_rng(0))
    with pytest.raises(zipfile.BadZipFile):
        with zipfile.ZipFile(archive) as zf:
            zf.testzip()


def test_case_assignment_covers_every_case_once_enough_participants():
    spec = CohortSpec(out=Path("unused"), participants=40, protocol="ukbb", seed=3, bad_inputs=0.5)
    cases = bad_input_cases(spec)
    assert len(cases) == 20
    assert set(cases.values()) == set(corrupt.CASES)
    assert bad_input_cases(spec) == cases  # deterministic
    assert (
        bad_input_cases(CohortSpec(out=Path("u"), participants=40, protocol="ukbb", seed=3)) == {}
    )


def test_phenotype_damage_and_unsafe_sheet_are_refused():
    table = pd.DataFrame(
        {
            "participant_id": ["a1", "a2"],
            "height_cm": [170.0, 160.0],
            "weight_kg": [70.0, 60.0],
            "age": [50.0, 60.0],
            "sex": ["F", "M"],
        }
    )
    detail = corrupt.damage_phenotypes(table, "absurd_phenotype", "a2", np.random.default_rng(1))
    changed = table.iloc[1]
    assert changed["height_cm"] < 30 or changed["weight_kg"] > 500 or changed["age"] < 0, detail
    corrupt.damage_phenotypes(table, "missing_phenotype", "a1", np.random.default_rng(2))
    assert table.iloc[0].isna().any()
    sheet = pd.DataFrame(
        {"participant_id": ["a1", "a2"], "dicom": ["d/a1", "d/a2"], "release": ["r1", "r1"]}
    )
    validate_sheet(sheet)
    with pytest.raises(SheetError, match="escape"):
        validate_sheet(corrupt.unsafe_sheet(sheet))
