"""NAKO-style normative tables: percentiles by age group and sex, by BMI class, along z.

Percentiles use numpy's default (linear interpolation, R's type 7). The CSA profiles (one
row of ``bins`` cross-sectional areas per participant and side, along the cranio-caudal
axis) may arrive as list-valued cells or as numbered columns (``psoas_csa_profile_left_0``
.. ``_99``); :func:`profile_matrix` reads either, :func:`profiles_long` gives the tidy long
form, and :func:`profile_percentiles` summarises per bin without building the long table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from myoflow.cohort.stats._common import By, StatsInputError, group_columns, require_columns, split
from myoflow.cohort.stats.describe import describe
from myoflow.cohort.stats.groups import NAKO_AGE_EDGES, WHO_BMI_EDGES, WHO_BMI_LABELS, cut

PERCENTILES = (10.0, 50.0, 90.0)
NORMATIVE_METRICS = (
    "psoas_max_csa_total_cm2",
    "psoas_max_csa_left_cm2",
    "psoas_max_csa_right_cm2",
    "vol_iliopsoas_total_ml",
    "imi_ml_m2",
    "vol_gluteus_total_ml",
)
PROFILE_COLUMNS: Mapping[str, str] = {
    "left": "psoas_csa_profile_left",
    "right": "psoas_csa_profile_right",
}
"""Side -> profile column (or prefix of numbered columns)."""


def with_strata(
    df: pd.DataFrame,
    *,
    age_edges: Sequence[float] = NAKO_AGE_EDGES,
    age_labels: Sequence[str] | None = None,
    bmi_edges: Sequence[float] = WHO_BMI_EDGES,
    bmi_labels: Sequence[str] = WHO_BMI_LABELS,
) -> pd.DataFrame:
    """A copy of ``df`` with ``age_group`` (from ``age``) and ``bmi_class`` (from ``bmi``)."""
    require_columns(df, ["age", "bmi"])
    out = df.copy()
    out["age_group"] = cut(out["age"], age_edges, age_labels)
    out["bmi_class"] = cut(out["bmi"], bmi_edges, bmi_labels)
    return out


def percentiles(
    df: pd.DataFrame,
    metrics: Sequence[str] = NORMATIVE_METRICS,
    by: By = ("sex", "age_group"),
    q: Sequence[float] = PERCENTILES,
) -> pd.DataFrame:
    """Percentiles ``q`` (and n, mean, SD, min, max) of every metric per group of ``by``.

    Returns one row per metric and group (``p10``, ``p50``, ``p90`` columns by default).
    """
    metrics = [m for m in metrics if m in df.columns]
    return describe(df, metrics, by, percentiles=q)


def by_bmi_class(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("psoas_max_csa_total_cm2",),
    by: By = ("sex", "bmi_class"),
    q: Sequence[float] = PERCENTILES,
) -> pd.DataFrame:
    """Maximum psoas CSA (or other metrics) by sex and WHO BMI class, as :func:`percentiles`."""
    return percentiles(df, metrics, by, q)


def _parse_profile(cell: object) -> np.ndarray | None:
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return None
    if isinstance(cell, str):
        text = cell.strip().strip("[]()")
        parts = [p for p in re.split(r"[,;\s]+", text) if p]
        return np.array([float(p) for p in parts])
    return np.asarray(cell, dtype=float)


def profile_matrix(df: pd.DataFrame, column: str) -> np.ndarray:
    """Profiles as an (n participants x bins) float array; missing profiles are NaN rows.

    ``column`` holds list-likes or text such as "[1.2, 3.4, ...]", or names the prefix of
    numbered columns ``{column}_{i}`` (i = 0 .. bins - 1, any zero padding).

    Raises:
        StatsInputError: no such column(s), or profiles of different lengths.
    """
    if column in df.columns:
        parsed = []
        for row, cell in enumerate(df[column]):
            try:
                parsed.append(_parse_profile(cell))
            except (TypeError, ValueError) as err:
                raise StatsInputError(f"row {row} of {column} is not numbers: {err}") from err
        lengths = {len(p) for p in parsed if p is not None}
        if len(lengths) > 1:
            raise StatsInputError(f"{column} holds profiles of lengths {sorted(lengths)}")
        bins = lengths.pop() if lengths else 0
        out = np.full((len(df), bins), np.nan)
        for row, p in enumerate(parsed):
            if p is not None:
                out[row] = p
        return out
    pattern = re.compile(rf"^{re.escape(column)}_(\d+)$")
    numbered = sorted(
        ((int(m.group(1)), c) for c in df.columns if (m := pattern.match(c))),
    )
    if not numbered:
        raise StatsInputError(f"no profile column {column!r} nor numbered {column}_0, _1, ...")
    if [i for i, _ in numbered] != list(range(len(numbered))):
        raise StatsInputError(f"numbered {column}_* columns are not 0..{len(numbered) - 1}")
    return df[[c for _, c in numbered]].apply(pd.to_numeric, errors="coerce").to_numpy(float)


def profiles_long(
    df: pd.DataFrame,
    columns: Mapping[str, str] = PROFILE_COLUMNS,
    keep: Sequence[str] = ("participant_id", "sex"),
) -> pd.DataFrame:
    """Tidy long profiles: ``keep`` columns, side, bin, position (bin centre, 0-1), csa.

    Participants without a profile for a side have no rows for it.
    """
    keep = [c for c in keep if c in df.columns]
    parts = []
    for side, column in columns.items():
        matrix = profile_matrix(df, column)
        bins = matrix.shape[1]
        present = ~np.isnan(matrix).all(axis=1)
        n = int(present.sum())
        part = pd.DataFrame({c: np.repeat(df[c].to_numpy()[present], bins) for c in keep})
        part["side"] = side
        part["bin"] = np.tile(np.arange(bins), n)
        part["position"] = (part["bin"] + 0.5) / bins
        part["csa"] = matrix[present].ravel()
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def profile_percentiles(
    df: pd.DataFrame,
    columns: Mapping[str, str] = PROFILE_COLUMNS,
    by: By = ("sex", "age_group"),
    q: Sequence[float] = PERCENTILES,
) -> pd.DataFrame:
    """Per side, group and bin: n, mean and percentiles ``q`` of the CSA along z.

    A participant counts in a group's side if their whole profile is present. Returns tidy
    rows: the ``by`` columns, side, bin, position (bin centre as a fraction of the length),
    n, mean, ``p10``...
    """
    columns_by = group_columns(by)
    matrices = {side: profile_matrix(df, column) for side, column in columns.items()}
    index = pd.Series(np.arange(len(df)), index=df.index)
    parts = []
    for key, rows in split(df, by):
        positions = index.loc[rows.index].to_numpy()
        for side, matrix in matrices.items():
            values = matrix[positions]
            values = values[~np.isnan(values).any(axis=1)]
            bins = matrix.shape[1]
            if len(values) == 0:
                continue
            part = {c: key[c] for c in columns_by}
            part |= {
                "side": side,
                "bin": np.arange(bins),
                "position": (np.arange(bins) + 0.5) / bins,
            }
            part |= {"n": len(values), "mean": values.mean(axis=0)}
            for quantile, row in zip(q, np.percentile(values, q, axis=0), strict=True):
                part[f"p{quantile:g}"] = row
            parts.append(pd.DataFrame(part))
    if not parts:
        raise StatsInputError("no complete profiles to summarise")
    out = pd.concat(parts, ignore_index=True)
    for column in columns_by:  # keep the groups' order (age groups, BMI classes)
        if isinstance(df[column].dtype, pd.CategoricalDtype):
            out[column] = pd.Categorical(out[column], dtype=df[column].dtype)
    return out
