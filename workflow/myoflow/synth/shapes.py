"""Tubular shapes made of axial ellipses, and their rasterisation with supersampling.

Every bone and muscle of the phantom is an :class:`EllipseStack`: at each height z its
axial cross-section is an ellipse (centre, semi-axes, rotation), varying smoothly along
z. Areas and volumes of one stack are analytic (pi * a * b), which is what lets targets
such as the psoas maximum CSA be met exactly; overlaps between stacks are resolved by
painting order on a supersampled canvas, and the truth is counted on that canvas.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from myoflow.synth.geometry import Grid


@dataclass(frozen=True)
class EllipseStack:
    """A shape whose axial cross-section at height z (LPS mm) is an ellipse.

    Parameters are sampled densely at increasing heights ``z_mm`` and interpolated
    linearly in between; outside ``[z_mm[0], z_mm[-1]]`` the shape is absent. ``theta``
    (radians) rotates the ``a`` axis from +x towards +y.
    """

    name: str
    tissue: str
    z_mm: np.ndarray
    cx_mm: np.ndarray
    cy_mm: np.ndarray
    a_mm: np.ndarray
    b_mm: np.ndarray
    theta: np.ndarray

    def at(self, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """Interpolated (cx, cy, a, b, theta) at heights ``z`` (inside the extent)."""
        return tuple(
            np.interp(z, self.z_mm, values)
            for values in (self.cx_mm, self.cy_mm, self.a_mm, self.b_mm, self.theta)
        )

    def scaled(self, factor: float) -> EllipseStack:
        """The same stack with both semi-axes multiplied by ``factor`` (area by factor**2)."""
        return replace(self, a_mm=self.a_mm * factor, b_mm=self.b_mm * factor)

    def area_mm2(self, z: np.ndarray) -> np.ndarray:
        """Analytic cross-sectional area at heights ``z`` (0 outside the extent)."""
        z = np.asarray(z, dtype=float)
        _, _, a, b, _ = self.at(z)
        inside = (z >= self.z_mm[0]) & (z <= self.z_mm[-1])
        return np.where(inside, np.pi * a * b, 0.0)

    def volume_ml(self, samples: int = 4001) -> float:
        """Analytic volume of the stack alone (no overlaps), in ml."""
        z = np.linspace(self.z_mm[0], self.z_mm[-1], samples)
        return float(np.trapezoid(self.area_mm2(z), z)) / 1000.0


def stack(
    name: str, tissue: str, z_mm, cx_mm, cy_mm, a_mm, b_mm, theta=0.0, dense: int = 0
) -> EllipseStack:
    """Build a stack from control points, optionally resampled smoothly to ``dense`` levels.

    Control points are interpolated with a shape-preserving cubic (PCHIP), so paths bend
    smoothly without overshooting between anatomical landmarks.
    """
    z = np.asarray(z_mm, dtype=float)
    order = np.argsort(z)
    columns = [
        np.broadcast_to(np.asarray(v, dtype=float), z.shape)[order]
        for v in (cx_mm, cy_mm, a_mm, b_mm, theta)
    ]
    z = z[order]
    if dense and len(z) > 2:
        from scipy.interpolate import PchipInterpolator

        z_dense = np.linspace(z[0], z[-1], dense)
        columns = [PchipInterpolator(z, c)(z_dense) for c in columns]
        z = z_dense
    columns[2] = np.maximum(columns[2], 0.0)
    columns[3] = np.maximum(columns[3], 0.0)
    return EllipseStack(name, tissue, z, *columns)


def subsample_centres(
    grid: Grid, axis: int, factor: int, start: int = 0, stop: int | None = None
) -> np.ndarray:
    """Patient coordinates (mm) of the sub-voxel sample centres along one axis."""
    stop = grid.shape[axis] if stop is None else stop
    centres = grid.axis_mm(axis)[start:stop]
    offsets = ((np.arange(factor) + 0.5) / factor - 0.5) * grid.spacing_mm[axis]
    return (centres[:, None] + offsets[None, :]).ravel()


def paint(
    canvas: np.ndarray,
    value: int,
    shape: EllipseStack,
    xs: np.ndarray,
    ys: np.ndarray,
    zs: np.ndarray,
) -> None:
    """Set ``canvas`` samples inside ``shape`` to ``value`` (later paints win).

    ``canvas`` has shape (len(xs), len(ys), len(zs)); xs, ys, zs are sample coordinates
    (mm, increasing). Only the shape's bounding box is evaluated.
    """
    in_z = np.flatnonzero((zs >= shape.z_mm[0]) & (zs <= shape.z_mm[-1]))
    if in_z.size == 0:
        return
    z_sel = zs[in_z]
    cx, cy, a, b, theta = shape.at(z_sel)
    reach = np.maximum(a, b)
    x_lo, x_hi = np.searchsorted(xs, [np.min(cx - reach), np.max(cx + reach)])
    y_lo, y_hi = np.searchsorted(ys, [np.min(cy - reach), np.max(cy + reach)])
    if x_lo >= x_hi or y_lo >= y_hi:
        return
    dx = xs[x_lo:x_hi, None, None] - cx[None, None, :]
    dy = ys[None, y_lo:y_hi, None] - cy[None, None, :]
    cos, sin = np.cos(theta), np.sin(theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (dx * cos + dy * sin) / a
        v = (dy * cos - dx * sin) / b
        inside = (u * u + v * v) <= 1.0
    inside &= (a > 0) & (b > 0)
    region = canvas[x_lo:x_hi, y_lo:y_hi, in_z[0] : in_z[-1] + 1]
    region[inside] = value


@dataclass(frozen=True)
class Chunk:
    """Supersampled labels of slices ``k0 .. k1 - 1``: canvas values index the shapes + 1."""

    k0: int
    k1: int
    labels: np.ndarray  # uint8, shape (nx*f, ny*f, (k1-k0)*f)


def render_chunks(
    shapes: Sequence[EllipseStack],
    grid: Grid,
    factor: int = 2,
    chunk_slices: int = 8,
    allowed: np.ndarray | None = None,
) -> Iterator[Chunk]:
    """Rasterise ``shapes`` in painting order, ``chunk_slices`` slices at a time.

    Each grid voxel holds ``factor**3`` samples; a sample belongs to the last shape in
    ``shapes`` that contains it (0 = none). Samples in voxels where ``allowed`` (bool,
    grid shape) is False stay 0. Chunks bound the memory of the canvas.
    """
    if len(shapes) > 254:
        raise ValueError("at most 254 shapes fit a uint8 canvas")
    xs = subsample_centres(grid, 0, factor)
    ys = subsample_centres(grid, 1, factor)
    for k0 in range(0, grid.shape[2], chunk_slices):
        k1 = min(k0 + chunk_slices, grid.shape[2])
        zs = subsample_centres(grid, 2, factor, k0, k1)
        canvas = np.zeros((xs.size, ys.size, zs.size), dtype=np.uint8)
        for value, shape in enumerate(shapes, start=1):
            paint(canvas, value, shape, xs, ys, zs)
        if allowed is not None:
            canvas[~upsample(allowed[:, :, k0:k1], factor)] = 0
        yield Chunk(k0, k1, canvas)


def upsample(mask: np.ndarray, factor: int) -> np.ndarray:
    """Repeat every voxel ``factor`` times along each axis (grid -> supersample lattice)."""
    for axis in range(3):
        mask = np.repeat(mask, factor, axis=axis)
    return mask


def block_mean(samples: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor``-cubed blocks of a supersampled array back onto the grid.

    Summing strided views axis by axis is several times faster than one ``mean`` over
    the axes of a 6-D reshaped view, which numpy cannot vectorise well.
    """
    total = samples.astype(np.float32, copy=False)
    for axis in range(3):
        index = [slice(None)] * 3
        parts = []
        for offset in range(factor):
            index[axis] = slice(offset, None, factor)
            parts.append(total[tuple(index)])
        total = np.add.reduce(parts) if factor > 1 else parts[0]
    return total / np.float32(factor**3)
