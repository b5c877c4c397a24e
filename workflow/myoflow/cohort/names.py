"""Readable names, with units, of the analysis table's columns and the tables' statistics.

Tables and figures keep the column names of ``participants.tsv`` (``vol_gluteus_total_ml``)
so that a number can be traced to its column; what a reader sees is :func:`label`:
"Gluteus volume, total (ml)". Names are built from the metric name's parts (structure,
side, unit suffix), so every muscle, side and new metric of the same pattern is named
without a table entry; anything unknown is shown with its underscores as spaces.
"""

from __future__ import annotations

import re

STRUCTURES = {
    "iliopsoas": "Iliopsoas",
    "psoas_major": "Psoas major",
    "iliacus": "Iliacus",
    "gluteus": "Gluteus",
    "gluteus_maximus": "Gluteus maximus",
    "gluteus_medius": "Gluteus medius",
    "gluteus_minimus": "Gluteus minimus",
}
SIDES = {"left": "left", "right": "right", "total": "total", "mean": "mean of the sides"}

FIXED = {
    "sex": "Sex",
    "age": "Age (years)",
    "height_cm": "Height (cm)",
    "weight_kg": "Weight (kg)",
    "bmi": "BMI (kg/m²)",
    "handedness": "Handedness",
    "ethnicity": "Ethnicity",
    "imi_ml_m2": "Iliopsoas muscle index, IMI (ml/m²)",
    "age_group": "Age group (years)",
    "bmi_class": "WHO BMI class",
    "psoas_max_csa_total_cm2": "Maximum psoas CSA, left + right (cm²)",
    "psoas_max_csa_left_cm2": "Maximum psoas CSA, left (cm²)",
    "psoas_max_csa_right_cm2": "Maximum psoas CSA, right (cm²)",
    "participant_id": "Participant",
}
"""Columns whose names do not follow the patterns below."""

HEADERS = {
    "metric": "Measure",
    "variable": "Variable",
    "level": "Level",
    "structure": "Structure",
    "sex": "Sex",
    "x": "x",
    "y": "y",
    "n": "n",
    "n_F": "n women",
    "n_M": "n men",
    "mean": "Mean",
    "sd": "SD",
    "min": "Min",
    "max": "Max",
    "count": "Count",
    "percent": "Percent (%)",
    "diff": "Difference",
    "ci_low": "CI low",
    "ci_high": "CI high",
    "t": "t",
    "df": "df",
    "p": "p",
    "r": "Pearson r",
    "mean_left": "Mean left",
    "mean_right": "Mean right",
    "asym_pct_mean": "Asymmetry index (%)",
    "asym_pct_ci_low": "Asymmetry CI low (%)",
    "asym_pct_ci_high": "Asymmetry CI high (%)",
    "regression": "Regression",
    "formula": "Model",
    "term": "Term",
    "estimate": "Estimate",
    "se": "SE",
    "r2": "R²",
    "r2_adj": "Adjusted R²",
    "df_resid": "Residual df",
    "rmse": "RMSE",
    "f": "F",
    "f_p": "p (F)",
    "edf": "EDF",
    "lambda": "λ",
    "scale": "Scale",
    "k": "k",
    "method": "Method",
    "measure": "Measure",
    "bias": "Bias",
    "bias_ci_low": "Bias CI low",
    "bias_ci_high": "Bias CI high",
    "loa_low": "Lower LoA",
    "loa_high": "Upper LoA",
    "mean_method": "Mean automatic",
    "mean_reference": "Mean manual",
    "unit": "Unit",
    "note": "Note",
    "column": "Measure",
    "flagged": "Flagged",
    "value": "Measure",
    "group": "Grouped by",
    "levels": "Levels",
    "df_between": "df between",
    "df_within": "df within",
    "median": "Median",
    "side": "Side",
    "stage": "Stage",
    "reason": "Reason",
    "n_in": "n in",
    "excluded": "Excluded",
    "n_out": "n out",
    "quantity": "Quantity",
    "group_label": "Group",
    "published": "Published",
    "planted": "Planted (synthetic truth)",
    "cohort": "This cohort",
    "source": "Source",
}
"""Column headers of the result tables."""

_UNITS = {"ml": "ml", "cm2": "cm²", "mm": "mm", "pct": "%", "ml_m2": "ml/m²"}
_STRUCTURE = "|".join(sorted(STRUCTURES, key=len, reverse=True))
_VOLUME = re.compile(rf"^vol_({_STRUCTURE})_(left|right|total|mean)_ml$")
_FAT = re.compile(rf"^ff_({_STRUCTURE})(?:_(left|right))?(_pct)?$")
_ASYMMETRY = re.compile(rf"^({_STRUCTURE})_asymmetry_pct$")
_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$")


def label(column: str) -> str:
    """The readable name of an analysis-table column, with its unit.

    >>> label("vol_gluteus_total_ml")
    'Gluteus volume, total (ml)'
    >>> label("ff_iliacus_left_pct")
    'Iliacus fat fraction, left (%)'
    """
    name = str(column)
    if name in FIXED:
        return FIXED[name]
    if m := _VOLUME.match(name):
        return f"{STRUCTURES[m[1]]} volume, {SIDES[m[2]]} (ml)"
    if m := _FAT.match(name):
        side = f", {m[2]}" if m[2] else ", both sides"
        unit = "%" if m[3] else "fraction 0-1"
        return f"{STRUCTURES[m[1]]} fat fraction{side} ({unit})"
    if m := _ASYMMETRY.match(name):
        return f"{STRUCTURES[m[1]]} asymmetry, 100 (right - left) / mean (%)"
    return _plain(name)


def header(column: str) -> str:
    """The readable header of a result table's column ("ci_low" -> "CI low")."""
    name = str(column)
    if name in HEADERS:
        return HEADERS[name]
    if m := _PERCENTILE.match(name):
        return f"P{m[1]}"
    for suffix, group in (("_F", "women"), ("_M", "men")):
        if name.endswith(suffix) and name[: -len(suffix)] in HEADERS:
            return f"{HEADERS[name[: -len(suffix)]]} {group}"
    if name in FIXED or _VOLUME.match(name) or _FAT.match(name) or _ASYMMETRY.match(name):
        return label(name)
    return _plain(name)


def readable_formula(formula: str) -> str:
    """A model formula with its column names as readable names ("IMI (ml/m²) ~ BMI ...")."""
    return re.sub(
        r"[A-Za-z_][A-Za-z0-9_]*",
        lambda m: label(m[0]) if _known(m[0]) else m[0],
        str(formula),
    )


def is_column_name(text: str) -> bool:
    """Whether ``text`` is a metric or phenotype column name that :func:`label` renames."""
    return _known(str(text)) and label(str(text)) != str(text)


def _known(name: str) -> bool:
    return bool(
        name in FIXED
        or _VOLUME.match(name)
        or _FAT.match(name)
        or _ASYMMETRY.match(name)
        or name.startswith(("psoas_max_csa_", "psoas_csa_profile_"))
    )


def _plain(name: str) -> str:
    words = name.replace("_", " ").strip()
    for suffix, unit in sorted(_UNITS.items(), key=lambda kv: -len(kv[0])):
        if words.endswith(" " + suffix.replace("_", " ")):
            words = f"{words[: -len(suffix) - 1]} ({unit})"
            break
    return words[:1].upper() + words[1:]
