"""Age groups and WHO BMI classes: the strata of the normative tables and of sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from myoflow.cohort.stats._common import StatsInputError

NAKO_AGE_EDGES = (20.0, 30.0, 40.0, 50.0, 60.0, 70.0)
"""Decades as in the NAKO tables: <30, 30-39, ..., 70+ (open at both ends)."""

UKBB_AGE_EDGES = (45.0, 55.0, 65.0, 75.0)
"""UK Biobank imaging bands: <55, 55-64, 65-74, 75+."""

WHO_BMI_EDGES = (18.5, 25.0, 30.0, 35.0, 40.0)
WHO_BMI_LABELS = (
    "underweight",
    "normal",
    "overweight",
    "obese I",
    "obese II",
    "obese III",
)
"""WHO adult BMI classes (kg/m2): <18.5, 18.5-24.9, 25-29.9, 30-34.9, 35-39.9, >=40."""


def interval_labels(edges: Sequence[float], unit: str = "") -> list[str]:
    """Labels for ``len(edges) + 1`` half-open intervals: "<30", "30-39", ..., "70+".

    Whole-number edges give integer ranges ("30-39"); others use "[a, b)".
    """
    edges = [float(e) for e in edges]
    whole = all(e.is_integer() for e in edges)
    labels = [f"<{edges[0]:g}{unit}"]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        labels.append(f"{lo:g}-{hi - 1:g}{unit}" if whole else f"[{lo:g}, {hi:g}){unit}")
    labels.append(f"{edges[-1]:g}+{unit}" if whole else f">={edges[-1]:g}{unit}")
    return labels


def cut(
    values: pd.Series | np.ndarray, edges: Sequence[float], labels: Sequence[str] | None = None
) -> pd.Categorical:
    """Assign each value to a half-open interval ``[edge_i, edge_i+1)``, open at both ends.

    Missing values stay missing. The result is an ordered categorical.

    Raises:
        StatsInputError: edges not strictly increasing, or the wrong number of labels.
    """
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or len(edges) == 0 or np.any(np.diff(edges) <= 0):
        raise StatsInputError(f"edges must be strictly increasing, got {list(edges)}")
    labels = list(labels) if labels is not None else interval_labels(edges)
    if len(labels) != len(edges) + 1:
        raise StatsInputError(f"{len(edges)} edges need {len(edges) + 1} labels, got {labels}")
    values = pd.to_numeric(pd.Series(np.asarray(values)), errors="coerce").to_numpy(float)
    codes = np.searchsorted(edges, values, side="right")
    codes = np.where(np.isnan(values), -1, codes)
    return pd.Categorical.from_codes(codes, categories=labels, ordered=True)


def age_groups(
    age: pd.Series | np.ndarray,
    edges: Sequence[float] = NAKO_AGE_EDGES,
    labels: Sequence[str] | None = None,
) -> pd.Categorical:
    """Age groups (years) from ``edges``; default the NAKO decades."""
    return cut(age, edges, labels)


def bmi_classes(
    bmi: pd.Series | np.ndarray,
    edges: Sequence[float] = WHO_BMI_EDGES,
    labels: Sequence[str] = WHO_BMI_LABELS,
) -> pd.Categorical:
    """WHO BMI classes (kg/m2); pass coarser edges/labels to merge the obesity classes."""
    return cut(bmi, edges, labels)
