"""Pearson correlations: scipy's numbers per sex, Fisher-z intervals checked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from myoflow.cohort.stats._common import StatsInputError
from myoflow.cohort.stats.correlate import UKBB_PAIRS, correlations, pearson
from myoflow.synth.phenotypes import sample_cohort


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    df = sample_cohort(6102, 500, "ukbb")
    df.loc[df.index[:5], "bmi"] = np.nan
    return df


def test_correlations_equal_scipy_per_sex(cohort):
    table = correlations(cohort, UKBB_PAIRS, by="sex")
    assert len(table) == 2 * len(UKBB_PAIRS)
    for _, row in table.iterrows():
        part = cohort[cohort["sex"] == row["sex"]][[row["x"], row["y"]]].dropna()
        expected = stats.pearsonr(part[row["x"]], part[row["y"]])
        ci = expected.confidence_interval(0.95)
        assert row["n"] == len(part)
        assert row["r"] == pytest.approx(expected.statistic, rel=1e-12)
        assert row["p"] == pytest.approx(expected.pvalue, rel=1e-9)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
    imi_bmi = table[(table["x"] == "imi_ml_m2") & (table["y"] == "bmi")]
    assert imi_bmi["n"].sum() == 495


def test_fisher_interval_by_hand():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(50)
    y = 0.5 * x + rng.standard_normal(50)
    result = pearson(x, y, level=0.9)
    r = np.corrcoef(x, y)[0, 1]
    half = stats.norm.ppf(0.95) / np.sqrt(47)
    assert result["r"] == pytest.approx(r)
    assert result["ci_low"] == pytest.approx(np.tanh(np.arctanh(r) - half))
    assert result["ci_high"] == pytest.approx(np.tanh(np.arctanh(r) + half))


def test_ungrouped_and_too_short():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0, 5.0], "b": [2.0, 1.0, 4.0, 3.0, 5.0]})
    table = correlations(frame, [("a", "b")], by=None)
    assert list(table.columns) == ["x", "y", "n", "r", "ci_low", "ci_high", "p"]
    assert table["r"].iloc[0] == pytest.approx(0.8)
    with pytest.raises(StatsInputError, match="4\\+ complete pairs"):
        pearson(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]))
