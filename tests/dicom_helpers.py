"""Tiny DICOM folders, zips and participant sheets with known contents, for tests."""

from __future__ import annotations

import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from myoflow.synth.dicom_writer import PatientInfo

UID_ROOT = "1.2.826.0.1.3680043.8.498.99"
"""Arbitrary test UID root; no real study uses it."""

# Two series of one station: (series uid, description, image type, slice z in mm).
SERIES = [
    (
        f"{UID_ROOT}.1",
        "Dixon_BH_17s_W",
        ["DERIVED", "PRIMARY", "DIXON", "WATER"],
        [-40.0, -37.0, -34.0],
    ),
    (f"{UID_ROOT}.2", "Dixon_BH_17s_F", ["DERIVED", "PRIMARY", "DIXON", "FAT"], [-40.0, -37.0]),
]


def write_slice(
    path: Path,
    *,
    series_uid: str,
    instance: int,
    description: str,
    image_type: list[str],
    z_mm: float,
    modality: str = "MR",
    rows: int = 5,
    columns: int = 7,
    spacing_mm: tuple[float, float] = (2.232142857, 2.5),
    thickness_mm: float = 3.0,
) -> None:
    """Write one small DICOM image (MR unless ``modality`` says otherwise) to ``path``."""
    sop_uid = f"{series_uid}.{instance}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage if modality == "MR" else CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = f"{UID_ROOT}.0"
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = "SECRET-PATIENT-ID"
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.ImageType = image_type
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [-100.0, -80.0, z_mm]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = list(spacing_mm)
    ds.SliceThickness = thickness_mm
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(rows * columns, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_dicom_folder(folder: Path) -> Path:
    """Write SERIES (5 MR files in two subfolders), a CT file and a non-DICOM file.

    Returns ``folder``. Expected inventory: 2 series (3 and 2 files); ignored
    ``notes.txt`` (not_dicom) and ``ct/ct0001.dcm`` (not_mr).
    """
    for s, (uid, description, image_type, zs) in enumerate(SERIES, 1):
        for i, z in enumerate(zs, 1):
            write_slice(
                folder / f"series{s}" / f"im{i:04d}.dcm",
                series_uid=uid,
                instance=i,
                description=description,
                image_type=image_type,
                z_mm=z,
            )
    write_slice(
        folder / "ct" / "ct0001.dcm",
        series_uid=f"{UID_ROOT}.3",
        instance=1,
        description="CT localiser",
        image_type=["ORIGINAL", "PRIMARY"],
        z_mm=0.0,
        modality="CT",
    )
    (folder / "notes.txt").write_text("not a DICOM file\n")
    return folder


def zip_folder(folder: Path, archive: Path) -> Path:
    """Zip every file under ``folder`` (names relative to it) into ``archive``."""
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return archive


def write_sheet(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """Write a participant sheet of (participant_id, dicom, release) rows."""
    lines = ["participant_id\tdicom\trelease"] + ["\t".join(row) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


TEST_PATIENT = PatientInfo(
    patient_name="Testperson^Erika",
    patient_id="SYN0001234",
    birth_date="19620715",
    sex="F",
    age_years=57,
    weight_kg=68.4,
    height_m=1.69,
    institution="Synthetic Imaging Centre",
    study_date="20190312",
    study_time="091500",
)
"""A planted test identity for synthetic series (tests search outputs for its strings)."""


def dcm2niix_binary() -> str | None:
    """The dcm2niix from the test environment's PyPI package, else one on PATH, else None."""
    beside = Path(sys.executable).parent / "dcm2niix"
    return str(beside) if beside.exists() else shutil.which("dcm2niix")


def progress_outcomes(lines: list[str]) -> list[str]:
    """The shard runner's progress lines without their counter and timing:
    ``[2/3] P1: ok (1.2 s, ETA 0:01)`` -> ``P1: ok``; other lines are dropped."""
    pattern = re.compile(r"^\[\d+/\d+\] (.*) \(\d+\.\d s, ETA [\d:]+\)$")
    return [match.group(1) for line in lines if (match := pattern.match(line))]
