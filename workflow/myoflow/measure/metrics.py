"""Per-participant muscle metrics from a label volume: pure functions on arrays.

Inputs follow the package convention: arrays indexed (i, j, k) with i -> patient left,
j -> posterior, k -> superior, a 4x4 voxel -> RAS mm affine (NIfTI), label values of
:data:`myoflow.core.labels.LABELS`. Axial planes are k-slices. The voxel grid
(:mod:`myoflow.core.label_grid`) and the CSA profiles (:mod:`myoflow.measure.csa_profile`) are
measured in their own modules; this one holds volumes, fat fractions, mask health and the record.

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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from myoflow.core.label_grid import MetricsError, Value, VoxelGeometry, voxel_geometry
from myoflow.core.labels import GROUPS, LABELS, MUSCLES, SIDES
from myoflow.core.morphology import erode_in_plane
from myoflow.measure.csa_profile import axial_csa, max_csa

MIN_ERODED_VOXELS = 20
"""Fewest voxels an eroded mask may keep for its fat fraction to be used."""


Box = Sequence[Sequence[int]]
"""A voxel box ((i0, i1), (j0, j1), (k0, k1)), half-open, on the label grid."""


def volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
    """Volume (ml) of a boolean mask: voxel count x |det(affine)|."""
    return float(np.count_nonzero(mask)) * voxel_geometry(affine).voxel_volume_ml


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
