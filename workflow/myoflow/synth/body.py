"""The body layer: skin, subcutaneous fat, body-wall muscle and the trunk's contents.

Everything that is not a discrete bone or muscle shape is derived from the real body
outline: subcutaneous fat is the rim within ``sat`` mm of the skin (in-plane distance),
the body wall a band of muscle under it, and the core depends on the level: muscle in
the legs, hips and neck, organs and visceral fat in the abdomen, lungs in the chest.
Boundaries are soft (partial volume) so voxels at tissue edges mix their neighbours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy.special import ndtr, ndtri

from myoflow.synth.body_frame import DIAPHRAGM_ABOVE_HIP_MM, BodyFrame
from myoflow.synth.geometry import Grid
from myoflow.synth.tissues import water_fat


def inside_distance_mm(body: np.ndarray, grid: Grid) -> np.ndarray:
    """In-plane distance (mm) from each body voxel to the nearest voxel outside the body.

    Computed slice by slice: the field of view cuts the body at its top and bottom, and
    a 3D distance would wrongly put fat on those cut faces.
    """
    out = np.empty(body.shape, dtype=np.float32)
    for k in range(body.shape[2]):
        out[:, :, k] = ndimage.distance_transform_edt(body[:, :, k], sampling=grid.spacing_mm[:2])
    return out


def sat_profile_mm(frame: BodyFrame, h_mm: np.ndarray) -> np.ndarray:
    """Subcutaneous fat thickness (mm) by height above the hips: thick at hips, thin at the neck."""
    k = frame.k
    shoulder = frame.shoulder_z_mm - frame.z_hip
    levels = [
        -400 * k,
        -100 * k,
        0.0,
        60 * k,
        250 * k,
        DIAPHRAGM_ABOVE_HIP_MM * k,
        shoulder - 40 * k,
        shoulder,
    ]
    factors = [0.55, 0.8, 1.15, 1.1, 1.0, 0.75, 0.55, 0.35]
    return frame.sat_mm * np.interp(h_mm, levels, factors)


def _soft_step(distance_mm: np.ndarray, edge_mm: np.ndarray | float, width_mm: float) -> np.ndarray:
    """0 before ``edge_mm``, 1 after, with a linear ramp one voxel wide (partial volume)."""
    return np.clip((distance_mm - edge_mm) / width_mm + 0.5, 0.0, 1.0).astype(np.float32)


def visceral_fat_share(
    shape: tuple[int, ...], vat_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """A smooth random texture: the share of visceral fat per voxel, averaging ``vat_fraction``."""
    coarse_shape = tuple(max(2, n // 6) for n in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 1.0)
    coarse /= coarse.std() or 1.0
    field = ndimage.zoom(
        coarse.astype(np.float32),
        [n / c for n, c in zip(shape, coarse_shape, strict=True)],
        order=1,
    )
    threshold = ndtri(1.0 - np.clip(vat_fraction, 0.01, 0.99))
    return ndtr((field - threshold) / 0.35).astype(np.float32)


def body_layer(
    body: np.ndarray,
    depth: np.ndarray,
    grid: Grid,
    frame: BodyFrame,
    targets: Mapping[str, float],
    rng: np.random.Generator,
    signal: Callable[[str], Sequence[float]] | None = None,
) -> tuple[np.ndarray, ...]:
    """Noiseless signal of the body layer (float32, grid shape), one array per component.

    ``depth`` is :func:`inside_distance_mm` of ``body``. ``signal(tissue)`` gives each
    tissue's components (default: water and fat of :func:`water_fat`); they are mixed
    linearly, so any components that partial volumes mix linearly may be rendered.
    """
    k = frame.k
    h = grid.axis_mm(2) - frame.z_hip
    sat = sat_profile_mm(frame, h)[None, None, :]
    wall = np.where(h > DIAPHRAGM_ABOVE_HIP_MM * k, 15.0 * k, 12.0 * k)[None, None, :]
    width = float(grid.spacing_mm[0])
    skin = ndimage.gaussian_filter(body.astype(np.float32), (0.6, 0.6, 0.0))
    under_fat = _soft_step(depth, sat, width)
    core = _soft_step(depth, sat + wall, width)

    if signal is None:

        def signal(tissue: str) -> Sequence[float]:
            return water_fat(tissue, targets)

    shoulder = frame.shoulder_z_mm - frame.z_hip
    abdomen = ((h > 40 * k) & (h <= DIAPHRAGM_ABOVE_HIP_MM * k))[None, None, :]
    thorax = ((h > DIAPHRAGM_ABOVE_HIP_MM * k) & (h < shoulder - 30 * k))[None, None, :]
    share = visceral_fat_share(body.shape, float(targets["vat_fraction"]), rng)
    out = []
    for fat_c, mus_c, org_c, lung_c in zip(
        signal("fat"), signal("muscle"), signal("visceral"), signal("lung"), strict=True
    ):
        core_c = np.where(
            abdomen, share * fat_c + (1 - share) * org_c, np.where(thorax, lung_c, mus_c)
        )
        inner_c = (1 - core) * mus_c + core * core_c
        out.append((skin * ((1 - under_fat) * fat_c + under_fat * inner_c)).astype(np.float32))
    return tuple(out)
