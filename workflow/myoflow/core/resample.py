"""Linear resampling under an axis-aligned index map, one axis at a time.

Why: crops and the coarse-to-fine step of the cascade map voxel indices by a diagonal
matrix (both grids are axis-aligned; a mirrored side only flips a sign), yet
``scipy.ndimage.affine_transform`` treats every map as a general one and interpolates
each output voxel from its 8 neighbours anew, per channel. On the shipped cascade that
was 2.6 of 8.25 s per participant on the 2-core CPU machine (fine crops 1.26 s, coarse
probabilities put on the fine grid 1.30 s). Trilinear interpolation under a diagonal map
is three 1-D linear interpolations in turn, each a gather and a weighted sum over whole
slabs, and channels share the weights.

:func:`linear_resample` takes ``affine_transform``'s arguments (``order=1,
prefilter=False``) and gives its result to float32 precision, with the two modes used
here; a map that is not diagonal goes to scipy. Nearest-neighbour resampling (label
maps) stays with scipy, whose rounding the exact crop round trip relies on.

:func:`separable_linear` is the interpolation itself, at any fractional positions along
each axis; it is also what stitching (:mod:`myoflow.ingest.stitch`) puts each station on
the common grid with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

SCIPY_MODE = {"constant": "grid-constant", "nearest": "nearest"}
"""``outside`` and the scipy mode that interpolates the same way beyond the input."""


def linear_resample(
    volume: np.ndarray,
    matrix: np.ndarray,
    offset: Sequence[float],
    output_shape: Sequence[int],
    outside: Literal["constant", "nearest"] = "constant",
) -> np.ndarray:
    """Trilinear resampling: ``out[o] = volume(matrix @ o + offset)``, o an output index.

    Args:
        volume: (X, Y, Z), or (C, X, Y, Z) for channels sharing the map.
        matrix: 3 x 3, output index -> input index (as ``affine_transform``'s).
        offset: its translation.
        output_shape: (X', Y', Z').
        outside: beyond the input, interpolate with zeros ("constant", scipy's
            ``grid-constant`` with ``cval=0``) or with the edge values ("nearest").

    Returns:
        (X', Y', Z') or (C, X', Y', Z'), float32 (float64 for a float64 volume).
    """
    volume = np.asarray(volume)
    volume = volume.astype(np.result_type(volume.dtype, np.float32), copy=False)
    channels = volume[None] if volume.ndim == 3 else volume
    if channels.ndim != 4:
        raise ValueError(f"expected (X, Y, Z) or (C, X, Y, Z), got {volume.shape}")
    matrix = np.asarray(matrix, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    if np.any(matrix != np.diag(np.diag(matrix))):
        out = np.stack(
            [
                ndimage.affine_transform(
                    channel,
                    matrix,
                    offset,
                    output_shape=tuple(output_shape),
                    order=1,
                    mode=SCIPY_MODE[outside],
                    cval=0.0,
                    prefilter=False,
                )
                for channel in channels
            ]
        )
    else:
        along = [matrix[a, a] * np.arange(output_shape[a]) + offset[a] for a in range(3)]
        out = separable_linear(channels, along, outside)
        # Whole-voxel shifts give slices (of the input, or of a copy of its block): a new
        # array in one piece, as interpolated results are.
        contiguous = out.flags.c_contiguous or out.flags.f_contiguous
        if not contiguous or np.may_share_memory(out, volume):
            out = out.copy(order="K")
    return out if volume.ndim == 4 else out[0]


def separable_linear(
    volume: np.ndarray,
    coordinates: Sequence[np.ndarray],
    outside: Literal["constant", "nearest"] = "constant",
    snap_voxels: float = 0.0,
) -> np.ndarray:
    """Trilinear values of ``volume`` on the grid ``coordinates[0] x coordinates[1] x
    coordinates[2]``: three 1-D linear interpolations in turn, channels sharing them.

    Args:
        volume: (X, Y, Z), or (C, X, Y, Z) for channels.
        coordinates: per axis, the fractional indices to sample at (1-D).
        outside: beyond the input, interpolate with zeros ("constant") or with the edge
            values ("nearest"), as :func:`linear_resample`.
        snap_voxels: along an axis whose positions are all this close to voxel centres,
            take those voxels' values as they are (no interpolation; a slice of the input
            where they are consecutive). 0: only positions exactly on voxel centres.

    Returns:
        (X', Y', Z') or (C, X', Y', Z') as ``volume``, float32 (float64 for a float64
        volume); Fortran-ordered where the block of ``volume`` read is. Along axes whose
        positions are consecutive voxels it is a slice, so it may be a view of
        ``volume`` (only read it) and need not be contiguous.
    """
    volume = np.asarray(volume)
    volume = volume.astype(np.result_type(volume.dtype, np.float32), copy=False)
    out = volume[None] if volume.ndim == 3 else volume
    if out.ndim != 4 or len(coordinates) != 3:
        raise ValueError(f"expected (X, Y, Z) or (C, X, Y, Z) and 3 axes, got {volume.shape}")
    along = [np.asarray(c, dtype=np.float64).reshape(-1) for c in coordinates]
    # Shrinking axes first keeps the intermediate slabs small. (For growing ones the
    # order hardly matters: both sides' coarse probabilities onto their fine crops
    # took 0.19-0.21 s in the order x, y, z and 0.18-0.19 s in z, y, x, median of 8.)
    ratios = [along[a].size / out.shape[1 + a] for a in range(3)]
    order = sorted(range(3), key=lambda a: ratios[a])
    for axis in range(3):
        out, along[axis] = _needed_range(out, 1 + axis, along[axis])
    axes = [1, 2, 3]
    if out.flags.f_contiguous and not out.flags.c_contiguous:
        # A stitched volume read from NIfTI, or a station, is in Fortran order, and np.take
        # copies such an array to C order first: the transpose is C-ordered already (and
        # the result transposed back is Fortran-ordered again).
        out, axes = out.T, [2, 1, 0]
    else:
        # Gathering from a C-ordered copy of a crop's block of a Fortran-ordered volume:
        # both sides' coarse crops took 0.15 s, from the block itself 0.59 s.
        out = np.ascontiguousarray(out)
    for axis in order:
        out = _interpolate_axis(out, axes[axis], along[axis], outside, snap_voxels)
    if axes[0] == 2:
        out = out.T
    return out if volume.ndim == 4 else out[0]


def _needed_range(
    array: np.ndarray, axis: int, coordinates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The slab of ``array`` along ``axis`` that interpolation at ``coordinates`` reads (a
    view), and the coordinates relative to it: a crop reads a small part of a stitched
    volume. Neighbours beyond the input stay beyond the slab, so both modes still hold."""
    size = array.shape[axis]
    if len(coordinates) == 0:
        return array, coordinates
    low = int(np.clip(np.floor(coordinates.min()), 0, size - 1))
    high = int(np.clip(np.floor(coordinates.max()) + 2, low + 1, size))
    where = [slice(None)] * array.ndim
    where[axis] = slice(low, high)
    return array[tuple(where)], coordinates - low


def _interpolate_axis(
    array: np.ndarray, axis: int, coordinates: np.ndarray, outside: str, snap_voxels: float
) -> np.ndarray:
    """Linear interpolation of ``array`` along ``axis`` at (fractional) ``coordinates``."""
    size = array.shape[axis]
    if outside == "nearest":  # beyond the input, the edge value
        coordinates = np.clip(coordinates, 0, size - 1)
    nearest = np.rint(coordinates)
    if np.abs(coordinates - nearest).max(initial=0.0) <= snap_voxels:
        index = nearest.astype(np.intp)
        if index.size == 0 or (index.min() >= 0 and index.max() < size):
            start = int(index[0]) if index.size else 0
            if np.array_equal(index, np.arange(start, start + index.size)):
                where = [slice(None)] * array.ndim
                where[axis] = slice(start, start + index.size)
                return array[tuple(where)]
            return np.take(array, index, axis=axis)
    below = np.floor(coordinates)
    weight_above = (coordinates - below).astype(array.dtype)
    below = below.astype(np.intp)
    above = below + 1
    weight_below = 1.0 - weight_above
    if outside == "constant":  # neighbours beyond the input count as 0
        weight_below[(below < 0) | (below >= size)] = 0.0
        weight_above[(above < 0) | (above >= size)] = 0.0
    shape = [1] * array.ndim
    shape[axis] = len(coordinates)
    low = np.take(array, np.clip(below, 0, size - 1), axis=axis)
    high = np.take(array, np.clip(above, 0, size - 1), axis=axis)
    return low * weight_below.reshape(shape) + high * weight_above.reshape(shape)
