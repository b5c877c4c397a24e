"""Training augmentation: random shifts and scalings of a crop, as in the UK Biobank paper.

Fitzpatrick, Basty et al. (Sci Rep 2020) trained on each crop plus 7 random affine copies
per epoch: shifts of up to 6 voxels in-plane and 24 out-of-plane on their 2.232 x 2.232
x 3.0 mm grid, and scalings of +-25 % in-plane and +-50 % out-of-plane. Here shifts are
kept in mm (13.4 mm and 72 mm) so the same settings mean the same anatomy on any crop
grid; they are turned into voxels of the crop at hand. Left/right mirroring is not an
augmentation here: it is how the two sides become one side-agnostic sample each
(:func:`myoflow.segment.crop.crop_side`).

Layered as in TorchIO: :func:`random_affine` draws parameters, :func:`affine_matrix`
makes them a deterministic transform, :func:`apply_affine` does the math. Image and soft
targets of one sample go through the same transform with linear interpolation;
:func:`copy_transform` says which transform copy ``n`` of a sample gets in an epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class AugmentSettings:
    """How many random copies of each sample an epoch sees, and how far they may move.

    Shifts are maxima in mm (uniform in [-max, max] per axis); scales are maximal
    relative changes (factor uniform in [1 - s, 1 + s] per axis, each axis drawn
    independently, since bodies differ in width and depth independently).
    """

    copies: int = 7
    shift_in_plane_mm: float = 13.4  # 6 voxels of the paper's grid (2.232 mm)
    shift_out_of_plane_mm: float = 72.0  # 24 voxels of 3 mm
    scale_in_plane: float = 0.25
    scale_out_of_plane: float = 0.5

    def __post_init__(self) -> None:
        if self.copies < 0:
            raise ValueError(f"copies must be >= 0, got {self.copies}")
        if self.shift_in_plane_mm < 0 or self.shift_out_of_plane_mm < 0:
            raise ValueError("shift maxima must be >= 0 mm")
        if not (0 <= self.scale_in_plane < 1 and 0 <= self.scale_out_of_plane < 1):
            raise ValueError("scale changes must lie in [0, 1)")

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class AffineParams:
    """One transform of a crop about its centre.

    ``shift_voxels``: how far the content moves, in crop voxels along (i, j, k).
    ``scale``: magnification of the content per axis (2: everything twice as long).
    """

    shift_voxels: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def is_identity(self) -> bool:
        return all(s == 0 for s in self.shift_voxels) and all(s == 1 for s in self.scale)


def random_affine(
    rng: np.random.Generator, settings: AugmentSettings, spacing_mm: Sequence[float]
) -> AffineParams:
    """Draw one transform for a crop of voxel size ``spacing_mm`` (axes 0, 1 in-plane)."""
    spacing = np.asarray(spacing_mm, dtype=float)
    shift_mm = np.array([settings.shift_in_plane_mm] * 2 + [settings.shift_out_of_plane_mm])
    change = np.array([settings.scale_in_plane] * 2 + [settings.scale_out_of_plane])
    shift = rng.uniform(-1.0, 1.0, 3) * shift_mm / spacing
    scale = 1.0 + rng.uniform(-1.0, 1.0, 3) * change
    return AffineParams(
        tuple(float(v) for v in shift),  # type: ignore[arg-type]
        tuple(float(v) for v in scale),  # type: ignore[arg-type]
    )


def affine_matrix(shape: Sequence[int], params: AffineParams) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset for ``ndimage.affine_transform`` (output index -> input index).

    The content is scaled about the crop centre ``c`` and then shifted: output voxel
    ``x`` shows input point ``c + (x - c - shift) / scale``.
    """
    centre = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    scale = np.asarray(params.scale, dtype=float)
    shift = np.asarray(params.shift_voxels, dtype=float)
    if np.any(scale <= 0):
        raise ValueError(f"scale factors must be positive, got {params.scale}")
    return np.diag(1.0 / scale), centre - (centre + shift) / scale


def apply_affine(array: np.ndarray, params: AffineParams, order: int = 1) -> np.ndarray:
    """Transform every channel of ``array`` (C, X, Y, Z) alike; outside the crop is 0.

    Returns float32. Linear (``order`` 1) keeps soft targets in [0, 1] and images within
    their range. The identity returns a float32 copy without resampling.
    """
    array = np.asarray(array)
    if array.ndim != 4:
        raise ValueError(f"expected (channels, X, Y, Z), got shape {array.shape}")
    if params.is_identity:
        return array.astype(np.float32, copy=True)
    matrix, offset = affine_matrix(array.shape[1:], params)
    out = np.empty(array.shape, dtype=np.float32)
    for channel in range(array.shape[0]):
        ndimage.affine_transform(
            array[channel].astype(np.float32, copy=False),
            matrix,
            offset,
            output=out[channel],
            order=order,
            mode="grid-constant",
            cval=0.0,
            prefilter=False,
        )
    return out


def copy_transform(
    copy: int, rng: np.random.Generator, settings: AugmentSettings, spacing_mm: Sequence[float]
) -> AffineParams:
    """The transform of copy ``copy`` of a sample in one epoch: 0 is the original, copies
    1 to ``settings.copies`` are random (drawn from ``rng``).

    Raises:
        ValueError: ``copy`` is not in 0 .. ``settings.copies``.
    """
    if not 0 <= copy <= settings.copies:
        raise ValueError(f"copy must lie in 0..{settings.copies}, got {copy}")
    return AffineParams() if copy == 0 else random_affine(rng, settings, spacing_mm)
