"""Shape randomisation of the target muscles beyond the one shared template.

The standard phantom builds every psoas from one CSA profile and aspect ratio, and every
iliacus and gluteus from one set of control points scaled to its volume, so a model can
learn the template. A :class:`ShapeVariation` moves the psoas' CSA peak and changes its
aspect, shifts volume between psoas major and iliacus (the iliopsoas side total stays
the planted one), and deforms every target muscle smoothly along its length: its area by
a low-order random factor and its centre line by a few millimetres, both vanishing at
the ends for the centre line so attachments stay where the skeleton puts them.

Volumes remain exact: the psoas is scaled to its volume analytically (it is painted
last), the others are calibrated on the render lattice as usual
(:func:`myoflow.synth.anatomy.calibrate`), under the bones, which are painted over them
so that a deformed muscle never replaces bone (:func:`myoflow.synth.anatomy.build_shapes`),
and the truth is counted on the supersampled canvas whatever the shapes are. Deformed
shapes can enclose one muscle in another; their label maps trade voxels between labels
(:func:`myoflow.synth.labelmap.count_preserving_labels`) to keep every label's volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import special

from myoflow.synth import psoas_profile
from myoflow.synth.shapes import EllipseStack

TARGETS = ("psoas_major", "iliacus", "gluteus_maximus", "gluteus_medius", "gluteus_minimus")
SIDES = ("left", "right")
HARMONICS = 3

PSOAS_T_MAX = (0.42, 0.68)
PSOAS_ASPECT = (0.95, 1.7)
PSOAS_SHARE_SHIFT_SD = 0.6
"""Logit-scale SD of the shift of the psoas share of each iliopsoas side."""
PSOAS_SHARE_LIMITS = (0.30, 0.88)
AREA_AMPLITUDE = (0.05, 0.30)
"""Log-scale amplitude of the smooth area factor along each muscle."""
SHIFT_MM = (1.0, 6.0)
"""Amplitude of the smooth centre-line shift at 170 cm (psoas: half of it)."""


@dataclass(frozen=True)
class ShapeVariation:
    """One participant's shape parameters; the defaults are the standard template."""

    psoas_t_max: float = psoas_profile.T_MAX
    psoas_aspect: float = 1.25
    psoas_share_shift: float = 0.0
    area_amplitude: float = 0.0
    shift_mm: float = 0.0
    # (target, side, field [area, x, y], harmonic) standard normals
    coefficients: np.ndarray = field(
        default_factory=lambda: np.zeros((len(TARGETS), len(SIDES), 3, HARMONICS))
    )

    def record(self) -> dict[str, float]:
        """Flat ``shape_*`` truth columns."""
        return {
            "shape_psoas_t_max": self.psoas_t_max,
            "shape_psoas_aspect": self.psoas_aspect,
            "shape_psoas_share_shift": self.psoas_share_shift,
            "shape_area_amplitude": self.area_amplitude,
            "shape_shift_mm": self.shift_mm,
        }

    def split_iliopsoas(self, psoas_ml: float, iliacus_ml: float) -> tuple[float, float]:
        """(psoas, iliacus) volumes (ml) with the psoas share shifted, total unchanged."""
        total = psoas_ml + iliacus_ml
        share = special.expit(special.logit(psoas_ml / total) + self.psoas_share_shift)
        share = float(np.clip(share, *PSOAS_SHARE_LIMITS))
        return share * total, (1.0 - share) * total

    def deform(self, shape: EllipseStack, muscle: str, side: str, k: float) -> EllipseStack:
        """``shape`` with its area and centre line smoothly perturbed (its volume changes;
        the caller sizes it again)."""
        c = self.coefficients[TARGETS.index(muscle), SIDES.index(side)]
        z = shape.z_mm
        t = (z - z[0]) / max(float(z[-1] - z[0]), 1e-9)
        n = np.arange(1, HARMONICS + 1)[:, None]
        sines = np.sin(np.pi * n * t[None, :]) / n  # smoother at higher order
        cosines = np.cos(np.pi * n * t[None, :]) / n
        log_area = self.area_amplitude * (c[0] @ (sines + cosines)) / np.sqrt(2 * HARMONICS)
        if muscle == "psoas_major":
            # A field with a slope at the CSA peak moves it (up to 18 mm in 30 draws): zero
            # value and slope there keep the drawn psoas_t_max the peak, as truth records.
            t_max = self.psoas_t_max
            log_area = log_area * ((t - t_max) / max(t_max, 1.0 - t_max)) ** 2
        root = np.exp(0.5 * log_area)  # a and b alike: their ratio stays
        shift = self.shift_mm * k * (0.5 if muscle == "psoas_major" else 1.0)
        return replace(
            shape,
            a_mm=shape.a_mm * root,
            b_mm=shape.b_mm * root,
            cx_mm=shape.cx_mm + shift * (c[1] @ sines) / np.sqrt(HARMONICS),
            cy_mm=shape.cy_mm + shift * (c[2] @ sines) / np.sqrt(HARMONICS),
        )


def draw_shape_variation(rng: np.random.Generator) -> ShapeVariation:
    """Draw a participant's shape variation (pure: the generator's next draws only)."""
    return ShapeVariation(
        psoas_t_max=float(rng.uniform(*PSOAS_T_MAX)),
        psoas_aspect=float(rng.uniform(*PSOAS_ASPECT)),
        psoas_share_shift=float(PSOAS_SHARE_SHIFT_SD * rng.standard_normal()),
        area_amplitude=float(rng.uniform(*AREA_AMPLITUDE)),
        shift_mm=float(rng.uniform(*SHIFT_MM)),
        coefficients=rng.standard_normal((len(TARGETS), len(SIDES), 3, HARMONICS)),
    )
