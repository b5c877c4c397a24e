"""Per-participant muscle metrics from a label volume: pure functions on arrays.

Inputs follow the package convention: arrays indexed (i, j, k) with i -> patient left,
j -> posterior, k -> superior, a 4x4 voxel -> RAS mm affine (NIfTI), label values of
:data:`myoflow.synth.anatomy.LABELS`. Axial planes are k-slices.

:func:`participant_metrics` returns one flat record (``metrics.json``). Every key is
always present, so records stack into a table; a value is ``None`` (JSON ``null``) where
its input was not given (no height, no landmarks, no water/fat, no crop box) or the mask
is empty, never a silent zero. Names match ``truth.tsv`` of ``myoflow synth`` wherever
the quantity is the same, so metrics and truth compare column by column. Keys, with
``L`` a label name (``psoas_major_left``, ...), ``M`` a muscle (``psoas_major``,
``iliacus``, ``gluteus_maximus``, ``gluteus_medius``, ``gluteus_minimus``) or group
(``iliopsoas`` = psoas major + iliacus, ``gluteus`` = the three glutei), ``S`` a side:

- geometry: ``voxel_size_i_mm``, ``voxel_size_j_mm``, ``voxel_size_k_mm``,
  ``voxel_volume_ml``, ``csa_axial_grid`` (True: k-planes are axial and CSA is exact per
  slice; False: see :func:`axial_csa`).
- volumes (ml): ``vol_L_ml``; ``vol_M_S_ml`` (for a muscle, the same key as its label),
  ``vol_M_total_ml``, ``vol_M_mean_ml`` (mean of the sides), ``vol_M_right_minus_left_ml``,
  ``M_asymmetry_pct`` (100 (right - left) / mean of the sides; truth's
  ``iliopsoas_asymmetry_pct``); ``imi_ml_m2`` = ``vol_iliopsoas_total_ml`` / height^2.
- psoas cross-section: ``psoas_max_csa_S_cm2``, ``psoas_max_csa_total_cm2`` (left max +
  right max), ``psoas_max_csa_z_S_mm`` (patient z of that slice, LPS = RAS z, as truth),
  ``psoas_max_csa_z_S_above_hip_mm`` (minus that side's hip z), ``psoas_max_csa_z_S_pct``
  (% of the muscle's cranio-caudal length from its inferior end), ``psoas_length_S_mm``,
  ``psoas_csa_profile_S`` (100 CSA values, cm^2, along normalised length from the
  inferior end).
- fat fraction: ``ff_L`` (mean voxel fat / (water + fat) in the in-plane eroded mask),
  ``ff_L_eroded`` (False where erosion left too few voxels and the whole mask was used),
  ``ff_M`` for the five muscles (both sides pooled; truth's ``ff_psoas_major``, ...).
- mask health: ``n_voxels_L``, ``n_components_L`` (26-connected),
  ``main_component_fraction_L`` (share of the voxels in the largest), ``touches_border_L``
  (a voxel on the outermost layer of the volume), ``touches_crop_L`` (a voxel on the
  inner face of the crop region, or outside it).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from myoflow.errors import MyoflowError
from myoflow.synth.anatomy import LABELS

SIDES = ("left", "right")
MUSCLES = ("psoas_major", "iliacus", "gluteus_maximus", "gluteus_medius", "gluteus_minimus")
GROUPS = {
    "iliopsoas": ("psoas_major", "iliacus"),
    "gluteus": ("gluteus_maximus", "gluteus_medius", "gluteus_minimus"),
}
PROFILE_BINS = 100
MIN_ERODED_VOXELS = 20
"""Fewest voxels an eroded mask may keep for its fat fraction to be used."""

AXIAL_TOLERANCE = 1e-3
"""Largest z component of the i and j axes, relative to their length, that counts as axial."""

Box = Sequence[Sequence[int]]
"""A voxel box ((i0, i1), (j0, j1), (k0, k1)), half-open, on the label grid."""

Value = float | int | bool | list[float] | None


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


def read_labels(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a label NIfTI; return (integer array, 4x4 RAS affine)."""
    import nibabel as nib

    image = nib.load(os.fspath(path))
    data = np.asanyarray(image.dataobj)
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise MetricsError(f"{path}: labels are not integers")
        data = rounded.astype(np.int32)
    return data, np.asarray(image.affine, dtype=float)


def write_metrics(path: str | os.PathLike[str], record: Mapping[str, Value]) -> None:
    """Write one participant's record as ``metrics.json`` (atomic, sorted keys)."""
    from myoflow.io import write_json

    write_json(path, dict(record))


def volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
    """Volume (ml) of a boolean mask: voxel count x |det(affine)|."""
    return float(np.count_nonzero(mask)) * voxel_geometry(affine).voxel_volume_ml


@dataclass(frozen=True)
class CsaProfile:
    """Axial cross-sectional areas of one mask, inferior to superior."""

    z_mm: np.ndarray  # patient z (mm) of each plane or slab centre, increasing
    csa_cm2: np.ndarray
    exact: bool  # True: voxel count x in-plane area on axial k-slices
    height_mm: float  # distance between consecutive planes

    def extent(self) -> tuple[int, int] | None:
        """First and last plane with any area (indices into ``z_mm``), None if empty."""
        nonzero = np.flatnonzero(self.csa_cm2 > 0)
        return None if nonzero.size == 0 else (int(nonzero[0]), int(nonzero[-1]))


def axial_csa(mask: np.ndarray, affine: np.ndarray) -> CsaProfile:
    """Cross-sectional area (cm^2) of ``mask`` on axial planes.

    On an axial grid (the i and j axes horizontal, as every biobank protocol acquires)
    the CSA of slice k is its voxel count x the in-plane voxel area, exactly. A grid
    whose k-slices are not axial (a tilted series that was not resampled) is measured on
    horizontal slabs one slice spacing high: voxels are binned by the patient z of their
    centres and the slab's CSA is its voxel volume / the slab height, which is the mean
    axial CSA over the slab (volume = integral of CSA over z). Such values are flagged
    ``exact=False`` (``csa_axial_grid`` in the record).
    """
    geometry = voxel_geometry(affine)
    a = np.asarray(affine, dtype=float)
    if geometry.axial:
        counts = np.count_nonzero(mask, axis=(0, 1)).astype(float)
        z = a[2, 2] * np.arange(mask.shape[2]) + a[2, 3]
        order = np.argsort(z)
        csa = counts[order] * geometry.voxel_area_mm2 / 100.0
        return CsaProfile(z[order], csa, True, geometry.slab_height_mm)
    index = np.nonzero(mask)
    h = geometry.slab_height_mm
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in mask.shape], indexing="ij"))
    z_corners = a[2, :3] @ corners.reshape(3, -1) + a[2, 3]
    z0 = float(z_corners.min())
    n_bins = int(np.floor((z_corners.max() - z0) / h)) + 1
    if index[0].size == 0:
        return CsaProfile(z0 + h * (np.arange(n_bins) + 0.5), np.zeros(n_bins), False, h)
    z = a[2, :3] @ np.asarray(index, dtype=float) + a[2, 3]
    bins = np.minimum(((z - z0) / h).astype(int), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins).astype(float)
    csa = counts * geometry.voxel_volume_ml * 1000.0 / h / 100.0
    return CsaProfile(z0 + h * (np.arange(n_bins) + 0.5), csa, False, h)


PEAK_FRACTION = 0.8
"""Slices around the maximum with at least this fraction of it locate the peak's z."""


def max_csa(profile: CsaProfile, hip_z_mm: float | None = None) -> dict[str, Value]:
    """Maximum CSA, where it lies, the muscle's length, and the normalised CSA profile.

    The maximum is the largest plane's CSA. Its z is the vertex of a parabola fitted by
    least squares to the contiguous planes around the maximum whose CSA is at least
    ``PEAK_FRACTION`` of it: the psoas profile is so flat at its peak (four 6 mm slices
    away it has lost under 6 %) that one voxel more or less moves the largest slice by
    several slices, while the vertex uses the whole peak (on synthetic participants it
    lies within 0.4 slices of the built-in peak, the largest slice up to 3 slices off).
    Where the fit is not concave or has fewer than 3 planes, the largest plane's z is used.

    Length runs from the inferior face of the lowest plane with any area to the superior
    face of the highest (planes are ``height_mm`` thick), so plane centres sit at
    normalised positions ``(n + 0.5) / count``. The profile is the CSA resampled at the
    centres of ``PROFILE_BINS`` equal bins of normalised length by linear interpolation
    between plane centres (held constant over the half plane at either end).
    """
    extent = profile.extent()
    if extent is None:
        return dict.fromkeys(
            ("max_csa_cm2", "z_mm", "z_above_hip_mm", "z_pct", "length_mm", "profile")
        )
    first, last = extent
    csa = profile.csa_cm2[first : last + 1]
    z = profile.z_mm[first : last + 1]
    h = profile.height_mm
    length = float(z[-1] - z[0] + h)
    z_peak = peak_z(z, csa)
    bins = (np.arange(PROFILE_BINS) + 0.5) / PROFILE_BINS
    t = (z - z[0] + h / 2) / length
    return {
        "max_csa_cm2": float(csa.max()),
        "z_mm": z_peak,
        "z_above_hip_mm": None if hip_z_mm is None else z_peak - hip_z_mm,
        "z_pct": float(100.0 * (z_peak - z[0] + h / 2) / length),
        "length_mm": length,
        "profile": [float(v) for v in np.interp(bins, t, csa)],
    }


def peak_z(z_mm: np.ndarray, csa: np.ndarray, fraction: float = PEAK_FRACTION) -> float:
    """z (mm) of a profile's peak: the vertex of a parabola over the run of planes around
    the maximum with CSA >= ``fraction`` x maximum (see :func:`max_csa`)."""
    top = int(np.argmax(csa))
    high = csa >= fraction * csa[top]
    lo, hi = top, top
    while lo > 0 and high[lo - 1]:
        lo -= 1
    while hi < len(csa) - 1 and high[hi + 1]:
        hi += 1
    if hi - lo < 2:
        return float(z_mm[top])
    centre = float(z_mm[top])
    a, b, _ = np.polyfit(z_mm[lo : hi + 1] - centre, csa[lo : hi + 1], 2)
    if a >= 0:
        return centre
    return float(np.clip(centre - b / (2 * a), z_mm[lo], z_mm[hi]))


def erode_in_plane(mask: np.ndarray) -> np.ndarray:
    """Erode a 3-D mask by one voxel within each axial slice (4-connected cross)."""
    cross = np.zeros((3, 3, 1), dtype=bool)
    cross[1, :, 0] = cross[:, 1, 0] = True
    return ndimage.binary_erosion(mask, structure=cross, border_value=0)


def fat_fraction(
    mask: np.ndarray,
    water: np.ndarray,
    fat: np.ndarray,
    min_voxels: int = MIN_ERODED_VOXELS,
) -> tuple[float | None, bool, int]:
    """Mean voxel fat fraction fat / (water + fat) inside ``mask`` eroded in-plane.

    Why in-plane: slices are thicker than the in-plane voxels (3 vs 2.2 mm in UK
    Biobank) and these muscles run cranio-caudally, so partial volume with fat and
    neighbouring muscle sits at the in-plane edges; a 3-D erosion would also strip the
    first and last slice of every muscle and leave too little of a thin iliacus or
    gluteus minimus at coarse resolution. Where erosion keeps fewer than ``min_voxels``
    voxels the whole mask is used instead.

    Returns:
        (fat fraction or None if the mask is empty, whether the eroded mask was used,
        number of voxels averaged). Voxels with water + fat <= 0 are skipped.
    """
    mask = np.asarray(mask, dtype=bool)
    eroded = erode_in_plane(mask)
    used = eroded if np.count_nonzero(eroded) >= min_voxels else mask
    w = np.asarray(water, dtype=np.float64)[used]
    f = np.asarray(fat, dtype=np.float64)[used]
    total = w + f
    valid = total > 0
    if not valid.any():
        return None, used is eroded, 0
    return float(np.mean(f[valid] / total[valid])), used is eroded, int(valid.sum())


def component_sizes(mask: np.ndarray) -> np.ndarray:
    """Voxel counts of the 26-connected components of ``mask``, largest first."""
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    return np.sort(np.bincount(labelled.ravel(), minlength=n + 1)[1:])[::-1]


def crop_region(shape: Sequence[int], boxes: Sequence[Box]) -> np.ndarray:
    """Boolean union of voxel boxes ((i0, i1), (j0, j1), (k0, k1)), clipped to ``shape``."""
    region = np.zeros(tuple(shape), dtype=bool)
    for box in boxes:
        if len(box) != 3 or any(len(pair) != 2 for pair in box):
            raise MetricsError(f"a crop box is ((i0, i1), (j0, j1), (k0, k1)), got {box!r}")
        region[tuple(slice(max(int(lo), 0), int(hi)) for lo, hi in box)] = True
    return region


def crop_face(region: np.ndarray) -> np.ndarray:
    """Voxels on the inner face of ``region`` or outside it (the volume border excluded):
    where a mask was probably cut off by the crop."""
    cross = ndimage.generate_binary_structure(3, 1)
    return ndimage.binary_dilation(~region, structure=cross, border_value=0)


def touches_border(mask: np.ndarray, margin: int = 0) -> bool:
    """Whether ``mask`` has a voxel within ``margin`` voxels of the volume's outer layer."""
    w = margin + 1
    return any(
        mask[(slice(None),) * axis + (side,)].any()
        for axis in range(3)
        for side in (slice(0, w), slice(-w, None))
    )


def participant_metrics(
    labels: np.ndarray,
    affine: np.ndarray,
    water: np.ndarray | None = None,
    fat: np.ndarray | None = None,
    height_cm: float | None = None,
    hips_lps_mm: Mapping[str, Sequence[float]] | None = None,
    crop_boxes: Sequence[Box] | None = None,
) -> dict[str, Value]:
    """One participant's flat metrics record (keys in the module docstring).

    Args:
        labels: integer label volume (values of ``LABELS``; others are ignored).
        affine: 4x4 voxel -> RAS mm matrix of ``labels`` (and of water and fat).
        water, fat: Dixon channels on the same grid, for fat fractions.
        height_cm: standing height, for the iliopsoas muscle index.
        hips_lps_mm: ``{"left": (x, y, z), "right": (x, y, z)}`` hip joint centres.
        crop_boxes: voxel boxes the segmentation was confined to (see :data:`Box`).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise MetricsError(f"labels must be a 3-D integer array, got {labels.dtype} {labels.shape}")
    for name, channel in (("water", water), ("fat", fat)):
        if channel is not None and np.shape(channel) != labels.shape:
            raise MetricsError(f"{name} has shape {np.shape(channel)}, labels {labels.shape}")
    if (water is None) != (fat is None):
        raise MetricsError("fat fractions need both water and fat")
    if height_cm is not None and not (np.isfinite(height_cm) and height_cm > 0):
        raise MetricsError(f"height must be a positive number of cm, got {height_cm}")
    geometry = voxel_geometry(affine)
    record: dict[str, Value] = {
        "voxel_size_i_mm": geometry.spacing_mm[0],
        "voxel_size_j_mm": geometry.spacing_mm[1],
        "voxel_size_k_mm": geometry.spacing_mm[2],
        "voxel_volume_ml": geometry.voxel_volume_ml,
        "csa_axial_grid": geometry.axial,
    }
    masks = _label_masks(labels)
    face = None if crop_boxes is None else _crop_face_near(labels.shape, crop_boxes, masks)
    for name, value in LABELS.items():
        record.update(_label_record(name, masks.get(value), geometry, labels.shape, face))
    record.update(_ff_record(masks, water, fat))
    record.update(volume_summaries(record, height_cm))
    for side in SIDES:
        mask = _full_mask(masks.get(LABELS[f"psoas_major_{side}"]), labels.shape)
        hip_z = None if hips_lps_mm is None else float(hips_lps_mm[side][2])
        peak = max_csa(axial_csa(mask, affine), hip_z)
        record[f"psoas_max_csa_{side}_cm2"] = peak["max_csa_cm2"]
        record[f"psoas_max_csa_z_{side}_mm"] = peak["z_mm"]
        record[f"psoas_max_csa_z_{side}_above_hip_mm"] = peak["z_above_hip_mm"]
        record[f"psoas_max_csa_z_{side}_pct"] = peak["z_pct"]
        record[f"psoas_length_{side}_mm"] = peak["length_mm"]
        record[f"psoas_csa_profile_{side}"] = peak["profile"]
    left, right = record["psoas_max_csa_left_cm2"], record["psoas_max_csa_right_cm2"]
    record["psoas_max_csa_total_cm2"] = (
        None if left is None or right is None else float(left) + float(right)
    )
    return record


def metric_keys() -> list[str]:
    """The keys of every :func:`participant_metrics` record, in record order: the columns
    of a metrics table, known before (or without) any participant."""
    return list(_metric_keys())


@functools.cache
def _metric_keys() -> tuple[str, ...]:
    return tuple(participant_metrics(np.zeros((1, 1, 1), dtype=np.int16), np.eye(4)))


_Crop = tuple[tuple[slice, slice, slice], np.ndarray]


def _label_masks(labels: np.ndarray) -> dict[int, _Crop]:
    """Each present label's bounding box and its mask inside that box.

    Works inside the bounding box of all labels (a small part of a whole-body volume).
    """
    wanted = sorted(LABELS.values())
    top = max(wanted)
    outer = _bounding_box((labels > 0) & (labels <= top))
    if outer is None:
        return {}
    inner = labels[outer]
    clipped = np.where((inner > 0) & (inner <= top), inner, 0).astype(np.int32)
    out = {}
    for value, box in enumerate(ndimage.find_objects(clipped, max_label=top), start=1):
        if box is not None and value in wanted:
            whole = tuple(
                slice(o.start + b.start, o.start + b.stop) for o, b in zip(outer, box, strict=True)
            )
            out[value] = (whole, clipped[box] == value)
    return out


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every voxel of ``mask`` (None: empty)."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _crop_face_near(
    shape: tuple[int, ...], boxes: Sequence[Box], masks: Mapping[int, _Crop]
) -> np.ndarray:
    """:func:`crop_face` of the boxes' region, computed only around the labels (one voxel
    beyond their boxes, so every voxel of a mask sees its true neighbours); False elsewhere."""
    region = crop_region(shape, boxes)
    face = np.zeros(shape, dtype=bool)
    if masks:
        window = tuple(
            slice(
                max(min(m[0][axis].start for m in masks.values()) - 1, 0),
                min(max(m[0][axis].stop for m in masks.values()) + 1, shape[axis]),
            )
            for axis in range(len(shape))
        )
        face[window] = crop_face(region[window])
    return face


def _full_mask(crop: _Crop | None, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    if crop is not None:
        mask[crop[0]] = crop[1]
    return mask


def _label_record(
    name: str,
    crop: _Crop | None,
    geometry: VoxelGeometry,
    shape: tuple[int, ...],
    face: np.ndarray | None,
) -> dict[str, Value]:
    if crop is None:
        return {
            f"vol_{name}_ml": 0.0,
            f"n_voxels_{name}": 0,
            f"n_components_{name}": 0,
            f"main_component_fraction_{name}": None,
            f"touches_border_{name}": False,
            f"touches_crop_{name}": None if face is None else False,
        }
    box, mask = crop
    count = int(np.count_nonzero(mask))
    sizes = component_sizes(mask)
    on_border = any(
        (sl.start == 0 or sl.stop == n) for sl, n in zip(box, shape, strict=True)
    )  # the bounding box reaches a face exactly when a voxel lies on it
    return {
        f"vol_{name}_ml": count * geometry.voxel_volume_ml,
        f"n_voxels_{name}": count,
        f"n_components_{name}": int(sizes.size),
        f"main_component_fraction_{name}": float(sizes[0]) / count,
        f"touches_border_{name}": bool(on_border),
        f"touches_crop_{name}": None if face is None else bool((face[box] & mask).any()),
    }


def _ff_record(
    masks: Mapping[int, _Crop], water: np.ndarray | None, fat: np.ndarray | None
) -> dict[str, Value]:
    """``ff_L`` and ``ff_L_eroded`` per label, ``ff_M`` per muscle (sides pooled by voxels)."""
    out: dict[str, Value] = {}
    for muscle in MUSCLES:
        pooled, pooled_n = 0.0, 0
        for side in SIDES:
            name = f"{muscle}_{side}"
            crop = masks.get(LABELS[name])
            ff, eroded, n = None, None, 0
            if crop is not None and water is not None and fat is not None:
                # Pad the box by one voxel in-plane so erosion sees the true neighbourhood.
                box, mask = _pad_in_plane(*crop, water.shape)
                ff, eroded, n = fat_fraction(mask, water[box], fat[box])
            out[f"ff_{name}"], out[f"ff_{name}_eroded"] = ff, eroded
            if ff is not None:
                pooled, pooled_n = pooled + ff * n, pooled_n + n
        out[f"ff_{muscle}"] = pooled / pooled_n if pooled_n else None
    return out


def _pad_in_plane(
    box: tuple[slice, ...], mask: np.ndarray, shape: tuple[int, ...]
) -> tuple[tuple[slice, ...], np.ndarray]:
    grown = tuple(
        slice(max(sl.start - 1, 0), min(sl.stop + 1, n)) if axis < 2 else sl
        for axis, (sl, n) in enumerate(zip(box, shape, strict=True))
    )
    padded = np.zeros(tuple(g.stop - g.start for g in grown), dtype=bool)
    inner = tuple(
        slice(sl.start - g.start, sl.start - g.start + m)
        for sl, g, m in zip(box, grown, mask.shape, strict=True)
    )
    padded[inner] = mask
    return grown, padded


def volume_summaries(record: Mapping[str, Any], height_cm: float | None) -> dict[str, Value]:
    """Per muscle and group: sides, total, mean, right - left and asymmetry; the IMI."""
    out: dict[str, Value] = {}
    for group, members in ((m, (m,)) for m in MUSCLES):
        out.update(_side_summary(group, members, record))
    for group, members in GROUPS.items():
        out.update(_side_summary(group, members, record))
    total = out["vol_iliopsoas_total_ml"]
    out["imi_ml_m2"] = None if height_cm is None else float(total) / (height_cm / 100.0) ** 2
    return out


def _side_summary(
    group: str, members: Sequence[str], record: Mapping[str, Any]
) -> dict[str, Value]:
    left = float(sum(record[f"vol_{m}_left_ml"] for m in members))
    right = float(sum(record[f"vol_{m}_right_ml"] for m in members))
    mean = (left + right) / 2.0
    return {
        f"vol_{group}_left_ml": left,
        f"vol_{group}_right_ml": right,
        f"vol_{group}_total_ml": left + right,
        f"vol_{group}_mean_ml": mean,
        f"vol_{group}_right_minus_left_ml": right - left,
        f"{group}_asymmetry_pct": 100.0 * (right - left) / mean if mean > 0 else None,
    }
