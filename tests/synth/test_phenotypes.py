"""Sampling of synthetic phenotypes and muscle targets: layout, reproducibility, ranges."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from myoflow.synth import psoas_profile
from myoflow.synth.phenotypes import add_derived, sample_cohort

EXPECTED_COLUMNS = [
    "participant_id", "sex", "age", "height_cm", "weight_kg", "bmi", "handedness",
    "ethnicity", "release",
    "vol_psoas_major_left_ml", "vol_psoas_major_right_ml",
    "vol_iliacus_left_ml", "vol_iliacus_right_ml",
    "vol_gluteus_maximus_left_ml", "vol_gluteus_maximus_right_ml",
    "vol_gluteus_medius_left_ml", "vol_gluteus_medius_right_ml",
    "vol_gluteus_minimus_left_ml", "vol_gluteus_minimus_right_ml",
    "psoas_max_csa_left_cm2", "psoas_max_csa_right_cm2",
    "ff_psoas_major", "ff_iliacus", "ff_gluteus_maximus", "ff_gluteus_medius",
    "ff_gluteus_minimus", "ff_muscle",
    "sat_thickness_mm", "vat_fraction", "marrow_ff", "atlas_body",
    "vol_iliopsoas_left_ml", "vol_iliopsoas_right_ml", "vol_iliopsoas_total_ml",
    "vol_gluteus_left_ml", "vol_gluteus_right_ml", "vol_gluteus_total_ml",
    "psoas_max_csa_total_cm2", "imi_ml_m2", "iliopsoas_asymmetry_pct",
]  # fmt: skip
STRING_COLUMNS = {"participant_id", "sex", "handedness", "ethnicity", "release"}
SIDES = ("left", "right")


@pytest.fixture(scope="module")
def ukbb() -> pd.DataFrame:
    return sample_cohort(11, 5000, "ukbb")


@pytest.fixture(scope="module")
def nako() -> pd.DataFrame:
    return sample_cohort(11, 5000, "nako")


def test_columns_are_named_ordered_and_typed(ukbb: pd.DataFrame) -> None:
    assert list(ukbb.columns) == EXPECTED_COLUMNS
    for column in EXPECTED_COLUMNS:
        dtype = ukbb[column].dtype
        if column in STRING_COLUMNS:
            assert pd.api.types.is_string_dtype(dtype), column
        elif column == "atlas_body":
            assert dtype == np.int64
        else:
            assert dtype == np.float64, column
    assert not ukbb.isna().any().any()


def test_ids_and_categories(ukbb: pd.DataFrame, nako: pd.DataFrame) -> None:
    assert ukbb["participant_id"].iloc[0] == "ukbb000001"
    assert ukbb["participant_id"].iloc[-1] == "ukbb005000"
    assert nako["participant_id"].iloc[41] == "nako000042"
    assert set(ukbb["sex"]) == {"F", "M"}
    assert set(ukbb["handedness"]) <= {"right", "left", "ambidextrous"}
    right = (ukbb["handedness"] == "right").mean()
    assert abs(right - 0.89) < 3 * np.sqrt(0.89 * 0.11 / len(ukbb))
    white = (ukbb["ethnicity"] == "White").mean()
    assert abs(white - 0.94) < 3 * np.sqrt(0.94 * 0.06 / len(ukbb))
    assert set(nako["ethnicity"]) == {"German", "other European", "other"}
    assert set(ukbb["atlas_body"]) == set(range(40))


def test_smaller_cohort_is_a_prefix_of_a_larger_one() -> None:
    small = sample_cohort(7, 60, "ukbb")
    large = sample_cohort(7, 100, "ukbb")
    pd.testing.assert_frame_equal(small, large.iloc[:60])
    tail = sample_cohort(7, 40, "ukbb", first_index=61)
    assert tail["participant_id"].iloc[0] == "ukbb000061"
    pd.testing.assert_frame_equal(tail, large.iloc[60:].reset_index(drop=True))


def test_seed_and_protocol_change_the_cohort() -> None:
    a = sample_cohort(7, 50, "ukbb")
    b = sample_cohort(8, 50, "ukbb")
    assert not np.allclose(a["height_cm"], b["height_cm"])
    assert not np.allclose(a["vol_iliopsoas_total_ml"], b["vol_iliopsoas_total_ml"])
    assert (a["atlas_body"] != b["atlas_body"]).any()


def test_release_assignment() -> None:
    assert set(sample_cohort(3, 30, "nako")["release"]) == {"r1"}
    releases = sample_cohort(3, 60, "nako", release_size=25)["release"]
    assert list(releases) == ["r1"] * 25 + ["r2"] * 25 + ["r3"] * 10
    # the release follows the participant index, not the row
    later = sample_cohort(3, 5, "nako", release_size=25, first_index=49)["release"]
    assert list(later) == ["r2", "r2", "r3", "r3", "r3"]
    with pytest.raises(ValueError):
        sample_cohort(3, 5, "nako", release_size=0)


def test_unknown_protocol_is_rejected() -> None:
    with pytest.raises(ValueError, match="protocol"):
        sample_cohort(1, 5, "hcp")


def test_age_and_sex_design(ukbb: pd.DataFrame, nako: pd.DataFrame) -> None:
    assert ukbb["age"].between(44.0, 82.0).all()
    assert nako["age"].between(19.0, 74.0).all()
    assert nako["age"].min() < 21.0 and nako["age"].max() > 72.0
    # four equally likely ukbb age bands
    bands = pd.cut(ukbb["age"], [44.0, 53.95, 63.95, 73.95, 82.0], include_lowest=True)
    share = bands.value_counts(normalize=True)
    assert np.all(np.abs(share - 0.25) < 3 * np.sqrt(0.25 * 0.75 / len(ukbb)))
    female = (nako["sex"] == "F").mean()
    assert abs(female - 0.44) < 3 * np.sqrt(0.44 * 0.56 / len(nako))
    female = (ukbb["sex"] == "F").mean()
    assert abs(female - 0.50) < 3 * np.sqrt(0.25 / len(ukbb))


def test_rounding_and_bmi(ukbb: pd.DataFrame) -> None:
    for column, digits in (("age", 1), ("height_cm", 1), ("weight_kg", 1), ("bmi", 2)):
        assert np.array_equal(ukbb[column], ukbb[column].round(digits)), column
    bmi = (ukbb["weight_kg"] / (ukbb["height_cm"] / 100.0) ** 2).round(2)
    assert np.array_equal(ukbb["bmi"], bmi)


def test_values_are_plausible(ukbb: pd.DataFrame, nako: pd.DataFrame) -> None:
    for df in (ukbb, nako):
        volumes = df.filter(regex=r"^(vol_|psoas_max_csa)")
        assert (volumes > 0).all().all()
        assert df.filter(like="ff_").stack().between(0.01, 0.35).all()
        assert df["sat_thickness_mm"].between(3.0, 80.0).all()
        assert df["vat_fraction"].between(0.05, 0.70).all()
        assert df["marrow_ff"].between(0.3, 0.9).all()
        assert df["height_cm"].between(130.0, 215.0).all()
        assert df["weight_kg"].between(35.0, 220.0).all()
    # women are thicker under the skin, men carry more visceral fat, marrow fat rises
    women, men = ukbb[ukbb["sex"] == "F"], ukbb[ukbb["sex"] == "M"]
    assert women["sat_thickness_mm"].mean() > men["sat_thickness_mm"].mean() + 3.0
    assert men["vat_fraction"].mean() > women["vat_fraction"].mean()
    assert ukbb["marrow_ff"].corr(ukbb["age"]) > 0.3
    assert ukbb["ff_gluteus_maximus"].corr(ukbb["bmi"]) > 0.1


def test_psoas_volume_follows_the_csa_profile_exactly(ukbb: pd.DataFrame) -> None:
    for side in SIDES:
        expected = psoas_profile.psoas_volume_ml(
            ukbb[f"psoas_max_csa_{side}_cm2"].to_numpy(), ukbb["height_cm"].to_numpy()
        )
        assert np.array_equal(ukbb[f"vol_psoas_major_{side}_ml"].to_numpy(), expected)


def test_iliacus_share_of_each_side_on_100k() -> None:
    df = sample_cohort(5, 100_000, "ukbb")
    nako = sample_cohort(5, 20_000, "nako")
    for cohort in (df, nako):
        for side in SIDES:
            share = cohort[f"vol_iliacus_{side}_ml"] / cohort[f"vol_iliopsoas_{side}_ml"]
            assert share.min() >= 0.20 and share.max() <= 0.55, side


def test_add_derived_recomputes_from_measured_columns(ukbb: pd.DataFrame) -> None:
    measured = ukbb.head(20).drop(columns=ukbb.columns[-9:]).copy()
    measured["vol_iliacus_left_ml"] += 10.0
    out = add_derived(measured)
    assert list(out.columns) == EXPECTED_COLUMNS
    assert "vol_iliopsoas_left_ml" not in measured  # the input is left alone
    np.testing.assert_allclose(
        out["vol_iliopsoas_left_ml"], ukbb["vol_iliopsoas_left_ml"].head(20) + 10.0
    )
    row = out.iloc[0]
    total = row["vol_iliopsoas_left_ml"] + row["vol_iliopsoas_right_ml"]
    assert row["vol_iliopsoas_total_ml"] == pytest.approx(total)
    assert row["imi_ml_m2"] == pytest.approx(total / (row["height_cm"] / 100.0) ** 2)
    gluteus = sum(row[f"vol_gluteus_{m}_right_ml"] for m in ("maximus", "medius", "minimus"))
    assert row["vol_gluteus_right_ml"] == pytest.approx(gluteus)
    right, left = row["vol_iliopsoas_right_ml"], row["vol_iliopsoas_left_ml"]
    assert row["iliopsoas_asymmetry_pct"] == pytest.approx(200.0 * (right - left) / total)
    csa = row["psoas_max_csa_left_cm2"] + row["psoas_max_csa_right_cm2"]
    assert row["psoas_max_csa_total_cm2"] == pytest.approx(csa)
    pd.testing.assert_frame_equal(add_derived(ukbb), ukbb)
