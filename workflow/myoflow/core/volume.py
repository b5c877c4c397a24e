"""A 3-D image with its patient-space geometry, as read from one DICOM series.

Axis convention (the one every stage downstream relies on): ``array[i, j, k]`` is the
voxel in DICOM column ``i`` (along ImageOrientationPatient[0:3]) and row ``j`` (along
ImageOrientationPatient[3:6]) of slice ``k``, where slices are ordered by increasing
position along the slice normal (row direction x column direction). ``affine_lps`` maps
``(i, j, k, 1)`` to patient LPS millimetres, the DICOM patient convention; NIfTI files
get the RAS affine ``diag(-1, -1, 1, 1) @ affine_lps``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from myoflow.core.io import save_nifti

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Flips the first two patient axes: LPS millimetres <-> RAS millimetres."""

INT16_TARGET_MAX = 30000
"""Stored int16 value of the largest absolute voxel value (a margin below 32767)."""


@dataclass(frozen=True, eq=False)
class Volume:
    """One 3-D image and where its voxels sit in the patient.

    Attributes:
        array: float32 voxel values, shape (ni, nj, nk): i = DICOM column, j = DICOM row,
            k = slice in order of increasing position along the slice normal.
        affine_lps: 4x4 float64 matrix, voxel index (i, j, k, 1) -> patient LPS mm.
        echo: the echo number when the series interleaved several echoes, else None.
    """

    array: np.ndarray
    affine_lps: np.ndarray
    echo: int | None = None

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a volume is 3-D, got shape {self.array.shape}")
        affine = np.asarray(self.affine_lps, dtype=np.float64)
        if affine.shape != (4, 4) or not np.allclose(affine[3], [0, 0, 0, 1]):
            raise ValueError("affine_lps must be a 4x4 affine matrix")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError("affine_lps is singular")
        object.__setattr__(self, "affine_lps", affine)

    def affine_ras(self) -> np.ndarray:
        """Return the 4x4 voxel index -> patient RAS mm matrix (the NIfTI convention)."""
        return LPS_TO_RAS @ self.affine_lps

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return np.linalg.norm(self.affine_lps[:3, :3], axis=0)

    @property
    def origin_lps_mm(self) -> np.ndarray:
        """LPS position in mm of the centre of voxel (0, 0, 0)."""
        return self.affine_lps[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the LPS unit vectors of the i, j and k axes."""
        return self.affine_lps[:3, :3] / self.spacing_mm

    def to_nifti(
        self, path: str | os.PathLike[str], *, dtype: Literal["int16", "float32"] = "int16"
    ) -> None:
        """Write the volume as NIfTI-1 (``.nii`` or ``.nii.gz``) atomically.

        ``int16`` stores ``round(value / slope)`` with ``scl_slope = max|value| / 30000``
        and ``scl_inter = 0`` (zero stays exactly zero); readers that apply the scaling
        get every voxel back to within ``max|value| / 60000``, under 1e-4 of the maximum.
        ``float32`` stores the values unchanged. The header carries geometry, data type,
        scaling and a fixed ``descrip``, never anything read from the DICOM headers.

        Raises:
            ValueError: ``dtype`` is neither ``"int16"`` nor ``"float32"``.
            myoflow.core.io.OutputError: the file could not be written.
        """
        data = np.asarray(self.array, dtype=np.float32)
        if dtype == "float32":
            stored, slope = data, 1.0
        elif dtype == "int16":
            stored, slope = int16_scaled(data)
        else:
            raise ValueError(f"dtype must be 'int16' or 'float32', got {dtype!r}")
        echo = "" if self.echo is None else f" echo {self.echo}"
        save_nifti(path, stored, self.affine_ras(), descrip=f"myoflow{echo}", scl_slope=slope)


def int16_scaled(data: np.ndarray) -> tuple[np.ndarray, float]:
    """Quantise float values to int16 with a zero intercept.

    Returns:
        (int16 array, slope) with ``array * slope`` within ``slope / 2`` of ``data`` and
        the largest absolute value stored as ``INT16_TARGET_MAX``; slope 1 for all zeros.
    """
    peak = float(np.max(np.abs(data))) if data.size else 0.0
    slope = peak / INT16_TARGET_MAX if peak > 0 else 1.0
    stored = np.rint(data / np.float32(slope))
    return np.clip(stored, -32768, 32767).astype(np.int16), slope
