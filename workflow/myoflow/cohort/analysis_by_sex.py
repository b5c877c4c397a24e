"""The per-sex analyses, each run for whichever sex has the data for it.

Each function takes the analysis table (one row per participant) and returns its tables;
a sex with too few participants (:class:`~myoflow.cohort.estimable.MinimumSizes`) gets
rows with ``n`` and a ``note`` ("not estimable (n = 1; needs 5)") instead of numbers, so
one man in a cohort never stops the analyses of its women. An analysis no group can
support raises :class:`~myoflow.cohort.stats.StatsInputError` with every group's note,
and is listed as not run. :mod:`myoflow.cohort.analysis` calls these in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from myoflow.cohort.estimable import (
    NOTE,
    MinimumSizes,
    complete,
    group_label,
    not_estimable,
    per_group,
    sex_groups,
    warnings_as_notes,
)
from myoflow.cohort.names import label
from myoflow.cohort.stats import correlate, describe, gam, regress, ttests
from myoflow.cohort.stats._common import StatsInputError, split

SEX = "sex"
FAT_FRACTION_MUSCLES = (
    "psoas_major",
    "iliacus",
    "gluteus_maximus",
    "gluteus_medius",
    "gluteus_minimus",
)


def with_fat_fraction_percent(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``ff_{muscle}_{side}_pct`` = 100 x the measured fraction (0-1).

    ``metrics.json`` stores fat fractions as fractions; the report shows percent, the unit
    the papers use. Sides whose fraction is absent stay absent.
    """
    new = {
        f"{column}_pct": 100.0 * pd.to_numeric(table[column], errors="coerce")
        for muscle in FAT_FRACTION_MUSCLES
        for side in ("left", "right")
        if (column := f"ff_{muscle}_{side}") in table.columns
    }
    if not new:
        return table
    kept = table.drop(columns=[c for c in new if c in table.columns])
    return pd.concat([kept, pd.DataFrame(new, index=table.index)], axis=1)


def fat_fraction_columns(table: pd.DataFrame) -> list[str]:
    """The percent fat fraction columns of ``table``, muscle by muscle, left then right."""
    return [
        f"ff_{m}_{s}_pct"
        for m in FAT_FRACTION_MUSCLES
        for s in ("left", "right")
        if f"ff_{m}_{s}_pct" in table.columns
    ]


def _numbers(values: pd.Series) -> np.ndarray:
    out = pd.to_numeric(values, errors="coerce").to_numpy(float)
    return out[np.isfinite(out)]


def _all_empty(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    """``frame``, or StatsInputError with every group's note when nothing was estimated."""
    if NOTE in frame.columns and (frame[NOTE].fillna("") != "").all():
        keys = [c for c in (SEX, "age_group", "bmi_class") if c in frame.columns]
        notes = dict.fromkeys(
            f"{group_label({k: r[k] for k in keys})}: {r[NOTE]}" for _, r in frame.iterrows()
        )
        raise StatsInputError(f"{what}: " + "; ".join(notes))
    return frame


# ---------------------------------------------------------------- Table 1 and 2


def table1(
    table: pd.DataFrame,
    continuous: Sequence[str],
    categorical: Sequence[str],
    minimum: MinimumSizes,
) -> dict[str, pd.DataFrame]:
    """Table 1 by sex and overall: mean and SD where a group has ``describe`` values."""
    t1 = describe.table1(table, SEX, continuous=continuous, categorical=categorical)
    blank = (t1["level"] == "") & (t1["n"] < minimum.describe)
    t1[NOTE] = ""
    t1.loc[blank, ["mean", "sd"]] = np.nan
    t1.loc[blank, NOTE] = [not_estimable(int(n), minimum.describe) for n in t1.loc[blank, "n"]]
    return {"table1": t1, "table1_display": display_table1(t1)}


def display_table1(t1: pd.DataFrame) -> pd.DataFrame:
    """Table 1 as text: one row per variable (with unit) and level, one column per group."""
    text = []
    for row in t1.itertuples(index=False):
        if row.level != "":
            text.append(f"{int(row.count)} ({row.percent:.1f} %)")
        elif row.note:
            text.append(row.note)
        else:
            text.append(f"{row.mean:.1f} ± {row.sd:.1f}")
    shown = t1.assign(text=text, variable=[label(v) for v in t1["variable"]])
    wide = shown.pivot_table(
        index=["variable", "level"], columns=SEX, values="text", aggfunc="first", sort=False
    )
    n = t1.groupby(SEX, sort=False)["n"].max()
    names = {"F": "Women", "M": "Men", describe.ALL: "All"}
    wide.columns = [f"{names.get(g, g)} (n = {n[g]})" for g in wide.columns]
    out = wide.reset_index().rename(columns={"variable": "Variable", "level": "Level"})
    return out.fillna("")


def welch_by_sex(
    table: pd.DataFrame, metrics: Sequence[str], minimum: MinimumSizes, level: float
) -> pd.DataFrame:
    """Welch t-test men minus women per metric, or the note of the sex that is too small."""
    rows = []
    for metric in metrics:
        men = _numbers(table.loc[table[SEX] == "M", metric])
        women = _numbers(table.loc[table[SEX] == "F", metric])
        row = {"metric": metric, "group": SEX, "a": "M", "b": "F"}
        small = [(w, len(v)) for w, v in (("men", men), ("women", women)) if len(v) < minimum.ttest]
        if small:
            why = ", ".join(f"{k} {w}" for w, k in small)
            note = f"not estimable (n = {why}; needs {minimum.ttest} per sex)"
            rows.append(row | {"n_a": len(men), "n_b": len(women), NOTE: note})
            continue
        with warnings_as_notes(f"men minus women, {metric}"):
            rows.append(row | ttests.welch_ttest(men, women, level) | {NOTE: ""})
    return pd.DataFrame(rows)


def table2(
    table: pd.DataFrame, metrics: Sequence[str], minimum: MinimumSizes, level: float
) -> dict[str, pd.DataFrame]:
    """Table 2: each metric per sex (n, mean, SD, range) and men minus women (Welch)."""
    summary = describe.describe(table[table[SEX].isin(["F", "M"])], metrics, by=SEX)
    rows = []
    for metric in metrics:
        row: dict[str, object] = {"metric": metric}
        for sex in ("F", "M"):
            match = summary[(summary["metric"] == metric) & (summary[SEX] == sex)]
            n = int(match["n"].iloc[0]) if len(match) else 0
            row[f"n_{sex}"] = n
            if n >= minimum.describe:
                for stat in ("mean", "sd", "min", "max"):
                    row[f"{stat}_{sex}"] = float(match[stat].iloc[0])
        rows.append(row)
    wide = pd.DataFrame(rows)
    for column in [f"{s}_{g}" for g in ("F", "M") for s in ("mean", "sd", "min", "max")]:
        if column not in wide.columns:
            wide[column] = np.nan
    tests = welch_by_sex(table, metrics, minimum, level).set_index("metric")
    stats_columns = ["diff", "ci_low", "ci_high", "t", "df", "p", NOTE]
    tests = tests.reindex(columns=stats_columns)
    order = ["metric", *[f"{s}_{g}" for g in ("F", "M") for s in ("n", "mean", "sd", "min", "max")]]
    t2 = wide[order].join(tests, on="metric")
    return {"table2": t2, "table2_display": display_table2(t2, minimum, level)}


def display_table2(t2: pd.DataFrame, minimum: MinimumSizes, level: float) -> pd.DataFrame:
    """Table 2 as text: measure (unit), mean ± SD (min-max) per sex, difference [CI], p."""
    out = pd.DataFrame({"Measure": [label(m) for m in t2["metric"]]})
    for sex, word in (("F", "Women"), ("M", "Men")):
        cells = []
        for row in t2.itertuples(index=False):
            n = int(getattr(row, f"n_{sex}"))
            mean, sd = getattr(row, f"mean_{sex}"), getattr(row, f"sd_{sex}")
            lo, hi = getattr(row, f"min_{sex}"), getattr(row, f"max_{sex}")
            if n < minimum.describe or pd.isna(mean):
                cells.append(not_estimable(n, minimum.describe))
            else:
                digits = 2 if abs(mean) < 10 else 1
                cells.append(
                    f"{mean:.{digits}f} ± {sd:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f}), "
                    f"n = {n}"
                )
        out[f"{word}: mean ± SD (range)"] = cells
    diffs, ps = [], []
    for row in t2.itertuples(index=False):
        if pd.isna(row.diff):
            diffs.append(row.note or "not estimable")
            ps.append("")
        else:
            digits = 2 if abs(row.diff) < 10 else 1
            diffs.append(
                f"{row.diff:.{digits}f} [{row.ci_low:.{digits}f}, {row.ci_high:.{digits}f}]"
            )
            ps.append(f"{row.p:.3g}" if row.p >= 1e-4 else "<0.0001")
    out[f"Men minus women [{level:.0%} CI]"] = diffs
    out["p (Welch)"] = ps
    return out


# ---------------------------------------------------------------- asymmetry, handedness


def asymmetry(table: pd.DataFrame, minimum: MinimumSizes, level: float) -> pd.DataFrame:
    """Right minus left (paired t) and the asymmetry index per structure, per sex."""
    pairs = {k: v for k, v in ttests.ASYMMETRY_PAIRS.items() if set(v) <= set(table.columns)}
    items = [{"structure": s, "left": lr[0], "right": lr[1]} for s, lr in pairs.items()]

    def compute(item: Mapping[str, object], part: pd.DataFrame) -> dict[str, object]:
        left, right = str(item["left"]), str(item["right"])
        test = ttests.paired_ttest(part[left], part[right], level)
        lr = part[[left, right]].apply(pd.to_numeric, errors="coerce").dropna()
        index = 100.0 * (lr[right] - lr[left]) / ((lr[right] + lr[left]) / 2.0)
        ci = sps.ttest_1samp(index, 0.0).confidence_interval(level)
        test = {k: v for k, v in test.items() if k != "n"}
        return test | {
            "asym_pct_mean": float(index.mean()),
            "asym_pct_sd": float(index.std(ddof=1)),
            "asym_pct_ci_low": float(ci.low),
            "asym_pct_ci_high": float(ci.high),
        }

    out = per_group(
        items, sex_groups(table), minimum.asymmetry, compute, complete(("left", "right"))
    )
    out = out.rename(columns={"mean_x": "mean_left", "mean_y": "mean_right"})
    return _all_empty(out, "asymmetry")


def handedness_anova(table: pd.DataFrame, metric: str, minimum: MinimumSizes) -> pd.DataFrame:
    """One-way ANOVA of ``metric`` across handedness levels with enough values, per sex."""
    rows = []
    for key, part in sex_groups(table):
        counts = part.groupby("handedness")[metric].count() if len(part) else pd.Series()
        enough = counts[counts >= minimum.handedness]
        row = {"value": metric, **key, "group": "handedness", "n": int(counts.sum())}
        if len(enough) < 2:
            levels = ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
            why = f"needs 2 handedness levels of {minimum.handedness}+; has {levels}"
            rows.append(row | {NOTE: not_estimable(int(counts.sum()), why=why)})
            continue
        used = part[part["handedness"].isin(enough.index)]
        with warnings_as_notes(f"{group_label(key)}, handedness"):
            result = ttests.one_way_anova(used, metric, "handedness", min_n=minimum.handedness)
        rows.append(row | result.iloc[0].to_dict() | key | {NOTE: ""})
    return _all_empty(pd.DataFrame(rows), "handedness ANOVA")


def handedness_ttest(
    table: pd.DataFrame, metric: str, minimum: MinimumSizes, level: float
) -> pd.DataFrame:
    """Right- minus left-handed (Welch) per sex, where both have ``ttest`` values."""

    def compute(item: Mapping[str, object], part: pd.DataFrame) -> dict[str, object]:
        right = part.loc[part["handedness"] == "right", metric]
        left = part.loc[part["handedness"] == "left", metric]
        if min(len(_numbers(right)), len(_numbers(left))) < minimum.ttest:
            raise StatsInputError(
                f"{len(_numbers(right))} right- and {len(_numbers(left))} left-handed; "
                f"needs {minimum.ttest} of each"
            )
        return {"group": "handedness", "a": "right", "b": "left"} | ttests.welch_ttest(
            right, left, level
        )

    out = per_group(
        [{"metric": metric}], sex_groups(table), minimum.ttest, compute, complete(("metric",))
    )
    return _all_empty(out, "handedness t-test")


# ---------------------------------------------------------------- correlations, models


def correlations(
    table: pd.DataFrame, pairs: Sequence[tuple[str, str]], minimum: MinimumSizes, level: float
) -> pd.DataFrame:
    """Pearson r [Fisher-z CI] of each pair per sex with ``correlation`` complete pairs."""
    present = [(x, y) for x, y in pairs if {x, y} <= set(table.columns)]
    if not present:
        raise StatsInputError(f"none of the correlation pairs {list(pairs)} is in the table")
    out = per_group(
        [{"x": x, "y": y} for x, y in present],
        sex_groups(table),
        max(minimum.correlation, 4),
        lambda item, part: {
            k: v
            for k, v in correlate.pearson(part[item["x"]], part[item["y"]], level).items()
            if k != "n"
        },
        complete(("x", "y")),
    )
    return _all_empty(out, "correlations")


def regression(
    table: pd.DataFrame,
    formula: str,
    columns: Sequence[str],
    predict_over: str | None,
    minimum: MinimumSizes,
    level: float,
    by_sex: bool = True,
) -> dict[str, pd.DataFrame]:
    """OLS of ``formula`` per sex (or overall): coefficients, fit, line; notes per group.

    A group is fitted when it has ``regression`` complete rows and more than the model's
    coefficients + 1, and its design has full rank (a hinge at 60 in a group all older
    than 60 does not); otherwise its model row carries the note.
    """
    groups = sex_groups(table) if by_sex else [({}, table)]
    coefficients, models, predictions = [], [], []
    for key, part in groups:
        data = part[list(columns)].apply(pd.to_numeric, errors="coerce").dropna()
        n = len(data)
        try:
            design = _design(formula, data) if n else None
        except StatsInputError as err:
            models.append({**key, "n": n, NOTE: not_estimable(n, why=str(err))})
            continue
        terms = design.shape[1] if design is not None else 0
        needed = max(minimum.regression, terms + 2)
        if n < needed:
            models.append({**key, "n": n, NOTE: not_estimable(n, needed)})
            continue
        rank = int(np.linalg.matrix_rank(design))
        if rank < terms:
            why = f"the design has rank {rank} for {terms} terms (a covariate without variation)"
            models.append({**key, "n": n, NOTE: not_estimable(n, why=why)})
            continue
        with warnings_as_notes(f"{group_label(key)}, {formula}"):
            fit = regress.ols(
                data.assign(**key), formula, by=None, predict_over=predict_over, level=level
            )
        coefficients.append(fit.coefficients.assign(**key))
        models.append(fit.models.iloc[0].to_dict() | key | {NOTE: ""})
        if len(fit.predictions):
            predictions.append(fit.predictions.assign(**key))
    model_table = pd.DataFrame(models)
    _all_empty(model_table, f"regression {formula}")
    keys = [SEX] if by_sex else []
    out = {
        "regression_coefficients": _keys_first(pd.concat(coefficients, ignore_index=True), keys),
        "regression_models": _keys_first(model_table, keys),
    }
    if predictions:
        out["regression_predictions"] = _keys_first(pd.concat(predictions, ignore_index=True), keys)
    return out


def _design(formula: str, data: pd.DataFrame) -> np.ndarray:
    """The model matrix of ``formula`` on ``data``, as statsmodels builds it for the fit."""
    import statsmodels.formula.api as smf

    try:
        return np.asarray(smf.ols(formula, data=data).exog)
    except Exception as err:  # the formula engine raises many types for bad formulas
        raise StatsInputError(f"cannot build {formula!r}: {err}") from err


def _keys_first(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    first = [k for k in keys if k in frame.columns]
    return frame[[*first, *(c for c in frame.columns if c not in first)]]


def gams(
    table: pd.DataFrame,
    metrics: Sequence[str],
    x: str,
    *,
    k: int,
    method: str,
    minimum: MinimumSizes,
    level: float,
    by_sex: bool = True,
) -> dict[str, pd.DataFrame]:
    """GAM of each metric on ``x`` per sex with max(``gam``, 2 k) complete rows."""
    groups = sex_groups(table) if by_sex else [({}, table)]
    values = pd.to_numeric(table[x], errors="coerce")
    grid = np.linspace(values.min(), values.max(), 101) if values.notna().any() else None
    curves, summaries = [], []
    needed = max(minimum.gam, 2 * k)
    for metric in metrics:
        for key, part in groups:
            data = part[[x, metric]].apply(pd.to_numeric, errors="coerce").dropna()
            row = {"metric": metric, **key, "n": len(data)}
            if len(data) < needed:
                summaries.append(row | {NOTE: not_estimable(len(data), needed)})
                continue
            try:
                with warnings_as_notes(f"{group_label(key)}, {metric} ~ s({x})"):
                    fit = gam.fit_gam(
                        data, metric, x, by=None, k=k, method=method, grid=grid, level=level
                    )
            except StatsInputError as err:
                summaries.append(row | {NOTE: not_estimable(len(data), why=str(err))})
                continue
            curves.append(fit.curves.assign(**key))
            summaries.append(fit.summary.iloc[0].to_dict() | key | {NOTE: ""})
    summary = _all_empty(pd.DataFrame(summaries), "GAM")
    keys = ["metric", SEX] if by_sex else ["metric"]
    return {
        "gam_curves": _keys_first(pd.concat(curves, ignore_index=True), keys),
        "gam_summary": _keys_first(summary, keys),
    }


# ---------------------------------------------------------------- normative tables


def percentiles(
    table: pd.DataFrame,
    metrics: Sequence[str],
    by: Sequence[str],
    q: Sequence[float],
    minimum: int,
) -> pd.DataFrame:
    """Percentiles ``q`` (n, mean, SD, range) per metric and cell of ``by``; cells with
    fewer than ``minimum`` values keep only n and a note (a p10 of 1 value is no norm)."""
    out = describe.describe(table, metrics, list(by), percentiles=q)
    small = out["n"] < minimum
    numbers = [c for c in out.columns if c not in ("metric", *by, "n")]
    out[NOTE] = ""
    out.loc[small, numbers] = np.nan
    out.loc[small, NOTE] = [not_estimable(int(n), minimum) for n in out.loc[small, "n"]]
    return _all_empty(out, "percentiles")


def drop_small_cells(
    profiles: pd.DataFrame, by: Sequence[str], minimum: int
) -> tuple[pd.DataFrame, str]:
    """CSA profile summaries of cells with ``minimum`` complete profiles; the others named."""
    keep = profiles["n"] >= minimum
    dropped = profiles.loc[~keep, [*by, "side", "n"]].drop_duplicates()
    if keep.sum() == 0:
        raise StatsInputError(f"no cell has {minimum} complete profiles")
    notes = "; ".join(
        f"{group_label({c: r[c] for c in by})}, {r['side']}: {not_estimable(int(r['n']), minimum)}"
        for _, r in dropped.iterrows()
    )
    return profiles[keep].reset_index(drop=True), notes


def outlier_counts(
    table: pd.DataFrame, columns: Sequence[str], minimum: int, by_sex: bool = True
) -> pd.DataFrame:
    """Participants flagged per volume (and sex); groups too small for robust z get a note."""
    if "outlier_columns" not in table.columns:
        raise StatsInputError("the analysis table has no outlier_columns (cohort flags)")
    flagged = table["outlier_columns"].fillna("").astype(str).str.split(";")
    rows = []
    groups = sex_groups(table) if by_sex else list(split(table, None))
    for key, part in groups:
        for column in columns:
            row = {"column": column, **key, "n": len(part)}
            if len(part) < minimum:  # the gather flagged nobody in it (GatherSettings)
                rows.append(row | {NOTE: not_estimable(len(part), minimum)})
                continue
            n = int(flagged.loc[part.index].map(lambda items, c=column: c in items).sum())
            rows.append(row | {"flagged": n, NOTE: ""})
    return _all_empty(pd.DataFrame(rows), "outlier flags")
