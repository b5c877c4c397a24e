"""Two-sample, paired and one-way comparisons: sex differences, left-right asymmetry, handedness.

Every function returns numbers scipy computes (Welch's t-test, the paired t-test, one-way
ANOVA), laid out as tidy tables with the difference and its confidence interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from myoflow.cohort.stats._common import By, StatsInputError, group_columns, require_columns, split

ASYMMETRY_PAIRS: Mapping[str, tuple[str, str]] = {
    "iliopsoas": ("vol_iliopsoas_left_ml", "vol_iliopsoas_right_ml"),
    "psoas_major": ("vol_psoas_major_left_ml", "vol_psoas_major_right_ml"),
    "iliacus": ("vol_iliacus_left_ml", "vol_iliacus_right_ml"),
    "gluteus": ("vol_gluteus_left_ml", "vol_gluteus_right_ml"),
    "psoas_max_csa": ("psoas_max_csa_left_cm2", "psoas_max_csa_right_cm2"),
}
"""Left and right columns per structure (asymmetry = right - left)."""


def _numbers(values: pd.Series | np.ndarray) -> np.ndarray:
    out = pd.to_numeric(pd.Series(np.asarray(values)), errors="coerce").to_numpy(float)
    return out[np.isfinite(out)]


def welch_ttest(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Welch's two-sample t-test of mean(a) - mean(b), missing values dropped.

    Returns n_a, n_b, mean_a, mean_b, sd_a, sd_b, diff, ci_low, ci_high, t, df, p.
    """
    a, b = _numbers(a), _numbers(b)
    if len(a) < 2 or len(b) < 2:
        raise StatsInputError(f"a t-test needs 2+ values per group, got {len(a)} and {len(b)}")
    result = stats.ttest_ind(a, b, equal_var=False)
    ci = result.confidence_interval(level)
    return {
        "n_a": len(a),
        "n_b": len(b),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "sd_a": float(a.std(ddof=1)),
        "sd_b": float(b.std(ddof=1)),
        "diff": float(a.mean() - b.mean()),
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "t": float(result.statistic),
        "df": float(result.df),
        "p": float(result.pvalue),
    }


def welch_ttests(
    df: pd.DataFrame,
    metrics: Sequence[str],
    group: str = "sex",
    a: str = "M",
    b: str = "F",
    *,
    by: By = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """Welch t-tests of ``a`` minus ``b`` (levels of ``group``) for every metric.

    Returns one row per metric (and ``by`` group): metric, group, a, b and the columns of
    :func:`welch_ttest` (diff = mean in ``a`` - mean in ``b``).
    """
    require_columns(df, [group, *metrics])
    rows = []
    for key, part in split(df, by):
        for metric in metrics:
            test = welch_ttest(
                part.loc[part[group] == a, metric], part.loc[part[group] == b, metric], level
            )
            rows.append({"metric": metric, **key, "group": group, "a": a, "b": b, **test})
    return pd.DataFrame(rows)


def paired_ttest(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Paired t-test of mean(y - x) over pairs where both are present.

    Returns n, mean_x, mean_y, diff (y - x), sd_diff, ci_low, ci_high, t, df, p.
    """
    pairs = pd.DataFrame({"x": np.asarray(x), "y": np.asarray(y)}).apply(
        pd.to_numeric, errors="coerce"
    )
    pairs = pairs.dropna()
    if len(pairs) < 2:
        raise StatsInputError(f"a paired t-test needs 2+ complete pairs, got {len(pairs)}")
    xs, ys = pairs["x"].to_numpy(), pairs["y"].to_numpy()
    result = stats.ttest_rel(ys, xs)
    ci = result.confidence_interval(level)
    d = ys - xs
    return {
        "n": len(d),
        "mean_x": float(xs.mean()),
        "mean_y": float(ys.mean()),
        "diff": float(d.mean()),
        "sd_diff": float(d.std(ddof=1)),
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "t": float(result.statistic),
        "df": float(result.df),
        "p": float(result.pvalue),
    }


def asymmetry_tests(
    df: pd.DataFrame,
    pairs: Mapping[str, tuple[str, str]] | None = None,
    *,
    by: By = "sex",
    level: float = 0.95,
) -> pd.DataFrame:
    """Right minus left by paired t-test, and the asymmetry index, per structure and group.

    The asymmetry index is 100 (right - left) / ((right + left) / 2) in %, reported as its
    mean with a one-sample t confidence interval (``asym_pct_*`` columns).

    Args:
        pairs: structure name -> (left column, right column); default the
            ``ASYMMETRY_PAIRS`` present in ``df``.
    """
    if pairs is None:
        pairs = {k: v for k, v in ASYMMETRY_PAIRS.items() if set(v) <= set(df.columns)}
    rows = []
    for key, part in split(df, by):
        for structure, (left, right) in pairs.items():
            require_columns(part, [left, right])
            test = paired_ttest(part[left], part[right], level)
            lr = part[[left, right]].apply(pd.to_numeric, errors="coerce").dropna()
            index = 100.0 * (lr[right] - lr[left]) / ((lr[right] + lr[left]) / 2.0)
            ci = stats.ttest_1samp(index, 0.0).confidence_interval(level)
            rows.append(
                {
                    "structure": structure,
                    **key,
                    "left": left,
                    "right": right,
                    **test,
                    "asym_pct_mean": float(index.mean()),
                    "asym_pct_sd": float(index.std(ddof=1)),
                    "asym_pct_ci_low": float(ci.low),
                    "asym_pct_ci_high": float(ci.high),
                }
            )
    return pd.DataFrame(rows).rename(columns={"mean_x": "mean_left", "mean_y": "mean_right"})


def one_way_anova(
    df: pd.DataFrame,
    value: str,
    group: str = "handedness",
    *,
    levels: Sequence[str] | None = None,
    by: By = None,
    min_n: int = 2,
) -> pd.DataFrame:
    """One-way ANOVA of ``value`` across the levels of ``group`` (e.g. handedness).

    Levels with fewer than ``min_n`` values are left out (and listed in ``levels``).
    Returns per ``by`` group: value, group, levels (the ones tested), n, f, df_between,
    df_within, p.
    """
    require_columns(df, [value, group, *group_columns(by)])
    rows = []
    for key, part in split(df, by):
        names = sorted(part[group].dropna().unique()) if levels is None else list(levels)
        samples = {n: _numbers(part.loc[part[group] == n, value]) for n in names}
        samples = {n: s for n, s in samples.items() if len(s) >= min_n}
        if len(samples) < 2:
            raise StatsInputError(f"ANOVA of {value} by {group} needs 2+ levels with data")
        result = stats.f_oneway(*samples.values())
        n = sum(len(s) for s in samples.values())
        rows.append(
            {
                "value": value,
                **key,
                "group": group,
                "levels": ",".join(map(str, samples)),
                "n": n,
                "f": float(result.statistic),
                "df_between": len(samples) - 1,
                "df_within": n - len(samples),
                "p": float(result.pvalue),
            }
        )
    return pd.DataFrame(rows)
