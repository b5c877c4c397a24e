"""Shifted renders: a synthetic participant's Dixon images as another scanner or renderer
would deliver them, for testing hip detection on inputs it was not tuned to.

From the generator's noiseless water ``W`` and fat ``F`` (:class:`~myoflow.synth.render.
Phantom`), :func:`shifted_render` redraws what a different sequence, reconstruction and
vendor change, each in its own step:

1. **Tissue brightness** (T1/T2* weighting of another sequence): both channels of a voxel
   are multiplied by ``g(ff)``, a piecewise-linear function of the voxel's noiseless fat
   fraction ``ff = F / (W + F)`` with knots at muscle (``g = 1``), the participant's marrow
   fat fraction (``g_marrow``) and fat (``g_fat``). ``g_marrow`` is solved so that the
   in-phase image's marrow/muscle ratio is :attr:`Appearance.in_phase_marrow_ratio` (the
   report of issue 18: 1.10-1.15 on another renderer; ours 1.68).
2. **Vendor scaling**: water and fat each multiplied by their own factor
   (``water_scale``, ``fat_scale``), so the fat fraction of the raw numbers is off too.
3. **Coil bias per station**: each station its own smooth field (amplitude
   ``bias_amplitude``), discontinuous at the joins, the same for all channels.
4. **Blur and slices**: in-plane Gaussian blur (``blur_mm``) and ``slice_factor``
   neighbouring slices averaged into one (3 -> 6 mm).
5. **Noise and bit depth**: Rician noise of ``sigma = muscle level / snr`` on every
   magnitude image, then each channel rescaled to 12 bits and rounded, as DICOM stores it.

In-phase and opposed-phase are recomputed from the shifted water and fat (``W + F``,
``|W - F|``) before the noise. The hip truth (LPS mm) is unchanged by all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from myoflow.synth.geometry import Grid, Protocol
from myoflow.synth.tissues import AMPLITUDE, FIXED_FAT_FRACTION


@dataclass(frozen=True)
class Appearance:
    """How a shifted render differs from the generator's standard one."""

    in_phase_marrow_ratio: float = 1.1
    fat_brightness: float = 1.0
    water_scale: float = 1.0
    fat_scale: float = 1.0
    bias_amplitude: float = 0.3
    snr: float = 25.0
    blur_mm: float = 0.0
    slice_factor: int = 1


def draw_appearance(rng: np.random.Generator, slice_factor: int = 1) -> Appearance:
    """A random appearance in the ranges issue 18 names (in-phase marrow/muscle 1.0-2.0)."""
    return Appearance(
        in_phase_marrow_ratio=float(rng.uniform(1.0, 2.0)),
        fat_brightness=float(rng.uniform(0.7, 1.3)),
        water_scale=float(np.exp(rng.uniform(np.log(0.2), np.log(5.0)))),
        fat_scale=float(np.exp(rng.uniform(np.log(0.2), np.log(5.0)))),
        bias_amplitude=float(rng.uniform(0.1, 0.4)),
        snr=float(rng.uniform(15.0, 60.0)),
        blur_mm=float(rng.uniform(0.0, 2.0)),
        slice_factor=slice_factor,
    )


def tissue_gain(
    noiseless_ff: np.ndarray, muscle_ff: float, marrow_ff: float, g_marrow: float, g_fat: float
) -> np.ndarray:
    """``g(ff)``: 1 up to the muscle's fat fraction, ``g_marrow`` at the marrow's, ``g_fat``
    at fat's, linear between."""
    knots = [muscle_ff, marrow_ff, FIXED_FAT_FRACTION["fat"]]
    return np.interp(noiseless_ff, knots, [1.0, g_marrow, g_fat]).astype(np.float32)


def station_bias(
    grid: Grid, protocol: Protocol, amplitude: float, rng: np.random.Generator
) -> np.ndarray:
    """A smooth multiplicative field per station (exp of a quadratic), peak +-``amplitude``."""
    bias = np.ones(grid.shape, dtype=np.float32)
    x = np.linspace(-1.0, 1.0, grid.shape[0], dtype=np.float32)[:, None, None]
    y = np.linspace(-1.0, 1.0, grid.shape[1], dtype=np.float32)[None, :, None]
    for station in protocol.stations:
        z = np.linspace(-1.0, 1.0, station.stop - station.start, dtype=np.float32)[None, None, :]
        c = rng.normal(0.0, 1.0, 9).astype(np.float32)
        terms = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * z * z
        terms = terms + c[6] * x * y + c[7] * x * z + c[8] * y * z
        peak = float(np.max(np.abs(terms))) or 1.0
        bias[:, :, station.start : station.stop] = np.exp(terms * (amplitude / peak))
    return bias


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    real = signal + rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    return np.hypot(real, rng.normal(0.0, sigma, signal.shape).astype(np.float32))


def to_12_bits(image: np.ndarray) -> np.ndarray:
    """Rescaled so the 99.9th percentile is 3000, rounded and clipped to 0..4095."""
    scale = 3000.0 / max(float(np.percentile(image, 99.9)), 1e-6)
    return np.clip(np.round(image * scale), 0, 4095).astype(np.float32)


def shifted_render(
    water: np.ndarray,
    fat: np.ndarray,
    participant: dict,
    protocol: Protocol,
    appearance: Appearance,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], Grid, dict[str, float]]:
    """The four Dixon channels of a shifted render, their grid and measured ratios.

    Args:
        water, fat: the generator's noiseless stitched water and fat (``Phantom``).
        participant: the cohort row (``ff_muscle``, ``marrow_ff``).
        protocol: the protocol the phantom was rendered on (grid, stations).
        appearance: what to change.
        rng: noise and bias.

    Returns:
        ``{"water", "fat", "in", "opp"}`` arrays, the (possibly thicker-sliced) grid, and
        the noiseless in-phase and fat-image marrow/muscle ratios of the render.
    """
    a, b = appearance.water_scale, appearance.fat_scale
    muscle_ff, marrow_ff = float(participant["ff_muscle"]), float(participant["marrow_ff"])
    muscle_w, muscle_f = AMPLITUDE["muscle"] * (1 - muscle_ff), AMPLITUDE["muscle"] * muscle_ff
    marrow_w, marrow_f = AMPLITUDE["marrow"] * (1 - marrow_ff), AMPLITUDE["marrow"] * marrow_ff
    g_marrow = (
        appearance.in_phase_marrow_ratio
        * (a * muscle_w + b * muscle_f)
        / (a * marrow_w + b * marrow_f)
    )
    total = water + fat
    noiseless_ff = np.where(total > 0, fat / np.maximum(total, 1e-6), 0.0)
    gain = tissue_gain(noiseless_ff, muscle_ff, marrow_ff, g_marrow, appearance.fat_brightness)
    bias = station_bias(protocol.grid, protocol, appearance.bias_amplitude, rng)
    w, f = a * water * gain * bias, b * fat * gain * bias
    channels = {"water": w, "fat": f, "in": w + f, "opp": np.abs(w - f)}
    grid = protocol.grid
    sigma_px = appearance.blur_mm / np.asarray(grid.spacing_mm[:2])
    factor = appearance.slice_factor
    for name, image in channels.items():
        if appearance.blur_mm > 0:
            image = ndimage.gaussian_filter(image, (*sigma_px, 0.0))
        if factor > 1:
            nz = image.shape[2] // factor
            image = image[:, :, : nz * factor].reshape(*image.shape[:2], nz, factor).mean(axis=3)
        channels[name] = image
    if factor > 1:
        origin = grid.affine_lps() @ np.array([0.0, 0.0, (factor - 1) / 2, 1.0])
        grid = Grid(
            (*grid.shape[:2], grid.shape[2] // factor),
            (*grid.spacing_mm[:2], grid.spacing_mm[2] * factor),
            tuple(origin[:3]),
        )
    sigma = (a * muscle_w + b * muscle_f) / appearance.snr
    delivered = {name: to_12_bits(rician(image, sigma, rng)) for name, image in channels.items()}
    ratios = {
        "in_phase_marrow_muscle": g_marrow
        * (a * marrow_w + b * marrow_f)
        / (a * muscle_w + b * muscle_f),
        "fat_marrow_muscle": g_marrow * marrow_f / muscle_f,
    }
    return delivered, grid, ratios
