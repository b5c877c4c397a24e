"""The headers of a DICOM series' frames, gathered into arrays.

A frame is one image: a single-frame file, or one frame of an enhanced (multi-frame) MR
file, read through its functional groups (plane position, plane orientation, pixel
measures, pixel value transformation, MR echo). :func:`collect_frames` gathers what each
frame says about itself (position, orientation, pixel spacing, size, rescale, echo) into
one :class:`Frames`, refusing frames with missing or malformed geometry and single images
that pack several slices (Siemens mosaics, multi-frame files without functional groups).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from pydicom.dataset import Dataset

from myoflow.ingest.dicom_errors import DicomError
from myoflow.ingest.image_class import class_of, image_class, image_values, type_values


class FrameHeader(NamedTuple):
    """What one image (frame) says about itself."""

    name: str  # file, and frame number in a multi-frame file, for messages
    source: tuple[Dataset, int | None]  # dataset, frame index (None: single-frame)
    position: list[float] | None  # ImagePositionPatient, LPS mm
    orientation: list[float] | None  # ImageOrientationPatient
    pixel_spacing: list[float] | None  # (between rows, between columns) mm
    size: tuple[int, int]  # (Rows, Columns)
    slope: float
    intercept: float
    echo_number: int | None
    echo_time: float | None
    thickness_mm: float | None  # SliceThickness: the third axis of a one-slice volume
    image_type: tuple[str, ...]  # ImageType, or the frame's FrameType
    part: str  # image class (myoflow.ingest.image_class.class_of)


@dataclass
class Frames:
    """The headers of every frame of a series as arrays, one entry per frame."""

    names: list[str]
    sources: list[tuple[Dataset, int | None]]
    position: np.ndarray  # (n, 3)
    orientation: np.ndarray  # (n, 6)
    pixel_spacing: np.ndarray  # (n, 2)
    size: np.ndarray  # (n, 2)
    slope: np.ndarray  # (n,)
    intercept: np.ndarray  # (n,)
    echo_number: list[int | None]
    echo_time: list[float | None]
    thickness_mm: float | None
    multiframe: bool


def _floats(value: object, count: int) -> list[float] | None:
    """Return ``value`` as ``count`` floats, or None when absent or malformed."""
    if value is None:
        return None
    try:
        values = [float(v) for v in value]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return values if len(values) == count else None


def first_int(value: object) -> int | None:
    """Return ``value`` (or its first item) as an int, or None when absent or malformed."""
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _optional_float(value: object) -> float | None:
    try:
        return None if value is None or value == "" else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def collect_frames(
    datasets: Sequence[Dataset], names: list[str], part: str | None = None
) -> Frames:
    """Gather the headers of every frame of ``datasets`` (one series) into arrays.

    Args:
        datasets: the files of one series, in any order.
        names: one name per dataset, for messages.
        part: keep only the frames of this image class (an enhanced file can mix
            classes frame by frame); None keeps every frame.

    Returns:
        One entry per frame: a single-frame file gives one, an enhanced MR file one per
        frame.

    Raises:
        DicomError: a frame lacks position, orientation or pixel spacing
            (``missing_geometry``), or a file packs slices that cannot be unpacked
            (``multiframe``).
    """
    headers: list[FrameHeader] = []
    for ds, name in zip(datasets, names, strict=True):
        if "PerFrameFunctionalGroupsSequence" not in ds:
            _refuse_packed(ds, name)
        headers.extend(frame_headers(ds, name))
    if part is not None:
        headers = [h for h in headers if h.part == part]
        if not headers:
            raise ValueError(f"no frame of class {part!r} in {names[0]} and the rest")
    for header in headers:
        missing = [
            keyword
            for keyword in ("position", "orientation", "pixel_spacing")
            if getattr(header, keyword) is None
        ]
        if missing:
            tags = ", ".join(_GEOMETRY_TAGS[keyword] for keyword in missing)
            raise DicomError("missing_geometry", f"{header.name}: {tags} missing or malformed")
    thickness = next((h.thickness_mm for h in headers if h.thickness_mm), None)
    return Frames(
        names=[h.name for h in headers],
        sources=[h.source for h in headers],
        position=np.array([h.position for h in headers], dtype=np.float64),
        orientation=np.array([h.orientation for h in headers], dtype=np.float64),
        pixel_spacing=np.array([h.pixel_spacing for h in headers], dtype=np.float64),
        size=np.array([h.size for h in headers], dtype=np.int64),
        slope=np.array([h.slope for h in headers], dtype=np.float64),
        intercept=np.array([h.intercept for h in headers], dtype=np.float64),
        echo_number=[h.echo_number for h in headers],
        echo_time=[h.echo_time for h in headers],
        thickness_mm=thickness,
        multiframe=any(h.source[1] is not None for h in headers),
    )


_GEOMETRY_TAGS = {
    "position": "ImagePositionPatient",
    "orientation": "ImageOrientationPatient",
    "pixel_spacing": "PixelSpacing",
}


def _refuse_packed(ds: Dataset, name: str) -> None:
    """Refuse single images that hold several slices."""
    image_type = ds.get("ImageType") or []
    image_type = [image_type] if isinstance(image_type, str) else image_type
    if "MOSAIC" in (str(value).upper() for value in image_type):
        raise DicomError(
            "multiframe",
            f"{name}: Siemens mosaic (several slices tiled in one image); dcm2niix unpacks "
            "mosaics, myoflow does not",
        )
    frames = first_int(ds.get("NumberOfFrames"))
    if frames is not None and frames > 1:
        raise DicomError(
            "multiframe",
            f"{name}: {frames} frames without PerFrameFunctionalGroupsSequence, so the "
            "frames have no positions",
        )


def frame_headers(ds: Dataset, name: str) -> list[FrameHeader]:
    """What each frame of one file says about itself: one header, or one per frame of an
    enhanced multi-frame file.

    Raises:
        DicomError: an enhanced file's frame count disagrees with its functional groups.
    """
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds, name)
    return [_single_frame(ds, name)]


def frame_classes(ds: Dataset) -> list[str]:
    """The image class of each frame of ``ds`` (one entry for a single-frame file).

    Never raises: a malformed enhanced file gives its file-level class, and reading its
    frames later refuses it with a reason.
    """
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return [image_class(ds)]
    try:
        return [header.part for header in _enhanced_frames(ds, "")]
    except DicomError:
        return [image_class(ds)]


def _single_frame(ds: Dataset, name: str) -> FrameHeader:
    return FrameHeader(
        name,
        (ds, None),
        _floats(ds.get("ImagePositionPatient"), 3),
        _floats(ds.get("ImageOrientationPatient"), 6),
        _floats(ds.get("PixelSpacing"), 2),
        (first_int(ds.get("Rows")) or 0, first_int(ds.get("Columns")) or 0),
        # A zero slope is invalid; dcm2niix reads it as 1, and so do we.
        _optional_float(ds.get("RescaleSlope")) or 1.0,
        _optional_float(ds.get("RescaleIntercept")) or 0.0,
        first_int(ds.get("EchoNumbers")),
        _optional_float(ds.get("EchoTime")),
        _optional_float(ds.get("SliceThickness")),
        tuple(image_values(ds)),
        image_class(ds),
    )


def _enhanced_frames(ds: Dataset, name: str) -> list[FrameHeader]:
    """Header rows of an enhanced multi-frame file, one per frame.

    Each functional group macro is looked up in the frame's item of
    PerFrameFunctionalGroupsSequence first, then in SharedFunctionalGroupsSequence.
    """
    per_frame = ds.PerFrameFunctionalGroupsSequence
    count = first_int(ds.get("NumberOfFrames")) or 1
    if len(per_frame) != count:
        raise DicomError(
            "multiframe",
            f"{name}: NumberOfFrames is {count} but PerFrameFunctionalGroupsSequence has "
            f"{len(per_frame)} items",
        )
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else Dataset()
    size = (first_int(ds.get("Rows")) or 0, first_int(ds.get("Columns")) or 0)
    headers = []
    for index, item in enumerate(per_frame):

        def macro(keyword: str, item: Dataset = item) -> Dataset:
            sequence = item.get(keyword) or shared.get(keyword)
            return sequence[0] if sequence else Dataset()

        measures = macro("PixelMeasuresSequence")
        values = macro("PixelValueTransformationSequence")
        # MR Image Frame Type: what this frame is (Philips puts magnitude and field-map
        # frames, or the mDIXON maps, in one file); without it the file's ImageType.
        frame_type = macro("MRImageFrameTypeSequence")
        if "FrameType" in frame_type:
            type_of_frame = type_values(frame_type.get("FrameType"))
            part = class_of(type_of_frame, frame_type.get("ComplexImageComponent", ""))
        else:
            type_of_frame, part = image_values(ds), image_class(ds)
        slope = _optional_float(values.get("RescaleSlope", ds.get("RescaleSlope")))
        intercept = _optional_float(values.get("RescaleIntercept", ds.get("RescaleIntercept")))
        headers.append(
            FrameHeader(
                f"{name} frame {index + 1}",
                (ds, index),
                _floats(macro("PlanePositionSequence").get("ImagePositionPatient"), 3),
                _floats(macro("PlaneOrientationSequence").get("ImageOrientationPatient"), 6),
                _floats(measures.get("PixelSpacing"), 2),
                size,
                slope or 1.0,
                intercept or 0.0,
                None,  # enhanced MR has no per-frame EchoNumbers; echo times split echoes
                _optional_float(macro("MREchoSequence").get("EffectiveEchoTime")),
                _optional_float(measures.get("SliceThickness")),
                tuple(type_of_frame),
                part,
            )
        )
    return headers
