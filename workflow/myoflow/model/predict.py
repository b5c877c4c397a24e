"""Inference: one participant's stitched channels -> a label map on the same grid.

Layered as arrays -> tensors -> arrays, with the model passed in so that one loaded
model serves every participant of a shard (nothing here reads or writes files):

1. :func:`myoflow.crop.crop_participant` cuts one crop per side (the left mirrored);
2. :func:`predict_probabilities` runs the network on the crops: one sigmoid channel per
   label of the model config, each a muscle of :data:`myoflow.metrics.MUSCLES`, side-
   agnostic (channel ``m`` of side ``s``'s crop is the muscle ``{m}_{s}``).
   For a cascade (a model config with ``refine``, :mod:`myoflow.model.refine`) the
   probabilities are then resampled onto a full-resolution crop and refined there by a
   small second network (:func:`side_probabilities` does both stages);
3. :func:`stitch_labels` resamples each side's probabilities linearly onto the stitched
   grid (:func:`myoflow.crop.uncrop`, ``order=1``); a voxel takes the label and side of
   its highest probability if that is at least 0.5 (:data:`THRESHOLD`), else background,
   or, when the model config carries per-label ``thresholds`` (calibrated on annotated
   participants by :mod:`myoflow.model.calibrate`), the label whose probability is
   highest relative to its own threshold, if it reaches it;
4. :func:`clean_labels` drops each label's small 26-connected islands (keeping the
   largest part and any at least a tenth its size) and fills its holes (cavities
   enclosed in 3D); the function says why not the largest part alone, nor per slice.

Label values are those of :data:`myoflow.synth.anatomy.LABELS`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from myoflow.crop import (
    SIDES,
    Crop,
    CropGeometry,
    CropSpec,
    crop_geometry,
    crop_participant,
    uncrop,
)
from myoflow.errors import ParticipantExcluded
from myoflow.landmarks import HipLandmarks, lps_axes
from myoflow.metrics import MUSCLES, Box
from myoflow.model.refine import (
    Cascade,
    coarse_network,
    coarse_on_fine,
    coarse_shifts,
    refine_probabilities,
    refine_spec,
    shifted_spec,
)
from myoflow.model.registry import ModelConfigError, crop_spec
from myoflow.synth.anatomy import LABELS

THRESHOLD = 0.5
"""A voxel is muscle when its highest probability reaches this."""

MIN_PART_FRACTION = 0.1
"""Components of a label at least this share of its largest one are kept (see
:func:`clean_labels`)."""

EXCLUSION_REASONS = {
    "crop_outside_volume": "a hip's crop does not overlap the stitched volume",
}
"""Why :func:`segment_participant` may leave a participant out."""


@dataclass(frozen=True)
class Segmentation:
    """One participant's segmentation on the stitched grid.

    Attributes:
        labels: int16 label map (values of ``LABELS``; 0 background), stitched shape.
        crop_boxes: per side, the stitched voxels whose centres lie inside that side's
            crop, as a half-open box ((i0, i1), (j0, j1), (k0, k1)) clipped to the volume
            (:data:`myoflow.metrics.Box`): labels can only lie inside their side's box.
        probabilities_max: float32, stitched shape: the winning label's probability where
            it reaches its threshold (before :func:`clean_labels`), 0 elsewhere.
        seconds: wall time of the steps: crop, infer, uncrop, clean.
    """

    labels: np.ndarray
    crop_boxes: dict[str, Box]
    probabilities_max: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def model_labels(config: Mapping[str, Any]) -> list[str]:
    """The model config's labels, checked to be muscles of :data:`myoflow.metrics.MUSCLES`.

    Raises:
        ModelConfigError: a label is not a side-agnostic muscle name.
    """
    labels = list(config["labels"])
    unknown = [name for name in labels if name not in MUSCLES]
    if unknown:
        raise ModelConfigError(
            f"model labels {unknown} are not muscles of {list(MUSCLES)}: the segmentation "
            "stage needs side-agnostic muscle names, one output channel each"
        )
    return labels


# ----------------------------------------------------------------------------- network


def predict_probabilities(
    model: nn.Module,
    images: np.ndarray,
    device: str | torch.device = "cpu",
    batch_size: int = 2,
    amp: bool = True,
) -> np.ndarray:
    """Run ``model`` on crops, ``batch_size`` at a time, without gradients.

    Args:
        model: a network in eval mode on ``device``, mapping (N, C, X, Y, Z) to per-label
            probabilities (N, L, X, Y, Z) in [0, 1].
        images: (N, C, X, Y, Z) float32 crops.
        device: where the network runs.
        batch_size: crops per forward pass.
        amp: on CUDA, run in mixed precision (bfloat16 where the GPU supports it, else
            float16); ignored on CPU, where inference is float32 and deterministic (the
            same input gives the same bytes).

    Crops go in as ``channels_last_3d``, which the convolutions then keep: on 2 CPU
    threads the width-0.5 V-Net ran about 1.4 times faster so (bench/inference.py).

    Returns:
        (N, L, X, Y, Z) float32 probabilities, on the CPU.

    Raises:
        ValueError: ``images`` is not 5-D or ``batch_size`` < 1.
    """
    images = np.asarray(images)
    if images.ndim != 5:
        raise ValueError(f"expected images (N, C, X, Y, Z), got shape {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    mixed = amp and device.type == "cuda"
    dtype = torch.bfloat16 if mixed and torch.cuda.is_bf16_supported() else torch.float16
    out: np.ndarray | None = None
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=mixed):
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(
                np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)
            ).to(device, memory_format=torch.channels_last_3d)
            probabilities = model(batch).float().cpu().numpy()
            if out is None:
                out = np.empty((len(images), *probabilities.shape[1:]), dtype=np.float32)
            out[start : start + len(batch)] = probabilities
    if out is None:  # no crops: the label count is unknown, so no channel axis either
        return np.zeros((0, 0, *images.shape[2:]), dtype=np.float32)
    return out


# ---------------------------------------------------------------- back to the stitched grid


def _translation(offset: Sequence[float]) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = offset
    return matrix


def crop_box(
    geometry: CropGeometry, stitched_shape: Sequence[int], affine_ras: np.ndarray
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """The stitched voxels whose centres lie inside the crop (crop index in (-0.5, n - 0.5)
    along each axis), as a half-open box clipped to the volume; empty boxes have lo == hi.

    These are the voxels :func:`myoflow.crop.uncrop` with ``order=0`` fills.
    """
    _, stitched = lps_axes(affine_ras)
    faces = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in geometry.shape], indexing="ij"))
    corners = geometry.affine_lps[:3, :3] @ faces.reshape(3, -1) + geometry.affine_lps[:3, 3:4]
    index = np.linalg.solve(stitched[:3, :3], corners - stitched[:3, 3:4])
    # Centres strictly inside; 1e-6 voxels absorbs rounding where a face meets a centre.
    low = np.floor(index.min(axis=1) + 1e-6).astype(int) + 1
    high = np.ceil(index.max(axis=1) - 1e-6).astype(int)
    shape = np.asarray(stitched_shape)
    low, high = np.clip(low, 0, shape), np.clip(high, 0, shape)
    high = np.maximum(high, low)
    return tuple((int(a), int(b)) for a, b in zip(low, high, strict=True))  # type: ignore[return-value]


def _above_threshold_block(probability: np.ndarray, threshold: float) -> tuple[slice, ...] | None:
    """The crop voxels that can give a stitched voxel >= ``threshold``, with a 1-voxel rim.

    Linear interpolation is a convex combination of the 8 neighbouring crop voxels, so a
    stitched voxel can only reach the threshold next to a crop voxel that does; resampling
    this block alone gives every label decision exactly, at a fraction of the cost.
    """
    above = probability >= threshold
    if not above.any():
        return None
    block = []
    for axis in range(3):
        hits = np.flatnonzero(above.any(axis=tuple(a for a in range(3) if a != axis)))
        block.append(slice(max(hits[0] - 1, 0), min(hits[-1] + 2, probability.shape[axis])))
    return tuple(block)


def label_thresholds(config: Mapping[str, Any], label_names: Sequence[str]) -> list[float]:
    """Each label's decision threshold: the model config's ``thresholds`` (set by
    :mod:`myoflow.model.calibrate`), :data:`THRESHOLD` for a label it does not name."""
    given = config.get("thresholds") or {}
    return [float(given.get(name, THRESHOLD)) for name in label_names]


def resampled_probabilities(
    probabilities: Mapping[str, np.ndarray],
    geometries: Mapping[str, CropGeometry],
    label_names: Sequence[str],
    stitched_shape: Sequence[int],
    affine_ras: np.ndarray,
    floors: Sequence[float],
) -> Iterator[tuple[str, int, tuple[slice, ...], np.ndarray]]:
    """Each side's and label's probabilities resampled linearly onto the stitched grid,
    where they can reach that label's ``floors`` value.

    Yields ``(side, label index, stitched region, probabilities there)`` per side (in the
    order of ``probabilities``) and label (in the order of ``label_names``);
    labels that reach their floor nowhere are left out. Outside the regions every
    resampled probability is below its floor.

    Raises:
        ValueError: a side's probabilities do not have one channel per label, or a name
            is not a muscle of ``LABELS``.
    """
    shape = tuple(int(n) for n in stitched_shape)
    for side, side_probabilities in probabilities.items():
        geometry = geometries[side]
        side_probabilities = np.asarray(side_probabilities, dtype=np.float32)
        if side_probabilities.shape != (len(label_names), *geometry.shape):
            raise ValueError(
                f"{side}: probabilities {side_probabilities.shape} are not one crop "
                f"{geometry.shape} per label {list(label_names)}"
            )
        for index, (name, probability) in enumerate(
            zip(label_names, side_probabilities, strict=True)
        ):
            key = f"{name}_{side}"
            if key not in LABELS:
                raise ValueError(f"no label value for {key!r}")
            block = _above_threshold_block(probability, floors[index])
            if block is None:
                continue
            # Resample only the block, onto only the stitched voxels it covers.
            start = [s.start for s in block]
            part = CropGeometry(
                side,
                tuple(s.stop - s.start for s in block),  # type: ignore[arg-type]
                geometry.affine_lps @ _translation(start),
            )
            box = crop_box(part, shape, affine_ras)
            box_shape = [b - a for a, b in box]
            if min(box_shape) <= 0:
                continue
            low = [a for a, _ in box]
            resampled = uncrop(
                probability[block], part, box_shape, affine_ras @ _translation(low), order=1
            )
            yield side, index, tuple(slice(a, b) for a, b in box), resampled


def stitch_labels(
    probabilities: Mapping[str, np.ndarray],
    geometries: Mapping[str, CropGeometry],
    label_names: Sequence[str],
    stitched_shape: Sequence[int],
    affine_ras: np.ndarray,
    thresholds: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each voxel's label and side by the highest probability over its label's threshold.

    A voxel takes the label and side with the largest ratio of probability to threshold,
    if that ratio is at least 1; with every threshold 0.5 (the default,
    :data:`THRESHOLD`) that is the most probable label where its probability is >= 0.5.
    Calibrated thresholds (:mod:`myoflow.model.calibrate`) differ per label, and the
    ratio keeps the decision between two labels consistent with each one's own cut.

    Args:
        probabilities: per side, (L, X, Y, Z) probabilities on that side's crop grid.
        geometries: per side, the crop's geometry (:func:`myoflow.crop.crop_geometry`).
        label_names: the L muscle names, in channel order.
        stitched_shape: shape of the stitched grid.
        affine_ras: its voxel -> RAS mm affine.
        thresholds: the L labels' thresholds (default all :data:`THRESHOLD`).

    Returns:
        (int16 labels, float32 winning probability; both 0 where no label reaches its
        threshold). Ties go to the side and label met first.

    Raises:
        ValueError: a side's probabilities do not have one channel per label, a name is
            not a muscle of ``LABELS``, or a threshold is not in (0, 1).
    """
    cuts = [THRESHOLD] * len(label_names) if thresholds is None else list(thresholds)
    if len(cuts) != len(label_names) or not all(0.0 < t < 1.0 for t in cuts):
        raise ValueError(f"thresholds {cuts} are not one value in (0, 1) per label {label_names}")
    shape = tuple(int(n) for n in stitched_shape)
    labels = np.zeros(shape, dtype=np.int16)
    best = np.zeros(shape, dtype=np.float32)
    score = np.zeros(shape, dtype=np.float32)
    for side, index, region, resampled in resampled_probabilities(
        probabilities, geometries, label_names, shape, affine_ras, cuts
    ):
        ratio = resampled / np.float32(cuts[index])
        wins = ratio > score[region]
        score[region][wins] = ratio[wins]
        best[region][wins] = resampled[wins]
        labels[region][wins] = LABELS[f"{label_names[index]}_{side}"]
    below = score < 1.0
    labels[below] = 0
    best[below] = 0.0
    return labels, best


def clean_labels(labels: np.ndarray) -> np.ndarray:
    """Drop each label's small 26-connected islands and fill its holes.

    A label keeps its largest component and every other one at least
    :data:`MIN_PART_FRACTION` of its size; smaller ones become background. Keeping only
    the largest would cut muscles that the coarse crop sees in two: on 3 full-size
    synthetic participants, the partial-volume training targets of the hips crop
    (4 x 4 x 6 mm), put back on the stitched grid, split 3 of 6 iliaci into two parts of
    75-85 % of each other's size, 13-20 mm apart (keeping one would cost ~45 % of the
    muscle), while every other stray part held at most 2 voxels (bench/inference.py's
    oracle; tests/test_predict.py).

    Holes are filled in 3D (:func:`scipy.ndimage.binary_fill_holes` on the label's whole
    mask), not per axial slice. A muscle is a solid body, so background enclosed on every
    side in 3D can only be a dropout of the network. Per slice, background enclosed in
    one axial plane is often real: fat septa and intramuscular fat (what the fat fraction
    measures), or the gap between two heads of a muscle that opens a slice further, so
    filling it would add tissue that is not muscle. Holes are filled only where no other
    label is: a muscle enclosed by another keeps its own label. Returns a new array.
    """
    labels = np.asarray(labels)
    out = labels.copy()
    structure = np.ones((3, 3, 3), dtype=bool)
    for value, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        part = out[region]  # a view: edits land in ``out``
        mask = part == value
        components, count = ndimage.label(mask, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            small = sizes < MIN_PART_FRACTION * sizes.max()
            small[0] = False
            drop = small[components]
            part[drop] = 0
            mask &= ~drop
        holes = ndimage.binary_fill_holes(mask) & ~mask
        part[holes & (part == 0)] = value
    return out


def labels_from_probabilities(
    probabilities: Mapping[str, np.ndarray],
    geometries: Mapping[str, CropGeometry],
    label_names: Sequence[str],
    stitched_shape: Sequence[int],
    affine_ras: np.ndarray,
    thresholds: Sequence[float] | None = None,
) -> np.ndarray:
    """The cleaned int16 label map from per-side crop probabilities.

    :func:`stitch_labels` (linear resampling, highest probability over its threshold
    wins), then :func:`clean_labels` (small islands dropped, holes filled in 3D).
    Arguments as for :func:`stitch_labels`.

    Raises:
        ValueError: see :func:`stitch_labels`.
    """
    labels, _ = stitch_labels(
        probabilities, geometries, label_names, stitched_shape, affine_ras, thresholds
    )
    return clean_labels(labels)


# ------------------------------------------------------------------------- participant


def side_probabilities(
    model: nn.Module,
    config: Mapping[str, Any],
    channels: Mapping[str, np.ndarray],
    affine_ras: np.ndarray,
    landmarks: HipLandmarks,
    device: str | torch.device = "cpu",
    batch_size: int = 2,
) -> tuple[dict[str, np.ndarray], dict[str, CropGeometry], dict[str, float]]:
    """Each side's per-label probabilities on the grid of the model's last stage.

    The network runs on the config's crop of both sides; for a cascade
    (:class:`myoflow.model.refine.Cascade`, a config with ``refine``) its probabilities
    are then put on the refiner's full-resolution crop (:func:`coarse_priors`) and
    refined there.

    Returns:
        (probabilities per side (L, X, Y, Z), that grid's geometry per side, wall time of
        the steps: crop and infer (the coarse crops and network, summed over the shifts),
        and for a cascade refine (fine crop, resampling, refiner)).

    Raises:
        KeyError: a channel a crop needs is missing.
    """
    seconds = {"crop": 0.0, "infer": 0.0}
    fine_spec = refine_spec(config)
    if fine_spec is None:
        coarse, geometries = _first_stage(
            model, crop_spec(config), channels, affine_ras, landmarks, device, batch_size, seconds
        )
        return dict(zip(SIDES, coarse, strict=True)), geometries, seconds
    if not isinstance(model, Cascade):
        raise ModelConfigError("the model config has a refine section but the model no refiner")
    started = time.perf_counter()
    fine = crop_participant(channels, affine_ras, landmarks, fine_spec)
    seconds["refine"] = time.perf_counter() - started
    priors = coarse_priors(
        model, config, channels, affine_ras, landmarks, fine, device, batch_size, seconds
    )
    started = time.perf_counter()
    probabilities = {
        side: refine_probabilities(model.refiner, fine[side].image, priors[side], device)
        for side in SIDES
    }
    seconds["refine"] += time.perf_counter() - started
    return probabilities, {side: fine[side].geometry for side in SIDES}, seconds


def coarse_priors(
    model: nn.Module,
    config: Mapping[str, Any],
    channels: Mapping[str, np.ndarray],
    affine_ras: np.ndarray,
    landmarks: HipLandmarks,
    fine: Mapping[str, Crop],
    device: str | torch.device = "cpu",
    batch_size: int = 2,
    seconds: dict[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """A cascade's first-stage probabilities on each side's fine crop: the mean over the
    coarse crop's shifts (:func:`myoflow.model.refine.coarse_shifts`; one unless
    configured), each put on the fine grid. What the refiner sees, in training and use.

    Args:
        model: the cascade or its first stage.
        fine: both sides' fine crops.
        seconds: if given, the coarse crops' and network's time is added to its "crop"
            and "infer", the resampling's to its "refine".
    """
    seconds = {} if seconds is None else seconds
    shifts = coarse_shifts(config)
    priors: dict[str, Any] = dict.fromkeys(SIDES, 0.0)
    for shift in shifts:
        spec = shifted_spec(crop_spec(config), shift)
        coarse, geometries = _first_stage(
            model, spec, channels, affine_ras, landmarks, device, batch_size, seconds
        )
        started = time.perf_counter()
        for side, side_coarse in zip(SIDES, coarse, strict=True):
            on_fine = coarse_on_fine(side_coarse, geometries[side], fine[side].geometry)
            priors[side] = priors[side] + on_fine / len(shifts)
        seconds["refine"] = seconds.get("refine", 0.0) + time.perf_counter() - started
    return priors


def _first_stage(
    model: nn.Module,
    spec: CropSpec,
    channels: Mapping[str, np.ndarray],
    affine_ras: np.ndarray,
    landmarks: HipLandmarks,
    device: str | torch.device,
    batch_size: int,
    seconds: dict[str, float],
) -> tuple[np.ndarray, dict[str, CropGeometry]]:
    """The (first-stage) network on both sides' ``spec`` crops: (2, L, ...) probabilities
    and the crops' geometries; its time added to ``seconds`` "crop" and "infer"."""
    started = time.perf_counter()
    crops = crop_participant(channels, affine_ras, landmarks, spec)
    seconds["crop"] = seconds.get("crop", 0.0) + time.perf_counter() - started
    started = time.perf_counter()
    images = np.stack([crops[side].image for side in SIDES])
    coarse = predict_probabilities(coarse_network(model), images, device, batch_size)
    seconds["infer"] = seconds.get("infer", 0.0) + time.perf_counter() - started
    return coarse, {side: crops[side].geometry for side in SIDES}


def segment_participant(
    model: nn.Module,
    config: Mapping[str, Any],
    channels: Mapping[str, np.ndarray],
    affine_ras: np.ndarray,
    landmarks: HipLandmarks,
    device: str | torch.device = "cpu",
    batch_size: int = 2,
) -> Segmentation:
    """Segment one participant with a loaded model.

    Args:
        model: the network (eval mode, on ``device``).
        config: its model config (``labels``, ``crop``; :mod:`myoflow.model.registry`).
        channels: stitched Dixon channels by name (at least the crop's ``channels``), all
            on one grid, i -> L, j -> P, k -> S.
        affine_ras: that grid's voxel -> RAS mm affine.
        landmarks: the hip joint centres.
        device: where the network runs.
        batch_size: crops per forward pass (2: both sides at once).

    Returns:
        The label map on the channels' grid, the crop boxes and the step timings.

    Raises:
        ParticipantExcluded: ``crop_outside_volume`` when a side's crop holds no voxel of
            the stitched volume (hips far off the image).
        ModelConfigError: the config's labels are not muscles.
        KeyError: a channel the crop needs is missing.
    """
    label_names = model_labels(config)
    spec = crop_spec(config)
    shape = tuple(np.shape(next(iter(channels.values()))))
    hips = {"left": landmarks.left_lps_mm, "right": landmarks.right_lps_mm}
    boxes = {
        side: crop_box(crop_geometry(spec, hips[side], side, affine_ras), shape, affine_ras)
        for side in SIDES
    }
    for side, box in boxes.items():
        if any(high <= low for low, high in box):
            raise ParticipantExcluded(
                "crop_outside_volume",
                f"the {side} crop around the hip at LPS {np.round(hips[side], 1).tolist()} mm "
                f"holds no voxel of the {shape} image",
            )
    probabilities, geometries, seconds = side_probabilities(
        model, config, channels, affine_ras, landmarks, device, batch_size
    )
    started = time.perf_counter()
    labels, best = stitch_labels(
        probabilities,
        geometries,
        label_names,
        shape,
        affine_ras,
        label_thresholds(config, label_names),
    )
    seconds["uncrop"] = time.perf_counter() - started
    started = time.perf_counter()
    labels = clean_labels(labels)
    seconds["clean"] = time.perf_counter() - started
    return Segmentation(labels, boxes, best, seconds)
