"""The psoas major's cross-sectional area along its length, shared by targets and anatomy.

The muscle runs from its insertion at the lesser trochanter (t = 0) to its highest origin
at T12 (t = 1). Its axial cross-sectional area is a skewed bump: a tendon-thin start, the
maximum at the L4-L5 level (t = ``T_MAX``), tapering to nothing at T12. Sampling targets
(max CSA) and rendering anatomy both use this one profile, so the psoas volume implied by
a target maximum CSA and a body height is exact: ``volume = csa_max * length * SHAPE_FACTOR``.
"""

from __future__ import annotations

import numpy as np

T_MAX = 0.55
"""Fraction of the psoas length, from the insertion, at which its CSA peaks (L4-L5)."""

_EPS = 0.08  # keeps a tendon-sized area at the insertion instead of a point
_Q = 3.0

PSOAS_LENGTH_MM_AT_170CM = 340.0
"""Cranio-caudal extent, lesser trochanter to T12, of a 170 cm adult (scales with height)."""

INSERTION_BELOW_HIP_MM_AT_170CM = 55.0
"""How far the lesser trochanter insertion lies below the hip joint centre at 170 cm."""


def relative_csa(t: np.ndarray | float, t_max: float = T_MAX) -> np.ndarray:
    """CSA divided by its maximum at fractions ``t`` (0 insertion .. 1 origin) of length.

    ``t_max`` moves the peak (a randomised shape's profile); the default is the shared
    profile's :data:`T_MAX`.
    """
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    p = _Q * (t_max + _EPS) / (1.0 - t_max)  # puts the maximum exactly at t_max
    rise = ((t + _EPS) / (t_max + _EPS)) ** p
    fall = ((1.0 - t) / (1.0 - t_max)) ** _Q
    return rise * fall


def _shape_factor(samples: int = 200_001) -> float:
    t = np.linspace(0.0, 1.0, samples)
    return float(np.trapezoid(relative_csa(t), t))


SHAPE_FACTOR = _shape_factor()
"""Mean CSA over the length divided by the maximum CSA (dimensionless, about 0.45)."""


def psoas_length_mm(height_cm: np.ndarray | float) -> np.ndarray:
    """Cranio-caudal psoas length in mm for a body height in cm."""
    return PSOAS_LENGTH_MM_AT_170CM * np.asarray(height_cm, dtype=float) / 170.0


def psoas_volume_ml(csa_max_cm2: np.ndarray | float, height_cm: np.ndarray | float) -> np.ndarray:
    """Volume (ml) of one psoas major with the given maximum CSA (cm2) and body height."""
    length_cm = psoas_length_mm(height_cm) / 10.0
    return np.asarray(csa_max_cm2, dtype=float) * length_cm * SHAPE_FACTOR
