"""The cohort analyses without phenotypes (config ``phenotypes`` not set).

There is no sex, age, height or BMI: every analysis of :func:`myoflow.cohort.analysis.run_analysis`
that needs them is recorded as skipped with :data:`~myoflow.cohort.analysis.NEEDS_PHENOTYPES`
(Table 1, the tests and summaries by sex, handedness, regressions and GAMs that name a
phenotype, the age and BMI percentiles and profiles), and what the measurements support
on their own runs over the whole cohort:

- ``volumes``: every Table 2 and normative metric (n, mean, SD, range, percentiles);
- ``asymmetry``, ``correlations`` (pairs of measurements), ``outlier_counts``, and any
  regression or GAM that names no phenotype: without a ``sex`` column;
- ``csa_profiles_overall``: CSA along the muscle, all participants.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

from myoflow.cohort import analysis_by_sex as by_sex
from myoflow.cohort.analysis import (
    ID,
    NEEDS_PHENOTYPES,
    PHENOTYPE_COLUMNS,
    AnalysisSettings,
    _agreement,
    _present,
    _profile_table,
    _regression,
)
from myoflow.cohort.analysis_runner import Runner
from myoflow.cohort.stats import correlate, describe, normative, ttests
from myoflow.cohort.stats.cohort import AnalysisCohort


def run_without_phenotypes(
    run: Runner,
    cohort: AnalysisCohort,
    s: AnalysisSettings,
    profiles: pd.DataFrame | None,
    manual: pd.DataFrame | None,
    dice: pd.DataFrame | None,
) -> None:
    """The analyses of :func:`run_analysis` when no phenotype table is configured.

    Those that need sex, age, height or BMI are recorded as skipped
    (:data:`NEEDS_PHENOTYPES`); the rest run over the whole cohort.
    """
    profile_names = list(s.profile_columns.values())
    table = cohort.table.drop(columns=[c for c in profile_names if c in cohort.table.columns])
    overall = "all participants (no phenotypes: not by sex)"

    def measures(columns: Sequence[str]) -> list[str]:
        return [c for c in dict.fromkeys(columns) if c not in PHENOTYPE_COLUMNS]

    def volumes() -> dict[str, pd.DataFrame]:
        wanted = measures([*s.table2_metrics, *s.normative_metrics])
        metrics = _present(table, wanted, "Table 2 and normative metrics")
        summary = describe.describe(table[metrics], metrics, by=None, percentiles=s.percentiles)
        return {"volumes": summary}

    run.skip("table1", NEEDS_PHENOTYPES)
    run.skip("table1_tests", NEEDS_PHENOTYPES)
    run.skip("table2", NEEDS_PHENOTYPES)
    run("volumes", volumes, overall)
    pairs = {c for pair in ttests.ASYMMETRY_PAIRS.values() for c in pair}
    run(
        "asymmetry",
        lambda: {
            "asymmetry": ttests.asymmetry_tests(
                table[[c for c in table.columns if c in pairs]], by=None, level=s.level
            )
        },
        overall,
    )
    run.skip("handedness_anova", NEEDS_PHENOTYPES)
    run.skip("handedness_ttest", NEEDS_PHENOTYPES)
    correlations = [p for p in s.correlations if not set(p) & PHENOTYPE_COLUMNS]
    if correlations:
        columns = [c for pair in correlations for c in pair]
        left_out = len(s.correlations) - len(correlations)
        run(
            "correlations",
            lambda: {
                "correlations": correlate.correlations(
                    table[[c for c in dict.fromkeys(columns) if c in table.columns]],
                    correlations,
                    by=None,
                    level=s.level,
                )
            },
            overall + (f"; {left_out} pair(s) with phenotypes left out" if left_out else ""),
        )
    else:
        run.skip("correlations", NEEDS_PHENOTYPES)
    for spec in s.regressions:
        name = f"regression {spec.name}"
        named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", spec.formula))
        if named & PHENOTYPE_COLUMNS or spec.predict_over in PHENOTYPE_COLUMNS:
            run.skip(name, NEEDS_PHENOTYPES)
        else:
            run(name, lambda spec=spec: _regression(table, spec, s, by=None), overall)
    if {s.gam_x, *s.gam_metrics} & PHENOTYPE_COLUMNS:
        run.skip("gam", NEEDS_PHENOTYPES)
    else:

        def gams() -> dict[str, pd.DataFrame]:
            metrics = _present(table, s.gam_metrics, "GAM metrics")
            return by_sex.gams(
                table[[s.gam_x, *metrics]],
                metrics,
                s.gam_x,
                k=s.gam_k,
                method=s.gam_method,
                minimum=s.minimum,
                level=s.level,
                by_sex=False,
            )

        run("gam", gams, overall)
    for name in ("percentiles_age", "percentiles_bmi", "csa_profiles_age", "csa_profiles_bmi"):
        run.skip(name, NEEDS_PHENOTYPES)
    run(
        "csa_profiles_overall",
        lambda: {
            "csa_profiles_overall": normative.profile_percentiles(
                _profile_table(table[[ID]], profiles, s.profile_columns),
                s.profile_columns,
                None,
                s.percentiles,
            )
        },
        overall,
    )
    if manual is not None or dice is not None:
        run("agreement", lambda: _agreement(table, manual, dice, s.level, s.minimum.agreement))
    run(
        "outliers",
        lambda: {
            "outlier_counts": by_sex.outlier_counts(
                table, s.outlier_columns, s.outlier_min_n, by_sex=False
            )
        },
        overall,
    )
