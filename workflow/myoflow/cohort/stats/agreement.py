"""Agreement with manual annotations: Bland-Altman analysis and Dice summaries.

Only participants with both an automatic and a manual value count, so manual annotations
for a subset of the cohort are the normal case.

Bland-Altman (Bland & Altman 1986, 1999): differences d = method - reference; bias is
mean(d) with a t interval; limits of agreement bias +- z sd(d) with z the normal quantile
(1.96 at 95 %); the interval of each limit uses the approximate standard error
sd(d) sqrt(1/n + z^2 / (2 (n - 1))) with a t quantile on n - 1 degrees of freedom.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from myoflow.cohort.stats._common import By, StatsInputError, group_columns, require_columns, split

ID = "participant_id"


@dataclass(frozen=True)
class BlandAltman:
    """Bland-Altman summaries and the points they came from.

    Attributes:
        summary: measure, group columns, method, reference, n, mean_method,
            mean_reference, bias, bias_ci_low, bias_ci_high, sd, loa_low, loa_high,
            loa_low_ci_low, loa_low_ci_high, loa_high_ci_low, loa_high_ci_high (in the
            measure's units, or % of the pair mean when ``relative``).
        points: measure, group columns, participant_id (if given), mean, difference.
        level: the coverage of the limits and the confidence of the intervals.
        relative: differences are % of the pair mean.
    """

    summary: pd.DataFrame
    points: pd.DataFrame
    level: float
    relative: bool


def limits_of_agreement(differences: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Bias, SD and limits of agreement of ``differences`` with their confidence intervals."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n < 3:
        raise StatsInputError(f"Bland-Altman needs 3+ paired values, got {n}")
    bias, sd = float(d.mean()), float(d.std(ddof=1))
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    t = float(stats.t.ppf(0.5 + level / 2.0, n - 1))
    se_bias = sd / np.sqrt(n)
    se_loa = sd * np.sqrt(1.0 / n + z**2 / (2.0 * (n - 1)))
    low, high = bias - z * sd, bias + z * sd
    return {
        "n": n,
        "bias": bias,
        "bias_ci_low": bias - t * se_bias,
        "bias_ci_high": bias + t * se_bias,
        "sd": sd,
        "loa_low": low,
        "loa_high": high,
        "loa_low_ci_low": low - t * se_loa,
        "loa_low_ci_high": low + t * se_loa,
        "loa_high_ci_low": high - t * se_loa,
        "loa_high_ci_high": high + t * se_loa,
    }


def bland_altman(
    df: pd.DataFrame,
    pairs: Mapping[str, tuple[str, str]],
    *,
    by: By = None,
    level: float = 0.95,
    relative: bool = False,
) -> BlandAltman:
    """Bland-Altman analysis of each measure: method column vs reference (manual) column.

    Args:
        df: one row per participant; reference values missing where not annotated.
        pairs: measure name -> (method column, reference column), e.g.
            ``{"iliopsoas volume": ("vol_iliopsoas_total_ml", "manual_vol_iliopsoas_total_ml")}``.
        by: optional grouping column(s) (e.g. sex); one analysis per group.
        level: coverage of the limits of agreement and confidence of their intervals.
        relative: analyse 100 (method - reference) / mean of the pair instead.
    """
    columns = group_columns(by)
    require_columns(df, {c for pair in pairs.values() for c in pair} | set(columns))
    summaries, points = [], []
    for measure, (method, reference) in pairs.items():
        for key, rows in split(df, by):
            both = rows[[method, reference]].apply(pd.to_numeric, errors="coerce").dropna()
            a, b = both[method].to_numpy(), both[reference].to_numpy()
            mean = (a + b) / 2.0
            diff = 100.0 * (a - b) / mean if relative else a - b
            labels = {"measure": measure, **key}
            summaries.append(
                labels
                | {"method": method, "reference": reference}
                | {"mean_method": float(a.mean()) if len(a) else np.nan}
                | {"mean_reference": float(b.mean()) if len(b) else np.nan}
                | limits_of_agreement(diff, level)
            )
            point = pd.DataFrame({**labels, "mean": mean, "difference": diff})
            if ID in rows:
                point.insert(len(labels), ID, rows.loc[both.index, ID].to_numpy())
            points.append(point)
    return BlandAltman(
        summary=pd.DataFrame(summaries),
        points=pd.concat(points, ignore_index=True),
        level=level,
        relative=relative,
    )


def dice_summary(
    df: pd.DataFrame, value: str = "dice", by: By = "structure", q: Sequence[float] = (25, 75)
) -> pd.DataFrame:
    """Dice (or any overlap score) per structure: n, mean, SD, median, quartiles, min, max.

    ``df`` is tidy: one row per participant and structure with the score in ``value``.
    """
    columns = group_columns(by)
    require_columns(df, [value, *columns])
    rows = []
    for key, part in split(df, by):
        x = pd.to_numeric(part[value], errors="coerce").dropna().to_numpy()
        if len(x) == 0:
            continue
        qs = np.percentile(x, [50, *q])
        row = {**key, "n": len(x), "mean": x.mean(), "sd": x.std(ddof=1) if len(x) > 1 else np.nan}
        row |= {"median": qs[0]} | {f"p{p:g}": v for p, v in zip(q, qs[1:], strict=True)}
        rows.append(row | {"min": x.min(), "max": x.max()})
    return pd.DataFrame(rows)
