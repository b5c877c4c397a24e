"""Linear regressions by group from a formula (statsmodels' formula API).

``ols`` returns coefficient and model tables, and optionally the fitted line with its
confidence band on a grid, so a figure draws the line without refitting anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from myoflow.cohort.stats._common import By, StatsInputError, split


@dataclass(frozen=True)
class RegressionResult:
    """Coefficients, model fit and predictions of one formula fitted per group.

    Attributes:
        formula: the statsmodels formula, e.g. ``"vol_iliopsoas_total_ml ~ height_cm"``.
        coefficients: group columns, term, estimate, se, ci_low, ci_high, t, p.
        models: group columns, n, r2, r2_adj, df_resid, rmse, f, f_p.
        predictions: group columns, grid columns, fit, ci_low, ci_high (mean response);
            empty when no grid was asked for.
    """

    formula: str
    coefficients: pd.DataFrame
    models: pd.DataFrame
    predictions: pd.DataFrame
    level: float


def _grid_for(rows: pd.DataFrame, grid: pd.DataFrame | None, over: str | None, points: int):
    if grid is not None:
        return grid.reset_index(drop=True)
    if over is None:
        return None
    x = pd.to_numeric(rows[over], errors="coerce").dropna()
    return pd.DataFrame({over: np.linspace(x.min(), x.max(), points)})


def ols(
    df: pd.DataFrame,
    formula: str,
    *,
    by: By = "sex",
    grid: pd.DataFrame | None = None,
    predict_over: str | None = None,
    points: int = 50,
    level: float = 0.95,
) -> RegressionResult:
    """Fit ``formula`` by ordinary least squares in each group of ``by``.

    Rows with a missing value in any formula variable are dropped (statsmodels' default).

    Args:
        df: one row per participant.
        formula: statsmodels/patsy formula, e.g. ``"imi_ml_m2 ~ age + bmi"``.
        by: grouping column(s); ``None`` fits one model.
        grid: covariate values to predict the mean response at (same grid for every group).
        predict_over: instead of ``grid``, ``points`` values of this column spanning each
            group's observed range (for a one-covariate formula: the regression line).
        level: confidence level of intervals and bands.

    Raises:
        StatsInputError: the formula cannot be fitted or the grid lacks its variables.
    """
    coefficients, models, predictions = [], [], []
    for key, rows in split(df, by):
        try:
            fit = smf.ols(formula, data=rows).fit()
        except Exception as err:  # patsy and statsmodels raise many types for bad formulas
            raise StatsInputError(f"cannot fit {formula!r} in group {key or 'all'}: {err}") from err
        ci = fit.conf_int(1.0 - level)
        coefficients.append(
            pd.DataFrame(
                {
                    **key,
                    "term": fit.params.index,
                    "estimate": fit.params.to_numpy(),
                    "se": fit.bse.to_numpy(),
                    "ci_low": ci[0].to_numpy(),
                    "ci_high": ci[1].to_numpy(),
                    "t": fit.tvalues.to_numpy(),
                    "p": fit.pvalues.to_numpy(),
                }
            )
        )
        models.append(
            {
                **key,
                "n": int(fit.nobs),
                "r2": float(fit.rsquared),
                "r2_adj": float(fit.rsquared_adj),
                "df_resid": float(fit.df_resid),
                "rmse": float(np.sqrt(fit.mse_resid)),
                "f": float(fit.fvalue) if fit.df_model > 0 else np.nan,
                "f_p": float(fit.f_pvalue) if fit.df_model > 0 else np.nan,
            }
        )
        points_at = _grid_for(rows, grid, predict_over, points)
        if points_at is not None:
            try:
                frame = fit.get_prediction(points_at).summary_frame(alpha=1.0 - level)
            except Exception as err:
                raise StatsInputError(
                    f"cannot predict {formula!r} on the grid {list(points_at.columns)}: {err}; "
                    "pass a grid with every covariate"
                ) from err
            predictions.append(
                pd.DataFrame(
                    {
                        **key,
                        **{c: points_at[c].to_numpy() for c in points_at.columns},
                        "fit": frame["mean"].to_numpy(),
                        "ci_low": frame["mean_ci_lower"].to_numpy(),
                        "ci_high": frame["mean_ci_upper"].to_numpy(),
                    }
                )
            )
    if not coefficients:
        raise StatsInputError(f"no group has the rows to fit {formula!r}")
    return RegressionResult(
        formula=formula,
        coefficients=pd.concat(coefficients, ignore_index=True),
        models=pd.DataFrame(models),
        predictions=pd.concat(predictions, ignore_index=True) if predictions else pd.DataFrame(),
        level=level,
    )
