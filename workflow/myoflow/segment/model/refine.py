"""A second, full-resolution stage that sharpens the coarse model's boundaries (a cascade).

Why: the shipped V-Net sees the hips at 4 x 4 x 6 mm (``hips_coarse``) because a full-
resolution V-Net cannot be trained on 2 CPU cores, and after the ~27 epochs that CPU
training afforded it scores Dice 0.927-0.939 on held-out participants. The grid itself
would allow far better: the truth on that crop grid, put back on the stitched grid, scores
Dice 0.975 (iliopsoas) and 0.990 (gluteus) on the 20 held-out participants
(``bench/accuracy.py --oracle``). As in nnU-Net's cascade (Isensee et al. 2021), a second
network works at the stitched resolution and takes the coarse probabilities as extra
input channels; here it is small (a few 3x3x3 convolutions, no down-sampling), because it
only has to move boundaries by a voxel or two where the image shows them, not find the
muscles.

The refiner is residual in logit space: its output is
``sigmoid(logit(coarse) + delta(image, coarse))`` with the last layer initialised to zero,
so before training it returns the coarse probabilities unchanged, and training starts
from the coarse model's accuracy rather than from nothing.

Its crop (``refine.crop`` in the model config, default :data:`myoflow.segment.crop.HIPS_CROP`) is
another :class:`myoflow.segment.crop.CropSpec` around the same hip, at the stitched spacing so
that cropping nearly copies voxels; the coarse probabilities are resampled linearly onto it
(:func:`coarse_on_fine`). Only the block where a coarse probability reaches
:data:`ACTIVE_FLOOR`, plus a margin, is run through the network (:func:`active_block`);
elsewhere the refined probability is the coarse one, which is below the floor there.

A cascade may average its first stage over several coarse crops, shifted by a fraction
of a coarse voxel (``refine.coarse_shifts_mm``, :func:`coarse_shifts`): the V-Net's
output depends on where the 4 x 4 x 6 mm lattice falls on the body, and averaging the
probabilities, each put on the fine grid, smooths that out before the refiner sees them.
On the cascade shipped before, the unshifted crop and 4 shifted by (+-2, +-2, +-3) mm
(each axis's signs balanced), calibrated with them, raised held-out Dice (iliopsoas,
gluteus, psoas major) from 0.947 / 0.954 / 0.952 to 0.949 / 0.955 / 0.954; all 8 corners
and the unshifted crop gave the same with the thresholds calibrated for one crop, adding
5.1 s to a participant's segmentation on 2 CPU threads where the 5 add 3.3 s. The shifts
are set when training the refiner (``myoflow refine --coarse-shifts-mm``), which then
learns on the averaged probabilities it will see in use, or later when calibrating
(``myoflow calibrate --coarse-shifts-mm``), so that the thresholds fit them.

This module holds the network and the array geometry; training is
:mod:`myoflow.segment.model.refine_train`, inference
:func:`myoflow.segment.model.predict.side_probabilities`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from myoflow.core.resample import linear_resample
from myoflow.segment.crop import HIPS_CROP, CropGeometry, CropSpec

FEATURES = 12
DILATIONS = (1, 2, 4, 1)
"""Four 3x3x3 convolutions dilated 1, 2, 4 and 1: a receptive field of 17 voxels
(38 mm in-plane) at about 14 k multiply-adds per voxel. On 2 CPU threads a 112 x 112 x 192
crop took 1.2 s (16 features: 4.0 s; 8: 0.8 s)."""

PROBABILITY_EPSILON = 1e-4
"""Coarse probabilities are clipped to [eps, 1 - eps] before the logit."""

ACTIVE_FLOOR = 0.01
"""The refiner runs where some coarse probability reaches this (plus :data:`MARGIN`)."""

MARGIN = 12
"""Voxels added around the active block on each side: beyond the receptive field's 8, so
the zero padding at the block's faces does not reach voxels that can become muscle."""


class Refiner(nn.Module):
    """Full-resolution boundary refinement of coarse per-label probabilities.

    Args:
        image_channels: image channels of the fine crop (e.g. water, fat).
        labels: label channels (those of the coarse model, in its order).
        features: channels of every hidden convolution.
        dilations: one 3x3x3 convolution (SELU after it) per entry, with that dilation.

    Shapes: ``forward(image, coarse)`` maps (N, image_channels, X, Y, Z) and (N, labels,
    X, Y, Z) to (N, labels, X, Y, Z) probabilities; any X, Y, Z.
    """

    def __init__(
        self,
        image_channels: int,
        labels: int,
        features: int = FEATURES,
        dilations: Sequence[int] = DILATIONS,
    ) -> None:
        super().__init__()
        if image_channels < 1 or labels < 1 or features < 1 or not dilations:
            raise ValueError(
                f"need image_channels, labels and features >= 1 and some dilations; got "
                f"{image_channels}, {labels}, {features} and {list(dilations)}"
            )
        if any(int(d) < 1 for d in dilations):
            raise ValueError(f"dilations must be >= 1, got {list(dilations)}")
        layers: list[nn.Module] = []
        width = image_channels + labels
        for dilation in dilations:
            layers += [nn.Conv3d(width, features, 3, padding=int(dilation), dilation=int(dilation))]
            layers += [nn.SELU()]
            width = features
        self.body = nn.Sequential(*layers)
        self.delta = nn.Conv3d(features, labels, 1)
        for layer in self.body:
            if isinstance(layer, nn.Conv3d):  # LeCun normal, as SELU expects
                nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")
                nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.delta.weight)  # starts as the identity on the coarse output
        nn.init.zeros_(self.delta.bias)
        self.labels = labels

    def logits(self, image: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Refined pre-sigmoid scores: ``logit(coarse) + delta``."""
        if image.ndim != 5 or coarse.ndim != 5 or image.shape[2:] != coarse.shape[2:]:
            raise ValueError(
                f"expected image (N, C, X, Y, Z) and coarse (N, L, X, Y, Z) on one grid, got "
                f"{tuple(image.shape)} and {tuple(coarse.shape)}"
            )
        if coarse.shape[1] != self.labels:
            raise ValueError(f"expected {self.labels} coarse channels, got {coarse.shape[1]}")
        coarse = coarse.clamp(PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
        prior = torch.log(coarse) - torch.log1p(-coarse)
        return prior + self.delta(self.body(torch.cat([image, coarse], dim=1)))

    def forward(self, image: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(image, coarse))


class Cascade(nn.Module):
    """The coarse network and its refiner, saved and loaded as one ``state_dict``."""

    def __init__(self, coarse: nn.Module, refiner: Refiner) -> None:
        super().__init__()
        self.coarse = coarse
        self.refiner = refiner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError(
            "a Cascade runs in two stages on two grids: use myoflow.segment.model.predict."
            "side_probabilities (or .coarse and .refiner), not the cascade itself"
        )


def coarse_network(model: nn.Module) -> nn.Module:
    """The network that sees the coarse crop: ``model`` itself, or a cascade's first stage."""
    return model.coarse if isinstance(model, Cascade) else model


# ------------------------------------------------------------------------------- config


def refine_spec(config: Mapping[str, Any]) -> CropSpec | None:
    """The refiner's crop of a model config, or None for a model without a refiner."""
    refine = config.get("refine")
    if refine is None:
        return None
    crop = refine.get("crop")
    return HIPS_CROP if crop is None else CropSpec.from_dict(crop)


def coarse_shifts(config: Mapping[str, Any]) -> list[tuple[float, float, float]]:
    """The (medial, posterior, superior) mm shifts of the coarse crop whose probabilities a
    cascade averages; just the unshifted crop unless ``refine.coarse_shifts_mm`` says."""
    shifts = (config.get("refine") or {}).get("coarse_shifts_mm") or [[0.0, 0.0, 0.0]]
    return [(float(m), float(p), float(s)) for m, p, s in shifts]


def shifted_spec(spec: CropSpec, shift_mm: Sequence[float]) -> CropSpec:
    """``spec`` with its centre moved by ``shift_mm`` (medial, posterior, superior)."""
    offset = tuple(float(a) + float(b) for a, b in zip(spec.offset_mm, shift_mm, strict=True))
    return replace(spec, offset_mm=offset)


def refine_config(
    features: int = FEATURES, dilations: Sequence[int] = DILATIONS, crop: CropSpec = HIPS_CROP
) -> dict[str, Any]:
    """The ``refine`` section of a model config."""
    return {
        "features": int(features),
        "dilations": [int(d) for d in dilations],
        "crop": crop.to_dict(),
    }


def build_refiner(config: Mapping[str, Any]) -> Refiner:
    """The untrained refiner of a model config that has a ``refine`` section."""
    refine = config["refine"]
    spec = refine_spec(config)
    assert spec is not None
    return Refiner(
        image_channels=len(spec.channels),
        labels=len(config["labels"]),
        features=int(refine.get("features", FEATURES)),
        dilations=tuple(int(d) for d in refine.get("dilations", DILATIONS)),
    )


# ----------------------------------------------------------------------------- geometry


def coarse_on_fine(
    probabilities: np.ndarray, coarse: CropGeometry, fine: CropGeometry
) -> np.ndarray:
    """Per-label coarse-crop probabilities resampled linearly onto a fine crop's grid.

    Args:
        probabilities: (L, *coarse.shape).
        coarse: the coarse crop's geometry.
        fine: the fine crop's geometry (same side, so the same mirroring).

    Fine voxels beyond the coarse crop's outermost voxel centres take the nearest edge
    value (the coarse crop is the wider one; this only matters at its rim).

    Returns:
        (L, *fine.shape) float32.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.shape[1:] != tuple(coarse.shape):
        raise ValueError(f"probabilities {probabilities.shape} are not on the crop {coarse.shape}")
    if coarse.side != fine.side:
        raise ValueError(f"coarse crop of the {coarse.side} side, fine crop of the {fine.side}")
    transform = np.linalg.inv(coarse.affine_lps) @ fine.affine_lps
    matrix, offset = transform[:3, :3], transform[:3, 3]
    return linear_resample(probabilities, matrix, offset, fine.shape, "nearest")


def active_block(
    coarse: np.ndarray, floor: float = ACTIVE_FLOOR, margin: int = MARGIN
) -> tuple[slice, slice, slice] | None:
    """The box of voxels where some label's coarse probability reaches ``floor``, grown by
    ``margin`` voxels and clipped to the crop; None where none does.

    Args:
        coarse: (L, X, Y, Z) coarse probabilities on the fine grid.
    """
    hits = np.asarray(coarse).max(axis=0) >= floor
    if not hits.any():
        return None
    block = []
    for axis in range(3):
        where = np.flatnonzero(hits.any(axis=tuple(a for a in range(3) if a != axis)))
        block.append(
            slice(
                max(int(where[0]) - margin, 0), min(int(where[-1]) + margin + 1, hits.shape[axis])
            )
        )
    return tuple(block)  # type: ignore[return-value]


def refine_probabilities(
    refiner: nn.Module,
    image: np.ndarray,
    coarse: np.ndarray,
    device: str | torch.device = "cpu",
    amp: bool = True,
) -> np.ndarray:
    """One side's refined probabilities on the fine crop.

    Args:
        refiner: a :class:`Refiner` in eval mode on ``device``.
        image: (C, X, Y, Z) the fine crop's normalised channels.
        coarse: (L, X, Y, Z) coarse probabilities on the same grid (:func:`coarse_on_fine`).
        device: where it runs.
        amp: on CUDA, mixed precision (as
            :func:`myoflow.segment.model.predict.predict_probabilities`).

    Returns:
        (L, X, Y, Z) float32: the refiner's output inside :func:`active_block`, the coarse
        probabilities (all below :data:`ACTIVE_FLOOR`) outside it.
    """
    coarse = np.asarray(coarse, dtype=np.float32)
    out = coarse.copy()
    block = active_block(coarse)
    if block is None:
        return out
    device = torch.device(device)
    mixed = amp and device.type == "cuda"
    dtype = torch.bfloat16 if mixed and torch.cuda.is_bf16_supported() else torch.float16
    where = (slice(None), *block)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=mixed):
        x = torch.from_numpy(np.ascontiguousarray(image[where], dtype=np.float32))[None]
        p = torch.from_numpy(np.ascontiguousarray(coarse[where]))[None]
        refined = refiner(x.to(device), p.to(device)).float().cpu().numpy()[0]
    out[where] = refined
    return out
