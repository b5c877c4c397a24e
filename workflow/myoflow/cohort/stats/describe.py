"""Descriptive tables: Table 1 (demographics by sex) and Table 2 (volumes by sex with tests).

Tables here are tidy numbers; :func:`display_table1` and :func:`display_table2` turn them
into the "mean +- SD" / "n (%)" text of a paper's table, without computing anything new.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from myoflow.cohort.stats._common import By, group_columns, require_columns
from myoflow.cohort.stats.ttests import welch_ttests

TABLE1_CONTINUOUS = ("age", "height_cm", "weight_kg", "bmi")
TABLE1_CATEGORICAL = ("handedness", "ethnicity")
TABLE2_METRICS = (
    "vol_iliopsoas_total_ml",
    "vol_iliopsoas_left_ml",
    "vol_iliopsoas_right_ml",
    "vol_psoas_major_left_ml",
    "vol_psoas_major_right_ml",
    "vol_iliacus_left_ml",
    "vol_iliacus_right_ml",
    "imi_ml_m2",
    "psoas_max_csa_total_cm2",
    "vol_gluteus_total_ml",
    *(f"ff_{m}_{s}_pct" for m in ("psoas_major", "iliacus") for s in ("left", "right")),
    *(
        f"ff_gluteus_{m}_{s}_pct"
        for m in ("maximus", "medius", "minimus")
        for s in ("left", "right")
    ),
)
ALL = "all"
"""Group label of the rows that pool every group."""


def describe(
    df: pd.DataFrame,
    metrics: Sequence[str],
    by: By = "sex",
    *,
    percentiles: Sequence[float] = (),
) -> pd.DataFrame:
    """n, mean, SD, min, max (and percentiles ``p{q}``, numpy's linear rule) per metric, group.

    Returns one row per metric and group of ``by``, columns: metric, the ``by`` columns, n,
    mean, sd, min, max, then ``p10``... for each requested percentile. Missing values are
    left out of every statistic; n counts the values used.
    """
    columns = group_columns(by)
    require_columns(df, [*columns, *metrics])
    values = df[list(metrics)].apply(pd.to_numeric, errors="coerce")
    long = (
        values.join(df[columns]).melt(id_vars=columns, var_name="metric").dropna(subset=["value"])
    )
    keys = ["metric", *columns]
    grouped = long.groupby(keys, sort=False, observed=True)["value"]
    out = grouped.agg(n="count", mean="mean", sd="std", min="min", max="max")
    for q in percentiles:
        out[f"p{q:g}"] = grouped.quantile(q / 100.0)
    out = out.reset_index()
    out["metric"] = pd.Categorical(out["metric"], categories=list(metrics), ordered=True)
    out = out.sort_values(keys, kind="stable").reset_index(drop=True)
    out["metric"] = out["metric"].astype(str)
    return out


def table1(
    df: pd.DataFrame,
    by: str = "sex",
    *,
    continuous: Sequence[str] = TABLE1_CONTINUOUS,
    categorical: Sequence[str] = TABLE1_CATEGORICAL,
    overall: bool = True,
) -> pd.DataFrame:
    """Demographics by group: mean and SD of continuous, counts and % of categorical columns.

    Returns tidy rows: variable, level ("" for continuous), ``by`` (group, or "all" for the
    pooled rows when ``overall``), n (values present), mean, sd, count (per level), percent
    (of the group's present values). Missing categories are not a level.
    """
    continuous = [c for c in continuous if c in df.columns]
    categorical = [c for c in categorical if c in df.columns]
    require_columns(df, [by])
    parts = [(g, rows) for g, rows in df.groupby(by, sort=True, observed=True)]
    if overall:
        parts.append((ALL, df))
    out = []
    for group, rows in parts:
        for variable in continuous:
            x = pd.to_numeric(rows[variable], errors="coerce").dropna()
            out.append(
                {"variable": variable, "level": "", by: group, "n": len(x)}
                | {"mean": x.mean(), "sd": x.std(ddof=1), "count": np.nan, "percent": np.nan}
            )
        for variable in categorical:
            present = rows[variable].dropna()
            for level, count in present.value_counts(sort=False).sort_index().items():
                out.append(
                    {"variable": variable, "level": str(level), by: group, "n": len(present)}
                    | {"mean": np.nan, "sd": np.nan, "count": int(count)}
                    | {"percent": 100.0 * count / len(present)}
                )
    return pd.DataFrame(
        out, columns=["variable", "level", by, "n", "mean", "sd", "count", "percent"]
    )


def table2(
    df: pd.DataFrame,
    metrics: Sequence[str] = TABLE2_METRICS,
    *,
    group: str = "sex",
    a: str = "M",
    b: str = "F",
    level: float = 0.95,
) -> pd.DataFrame:
    """Metrics by group with Welch t-tests: one row per metric.

    Columns: metric; for each of ``b`` and ``a``: n, mean, sd, min, max (suffixed ``_F``,
    ``_M``); then diff (``a`` - ``b``), ci_low, ci_high, t, df, p of Welch's test.
    """
    metrics = [m for m in metrics if m in df.columns]
    summary = describe(df[df[group].isin([a, b])], metrics, by=group)
    wide = summary.pivot(index="metric", columns=group, values=["n", "mean", "sd", "min", "max"])
    wide.columns = [f"{stat}_{g}" for stat, g in wide.columns]
    order = [f"{s}_{g}" for g in (b, a) for s in ("n", "mean", "sd", "min", "max")]
    tests = welch_ttests(df, metrics, group, a, b, level=level).set_index("metric")
    wide = wide[order].join(tests[["diff", "ci_low", "ci_high", "t", "df", "p"]])
    for g in (b, a):
        wide[f"n_{g}"] = wide[f"n_{g}"].astype(int)
    return wide.loc[metrics].reset_index()


def _mean_sd(mean: float, sd: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def display_table1(table: pd.DataFrame, by: str = "sex", digits: int = 1) -> pd.DataFrame:
    """Table 1 as text: one row per variable/level, one column per group."""
    text = np.where(
        table["level"] == "",
        [_mean_sd(m, s, digits) for m, s in zip(table["mean"], table["sd"], strict=True)],
        [
            f"{int(c) if c == c else 0} ({p:.{digits}f} %)"
            for c, p in zip(table["count"], table["percent"], strict=True)
        ],
    )
    shown = table.assign(text=text)
    wide = shown.pivot_table(
        index=["variable", "level"], columns=by, values="text", aggfunc="first", sort=False
    )
    n = table.groupby(by, sort=False)["n"].max()
    wide.columns = [f"{g} (n={n[g]})" for g in wide.columns]
    return wide.reset_index()


def display_table2(
    table: pd.DataFrame, groups: Sequence[str] = ("F", "M"), digits: int = 1
) -> pd.DataFrame:
    """Table 2 as text: mean ± SD (min-max) per group, difference [95 % CI] and p."""
    out = pd.DataFrame({"metric": table["metric"]})
    for g in groups:
        out[g] = [
            f"{_mean_sd(m, s, digits)} ({lo:.{digits}f}-{hi:.{digits}f})"
            for m, s, lo, hi in zip(
                table[f"mean_{g}"],
                table[f"sd_{g}"],
                table[f"min_{g}"],
                table[f"max_{g}"],
                strict=True,
            )
        ]
    out["difference"] = [
        f"{d:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
        for d, lo, hi in zip(table["diff"], table["ci_low"], table["ci_high"], strict=True)
    ]
    out["p"] = [f"{p:.3g}" if p >= 1e-4 else "<0.0001" for p in table["p"]]
    return out
