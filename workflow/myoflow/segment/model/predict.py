"""Inference: one participant's stitched channels -> a label map on the same grid.

Layered as arrays -> tensors -> arrays, with the model passed in so that one loaded
model serves every participant of a shard (nothing here reads or writes files):

1. :func:`myoflow.segment.crop.crop_participant` cuts one crop per side (the left mirrored);
2. :func:`predict_probabilities` runs the network on the crops: one sigmoid channel per
   label of the model config, each a muscle of :data:`myoflow.core.labels.MUSCLES`, side-
   agnostic (channel ``m`` of side ``s``'s crop is the muscle ``{m}_{s}``).
   For a cascade (a model config with ``refine``, :mod:`myoflow.segment.model.refine`) the
   probabilities are then resampled onto a full-resolution crop and refined there by a
   small second network (:func:`side_probabilities` does both stages);
3. :func:`~myoflow.segment.model.labelling.stitch_labels` resamples each side's
   probabilities linearly onto the stitched grid (:func:`myoflow.segment.crop.uncrop`,
   ``order=1``); a voxel takes the label and side of its highest probability if that is
   at least 0.5 (:data:`~myoflow.segment.model.labelling.THRESHOLD`), else background,
   or, when the model config carries per-label ``thresholds`` (calibrated on annotated
   participants by :mod:`myoflow.segment.model.calibrate`), the label whose probability is
   highest relative to its own threshold, if it reaches it;
4. :func:`~myoflow.segment.model.labelling.clean_labels` drops each label's small
   26-connected islands (keeping the largest part and any at least a tenth its size) and
   fills its holes (cavities enclosed in 3D); the function says why not the largest part
   alone, nor per slice.

Steps 3 and 4 live in :mod:`myoflow.segment.model.labelling`. Label values are those of
:data:`myoflow.core.labels.LABELS`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from myoflow.core.errors import ParticipantExcluded
from myoflow.core.labels import MUSCLES
from myoflow.landmarks.record import HipLandmarks
from myoflow.measure.metrics import Box
from myoflow.segment.crop import (
    SIDES,
    Crop,
    CropGeometry,
    CropSpec,
    crop_geometry,
    crop_participant,
)
from myoflow.segment.model.labelling import (
    clean_labels,
    crop_box,
    label_thresholds,
    stitch_labels,
)
from myoflow.segment.model.refine import (
    Cascade,
    coarse_network,
    coarse_on_fine,
    coarse_shifts,
    refine_probabilities,
    refine_spec,
    shifted_spec,
)
from myoflow.segment.model.registry import ModelConfigError, crop_spec

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
            (:data:`myoflow.measure.metrics.Box`): labels can only lie inside their side's box.
        probabilities_max: float32, stitched shape: the winning label's probability where
            it reaches its threshold (before :func:`clean_labels`), 0 elsewhere.
        seconds: wall time of the steps: crop, infer, uncrop, clean.
    """

    labels: np.ndarray
    crop_boxes: dict[str, Box]
    probabilities_max: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def model_labels(config: Mapping[str, Any]) -> list[str]:
    """The model config's labels, checked to be muscles of :data:`myoflow.measure.metrics.MUSCLES`.

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
    (:class:`myoflow.segment.model.refine.Cascade`, a config with ``refine``) its probabilities
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
    coarse crop's shifts (:func:`myoflow.segment.model.refine.coarse_shifts`; one unless
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
        config: its model config (``labels``, ``crop``; :mod:`myoflow.segment.model.registry`).
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
