"""Two-point Dixon signal of a tissue from its proton densities, relaxation times and the
sequence: what a randomised appearance renders (:mod:`myoflow.synth.appearance`).

A tissue is water and fat protons, fat fraction phi of its proton density A. A spoiled
gradient echo (TR, flip angle alpha) weights each pool by its steady state

    g(T1) = sin(alpha) (1 - E1) / (1 - cos(alpha) E1),   E1 = exp(-TR / T1),

and every echo decays by exp(-TE / T2*) of the tissue. Fat is not one line: its protons
sit at six frequencies (the multi-peak model below), so at the "in-phase" echo only
part of the fat signal is back in phase with water and at the "opposed-phase" echo not
all of it opposes water. The echoes are therefore complex sums

    s(TE) = exp(-TE / T2*) (W + F c(TE)),   c(TE) = sum_p a_p exp(2 pi i f_p TE),

with W = A (1 - phi) g(T1 water) and F = A phi g(T1 fat); the in-phase and opposed-phase
images are |s(TE_in)| and |s(TE_opp)|. The Dixon water and fat maps a scanner
reconstructs are modelled as W and F decayed to the mean of the two echo times, so their
fat fraction F / (W + F) is the T1-weighted signal fat fraction (not the proton-density
one), as in real two-point Dixon. Partial volumes mix the complex echoes linearly, so a
tissue contributes six real numbers (:data:`COMPONENTS`) that are mixed per voxel and
turned into magnitudes only at the end (:func:`channels_from_components`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GYROMAGNETIC_MHZ_PER_T = 42.577
"""Proton gyromagnetic ratio over 2 pi (MHz/T)."""

FAT_PEAKS_PPM = (-3.80, -3.40, -2.60, -1.94, -0.39, 0.60)
"""Fat resonances relative to water (ppm), the six-peak model used by chemical-shift
encoded fat quantification (methyl, methylene, alpha-carboxyl, diacyl, glycerol, olefinic)."""

FAT_PEAK_WEIGHTS = (0.087, 0.693, 0.128, 0.004, 0.039, 0.048)
"""Relative amplitudes of :data:`FAT_PEAKS_PPM` (sum 0.999; the methylene peak dominates)."""

COMPONENTS = ("water", "fat", "in_re", "in_im", "opp_re", "opp_im")
"""Per-tissue signal components mixed linearly by partial volume."""


@dataclass(frozen=True)
class Sequence:
    """The spoiled gradient-echo Dixon acquisition: field, timing and flip angle."""

    field_t: float
    tr_ms: float
    flip_deg: float
    te_opp_ms: float
    te_in_ms: float


@dataclass(frozen=True)
class Relaxation:
    """One tissue's proton density (arbitrary units), fat fraction and relaxation times."""

    density: float
    fat_fraction: float
    t1_water_ms: float
    t1_fat_ms: float
    t2star_ms: float


def steady_state(t1_ms: float, seq: Sequence) -> float:
    """Spoiled gradient-echo steady-state signal per unit proton density, g(T1)."""
    alpha = np.radians(seq.flip_deg)
    e1 = np.exp(-seq.tr_ms / t1_ms)
    return float(np.sin(alpha) * (1.0 - e1) / (1.0 - np.cos(alpha) * e1))


def fat_phasor(te_ms: float, field_t: float) -> complex:
    """c(TE): the fat signal at echo time ``te_ms`` relative to an all-in-phase fat signal."""
    frequencies_hz = np.asarray(FAT_PEAKS_PPM) * GYROMAGNETIC_MHZ_PER_T * field_t
    phases = 2.0 * np.pi * frequencies_hz * te_ms * 1e-3
    return complex(np.sum(np.asarray(FAT_PEAK_WEIGHTS) * np.exp(1j * phases)))


def tissue_components(tissue: Relaxation, seq: Sequence) -> tuple[float, ...]:
    """The six :data:`COMPONENTS` of a tissue filling a voxel (noiseless, before gain)."""
    water = tissue.density * (1.0 - tissue.fat_fraction) * steady_state(tissue.t1_water_ms, seq)
    fat = tissue.density * tissue.fat_fraction * steady_state(tissue.t1_fat_ms, seq)
    decay_in = np.exp(-seq.te_in_ms / tissue.t2star_ms)
    decay_opp = np.exp(-seq.te_opp_ms / tissue.t2star_ms)
    decay_maps = np.exp(-0.5 * (seq.te_in_ms + seq.te_opp_ms) / tissue.t2star_ms)
    s_in = decay_in * (water + fat * fat_phasor(seq.te_in_ms, seq.field_t))
    s_opp = decay_opp * (water + fat * fat_phasor(seq.te_opp_ms, seq.field_t))
    return (
        float(water * decay_maps),
        float(fat * decay_maps),
        float(s_in.real),
        float(s_in.imag),
        float(s_opp.real),
        float(s_opp.imag),
    )


def channels_from_components(components: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Water, fat, in-phase and opposed-phase magnitudes from mixed components (float32)."""
    return {
        "water": components["water"].astype(np.float32, copy=False),
        "fat": components["fat"].astype(np.float32, copy=False),
        "in": np.hypot(components["in_re"], components["in_im"]).astype(np.float32),
        "opp": np.hypot(components["opp_re"], components["opp_im"]).astype(np.float32),
    }
