"""Which part of a DICOM series each image is: its echo and its image type.

A series may hold several echoes, and magnitude, phase, real or imaginary images, or the
Dixon maps water, fat, in-phase and opposed-phase (a Philips mDIXON series can hold all
four). :func:`split_series` splits a series into :class:`SubSeries` as dcm2niix does, so
that every part is read as its own volume (:func:`myoflow.ingest.dicom.series_volumes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from pydicom.dataset import Dataset

from myoflow.ingest.dicom import group_by_series
from myoflow.ingest.dicom_frames import first_int

MAGNITUDE = "magnitude"
NOT_MAGNITUDE = ("phase", "real", "imaginary")
"""Image-type classes of complex data other than the magnitude (never a Dixon channel)."""

DIXON_TYPES = {
    # ImageType values marking a Dixon map: Siemens (WATER, FAT, IN_PHASE, OPP_PHASE /
    # OPPOSED_PHASE), Philips mDIXON (W, F, IP, OP), GE LAVA-Flex / IDEAL (WATER, FAT,
    # IN_PHASE, OUT_PHASE).
    "water": ("W", "WATER"),
    "fat": ("F", "FAT"),
    "in": ("IP", "IN_PHASE", "INPHASE"),
    "opp": ("OP", "OPP_PHASE", "OPPOSED_PHASE", "OUT_PHASE", "OUTPHASE"),
}
"""Image-type class -> the ImageType values that mark it."""

_COMPLEX_TYPES = {
    # dcm2niix (nii_dicom.cpp) reads P / PHASE, R / REAL and I / IMAGINARY among the
    # ImageType values (Philips: ORIGINAL\PRIMARY\PHASE MAP\P\FFE; Siemens: ...\P\ND).
    "phase": ("P", "PHASE", "PHASE MAP", "PHASE_MAP"),
    "real": ("R", "REAL"),
    "imaginary": ("I", "IMAGINARY"),
}
# ComplexImageComponent (0008,9208) and GE's private image type (0043,102F), as dcm2niix.
_COMPLEX_COMPONENT = {"PHASE": "phase", "REAL": "real", "IMAGINARY": "imaginary"}
_GE_IMAGE_TYPE = {1: "phase", 2: "real", 3: "imaginary"}


class SubSeries(NamedTuple):
    """The key of a sub-series: the images of one series with one echo and image type.

    Attributes:
        uid: SeriesInstanceUID.
        echo: echo number when the series holds several echoes (EchoNumbers, else the
            rank of EchoTime), else None.
        part: image-type class (:func:`image_class`): ``magnitude``, ``phase``,
            ``real``, ``imaginary``, or a Dixon map ``water``, ``fat``, ``in``, ``opp``.
    """

    uid: str
    echo: int | None
    part: str

    def __str__(self) -> str:
        echo = "" if self.echo is None else f" echo {self.echo}"
        return f"{self.uid}{echo} {self.part}"


def image_values(ds: Dataset) -> list[str]:
    """The ImageType values of ``ds``, stripped."""
    value = ds.get("ImageType")
    if value is None or value == "":
        return []
    values = value.split("\\") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in values]


def image_class(ds: Dataset) -> str:
    """The image-type class of one image, as dcm2niix tells images apart.

    Phase, real and imaginary images (ImageType values P / PHASE, R / REAL, I /
    IMAGINARY; ComplexImageComponent; GE's private image type 0043,102F) come first;
    then the Dixon maps by their ImageType value (:data:`DIXON_TYPES`); anything else
    is a magnitude image. ``IN_PHASE`` and ``OUT_PHASE`` are Dixon maps, not phase.
    """
    values = {v.upper() for v in image_values(ds)}
    for part, tokens in _COMPLEX_TYPES.items():
        if values.intersection(tokens):
            return part
    component = str(ds.get("ComplexImageComponent", "") or "").strip().upper()
    if component in _COMPLEX_COMPONENT:
        return _COMPLEX_COMPONENT[component]
    ge_type = _ge_image_type(ds)
    if ge_type in _GE_IMAGE_TYPE:
        return _GE_IMAGE_TYPE[ge_type]
    for part, tokens in DIXON_TYPES.items():
        if values.intersection(tokens):
            return part
    return MAGNITUDE


def _ge_image_type(ds: Dataset) -> int | None:
    """GE's private image type (0043,102F): 0 magnitude, 1 phase, 2 real, 3 imaginary."""
    if "GEMS_PARM_01" not in str(ds.get((0x0043, 0x0010), "")):
        return None
    element = ds.get((0x0043, 0x102F))
    if element is None:
        return None
    value = element.value
    if isinstance(value, bytes):
        return int.from_bytes(value[:2], "little", signed=True) if len(value) >= 2 else None
    return first_int(value)


def split_series(uid: str, datasets: Sequence[Dataset]) -> dict[SubSeries, list[Dataset]]:
    """Split one series by echo and image-type class, as dcm2niix does.

    A series that interleaves echoes (EchoNumbers, else EchoTime) gives one sub-series
    per echo; one that mixes magnitude and phase (or real, imaginary, or the Dixon maps
    water, fat, in-phase, opposed-phase) one per class. Sub-series come in order of
    first appearance; a series with one echo and one class gives one sub-series.
    """
    echoes = _echo_of(datasets)
    groups: dict[SubSeries, list[Dataset]] = {}
    for ds, echo in zip(datasets, echoes, strict=True):
        groups.setdefault(SubSeries(uid, echo, image_class(ds)), []).append(ds)
    return groups


def group_by_subseries(datasets: Iterable[Dataset]) -> dict[SubSeries, list[Dataset]]:
    """:func:`group_by_series`, then :func:`split_series` of each series."""
    groups: dict[SubSeries, list[Dataset]] = {}
    for uid, members in group_by_series(datasets).items():
        groups.update(split_series(uid, members))
    return groups


def _echo_of(datasets: Sequence[Dataset]) -> list[int | None]:
    """Each dataset's echo, or None for all when the series holds one echo.

    Echoes are told apart as :func:`series_volumes` does: by EchoNumbers when every
    file has one, else by the rank of EchoTime (rounded to 1 us).
    """
    numbers = [first_int(ds.get("EchoNumbers")) for ds in datasets]
    if None not in numbers and len(set(numbers)) > 1:
        return numbers  # type: ignore[return-value]
    times = [_echo_time(ds) for ds in datasets]
    if None not in times and len(set(times)) > 1:
        rank = {time: n for n, time in enumerate(sorted(set(times)), 1)}  # type: ignore[type-var]
        return [rank[t] for t in times]
    return [None] * len(datasets)


def _echo_time(ds: Dataset) -> float | None:
    try:
        return round(float(ds.get("EchoTime")), 3)
    except (TypeError, ValueError):
        return None
