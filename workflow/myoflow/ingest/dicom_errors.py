"""Why a DICOM series is refused: the reason codes and :class:`DicomError`.

:func:`myoflow.ingest.dicom.series_volumes` and the frame readers of
:mod:`myoflow.ingest.dicom_frames` refuse a series that would give a wrong volume with a
:class:`DicomError` whose ``reason`` is one of :data:`SERIES_REASONS`; :data:`REASONS` says
what each code means.
"""

from __future__ import annotations

from myoflow.core.errors import MyoflowError

REASONS: dict[str, str] = {
    "not_mr": "a file's Modality is not MR",
    "missing_geometry": (
        "ImagePositionPatient, ImageOrientationPatient or PixelSpacing is missing or "
        "malformed (wrong number of values, direction vectors not unit length or not "
        "perpendicular)"
    ),
    "mixed_orientation": "slices differ in ImageOrientationPatient by more than 1e-4",
    "mixed_size": "slices differ in Rows, Columns or PixelSpacing",
    "duplicate_slices": "two slices of one echo lie at the same position along the normal",
    "slice_gap": (
        "a step between neighbouring slices is about twice the smallest step or more "
        "(it rounds to 2 or more smallest steps): slices are missing"
    ),
    "nonuniform_spacing": (
        "steps between neighbouring slices differ from their median by more than 1 %, or "
        "slices are shifted within their plane (a sheared stack)"
    ),
    "multiframe": (
        "a file packs several images that are not unpacked: a Siemens mosaic, a "
        "multi-frame file without functional groups, or an enhanced multi-frame file "
        "whose frames repeat positions (4-D: time series, diffusion)"
    ),
    "pixel_data": (
        "pixel data missing, truncated, not greyscale, or in a compression the installed "
        "pydicom plugins cannot decode"
    ),
}
"""Why a series can be refused: reason code -> what it means."""

SERIES_REASONS = frozenset(REASONS)
"""The reason codes a :class:`DicomError` can carry."""


class DicomError(MyoflowError):
    """A DICOM series cannot be turned into a correct volume.

    Attributes:
        reason: short code, one of :data:`SERIES_REASONS`.
        detail: what is wrong, naming the file(s).
    """

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in SERIES_REASONS:
            raise ValueError(f"unknown DICOM error reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
