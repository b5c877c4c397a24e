"""Binary morphology within slices."""

from __future__ import annotations

import numpy as np


def erode_in_plane(mask: np.ndarray, iterations: int = 1, *, slice_axis: int = 2) -> np.ndarray:
    """Erode a 3-D mask ``iterations`` times within each slice by the 4-connected cross.

    A voxel stays while it and its four in-plane neighbours are set; beyond the edge counts
    as unset. Equal to ``ndimage.binary_erosion(mask, cross, iterations, border_value=0)``
    with ``cross`` the 3 x 3 cross in the plane (one voxel thick along ``slice_axis``), but
    written as shifted ANDs, which keep the memory order of ``mask``, and with 0
    iterations leaving the mask as it is (scipy would erode until nothing changes).

    Args:
        mask: 3-D mask (nonzero = set).
        iterations: how many times to erode.
        slice_axis: the axis across slices: 2 for (i, j, k) arrays (the package
            convention), 0 for (k, j, i).

    Returns:
        bool array of ``mask``'s shape (``mask`` itself for a bool mask and 0 iterations).
    """
    out = np.asarray(mask, dtype=bool)
    if out.ndim != 3:
        raise ValueError(f"expected a 3-D mask, got shape {out.shape}")
    in_plane = [axis for axis in range(3) if axis != slice_axis % 3]
    for _ in range(iterations):
        eroded = out.copy(order="K")
        for axis in in_plane:
            eroded[_along(axis, slice(1, None))] &= out[_along(axis, slice(None, -1))]
            eroded[_along(axis, slice(None, -1))] &= out[_along(axis, slice(1, None))]
            eroded[_along(axis, slice(None, 1))] = False
            eroded[_along(axis, slice(-1, None))] = False
        out = eroded
    return out


def _along(axis: int, where: slice) -> tuple[slice, ...]:
    """Index selecting ``where`` along ``axis`` of a 3-D array, everything along the others."""
    index = [slice(None)] * 3
    index[axis] = where
    return tuple(index)
