"""Normative tables: percentiles are numpy's, strata edges are right, profiles read both layouts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from myoflow.cohort.stats._common import StatsInputError
from myoflow.cohort.stats.groups import (
    UKBB_AGE_EDGES,
    age_groups,
    bmi_classes,
    cut,
    interval_labels,
)
from myoflow.cohort.stats.normative import (
    by_bmi_class,
    percentiles,
    profile_matrix,
    profile_percentiles,
    profiles_long,
    with_strata,
)
from myoflow.synth.phenotypes import sample_cohort


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return with_strata(sample_cohort(6105, 800, "nako"))


def test_who_classes_and_age_groups_at_their_edges():
    classes = bmi_classes([18.49, 18.5, 24.99, 25.0, 29.9, 30.0, 34.9, 35.0, 39.99, 40.0, np.nan])
    assert list(classes.astype(object)[:10]) == [
        "underweight", "normal", "normal", "overweight", "overweight",
        "obese I", "obese I", "obese II", "obese II", "obese III",
    ]  # fmt: skip
    assert pd.isna(classes[10])
    groups = age_groups([19.9, 20.0, 29.9, 30.0, 69.9, 70.0, 74.0])
    assert list(groups.astype(str)) == ["<20", "20-29", "20-29", "30-39", "60-69", "70+", "70+"]
    assert groups.ordered and list(groups.categories)[:2] == ["<20", "20-29"]
    assert interval_labels(UKBB_AGE_EDGES) == ["<45", "45-54", "55-64", "65-74", "75+"]
    assert interval_labels((18.5, 25.0)) == ["<18.5", "[18.5, 25)", ">=25"]
    with pytest.raises(StatsInputError, match="strictly increasing"):
        cut([1.0], (3.0, 2.0))


def test_percentiles_equal_numpy_per_sex_and_age_group(cohort):
    table = percentiles(cohort, ["psoas_max_csa_total_cm2", "imi_ml_m2"], q=(10, 50, 90))
    assert {"p10", "p50", "p90", "n"} <= set(table.columns)
    checked = 0
    for _, row in table.iterrows():
        values = cohort.loc[
            (cohort["sex"] == row["sex"]) & (cohort["age_group"] == row["age_group"]),
            row["metric"],
        ].to_numpy()
        assert row["n"] == len(values)
        expected = np.percentile(values, [10, 50, 90])
        assert [row["p10"], row["p50"], row["p90"]] == pytest.approx(expected, rel=1e-12)
        checked += 1
    assert checked == 2 * 2 * cohort["age_group"].nunique()
    assert table["n"].sum() == 2 * len(cohort)


def test_max_csa_by_bmi_class(cohort):
    table = by_bmi_class(cohort)
    obese = table[(table["sex"] == "M") & (table["bmi_class"] == "obese I")].iloc[0]
    values = cohort.loc[
        (cohort["sex"] == "M") & (cohort["bmi_class"] == "obese I"), "psoas_max_csa_total_cm2"
    ]
    assert obese["p50"] == pytest.approx(np.median(values))
    men = table[table["sex"] == "M"]
    assert list(men["bmi_class"]) == [
        c for c in cohort["bmi_class"].cat.categories if c in set(men["bmi_class"])
    ]


def _with_profiles(df: pd.DataFrame, layout: str) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    out = df.copy()
    for side in ("left", "right"):
        matrix = rng.gamma(4.0, 1.0, size=(len(df), 100))
        if layout == "lists":
            out[f"psoas_csa_profile_{side}"] = list(matrix)
        elif layout == "text":
            out[f"psoas_csa_profile_{side}"] = [
                "[" + ", ".join(map(str, r.tolist())) + "]" for r in matrix
            ]
        else:
            names = [f"psoas_csa_profile_{side}_{b:03d}" for b in range(100)]
            out = pd.concat([out, pd.DataFrame(matrix, index=out.index, columns=names)], axis=1)
    return out


@pytest.mark.parametrize("layout", ["lists", "text", "columns"])
def test_profile_layouts_read_the_same(cohort, layout):
    reference = profile_matrix(_with_profiles(cohort.head(20), "lists"), "psoas_csa_profile_left")
    matrix = profile_matrix(_with_profiles(cohort.head(20), layout), "psoas_csa_profile_left")
    assert matrix.shape == (20, 100)
    assert matrix == pytest.approx(reference, rel=1e-15)


def test_profile_percentiles_equal_numpy_and_long_form(cohort):
    data = _with_profiles(cohort, "columns")
    data.loc[data.index[0], "psoas_csa_profile_left_050"] = np.nan  # incomplete: left out
    table = profile_percentiles(data, by=("sex", "age_group"))
    row = table[
        (table["sex"] == "F") & (table["age_group"] == "40-49") & (table["side"] == "left")
    ].set_index("bin")
    mask = (data["sex"] == "F") & (data["age_group"] == "40-49")
    matrix = profile_matrix(data[mask], "psoas_csa_profile_left")
    matrix = matrix[~np.isnan(matrix).any(axis=1)]
    assert row["n"].iloc[0] == len(matrix)
    assert row["p90"].to_numpy() == pytest.approx(np.percentile(matrix, 90, axis=0), rel=1e-12)
    assert row["position"].iloc[[0, -1]].tolist() == pytest.approx([0.005, 0.995])
    assert isinstance(table["age_group"].dtype, pd.CategoricalDtype)

    long = profiles_long(data.head(3))
    assert len(long) == 3 * 2 * 100
    first = long[
        (long["participant_id"] == data["participant_id"].iloc[1]) & (long["side"] == "right")
    ]
    assert first["csa"].to_numpy() == pytest.approx(
        data.filter(regex=r"^psoas_csa_profile_right_\d+$").iloc[1].to_numpy()
    )


def test_profile_problems_are_named(cohort):
    data = cohort.head(3).copy()
    data["psoas_csa_profile_left"] = [[1.0, 2.0], [1.0, 2.0, 3.0], None]
    with pytest.raises(StatsInputError, match=r"lengths \[2, 3\]"):
        profile_matrix(data, "psoas_csa_profile_left")
    data["psoas_csa_profile_left"] = ["1.0;2.0", "1.0;x", None]
    with pytest.raises(StatsInputError, match="row 1 of psoas_csa_profile_left is not numbers"):
        profile_matrix(data, "psoas_csa_profile_left")
    with pytest.raises(StatsInputError, match="no profile column"):
        profile_matrix(data, "psoas_csa_profile_right")
