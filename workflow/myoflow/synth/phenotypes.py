"""Phenotypes and muscle targets of a synthetic cohort, with planted population effects.

Participant ``index`` draws one fixed-length block from
``participant_rng(seed, index, "phenotypes")``: ``N_NORMAL`` standard normals, then
``N_UNIFORM`` uniforms. Every transform below is vectorised over the stacked blocks, so a
cohort is the concatenation of its participants and a cohort of 60 equals the first 60
rows of a cohort of 100. Spare slots in the block let later draws be added without moving
the existing ones. The model and its parameters live in :mod:`myoflow.synth.effects`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import special

from myoflow.synth import effects, psoas_profile
from myoflow.synth.rng import participant_rng

N_NORMAL = 24
N_UNIFORM = 8

# Slots of the normal block (21-23 spare).
Z_HEIGHT, Z_BUILD, Z_ILIOPSOAS, Z_ILIO_ASYM, Z_SHARE, Z_SHARE_SIDE = 0, 1, 2, 3, 4, 5
Z_GLUTEUS, Z_GLUT_ASYM, Z_GLUT_SHARES = 6, 7, slice(8, 11)
Z_FF_LATENT, Z_FF_MUSCLES = 11, slice(12, 18)
Z_SAT, Z_VAT, Z_MARROW = 18, 19, 20
# Slots of the uniform block (6-7 spare).
U_SEX, U_AGE_BAND, U_AGE, U_HAND, U_ETHNICITY, U_ATLAS = 0, 1, 2, 3, 4, 5

N_ATLAS_BODIES = 40
SIDES = ("left", "right")
GLUTEI = ("gluteus_maximus", "gluteus_medius", "gluteus_minimus")

HANDEDNESS = {"right": 0.89, "left": 0.10, "ambidextrous": 0.01}
ETHNICITY = {
    "ukbb": {
        "White": 0.940,
        "Asian or Asian British": 0.020,
        "Black or Black British": 0.015,
        "Chinese": 0.003,
        "Mixed": 0.006,
        "Other ethnic group": 0.008,
        "Prefer not to answer": 0.008,
    },
    "nako": {"German": 0.80, "other European": 0.12, "other": 0.08},
}

PHENOTYPE_COLUMNS = (
    "participant_id", "sex", "age", "height_cm", "weight_kg", "bmi",
    "handedness", "ethnicity", "release",
)  # fmt: skip
TARGET_COLUMNS = (
    *(f"vol_{m}_{s}_ml" for m in ("psoas_major", "iliacus", *GLUTEI) for s in SIDES),
    "psoas_max_csa_left_cm2", "psoas_max_csa_right_cm2",
    *effects.FF_MUSCLES,
    "sat_thickness_mm", "vat_fraction", "marrow_ff", "atlas_body",
)  # fmt: skip
DERIVED_COLUMNS = (
    "vol_iliopsoas_left_ml", "vol_iliopsoas_right_ml", "vol_iliopsoas_total_ml",
    "vol_gluteus_left_ml", "vol_gluteus_right_ml", "vol_gluteus_total_ml",
    "psoas_max_csa_total_cm2", "imi_ml_m2", "iliopsoas_asymmetry_pct",
)  # fmt: skip


def sample_cohort(
    seed: int, n: int, protocol: str, *, release_size: int | None = None, first_index: int = 1
) -> pd.DataFrame:
    """Sample phenotypes and muscle targets for participants ``first_index .. first_index+n-1``.

    Args:
        seed: cohort seed; participant ``i`` draws only from
            ``participant_rng(seed, i, "phenotypes")``.
        n: number of participants.
        protocol: "ukbb" or "nako"; sets the age, sex and body-size design and the ID prefix.
        release_size: participants per data release ("r1" holds indices 1..release_size);
            ``None`` puts everyone in "r1".
        first_index: 1-based index of the first participant returned.

    Returns:
        One row per participant: ``PHENOTYPE_COLUMNS``, ``TARGET_COLUMNS`` then
        ``DERIVED_COLUMNS``.
    """
    design = effects.protocol_design(protocol)
    if n < 0 or first_index < 1:
        raise ValueError(f"need n >= 0 and first_index >= 1, got {n} and {first_index}")
    if release_size is not None and release_size < 1:
        raise ValueError(f"release_size must be positive, got {release_size}")
    index = np.arange(first_index, first_index + n, dtype=np.int64)
    z, u = draw_blocks(seed, index)
    female = u[:, U_SEX] < design.female_fraction
    age = _ages(u, design)
    height, weight = _body_size(z, female, protocol)
    bmi = np.round(weight / (height / 100.0) ** 2, 2)
    columns: dict[str, object] = {
        "participant_id": [f"{protocol}{i:06d}" for i in index],
        "sex": np.where(female, "F", "M"),
        "age": age,
        "height_cm": height,
        "weight_kg": weight,
        "bmi": bmi,
        "handedness": _categorical(u[:, U_HAND], HANDEDNESS),
        "ethnicity": _categorical(u[:, U_ETHNICITY], ETHNICITY[protocol]),
        "release": _releases(index, release_size),
    }
    columns |= _muscle_targets(z, female, age, height, protocol)
    columns |= _fat_targets(z, female, age, bmi)
    columns["atlas_body"] = np.minimum(
        (u[:, U_ATLAS] * N_ATLAS_BODIES).astype(np.int64), N_ATLAS_BODIES - 1
    )
    frame = pd.DataFrame({c: columns[c] for c in (*PHENOTYPE_COLUMNS, *TARGET_COLUMNS)})
    return add_derived(frame)


def draw_blocks(seed: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stack each participant's block of normals and uniforms (rows follow ``index``)."""
    z = np.empty((len(index), N_NORMAL))
    u = np.empty((len(index), N_UNIFORM))
    for row, i in enumerate(index):
        rng = participant_rng(seed, int(i), "phenotypes")
        z[row] = rng.standard_normal(N_NORMAL)
        u[row] = rng.random(N_UNIFORM)
    return z, u


def add_derived(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``df`` with the summed, normalised and asymmetry columns (re)computed.

    Needs the per-side volume, psoas CSA and height columns; works on sampled targets and
    on measured truth tables alike.
    """
    out = df.copy()
    for side in SIDES:
        out[f"vol_iliopsoas_{side}_ml"] = (
            out[f"vol_psoas_major_{side}_ml"] + out[f"vol_iliacus_{side}_ml"]
        )
    out["vol_iliopsoas_total_ml"] = out["vol_iliopsoas_left_ml"] + out["vol_iliopsoas_right_ml"]
    for side in SIDES:
        out[f"vol_gluteus_{side}_ml"] = sum(out[f"vol_{g}_{side}_ml"] for g in GLUTEI)
    out["vol_gluteus_total_ml"] = out["vol_gluteus_left_ml"] + out["vol_gluteus_right_ml"]
    out["psoas_max_csa_total_cm2"] = out["psoas_max_csa_left_cm2"] + out["psoas_max_csa_right_cm2"]
    out["imi_ml_m2"] = out["vol_iliopsoas_total_ml"] / (out["height_cm"] / 100.0) ** 2
    left, right = out["vol_iliopsoas_left_ml"], out["vol_iliopsoas_right_ml"]
    out["iliopsoas_asymmetry_pct"] = 100.0 * (right - left) / ((right + left) / 2.0)
    return out


def _by_sex(female: np.ndarray, values: Mapping[str, float]) -> np.ndarray:
    return np.where(female, values["F"], values["M"])


def _ages(u: np.ndarray, design: effects.Protocol) -> np.ndarray:
    # stratified: a band with equal probability, then uniform within it
    bands = np.asarray(design.age_bands)
    band = np.minimum((u[:, U_AGE_BAND] * len(bands)).astype(np.int64), len(bands) - 1)
    lo, hi = bands[band, 0], bands[band, 1]
    return np.round(lo + u[:, U_AGE] * (hi - lo), 1)


def _body_size(z: np.ndarray, female: np.ndarray, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """Heights (normal, clipped at 4 SD) and log-normal weights correlated with height."""
    body = effects.protocol_design(protocol).body
    mean = _by_sex(female, {s: body[s].height_mean for s in effects.SEXES})
    sd = _by_sex(female, {s: body[s].height_sd for s in effects.SEXES})
    lo = _by_sex(female, {s: effects.height_bounds(protocol, s)[0] for s in effects.SEXES})
    hi = _by_sex(female, {s: effects.height_bounds(protocol, s)[1] for s in effects.SEXES})
    height = np.round(np.clip(mean + sd * z[:, Z_HEIGHT], lo, hi), 1)
    # log-normal with the published mean and SD: s^2 = log(1 + cv^2), mu = log(mean) - s^2/2
    w_mean = _by_sex(female, {s: body[s].weight_mean for s in effects.SEXES})
    w_cv = _by_sex(female, {s: body[s].weight_sd / body[s].weight_mean for s in effects.SEXES})
    s = np.sqrt(np.log1p(w_cv**2))
    rho = effects.WEIGHT_HEIGHT_RHO
    latent = rho * z[:, Z_HEIGHT] + np.sqrt(1.0 - rho**2) * z[:, Z_BUILD]
    weight = np.exp(np.log(w_mean) - s**2 / 2.0 + s * latent)
    return height, np.round(np.clip(weight, *effects.WEIGHT_RANGE_KG), 1)


def _categorical(u: np.ndarray, probabilities: Mapping[str, float]) -> np.ndarray:
    labels = np.array(list(probabilities), dtype=object)
    edges = np.cumsum(list(probabilities.values()))
    return labels[np.minimum(np.searchsorted(edges, u, side="right"), len(labels) - 1)]


def _releases(index: np.ndarray, release_size: int | None) -> np.ndarray:
    number = np.ones_like(index) if release_size is None else 1 + (index - 1) // release_size
    return np.array([f"r{k}" for k in number], dtype=object)


def _muscle_targets(
    z: np.ndarray, female: np.ndarray, age: np.ndarray, height: np.ndarray, protocol: str
) -> dict[str, np.ndarray]:
    """Per-side psoas major, iliacus and gluteus volumes and the psoas maximum CSAs."""
    total, standardised = _iliopsoas_total(z, female, age)
    columns = _iliopsoas_sides(z, female, total, height, protocol)
    columns |= _gluteus(z, female, standardised)
    return columns


def _iliopsoas_total(
    z: np.ndarray, female: np.ndarray, age: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Iliopsoas total volume (ml) and its value standardised by the ukbb mean and SD."""
    standardised = np.empty(len(age))
    for sex, mask in (("F", female), ("M", ~female)):
        m = effects.MUSCLES[sex]
        latent = (
            m.loading_height * z[mask, Z_HEIGHT]
            + m.loading_build * z[mask, Z_BUILD]
            + effects.residual_loading(sex) * z[mask, Z_ILIOPSOAS]
        )
        age_part = effects.age_term_ml(age[mask], sex) - effects.age_term_moments("ukbb", sex)[0]
        standardised[mask] = age_part / m.iliopsoas_sd + latent
    mean = _by_sex(female, {s: effects.MUSCLES[s].iliopsoas_mean for s in effects.SEXES})
    sd = _by_sex(female, {s: effects.MUSCLES[s].iliopsoas_sd for s in effects.SEXES})
    # the floor sits more than 5.6 SD below the mean: a guard, not part of the model
    return np.maximum(mean + sd * standardised, 0.3 * mean), standardised


def _iliopsoas_sides(
    z: np.ndarray, female: np.ndarray, total: np.ndarray, height: np.ndarray, protocol: str
) -> dict[str, np.ndarray]:
    """Split the iliopsoas into sides, then each side into psoas major (from CSA) and iliacus.

    The psoas share of a side is a scaled logistic inside ``PSOAS_SHARE_RANGE``, so the
    iliacus is 20-55 % of every side without any clipping; the CSA is solved from that
    share through the CSA profile, and the psoas volume recomputed from the CSA so that
    ``psoas_volume_ml(csa, height)`` holds exactly.
    """
    asym_mean, asym_sd = effects.ILIOPSOAS_ASYMMETRY
    d = asym_mean + asym_sd * z[:, Z_ILIO_ASYM]
    centre = _by_sex(female, {s: effects.psoas_share_centre(protocol, s) for s in effects.SEXES})
    tau_common = _by_sex(female, {s: effects.PSOAS_SHARE_TAU[s][0] for s in effects.SEXES})
    tau_side = _by_sex(female, {s: effects.PSOAS_SHARE_TAU[s][1] for s in effects.SEXES})
    lo, hi = effects.PSOAS_SHARE_RANGE
    ml_per_cm2 = psoas_profile.psoas_volume_ml(1.0, height)
    columns = {}
    for sign, side in ((-1.0, "left"), (1.0, "right")):
        side_total = total * (1.0 + sign * d) / 2.0
        logit = centre + tau_common * z[:, Z_SHARE] + sign * tau_side * z[:, Z_SHARE_SIDE]
        csa = (lo + (hi - lo) * special.expit(logit)) * side_total / ml_per_cm2
        psoas = psoas_profile.psoas_volume_ml(csa, height)
        columns[f"vol_psoas_major_{side}_ml"] = psoas
        columns[f"vol_iliacus_{side}_ml"] = side_total - psoas
        columns[f"psoas_max_csa_{side}_cm2"] = csa
    return columns


def _gluteus(z: np.ndarray, female: np.ndarray, iliopsoas_z: np.ndarray) -> dict[str, np.ndarray]:
    """Gluteus maximus, medius and minimus volumes per side (ml)."""
    b_v, b_b = effects.GLUTEUS_LOADINGS
    latent = (
        b_v * iliopsoas_z
        + b_b * z[:, Z_BUILD]
        + effects.gluteus_residual_loading() * z[:, Z_GLUTEUS]
    )
    mean = _by_sex(female, {s: effects.MUSCLES[s].gluteus_mean for s in effects.SEXES})
    sd = _by_sex(female, {s: effects.MUSCLES[s].gluteus_sd for s in effects.SEXES})
    total = np.maximum(mean + sd * latent, 0.3 * mean)  # a guard as for the iliopsoas
    shares = np.asarray(effects.GLUTEUS_SHARES) * np.exp(
        effects.GLUTEUS_SHARE_SD * z[:, Z_GLUT_SHARES]
    )
    shares /= shares.sum(axis=1, keepdims=True)
    asym_mean, asym_sd = effects.GLUTEUS_ASYMMETRY
    d = asym_mean + asym_sd * z[:, Z_GLUT_ASYM]
    columns = {}
    for sign, side in ((-1.0, "left"), (1.0, "right")):
        side_total = total * (1.0 + sign * d) / 2.0
        for k, muscle in enumerate(GLUTEI):
            columns[f"vol_{muscle}_{side}_ml"] = side_total * shares[:, k]
    return columns


def _fat_targets(
    z: np.ndarray, female: np.ndarray, age: np.ndarray, bmi: np.ndarray
) -> dict[str, np.ndarray]:
    """Muscle fat fractions, subcutaneous fat thickness, visceral fat and marrow fat."""
    ref_age, ref_bmi = effects.FF_REFERENCE
    # log scale keeps fat fractions positive while the age effect stays about +0.001/yr
    shared = (
        effects.FF_LOG_AGE_SLOPE * (age - ref_age)
        + np.where(female, effects.FF_LOG_FEMALE, -effects.FF_LOG_FEMALE)
        + effects.FF_LOG_BMI_SLOPE * (bmi - ref_bmi)
        + effects.FF_LOG_LATENT_SD * z[:, Z_FF_LATENT]
        - (effects.FF_LOG_LATENT_SD**2 + effects.FF_LOG_MUSCLE_SD**2) / 2.0
    )
    columns = {}
    for k, (name, base) in enumerate(effects.FF_MUSCLES.items()):
        noise = effects.FF_LOG_MUSCLE_SD * z[:, Z_FF_MUSCLES][:, k]
        columns[name] = np.clip(base * np.exp(shared + noise), *effects.FF_RANGE)
    sat = 5.0 + 1.6 * (bmi - 18.0) + np.where(female, 6.0, 0.0) + 4.0 * z[:, Z_SAT]
    columns["sat_thickness_mm"] = np.clip(sat, 3.0, 80.0)
    # log scale: VAT share of the cavity grows multiplicatively, so lean young women stay
    # above the 0.05 floor instead of piling onto it
    log_vat = (
        np.log(0.16)
        + 0.05 * (bmi - 27.0)
        + 0.01 * (age - 60.0)
        + np.where(female, -0.25, 0.25)
        + 0.25 * z[:, Z_VAT]
    )
    columns["vat_fraction"] = np.clip(np.exp(log_vat), 0.05, 0.70)
    marrow = 0.62 + 0.0035 * (age - 60.0) + 0.05 * z[:, Z_MARROW]
    columns["marrow_ff"] = np.clip(marrow, 0.30, 0.90)
    return columns
