"""What kind of image one DICOM image (or one frame of an enhanced file) is.

dcm2niix writes magnitude, phase, real and imaginary images of one series as separate
volumes, and a Philips mDIXON series can hold the Dixon maps water, fat, in-phase and
opposed-phase together. :func:`class_of` names the class of an image from its image-type
values; :func:`image_class` reads them from a file's ImageType, and
:mod:`myoflow.ingest.dicom_frames` from each frame's FrameType, so that an enhanced
multi-frame file mixing classes is split frame by frame as a classic series is split
file by file.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset

MAGNITUDE = "magnitude"
FIELD_MAP = "fieldmap"
NOT_MAGNITUDE = ("phase", "real", "imaginary", FIELD_MAP)
"""Image classes other than the magnitude and the Dixon maps (never a Dixon channel)."""

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

# A B0 map in Hz (Philips: FrameType ...\FIELD_MAP with ComplexImageComponent REAL, or
# ImageType ...\B0 MAP): dcm2niix names it `_fieldmaphz`, apart from the real images.
_FIELD_MAP_TYPES = ("FIELD_MAP", "B0 MAP", "B0_MAP")
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


def type_values(value: object) -> list[str]:
    """An ImageType or FrameType value as a list of stripped strings."""
    if value is None or value == "":
        return []
    values = value.split("\\") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    return [str(v).strip() for v in values]


def image_values(ds: Dataset) -> list[str]:
    """The ImageType values of ``ds``, stripped."""
    return type_values(ds.get("ImageType"))


def class_of(values: Iterable[str], component: object = "", ge_type: int | None = None) -> str:
    """The class of an image from its image-type values, as dcm2niix tells images apart.

    A field map (FIELD_MAP, B0 MAP) comes first, then phase, real and imaginary images
    (values P / PHASE, R / REAL, I / IMAGINARY; ``component``, the
    ComplexImageComponent; ``ge_type``, GE's private image type); then the Dixon maps by
    their values (:data:`DIXON_TYPES`); anything else is a magnitude image.
    ``IN_PHASE`` and ``OUT_PHASE`` are Dixon maps, not phase.
    """
    upper = {v.upper() for v in values}
    if upper.intersection(_FIELD_MAP_TYPES):
        return FIELD_MAP
    for part, tokens in _COMPLEX_TYPES.items():
        if upper.intersection(tokens):
            return part
    component = str(component or "").strip().upper()
    if component in _COMPLEX_COMPONENT:
        return _COMPLEX_COMPONENT[component]
    if ge_type in _GE_IMAGE_TYPE:
        return _GE_IMAGE_TYPE[ge_type]
    for part, tokens in DIXON_TYPES.items():
        if upper.intersection(tokens):
            return part
    return MAGNITUDE


def image_class(ds: Dataset) -> str:
    """The class of a single-frame image (:func:`class_of` of its ImageType)."""
    return class_of(image_values(ds), ds.get("ComplexImageComponent", ""), _ge_image_type(ds))


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
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
