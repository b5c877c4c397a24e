"""Model-grid crops around each hip, and their exact way back to the stitched grid.

As in the UK Biobank iliopsoas paper, the model sees one array per side, centred near
the hip joint, on a fixed grid (2.232 x 2.232 x 3.0 mm by default). The left side is
mirrored (flipped along i) so that every crop looks like a right side: in both crops axis
0 runs medially, axis 1 posteriorly and axis 2 superiorly.

A crop's geometry is its voxel -> LPS mm affine (:class:`CropGeometry`), built from the
hip landmark and a :class:`CropSpec` (shape, spacing, the crop centre's offset from the
hip, channels, intensity scaling), which is saved in the model's config. The crop's
origin is snapped to the nearest voxel centre of the stitched grid, so when the spacings
agree cropping copies voxels and :func:`uncrop` returns a label map exactly. UK Biobank's
stitched grid is 500/224 = 2.2321 mm in-plane against the model grid's 2.232 mm, so there
the crop drifts by under 0.01 voxel across its 112 columns and is interpolated. Resampling is
linear for images (:func:`myoflow.core.resample.linear_resample`, one axis at a time) and
nearest for labels (``scipy.ndimage.affine_transform``).

Two crop geometries (offsets are (medial, posterior, superior) mm from the hip centre):

- :data:`ILIOPSOAS_CROP`, the paper's 96 x 96 x 192 at 2.232 x 2.232 x 3.0 mm (214 x 214
  x 576 mm), centred (35, 30, 135) mm from the hip: 72 mm lateral to 142 mm medial,
  77 mm anterior to 137 mm posterior, 153 mm below to 423 mm above the hip. The
  iliopsoas runs from the lesser trochanter (~65 mm below the hip at 200 cm) to T12
  (~335 mm above), from ~30 mm lateral of the hip to the lumbar spine, and on a lordotic
  spine up to ~110 mm posterior. On the 40 atlas bodies at 150 and 200 cm
  (``bench/landmarks.py --margins``) it stays at least 25 mm inside every face.
- :data:`GLUTEUS_CROP`, 112 x 112 x 128 at the same spacing (250 x 250 x 384 mm),
  centred (-4, 46, 30) mm: 129 mm lateral to 121 mm medial, 79 mm anterior to 171 mm
  posterior, 162 mm below to 222 mm above. The glutei lie lateral and posterior of the
  hip: the maximus from ~137 mm below to ~147 mm above and up to ~170 mm posterior
  under the buttock, the medius up to the iliac crest (~195 mm above at 200 cm), from
  ~110 mm lateral (greater trochanter) to ~100 mm medial (the maximus reaches the
  sacrum). The iliopsoas crop reaches only 72 mm lateral and 137 mm posterior: on 84
  synthetic sides (14 bodies at 150, 170 and 200 cm) the glutei of 60 % stick out of it,
  by up to 36 mm. On the bench's bodies they stay at least 20 mm inside this crop. A
  single crop for both groups, 112 x 112 x 192 centred (-3, 47, 93), would also do
  (>= 20 mm margins, 1.36 times the paper crop's voxels, against 0.91 for this one);
  the separate crop keeps the paper's iliopsoas crop, and so its published model and
  figures, unchanged.

Intensities: each channel of a crop is scaled so that its 1st percentile maps to 0 and
its 99th to 1 (over voxels inside the stitched field of view; outside is 0), a per-crop
normalisation that removes scanner scaling and most of the coil bias.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from myoflow.core.grid import lps_axes
from myoflow.core.resample import linear_resample
from myoflow.landmarks.record import HipLandmarks

SIDES = ("left", "right")


@dataclass(frozen=True)
class CropSpec:
    """Geometry and intensity scaling of the model's per-side input (saved in its config).

    ``offset_mm`` places the crop centre relative to the hip joint centre, as (medial,
    posterior, superior) mm, the same for both sides (the left side is mirrored).
    """

    name: str = "iliopsoas"
    shape: tuple[int, int, int] = (96, 96, 192)
    spacing_mm: tuple[float, float, float] = (2.232, 2.232, 3.0)
    offset_mm: tuple[float, float, float] = (35.0, 30.0, 135.0)
    channels: tuple[str, ...] = ("water",)
    percentiles: tuple[float, float] = (1.0, 99.0)

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(n) < 1 for n in self.shape):
            raise ValueError(f"crop shape must be 3 positive sizes, got {self.shape}")
        if len(self.spacing_mm) != 3 or any(not s > 0 for s in self.spacing_mm):
            raise ValueError(f"crop spacing must be 3 positive mm, got {self.spacing_mm}")
        if not self.channels:
            raise ValueError("a crop needs at least one channel")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(
                f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists for tuples)."""
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CropSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown crop spec keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


ILIOPSOAS_CROP = CropSpec()
GLUTEUS_CROP = CropSpec(name="gluteus", shape=(112, 112, 128), offset_mm=(-4.0, 46.0, 30.0))
HIPS_CROP = CropSpec(
    name="hips", shape=(112, 112, 192), offset_mm=(-3.0, 47.0, 93.0), channels=("water", "fat")
)
"""One crop holding the iliopsoas and all three glutei (>= 20 mm margins on the bench)."""
HIPS_COARSE_CROP = CropSpec(
    name="hips_coarse",
    shape=(64, 64, 96),
    spacing_mm=(4.0, 4.0, 6.0),
    offset_mm=(-3.0, 47.0, 93.0),
    channels=("water", "fat"),
)
"""The hips crop at about half the resolution (256 x 256 x 576 mm): 6 times fewer voxels,
for models trained without a GPU. Predicted probabilities are resampled linearly to the
stitched grid before thresholding, so masks are not blocky at the coarse voxel size."""


@dataclass(frozen=True)
class CropGeometry:
    """Where one side's crop lies: its voxel -> LPS mm affine and its shape.

    For the left side the affine's first column points to the patient's right (the crop
    is mirrored), for the right side to the left: medial in both.
    """

    side: str
    shape: tuple[int, int, int]
    affine_lps: np.ndarray

    @property
    def mirrored(self) -> bool:
        return self.side == "left"

    def affine_ras(self) -> np.ndarray:
        """The crop's voxel -> RAS mm affine (to save a crop as NIfTI for inspection)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps


def crop_geometry(
    spec: CropSpec, hip_lps_mm: np.ndarray, side: str, stitched_affine_ras: np.ndarray
) -> CropGeometry:
    """The crop of ``side`` around its hip joint centre, snapped to the stitched lattice.

    Raises:
        ValueError: ``side`` is not "left" or "right", or the stitched affine is not in
            our array convention.
    """
    if side not in SIDES:
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    _, stitched = lps_axes(stitched_affine_ras)
    medial = -1.0 if side == "left" else 1.0  # +x (LPS) is the patient's left
    axes = np.diag([medial, 1.0, 1.0]) * np.asarray(spec.spacing_mm)
    offset = np.asarray(spec.offset_mm, dtype=float) * np.array([medial, 1.0, 1.0])
    centre = np.asarray(hip_lps_mm, dtype=float) + offset
    first = centre - axes @ ((np.asarray(spec.shape) - 1) / 2.0)
    # Snap the first voxel onto a stitched voxel centre: equal spacings then copy voxels.
    index = np.linalg.solve(stitched[:3, :3], first - stitched[:3, 3])
    first = stitched[:3, :3] @ np.round(index) + stitched[:3, 3]
    affine = np.eye(4)
    affine[:3, :3] = axes
    affine[:3, 3] = first
    return CropGeometry(side, tuple(int(n) for n in spec.shape), affine)  # type: ignore[arg-type]


def _index_map(to_affine: np.ndarray, from_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset taking voxel indices of ``to`` to indices of ``from`` (both LPS)."""
    transform = np.linalg.inv(from_affine) @ to_affine
    return transform[:3, :3], transform[:3, 3]


def to_crop(
    volume: np.ndarray, stitched_affine_ras: np.ndarray, geometry: CropGeometry, order: int
) -> np.ndarray:
    """Resample a stitched volume onto a crop grid (``order`` 1: images, float32; 0: labels).

    Crop voxels outside the stitched field of view are 0.
    """
    _, stitched = lps_axes(stitched_affine_ras)
    matrix, offset = _index_map(geometry.affine_lps, stitched)
    if order == 1:
        return linear_resample(volume, matrix, offset, geometry.shape, "constant")
    return ndimage.affine_transform(
        np.asarray(volume),
        matrix,
        offset,
        output_shape=geometry.shape,
        order=order,
        mode="grid-constant",
        cval=0,
        prefilter=False,
    )


def uncrop(
    array: np.ndarray,
    geometry: CropGeometry,
    stitched_shape: Sequence[int],
    stitched_affine_ras: np.ndarray,
    order: int = 0,
) -> np.ndarray:
    """Put a crop-grid array (a predicted mask or label map) back on the stitched grid.

    ``order`` 0 (nearest) for label maps: exact inverse of :func:`to_crop` where the grids
    coincide; 1 (linear) for probabilities or binary masks, to threshold at 0.5. Voxels
    outside the crop are 0. Only the crop's footprint is resampled.
    """
    array = np.asarray(array)
    if array.shape != geometry.shape:
        raise ValueError(f"array {array.shape} does not match the crop {geometry.shape}")
    _, stitched = lps_axes(stitched_affine_ras)
    out = np.zeros(tuple(stitched_shape), dtype=array.dtype)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in geometry.shape], indexing="ij"))
    corners = corners.reshape(3, -1)
    index = np.linalg.solve(
        stitched[:3, :3],
        geometry.affine_lps[:3, :3] @ corners + geometry.affine_lps[:3, 3:4] - stitched[:3, 3:4],
    )
    low = np.maximum(np.floor(index.min(axis=1)).astype(int) - 1, 0)
    high = np.minimum(np.ceil(index.max(axis=1)).astype(int) + 2, np.asarray(stitched_shape))
    if np.any(high <= low):
        return out
    block = np.eye(4)
    block[:3, 3] = low  # block voxel -> stitched voxel
    matrix, offset = _index_map(stitched @ block, geometry.affine_lps)
    out[tuple(slice(a, b) for a, b in zip(low, high, strict=True))] = ndimage.affine_transform(
        array,
        matrix,
        offset,
        output_shape=tuple(high - low),
        order=order,
        mode="grid-constant",
        cval=0,
        prefilter=False,
    )
    return out


def inside_volume(
    stitched_shape: Sequence[int], stitched_affine_ras: np.ndarray, geometry: CropGeometry
) -> np.ndarray:
    """The crop voxels that have a stitched voxel to take (bool, the crop's shape): where
    :func:`to_crop` of a volume of ones with ``order`` 0 is 1.

    Crops are axis-aligned with the stitched grid, so the mask is the outer product of
    one 1-D mask per axis, each from scipy's own nearest-neighbour rounding: the same
    voxels as resampling a full-size volume of ones, without building one (14 MB for a
    full-size participant, about 0.3 CPU s for the cascade's 12 crops).
    """
    _, stitched = lps_axes(stitched_affine_ras)
    matrix, offset = _index_map(geometry.affine_lps, stitched)
    if np.any(matrix != np.diag(np.diag(matrix))):
        ones = np.ones(tuple(stitched_shape), np.uint8)
        return to_crop(ones, stitched_affine_ras, geometry, 0) > 0
    along = [
        ndimage.affine_transform(
            np.ones(int(stitched_shape[a]), np.uint8),
            matrix[a : a + 1, a : a + 1],
            offset[a : a + 1],
            output_shape=(geometry.shape[a],),
            order=0,
            mode="grid-constant",
            cval=0,
            prefilter=False,
        )
        > 0
        for a in range(3)
    ]
    return along[0][:, None, None] & along[1][None, :, None] & along[2][None, None, :]


def normalise(
    image: np.ndarray, inside: np.ndarray, percentiles: tuple[float, float]
) -> np.ndarray:
    """Scale ``image`` so its ``percentiles`` over ``inside`` map to 0 and 1 (0 outside)."""
    values = image[inside]
    if values.size == 0:
        return np.zeros(image.shape, dtype=np.float32)
    low, high = np.percentile(values, percentiles)
    scale = high - low if high > low else 1.0
    return np.where(inside, (image - low) / scale, 0.0).astype(np.float32)


@dataclass(frozen=True)
class Crop:
    """One side's model input: ``image`` (channels, X, Y, Z) float32 and its geometry."""

    image: np.ndarray
    geometry: CropGeometry


def crop_side(
    channels: Mapping[str, np.ndarray],
    stitched_affine_ras: np.ndarray,
    hip_lps_mm: np.ndarray,
    side: str,
    spec: CropSpec,
) -> Crop:
    """The normalised crop of one side from the stitched channels (``spec.channels``).

    Raises:
        KeyError: a channel of ``spec.channels`` is missing from ``channels``.
    """
    geometry = crop_geometry(spec, hip_lps_mm, side, stitched_affine_ras)
    some = np.asarray(next(iter(channels.values())))
    inside = inside_volume(some.shape, stitched_affine_ras, geometry)
    images = []
    for name in spec.channels:
        if name not in channels:
            raise KeyError(f"crop {spec.name!r} needs channel {name!r}; have {sorted(channels)}")
        image = to_crop(np.asarray(channels[name], np.float32), stitched_affine_ras, geometry, 1)
        images.append(normalise(image, inside, spec.percentiles))
    return Crop(np.stack(images), geometry)


def crop_participant(
    channels: Mapping[str, np.ndarray],
    stitched_affine_ras: np.ndarray,
    landmarks: HipLandmarks,
    spec: CropSpec = ILIOPSOAS_CROP,
) -> dict[str, Crop]:
    """Both sides' crops (left mirrored), keyed "left" and "right"."""
    hips = {"left": landmarks.left_lps_mm, "right": landmarks.right_lps_mm}
    return {
        side: crop_side(channels, stitched_affine_ras, hips[side], side, spec) for side in SIDES
    }
