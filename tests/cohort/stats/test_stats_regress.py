"""Formula regressions by group: coefficients, fit and prediction bands against numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from myoflow.cohort.stats._common import StatsInputError
from myoflow.cohort.stats.regress import ols
from myoflow.synth.phenotypes import sample_cohort


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return sample_cohort(6103, 400, "ukbb")


def _lstsq(x: np.ndarray, y: np.ndarray):
    design = np.column_stack([np.ones(len(x)), x])
    beta, rss, *_ = np.linalg.lstsq(design, y, rcond=None)
    return design, beta, float(rss[0])


def test_coefficients_r2_and_intervals_equal_least_squares(cohort):
    result = ols(cohort, "vol_iliopsoas_total_ml ~ height_cm + bmi", by="sex", level=0.9)
    for sex in ("F", "M"):
        part = cohort[cohort["sex"] == sex]
        y = part["vol_iliopsoas_total_ml"].to_numpy()
        design, beta, rss = _lstsq(part[["height_cm", "bmi"]].to_numpy(), y)
        n, p = design.shape
        cov = rss / (n - p) * np.linalg.inv(design.T @ design)
        se = np.sqrt(np.diag(cov))
        coef = result.coefficients[result.coefficients["sex"] == sex].set_index("term")
        assert list(coef.index) == ["Intercept", "height_cm", "bmi"]
        assert coef["estimate"].to_numpy() == pytest.approx(beta, rel=1e-9)
        assert coef["se"].to_numpy() == pytest.approx(se, rel=1e-9)
        half = stats.t.ppf(0.95, n - p) * se
        assert coef["ci_low"].to_numpy() == pytest.approx(beta - half, rel=1e-9)
        model = result.models.set_index("sex").loc[sex]
        assert model["n"] == n
        assert model["r2"] == pytest.approx(1 - rss / np.sum((y - y.mean()) ** 2), rel=1e-12)


def test_prediction_line_spans_each_group_and_has_a_band(cohort):
    result = ols(cohort, "vol_iliopsoas_total_ml ~ height_cm", predict_over="height_cm", points=7)
    for sex in ("F", "M"):
        part = cohort[cohort["sex"] == sex]
        line = result.predictions[result.predictions["sex"] == sex]
        assert len(line) == 7
        assert line["height_cm"].min() == part["height_cm"].min()
        assert line["height_cm"].max() == part["height_cm"].max()
        beta = _lstsq(part["height_cm"].to_numpy(), part["vol_iliopsoas_total_ml"].to_numpy())[1]
        expected = beta[0] + beta[1] * line["height_cm"].to_numpy()
        assert line["fit"].to_numpy() == pytest.approx(expected, rel=1e-9)
        assert np.all(line["ci_low"] < line["fit"]) and np.all(line["fit"] < line["ci_high"])


def test_ungrouped_grid_and_bad_formulas(cohort):
    grid = pd.DataFrame({"age": [50.0, 70.0], "bmi": [25.0, 25.0]})
    result = ols(cohort, "imi_ml_m2 ~ age + bmi", by=None, grid=grid)
    assert "sex" not in result.coefficients and len(result.predictions) == 2
    with pytest.raises(StatsInputError, match="cannot fit"):
        ols(cohort, "imi_ml_m2 ~ no_such_column")
    with pytest.raises(StatsInputError, match="pass a grid with every covariate"):
        ols(cohort, "imi_ml_m2 ~ age + bmi", predict_over="age")
