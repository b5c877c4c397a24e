"""Table 1 and Table 2: counts and percentages add up, means and SDs are pandas'."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from myoflow.cohort.stats.describe import (
    describe,
    display_table1,
    display_table2,
    table1,
    table2,
)
from myoflow.synth.phenotypes import sample_cohort


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    df = sample_cohort(6104, 300, "ukbb")
    df.loc[df.index[:3], "handedness"] = None
    df.loc[df.index[3:5], "weight_kg"] = np.nan
    return df


def test_table1_counts_percentages_and_means(cohort):
    t1 = table1(cohort)
    hand = t1[(t1["variable"] == "handedness") & (t1["sex"] == "F")]
    women = cohort[cohort["sex"] == "F"]
    assert hand["count"].sum() == women["handedness"].notna().sum()
    assert hand["percent"].sum() == pytest.approx(100.0)
    right = hand.set_index("level").loc["right"]
    assert right["count"] == (women["handedness"] == "right").sum()
    weight = t1[(t1["variable"] == "weight_kg")].set_index("sex")
    assert weight.loc["all", "n"] == len(cohort) - 2
    assert weight.loc["M", "mean"] == pytest.approx(
        cohort.loc[cohort["sex"] == "M", "weight_kg"].mean()
    )
    assert weight.loc["M", "sd"] == pytest.approx(
        cohort.loc[cohort["sex"] == "M", "weight_kg"].std()
    )
    assert set(t1["sex"]) == {"F", "M", "all"}


def test_table1_text(cohort):
    text = display_table1(table1(cohort, continuous=("age",), categorical=("handedness",)))
    n_women = int((cohort["sex"] == "F").sum())
    assert f"F (n={n_women})" in text.columns
    age = text[text["variable"] == "age"].iloc[0]
    women = cohort.loc[cohort["sex"] == "F", "age"]
    assert age[f"F (n={n_women})"] == f"{women.mean():.1f} ± {women.std():.1f}"
    right = text[text["level"] == "right"].iloc[0]
    assert right[f"F (n={n_women})"].endswith(" %)")


def test_describe_and_table2_agree_with_pandas(cohort):
    summary = describe(cohort, ["vol_iliopsoas_total_ml", "imi_ml_m2"], by="sex", percentiles=(50,))
    assert list(summary["metric"]) == ["vol_iliopsoas_total_ml"] * 2 + ["imi_ml_m2"] * 2
    men = cohort.loc[cohort["sex"] == "M", "imi_ml_m2"]
    row = summary[(summary["metric"] == "imi_ml_m2") & (summary["sex"] == "M")].iloc[0]
    assert (row["n"], row["min"], row["max"]) == (len(men), men.min(), men.max())
    assert row["p50"] == pytest.approx(np.percentile(men, 50))

    t2 = table2(cohort, ["vol_iliopsoas_total_ml", "imi_ml_m2"]).set_index("metric")
    assert t2.loc["imi_ml_m2", "mean_M"] == pytest.approx(men.mean())
    assert t2.loc["imi_ml_m2", "diff"] == pytest.approx(
        men.mean() - cohort.loc[cohort["sex"] == "F", "imi_ml_m2"].mean()
    )
    assert (
        t2.loc["imi_ml_m2", "ci_low"] < t2.loc["imi_ml_m2", "diff"] < t2.loc["imi_ml_m2", "ci_high"]
    )
    text = display_table2(t2.reset_index())
    assert text["M"].iloc[1].startswith(f"{men.mean():.1f} ± {men.std():.1f} ({men.min():.1f}-")
