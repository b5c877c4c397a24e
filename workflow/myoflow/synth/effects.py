"""The population model behind synthetic phenotypes: its parameters and exact moments.

Everything the sampler in :mod:`myoflow.synth.phenotypes` plants is decided here: the
published means and SDs it reproduces, the loadings that set its correlations and the age
curves. The population values an analysis of a synthetic cohort should recover (the
manifest of planted effects) are computed from this model in :mod:`myoflow.synth.planted`;
``python -m myoflow.synth.effects`` prints its Monte Carlo table.

Model (within sex s; z_k are independent standard normals of the participant's block):

* height = mean + sd * z_height (clipped at 4 SD, rounded to 0.1 cm); weight is log-normal
  with the published mean and SD, its log loading ``WEIGHT_HEIGHT_RHO`` on z_height and the
  rest on z_build, so z_build is in effect the participant's BMI.
* iliopsoas total volume V = mean + age_term(age) - E_ukbb[age_term]
  + sd * (a_h z_height + a_b z_build + a_e z_resid). The age term is the planted IMI-age
  curve divided by E_ukbb[1/height^2], so E[IMI | age] has exactly the planted slopes;
  a_e makes Var(V) the published variance in the UK Biobank age mix.
* gluteus total G = mean + sd * (b_v Zv + b_b z_build + b_e z_glut) with Zv the
  standardised V, so r(V, G) and Var(G) are exact.
* psoas share p of each iliopsoas side lies in (0.45, 0.80) (a scaled logistic of a normal),
  which keeps the iliacus at 20-55 % of its side for everyone; the maximum CSA follows from
  p * V_side and the shared CSA profile, its logistic centre solved so that E[CSA total] is
  the published value in each protocol.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

from myoflow.synth import psoas_profile

SEXES = ("F", "M")
HEIGHT_CLIP_SD = 4.0
"""Heights are clipped this many SDs from the sex mean before rounding."""

WEIGHT_HEIGHT_RHO = 0.42
"""Loading of log weight on the height latent; gives r(weight, height) of about 0.41."""

WEIGHT_RANGE_KG = (35.0, 220.0)
KNOT_AGE = 60.0
"""Age at which the men's IMI decline steepens."""

PSOAS_SHARE_RANGE = (0.45, 0.80)
"""Psoas major share of an iliopsoas side: iliacus 20-55 %, by construction."""

PSOAS_SHARE_TAU = {"F": (0.75, 0.15), "M": (0.60, 0.15)}
"""Logit-scale SDs of the psoas share: (shared by both sides, differing between sides).

Men's mean share (0.74) sits near the 0.80 limit, so their spread is kept smaller; the
price is a CSA SD and r(V, CSA) that differ from the published ones (see the manifest).
"""

ILIOPSOAS_ASYMMETRY = (0.01, 0.02)
"""Mean and SD of d, with right = V (1 + d) / 2: asymmetry % = 200 d, so mean 2 %, SD 4 %."""

GLUTEUS_ASYMMETRY = (0.005, 0.015)
GLUTEUS_SHARES = (0.60, 0.30, 0.10)
GLUTEUS_SHARE_SD = 0.06
"""Log-scale SD of each gluteus muscle's share before renormalising to the total."""

GLUTEUS_LOADINGS = (0.47, 0.30)
"""(b_v, b_b): loadings of the gluteus total on standardised V and on z_build."""

FF_MUSCLES = {
    "ff_psoas_major": 0.040,
    "ff_iliacus": 0.050,
    "ff_gluteus_maximus": 0.080,
    "ff_gluteus_medius": 0.060,
    "ff_gluteus_minimus": 0.070,
    "ff_muscle": 0.050,
}
"""Approximate UK Biobank mean fat fraction per muscle (the log-scale model's base)."""

FF_LOG_AGE_SLOPE = 0.018
"""log(FF) per year: about +0.001/yr in FF at FF 0.06; proportional, so never negative."""

FF_LOG_FEMALE = 0.11
FF_LOG_BMI_SLOPE = 0.02
FF_LOG_LATENT_SD = 0.20
FF_LOG_MUSCLE_SD = 0.08
FF_RANGE = (0.01, 0.35)
FF_REFERENCE = (63.0, 27.0)
"""(age, BMI) at which a man's FF is base * exp(-FF_LOG_FEMALE); women exp(+FF_LOG_FEMALE)."""


@dataclass(frozen=True)
class Body:
    """Published height and weight distribution of one sex in one protocol."""

    height_mean: float
    height_sd: float
    weight_mean: float
    weight_sd: float


@dataclass(frozen=True)
class Protocol:
    """Sampling design of one acquisition protocol's cohort."""

    female_fraction: float
    age_bands: tuple[tuple[float, float], ...]
    body: dict[str, Body]


@dataclass(frozen=True)
class Muscle:
    """Planted muscle model of one sex (volumes in ml, CSA in cm2, slopes per year)."""

    iliopsoas_mean: float
    iliopsoas_sd: float
    loading_height: float
    loading_build: float
    imi_slope_before: float
    imi_slope_after: float
    psoas_csa_mean: float
    gluteus_mean: float
    gluteus_sd: float


PROTOCOLS: dict[str, Protocol] = {
    # UK Biobank imaging: four equal-probability age bands, sexes balanced.
    "ukbb": Protocol(
        female_fraction=0.5,
        age_bands=((44.0, 54.0), (54.0, 64.0), (64.0, 74.0), (74.0, 82.0)),
        body={"F": Body(162.5, 6.1, 69.3, 13.3), "M": Body(176.2, 6.8, 83.9, 13.5)},
    ),
    # German National Cohort (NAKO): roughly uniform 19-74, 44 % women.
    "nako": Protocol(
        female_fraction=0.44,
        age_bands=((19.0, 74.0),),
        body={"F": Body(165.5, 6.5, 70.0, 14.0), "M": Body(179.0, 7.0, 86.0, 14.5)},
    ),
}

MUSCLES: dict[str, Muscle] = {
    "F": Muscle(542.0, 72.0, 0.5, 0.43, -0.7, -0.7, 24.5, 2390.0, 350.0),
    "M": Muscle(815.0, 125.0, 0.5, 0.43, -0.5, -2.0, 37.9, 3380.0, 500.0),
}


def protocol_design(protocol: str) -> Protocol:
    """Return the sampling design of ``protocol``; raise ``ValueError`` if unknown."""
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        known = sorted(PROTOCOLS)
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {known}") from None


# --- exact distributions of the rounded variables ------------------------------------


@functools.cache
def age_grid(protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """Ages as recorded (0.1-year grid) and their probabilities under ``protocol``."""
    bands = protocol_design(protocol).age_bands
    lo, hi = min(b[0] for b in bands), max(b[1] for b in bands)
    grid = np.round(np.arange(lo, hi + 0.05, 0.1), 1)
    prob = np.zeros_like(grid)
    for a, b in bands:
        # a value rounds to x when it lies in [x - 0.05, x + 0.05); uniform within the band
        overlap = np.clip(np.minimum(grid + 0.05, b) - np.maximum(grid - 0.05, a), 0.0, None)
        prob += overlap / (b - a) / len(bands)
    return grid, prob


@functools.cache
def height_grid(protocol: str, sex: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recorded heights (0.1 cm grid), their probabilities and E[z_height; height = x]."""
    body = protocol_design(protocol).body[sex]
    half = HEIGHT_CLIP_SD * body.height_sd
    lo, hi = round(body.height_mean - half, 1), round(body.height_mean + half, 1)
    grid = np.round(np.arange(lo, hi + 0.05, 0.1), 1)
    za = (np.maximum(grid - 0.05, lo) - body.height_mean) / body.height_sd
    zb = (np.minimum(grid + 0.05, hi) - body.height_mean) / body.height_sd
    prob = stats.norm.cdf(zb) - stats.norm.cdf(za)
    z_mass = stats.norm.pdf(za) - stats.norm.pdf(zb)
    # the clipped tails pile onto the end points
    prob[0] += stats.norm.cdf(za[0])
    prob[-1] += stats.norm.sf(zb[-1])
    z_mass[0] -= stats.norm.pdf(za[0])
    z_mass[-1] += stats.norm.pdf(zb[-1])
    return grid, prob, z_mass


def height_bounds(protocol: str, sex: str) -> tuple[float, float]:
    """Clip limits (cm) of recorded heights."""
    grid, _, _ = height_grid(protocol, sex)
    return float(grid[0]), float(grid[-1])


def imi_age_curve(age: np.ndarray, sex: str) -> np.ndarray:
    """Planted IMI-age curve (ml/m2), zero at ``KNOT_AGE``: linear, steeper after the knot."""
    m = MUSCLES[sex]
    age = np.asarray(age, dtype=float)
    return m.imi_slope_before * (age - KNOT_AGE) + (m.imi_slope_after - m.imi_slope_before) * (
        np.maximum(age - KNOT_AGE, 0.0)
    )


@functools.cache
def inverse_height_sq(protocol: str, sex: str) -> float:
    """E[1 / height^2] (1/m^2) over the protocol's discrete height distribution of ``sex``."""
    grid, prob, _ = height_grid(protocol, sex)
    return float(np.sum(prob / (grid / 100.0) ** 2))


def age_term_ml(age: np.ndarray, sex: str) -> np.ndarray:
    """Age part of the iliopsoas volume (ml) before centring.

    Dividing the IMI curve by E_ukbb[1/height^2] makes the UK Biobank E[IMI | age] follow
    the planted curve exactly, because height is independent of age.
    """
    return imi_age_curve(age, sex) / inverse_height_sq("ukbb", sex)


@functools.cache
def age_term_moments(protocol: str, sex: str) -> tuple[float, float]:
    """Mean and variance of ``age_term_ml`` over the recorded ages of ``protocol``."""
    grid, prob = age_grid(protocol)
    term = age_term_ml(grid, sex)
    mean = float(np.sum(prob * term))
    return mean, float(np.sum(prob * (term - mean) ** 2))


@functools.cache
def residual_loading(sex: str) -> float:
    """a_e: loading on the private latent that makes Var(V) the published variance (ukbb)."""
    m = MUSCLES[sex]
    age_share = age_term_moments("ukbb", sex)[1] / m.iliopsoas_sd**2
    rest = 1.0 - m.loading_height**2 - m.loading_build**2 - age_share
    if rest <= 0.0:
        raise ValueError(f"iliopsoas loadings for sex {sex} leave no residual variance")
    return math.sqrt(rest)


@functools.cache
def gluteus_residual_loading() -> float:
    """b_e for the gluteus total; Zv and z_build correlate by the build loading."""
    b_v, b_b = GLUTEUS_LOADINGS
    # loading_build is the same for both sexes by design, checked here
    (a_b,) = {MUSCLES[s].loading_build for s in SEXES}
    return math.sqrt(1.0 - b_v**2 - b_b**2 - 2.0 * b_v * b_b * a_b)


@functools.cache
def iliopsoas_moments(protocol: str, sex: str) -> tuple[float, float]:
    """Exact mean and SD of the iliopsoas total volume (ml) in ``protocol``."""
    m = MUSCLES[sex]
    ukbb_mean, _ = age_term_moments("ukbb", sex)
    age_mean, age_var = age_term_moments(protocol, sex)
    shared = 1.0 - age_term_moments("ukbb", sex)[1] / m.iliopsoas_sd**2
    return m.iliopsoas_mean + age_mean - ukbb_mean, math.sqrt(m.iliopsoas_sd**2 * shared + age_var)


def _expected_logistic(centre: float, tau: float) -> float:
    # E[expit(centre + tau Z)] by 64-point Gauss-Hermite quadrature (error far below 1e-12)
    nodes, weights = np.polynomial.hermite_e.hermegauss(64)
    return float(np.sum(weights * special.expit(centre + tau * nodes)) / math.sqrt(2 * math.pi))


@functools.cache
def psoas_share_centre(protocol: str, sex: str) -> float:
    """Logit centre of the psoas share that makes E[psoas max CSA total] the published mean.

    CSA_side = p_side V_side / psoas_volume_ml(1, h) and p is independent of V and h, so
    E[CSA total] = E[p] E[V / h] / psoas_volume_ml(1, 1); E[V / h] is exact on the grid.
    """
    m = MUSCLES[sex]
    grid, prob, z_mass = height_grid(protocol, sex)
    level = iliopsoas_moments(protocol, sex)[0]
    v_over_h = level * np.sum(prob / grid) + m.iliopsoas_sd * m.loading_height * np.sum(
        z_mass / grid
    )
    share = m.psoas_csa_mean * float(psoas_profile.psoas_volume_ml(1.0, 1.0)) / v_over_h
    lo, hi = PSOAS_SHARE_RANGE
    target = (share - lo) / (hi - lo)
    if not 0.0 < target < 1.0:
        raise ValueError(f"psoas CSA mean for sex {sex} is outside the allowed share range")
    tau = math.hypot(*PSOAS_SHARE_TAU[sex])
    return optimize.brentq(lambda c: _expected_logistic(c, tau) - target, -30.0, 30.0)


if __name__ == "__main__":
    # The manifest's Monte Carlo source names this command (``MONTE_CARLO_COMMAND``), and
    # manifests already written hold it, so it stays the entry point.
    from myoflow.synth.planted import print_monte_carlo  # planted imports this module

    print_monte_carlo()
