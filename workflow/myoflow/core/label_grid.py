"""The voxel grid of a label volume as the metrics see it, and what metrics share.

:func:`voxel_geometry` reads from a 4x4 voxel -> RAS mm affine the voxel size, the voxel
volume and whether k-slices are axial planes (:class:`VoxelGeometry`). The error metrics
raise (:class:`MetricsError`) and the type of a record's values (:data:`Value`) live here
too, so that :mod:`myoflow.measure.metrics` and :mod:`myoflow.measure.csa_profile` share them
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from myoflow.core.errors import MyoflowError

AXIAL_TOLERANCE = 1e-3
"""Largest z component of the i and j axes, relative to their length, that counts as axial."""

Value = float | int | bool | list[float] | None
"""One value of a metrics record (JSON: number, boolean, list of numbers or null)."""


class MetricsError(MyoflowError):
    """Metrics cannot be computed from these inputs; the message says why."""


@dataclass(frozen=True)
class VoxelGeometry:
    """What the metrics need to know about the grid (see :func:`voxel_geometry`)."""

    spacing_mm: tuple[float, float, float]  # lengths of the i, j, k axes
    voxel_volume_ml: float  # |det| of the affine's 3x3 part, in ml
    axial: bool  # i and j axes horizontal: every k-slice is an axial plane
    slab_height_mm: float  # z distance between consecutive CSA planes

    @property
    def voxel_area_mm2(self) -> float:
        """Area of one voxel's cut by an axial plane (exact when ``axial``)."""
        return self.voxel_volume_ml * 1000.0 / self.slab_height_mm


def voxel_geometry(affine: np.ndarray) -> VoxelGeometry:
    """Voxel size, volume and whether k-slices are axial, from a 4x4 affine."""
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise MetricsError(f"the affine must be a finite 4x4 matrix, got shape {a.shape}")
    m = a[:3, :3]
    det = float(abs(np.linalg.det(m)))
    if det < 1e-9:
        raise MetricsError("the affine is singular (zero voxel volume)")
    spacing = np.linalg.norm(m, axis=0)
    axial = bool(np.all(np.abs(m[2, :2]) / spacing[:2] < AXIAL_TOLERANCE))
    return VoxelGeometry(
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        voxel_volume_ml=det / 1000.0,
        axial=axial,
        # Axial grid: k-slices are |a_zk| apart in z; otherwise slabs one slice spacing high.
        slab_height_mm=float(abs(m[2, 2]) if axial else spacing[2]),
    )
