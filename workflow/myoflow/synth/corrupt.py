"""Broken deliveries on purpose: the bad-input corpus every stage must survive.

``myoflow synth --bad-inputs FRACTION`` damages that fraction of participants after their
DICOM is written, one case each, assigned in turn from :data:`CASES` so every case
appears once the fraction covers enough participants. What was done is recorded in
``bad_inputs.tsv`` with what a correct pipeline must make of it: ``excluded`` (the
participant is left out with a reason) or ``included`` (the junk is reported and ignored,
the participant goes through). Phenotype cases damage ``phenotypes.tsv``; unsafe and
duplicate ids go into a separate sheet, ``participants_unsafe.tsv``, that the workflow
must refuse at start-up.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

EXCLUDED, INCLUDED = "excluded", "included"


def _series_folders(participant: Path) -> list[Path]:
    return sorted(p for p in participant.iterdir() if p.is_dir())


def _slices(series: Path) -> list[Path]:
    return sorted(series.glob("*.dcm"))


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _station_series(participant: Path, station: int) -> list[Path]:
    """Series folders of one station (the writer numbers series (station - 1) * 4 + c + 1)."""
    return [s for s in _series_folders(participant) if (int(s.name[1:]) - 1) // 4 + 1 == station]


def _rewrite(series: Path, destination: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    """Copy a series with new UIDs, applying ``change`` to every slice."""
    destination.mkdir(parents=True)
    series_uid = generate_uid(entropy_srcs=[str(destination)])
    for path in _slices(series):
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = generate_uid(entropy_srcs=[str(destination), path.name])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        change(dataset)
        dataset.save_as(destination / path.name, enforce_file_format=True)


def truncated_file(participant: Path, rng: np.random.Generator) -> str:
    path = _pick_slice(participant, rng)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return f"{path.relative_to(participant)} cut to half its bytes"


def zero_byte_file(participant: Path, rng: np.random.Generator) -> str:
    path = _pick_slice(participant, rng)
    path.write_bytes(b"")
    return f"{path.relative_to(participant)} emptied"


def _pick_slice(participant: Path, rng: np.random.Generator) -> Path:
    series = _series_folders(participant)
    slices = _slices(series[int(rng.integers(len(series)))])
    return slices[int(rng.integers(1, len(slices) - 1))]  # inside the series, not its end


def non_dicom_files(participant: Path, rng: np.random.Generator) -> str:
    series = _series_folders(participant)[0]
    (series / "notes.txt").write_text("scanner console export\n")
    (participant / "DICOMDIR.bak").write_bytes(rng.bytes(512))
    return "a text file among the slices and random bytes beside the series"


def non_mr_file(participant: Path, rng: np.random.Generator) -> str:
    """A presentation-state object (not MR) among one series' slices."""
    series = _series_folders(participant)[int(rng.integers(4))]
    dataset = _header(_slices(series)[0])
    dataset.Modality = "PR"
    dataset.SOPInstanceUID = generate_uid(entropy_srcs=[str(series), "pr"])
    dataset.SeriesInstanceUID = generate_uid(entropy_srcs=[str(series), "pr-series"])
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(series / "PR_0001.dcm", enforce_file_format=True)
    return f"a presentation state (Modality PR) in {series.name}"


def ct_series(participant: Path, rng: np.random.Generator) -> str:
    source = _series_folders(participant)[int(rng.integers(4))]

    def to_ct(dataset: pydicom.Dataset) -> None:
        dataset.Modality = "CT"
        dataset.SOPClassUID = pydicom.uid.CTImageStorage
        dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        dataset.SeriesDescription = "Topogram"

    _rewrite(source, participant / "S900", to_ct)
    return f"a CT copy of {source.name} as S900"


def duplicated_slice(participant: Path, rng: np.random.Generator) -> str:
    path = _pick_slice(participant, rng)
    dataset = pydicom.dcmread(path)
    dataset.SOPInstanceUID = generate_uid(entropy_srcs=[str(path), "duplicate"])
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(path.with_name(path.stem + "_dup.dcm"), enforce_file_format=True)
    return f"{path.relative_to(participant)} duplicated at the same position"


def station_gap(participant: Path, rng: np.random.Generator) -> str:
    """Remove the lowest slices of one station in every channel, past the overlap."""
    stations = sorted({(int(s.name[1:]) - 1) // 4 + 1 for s in _series_folders(participant)})
    station = stations[int(rng.integers(len(stations) - 1))]  # one that has a station below
    removed = 0
    for series in _station_series(participant, station):
        slices = sorted(_slices(series), key=lambda p: float(_header(p).ImagePositionPatient[2]))
        removed = max(4, len(slices) // 4)
        for path in slices[:removed]:
            path.unlink()
    return f"lowest {removed} slices of station {station} removed in every channel"


SECOND_PERSON_NAME = "Halvorsen^Perpetua"
"""The name of the other person in ``mixed_participants``: realistic, so that the
identifier scan (tests/test_reliability.py), which searches every part of a planted name,
finds it if it leaks; a placeholder like "Other^Person" matched the English word "other"
in QC messages (bench/reliability.py counted 279 such hits, none a leak)."""


def mixed_participants(participant: Path, rng: np.random.Generator) -> str:
    source = _series_folders(participant)[int(rng.integers(4))]
    other = f"HOSP-{int(rng.integers(10**7, 10**8))}"
    study = generate_uid(entropy_srcs=[other])

    def to_other_person(dataset: pydicom.Dataset) -> None:
        dataset.PatientID = other
        dataset.PatientName = SECOND_PERSON_NAME
        dataset.StudyInstanceUID = study

    _rewrite(source, participant / "S901", to_other_person)
    return f"a series of another person ({source.name} re-identified) as S901"


def inconsistent_orientation(participant: Path, rng: np.random.Generator) -> str:
    """One series' slices tilted by 10 degrees about z (a re-planned station)."""
    series = _series_folders(participant)[int(rng.integers(len(_series_folders(participant))))]
    angle = np.radians(10.0)
    for path in _slices(series):
        dataset = pydicom.dcmread(path)
        row = [np.cos(angle), np.sin(angle), 0.0]
        column = [-np.sin(angle), np.cos(angle), 0.0]
        dataset.ImageOrientationPatient = [f"{v:.6f}" for v in row + column]
        dataset.save_as(path, enforce_file_format=True)
    return f"{series.name} tilted by 10 degrees"


def corrupt_zip(archive: Path, rng: np.random.Generator) -> str:
    data = bytearray(archive.read_bytes())
    start = len(data) // 3
    data[start : start + 4096] = rng.bytes(4096)
    archive.write_bytes(bytes(data[: len(data) * 2 // 3]))
    return "zip overwritten with random bytes in its middle and cut short"


def missing_channel(participant: Path, rng: np.random.Generator) -> str:
    series = _series_folders(participant)[int(rng.integers(len(_series_folders(participant))))]
    shutil.rmtree(series)
    return f"series {series.name} removed"


def missing_station(participant: Path, rng: np.random.Generator) -> str:
    stations = sorted({(int(s.name[1:]) - 1) // 4 + 1 for s in _series_folders(participant)})
    station = stations[int(rng.integers(len(stations)))]
    for series in _station_series(participant, station):
        shutil.rmtree(series)
    return f"station {station} removed (all channels)"


DICOM_CASES: dict[str, tuple[Callable[[Path, np.random.Generator], str], str]] = {
    "truncated_file": (truncated_file, EXCLUDED),
    "zero_byte_file": (zero_byte_file, EXCLUDED),
    "duplicated_slice": (duplicated_slice, EXCLUDED),
    "station_gap": (station_gap, EXCLUDED),
    "mixed_participants": (mixed_participants, EXCLUDED),
    "inconsistent_orientation": (inconsistent_orientation, EXCLUDED),
    "missing_channel": (missing_channel, EXCLUDED),
    "missing_station": (missing_station, EXCLUDED),
    "non_dicom_files": (non_dicom_files, INCLUDED),
    "non_mr_file": (non_mr_file, INCLUDED),
    "ct_series": (ct_series, INCLUDED),
}
"""Damage to a participant's DICOM folder: the function, and the right outcome."""

ZIP_CASE = "corrupt_zip"
PHENOTYPE_CASES = ("missing_phenotype", "absurd_phenotype")
CASES = (*DICOM_CASES, ZIP_CASE, *PHENOTYPE_CASES)
"""Every case, in the order they are assigned to damaged participants."""


def damage_phenotypes(table, case: str, participant_id: str, rng: np.random.Generator) -> str:
    """Blank or falsify one participant's phenotype row in place (a DataFrame)."""
    row = table.index[table["participant_id"] == participant_id][0]
    if case == "missing_phenotype":
        column = ("height_cm", "weight_kg", "age", "sex")[int(rng.integers(4))]
        table.loc[row, column] = None
        return f"{column} left empty"
    column, value = (("height_cm", 17.5), ("weight_kg", 930.0), ("age", -4.0))[int(rng.integers(3))]
    table.loc[row, column] = value
    return f"{column} set to {value}"


def unsafe_sheet(sheet):
    """The participant sheet with an unsafe id and a duplicated id appended."""
    import pandas as pd

    first = sheet.iloc[0]
    extra = pd.DataFrame(
        [
            {"participant_id": "../escape", "dicom": first["dicom"], "release": first["release"]},
            {"participant_id": "has space", "dicom": first["dicom"], "release": first["release"]},
            {"participant_id": first["participant_id"], "dicom": first["dicom"], "release": "r1"},
        ]
    )
    return pd.concat([sheet, extra], ignore_index=True)
