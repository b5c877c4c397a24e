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
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from myoflow.cohort import analysis_by_sex as by_sex
from myoflow.cohort import papers
from myoflow.cohort.analysis_runner import AnalysisResult, Runner
from myoflow.cohort.analysis_tables import ID, with_profile_columns
from myoflow.cohort.estimable import AnalysisWarning, MinimumSizes
from myoflow.cohort.stats import agreement, correlate, describe, normative, ttests
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
    minimum: MinimumSizes = field(default_factory=MinimumSizes)
    outlier_min_n: int = 5

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
            minimum=MinimumSizes.from_config(stats.get("min_group_size")),
            outlier_min_n=int(
                (stats.get("outliers", {}) or {}).get("min_group_size", d.outlier_min_n)
            ),
        )


# ---------------------------------------------------------------- the analyses


MIN_PARTICIPANTS = 3
EXCLUSIONS_LISTED = 50
"""Excluded participants listed by name in ``exclusion_list`` (the first ones)."""
"""Fewest participants in the analysis table for the cohort statistics to run at all."""


def _present(table: pd.DataFrame, columns: Sequence[str], what: str) -> list[str]:
    found = [c for c in columns if c in table.columns]
    if not found:
        raise StatsInputError(f"none of the {what} {list(columns)} is in the analysis table")
    return found


def _regression(
    table: pd.DataFrame,
    spec: Regression,
    s: AnalysisSettings,
    by: str | None = SEX,
) -> dict[str, pd.DataFrame]:
    """One configured regression's tables, each row labelled with its name and formula."""
    columns = _formula_columns(table, spec.formula)
    data = _narrow(table, *columns) if by else table[columns]
    out = by_sex.regression(
        data,
        spec.formula,
        columns,
        spec.predict_over,
        s.minimum,
        s.level,
        by_sex=by is not None,
    )
    labels = {"regression": spec.name, "formula": spec.formula}
    out = {name: frame.assign(**labels) for name, frame in out.items()}
    if "regression_predictions" in out:
        out["regression_predictions"] = out["regression_predictions"].assign(x=spec.predict_over)
    return {name: frame[[*labels, *_after_labels(frame, labels)]] for name, frame in out.items()}


def _after_labels(frame: pd.DataFrame, labels: Mapping[str, str]) -> list[str]:
    """``frame``'s columns other than the label columns, in order."""
    return [c for c in frame.columns if c not in labels]


def _unit(metric: str) -> str:
    """The unit a metric's name ends in (``_ml`` -> ml, ``_cm2`` -> cm²)."""
    for suffix, unit in (("_ml_m2", "ml/m²"), ("_ml", "ml"), ("_cm2", "cm²"), ("_pct", "%")):
        if metric.endswith(suffix):
            return unit
    return ""


def _agreement(
    table: pd.DataFrame,
    manual: pd.DataFrame | None,
    dice: pd.DataFrame | None,
    level: float,
    minimum: int = 3,
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
        counts = joined[[c for pair in pairs.values() for c in pair]].notna()
        enough = {
            m: pair
            for m, pair in pairs.items()
            if int(counts[list(pair)].all(axis=1).sum()) >= max(minimum, 3)
        }
        if not enough:
            raise StatsInputError(
                f"fewer than {max(minimum, 3)} participants with manual and automatic values"
            )
        absolute = agreement.bland_altman(joined, enough, level=level)
        relative = agreement.bland_altman(joined, enough, level=level, relative=True)
        units = {m: _unit(m) for m in enough}
        out |= {
            "bland_altman": pd.concat(
                [
                    absolute.summary.assign(unit=absolute.summary["measure"].map(units)),
                    relative.summary.assign(unit="%"),
                ],
                ignore_index=True,
            ),
            "bland_altman_points": pd.concat(
                [
                    absolute.points.assign(unit=absolute.points["measure"].map(units)),
                    relative.points.assign(unit="%"),
                ],
                ignore_index=True,
            ),
        }
    if dice is not None:
        by = [c for c in ("structure", "side") if c in dice.columns]
        out["dice"] = agreement.dice_summary(dice, by=by)
    return out


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
    manifest: Mapping[str, Any] | None = None,
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
        manifest: a synthetic cohort's ``manifest.json``: its planted values join the
            ``papers`` table and its grid the ``synthetic_cohort`` table.

    Returns:
        The tables and the ``analyses`` record; the latter is also ``tables["analyses"]``.
    """
    s = settings if settings is not None else AnalysisSettings()
    run = Runner()
    run(
        "flow",
        lambda: {
            "flow": cohort.flow(),
            "exclusion_counts": cohort.exclusion_counts(),
            # who, for a cohort small enough to list (the report shows it)
            "exclusion_list": cohort.exclusions.head(EXCLUSIONS_LISTED)[
                [
                    c
                    for c in ("participant_id", "stage", "reason", "detail")
                    if c in cohort.exclusions
                ]
            ],
        },
    )
    if manifest:
        run("synthetic_cohort", lambda: {"synthetic_cohort": papers.synthetic_cohort(manifest)})
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
        by_sex.with_fat_fraction_percent(
            cohort.table.drop(columns=[c for c in profile_names if c in cohort.table.columns])
        ),
        age_edges=s.age_edges,
        age_labels=s.age_labels,
        bmi_edges=s.bmi_edges,
        bmi_labels=s.bmi_labels,
    )
    least = s.minimum

    def table1() -> dict[str, pd.DataFrame]:
        continuous = [c for c in s.table1_continuous if c in table.columns]
        categorical = [c for c in s.table1_categorical if c in table.columns]
        data = _narrow(table, *continuous, *categorical)
        return by_sex.table1(data, continuous, categorical, least)

    def table1_tests() -> dict[str, pd.DataFrame]:
        continuous = _present(table, s.table1_continuous, "Table 1 continuous variables")
        data = _narrow(table, *continuous)
        return {"table1_tests": by_sex.welch_by_sex(data, continuous, least, s.level)}

    def table2() -> dict[str, pd.DataFrame]:
        metrics = _present(table, s.table2_metrics, "Table 2 metrics")
        return by_sex.table2(_narrow(table, *metrics), metrics, least, s.level)

    def asymmetry() -> dict[str, pd.DataFrame]:
        pairs = [c for pair in ttests.ASYMMETRY_PAIRS.values() for c in pair]
        return {"asymmetry": by_sex.asymmetry(_narrow(table, *pairs), least, s.level)}

    run("table1", table1)
    run("table1_tests", table1_tests)
    run("table2", table2)
    run("asymmetry", asymmetry)
    handedness = _narrow(table, s.asymmetry_metric, "handedness")
    run(
        "handedness_anova",
        lambda: {
            "handedness_anova": by_sex.handedness_anova(handedness, s.asymmetry_metric, least)
        },
    )
    run(
        "handedness_ttest",
        lambda: {
            "handedness_ttest": by_sex.handedness_ttest(
                handedness, s.asymmetry_metric, least, s.level
            )
        },
    )
    pairs = [c for pair in s.correlations for c in pair]
    run(
        "correlations",
        lambda: {
            "correlations": by_sex.correlations(
                _narrow(table, *pairs), s.correlations, least, s.level
            )
        },
    )
    for spec in s.regressions:
        run(f"regression {spec.name}", lambda spec=spec: _regression(table, spec, s))
    run(
        "gam",
        lambda: by_sex.gams(
            _narrow(table, s.gam_x, *_present(table, s.gam_metrics, "GAM metrics")),
            _present(table, s.gam_metrics, "GAM metrics"),
            s.gam_x,
            k=s.gam_k,
            method=s.gam_method,
            minimum=least,
            level=s.level,
        ),
    )
    for name, group, metrics, what in (
        ("percentiles_age", "age_group", s.normative_metrics, "normative metrics"),
        ("percentiles_bmi", "bmi_class", s.bmi_class_metrics, "BMI class metrics"),
    ):
        run(
            name,
            lambda name=name, group=group, metrics=metrics, what=what: {
                name: by_sex.percentiles(
                    _narrow(table, group, *_present(table, metrics, what)),
                    _present(table, metrics, what),
                    (SEX, group),
                    s.percentiles,
                    least.percentiles,
                )
            },
        )
    strata = _narrow(table, ID, "age_group", "bmi_class")
    joined: list[pd.DataFrame] = []  # parsed once, for both groupings

    def profile_table() -> pd.DataFrame:
        if not joined:
            joined.append(_profile_table(strata, profiles, s.profile_columns))
        return joined[0]

    def csa_profiles(name: str, group: str) -> dict[str, pd.DataFrame]:
        summary = normative.profile_percentiles(
            profile_table(), s.profile_columns, (SEX, group), s.percentiles
        )
        kept, dropped = by_sex.drop_small_cells(summary, (SEX, group), least.profiles)
        if dropped:
            warnings.warn(f"cells left out: {dropped}", AnalysisWarning, stacklevel=1)
        return {name: kept}

    for name, group in (("csa_profiles_age", "age_group"), ("csa_profiles_bmi", "bmi_class")):
        run(name, lambda group=group, name=name: csa_profiles(name, group))
    if manual is not None or dice is not None:
        run("agreement", lambda: _agreement(table, manual, dice, s.level, least.agreement))
    run(
        "outliers",
        lambda: {
            "outlier_counts": by_sex.outlier_counts(
                _narrow(table, "outlier_columns"), s.outlier_columns, s.outlier_min_n
            )
        },
    )
    run("papers", lambda: {"papers": papers.papers_table(run.tables, manifest, run.skipped())})
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


__all__ = ["AnalysisResult", "AnalysisSettings", "Regression", "run_analysis"]
