"""A small copy of water and fat for looking at a participant once its stitched channels are
removed (config ``keep.stitched``): ``qc/preview.nii.gz``.

The preview is the water and the fat (a 4-D NIfTI, volume 0 water, volume 1 fat) averaged
over blocks of :data:`PREVIEW_BLOCK` voxels, so about 4.5 x 4.5 x 6 mm on the UK Biobank
grid: enough to see the body, a fat-water swap, a cut field of view or where the muscles
lie (the label map stays at full resolution), in any NIfTI viewer over
``seg/labels.nii.gz`` after resampling. Stored as uint8 scaled to the larger channel's
99.9th percentile (values above it saturate): a picture, not a measurement. It takes
1.7 MB for a full-size UK Biobank participant, against 86 MB for the four channels
(bench/storage.py, docs/storage.md).
"""

from __future__ import annotations

import os

import numpy as np

from myoflow.core.io import save_nifti

PREVIEW_BLOCK = (2, 2, 2)
"""Voxels (i, j, k) averaged into one preview voxel."""

PREVIEW_MAX = 255
"""Largest stored value (uint8)."""


def block_mean(volume: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    """Mean of ``volume`` over blocks of ``block`` voxels (float32); a partial block at the
    far end of an axis is averaged over the voxels it has."""
    out = np.asarray(volume, dtype=np.float32)
    for axis, size in enumerate(block):
        if size == 1:
            continue
        n = out.shape[axis]
        starts = np.arange(0, n, size)
        sums = np.add.reduceat(out, starts, axis=axis)
        counts = np.diff(np.append(starts, n)).astype(np.float32)
        shape = [1] * out.ndim
        shape[axis] = counts.size
        out = sums / counts.reshape(shape)
    return out


def block_affine(affine: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    """The voxel -> world affine of :func:`block_mean`'s grid: voxel (0, 0, 0) at the centre
    of the first block, steps of ``block`` voxels."""
    affine = np.asarray(affine, dtype=float)
    scale = np.diag([*block, 1]).astype(float)
    shift = np.eye(4)
    shift[:3, 3] = (np.asarray(block, dtype=float) - 1) / 2
    return affine @ shift @ scale


def preview_volumes(
    water: np.ndarray, fat: np.ndarray, block: tuple[int, int, int] = PREVIEW_BLOCK
) -> tuple[np.ndarray, float]:
    """Water and fat averaged over ``block`` as one uint8 array (i, j, k, 2), and the slope
    that turns stored values back into signal (signal = stored x slope)."""
    small = np.stack([block_mean(water, block), block_mean(fat, block)], axis=-1)
    top = float(np.percentile(small, 99.9)) if small.size else 0.0
    slope = top / PREVIEW_MAX if top > 0 else 1.0
    stored = np.clip(np.rint(small / slope), 0, PREVIEW_MAX).astype(np.uint8)
    return stored, slope


def write_preview(
    path: str | os.PathLike[str],
    water: np.ndarray,
    fat: np.ndarray,
    affine: np.ndarray,
    block: tuple[int, int, int] = PREVIEW_BLOCK,
) -> None:
    """Write ``qc/preview.nii.gz`` (see the module docstring) atomically."""
    stored, slope = preview_volumes(water, fat, block)
    save_nifti(
        path,
        stored,
        block_affine(affine, block),
        descrip="myoflow preview: water, fat",
        scl_slope=slope,
    )
