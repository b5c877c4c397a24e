"""Soft (partial-volume) training targets of model labels on a crop grid.

Model outputs are side-agnostic muscles (:data:`myoflow.measure.metrics.MUSCLES`): channel ``m``
of side ``s``'s target is the label ``{m}_{s}`` only (:func:`side_label_values`). Each
label's binary mask is averaged over a box the size of a crop voxel, centred on every
voxel of the label grid (:func:`partial_volume_kernel`), then resampled linearly onto the
crop grid (:func:`soft_targets`): a crop voxel's target is about the fraction of it
inside the muscle. A coarse-grid model thus learns partial volume, and its
probabilities, resampled back to the stitched grid and thresholded at 0.5, give
sub-voxel boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from myoflow.core.grid import lps_axes
from myoflow.core.labels import LABELS, MUSCLES
from myoflow.segment.crop import CropGeometry, to_crop


def check_labels(labels: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``labels`` are distinct names of :data:`MUSCLES`."""
    unknown = [name for name in labels if name not in MUSCLES]
    if unknown or not labels or len(set(labels)) != len(labels):
        raise ValueError(
            f"model labels must be distinct muscles of {list(MUSCLES)}; got {list(labels)}"
        )


def side_label_values(labels: Sequence[str], side: str) -> list[int]:
    """The label-map value of each model label on ``side`` (``LABELS[f"{m}_{side}"]``)."""
    check_labels(labels)
    return [LABELS[f"{name}_{side}"] for name in labels]


def partial_volume_kernel(width_voxels: float) -> np.ndarray:
    """1D weights of a box ``width_voxels`` wide, centred on a voxel, over unit voxels.

    Each weight is the length of the box inside that voxel over the box's width, so the
    weights sum to 1 and filtering a binary mask gives the fraction of a box-sized voxel
    inside it. Symmetric for any width: ``uniform_filter`` with an even size would move
    the mask by half a voxel. Widths up to 1 give ``[1]`` (no smoothing).
    """
    if not width_voxels > 1.0:
        return np.ones(1)
    half = width_voxels / 2.0
    reach = int(np.ceil(half - 0.5))
    offsets = np.arange(-reach, reach + 1, dtype=float)
    inside = np.minimum(offsets + 0.5, half) - np.maximum(offsets - 0.5, -half)
    weights = np.clip(inside, 0.0, None)
    return weights / weights.sum()


def _footprint(
    geometry: CropGeometry, affine_ras: np.ndarray, shape: Sequence[int], margin: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Half-open index box of a volume that covers the crop plus ``margin`` voxels."""
    _, lps = lps_axes(affine_ras)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in geometry.shape], indexing="ij"))
    points = geometry.affine_lps[:3, :3] @ corners.reshape(3, -1) + geometry.affine_lps[:3, 3:4]
    index = np.linalg.solve(lps[:3, :3], points - lps[:3, 3:4])
    low = np.maximum(np.floor(index.min(axis=1)).astype(int) - margin, 0)
    high = np.minimum(np.ceil(index.max(axis=1)).astype(int) + margin + 1, np.asarray(shape))
    return low, high


def soft_targets(
    label_map: np.ndarray,
    affine_ras: np.ndarray,
    geometry: CropGeometry,
    values: Sequence[int],
) -> np.ndarray:
    """Partial-volume targets of ``values`` on a crop grid: (len(values), X, Y, Z) float32.

    Args:
        label_map: integer label volume, i -> L, j -> P, k -> S.
        affine_ras: its voxel -> RAS mm affine.
        geometry: the crop (from :func:`myoflow.segment.crop.crop_geometry`).
        values: one label value per output channel.

    Each channel is the binary mask of its value, box-filtered to the crop voxel size
    (:func:`partial_volume_kernel` per axis) and resampled linearly onto the crop.
    """
    spacing, _ = lps_axes(affine_ras)
    crop_spacing = np.abs(np.diag(geometry.affine_lps[:3, :3]))
    kernels = [partial_volume_kernel(w) for w in crop_spacing / spacing]
    margin = np.array([len(k) // 2 + 1 for k in kernels])
    low, high = _footprint(geometry, affine_ras, label_map.shape, margin)
    out = np.zeros((len(values), *geometry.shape), dtype=np.float32)
    if np.any(high <= low):
        return out
    block = np.asarray(label_map)[tuple(slice(a, b) for a, b in zip(low, high, strict=True))]
    shift = np.eye(4)
    shift[:3, 3] = low
    block_affine = np.asarray(affine_ras, dtype=float) @ shift
    for channel, value in enumerate(values):
        mask = (block == value).astype(np.float32)
        if not mask.any():
            continue
        for axis, kernel in enumerate(kernels):
            if len(kernel) > 1:
                mask = ndimage.correlate1d(mask, kernel, axis=axis, mode="constant")
        out[channel] = to_crop(mask, block_affine, geometry, order=1)
    return np.clip(out, 0.0, 1.0)
