"""Stitch the stations of one channel onto one common grid: pure functions on arrays.

Every station is an array with its 4x4 voxel -> LPS mm affine (as read from DICOM; see
:mod:`myoflow.core.volume`). The common grid (:func:`common_grid`) is axis-aligned in LPS
with our array convention (i -> L, j -> P, k -> S; its NIfTI affine is
``diag(-sx, -sy, sz)`` with the x and y origin negated, see
:class:`myoflow.core.grid.Grid`) and covers the voxel centres of all stations. Each
station is resampled onto it with trilinear interpolation (:func:`sample`), and where
stations overlap along z their weights ramp linearly across the overlap
(:func:`blend_weights`), so no seam remains where one station hands over to the next.

Which grid points a station covers is decided once, by :func:`coverage` (its voxel box,
give or take :data:`COVER_TOLERANCE_VOXELS`): the blend weights, the sampling mask and the
normaliser all take it from there. Deciding it apart in millimetres and in voxels once let
float rounding (a 4.5 mm station whose affine gives 4.499999999999999 mm) count a grid
slice on a station's edge in for its weights and out for its values (issue 22).

Why trilinear by hand rather than SimpleITK or ``scipy.ndimage.map_coordinates``:
stations of biobank protocols are axis-aligned, and trilinear interpolation of an
axis-aligned array is three 1-D interpolations in a row, each a gather and a
multiply-add. Resampling one UK Biobank station (224 x 174 x 64) onto a shifted
2 x 2.1 x 2.9 mm grid (224 x 174 x 70 points; bench/convert.py) takes 0.033 s this way,
0.041 s with SimpleITK's ResampleImageFilter on one thread (0.022 s on two; numpy copies
in and out included), 0.10 s with ``ndimage.affine_transform`` and 0.14 s with
``ndimage.map_coordinates``. Shard jobs run on one thread, and on a grid of the
stations' own lattice (the UK Biobank default on UK Biobank data) the separable path
only copies slices. The separable interpolation is
:func:`myoflow.core.resample.separable_linear`, the one that crops and the cascade use too.
Oblique stations take ``map_coordinates``, whose edge handling matches (tested: both paths
agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from myoflow.core.errors import MyoflowError
from myoflow.core.grid import Grid
from myoflow.core.resample import separable_linear

UKBB_SPACING_MM = (500.0 / 224.0, 500.0 / 224.0, 3.0)
"""Voxel size of the UK Biobank stitched grid (2.232142857 x 2.232142857 x 3 mm)."""

GAP_TOLERANCE_MM = 0.1
"""Stations whose z extents are further apart than this do not touch; a narrower gap is
bridged: each station covers up to half of it along z (:func:`coverage`), so no grid
slice in it is left empty."""

MIN_WEIGHT = 1e-5
"""Smallest weight of a station wherever it covers z (see :func:`blend_weights`)."""

SNAP_VOXELS = 1e-3
"""Sample positions this close to a voxel centre (in voxels) take its value unchanged:
DICOM prints positions and spacings to a few decimals, so a grid of the stations' own
spacing is off their voxel centres by ~1e-7 voxels, and interpolating that would only
cost time (the error of snapping is below 1e-3 of a voxel-to-voxel difference)."""

COVER_TOLERANCE_VOXELS = 1e-3
"""How far beyond its half-voxel edge (in its voxels) a point still counts as covered by a
station (taking its edge value): grid slices land exactly on stations' edges (a 3 mm grid
and 4.5 mm stations), where positions and spacings read from DICOM put them either side
by ~1e-15 mm. Well below any real gap or overlap (1e-3 of a 3 mm voxel is 3 um)."""

_AXIS_ALIGNED_TOL = 1e-6
"""Relative size of off-axis affine terms that still counts as axis-aligned."""


class StitchError(MyoflowError):
    """Stations cannot be stitched; ``reason`` is ``station_gap``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ZRange(NamedTuple):
    """The LPS z (mm) a station spans.

    Attributes:
        low: z of its lowest voxel centre.
        high: z of its highest voxel centre.
        margin: half a voxel along z: the station also covers ``low - margin`` to
            ``high + margin`` (taking its edge values there).
    """

    low: float
    high: float
    margin: float


def z_range_mm(shape: Sequence[int], affine_lps: np.ndarray) -> ZRange:
    """The z range of a station with array ``shape`` and voxel -> LPS mm ``affine_lps``."""
    affine = np.asarray(affine_lps, dtype=float)
    z = affine[2, :3] @ _corner_indices(shape) + affine[2, 3]
    return ZRange(float(z.min()), float(z.max()), 0.5 * float(np.abs(affine[2, :3]).sum()))


def _corner_indices(shape: Sequence[int]) -> np.ndarray:
    """(3, 8) voxel indices of the corner voxels of an array of ``shape``."""
    last = np.asarray(shape, dtype=float) - 1
    return np.array(np.meshgrid(*[[0.0, n] for n in last], indexing="ij")).reshape(3, -1)


def check_contiguous(ranges: Sequence[ZRange]) -> None:
    """Check that stations, ordered along z, touch or overlap.

    Raises:
        StitchError: ``station_gap``, naming the two stations (1 = highest) and the gap.
    """
    order = sorted(range(len(ranges)), key=lambda s: -(ranges[s].low + ranges[s].high))
    for rank, (upper, lower) in enumerate(zip(order, order[1:], strict=False), 1):
        bottom = ranges[upper].low - ranges[upper].margin
        top = ranges[lower].high + ranges[lower].margin
        if bottom - top > GAP_TOLERANCE_MM:
            raise StitchError(
                "station_gap",
                f"stations {rank} and {rank + 1} (head first) are {bottom - top:.1f} mm "
                f"apart (z {top:.1f} to {bottom:.1f} mm is not imaged)",
            )


def common_grid(
    shapes: Sequence[Sequence[int]],
    affines: Sequence[np.ndarray],
    spacing_mm: Sequence[float] | None = UKBB_SPACING_MM,
) -> Grid:
    """The axis-aligned LPS grid covering the voxel centres of all stations.

    Args:
        shapes: each station's array shape.
        affines: each station's voxel -> LPS mm affine.
        spacing_mm: voxel size (x, y, z) of the grid in mm, or None for the stations' own
            (native) spacing along each LPS axis (the finest where stations differ).

    Returns:
        A grid whose points span the stations' voxel centres along each axis: exactly
        where the extent is a whole number of voxels (always so at native spacing, whose
        grid points then coincide with the stations' voxel centres), otherwise centred
        within it, less than one voxel short.
    """
    lows, highs, native = [], [], []
    for shape, affine in zip(shapes, affines, strict=True):
        affine = np.asarray(affine, dtype=float)
        points = affine[:3, :3] @ _corner_indices(shape) + affine[:3, 3:4]
        lows.append(points.min(axis=1))
        highs.append(points.max(axis=1))
        # The voxel step along each LPS axis: the station axis that points most along it.
        native.append(np.abs(affine[:3, :3]).max(axis=1))
    low, high = np.min(lows, axis=0), np.max(highs, axis=0)
    spacing = np.min(native, axis=0) if spacing_mm is None else np.asarray(spacing_mm, float)
    steps = (high - low) / spacing
    whole = np.abs(steps - np.rint(steps)) < 1e-3
    count = np.where(whole, np.rint(steps), np.floor(steps)).astype(int) + 1
    origin = low + (steps - (count - 1)) * spacing / 2
    return Grid(
        tuple(int(n) for n in count),
        tuple(float(s) for s in spacing),
        tuple(float(o) for o in origin),
    )


def blend_weights(
    z_mm: np.ndarray, ranges: Sequence[ZRange], covers: np.ndarray | None = None
) -> np.ndarray:
    """Weights of each station at each z: linear ramps across overlaps, summing to 1.

    A station weighs 1 where it alone covers z. Where the slices of two stations
    overlap, from the upper station's lowest voxel centre to the lower station's
    highest, the upper station's weight rises linearly from 0 to 1 and the lower one's
    falls from 1 to 0, so each contributes only where it has slices on both sides.
    Stations that merely touch hand over halfway between their edge slices.

    Wherever a station covers z its weight is at least :data:`MIN_WEIGHT` (before the
    columns are normalised): where a neighbour's field of view does not reach a point
    in-plane, the station's own value is then still taken in full (:func:`stitch`
    normalises by the weights of the stations covering each point), while elsewhere
    the floor changes values by a negligible 1e-5 of the stations' difference.

    Args:
        z_mm: LPS z (mm) of the grid's slices.
        ranges: per station, from :func:`z_range_mm`.
        covers: (n_stations, n_z) bool, which of the slices each station covers
            (:attr:`Coverage.slices`); default: those within its ``ranges`` entry and
            margin, by the same rule (:func:`covered`, half a voxel being the margin).

    Returns:
        (n_stations, n_z) float64 weights; each column sums to 1 where any station covers
        that z, else 0.
    """
    z = np.asarray(z_mm, dtype=float)
    if covers is None:
        covers = np.array([_covered_z(z, this) for this in ranges], dtype=bool)
    covers = np.asarray(covers, dtype=bool).reshape(len(ranges), z.size)
    raw = np.zeros((len(ranges), z.size))
    for s, this in enumerate(ranges):
        inside = covers[s]
        weight = inside.astype(float)
        for t, other in enumerate(ranges):
            if t == s or not np.any(inside & covers[t]):
                continue
            start, stop = max(this.low, other.low), min(this.high, other.high)
            if stop > start:
                rising = np.clip((z - start) / (stop - start), 0.0, 1.0)
            else:  # halfway, a slice within tolerance of it going to the upper station
                tolerance = 2 * COVER_TOLERANCE_VOXELS * min(this.margin, other.margin)
                rising = (z >= (start + stop) / 2 - tolerance).astype(float)
            weight *= rising if this.low + this.high > other.low + other.high else 1 - rising
        raw[s] = np.where(inside, np.maximum(weight, MIN_WEIGHT), 0.0)
    total = raw.sum(axis=0)
    return np.divide(raw, total, out=np.zeros_like(raw), where=total > 0)


def covered(
    index: np.ndarray, size: float, tolerance: float | np.ndarray = COVER_TOLERANCE_VOXELS
) -> np.ndarray:
    """Whether fractional voxel indices along one axis of a station of ``size`` voxels lie
    in it: within half a voxel of its outer voxel centres, give or take ``tolerance``
    voxels (:data:`COVER_TOLERANCE_VOXELS`; along z, :func:`z_tolerance_voxels`). The one
    rule of coverage (see :func:`coverage`)."""
    index = np.asarray(index, dtype=float)
    return (index >= -0.5 - tolerance) & (index <= size - 0.5 + tolerance)


def z_tolerance_voxels(step_mm: float) -> float:
    """The tolerance of :func:`covered` along z for slices ``step_mm`` apart: enough to
    bridge half of a gap :func:`check_contiguous` lets pass."""
    return max(COVER_TOLERANCE_VOXELS, GAP_TOLERANCE_MM / 2 / abs(step_mm))


def _covered_z(z_mm: np.ndarray, z_range: ZRange) -> np.ndarray:
    """:func:`covered` along z for a station known only by its :class:`ZRange`."""
    voxel = 2 * z_range.margin
    return covered(
        (z_mm - z_range.low) / voxel,
        (z_range.high - z_range.low) / voxel + 1,
        z_tolerance_voxels(voxel),
    )


class Coverage(NamedTuple):
    """The points of a grid that a station covers (from :func:`coverage`).

    Attributes:
        slices: (n_z,) bool: the grid's z slices it covers, wholly or in part; consecutive.
        points: bool, (nx, ny, 1) for an axis-aligned station (the grid columns it
            covers, the same in each of its slices) or (nx, ny, n_z) for an oblique one.
    """

    slices: np.ndarray
    points: np.ndarray

    def span(self) -> slice:
        """The slices it covers, as a slice of the grid's z (empty if none)."""
        covering = np.flatnonzero(self.slices)
        if not covering.size:
            return slice(0, 0)
        return slice(int(covering[0]), int(covering[-1]) + 1)

    def mask(self, part: slice | None = None) -> np.ndarray:
        """(nx, ny, n_part) bool: the points it covers among the grid's slices ``part``."""
        part = part if part is not None else slice(0, self.slices.size)
        points = self.points if self.points.shape[2] == 1 else self.points[:, :, part]
        return points & self.slices[part]

    def whole_slices(self) -> bool:
        """Whether each slice it covers, it covers entirely (true if it covers none)."""
        if self.points.shape[2] == 1:
            return bool(self.points.all() or not self.slices.any())
        return bool(self.points[:, :, self.slices].all())


def coverage(shape: Sequence[int], affine_lps: np.ndarray, grid: Grid) -> Coverage:
    """Which points of ``grid`` the station of array ``shape`` and voxel -> LPS mm
    ``affine_lps`` covers: those whose voxel indices are :func:`covered` along every axis,
    i.e. within its voxel box, give or take :data:`COVER_TOLERANCE_VOXELS` (along its
    slice axis, the one nearest LPS z, :func:`z_tolerance_voxels`).

    Stitching decides coverage here only: blend weights (:func:`blend_weights`), the
    mask :func:`sample` returns and the normaliser of :func:`stitch` all follow it.
    """
    affine = np.asarray(affine_lps, dtype=float)
    axes = [grid.axis_mm(0), grid.axis_mm(1), grid.axis_mm(2)]
    permutation = _axis_permutation(affine)
    # Per station axis: the tolerance of coverage, wider along the axis nearest LPS z.
    slice_axis = int(np.abs(affine[2, :3]).argmax())
    tolerance = np.full(3, COVER_TOLERANCE_VOXELS)
    tolerance[slice_axis] = z_tolerance_voxels(float(np.linalg.norm(affine[:3, slice_axis])))
    if permutation is not None:
        index = _separable_indices(affine, axes, permutation)
        inside = [
            covered(index[a], shape[permutation[a]], tolerance[permutation[a]]) for a in range(3)
        ]
        points = inside[0][:, None, None] & inside[1][None, :, None]
        return Coverage(inside[2] & points.any(), points)
    # Oblique: per point, over the slices its voxel box can reach (with room to spare).
    z_range = z_range_mm(shape, affine)
    reach = (axes[2] >= z_range.low - 2 * z_range.margin) & (
        axes[2] <= z_range.high + 2 * z_range.margin
    )
    points = np.zeros(grid.shape, dtype=bool)
    if reach.any():
        near = slice(int(np.flatnonzero(reach)[0]), int(np.flatnonzero(reach)[-1]) + 1)
        index = _general_indices(affine, [axes[0], axes[1], axes[2][near]])
        size = np.asarray(shape, dtype=float)[:, None]
        inside = np.all(covered(index, size, tolerance[:, None]), axis=0)
        points[:, :, near] = inside.reshape(points[:, :, near].shape)
    return Coverage(points.any(axis=(0, 1)), points)


def sample(
    array: np.ndarray,
    affine_lps: np.ndarray,
    grid: Grid,
    slices: slice | None = None,
    *,
    method: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear values of a station at the points of ``grid`` (some of its z slices).

    Points up to half a voxel beyond the station's outer voxel centres (give or take
    :data:`COVER_TOLERANCE_VOXELS`) take the edge value: the station covers them
    (:func:`coverage`); points further out are outside.

    Args:
        array: the station, (ni, nj, nk).
        affine_lps: its voxel -> LPS mm affine.
        grid: the target grid.
        slices: which z slices of the grid to sample (default all).
        method: ``"separable"`` (axis-aligned stations only), ``"general"``
            (``map_coordinates``, any affine) or ``"auto"`` (separable when possible).

    Returns:
        (values, inside): float32 values of shape (nx, ny, n_slices), and a boolean mask
        broadcastable to it that is False where a point lies outside the station.
    """
    slices = slices or slice(0, grid.shape[2])
    values = _sample_values(array, affine_lps, grid, slices, method)
    return values, coverage(array.shape, affine_lps, grid).mask(slices)


def _sample_values(
    array: np.ndarray, affine_lps: np.ndarray, grid: Grid, slices: slice, method: str
) -> np.ndarray:
    """The values of :func:`sample` (edge values beyond the station)."""
    axes = [grid.axis_mm(0), grid.axis_mm(1), grid.axis_mm(2)[slices]]
    permutation = _axis_permutation(affine_lps)
    if method == "general" or (method == "auto" and permutation is None):
        return _sample_general(array, affine_lps, axes)
    if permutation is None:
        raise ValueError("separable sampling needs an axis-aligned station")
    return _sample_separable(array, affine_lps, axes, permutation)


def _axis_permutation(affine_lps: np.ndarray) -> tuple[int, int, int] | None:
    """For each LPS axis, the station axis along it; None if the station is oblique."""
    matrix = np.abs(np.asarray(affine_lps, dtype=float)[:3, :3])
    along = matrix.argmax(axis=1)
    off_axis = matrix.copy()
    off_axis[np.arange(3), along] = 0
    if sorted(along) != [0, 1, 2] or off_axis.max() > _AXIS_ALIGNED_TOL * matrix.max():
        return None
    return int(along[0]), int(along[1]), int(along[2])


def _separable_indices(
    affine: np.ndarray, axes: list[np.ndarray], permutation: tuple[int, int, int]
) -> list[np.ndarray]:
    """Per grid axis, the fractional indices of its points along the station axis along it."""
    return [(axes[a] - affine[a, 3]) / affine[a, permutation[a]] for a in range(3)]


def _general_indices(affine: np.ndarray, axes: list[np.ndarray]) -> np.ndarray:
    """(3, n_points) fractional station indices of the grid points ``axes`` spans."""
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=0).reshape(3, -1)
    inverse = np.linalg.inv(affine)
    return inverse[:3, :3] @ points + inverse[:3, 3:4]


def _sample_separable(
    array: np.ndarray,
    affine_lps: np.ndarray,
    axes: list[np.ndarray],
    permutation: tuple[int, int, int],
) -> np.ndarray:
    affine = np.asarray(affine_lps, dtype=float)
    values = np.asarray(array, dtype=np.float32).transpose(permutation)
    indices = _separable_indices(affine, axes, permutation)
    return separable_linear(values, indices, "nearest", SNAP_VOXELS)


def _sample_general(
    array: np.ndarray, affine_lps: np.ndarray, axes: list[np.ndarray]
) -> np.ndarray:
    index = _general_indices(np.asarray(affine_lps, dtype=float), axes)
    values = ndimage.map_coordinates(
        np.asarray(array, dtype=np.float32), index, order=1, mode="nearest"
    )
    return values.reshape(tuple(len(a) for a in axes))


def stitch(arrays: Sequence[np.ndarray], affines: Sequence[np.ndarray], grid: Grid) -> np.ndarray:
    """Resample the stations of one channel onto ``grid`` and blend their overlaps.

    Args:
        arrays: the stations' arrays, in any order.
        affines: their voxel -> LPS mm affines.
        grid: the target grid, e.g. from :func:`common_grid`.

    Returns:
        float32 array of ``grid.shape``; 0 where no station covers a point.

    Raises:
        StitchError: stations do not touch along z (``station_gap``).
    """
    ranges = [z_range_mm(a.shape, f) for a, f in zip(arrays, affines, strict=True)]
    check_contiguous(ranges)
    # Coverage, decided once per station: its slices set the blend weights, its points
    # the mask and the normaliser.
    covers = [coverage(a.shape, f, grid) for a, f in zip(arrays, affines, strict=True)]
    weights = blend_weights(grid.axis_mm(2), ranges, np.array([c.slices for c in covers]))
    weights = weights.astype(np.float32)
    # Fortran order, as DICOM volumes and NIfTI files are laid out: whole z slices of
    # the grid are then contiguous, and so are the slabs each station adds to.
    total = np.zeros(grid.shape, dtype=np.float32, order="F")
    # Sum of weights: per slice where every station covers whole slices (the usual case),
    # per point where one covers part of a slice (a narrower field of view in-plane, an
    # oblique station), decided here from the coverage.
    per_point = not all(c.whole_slices() for c in covers)
    norm = np.zeros(grid.shape if per_point else grid.shape[2], dtype=np.float32, order="F")
    for array, affine, cover, weight in zip(arrays, affines, covers, weights, strict=True):
        part = cover.span()
        if part.start == part.stop:
            continue
        values = _sample_values(array, affine, grid, part, "auto")
        if per_point:
            local = cover.mask(part) * weight[part]
            total[:, :, part] += values * local
            norm[:, :, part] += local
        else:
            total[:, :, part] += values * weight[part]
            norm[part] += weight[part]
    return np.divide(total, norm, out=total, where=norm > 0)
