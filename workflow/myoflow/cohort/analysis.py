"""Every configured cohort analysis, run on the analysis table: named tables out.

:func:`run_analysis` orchestrates :mod:`myoflow.cohort.stats` (it computes nothing itself) and
returns tidy tables by name; :func:`myoflow.cohort.analysis_tables.write_tables` writes each as
``{name}.tsv`` (reading the inputs and writing the tables live there). Nothing
here plots: figures are drawn from these tables (:mod:`myoflow.cohort.figures`), so a
figure never shows a number the tables do not hold.

An analysis the data cannot support (a GAM on 12 participants, handedness with one
left-hander, CSA profiles a truth-only cohort lacks) is recorded in the ``analyses``
table as ``skipped`` with the reason, and the others still run; a small demo cohort
gives a report, not a crash.

Tables (those of skipped analyses are absent):

- ``flow``, ``exclusion_counts``: participants per stage, exclusions per stage and reason;
- ``table1`` (+ ``table1_display``), ``table1_tests``: demographics by sex, Welch M - F;
- ``table2`` (+ ``table2_display``): volumes by sex with Welch t-tests;
- ``asymmetry``: right - left per structure and sex (paired t; asymmetry index, one-sample t);
- ``handedness_anova``, ``handedness_ttest``: asymmetry across handedness, by sex;
- ``correlations``: Pearson r with Fisher-z CIs, p, n, per sex;
- ``regression_coefficients``, ``regression_models``, ``regression_predictions``: each
  configured formula by sex (``regression`` names it);
- ``gam_curves``, ``gam_summary``: metric ~ s(age) by sex with pointwise bands;
- ``percentiles_age``: every normative metric by sex and age group (p10/p50/p90...);
- ``percentiles_bmi``: maximum psoas CSA (configurable) by sex and WHO BMI class;
- ``csa_profiles_age``, ``csa_profiles_bmi``: CSA along the muscle by sex and group;
- ``bland_altman``, ``bland_altman_points``, ``dice``: agreement with manual annotations;
- ``outlier_counts``: cohort-level flags per volume and sex;
- ``analyses``: every analysis, ``ok`` or ``skipped``, and why.

Without phenotypes (config ``phenotypes`` not set: ``run_analysis(..., phenotypes=False)``)
the analyses that need them are recorded as skipped with :data:`NEEDS_PHENOTYPES` and the
rest run over the whole cohort (:mod:`myoflow.cohort.analysis_overall`: ``volumes``,
``asymmetry``, ``correlations``, ``csa_profiles_overall``, ``outlier_counts``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from myoflow.cohort.analysis_tables import ID, with_profile_columns
from myoflow.cohort.stats import agreement, correlate, describe, gam, normative, regress, ttests
from myoflow.cohort.stats._common import StatsInputError
from myoflow.cohort.stats.cohort import AnalysisCohort
from myoflow.cohort.stats.groups import NAKO_AGE_EDGES, WHO_BMI_EDGES, WHO_BMI_LABELS

SEX = "sex"
MANUAL_PREFIX = "manual_"
"""Manual annotation columns are ``manual_<metric>``, e.g. ``manual_vol_iliopsoas_total_ml``."""

NEEDS_PHENOTYPES = "needs phenotypes (config phenotypes is not set)"
"""Why an analysis is not run when no phenotype table is configured."""

PHENOTYPE_COLUMNS = frozenset(
    {
        "sex",
        "age",
        "height_cm",
        "weight_kg",
        "bmi",
        "handedness",
        "ethnicity",
        "imi_ml_m2",  # total iliopsoas volume / height^2
        "age_group",
        "bmi_class",
    }
)
"""Columns of the analysis table that come from the phenotype table or are derived from it."""

DEFAULT_CORRELATIONS = (
    *correlate.UKBB_PAIRS,
    ("vol_iliopsoas_total_ml", "psoas_max_csa_total_cm2"),
    ("vol_iliopsoas_total_ml", "vol_gluteus_total_ml"),
)


@dataclass(frozen=True)
class Regression:
    """One configured regression: a name, a statsmodels formula, the line's covariate."""

    name: str
    formula: str
    predict_over: str | None = None


DEFAULT_REGRESSIONS = (
    Regression("volume_height", "vol_iliopsoas_total_ml ~ height_cm", "height_cm"),
    Regression("imi_bmi", "imi_ml_m2 ~ bmi", "bmi"),
    Regression("imi_age_bmi", "imi_ml_m2 ~ age + bmi"),
)


@dataclass(frozen=True)
class AnalysisSettings:
    """What to analyse (config ``stats``; every default is the shipped configuration)."""

    level: float = 0.95
    table1_continuous: tuple[str, ...] = describe.TABLE1_CONTINUOUS
    table1_categorical: tuple[str, ...] = describe.TABLE1_CATEGORICAL
    table2_metrics: tuple[str, ...] = describe.TABLE2_METRICS
    asymmetry_metric: str = "iliopsoas_asymmetry_pct"
    correlations: tuple[tuple[str, str], ...] = DEFAULT_CORRELATIONS
    regressions: tuple[Regression, ...] = DEFAULT_REGRESSIONS
    gam_metrics: tuple[str, ...] = ("imi_ml_m2",)
    gam_x: str = "age"
    gam_k: int = 10
    gam_method: str = "REML"
    age_edges: tuple[float, ...] = NAKO_AGE_EDGES
    age_labels: tuple[str, ...] | None = None
    bmi_edges: tuple[float, ...] = WHO_BMI_EDGES
    bmi_labels: tuple[str, ...] = WHO_BMI_LABELS
    percentiles: tuple[float, ...] = normative.PERCENTILES
    normative_metrics: tuple[str, ...] = normative.NORMATIVE_METRICS
    bmi_class_metrics: tuple[str, ...] = ("psoas_max_csa_total_cm2",)
    profile_columns: Mapping[str, str] = field(
        default_factory=lambda: dict(normative.PROFILE_COLUMNS)
    )
    outlier_columns: tuple[str, ...] = ("vol_iliopsoas_total_ml", "vol_gluteus_total_ml")

    @classmethod
    def from_config(cls, stats: Mapping[str, Any]) -> AnalysisSettings:
        """Settings from the config's ``stats`` block (missing keys keep the defaults)."""
        d = cls()
        gam_block = stats.get("gam", {}) or {}
        ages = stats.get("age_groups", {}) or {}
        bmi = stats.get("bmi_classes", {}) or {}
        regressions = stats.get("regressions")
        return cls(
            level=float(stats.get("level", d.level)),
            table1_continuous=tuple(stats.get("table1_continuous", d.table1_continuous)),
            table1_categorical=tuple(stats.get("table1_categorical", d.table1_categorical)),
            table2_metrics=tuple(stats.get("table2_metrics", d.table2_metrics)),
            asymmetry_metric=stats.get("asymmetry_metric", d.asymmetry_metric),
            correlations=tuple(tuple(p) for p in stats.get("correlations", d.correlations)),
            regressions=d.regressions
            if regressions is None
            else tuple(
                Regression(r["name"], r["formula"], r.get("predict_over")) for r in regressions
            ),
            gam_metrics=tuple(gam_block.get("metrics", d.gam_metrics)),
            gam_x=gam_block.get("x", d.gam_x),
            gam_k=int(gam_block.get("k", d.gam_k)),
            gam_method=gam_block.get("method", d.gam_method),
            age_edges=tuple(float(e) for e in ages.get("edges", d.age_edges)),
            age_labels=tuple(ages["labels"]) if ages.get("labels") else None,
            bmi_edges=tuple(float(e) for e in bmi.get("edges", d.bmi_edges)),
            bmi_labels=tuple(bmi.get("labels", d.bmi_labels)),
            percentiles=tuple(float(q) for q in stats.get("percentiles", d.percentiles)),
            normative_metrics=tuple(stats.get("normative_metrics", d.normative_metrics)),
            bmi_class_metrics=tuple(stats.get("bmi_class_metrics", d.bmi_class_metrics)),
            outlier_columns=tuple(
                (stats.get("outliers", {}) or {}).get("columns", d.outlier_columns)
            ),
        )


@dataclass(frozen=True)
class AnalysisResult:
    """Named tables and the record of which analyses ran.

    Attributes:
        tables: table name -> tidy DataFrame (see the module docstring).
        analyses: analysis, status (``ok``/``skipped``), tables, message.
    """

    tables: dict[str, pd.DataFrame]
    analyses: pd.DataFrame


# ---------------------------------------------------------------- the analyses


class _Runner:
    """Runs analyses, keeping their tables and recording the ones the data cannot support."""

    def __init__(self) -> None:
        self.tables: dict[str, pd.DataFrame] = {}
        self.records: list[dict[str, str]] = []

    def __call__(
        self, name: str, func: Callable[[], Mapping[str, pd.DataFrame]], note: str = ""
    ) -> None:
        try:
            produced = dict(func())
        except (StatsInputError, np.linalg.LinAlgError) as err:
            self.records.append(
                {"analysis": name, "status": "skipped", "tables": "", "message": str(err)}
            )
            return
        for table, frame in produced.items():
            if table in self.tables:  # several analyses feed one table (regressions)
                frame = pd.concat([self.tables[table], frame], ignore_index=True)
            self.tables[table] = frame
        self.records.append(
            {"analysis": name, "status": "ok", "tables": ",".join(produced), "message": note}
        )

    def skip(self, name: str, message: str) -> None:
        """Record ``name`` as not run, and why (e.g. :data:`NEEDS_PHENOTYPES`)."""
        self.records.append(
            {"analysis": name, "status": "skipped", "tables": "", "message": message}
        )

    def result(self) -> AnalysisResult:
        """The tables so far, with the record of the analyses as table ``analyses``."""
        analyses = pd.DataFrame(self.records, columns=["analysis", "status", "tables", "message"])
        return AnalysisResult(tables=self.tables | {"analyses": analyses}, analyses=analyses)

    def skip_all(self, message: str) -> None:
        """Record that no analysis beyond the flow could run, and why."""
        self.records.append(
            {"analysis": "all", "status": "skipped", "tables": "", "message": message}
        )


MIN_PARTICIPANTS = 3
"""Fewest participants in the analysis table for the cohort statistics to run at all."""


def _present(table: pd.DataFrame, columns: Sequence[str], what: str) -> list[str]:
    found = [c for c in columns if c in table.columns]
    if not found:
        raise StatsInputError(f"none of the {what} {list(columns)} is in the analysis table")
    return found


def _regression(
    table: pd.DataFrame, spec: Regression, level: float, by: str | None = SEX
) -> dict[str, pd.DataFrame]:
    """One configured regression's tables, each row labelled with its name and formula."""
    data = _narrow(table, *_formula_columns(table, spec.formula))
    fit = regress.ols(data, spec.formula, by=by, predict_over=spec.predict_over, level=level)
    labels = {"regression": spec.name, "formula": spec.formula}
    out = {
        "regression_coefficients": fit.coefficients.assign(**labels),
        "regression_models": fit.models.assign(**labels),
    }
    if len(fit.predictions):
        out["regression_predictions"] = fit.predictions.assign(**labels, x=spec.predict_over)
    return {name: frame[[*labels, *_after_labels(frame, labels)]] for name, frame in out.items()}


def _after_labels(frame: pd.DataFrame, labels: Mapping[str, str]) -> list[str]:
    """``frame``'s columns other than the label columns, in order."""
    return [c for c in frame.columns if c not in labels]


def _handedness_ttest(table: pd.DataFrame, metric: str, level: float) -> dict[str, pd.DataFrame]:
    return {
        "handedness_ttest": ttests.welch_ttests(
            table, [metric], "handedness", "right", "left", by=SEX, level=level
        )
    }


def _agreement(
    table: pd.DataFrame, manual: pd.DataFrame | None, dice: pd.DataFrame | None, level: float
) -> dict[str, pd.DataFrame]:
    out: dict[str, pd.DataFrame] = {}
    if manual is not None:
        reference = [c for c in manual.columns if c.startswith(MANUAL_PREFIX)]
        pairs = {
            c[len(MANUAL_PREFIX) :]: (c[len(MANUAL_PREFIX) :], c)
            for c in reference
            if c[len(MANUAL_PREFIX) :] in table.columns
        }
        if not pairs:
            raise StatsInputError(
                f"the manual annotation table has no {MANUAL_PREFIX}<metric> column for a "
                f"metric of the analysis table; it has {list(manual.columns)}"
            )
        manual = manual.assign(**{ID: manual[ID].astype(str)})
        joined = table[[ID, *{m for m, _ in pairs.values()}]].merge(
            manual[[ID, *reference]], on=ID, how="inner"
        )
        result = agreement.bland_altman(joined, pairs, level=level)
        out |= {"bland_altman": result.summary, "bland_altman_points": result.points}
    if dice is not None:
        by = [c for c in ("structure", "side") if c in dice.columns]
        out["dice"] = agreement.dice_summary(dice, by=by)
    return out


def _outlier_counts(
    table: pd.DataFrame, columns: Sequence[str], by: str | None = SEX
) -> dict[str, pd.DataFrame]:
    if "outlier_columns" not in table.columns:
        raise StatsInputError("the analysis table has no outlier_columns (cohort flags)")
    flagged = table["outlier_columns"].fillna("").astype(str)
    rows = []
    groups = table.groupby(by, sort=True) if by is not None else [(None, table)]
    for group, part in groups:
        names = flagged.loc[part.index].str.split(";")
        for column in columns:
            n = int(names.map(lambda items, c=column: c in items).sum())
            key = {} if by is None else {by: group}
            rows.append({"column": column, **key, "n": len(part), "flagged": n})
    return {"outlier_counts": pd.DataFrame(rows)}


def _narrow(table: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """``sex`` and those of ``columns`` in ``table``: every statistic splits its input by
    group, and splitting a 150-column table of 100,000 rows copies it each time."""
    wanted = dict.fromkeys([SEX, *columns])
    return table[[c for c in wanted if c in table.columns]]


def _formula_columns(table: pd.DataFrame, formula: str) -> list[str]:
    """Columns of ``table`` named in ``formula`` (every identifier that is a column)."""
    return [c for c in dict.fromkeys(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", formula)) if c in table]


def run_analysis(
    cohort: AnalysisCohort,
    settings: AnalysisSettings | None = None,
    *,
    profiles: pd.DataFrame | None = None,
    manual: pd.DataFrame | None = None,
    dice: pd.DataFrame | None = None,
    phenotypes: bool = True,
) -> AnalysisResult:
    """Run every configured analysis on ``cohort``'s analysis table.

    Args:
        cohort: the analysis table (one row per included participant) and the exclusions.
        settings: what to analyse (default: the shipped configuration).
        profiles: optional CSA profiles: ``participant_id`` and the profile columns as
            JSON list text (``csa_profiles.tsv``) or numbered columns; participants not in
            the analysis table are ignored. Without them the profile analyses are
            skipped, unless the analysis table holds the profile columns itself.
        manual: optional manual annotations: ``participant_id`` and ``manual_<metric>``
            columns (Bland-Altman of each metric against its manual value).
        dice: optional Dice scores of automatic vs manual masks: ``participant_id``,
            ``structure`` (optional ``side``), ``dice``.
        phenotypes: whether a phenotype table was configured. ``False``: the analyses
            that need phenotypes are skipped with :data:`NEEDS_PHENOTYPES` and those the
            measurements support alone run over the whole cohort (module docstring).

    Returns:
        The tables and the ``analyses`` record; the latter is also ``tables["analyses"]``.
    """
    s = settings if settings is not None else AnalysisSettings()
    run = _Runner()
    run("flow", lambda: {"flow": cohort.flow(), "exclusion_counts": cohort.exclusion_counts()})
    if len(cohort.table) < MIN_PARTICIPANTS:
        # Everyone excluded (or nearly): the flow and exclusions are the result, and
        # every analysis is recorded as skipped rather than failing deep in a library.
        run.skip_all(f"{len(cohort.table)} participant(s) in the analysis table")
        return run.result()
    profile_names = list(s.profile_columns.values())
    if profiles is None and any(c in cohort.table.columns for c in profile_names):
        profiles = cohort.table[[ID, *(c for c in profile_names if c in cohort.table.columns)]]
    if not phenotypes:
        from myoflow.cohort.analysis_overall import run_without_phenotypes  # imports this

        run_without_phenotypes(run, cohort, s, profiles, manual, dice)
        return run.result()
    table = normative.with_strata(
        cohort.table.drop(columns=[c for c in profile_names if c in cohort.table.columns]),
        age_edges=s.age_edges,
        age_labels=s.age_labels,
        bmi_edges=s.bmi_edges,
        bmi_labels=s.bmi_labels,
    )

    def table1() -> dict[str, pd.DataFrame]:
        t1 = describe.table1(
            _narrow(table, *s.table1_continuous, *s.table1_categorical),
            SEX,
            continuous=s.table1_continuous,
            categorical=s.table1_categorical,
        )
        return {"table1": t1, "table1_display": describe.display_table1(t1)}

    def table1_tests() -> dict[str, pd.DataFrame]:
        continuous = _present(table, s.table1_continuous, "Table 1 continuous variables")
        data = _narrow(table, *continuous)
        return {"table1_tests": ttests.welch_ttests(data, continuous, SEX, "M", "F", level=s.level)}

    def table2() -> dict[str, pd.DataFrame]:
        metrics = _present(table, s.table2_metrics, "Table 2 metrics")
        t2 = describe.table2(_narrow(table, *metrics), metrics, level=s.level)
        return {"table2": t2, "table2_display": describe.display_table2(t2)}

    def asymmetry() -> dict[str, pd.DataFrame]:
        pairs = [c for pair in ttests.ASYMMETRY_PAIRS.values() for c in pair]
        return {"asymmetry": ttests.asymmetry_tests(_narrow(table, *pairs), level=s.level)}

    run("table1", table1)
    run("table1_tests", table1_tests)
    run("table2", table2)
    run("asymmetry", asymmetry)
    handedness = _narrow(table, s.asymmetry_metric, "handedness")
    run(
        "handedness_anova",
        lambda: {
            "handedness_anova": ttests.one_way_anova(
                handedness, s.asymmetry_metric, "handedness", by=SEX
            )
        },
    )
    run("handedness_ttest", lambda: _handedness_ttest(handedness, s.asymmetry_metric, s.level))
    pairs = [c for pair in s.correlations for c in pair]
    run(
        "correlations",
        lambda: {
            "correlations": correlate.correlations(
                _narrow(table, *pairs), s.correlations, level=s.level
            )
        },
    )
    for spec in s.regressions:
        run(f"regression {spec.name}", lambda spec=spec: _regression(table, spec, s.level))

    def gams() -> dict[str, pd.DataFrame]:
        metrics = _present(table, s.gam_metrics, "GAM metrics")
        fit = gam.fit_gam(
            _narrow(table, s.gam_x, *metrics),
            metrics,
            s.gam_x,
            by=SEX,
            k=s.gam_k,
            method=s.gam_method,
            level=s.level,
        )
        return {"gam_curves": fit.curves, "gam_summary": fit.summary}

    run("gam", gams)
    for name, group, metrics, what in (
        ("percentiles_age", "age_group", s.normative_metrics, "normative metrics"),
        ("percentiles_bmi", "bmi_class", s.bmi_class_metrics, "BMI class metrics"),
    ):
        run(
            name,
            lambda name=name, group=group, metrics=metrics, what=what: {
                name: normative.percentiles(
                    _narrow(table, group, *_present(table, metrics, what)),
                    _present(table, metrics, what),
                    (SEX, group),
                    s.percentiles,
                )
            },
        )
    strata = _narrow(table, ID, "age_group", "bmi_class")
    joined: list[pd.DataFrame] = []  # parsed once, for both groupings

    def profile_table() -> pd.DataFrame:
        if not joined:
            joined.append(_profile_table(strata, profiles, s.profile_columns))
        return joined[0]

    for name, group in (("csa_profiles_age", "age_group"), ("csa_profiles_bmi", "bmi_class")):
        run(
            name,
            lambda group=group, name=name: {
                name: normative.profile_percentiles(
                    profile_table(), s.profile_columns, (SEX, group), s.percentiles
                )
            },
        )
    if manual is not None or dice is not None:
        run("agreement", lambda: _agreement(table, manual, dice, s.level))
    run(
        "outliers",
        lambda: _outlier_counts(_narrow(table, "outlier_columns"), s.outlier_columns),
    )
    return run.result()


def _profile_table(
    strata: pd.DataFrame, profiles: pd.DataFrame | None, columns: Mapping[str, str]
) -> pd.DataFrame:
    """The strata of the analysed participants with their profiles as numbered columns."""
    if profiles is None:
        raise StatsInputError("no CSA profiles were given (csa_profiles.tsv)")
    numbered = with_profile_columns(profiles, columns)
    numbered = numbered.assign(**{ID: numbered[ID].astype(str)})
    return strata.merge(numbered, on=ID, how="inner")
