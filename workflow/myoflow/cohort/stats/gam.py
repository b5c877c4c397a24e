"""Generalised additive models of a metric on age, by sex: mgcv's cubic regression splines.

The smooth is mgcv's ``s(age, bs = "cr", k = K)`` rebuilt exactly, so a fit here and in R
are the same model (tests/cohort/stats/fixtures/mgcv holds the R fits and the call):

* knots: ``place_knots``, mgcv's ``place.knots`` (K knots at evenly spaced quantiles of the
  *unique* ages; numpy's default percentile of all ages would put them elsewhere);
* basis: the natural cubic spline through values at the knots (``cr_basis``), extrapolated
  linearly beyond the end knots, penalty the integrated squared second derivative;
* identifiability: the basis is centred over the data (the sum-to-zero constraint), an
  intercept fitted alongside.

statsmodels' ``GLMGam`` fits the model for a given smoothing parameter and gives the
prediction bands. Two statsmodels defaults are not used, because they do not reproduce
mgcv: ``CubicSplines`` is a different basis (Gu's reproducing-kernel cubic spline on
equally spaced knots), and ``select_penweight(criterion="gcv")`` divides by a residual
scale with n - edf degrees of freedom, which is not mgcv's GCV, and searches by basin
hopping (on the mgcv fixture, same basis: 13-23 s per fit, lambda 1.5-2.6 x mgcv's, curves
0.3 SE away). The smoothing parameter is chosen here instead, by minimising mgcv's REML or
GCV score over log lambda (Gaussian, identity link: both scores are exact functions of
X'X, X'y, y'y and the penalty, so the search touches the data once).

Lambda is on mgcv's scale for the raw penalty: the fit minimises
``||y - X b||^2 + lambda b' S b`` (mgcv reports ``sp = lambda * S.scale``; statsmodels'
``alpha`` is ``lambda / 2`` because its penalised least squares doubles the penalty).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import linalg, optimize
from statsmodels.gam.api import GLMGam
from statsmodels.gam.smooth_basis import GenericSmoothers, UnivariateGamSmoother

from myoflow.cohort.stats._common import StatsInputError, require_columns, split

METHODS = ("REML", "GCV", "none")
"""Smoothing selection: mgcv's REML, mgcv's GCV (``GCV.Cp``) or none (unpenalised)."""

_LOG_LAMBDA_SPAN = 25.0  # search log(lambda) within +-25 of the balance point
_GRID_POINTS = 101


def place_knots(x: np.ndarray, k: int) -> np.ndarray:
    """mgcv's ``place.knots``: ``k`` knots evenly spread through the sorted unique ``x``."""
    unique = np.unique(np.asarray(x, dtype=float))
    if k < 3:
        raise StatsInputError(f"a cubic regression spline needs k >= 3 knots, got {k}")
    if len(unique) < k:
        raise StatsInputError(f"{len(unique)} unique values cannot support {k} knots; lower k")
    # linear interpolation at positions 0, delta, 2 delta, ... of the sorted unique values
    return np.interp(np.linspace(0.0, len(unique) - 1.0, k), np.arange(len(unique)), unique)


def _second_derivative_map(knots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(F, B, D): F maps values at knots to second derivatives (zero at both ends)."""
    h = np.diff(knots)
    m = len(knots) - 2
    b = np.zeros((m, m))
    d = np.zeros((m, len(knots)))
    for i in range(m):
        b[i, i] = (h[i] + h[i + 1]) / 3.0
        if i + 1 < m:
            b[i, i + 1] = b[i + 1, i] = h[i + 1] / 6.0
        d[i, i], d[i, i + 1], d[i, i + 2] = 1.0 / h[i], -1.0 / h[i] - 1.0 / h[i + 1], 1.0 / h[i + 1]
    f = np.zeros((len(knots), len(knots)))
    f[1:-1] = linalg.solve(b, d, assume_a="sym")
    return f, b, d


def cr_basis(x: np.ndarray, knots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw cubic regression spline basis at ``x`` (n x k) and its penalty S (k x k).

    Column j is the natural cubic spline that is 1 at knot j and 0 at the others (so the
    columns sum to 1); S = D' B^-1 D gives the integral of f''(x)^2 for coefficients b as
    b' S b. Beyond the end knots the spline continues as a straight line.
    """
    x = np.asarray(x, dtype=float)
    knots = np.asarray(knots, dtype=float)
    f, b, d = _second_derivative_map(knots)
    k, h = len(knots), np.diff(knots)
    j = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, k - 2)
    inside = np.clip(x, knots[0], knots[-1])
    hj = h[j]
    lo, hi = (knots[j + 1] - inside) / hj, (inside - knots[j]) / hj
    c_lo = ((knots[j + 1] - inside) ** 3 / hj - hj * (knots[j + 1] - inside)) / 6.0
    c_hi = ((inside - knots[j]) ** 3 / hj - hj * (inside - knots[j])) / 6.0
    rows = np.arange(len(x))
    basis = np.zeros((len(x), k))
    basis[rows, j] += lo
    basis[rows, j + 1] += hi
    basis += c_lo[:, None] * f[j] + c_hi[:, None] * f[j + 1]
    # linear continuation: value at the end knot plus slope times distance
    below, above = x < knots[0], x > knots[-1]
    if below.any():
        e = np.zeros(k)
        e[0], e[1] = -1.0 / h[0], 1.0 / h[0]
        slope = e - h[0] / 3.0 * f[0] - h[0] / 6.0 * f[1]
        basis[below] += (x[below] - knots[0])[:, None] * slope
    if above.any():
        e = np.zeros(k)
        e[-2], e[-1] = -1.0 / h[-1], 1.0 / h[-1]
        slope = e + h[-1] / 6.0 * f[-2] + h[-1] / 3.0 * f[-1]
        basis[above] += (x[above] - knots[-1])[:, None] * slope
    penalty = d.T @ linalg.solve(b, d, assume_a="sym")
    return basis, (penalty + penalty.T) / 2.0


class CubicRegressionSpline(UnivariateGamSmoother):
    """mgcv's ``s(x, bs = "cr", k = k)`` as a statsmodels smoother, centred over the data.

    Args:
        x: the covariate (1-D).
        k: number of knots (basis dimension before the centring constraint).
        knots: explicit knots; default mgcv's placement (:func:`place_knots`).
        variable_name: name used in statsmodels' column names.
    """

    def __init__(
        self,
        x: np.ndarray,
        k: int = 10,
        knots: np.ndarray | None = None,
        variable_name: str = "x",
    ) -> None:
        x = np.asarray(x, dtype=float)
        self.knots = place_knots(x, k) if knots is None else np.asarray(knots, dtype=float)
        self.k = len(self.knots)
        super().__init__(x, constraints="center", variable_name=variable_name)

    def _smooth_basis_for_single_variable(self):
        basis, penalty = cr_basis(self.x, self.knots)
        return basis, None, None, penalty

    def transform(self, x_new: np.ndarray) -> np.ndarray:
        """The centred basis at new values of x."""
        return cr_basis(np.asarray(x_new, dtype=float), self.knots)[0] @ self.ctransf


@dataclass(frozen=True)
class GamResult:
    """GAM curves and fit summaries, one block per metric and group.

    Attributes:
        curves: metric, group columns, ``x`` (the grid), ``fit``, ``se``, ``ci_low``,
            ``ci_high`` (pointwise band at ``level``, normal quantile as mgcv's
            ``fit +- z se``).
        summary: metric, group columns, n, k, method, edf (total, with the intercept),
            lambda (raw penalty scale), alpha (statsmodels' weight), scale (residual
            variance), criterion (the minimised REML/GCV score, up to a constant), r2,
            x_min, x_max.
        level: confidence level of the bands.
        x: the covariate's column name (the curves' ``x`` holds its grid).
        fits: the statsmodels results per ``(metric, *group values)``, for partial plots.
    """

    curves: pd.DataFrame
    summary: pd.DataFrame
    level: float
    x: str
    fits: Mapping[tuple, Any] = field(default_factory=dict, repr=False, compare=False)


def select_lambda(
    design: np.ndarray, y: np.ndarray, penalty: np.ndarray, method: str
) -> tuple[float, float]:
    """Smoothing parameter minimising mgcv's REML or GCV score; returns (lambda, score).

    Args:
        design: n x p model matrix (intercept and centred basis).
        y: response (n).
        penalty: p x p penalty (zero for unpenalised columns).
        method: "REML" or "GCV".
    """
    n = len(y)
    y = y - y.mean()  # the intercept absorbs the mean; keeps y'y small
    xtx, xty, yty = design.T @ design, design.T @ y, float(y @ y)
    rank = int(np.linalg.matrix_rank(penalty))
    null_dim = design.shape[1] - rank
    balance = np.log(np.trace(xtx) / np.trace(penalty))

    def score(log_lambda: float) -> float:
        lam = float(np.exp(log_lambda))
        a = xtx + lam * penalty
        factor = linalg.cho_factor(a)
        beta = linalg.cho_solve(factor, xty)
        rss = max(yty - 2.0 * beta @ xty + beta @ xtx @ beta, 0.0)
        if method == "GCV":
            edf = float(np.trace(linalg.cho_solve(factor, xtx)))
            return n * rss / (n - edf) ** 2
        log_det = 2.0 * float(np.sum(np.log(np.diag(factor[0]))))
        pen = lam * float(beta @ penalty @ beta)
        return (n - null_dim) * np.log(rss + pen) + log_det - rank * log_lambda

    grid = balance + np.linspace(-_LOG_LAMBDA_SPAN, _LOG_LAMBDA_SPAN, _GRID_POINTS)
    values = np.array([score(g) for g in grid])
    best = int(np.argmin(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    found = optimize.minimize_scalar(score, bounds=(lo, hi), method="bounded")
    log_lambda = float(found.x) if found.fun <= values[best] else float(grid[best])
    return float(np.exp(log_lambda)), float(min(found.fun, values[best]))


def _fit_one(
    x: np.ndarray,
    y: np.ndarray,
    grid: np.ndarray,
    *,
    k: int,
    method: str,
    knots: np.ndarray | None,
    level: float,
) -> tuple[dict[str, np.ndarray], dict[str, float], Any]:
    smoother = GenericSmoothers(x[:, None], [CubicRegressionSpline(x, k=k, knots=knots)])
    exog = np.ones((len(x), 1))
    full = np.hstack([exog, smoother.basis])
    penalty = np.zeros((full.shape[1],) * 2)
    penalty[1:, 1:] = smoother.penalty_matrices[0]
    if method == "none":
        lam, criterion = 0.0, float("nan")
    else:
        lam, criterion = select_lambda(full, y, penalty, method)
    result = GLMGam(y, exog=exog, smoother=smoother, alpha=lam / 2.0).fit()
    frame = result.get_prediction(
        exog=np.ones((len(grid), 1)), exog_smooth=grid[:, None]
    ).summary_frame(alpha=1.0 - level)
    fitted = np.asarray(result.fittedvalues)
    curve = {
        "x": grid,
        "fit": frame["mean"].to_numpy(),
        "se": frame["mean_se"].to_numpy(),
        "ci_low": frame["mean_ci_lower"].to_numpy(),
        "ci_high": frame["mean_ci_upper"].to_numpy(),
    }
    summary = {
        "n": len(y),
        "k": smoother.smoothers[0].k,
        "method": method,
        "edf": float(np.sum(result.edf)),
        "lambda": lam,
        "alpha": lam / 2.0,
        "scale": float(result.scale),
        "criterion": criterion,
        "r2": 1.0 - float(np.sum((y - fitted) ** 2) / np.sum((y - y.mean()) ** 2)),
        "x_min": float(x.min()),
        "x_max": float(x.max()),
    }
    return curve, summary, result


def fit_gam(
    df: pd.DataFrame,
    y: str | Sequence[str],
    x: str = "age",
    *,
    by: str | Sequence[str] | None = "sex",
    k: int = 10,
    method: str = "REML",
    grid: np.ndarray | None = None,
    knots: np.ndarray | None = None,
    level: float = 0.95,
) -> GamResult:
    """Fit ``y ~ s(x, bs = "cr", k = k)`` per group of ``by``, for one or several metrics.

    Args:
        df: one row per participant.
        y: metric column(s), e.g. "imi_ml_m2".
        x: covariate column (default age in years).
        by: grouping column(s); each group gets its own curve and smoothing parameter.
        k: knots per smooth (mgcv's ``k``).
        method: "REML" (mgcv's default for new work), "GCV" or "none" (unpenalised).
        grid: x values to report curves at; default 101 points over the data range.
        knots: explicit knots for every group; default mgcv's placement per group.
        level: confidence level of the pointwise bands.

    Raises:
        StatsInputError: unknown method, missing columns, or a group too small to fit.
    """
    if method not in METHODS:
        raise StatsInputError(f"unknown smoothing method {method!r}; expected one of {METHODS}")
    metrics = [y] if isinstance(y, str) else list(y)
    require_columns(df, [x, *metrics])
    if grid is None:
        values = pd.to_numeric(df[x], errors="coerce")
        grid = np.linspace(values.min(), values.max(), 101)
    grid = np.asarray(grid, dtype=float)
    n_basis = k if knots is None else len(knots)
    curves, summaries, fits = [], [], {}
    for metric in metrics:
        for key, rows in split(df, by):
            data = rows[[x, metric]].apply(pd.to_numeric, errors="coerce").dropna()
            if len(data) < 2 * n_basis:
                raise StatsInputError(
                    f"{metric} ~ s({x}) in group {key or 'all'} has {len(data)} rows; "
                    f"need at least {2 * n_basis} for k={n_basis}"
                )
            curve, summary, result = _fit_one(
                data[x].to_numpy(float),
                data[metric].to_numpy(float),
                grid,
                k=k,
                method=method,
                knots=knots,
                level=level,
            )
            labels = {"metric": metric, **key}
            curves.append(pd.DataFrame({**labels, **curve}))
            summaries.append({**labels, **summary})
            fits[(metric, *key.values())] = result
    return GamResult(
        curves=pd.concat(curves, ignore_index=True),
        summary=pd.DataFrame(summaries),
        level=level,
        x=x,
        fits=fits,
    )
