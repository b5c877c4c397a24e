"""Smooth multiplicative fields over a volume: the coil sensitivity that the synthetic
generator renders and that training's intensity augmentation imitates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def smooth_field(shape: Sequence[int], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth positive field over a 3-D ``shape`` (float32, mean ~1, within
    exp(+-``amplitude``)).

    A second-order polynomial in normalised coordinates with coefficients drawn from
    ``rng``, exponentiated: smooth, positive, and separable enough to evaluate cheaply on
    a full station.
    """
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    c = rng.normal(0.0, 1.0, 9).astype(np.float32)
    terms = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * z * z
    terms = terms + c[6] * x * y + c[7] * x * z + c[8] * y * z
    peak = float(np.max(np.abs(terms))) or 1.0
    return np.exp(terms * (amplitude / peak)).astype(np.float32)
