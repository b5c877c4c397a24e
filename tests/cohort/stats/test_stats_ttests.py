"""t-tests and ANOVA: the numbers are scipy's, on the right subsets, with missing values dropped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from myoflow.cohort.stats._common import StatsInputError
from myoflow.cohort.stats.ttests import (
    asymmetry_tests,
    one_way_anova,
    paired_ttest,
    welch_ttest,
    welch_ttests,
)
from myoflow.synth.phenotypes import sample_cohort


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    df = sample_cohort(6101, 600, "ukbb")
    df.loc[df.index[:7], "vol_iliopsoas_total_ml"] = np.nan  # missing values must be dropped
    return df


def test_welch_matches_scipy_per_metric(cohort):
    table = welch_ttests(cohort, ["vol_iliopsoas_total_ml", "bmi"], "sex", "M", "F", level=0.9)
    for _, row in table.iterrows():
        men = cohort.loc[cohort["sex"] == "M", row["metric"]].dropna()
        women = cohort.loc[cohort["sex"] == "F", row["metric"]].dropna()
        expected = stats.ttest_ind(men, women, equal_var=False)
        ci = expected.confidence_interval(0.9)
        assert row["n_a"] == len(men) and row["n_b"] == len(women)
        assert row["t"] == pytest.approx(expected.statistic, rel=1e-12)
        assert row["df"] == pytest.approx(expected.df, rel=1e-12)
        assert row["p"] == pytest.approx(expected.pvalue, rel=1e-9)
        assert row["diff"] == pytest.approx(men.mean() - women.mean(), rel=1e-12)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert table["n_a"].iloc[0] + table["n_b"].iloc[0] == 593


def test_welch_interval_by_hand():
    a, b = np.array([1.0, 2.0, 4.0, 7.0]), np.array([2.0, 2.5, 3.0])
    va, vb = a.var(ddof=1) / 4, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    result = welch_ttest(a, b)
    assert result["df"] == pytest.approx(df)
    assert result["diff"] == pytest.approx(3.5 - 2.5)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((1.0 - half, 1.0 + half))


def test_paired_matches_scipy_and_asymmetry_index(cohort):
    table = asymmetry_tests(cohort, by="sex").set_index(["structure", "sex"])
    women = cohort[cohort["sex"] == "F"]
    left, right = women["vol_iliopsoas_left_ml"], women["vol_iliopsoas_right_ml"]
    expected = stats.ttest_rel(right, left)
    row = table.loc[("iliopsoas", "F")]
    assert row["t"] == pytest.approx(expected.statistic, rel=1e-12)
    assert row["p"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert row["diff"] == pytest.approx((right - left).mean(), rel=1e-12)
    ci = expected.confidence_interval()
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert row["asym_pct_mean"] == pytest.approx(women["iliopsoas_asymmetry_pct"].mean(), rel=1e-10)
    assert set(table.index.get_level_values("structure")) >= {"iliopsoas", "gluteus", "iliacus"}


def test_paired_drops_incomplete_pairs():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    y = np.array([1.5, 2.0, 3.0, np.nan, 6.0])
    result = paired_ttest(x, y)
    assert result["n"] == 3
    assert result["diff"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)


def test_anova_matches_scipy_and_skips_tiny_levels(cohort):
    result = one_way_anova(cohort, "iliopsoas_asymmetry_pct", "handedness", min_n=20).iloc[0]
    kept = [
        cohort.loc[cohort["handedness"] == h, "iliopsoas_asymmetry_pct"] for h in ("left", "right")
    ]
    expected = stats.f_oneway(*kept)
    assert result["levels"] == "left,right"  # fewer than 20 ambidextrous participants
    assert result["f"] == pytest.approx(expected.statistic, rel=1e-12)
    assert result["p"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert (result["df_between"], result["df_within"]) == (1, sum(map(len, kept)) - 2)


def test_too_few_values_are_refused():
    with pytest.raises(StatsInputError, match="2\\+ values per group"):
        welch_ttest(np.array([1.0]), np.array([1.0, 2.0]))
    frame = pd.DataFrame({"v": [1.0, 2.0, 3.0], "g": ["a", "a", "b"]})
    with pytest.raises(StatsInputError, match="needs 2\\+ levels"):
        one_way_anova(frame, "v", "g")
