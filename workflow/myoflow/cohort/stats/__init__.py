"""Cohort statistics: tidy tables in, numbers out (figures live in :mod:`myoflow.cohort.plots`).

Modules, in the order an analysis uses them:

- :mod:`~myoflow.cohort.stats.cohort`: the analysis table from sheet, phenotypes, metrics and QC,
  the exclusions table (stage, reason) and the accounting check.
- :mod:`~myoflow.cohort.stats.groups`: age groups and WHO BMI classes.
- :mod:`~myoflow.cohort.stats.describe`: Table 1 (demographics) and Table 2 (metrics with tests).
- :mod:`~myoflow.cohort.stats.ttests`: Welch, paired (asymmetry) and one-way ANOVA (handedness).
- :mod:`~myoflow.cohort.stats.correlate`: Pearson r with Fisher-z intervals.
- :mod:`~myoflow.cohort.stats.regress`: formula OLS by group, with prediction bands.
- :mod:`~myoflow.cohort.stats.gam`: mgcv-equivalent cubic regression spline GAMs on age.
- :mod:`~myoflow.cohort.stats.normative`: percentiles by age group / BMI class, CSA profiles.
- :mod:`~myoflow.cohort.stats.agreement`: Bland-Altman and Dice summaries.
- :mod:`~myoflow.cohort.stats.sampling`: stratified, reference-weighted, seeded sampling.

Every function takes a DataFrame with one row per participant and returns a DataFrame
or a frozen results object of DataFrames; none reads or writes files.
"""

from myoflow.cohort.stats._common import StatsInputError
from myoflow.cohort.stats.agreement import BlandAltman, bland_altman, dice_summary
from myoflow.cohort.stats.cohort import (
    AccountingError,
    AnalysisCohort,
    build_analysis_table,
    check_accounting,
)
from myoflow.cohort.stats.correlate import correlations, pearson
from myoflow.cohort.stats.describe import table1, table2
from myoflow.cohort.stats.gam import GamResult, fit_gam
from myoflow.cohort.stats.groups import age_groups, bmi_classes
from myoflow.cohort.stats.normative import (
    by_bmi_class,
    percentiles,
    profile_percentiles,
    profiles_long,
    with_strata,
)
from myoflow.cohort.stats.regress import RegressionResult, ols
from myoflow.cohort.stats.sampling import Sample, SamplingError, stratified_sample
from myoflow.cohort.stats.ttests import asymmetry_tests, one_way_anova, paired_ttest, welch_ttests

__all__ = [
    "AccountingError",
    "AnalysisCohort",
    "BlandAltman",
    "GamResult",
    "RegressionResult",
    "Sample",
    "SamplingError",
    "StatsInputError",
    "age_groups",
    "asymmetry_tests",
    "bland_altman",
    "bmi_classes",
    "build_analysis_table",
    "by_bmi_class",
    "check_accounting",
    "correlations",
    "dice_summary",
    "fit_gam",
    "ols",
    "one_way_anova",
    "paired_ttest",
    "pearson",
    "percentiles",
    "profile_percentiles",
    "profiles_long",
    "stratified_sample",
    "table1",
    "table2",
    "welch_ttests",
    "with_strata",
]
