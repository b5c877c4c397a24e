"""Regular axial grids in patient coordinates, shared by the generator and the pipeline.

Positions are DICOM patient coordinates (LPS, mm): +x to the patient's left, +y to
posterior, +z to superior. Arrays are indexed (i, j, k) with i -> +x, j -> +y, k -> +z, so
voxel (i, j, k) sits at ``origin + (i, j, k) * spacing``; the NIfTI affine (RAS) of such
an array is ``diag(-sx, -sy, sz)`` with the origin's x and y negated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A regular axial grid in patient LPS coordinates (identity direction)."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0

    def affine_lps(self) -> np.ndarray:
        """4x4 map from voxel index to LPS mm."""
        affine = np.diag([*self.spacing_mm, 1.0])
        affine[:3, 3] = self.origin_lps_mm
        return affine

    def affine_ras(self) -> np.ndarray:
        """4x4 map from voxel index to RAS mm, as NIfTI stores it."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()

    def axis_mm(self, axis: int) -> np.ndarray:
        """Patient coordinates (mm) of the voxel centres along one axis."""
        return self.origin_lps_mm[axis] + self.spacing_mm[axis] * np.arange(self.shape[axis])

    def slab(self, start: int, count: int) -> Grid:
        """The sub-grid of slices ``start .. start + count - 1``."""
        origin = list(self.origin_lps_mm)
        origin[2] += start * self.spacing_mm[2]
        return Grid((self.shape[0], self.shape[1], count), self.spacing_mm, tuple(origin))


def lps_axes(affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spacing (mm) and the voxel -> LPS mm affine of a volume in our array convention.

    Raises:
        ValueError: the affine is not axis-aligned with i -> L, j -> P, k -> S.
    """
    affine = np.asarray(affine_ras, dtype=float)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    matrix = lps[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    off_axis = matrix - np.diag(np.diag(matrix))
    if np.any(np.diag(matrix) <= 0) or np.abs(off_axis).max() > 1e-3 * spacing.max():
        raise ValueError(
            "expected an axis-aligned volume with i -> L, j -> P, k -> S; "
            f"got the RAS affine {affine[:3, :3].round(4).tolist()}"
        )
    return spacing, lps
