"""The manifest of planted effects: what an analysis of a synthetic cohort should recover.

``planted_effects`` reports the population values of the model in
:mod:`myoflow.synth.effects`, computed exactly from it (quadrature over the discrete,
rounded height and age distributions) where they are planted by construction, and Monte
Carlo values from one fixed 400,000-participant draw for the rest (the BMI- and IMI-based
statistics and everything involving the CSA spread). :func:`cohort_statistics` computes
the same statistics from a cohort, to compare with the manifest.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any

import numpy as np
import pandas as pd

from myoflow.synth.effects import (
    FF_LOG_AGE_SLOPE,
    FF_MUSCLES,
    GLUTEUS_LOADINGS,
    ILIOPSOAS_ASYMMETRY,
    KNOT_AGE,
    MUSCLES,
    PROTOCOLS,
    SEXES,
    gluteus_residual_loading,
    height_grid,
    iliopsoas_moments,
    inverse_height_sq,
    protocol_design,
)
from myoflow.synth.phenotypes import sample_cohort

VARIABLES = (
    "vol_iliopsoas_total_ml",
    "psoas_max_csa_total_cm2",
    "vol_gluteus_total_ml",
    "height_cm",
    "weight_kg",
    "bmi",
    "imi_ml_m2",
)
"""Variables whose within-sex mean and SD the manifest states."""

CORRELATIONS = (
    ("vol_iliopsoas_total_ml", "height_cm"),
    ("imi_ml_m2", "bmi"),
    ("vol_iliopsoas_total_ml", "psoas_max_csa_total_cm2"),
    ("vol_iliopsoas_total_ml", "vol_gluteus_total_ml"),
)
"""Within-sex correlations the manifest states, keyed "a|b"."""


def correlation_key(a: str, b: str) -> str:
    """Key of the correlation of ``a`` and ``b`` in the manifest."""
    return f"{a}|{b}"


def imi_age_slopes(age: np.ndarray, imi: np.ndarray) -> tuple[float, float]:
    """OLS slopes of IMI on age before and after ``KNOT_AGE`` (hinge regression)."""
    age = np.asarray(age, dtype=float)
    design = np.column_stack([np.ones_like(age), age - KNOT_AGE, np.maximum(age - KNOT_AGE, 0.0)])
    coef, *_ = np.linalg.lstsq(design, np.asarray(imi, dtype=float), rcond=None)
    return float(coef[1]), float(coef[1] + coef[2])


def cohort_statistics(df: pd.DataFrame) -> dict[str, Any]:
    """Within-sex statistics of a cohort, laid out like the manifest's ``by_sex`` entries.

    Each sex gets "mean", "sd", "r" (as in the manifest), "imi_age_slope"
    ("before_60"/"after_60", hinge OLS) and "ff_age_slope" (plain OLS of each FF on age).
    """
    out: dict[str, Any] = {}
    for sex in SEXES:
        g = df[df["sex"] == sex]
        before, after = imi_age_slopes(g["age"], g["imi_ml_m2"])
        out[sex] = {
            "mean": {v: float(g[v].mean()) for v in VARIABLES},
            "sd": {v: float(g[v].std()) for v in VARIABLES},
            "r": {correlation_key(a, b): float(g[a].corr(g[b])) for a, b in CORRELATIONS},
            "imi_age_slope": {"before_60": before, "after_60": after},
            "ff_age_slope": {ff: float(np.polyfit(g["age"], g[ff], 1)[0]) for ff in FF_MUSCLES},
        }
    return out


def _analytic_sex_effects(protocol: str, sex: str) -> dict[str, Any]:
    """Manifest entries of one sex that follow exactly from the model (see module doc)."""
    m, body = MUSCLES[sex], protocol_design(protocol).body[sex]
    grid, prob, z_mass = height_grid(protocol, sex)
    h_mean = float(np.sum(prob * grid))
    h_sd = math.sqrt(float(np.sum(prob * (grid - h_mean) ** 2)))
    v_mean, v_sd = iliopsoas_moments(protocol, sex)
    zv_shift, zv_var = (v_mean - m.iliopsoas_mean) / m.iliopsoas_sd, (v_sd / m.iliopsoas_sd) ** 2
    b_v, b_b = GLUTEUS_LOADINGS
    g_mean = m.gluteus_mean + m.gluteus_sd * b_v * zv_shift
    g_var = m.gluteus_sd**2 * (
        b_v**2 * zv_var + b_b**2 + 2 * b_v * b_b * m.loading_build + gluteus_residual_loading() ** 2
    )
    cov_vg = m.iliopsoas_sd * m.gluteus_sd * (b_v * zv_var + b_b * m.loading_build)
    cov_vh = m.iliopsoas_sd * m.loading_height * float(np.sum(grid * z_mass))
    # the height ratio carries the ukbb-calibrated IMI curve over to another height mix
    ratio = inverse_height_sq(protocol, sex) / inverse_height_sq("ukbb", sex)
    return {
        "mean": {
            "vol_iliopsoas_total_ml": v_mean,
            "psoas_max_csa_total_cm2": m.psoas_csa_mean,
            "vol_gluteus_total_ml": g_mean,
            "height_cm": h_mean,
            "weight_kg": body.weight_mean,
        },
        "sd": {
            "vol_iliopsoas_total_ml": v_sd,
            "vol_gluteus_total_ml": math.sqrt(g_var),
            "height_cm": h_sd,
            # log-normal SD plus the variance of rounding to 0.1 kg (Sheppard)
            "weight_kg": math.sqrt(body.weight_sd**2 + 0.1**2 / 12.0),
        },
        "r": {
            correlation_key(*CORRELATIONS[0]): cov_vh / (v_sd * h_sd),
            correlation_key(*CORRELATIONS[3]): cov_vg / (v_sd * math.sqrt(g_var)),
        },
        "imi_age_slope": {
            "before_60": m.imi_slope_before * ratio,
            "after_60": m.imi_slope_after * ratio,
        },
    }


MONTE_CARLO_SEED = 20_240_501
MONTE_CARLO_N = 400_000
MONTE_CARLO_COMMAND = ".venv/bin/python -m myoflow.synth.effects"
MONTE_CARLO_KEYS: dict[str, tuple[str, ...]] = {
    "mean": ("bmi", "imi_ml_m2"),
    "sd": ("psoas_max_csa_total_cm2", "bmi", "imi_ml_m2"),
    "r": (correlation_key(*CORRELATIONS[1]), correlation_key(*CORRELATIONS[2])),
    "ff_age_slope": tuple(FF_MUSCLES),
}
"""Manifest entries with no closed form, taken from one fixed large draw."""


def monte_carlo_values(
    protocol: str, n: int = MONTE_CARLO_N, seed: int = MONTE_CARLO_SEED
) -> dict[str, dict[str, dict[str, float]]]:
    """The ``MONTE_CARLO_KEYS`` entries of each sex, estimated from a cohort of ``n``."""
    observed = cohort_statistics(sample_cohort(seed, n, protocol))
    return {
        sex: {
            group: {k: round(observed[sex][group][k], 7) for k in keys}
            for group, keys in MONTE_CARLO_KEYS.items()
        }
        for sex in SEXES
    }


MODEL_DESCRIPTION = (
    "Within sex: height normal (clipped at 4 SD); weight log-normal, r(weight, height) ~0.41. "
    "Iliopsoas total volume = published UK Biobank mean + planted IMI-age curve (women "
    "linear; men steeper after age 60) + loadings on the height latent (r ~0.5), on the "
    "build/BMI latent (r(IMI, BMI) ~0.5) and on a private latent, scaled so the UK Biobank "
    "mean and SD are the published ones; nako uses the same model with its own age and "
    "height mix. Right = total (1 + d) / 2 with d ~ N(0.01, 0.02): asymmetry 2 +- 4 %. Psoas "
    "major share of each side = 0.45 + 0.35 expit(normal), so the iliacus is 20-55 % of "
    "every side; psoas max CSA follows from that share through the shared CSA profile, its "
    "centre solved so the CSA total mean is the published (nako) value in both protocols. "
    "Gluteus total loads on the standardised iliopsoas volume (0.47) and the build latent "
    "(0.30): r ~0.6; split 60/30/10 % with 6 % log-scale noise, right 1 % larger. Fat "
    "fractions are log-linear: +1.8 %/yr of the FF (about +0.001/yr), women x1.25, +2 %/BMI "
    "unit, a shared latent (log SD 0.2) and per-muscle noise (0.08), clipped to 0.01-0.35."
)


def planted_effects(protocol: str) -> dict[str, Any]:
    """Manifest of the population values planted in ``protocol``'s synthetic cohorts.

    Args:
        protocol: "ukbb" or "nako".

    Returns:
        A JSON-serialisable dict: per sex ("by_sex") the mean and SD of ``VARIABLES``, the
        ``CORRELATIONS`` (keys "a|b"), the IMI-age slopes and the realised FF-age slopes;
        plus the asymmetry, the IMI and FF age effects, the model text and the source
        (analytic or Monte Carlo) of each entry. A fresh copy on every call.
    """
    return copy.deepcopy(_manifest(protocol))


@functools.cache
def _manifest(protocol: str) -> dict[str, Any]:
    design = protocol_design(protocol)
    by_sex = {}
    for sex in SEXES:
        entry = _analytic_sex_effects(protocol, sex)
        for group, values in _MONTE_CARLO[protocol][sex].items():
            entry.setdefault(group, {}).update(values)
        # present every group in the fixed variable order
        entry["mean"] = {v: entry["mean"][v] for v in VARIABLES}
        entry["sd"] = {v: entry["sd"][v] for v in VARIABLES}
        entry["r"] = {
            correlation_key(a, b): entry["r"][correlation_key(a, b)] for a, b in CORRELATIONS
        }
        by_sex[sex] = entry
    asym_mean, asym_sd = ILIOPSOAS_ASYMMETRY
    return {
        "protocol": protocol,
        "description": MODEL_DESCRIPTION,
        "female_fraction": design.female_fraction,
        "age_range": [design.age_bands[0][0], design.age_bands[-1][1]],
        "by_sex": by_sex,
        "iliopsoas_asymmetry_pct": {"mean": 200.0 * asym_mean, "sd": 200.0 * asym_sd},
        "imi_age_slope_ml_m2_per_year": {
            "F": by_sex["F"]["imi_age_slope"]["before_60"],
            "M_before_60": by_sex["M"]["imi_age_slope"]["before_60"],
            "M_after_60": by_sex["M"]["imi_age_slope"]["after_60"],
            "knot_age": KNOT_AGE,
        },
        "ff_age_slope": {
            "log_ff_per_year": FF_LOG_AGE_SLOPE,
            "note": "FF rises in proportion to itself; the realised OLS slope of each FF "
            "on age (FF per year) is by_sex[sex]['ff_age_slope']",
        },
        "sources": {
            "monte_carlo": {
                "entries": {g: list(k) for g, k in MONTE_CARLO_KEYS.items()},
                "n": MONTE_CARLO_N,
                "seed": MONTE_CARLO_SEED,
                "command": MONTE_CARLO_COMMAND,
            },
            "analytic": "all other entries (exact up to guards that bind with p < 1e-4)",
        },
    }


# Regenerate with: .venv/bin/python -m myoflow.synth.effects  (prints this literal)
_MONTE_CARLO: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "ukbb": {
        "F": {
            "mean": {"bmi": 26.1913528, "imi_ml_m2": 205.0857375},
            "sd": {"psoas_max_csa_total_cm2": 3.582725, "bmi": 4.5554242, "imi_ml_m2": 23.8763462},
            "r": {
                "imi_ml_m2|bmi": 0.4861509,
                "vol_iliopsoas_total_ml|psoas_max_csa_total_cm2": 0.7866558,
            },
            "ff_age_slope": {
                "ff_psoas_major": 0.0008097,
                "ff_iliacus": 0.0010109,
                "ff_gluteus_maximus": 0.0016205,
                "ff_gluteus_medius": 0.0012149,
                "ff_gluteus_minimus": 0.0014138,
                "ff_muscle": 0.0010109,
            },
        },
        "M": {
            "mean": {"bmi": 26.9959445, "imi_ml_m2": 261.9801101},
            "sd": {"psoas_max_csa_total_cm2": 5.4516261, "bmi": 3.9454686, "imi_ml_m2": 35.1172084},
            "r": {
                "imi_ml_m2|bmi": 0.4921886,
                "vol_iliopsoas_total_ml|psoas_max_csa_total_cm2": 0.9349563,
            },
            "ff_age_slope": {
                "ff_psoas_major": 0.0006587,
                "ff_iliacus": 0.0008209,
                "ff_gluteus_maximus": 0.0013134,
                "ff_gluteus_medius": 0.0009871,
                "ff_gluteus_minimus": 0.0011525,
                "ff_muscle": 0.0008229,
            },
        },
    },
    "nako": {
        "F": {
            "mean": {"bmi": 25.5024162, "imi_ml_m2": 209.3842235},
            "sd": {"psoas_max_csa_total_cm2": 3.6472499, "bmi": 4.6237974, "imi_ml_m2": 24.4287535},
            "r": {
                "imi_ml_m2|bmi": 0.4574073,
                "vol_iliopsoas_total_ml|psoas_max_csa_total_cm2": 0.7564442,
            },
            "ff_age_slope": {
                "ff_psoas_major": 0.0005979,
                "ff_iliacus": 0.0007472,
                "ff_gluteus_maximus": 0.0011964,
                "ff_gluteus_medius": 0.0008964,
                "ff_gluteus_minimus": 0.0010466,
                "ff_muscle": 0.0007471,
            },
        },
        "M": {
            "mean": {"bmi": 26.8071665, "imi_ml_m2": 269.7846886},
            "sd": {"psoas_max_csa_total_cm2": 5.1073763, "bmi": 4.0987042, "imi_ml_m2": 32.3075837},
            "r": {
                "imi_ml_m2|bmi": 0.5203419,
                "vol_iliopsoas_total_ml|psoas_max_csa_total_cm2": 0.8818485,
            },
            "ff_age_slope": {
                "ff_psoas_major": 0.0004904,
                "ff_iliacus": 0.0006132,
                "ff_gluteus_maximus": 0.0009815,
                "ff_gluteus_medius": 0.0007354,
                "ff_gluteus_minimus": 0.0008595,
                "ff_muscle": 0.0006142,
            },
        },
    },
}


def print_monte_carlo() -> None:
    """Print the ``_MONTE_CARLO`` literal for the current model."""
    import pprint

    values = {p: monte_carlo_values(p) for p in PROTOCOLS}
    print("_MONTE_CARLO: dict[str, dict[str, dict[str, dict[str, float]]]] = ", end="")
    pprint.pprint(values, sort_dicts=False, width=92)
