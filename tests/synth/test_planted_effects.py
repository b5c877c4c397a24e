"""The manifest states the true population values, and a cohort recovers them.

Tolerances are 3 standard errors on a 2,000-participant cohort (mean: SD/sqrt(n); SD:
SD/sqrt(2(n-1)); correlation: Fisher z with SE 1/sqrt(n-3); slopes: OLS standard errors).
The seeds used here are used nowhere else, so these are genuine out-of-sample checks.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from myoflow.synth import effects
from myoflow.synth.phenotypes import sample_cohort
from myoflow.synth.planted import CORRELATIONS, VARIABLES, cohort_statistics, planted_effects
from myoflow.synth.planted import _manifest as manifest_cache

N = 2000
SEXES = ("F", "M")


@pytest.fixture(scope="module")
def ukbb() -> pd.DataFrame:
    return sample_cohort(2024, N, "ukbb")


@pytest.fixture(scope="module")
def manifest() -> dict:
    return planted_effects("ukbb")


def _z_mean(x: pd.Series, mean: float, sd: float) -> float:
    return (x.mean() - mean) / (sd / np.sqrt(len(x)))


def _z_sd(x: pd.Series, sd: float) -> float:
    return (x.std() - sd) / (sd / np.sqrt(2 * (len(x) - 1)))


def _z_corr(r: float, rho: float, n: int) -> float:
    return (np.arctanh(r) - np.arctanh(rho)) * np.sqrt(n - 3)


def _ols(y: pd.Series, columns: dict[str, np.ndarray]):
    design = sm.add_constant(pd.DataFrame(columns, index=y.index))
    return sm.OLS(y, design).fit()


def test_manifest_is_json_and_complete() -> None:
    manifest_cache.cache_clear()
    manifest = planted_effects("nako")
    assert json.loads(json.dumps(manifest)) == manifest
    for sex in SEXES:
        entry = manifest["by_sex"][sex]
        assert list(entry["mean"]) == list(VARIABLES) == list(entry["sd"])
        assert list(entry["r"]) == [f"{a}|{b}" for a, b in CORRELATIONS]
    assert set(manifest["imi_age_slope_ml_m2_per_year"]) == {
        "F",
        "M_before_60",
        "M_after_60",
        "knot_age",
    }
    assert isinstance(manifest["description"], str) and len(manifest["description"]) > 200
    manifest["by_sex"]["F"]["mean"]["bmi"] = -1.0  # callers get their own copy
    assert planted_effects("nako")["by_sex"]["F"]["mean"]["bmi"] > 0


def test_ukbb_manifest_states_the_published_values(manifest: dict) -> None:
    published = {
        "F": {"vol_iliopsoas_total_ml": (542, 72), "vol_gluteus_total_ml": (2390, 350)},
        "M": {"vol_iliopsoas_total_ml": (815, 125), "vol_gluteus_total_ml": (3380, 500)},
    }
    for sex, values in published.items():
        for variable, (mean, sd) in values.items():
            assert manifest["by_sex"][sex]["mean"][variable] == pytest.approx(mean)
            assert manifest["by_sex"][sex]["sd"][variable] == pytest.approx(sd)
    for protocol in ("ukbb", "nako"):
        csa = planted_effects(protocol)["by_sex"]
        assert csa["F"]["mean"]["psoas_max_csa_total_cm2"] == pytest.approx(24.5)
        assert csa["M"]["mean"]["psoas_max_csa_total_cm2"] == pytest.approx(37.9)
    slopes = manifest["imi_age_slope_ml_m2_per_year"]
    assert slopes["M_after_60"] < slopes["M_before_60"] < 0 and slopes["F"] < 0
    assert manifest["iliopsoas_asymmetry_pct"]["mean"] == pytest.approx(2.0)


@pytest.mark.parametrize("sex", SEXES)
@pytest.mark.parametrize("variable", VARIABLES)
def test_means_and_sds_are_recovered(ukbb: pd.DataFrame, manifest: dict, sex, variable) -> None:
    x = ukbb.loc[ukbb["sex"] == sex, variable]
    mean = manifest["by_sex"][sex]["mean"][variable]
    sd = manifest["by_sex"][sex]["sd"][variable]
    assert abs(_z_mean(x, mean, sd)) < 3.0, (x.mean(), mean)
    assert abs(_z_sd(x, sd)) < 3.0, (x.std(), sd)


@pytest.mark.parametrize("sex", SEXES)
@pytest.mark.parametrize(("a", "b"), CORRELATIONS)
def test_correlations_are_recovered(ukbb: pd.DataFrame, manifest: dict, sex, a, b) -> None:
    g = ukbb[ukbb["sex"] == sex]
    rho = manifest["by_sex"][sex]["r"][f"{a}|{b}"]
    assert abs(_z_corr(g[a].corr(g[b]), rho, len(g))) < 3.0, (g[a].corr(g[b]), rho)


def test_imi_age_slopes_are_recovered(ukbb: pd.DataFrame, manifest: dict) -> None:
    planted = manifest["imi_age_slope_ml_m2_per_year"]
    women = ukbb[ukbb["sex"] == "F"]
    fit = _ols(women["imi_ml_m2"], {"age": women["age"].to_numpy()})
    assert abs(fit.params["age"] - planted["F"]) < 3 * fit.bse["age"]
    men = ukbb[ukbb["sex"] == "M"]
    knot = planted["knot_age"]
    age = men["age"].to_numpy()
    # hinge parametrisation: the two coefficients are the slopes before and after the knot
    fit = _ols(
        men["imi_ml_m2"],
        {"before": np.minimum(age - knot, 0.0), "after": np.maximum(age - knot, 0.0)},
    )
    assert abs(fit.params["before"] - planted["M_before_60"]) < 3 * fit.bse["before"]
    assert abs(fit.params["after"] - planted["M_after_60"]) < 3 * fit.bse["after"]
    # the bend itself is large enough to be seen in a cohort of this size
    bend = fit.t_test("after - before = 0")
    assert float(bend.effect[0]) < 0 and float(bend.pvalue) < 0.01


def test_asymmetry_is_recovered(ukbb: pd.DataFrame, manifest: dict) -> None:
    planted = manifest["iliopsoas_asymmetry_pct"]
    x = ukbb["iliopsoas_asymmetry_pct"]
    assert abs(_z_mean(x, planted["mean"], planted["sd"])) < 3.0
    assert abs(_z_sd(x, planted["sd"])) < 3.0


def test_fat_fraction_age_effect_is_recovered(ukbb: pd.DataFrame, manifest: dict) -> None:
    planted = manifest["ff_age_slope"]["log_ff_per_year"]
    for muscle in ("ff_psoas_major", "ff_gluteus_maximus", "ff_muscle"):
        fit = _ols(
            np.log(ukbb[muscle]),
            {
                "age": ukbb["age"].to_numpy(),
                "female": (ukbb["sex"] == "F").to_numpy(float),
                "bmi": ukbb["bmi"].to_numpy(),
            },
        )
        assert abs(fit.params["age"] - planted) < 3 * fit.bse["age"], muscle
        for sex in SEXES:
            g = ukbb[ukbb["sex"] == sex]
            slope = _ols(g[muscle], {"age": g["age"].to_numpy()})
            expected = manifest["by_sex"][sex]["ff_age_slope"][muscle]
            assert abs(slope.params["age"] - expected) < 3 * slope.bse["age"], (muscle, sex)


def test_nako_csa_and_gluteus_means_are_recovered() -> None:
    nako = sample_cohort(2025, N, "nako")
    manifest = planted_effects("nako")
    for sex in SEXES:
        g = nako[nako["sex"] == sex]
        for variable in ("psoas_max_csa_total_cm2", "vol_gluteus_total_ml"):
            mean = manifest["by_sex"][sex]["mean"][variable]
            sd = manifest["by_sex"][sex]["sd"][variable]
            assert abs(_z_mean(g[variable], mean, sd)) < 3.0, (sex, variable)


@pytest.mark.parametrize("protocol", ["ukbb", "nako"])
def test_manifest_agrees_with_a_fresh_200k_draw(protocol: str) -> None:
    """Analytic and stored Monte Carlo values both match an independent large cohort.

    Tolerance: 4 SE of the 200k estimate, widened by sqrt(1.5) because the stored Monte
    Carlo values (400k) carry their own sampling error.
    """
    df = sample_cohort(777, 200_000, protocol)
    observed = cohort_statistics(df)
    manifest = planted_effects(protocol)
    width = 4.0 * np.sqrt(1.5)
    for sex in SEXES:
        g = df[df["sex"] == sex]
        n = len(g)
        planted, seen = manifest["by_sex"][sex], observed[sex]
        for variable in VARIABLES:
            sd = planted["sd"][variable]
            assert abs(seen["mean"][variable] - planted["mean"][variable]) < width * sd / np.sqrt(n)
            assert abs(seen["sd"][variable] - sd) < width * sd / np.sqrt(2 * (n - 1)), variable
        for key, rho in planted["r"].items():
            assert abs(np.arctanh(seen["r"][key]) - np.arctanh(rho)) < width / np.sqrt(n - 3)
        for muscle, slope in planted["ff_age_slope"].items():
            fit = _ols(g[muscle], {"age": g["age"].to_numpy()})
            assert abs(fit.params["age"] - slope) < width * fit.bse["age"], muscle
        age = g["age"].to_numpy() - effects.KNOT_AGE
        fit = _ols(
            g["imi_ml_m2"], {"before_60": np.minimum(age, 0), "after_60": np.maximum(age, 0)}
        )
        for piece, slope in planted["imi_age_slope"].items():
            assert abs(fit.params[piece] - slope) < width * fit.bse[piece], piece
            assert seen["imi_age_slope"][piece] == pytest.approx(fit.params[piece])
