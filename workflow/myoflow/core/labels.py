"""The structures myoflow segments and measures: names, label values and colours.

Every stage and the synthetic generator take these from here, so a label map written by
one means the same to all. Label values are those of the label NIfTI files
(``seg/labels.nii.gz``, annotated pairs, synthetic truth): 0 is background, one value per
muscle and side. The iliopsoas is psoas major plus iliacus of one side; the gluteus group
is the three glutei.
"""

from __future__ import annotations

SIDES = ("left", "right")
"""The patient's sides, in the order every table and record lists them."""

MUSCLES = ("psoas_major", "iliacus", "gluteus_maximus", "gluteus_medius", "gluteus_minimus")
"""The muscles with a label value, one per side."""

GROUPS = {
    "iliopsoas": ("psoas_major", "iliacus"),
    "gluteus": ("gluteus_maximus", "gluteus_medius", "gluteus_minimus"),
}
"""Muscle groups the metrics and reports sum over."""

LABELS = {
    "psoas_major_left": 1,
    "psoas_major_right": 2,
    "iliacus_left": 3,
    "iliacus_right": 4,
    "gluteus_maximus_left": 5,
    "gluteus_maximus_right": 6,
    "gluteus_medius_left": 7,
    "gluteus_medius_right": 8,
    "gluteus_minimus_left": 9,
    "gluteus_minimus_right": 10,
}
"""Label values of ``{muscle}_{side}`` in every label map."""

GROUP_LABELS = {
    f"{group}_{side}": max(LABELS.values()) + 1 + 2 * n + k
    for n, group in enumerate(GROUPS)
    for k, side in enumerate(SIDES)
}
"""Label values of ``{group}_{side}`` (iliopsoas_left 11 ... gluteus_right 14): written only
by a segmentation backend whose model labels a group without its muscles' split (such as
TotalSegmentator's iliopsoas); myoflow's own model never writes them."""

ALL_LABELS = LABELS | GROUP_LABELS
"""Every label value a label map may hold: muscles, and groups without their split."""

COLOURS = {
    "psoas_major": "#e6194b",
    "iliacus": "#f58231",
    "gluteus_maximus": "#3cb44b",
    "gluteus_medius": "#4363d8",
    "gluteus_minimus": "#f032e6",
}
"""One outline colour per muscle, both sides, in overlays and previews (a palette that
stays distinct for the common colour-vision deficiencies)."""
