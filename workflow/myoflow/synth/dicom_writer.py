"""Write synthetic DIXON volumes as scanner-like single-frame MR DICOM series.

One series is one channel (water, fat, in-phase or opposed-phase) of one station: one
MR Image Storage file per axial slice, with Siemens-style headers modelled on the UK
Biobank (1.5 T Aera) and NAKO (3 T Skyra) body protocols (the scanner and sequence tags
are in :mod:`myoflow.synth.scanner_tags`). The output must pass for a real
delivery in pydicom, SimpleITK/GDCM and dcm2niix, so the geometry tags follow the DICOM
patient (LPS) convention exactly, and the bytes must be reproducible: no clock is read
and every UID is a hash of the inputs.

Geometry convention: ``volume[i, j, k]`` sits at ``origin + direction @ (i*sx, j*sy, k*sz)``
in LPS millimetres, where the columns of ``direction`` are the unit vectors of the i, j, k
axes. File k holds ``volume[:, :, k]`` with DICOM rows along j and columns along i.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

from myoflow.core.io import atomic_path
from myoflow.synth.scanner_tags import CHANNELS, channel_tags, scanner_tags

# Twelve stored bits, as Siemens magnitude images use; the rescale maps them back to the
# renderer's float units.
_BITS_STORED = 12
_MAX_STORED = (1 << _BITS_STORED) - 1
# Aim the series maximum a little below 4095 so the slope printed with finite digits
# can never push the rounded maximum over the 12-bit ceiling.
_TARGET_MAX_STORED = 4000

_IMPLEMENTATION_VERSION = "MYOFLOW_SYNTH"


def _uid(*parts: object) -> UID:
    """Return a UID hashed from ``parts``.

    pydicom joins entropy sources without a separator (("ab", "c") == ("a", "bc")), so
    the parts are JSON-encoded first to keep distinct inputs distinct.
    """
    return pydicom.uid.generate_uid(entropy_srcs=[json.dumps([str(p) for p in parts])])


# Fixed rather than random so that identical inputs give identical file meta bytes.
_IMPLEMENTATION_CLASS_UID = _uid("myoflow", "synth", "dicom_writer", "implementation")

# Timing of the synthetic session: each station starts a fixed interval after the
# previous one; the four channel series of a station are reconstructed seconds apart.
_FIRST_STATION_DELAY_S = 120.0
_STATION_INTERVAL_S = {"ukbb": 45.0, "nako": 60.0}
_RECON_DELAY_S = 20.0
_CHANNEL_RECON_STEP_S = 0.5


@dataclass(frozen=True)
class PatientInfo:
    """Planted identifiers and demographics of one synthetic participant.

    Attributes:
        patient_name: DICOM person name, e.g. ``"Doe^Jane"``.
        patient_id: scanner-side patient ID.
        birth_date: ``YYYYMMDD``.
        sex: ``"F"`` or ``"M"``.
        age_years: age at the scan.
        weight_kg: body weight in kg.
        height_m: body height in metres.
        institution: imaging centre name.
        study_date: ``YYYYMMDD`` of the scan.
        study_time: ``HHMMSS`` of the study start.
    """

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age_years: int
    weight_kg: float
    height_m: float
    institution: str
    study_date: str
    study_time: str


@dataclass(frozen=True)
class SeriesInfo:
    """Which series to write and the seed its UIDs derive from.

    Attributes:
        protocol: ``"ukbb"`` or ``"nako"``.
        channel: ``"water"``, ``"fat"``, ``"in"`` or ``"opp"``.
        station: 1-based station number (head to feet).
        series_number: DICOM SeriesNumber.
        uid_seed: any string; series and instance UIDs are hashes of it (study and frame
            of reference UIDs are per patient study and derive from the patient instead).
    """

    protocol: str
    channel: str
    station: int
    series_number: int
    uid_seed: str


def _ds(value: float, decimals: int) -> str:
    """Format a number as a DICOM decimal string (at most 16 characters, no ``-0``)."""
    text = f"{round(float(value), decimals) + 0.0:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("", "-0"):
        text = "0"
    if len(text) > 16:
        text = pydicom.valuerep.format_number_as_ds(float(value))
    return text


def _shifted(date: str, time: str, seconds: float) -> tuple[str, str]:
    """Return (DA, TM) strings ``seconds`` after ``date`` ``time``, rolling past midnight."""
    start = dt.datetime.strptime(date + time[:6], "%Y%m%d%H%M%S")
    moment = start + dt.timedelta(seconds=seconds)
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")


def _accession_number(patient: PatientInfo) -> str:
    digest = hashlib.sha256(f"{patient.patient_id}|{patient.study_date}".encode()).hexdigest()
    return f"A{int(digest[:12], 16) % 10**9:09d}"


def _check_geometry(
    volume: np.ndarray, spacing: np.ndarray, direction: np.ndarray, origin: np.ndarray
) -> None:
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"volume must be a non-empty 3-D array, got shape {volume.shape}")
    if not np.all(np.isfinite(volume)) or volume.min() < 0:
        raise ValueError("volume must be finite and non-negative")
    if spacing.shape != (3,) or origin.shape != (3,) or direction.shape != (3, 3):
        raise ValueError("spacing and origin need 3 values, direction a 3x3 matrix")
    if np.any(spacing <= 0):
        raise ValueError(f"spacing must be positive, got {spacing}")
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-6):
        raise ValueError("direction columns must be orthonormal")


@dataclass(frozen=True)
class PixelEncoding:
    """How a series stores its pixels: bits stored and the rescale slope.

    Attributes:
        bits_stored: 12 (Siemens, Philips) or 16 (GE and others); 16 bits are allocated.
        fit_slope: choose the RescaleSlope per series so its maximum is stored as
            ``target_max`` (Siemens-like here, Philips in practice); otherwise the slope
            is 1 and the volume is stored as rounded integers, clipped at the top of the
            bit depth (the caller scales it into range).
        target_max: stored value of the series maximum when ``fit_slope``.
    """

    bits_stored: int = _BITS_STORED
    fit_slope: bool = True
    target_max: int = _TARGET_MAX_STORED

    def __post_init__(self) -> None:
        if self.bits_stored not in (12, 16):
            raise ValueError(f"bits_stored must be 12 or 16, got {self.bits_stored}")
        if not 1 <= self.target_max < (1 << self.bits_stored):
            raise ValueError(f"target_max {self.target_max} does not fit {self.bits_stored} bits")


DEFAULT_ENCODING = PixelEncoding()
"""12 bits stored, the slope fitted per series (what the standard generator writes)."""


def _rescale(
    volume: np.ndarray, encoding: PixelEncoding = DEFAULT_ENCODING
) -> tuple[str, np.ndarray]:
    """Choose the series RescaleSlope and quantise the volume to stored values.

    The slope is printed to six significant digits and the volume is divided by the
    printed value, so a reader multiplying by the header slope recovers each voxel to
    within half a step.

    Returns:
        (slope as DS string, uint16 array of stored values, same shape as ``volume``).
    """
    vmax = float(volume.max())
    if encoding.fit_slope and vmax > 0:
        slope_text = f"{vmax / encoding.target_max:.6g}"
    else:
        slope_text = "1"
    stored = np.rint(volume.astype(np.float64) / float(slope_text))
    return slope_text, np.clip(stored, 0, (1 << encoding.bits_stored) - 1).astype("<u2")


def _series_dataset(
    *,
    series: SeriesInfo,
    patient: PatientInfo,
    shape: tuple[int, int, int],
    spacing: np.ndarray,
    direction: np.ndarray,
    slope: str,
    window_max: float,
    bits_stored: int = _BITS_STORED,
    overrides: Mapping[str, object] | None = None,
) -> Dataset:
    """Build the dataset shared by all slices; per-slice elements are set later."""
    nx, ny, _ = shape
    series_uid = _uid(
        "series",
        series.uid_seed,
        patient.patient_id,
        series.protocol,
        series.station,
        series.channel,
        series.series_number,
    )
    station_start = (
        _FIRST_STATION_DELAY_S + (series.station - 1) * _STATION_INTERVAL_S[series.protocol]
    )
    channel_index = CHANNELS.index(series.channel)
    acq_date, acq_time = _shifted(patient.study_date, patient.study_time, station_start)
    ser_date, ser_time = _shifted(
        patient.study_date,
        patient.study_time,
        station_start + _RECON_DELAY_S + channel_index * _CHANNEL_RECON_STEP_S,
    )
    _, study_time = _shifted(patient.study_date, patient.study_time, 0.0)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.StudyDate = patient.study_date
    ds.SeriesDate = ser_date
    ds.AcquisitionDate = acq_date
    ds.ContentDate = ser_date
    ds.StudyTime = study_time
    ds.SeriesTime = ser_time
    ds.AcquisitionTime = acq_time
    ds.ContentTime = ser_time
    ds.AccessionNumber = _accession_number(patient)
    ds.InstitutionName = patient.institution
    ds.ReferringPhysicianName = ""
    ds.StationName = "MRC" + series.protocol.upper()
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{int(patient.age_years):03d}Y"
    ds.PatientSize = _ds(patient.height_m, 2)
    ds.PatientWeight = _ds(patient.weight_kg, 1)
    for keyword, value in {
        **scanner_tags(series.protocol),
        **channel_tags(series.protocol, series.channel, series.station),
        **(overrides or {}),
    }.items():
        setattr(ds, keyword, value)
    ds.SliceThickness = _ds(spacing[2], 6)
    ds.SpacingBetweenSlices = _ds(spacing[2], 6)
    ds.AcquisitionMatrix = [0, nx, ny, 0]
    # Study and frame of reference are per patient visit, so every station and channel
    # of one participant shares them whatever uid_seed the caller passes per series.
    ds.StudyInstanceUID = _uid("study", patient.patient_id, patient.study_date)
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series.series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [_ds(v, 10) for v in (*direction[:, 0], *direction[:, 1])]
    ds.FrameOfReferenceUID = _uid("frame", patient.patient_id, patient.study_date)
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.PixelSpacing = [_ds(spacing[1], 6), _ds(spacing[0], 6)]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    # Window in rescaled (output) units, covering the whole series range.
    width = max(1, round(window_max))
    ds.WindowCenter = _ds(width / 2, 1)
    ds.WindowWidth = str(width)
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = slope
    ds.RescaleType = "US"
    return ds


def write_series(
    volume: np.ndarray,
    *,
    origin_lps_mm: Sequence[float],
    spacing_mm: Sequence[float],
    direction: np.ndarray | Sequence[Sequence[float]],
    out_dir: str | Path,
    series: SeriesInfo,
    patient: PatientInfo,
    encoding: PixelEncoding = DEFAULT_ENCODING,
    overrides: Mapping[str, object] | None = None,
) -> list[Path]:
    """Write ``volume`` as one DICOM series, one file per k slice.

    Args:
        volume: (nx, ny, nz) non-negative float array.
        origin_lps_mm: LPS position of voxel (0, 0, 0) centre.
        spacing_mm: (sx, sy, sz) voxel size in mm along i, j, k.
        direction: 3x3 matrix whose columns are the LPS unit vectors of i, j, k.
        out_dir: folder to write ``IM_0001.dcm`` ... into (created if missing). Files
            of an earlier, longer series in the same folder are not removed.
        series: protocol, channel, station, series number and UID seed.
        patient: planted identifiers and study date/time.
        encoding: bits stored and rescale slope (default: 12 bits, slope fitted).
        overrides: DICOM keyword -> value replacing the protocol's scanner and channel
            tags (a randomised appearance's field strength, TR, flip angle, echo time).

    Returns:
        Paths of the written files in slice order.

    Raises:
        ValueError: bad volume, geometry, protocol or channel.
    """
    volume = np.asarray(volume)
    origin = np.asarray(origin_lps_mm, dtype=np.float64)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64)
    _check_geometry(volume, spacing, direction, origin)

    slope, stored = _rescale(volume, encoding)
    ds = _series_dataset(
        series=series,
        patient=patient,
        shape=volume.shape,
        spacing=spacing,
        direction=direction,
        slope=slope,
        window_max=float(stored.max()) * float(slope),
        bits_stored=encoding.bits_stored,
        overrides=overrides,
    )
    # (nz, ny, nx) C order: each slice's bytes are already DICOM row-major.
    slices = np.ascontiguousarray(stored.transpose(2, 1, 0))
    # SliceLocation is the position along the image normal (row x column), as Siemens
    # writes it; for a left-handed direction it therefore decreases with k.
    normal = np.cross(direction[:, 0], direction[:, 1])
    encoder = _SeriesEncoder(ds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(slices.shape[0]):
        position = origin + direction[:, 2] * (k * spacing[2])
        data = encoder.encode(k, position, float(normal @ position), slices[k].tobytes())
        path = out / f"IM_{k + 1:04d}.dcm"
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        paths.append(path)
    return paths


class _SeriesEncoder:
    """Encode the slices of one series, re-encoding only the elements that change.

    pydicom spends most of a write encoding ~80 header elements that are identical for
    every slice; encoding them once per series and splicing in the five per-slice
    elements gives the same bytes as ``dcmwrite`` (the tests check this) at a fraction
    of the cost.
    """

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds
        self._charset = ds.get("SpecificCharacterSet")
        self._static = {elem.tag: self._encode(elem) for elem in ds}

    def _encode(self, elem: pydicom.DataElement) -> bytes:
        fp = DicomBytesIO()
        fp.is_implicit_VR = False
        fp.is_little_endian = True
        write_data_element(fp, elem, self._charset)
        return fp.getvalue()

    def encode(self, k: int, position: np.ndarray, location: float, pixels: bytes) -> bytes:
        """Return the complete file bytes of slice ``k``."""
        sop_uid = _uid("instance", self._ds.SeriesInstanceUID, k)
        meta = FileMetaDataset(self._ds.file_meta)
        meta.MediaStorageSOPInstanceUID = sop_uid
        per_slice = Dataset()
        per_slice.SOPInstanceUID = sop_uid
        per_slice.InstanceNumber = k + 1
        per_slice.ImagePositionPatient = [_ds(v, 6) for v in position]
        per_slice.SliceLocation = _ds(location, 6)
        # OW, as dcmwrite would resolve it for 16-bit pixels; the VR is ambiguous
        # until then and write_data_element refuses to guess.
        per_slice.add_new(0x7FE00010, "OW", pixels)
        elements = dict(self._static)
        elements.update({elem.tag: self._encode(elem) for elem in per_slice})

        fp = DicomBytesIO()
        fp.is_implicit_VR = False
        fp.is_little_endian = True
        fp.write(self._ds.preamble + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        fp.write(b"".join(elements[tag] for tag in sorted(elements)))
        return fp.getvalue()


def zip_directory(src_dir: str | Path, zip_path: str | Path) -> None:
    """Zip every file under ``src_dir`` reproducibly and atomically.

    Members are named by their path relative to ``src_dir`` (forward slashes), sorted,
    stamped 1980-01-01 00:00:00 with mode 0644 and deflated, so the same tree always
    gives the same zip bytes.

    Args:
        src_dir: folder to archive.
        zip_path: destination; must not lie inside ``src_dir``.

    Raises:
        ValueError: ``src_dir`` is not a folder or ``zip_path`` lies inside it.
    """
    src = Path(src_dir)
    dest = Path(zip_path)
    if not src.is_dir():
        raise ValueError(f"{src} is not a folder")
    if dest.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"{dest} must not lie inside {src}")
    files = sorted((p.relative_to(src).as_posix(), p) for p in src.rglob("*") if p.is_file())
    with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for name, path in files:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so the bytes do not depend on the host OS
            info.external_attr = 0o100644 << 16
            # Level 1: noisy 12-bit pixels compress about as well as at level 6 (~0.74 of
            # the size) in half the time, and zipping a participant sits on the
            # generator's per-participant time budget.
            archive.writestr(info, path.read_bytes(), compresslevel=1)
