"""Pearson correlations with Fisher-z confidence intervals, per group."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from myoflow.cohort.stats._common import By, StatsInputError, finite_pairs, require_columns, split

UKBB_PAIRS = (
    ("vol_iliopsoas_total_ml", "height_cm"),
    ("imi_ml_m2", "bmi"),
    ("imi_ml_m2", "age"),
)
"""The UK Biobank study's correlations: volume-height, IMI-BMI, IMI-age."""


def pearson(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Pearson r of complete pairs, its Fisher-z confidence interval and two-sided p.

    The interval is tanh(atanh(r) +- z / sqrt(n - 3)), scipy's ``confidence_interval``.
    """
    pairs = finite_pairs(pd.DataFrame({"x": np.asarray(x), "y": np.asarray(y)}), "x", "y")
    if len(pairs) < 4:
        raise StatsInputError(f"a correlation interval needs 4+ complete pairs, got {len(pairs)}")
    result = stats.pearsonr(pairs["x"].to_numpy(), pairs["y"].to_numpy())
    ci = result.confidence_interval(level)
    return {
        "n": len(pairs),
        "r": float(result.statistic),
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "p": float(result.pvalue),
    }


def correlations(
    df: pd.DataFrame,
    pairs: Sequence[tuple[str, str]] = UKBB_PAIRS,
    *,
    by: By = "sex",
    level: float = 0.95,
) -> pd.DataFrame:
    """Pearson correlation of each ``(x, y)`` pair per group of ``by``.

    Returns one row per pair and group: x, y, the ``by`` columns, n, r, ci_low, ci_high, p.
    """
    require_columns(df, {c for pair in pairs for c in pair})
    rows = []
    for x, y in pairs:
        for key, part in split(df, by):
            rows.append({"x": x, "y": y, **key, **pearson(part[x], part[y], level)})
    return pd.DataFrame(rows)
