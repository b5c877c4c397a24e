"""Training the full-resolution refiner of a trained coarse model
(:mod:`myoflow.segment.model.refine`).

The coarse network is frozen. Each training participant is prepared once: both sides'
fine crops (image channels), the coarse probabilities resampled onto them (averaged over
the coarse shifts of the config, :func:`myoflow.segment.model.predict.coarse_priors`), and the
partial-volume targets on the fine grid (:class:`RefineSample`). Training then draws
random patches (:func:`draw_patch`), most of them centred where the coarse probabilities
disagree with the targets (:data:`DISAGREEMENT`), since that is all the refiner has to
learn; the rest anywhere in the crop, so it also learns to leave agreeing voxels alone.

Loss: soft Dice (V-Net form) of each label over the whole batch, plus binary cross-
entropy. The batch-wide Dice does not punish a patch for holding little of a label, as
a per-patch Dice would; the cross-entropy gives every voxel a gradient, also where the
Dice of a patch is already flat. Everything random follows from the seed.

The refiner learns from the coarse network's output on the pairs it is given. Those are
usually the coarse network's own training participants, on which its output may be
better than on unseen ones; the card records the pairs' data hash.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from myoflow.segment.crop import SIDES, crop_participant
from myoflow.segment.model.intensity import IntensitySettings, apply_intensity, random_intensity
from myoflow.segment.model.losses import soft_dice_loss
from myoflow.segment.model.predict import coarse_priors, model_labels
from myoflow.segment.model.refine import Cascade, Refiner, build_refiner, refine_spec
from myoflow.segment.model.registry import model_channels
from myoflow.segment.model.samples import (
    TrainingPair,
    each_pair,
    participant_hips,
    read_channels,
    read_label_map,
)
from myoflow.segment.model.targets import side_label_values, soft_targets

DISAGREEMENT = 0.1
"""A voxel is a patch-centre candidate where some label's coarse probability and target
differ by more than this."""


@dataclass(frozen=True)
class RefineSettings:
    """The refiner's optimisation recipe."""

    steps: int = 1500
    batch_size: int = 4
    patch: tuple[int, int, int] = (64, 64, 64)
    learning_rate: float = 1e-3
    candidate_fraction: float = 0.8
    seed: int = 0
    # Intensity augmentation of every patch's image (the coarse probabilities it refines
    # come from the network and are left as they are).
    intensity: IntensitySettings = field(default_factory=IntensitySettings)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ValueError("steps and batch_size must be >= 1 and learning_rate > 0")
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch must be 3 positive sizes, got {self.patch}")
        if not 0.0 <= self.candidate_fraction <= 1.0:
            raise ValueError(f"candidate_fraction must be in [0, 1], got {self.candidate_fraction}")


@dataclass(frozen=True)
class RefineSample:
    """One side of one participant on the fine crop, float16: ``image`` (C, X, Y, Z),
    ``coarse`` and ``target`` (L, X, Y, Z); ``candidates``: flat indices of the voxels
    where they disagree (:data:`DISAGREEMENT`)."""

    participant_id: str
    side: str
    image: np.ndarray
    coarse: np.ndarray
    target: np.ndarray
    candidates: np.ndarray


def prepare_refine_sample(
    model: nn.Module,
    config: Mapping[str, Any],
    pair: TrainingPair,
    device: str | torch.device = "cpu",
) -> list[RefineSample]:
    """Both sides of one annotated pair, prepared for refiner training.

    Args:
        model: the coarse network (eval mode, on ``device``).
        config: a model config with a ``refine`` section.

    Raises:
        PairsError: a file of the pair is missing or unreadable.
        LandmarkError: no landmarks file and the hips cannot be detected.
    """
    fine_spec = refine_spec(config)
    if fine_spec is None:
        raise ValueError("the model config has no refine section")
    labels = model_labels(config)
    detect = () if pair.landmarks else ("water", "fat")
    channels, affine = read_channels(pair, list(dict.fromkeys([*model_channels(config), *detect])))
    hips = participant_hips(pair, channels, affine)
    fine = crop_participant(channels, affine, hips, fine_spec)
    priors = coarse_priors(model, config, channels, affine, hips, fine, device)
    label_map, label_affine = read_label_map(pair.labels, pair.participant_id)
    samples = []
    for side in SIDES:
        prior = priors[side]
        target = soft_targets(
            label_map, label_affine, fine[side].geometry, side_label_values(labels, side)
        )
        disagree = np.abs(prior - target).max(axis=0) > DISAGREEMENT
        samples.append(
            RefineSample(
                pair.participant_id,
                side,
                fine[side].image.astype(np.float16),
                prior.astype(np.float16),
                target.astype(np.float16),
                np.flatnonzero(disagree).astype(np.int64),
            )
        )
    return samples


def prepare_refine_pairs(
    model: nn.Module,
    config: Mapping[str, Any],
    pairs: Sequence[TrainingPair],
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = lambda line: None,
) -> tuple[list[RefineSample], dict[str, dict[str, str]]]:
    """:func:`prepare_refine_sample` of each pair; those whose hips cannot be found are
    returned apart with their reason."""
    prepared, excluded = each_pair(
        pairs, lambda pair: prepare_refine_sample(model, config, pair, device), "refine", log
    )
    return [sample for both in prepared for sample in both], excluded


def draw_patch(
    sample: RefineSample,
    patch: Sequence[int],
    rng: np.random.Generator,
    candidate_fraction: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random patch (image, coarse, target; float32) of ``sample``.

    With probability ``candidate_fraction`` (and when the sample has candidates) it is
    centred on a random candidate voxel, else on a random voxel; the patch is then moved
    to lie inside the crop, which must be at least the patch's size.
    """
    shape = np.asarray(sample.image.shape[1:])
    size = np.asarray(patch)
    if np.any(size > shape):
        raise ValueError(f"patch {tuple(size)} is larger than the crop {tuple(shape)}")
    if len(sample.candidates) and rng.random() < candidate_fraction:
        centre = np.array(np.unravel_index(rng.choice(sample.candidates), tuple(shape)))
    else:
        centre = np.array([rng.integers(0, n) for n in shape])
    start = np.clip(centre - size // 2, 0, shape - size)
    where = (slice(None), *(slice(int(a), int(a + n)) for a, n in zip(start, size, strict=True)))
    return (
        sample.image[where].astype(np.float32),
        sample.coarse[where].astype(np.float32),
        sample.target[where].astype(np.float32),
    )


def refine_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch-wide soft Dice per label plus binary cross-entropy (module docstring)."""
    probabilities = torch.sigmoid(logits)
    # (N, L, ...) -> (1, L, N * ...): one Dice per label over the whole batch.
    whole = probabilities.transpose(0, 1).flatten(1)[None]
    dice = soft_dice_loss(whole, target.transpose(0, 1).flatten(1)[None])
    return dice + F.binary_cross_entropy_with_logits(logits, target)


def train_refiner(
    refiner: Refiner,
    samples: Sequence[RefineSample],
    settings: RefineSettings,
    device: str | torch.device = "cpu",
    deadline: float | None = None,
    log: Callable[[str], None] = lambda line: None,
    log_every: int = 50,
) -> dict[str, Any]:
    """Train ``refiner`` in place on patches of ``samples``; return the training record.

    Stops after ``settings.steps`` steps, or after the step in progress once
    ``time.monotonic()`` passes ``deadline``.
    """
    if not samples:
        raise ValueError("no refiner training samples")
    device = torch.device(device)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    refiner.to(device).train()
    optimiser = torch.optim.Adam(refiner.parameters(), lr=settings.learning_rate)
    losses: list[float] = []
    window: list[float] = []
    started = time.monotonic()
    step = 0
    for step in range(1, settings.steps + 1):
        batch = [
            draw_patch(samples[int(i)], settings.patch, rng, settings.candidate_fraction)
            for i in rng.integers(0, len(samples), settings.batch_size)
        ]
        if settings.intensity.enabled:
            batch = [
                (apply_intensity(image, random_intensity(rng, settings.intensity, len(image)),
                                 rng), coarse, target)
                for image, coarse, target in batch
            ]  # fmt: skip
        image, coarse, target = (
            torch.from_numpy(np.stack(part)).to(device) for part in zip(*batch, strict=True)
        )
        loss = refine_loss(refiner.logits(image, coarse), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        window.append(loss.item())
        if step % log_every == 0 or step == settings.steps:
            losses.append(float(np.mean(window)))
            window = []
            log(f"refine step {step}/{settings.steps}: loss {losses[-1]:.4f}")
        if deadline is not None and time.monotonic() > deadline:
            log(f"refine: time budget spent after step {step}")
            break
    refiner.eval()
    seconds = time.monotonic() - started
    return {
        "settings": asdict(settings),
        "steps_done": step,
        "complete": step == settings.steps,
        "loss_every": log_every,
        "losses": losses,
        "wall_time_s": seconds,
        "seconds_per_step": seconds / step,
        "samples": len(samples),
        "loss": "soft Dice per label over the batch + binary cross-entropy",
        "optimizer": "Adam",
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def attach_refiner(model: nn.Module, config: Mapping[str, Any]) -> Cascade:
    """A cascade of the trained coarse ``model`` and a new refiner for ``config``."""
    return Cascade(model, build_refiner(config))
