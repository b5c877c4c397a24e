"""Tissue signal model: each tissue's two-point Dixon amplitude and fat fraction.

A tissue with amplitude S and signal fat fraction phi contributes water S * (1 - phi)
and fat S * phi (arbitrary units, T1-weighted gradient echo: fat brighter than muscle).
Muscle fat fractions are each participant's own (rising with age), so the truth's
"muscle fat fraction" is exactly fat / (water + fat) of the noiseless signal.
"""

from __future__ import annotations

from collections.abc import Mapping

AMPLITUDE = {
    "air": 0.0,
    "fat": 1000.0,
    "muscle": 620.0,
    "marrow": 900.0,
    "bone": 60.0,
    "disc": 500.0,
    "organ": 520.0,
    "visceral": 520.0,  # organs and bowel; the visceral fat share is mixed in separately
    "liver": 480.0,
    "heart": 560.0,
    "lung": 25.0,
}
FIXED_FAT_FRACTION = {
    "air": 0.0,
    "fat": 0.93,
    "bone": 0.35,
    "disc": 0.02,
    "organ": 0.05,
    "visceral": 0.05,
    "liver": 0.05,
    "heart": 0.03,
    "lung": 0.10,
}
TARGET_MUSCLES = ("psoas_major", "iliacus", "gluteus_maximus", "gluteus_medius", "gluteus_minimus")


def water_fat(tissue: str, targets: Mapping[str, float]) -> tuple[float, float]:
    """Noiseless (water, fat) signal of ``tissue`` for a participant's ``targets``.

    Target muscles are named ``<muscle>_<side>`` and take ``ff_<muscle>``; other muscle
    takes ``ff_muscle``, marrow ``marrow_ff``.
    """
    muscle = tissue.rsplit("_", 1)[0] if tissue.endswith(("_left", "_right")) else tissue
    if muscle in TARGET_MUSCLES:
        amplitude, phi = AMPLITUDE["muscle"], float(targets[f"ff_{muscle}"])
    elif tissue == "muscle":
        amplitude, phi = AMPLITUDE["muscle"], float(targets["ff_muscle"])
    elif tissue == "marrow":
        amplitude, phi = AMPLITUDE["marrow"], float(targets["marrow_ff"])
    elif tissue in FIXED_FAT_FRACTION:
        amplitude, phi = AMPLITUDE[tissue], FIXED_FAT_FRACTION[tissue]
    else:
        raise KeyError(f"unknown tissue {tissue!r}")
    # Same total signal; fat replaces water as the fat fraction rises.
    return amplitude * (1.0 - phi), amplitude * phi
