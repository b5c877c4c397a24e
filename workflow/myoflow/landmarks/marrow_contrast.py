"""Where marrow is, for hip detection: a calibrated fat fraction of water and fat together.

Step 1 of :mod:`myoflow.landmarks.hip_detection`. Marrow is fat: whatever a scanner,
vendor or renderer does to the brightness of its images, a femoral head is a ball that is
mostly fat inside muscle that is mostly water. :func:`marrow_map` therefore works on the
ratio of the two Dixon channels a delivery always has, never on the in-phase level (whose
marrow/muscle ratio ranges from about 1.0 to 2.0 between protocols and renderers):

- **Fat fraction, calibrated per participant.** The log ratio ``L = log(fat / water)`` of
  each voxel cancels everything that multiplies both channels alike: the receive-coil bias
  (per station or smooth), the brightness of a tissue (T1 weighting), the rescale slope.
  A vendor's scaling of one channel against the other only adds a constant to ``L``, so
  ``L`` is measured against the participant's own two tissue classes: the modes of ``L``
  over the body's water-dominant tissue (muscle, organs: ``L_water``) and fat-dominant
  tissue (subcutaneous and visceral fat: ``L_fat``), split by Otsu's threshold. The
  **fatness** ``(L - L_water) / (L_fat - L_water)`` is 0 for muscle and 1 for fat in
  every participant; marrow (signal fat fraction 0.3-0.9) lies at about 0.35-0.8.
- **Dark tissue is not fat.** Where a voxel holds little signal, the ratio means nothing
  and fatness is 0: the cortex around a head reads as the edge it is. Signal is measured
  channel by channel against the local level of the tissue that channel is bright in,
  ``water / water level of water-dominant tissue + fat / fat level of fat-dominant
  tissue`` (muscle about 1.1, marrow 0.5-2, cortex 0.15-0.5), and a voxel under
  :data:`DARK_LEVEL` of that is dark. Never the plain sum ``water + fat``: a scanner that
  stores the fat channel 10 x smaller than water (or a marrow that is dim in a T1 weighting)
  makes marrow as dark as cortex in the sum, though its fat is ten times the cortex's.
- **Marrow** is fatty tissue (fatness above :data:`MARROW_FATNESS`) deeper than
  :data:`SKIN_DEPTH_MM` under the skin. Fat is not told from marrow here (a fatty
  femoral head and fat have the same fat fraction); the sphere fit does that, by shape.

Everything is computed on the stitched grid block-averaged to about
:data:`WORKING_SPACING_MM` (so 2.2 x 2.2 x 3 mm and 4.5 x 4.5 x 6 mm grids give nearly
the same working grid); :meth:`MarrowMap.sample` gives fatness at stitched resolution
for the sphere fit.
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
DARK_LEVEL = 0.35
"""Voxels whose :func:`signal` (each channel over its tissue's local level, summed) is
below this are dark (cortex, gas): fatness 0. Within 40 mm of the hips of the four
phantoms of ``tests/landmarks`` rendered standard, dim, bright and random: marrow at
least 0.46 (5th percentile, bright; medians 0.8-1.9), cortex medians 0.16-0.49 (partial
volumes at 4.5 mm), muscle medians 1.1-1.2."""
MARROW_FATNESS = 0.2
"""Fatness above which bright tissue counts as fatty (marrow or fat): muscle is 0 (noise
+-0.1 on the working grid), marrow of fat fraction 0.3 about 0.35."""
CHANNEL_FLOOR = 0.01
"""Added to each channel before the log ratio, as a share of that channel's 99th
percentile in the body: keeps noise-level voxels finite and is the same share whatever
the channel's scaling."""


def block_mean(volume: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Average non-overlapping blocks of ``factors`` voxels (trailing partial blocks dropped)."""
    shape = [n // f for n, f in zip(volume.shape, factors, strict=True)]
    trimmed = volume[: shape[0] * factors[0], : shape[1] * factors[1], : shape[2] * factors[2]]
    blocks = trimmed.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)


@dataclass(frozen=True)
class FatCalibration:
    """One participant's log(fat / water) of its two tissue classes, and channel floors."""

    log_ratio_water: float
    log_ratio_fat: float
    water_floor: float
    fat_floor: float

    def fatness(self, water: np.ndarray, fat: np.ndarray) -> np.ndarray:
        """0 for the participant's water-dominant tissue, 1 for its fat, linear in log(F/W)."""
        log_ratio = np.log((fat + self.fat_floor) / (water + self.water_floor))
        span = max(self.log_ratio_fat - self.log_ratio_water, 1e-3)
        return ((log_ratio - self.log_ratio_water) / span).astype(np.float32)


@dataclass(frozen=True)
class MarrowMap:
    """Water and fat on the stitched grid; on the working grid (blocks of ``factors``
    voxels) the local levels of water in water-dominant tissue and of fat in fat-dominant
    tissue, fatness, body, interior and marrow."""

    water: np.ndarray
    fat: np.ndarray
    spacing_mm: np.ndarray
    factors: tuple[int, int, int]
    calibration: FatCalibration
    water_level: np.ndarray
    fat_level: np.ndarray
    fatness: np.ndarray
    body: np.ndarray
    interior: np.ndarray
    marrow: np.ndarray

    @property
    def work_spacing_mm(self) -> np.ndarray:
        return self.spacing_mm * np.asarray(self.factors)

    def sample(self, points_mm: np.ndarray) -> np.ndarray:
        """Fatness at stitched-grid resolution at points (N, 3), in mm from voxel 0."""
        index = (points_mm / self.spacing_mm).T
        water = ndimage.map_coordinates(self.water, index, order=1, mode="nearest")
        fat = ndimage.map_coordinates(self.fat, index, order=1, mode="nearest")
        factors = np.asarray(self.factors, dtype=float)[:, None]
        work_index = (index - (factors - 1) / 2) / factors
        levels = [
            ndimage.map_coordinates(level, work_index, order=1, mode="nearest")
            for level in (self.water_level, self.fat_level)
        ]
        fatness = self.calibration.fatness(water, fat)
        return np.where(signal(water, fat, *levels) >= DARK_LEVEL, fatness, 0.0)

    def to_stitched_mm(self, work_index: np.ndarray) -> np.ndarray:
        """Working-grid voxel index -> mm from stitched voxel 0 (block centres)."""
        factors = np.asarray(self.factors, dtype=float)
        return (np.asarray(work_index) * factors + (factors - 1) / 2) * self.spacing_mm


def signal(
    water: np.ndarray, fat: np.ndarray, water_level: np.ndarray, fat_level: np.ndarray
) -> np.ndarray:
    """How much signal a voxel holds: water over the local water level of water-dominant
    tissue plus fat over the local fat level of fat-dominant tissue (muscle and fat about
    1). Unchanged by a scaling of either channel and by a bias shared by both."""
    return water / np.maximum(water_level, 1e-6) + fat / np.maximum(fat_level, 1e-6)


def body_mask(signal: np.ndarray) -> np.ndarray:
    """The body: foreground above a tenth of the bright end of the signal, holes (lungs,
    gas, cortex) filled slice by slice, largest connected part only."""
    positive = signal[signal > 0]
    if positive.size == 0:
        return np.zeros(signal.shape, dtype=bool)
    foreground = ndimage.binary_opening(signal > 0.1 * float(np.percentile(positive, 99.0)))
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
    fine = upsample_twice(mean)
    # Trailing odd voxels were left out of the blocks: repeat the last block for them.
    return np.pad(fine, [(0, n - m) for n, m in zip(values.shape, fine.shape, strict=True)], "edge")


def upsample_twice(volume: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``volume`` onto a grid of half its voxel size, each voxel
    split in two along every axis, the edges held (what ``ndimage.zoom(volume, 2,
    order=1, grid_mode=True, mode="nearest")`` gives to float32 rounding, in about a
    quarter of its CPU time).

    Fine voxel ``2i`` lies a quarter voxel before coarse voxel ``i``, ``2i + 1`` a quarter
    after: each is ``3/4`` of voxel ``i`` and ``1/4`` of its neighbour on that side.
    """
    out = np.asarray(volume, dtype=np.float32)
    for axis in range(out.ndim):
        moved = np.moveaxis(out, axis, 0)
        before = np.concatenate([moved[:1], moved[:-1]])
        after = np.concatenate([moved[1:], moved[-1:]])
        fine = np.empty((2 * len(moved), *moved.shape[1:]), dtype=np.float32)
        fine[0::2] = 0.75 * moved + 0.25 * before
        fine[1::2] = 0.75 * moved + 0.25 * after
        out = np.moveaxis(fine, 0, axis)
    return np.ascontiguousarray(out)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the split maximising the between-class variance."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:][int(np.argmax(between))])


def histogram_mode(values: np.ndarray, bins: int = 128) -> float:
    """The most frequent value of ``values`` (a lightly smoothed histogram's peak)."""
    counts, edges = np.histogram(values, bins=bins)
    smooth = ndimage.gaussian_filter1d(counts.astype(float), 2.0)
    peak = int(np.argmax(smooth))
    return float((edges[peak] + edges[peak + 1]) / 2)


def calibrate_fat(water: np.ndarray, fat: np.ndarray, tissue: np.ndarray) -> FatCalibration:
    """The log(fat / water) modes of the water- and fat-dominant parts of ``tissue``.

    Raises:
        ValueError: fewer than 100 voxels of tissue, or not two classes of tissue.
    """
    if np.count_nonzero(tissue) < 100:
        raise ValueError("too little tissue with signal to calibrate the fat fraction")
    floors = [
        CHANNEL_FLOOR * max(float(np.percentile(c[tissue], 99.0)), 1e-6) for c in (water, fat)
    ]
    log_ratio = np.log((fat[tissue] + floors[1]) / (water[tissue] + floors[0]))
    split = otsu_threshold(log_ratio)
    low, high = log_ratio[log_ratio < split], log_ratio[log_ratio >= split]
    if low.size < 50 or high.size < 50:
        raise ValueError("the body's tissue is not split into water- and fat-dominant parts")
    return FatCalibration(histogram_mode(low), histogram_mode(high), floors[0], floors[1])


def marrow_map(water: np.ndarray, fat: np.ndarray, spacing_mm: np.ndarray) -> MarrowMap:
    """Fatness of the body, its soft-tissue level and the marrow, from water and fat.

    Raises:
        ValueError: the volume holds no body with both water- and fat-dominant tissue.
    """
    water = np.maximum(np.asarray(water, dtype=np.float32), 0.0)
    fat = np.maximum(np.asarray(fat, dtype=np.float32), 0.0)
    factors = tuple(
        max(1, int(target / s + 0.01))
        for target, s in zip(WORKING_SPACING_MM, spacing_mm, strict=True)
    )
    work_water = block_mean(water, factors)  # type: ignore[arg-type]
    work_fat = block_mean(fat, factors)  # type: ignore[arg-type]
    # Each channel over its bright end: a first, scale-free water + fat for the body and
    # for which voxels hold tissue enough to calibrate on.
    total = sum(c / max(float(np.percentile(c, 99.0)), 1e-6) for c in (work_water, work_fat))
    spacing = spacing_mm * np.asarray(factors)
    body = body_mask(total)
    interior = in_plane_depth_mm(body, spacing) >= SKIN_DEPTH_MM
    plain = total / np.maximum(weighted_mean(total, body, LOCAL_MEAN_SIGMA_MM, spacing), 1e-6)
    tissue = body & (plain > DARK_LEVEL)
    calibration = calibrate_fat(work_water, work_fat, tissue)
    fatness = calibration.fatness(work_water, work_fat)
    water_level, fat_level = (
        weighted_mean(channel, tissue & part, LOCAL_MEAN_SIGMA_MM, spacing)
        for channel, part in ((work_water, fatness < 0.5), (work_fat, fatness >= 0.5))
    )
    lit = body & (signal(work_water, work_fat, water_level, fat_level) >= DARK_LEVEL)
    fatness = np.where(lit, fatness, 0.0).astype(np.float32)
    fatty = fatness > MARROW_FATNESS
    marrow = fatty & interior
    return MarrowMap(
        water,
        fat,
        np.asarray(spacing_mm, float),
        factors,  # type: ignore[arg-type]
        calibration,
        water_level,
        fat_level,
        fatness,
        body,
        interior,
        marrow,
    )
