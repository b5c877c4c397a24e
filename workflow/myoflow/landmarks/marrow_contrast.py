"""The in-phase signal over its local soft-tissue level: where marrow is, for hip detection.

Step 1 of :mod:`myoflow.landmarks.hip_detection`. :func:`local_contrast` works on the in-phase
signal ``water + fat`` (unchanged by a fat-water swap), block-averaged to about
:data:`WORKING_SPACING_MM`, and divides it by a Gaussian-weighted local mean of the soft
tissue under the skin fat, which removes the coil bias. Marrow is ~1.45, fat ~1.6,
muscle 1, organs ~0.85; marrow is bright tissue not continuous with the skin fat
(:func:`skin_fat_mask`). The result (:class:`Contrast`) samples the contrast at
stitched-grid resolution for the sphere fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

WORKING_SPACING_MM = (4.0, 4.0, 6.0)
"""Detection runs on the stitched grid block-averaged to about this spacing; the sphere
fit samples the stitched grid itself."""
LOCAL_MEAN_SIGMA_MM = 25.0
SKIN_DEPTH_MM = 8.0
"""Marrow is only looked for this far inside the skin (in-plane)."""
SKIN_FAT_REACH_MM = 25.0
"""How far in 3D fat still counts as continuous with the subcutaneous fat (skin folds)."""
DARK_CONTRAST = 0.5
FAT_CONTRAST_FIRST_PASS = 1.1
"""Fat against the plain local mean of the body: ~1.2 in an obese thigh, ~1.5 at a hip."""
MARROW_CONTRAST = 1.2
"""Contrast above which tissue is marrow (or fat); also the edge level of the sphere fit."""


def block_mean(volume: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Average non-overlapping blocks of ``factors`` voxels (trailing partial blocks dropped)."""
    shape = [n // f for n, f in zip(volume.shape, factors, strict=True)]
    trimmed = volume[: shape[0] * factors[0], : shape[1] * factors[1], : shape[2] * factors[2]]
    blocks = trimmed.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)


@dataclass(frozen=True)
class Contrast:
    """The in-phase signal on the stitched grid, and on the working grid (blocks of
    ``factors`` voxels): its local soft-tissue mean, contrast, body, interior and marrow."""

    signal: np.ndarray
    spacing_mm: np.ndarray
    factors: tuple[int, int, int]
    local_mean: np.ndarray
    contrast: np.ndarray
    body: np.ndarray
    interior: np.ndarray
    marrow: np.ndarray

    @property
    def work_spacing_mm(self) -> np.ndarray:
        return self.spacing_mm * np.asarray(self.factors)

    def sample(self, points_mm: np.ndarray) -> np.ndarray:
        """Contrast at stitched-grid resolution at points (N, 3), in mm from voxel 0."""
        index = (points_mm / self.spacing_mm).T
        signal = ndimage.map_coordinates(self.signal, index, order=1, mode="nearest")
        factors = np.asarray(self.factors, dtype=float)[:, None]
        work_index = (index - (factors - 1) / 2) / factors
        mean = ndimage.map_coordinates(self.local_mean, work_index, order=1, mode="nearest")
        return signal / np.maximum(mean, 1e-6)

    def to_stitched_mm(self, work_index: np.ndarray) -> np.ndarray:
        """Working-grid voxel index -> mm from stitched voxel 0 (block centres)."""
        factors = np.asarray(self.factors, dtype=float)
        return (np.asarray(work_index) * factors + (factors - 1) / 2) * self.spacing_mm


def body_mask(signal: np.ndarray) -> np.ndarray:
    """The body: foreground above a fifth of the bright end of the signal, holes (lungs,
    gas, cortex) filled slice by slice, largest connected part only."""
    positive = signal[signal > 0]
    if positive.size == 0:
        return np.zeros(signal.shape, dtype=bool)
    foreground = ndimage.binary_opening(signal > 0.2 * float(np.percentile(positive, 99.0)))
    for k in range(foreground.shape[2]):
        foreground[:, :, k] = ndimage.binary_fill_holes(foreground[:, :, k])
    labels, count = ndimage.label(foreground)
    if count == 0:
        return foreground
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def in_plane_depth_mm(body: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """Distance (mm) from each body voxel to the skin within its axial slice."""
    depth = np.zeros(body.shape, dtype=np.float32)
    for k in np.flatnonzero(body.any(axis=(0, 1))):
        depth[:, :, k] = ndimage.distance_transform_edt(body[:, :, k], sampling=spacing_mm[:2])
    return depth


def weighted_mean(
    values: np.ndarray, where: np.ndarray, sigma_mm: float, spacing_mm: np.ndarray
) -> np.ndarray:
    """Gaussian-weighted local mean of ``values`` over the voxels ``where`` is set.

    The mean is smooth on the scale of ``sigma_mm``, so it is computed on blocks of 2 x 2
    x 2 voxels and interpolated back (8 times less filtering).
    """
    weight = where.astype(np.float32)
    coarse_sum = block_mean(values * weight, (2, 2, 2))
    coarse_weight = block_mean(weight, (2, 2, 2))
    sigma = sigma_mm / (2.0 * np.asarray(spacing_mm))
    numerator = ndimage.gaussian_filter(coarse_sum, sigma, truncate=3.0)
    mean = numerator / np.maximum(ndimage.gaussian_filter(coarse_weight, sigma, truncate=3.0), 1e-3)
    fine = ndimage.zoom(mean, 2, order=1, grid_mode=True, mode="nearest")
    # Trailing odd voxels were left out of the blocks: repeat the last block for them.
    return np.pad(fine, [(0, n - m) for n, m in zip(values.shape, fine.shape, strict=True)], "edge")


def skin_fat_mask(bright: np.ndarray, interior: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """Bright tissue that is fat reaching in from the skin.

    Fat is subcutaneous when it joins the skin within its axial slice (however thick),
    or lies within ``SKIN_FAT_REACH_MM`` of such fat in 3D (skin folds look like islands
    in one slice). Connectivity is not followed further in 3D: somewhere along a body,
    marrow, visceral and subcutaneous fat all touch.
    """
    skin_fat = np.zeros_like(bright)
    for k in np.flatnonzero(bright.any(axis=(0, 1))):
        labels, _ = ndimage.label(bright[:, :, k])
        at_skin = np.unique(labels[bright[:, :, k] & ~interior[:, :, k]])
        skin_fat[:, :, k] = np.isin(labels, at_skin[at_skin > 0])
    steps = max(1, int(round(SKIN_FAT_REACH_MM / float(np.min(spacing_mm)))))
    return ndimage.binary_dilation(skin_fat, iterations=steps, mask=bright)


def local_contrast(water: np.ndarray, fat: np.ndarray, spacing_mm: np.ndarray) -> Contrast:
    """In-phase signal over the local level of the soft tissue under the skin fat.

    Dividing by a local mean removes the smooth coil bias. The mean leaves out the fat
    under the skin, whose share varies from a lean hip to an obese thigh and would drag
    marrow below its threshold, and dark tissue (lungs, gas, cortex), which would make
    its neighbours look bright; both are found against the plain local mean first.
    """
    signal = np.asarray(water, dtype=np.float32) + np.asarray(fat, dtype=np.float32)
    factors = tuple(
        max(1, int(target / s + 0.01))
        for target, s in zip(WORKING_SPACING_MM, spacing_mm, strict=True)
    )
    work = block_mean(signal, factors)  # type: ignore[arg-type]
    spacing = spacing_mm * np.asarray(factors)
    body = body_mask(work)
    interior = in_plane_depth_mm(body, spacing) >= SKIN_DEPTH_MM
    first = work / np.maximum(weighted_mean(work, body, LOCAL_MEAN_SIGMA_MM, spacing), 1e-6)
    fat_layer = skin_fat_mask(body & (first > FAT_CONTRAST_FIRST_PASS), interior, spacing)
    soft = body & ~fat_layer & (first > DARK_CONTRAST)
    mean = weighted_mean(work, soft, LOCAL_MEAN_SIGMA_MM, spacing)
    contrast = np.where(body, work / np.maximum(mean, 1e-6), 0.0).astype(np.float32)
    bright = (contrast > MARROW_CONTRAST) & body
    marrow = bright & interior & ~skin_fat_mask(bright, interior, spacing)
    return Contrast(
        signal, np.asarray(spacing_mm, float), factors, mean, contrast, body, interior, marrow
    )  # type: ignore[arg-type]
