"""Read the slices of one DICOM MR series into volumes with exact patient geometry.

``series_volumes`` turns the datasets of one series (one SeriesInstanceUID) into one
:class:`~myoflow.core.volume.Volume` per echo, the way dcm2niix does: slices are sorted by
their position along the slice normal (ImagePositionPatient projected on row x column of
ImageOrientationPatient, never InstanceNumber), the slice spacing is measured from those
positions (not SliceThickness or SpacingBetweenSlices), RescaleSlope/RescaleIntercept are
applied, and a series that would give a wrong volume is refused with a
:class:`~myoflow.ingest.dicom_errors.DicomError` whose ``reason`` is one of
:data:`~myoflow.ingest.dicom_errors.SERIES_REASONS`.

A series that mixes image types is first split as dcm2niix splits it
(:func:`~myoflow.ingest.image_types.split_series`,
:func:`~myoflow.ingest.image_types.group_by_subseries`): by echo and by image-type class
(magnitude, phase, real, imaginary, from ImageType, ComplexImageComponent or GE's private
image type; and the Dixon maps water, fat, in-phase and opposed-phase that a Philips
mDIXON series can hold together). ``myoflow convert-series`` and the participant stage
both key what they convert by :class:`~myoflow.ingest.image_types.SubSeries` (series UID,
echo, class).

This module holds reading the files, the checks on the stack of slices, the affine and
the pixel data. The frames' headers are read by :mod:`myoflow.ingest.dicom_frames`: enhanced
(multi-frame) MR files are read through their functional groups, giving the same volume
as the equivalent single-frame series. Siemens mosaics and 4-D multi-frame files (frames
repeating a position: time series, diffusion) are refused; dcm2niix unpacks those, but
no stage of myoflow needs them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MediaStorageDirectoryStorage

from myoflow.core.errors import MyoflowError
from myoflow.core.volume import Volume
from myoflow.ingest.dicom_errors import REASONS as REASONS  # re-exported: see below
from myoflow.ingest.dicom_errors import DicomError
from myoflow.ingest.dicom_frames import Frames, collect_frames, first_int

log = logging.getLogger(__name__)

# REASONS is re-exported because the description of convert's ``invalid_series`` reason
# (myoflow.ingest.convert) points readers to ``myoflow.ingest.dicom.REASONS``.

ORIENTATION_TOL = 1e-4
"""Largest difference between two slices' direction cosines that counts as equal."""
SPACING_TOL = 0.01
"""Largest relative deviation of a slice step from the median step (1 %)."""
SAME_POSITION_MM = 1e-3
"""Slices closer than this along the normal are at the same position."""

_NATIVE_LITTLE_ENDIAN = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def read_datasets(
    paths: Iterable[str | os.PathLike[str]],
    *,
    on_skip: Callable[[Path, str], None] | None = None,
) -> list[Dataset]:
    """Read every DICOM file in ``paths`` (files, or folders searched recursively).

    Files that are not DICOM (no ``DICM`` preamble; ``dcmread(force=False)`` raises
    InvalidDicomError) and DICOMDIR index files are skipped: each is passed to
    ``on_skip(path, why)``, or logged at INFO level when no callback is given.

    Args:
        paths: files and folders; folders are walked in sorted order.
        on_skip: called once per skipped file.

    Returns:
        The datasets, pixel data included, in path order; ``ds.filename`` is the path.

    Raises:
        MyoflowError: a path does not exist, or a DICOM file cannot be read.
    """
    datasets = []
    for path in _files(paths):
        try:
            ds = pydicom.dcmread(path, force=False)
        except InvalidDicomError:
            _skip(on_skip, path, "not a DICOM file")
            continue
        except Exception as err:  # pydicom raises many types on corrupt files
            raise MyoflowError(f"cannot read DICOM file {path}: {err}") from err
        meta = getattr(ds, "file_meta", None)
        if meta is not None and meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
            _skip(on_skip, path, "DICOMDIR index, not an image")
            continue
        datasets.append(ds)
    return datasets


def _files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    files = []
    for entry in map(Path, paths):
        if entry.is_dir():
            files.extend(p for p in sorted(entry.rglob("*")) if p.is_file())
        elif entry.is_file():
            files.append(entry)
        else:
            raise MyoflowError(f"{entry} does not exist")
    return files


def _skip(on_skip: Callable[[Path, str], None] | None, path: Path, why: str) -> None:
    if on_skip is None:
        log.info("skipped %s: %s", path, why)
    else:
        on_skip(path, why)


def group_by_series(datasets: Iterable[Dataset]) -> dict[str, list[Dataset]]:
    """Group datasets by SeriesInstanceUID, in order of first appearance.

    Datasets without a SeriesInstanceUID are grouped under ``""``.
    """
    groups: dict[str, list[Dataset]] = {}
    for ds in datasets:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    return groups


def series_volumes(datasets: Sequence[Dataset], part: str | None = None) -> list[Volume]:
    """Build the volume(s) of one series.

    Args:
        datasets: the files of ONE series, read with pixel data, in any order.
        part: read only the frames of this image class (the ``part`` of the
            :class:`~myoflow.ingest.image_types.SubSeries` being read: an enhanced file
            can mix classes frame by frame); None reads every frame.

    Returns:
        One float32 volume per echo (``echo`` set, ordered by echo) when the series
        interleaves echoes (split by EchoNumbers, else by EchoTime); otherwise a single
        volume with ``echo=None``.

    Raises:
        DicomError: the series cannot give a correct volume; ``reason`` says why.
    """
    if not datasets:
        raise ValueError("series_volumes needs at least one dataset")
    names = [_name(ds, n) for n, ds in enumerate(datasets)]
    for ds, name in zip(datasets, names, strict=True):
        if ds.get("Modality") != "MR":
            raise DicomError("not_mr", f"{name}: Modality is {ds.get('Modality')!r}, not 'MR'")
    frames = collect_frames(datasets, names, part)
    _check_consistent(frames)
    volumes = []
    for echo, members in _split_echoes(frames):
        order = _slice_order(frames, members)
        affine = _affine(frames, order)
        volumes.append(Volume(_stack(frames, order), affine, echo))
    return volumes


def _name(ds: Dataset, index: int) -> str:
    filename = getattr(ds, "filename", None)
    if isinstance(filename, str | os.PathLike):
        return os.fspath(filename)
    return f"dataset {index + 1} (InstanceNumber {ds.get('InstanceNumber', '?')})"


# --- checks ----------------------------------------------------------------------------


def _check_consistent(frames: Frames) -> None:
    """Refuse malformed direction cosines and slices that disagree on orientation or size."""
    orientation = frames.orientation
    rows, cols = orientation[:, :3], orientation[:, 3:]
    malformed = (
        (np.abs(np.linalg.norm(rows, axis=1) - 1) > 1e-3)
        | (np.abs(np.linalg.norm(cols, axis=1) - 1) > 1e-3)
        | (np.abs(np.sum(rows * cols, axis=1)) > 1e-3)
    )
    if malformed.any():
        n = int(np.argmax(malformed))
        raise DicomError(
            "missing_geometry",
            f"{frames.names[n]}: ImageOrientationPatient {orientation[n].tolist()} is not two "
            "perpendicular unit vectors",
        )
    deviation = np.abs(orientation - orientation[0]).max(axis=1)
    if deviation.max() > ORIENTATION_TOL:
        other = int(np.argmax(deviation))
        raise DicomError(
            "mixed_orientation",
            f"{frames.names[other]} has ImageOrientationPatient {orientation[other].tolist()}"
            f" but {frames.names[0]} has {orientation[0].tolist()} (localiser or radial "
            "slices?)",
        )
    spacing_off = np.abs(frames.pixel_spacing / frames.pixel_spacing[0] - 1).max(axis=1)
    size_off = np.any(frames.size != frames.size[0], axis=1)
    bad = np.flatnonzero(size_off | (spacing_off > 1e-4))
    if bad.size:
        other = int(bad[0])
        raise DicomError(
            "mixed_size",
            f"{frames.names[other]} is {_size_text(frames, other)} but {frames.names[0]} is "
            f"{_size_text(frames, 0)}",
        )


def _size_text(frames: Frames, n: int) -> str:
    rows, cols = frames.size[n]
    dy, dx = frames.pixel_spacing[n]
    return f"{rows} rows x {cols} columns of {dy:g} x {dx:g} mm"


def _split_echoes(frames: Frames) -> list[tuple[int | None, np.ndarray]]:
    """Return (echo, frame indices) per echo; a single (None, all) when one echo."""
    everything = [(None, np.arange(len(frames.names)))]
    numbers = frames.echo_number
    # Rounded to 1 us so that printing noise in EchoTime does not split an echo.
    times = [None if t is None else round(t, 3) for t in frames.echo_time]
    if None not in numbers and len(set(numbers)) > 1:
        keys: list = numbers
        echo_of = {number: number for number in set(numbers)}
    elif None not in times and len(set(times)) > 1:
        keys = times
        echo_of = {time: rank for rank, time in enumerate(sorted(set(times)), 1)}
    else:
        return everything
    key_array = np.array(keys)
    return [
        (int(echo_of[key]), np.flatnonzero(key_array == key))
        for key in sorted(set(keys), key=lambda k: echo_of[k])
    ]


def _normal(frames: Frames) -> np.ndarray:
    row, col = frames.orientation[0, :3], frames.orientation[0, 3:]
    normal = np.cross(row / np.linalg.norm(row), col / np.linalg.norm(col))
    return normal / np.linalg.norm(normal)


def _slice_order(frames: Frames, members: np.ndarray) -> np.ndarray:
    """Sort ``members`` along the normal, check the stack, return the sorted frame indices."""
    normal = _normal(frames)
    order = members[np.argsort(frames.position[members] @ normal, kind="stable")]
    if order.size > 1:
        names = [frames.names[i] for i in order]
        along = frames.position[order] @ normal
        _check_steps(names, along, frames.multiframe)
        in_plane = frames.position[order] - frames.position[order[0]]
        in_plane -= np.outer(along - along[0], normal)
        _check_unsheared(names, np.linalg.norm(in_plane, axis=1), float(np.median(np.diff(along))))
    return order


def _check_steps(names: list[str], along: np.ndarray, multiframe: bool) -> None:
    """Refuse repeated positions, missing slices and uneven steps (``along`` in mm, sorted)."""
    steps = np.diff(along)
    same = np.flatnonzero(steps < SAME_POSITION_MM)
    if same.size:
        a, b = names[same[0]], names[same[0] + 1]
        if multiframe:
            raise DicomError(
                "multiframe",
                f"{a} and {b} lie at the same position: a 4-D multi-frame image (time series "
                "or diffusion); dcm2niix writes these as 4-D NIfTI, myoflow reads 3-D only",
            )
        raise DicomError(
            "duplicate_slices",
            f"{a} and {b} lie at the same position {along[same[0]]:.3f} mm along the normal",
        )
    median = float(np.median(steps))
    off = np.abs(steps / median - 1)
    if off.max() <= SPACING_TOL:
        return
    ratio = steps / steps.min()
    gap = int(np.argmax(ratio))
    if np.rint(ratio[gap]) >= 2:
        raise DicomError(
            "slice_gap",
            f"{names[gap]} -> {names[gap + 1]}: step {steps[gap]:.3f} mm is "
            f"{ratio[gap]:.2f} x the smallest step {steps.min():.3f} mm; about "
            f"{int(np.rint(ratio[gap])) - 1} slice(s) missing",
        )
    worst = int(np.argmax(off))
    raise DicomError(
        "nonuniform_spacing",
        f"{names[worst]} -> {names[worst + 1]}: step {steps[worst]:.3f} mm differs from the "
        f"median step {median:.3f} mm by {100 * off[worst]:.1f} %",
    )


def _check_unsheared(names: list[str], shift_mm: np.ndarray, step_mm: float) -> None:
    """Refuse slices shifted within their plane by more than 1 % of the slice step."""
    if shift_mm.max() > SPACING_TOL * step_mm:
        worst = int(np.argmax(shift_mm))
        raise DicomError(
            "nonuniform_spacing",
            f"{names[worst]} is shifted {shift_mm[worst]:.3f} mm within the slice plane "
            f"relative to {names[0]} (sheared stack)",
        )


def _affine(frames: Frames, order: np.ndarray) -> np.ndarray:
    """Voxel (i, j, k) -> LPS mm: i along the row direction, j down the columns."""
    row, col = frames.orientation[order[0], :3], frames.orientation[order[0], 3:]
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = _normal(frames)
    spacing_between_rows, spacing_between_columns = frames.pixel_spacing[order[0]]
    if order.size > 1:
        along = frames.position[order] @ normal
        step = (along[-1] - along[0]) / (order.size - 1)
    else:
        # One slice: no positions to measure, so the slab thickness, as dcm2niix does.
        step = frames.thickness_mm or 1.0
    affine = np.eye(4)
    affine[:3, 0] = row * spacing_between_columns
    affine[:3, 1] = col * spacing_between_rows
    affine[:3, 2] = normal * step
    affine[:3, 3] = frames.position[order[0]]
    return affine


# --- pixels ----------------------------------------------------------------------------


def _stack(frames: Frames, order: np.ndarray) -> np.ndarray:
    """Decode and rescale the frames in ``order`` into one float32 (ni, nj, nk) array."""
    rows, cols = (int(v) for v in frames.size[order[0]])
    stack = np.empty((order.size, rows, cols), dtype=np.float32)  # C order: k, j, i
    decoded: dict[int, np.ndarray] = {}  # multi-frame files decode once per series
    for k, index in enumerate(order):
        ds, frame = frames.sources[index]
        if frame is None:
            pixels = _pixels(ds, frames.names[index], 1, rows, cols)[0]
        else:
            if id(ds) not in decoded:
                count = len(ds.PerFrameFunctionalGroupsSequence)
                decoded[id(ds)] = _pixels(ds, frames.names[index], count, rows, cols)
            pixels = decoded[id(ds)][frame]
        slope, intercept = frames.slope[index], frames.intercept[index]
        if slope == 1 and intercept == 0:
            stack[k] = pixels
        else:
            np.multiply(pixels, np.float32(slope), out=stack[k], casting="unsafe")
            stack[k] += np.float32(intercept)
    return stack.transpose(2, 1, 0)  # (i, j, k), Fortran-contiguous as NIfTI stores it


def _pixels(ds: Dataset, name: str, count: int, rows: int, cols: int) -> np.ndarray:
    """Return the stored values of ``ds`` as a (count, rows, cols) array."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomError(
            "pixel_data", f"{name}: {ds.SamplesPerPixel} samples per pixel, not greyscale"
        )
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomError("pixel_data", f"{name}: no pixel data")
    fast = _native_pixels(ds, name, count, rows, cols)
    if fast is not None:
        return fast
    try:
        array = ds.pixel_array
    except Exception as err:  # decoder plugins raise many types
        raise DicomError("pixel_data", f"{name}: cannot decode pixel data: {err}") from err
    if array.size != count * rows * cols:
        raise DicomError(
            "pixel_data",
            f"{name}: pixel data has shape {array.shape}, expected {count} x {rows} x {cols}",
        )
    return array.reshape(count, rows, cols)


def _native_pixels(ds: Dataset, name: str, count: int, rows: int, cols: int) -> np.ndarray | None:
    """Read uncompressed little-endian pixels straight from the bytes (no copy).

    Gives the same values as ``ds.pixel_array`` (unused high bits of unsigned values
    masked off) at a fraction of its per-slice overhead; returns None for anything else
    (compressed, big-endian, signed values narrower than their allocation ...).
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in _NATIVE_LITTLE_ENDIAN or "PixelData" not in ds:
        return None
    allocated = first_int(ds.get("BitsAllocated"))
    stored = first_int(ds.get("BitsStored")) or allocated
    signed = first_int(ds.get("PixelRepresentation")) == 1
    if allocated not in (8, 16, 32) or (signed and stored != allocated):
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    raw = ds.PixelData
    needed = count * rows * cols
    if len(raw) < needed * dtype.itemsize:
        raise DicomError(
            "pixel_data",
            f"{name}: pixel data is {len(raw)} bytes, {count} x {rows} x {cols} values of "
            f"{allocated} bits need {needed * dtype.itemsize}: truncated file?",
        )
    array = np.frombuffer(raw, dtype=dtype, count=needed).reshape(count, rows, cols)
    if not signed and stored is not None and stored < allocated:
        array = array & dtype.type((1 << stored) - 1)
    return array
