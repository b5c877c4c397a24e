"""Training the segmentation network: split, epochs of augmented batches, checkpoints.

The recipe is the UK Biobank paper's: Adam (learning rate 1e-4), batches of 3, soft Dice
loss, and in every epoch each sample (one side of one participant) once as it is and
``copies`` times randomly shifted and scaled (:mod:`myoflow.segment.model.augment`).

Everything random is a function of the seed: the network's initial weights
(``torch.manual_seed``), the order of an epoch's items and each item's transform (numpy
generators seeded with ``(seed, epoch[, sample, copy])``). A checkpoint therefore only
needs the weights, the optimizer, and where in which epoch training stopped for a resumed
run to continue exactly as an uninterrupted one. Checkpoints are written atomically after
every epoch, every ``checkpoint_minutes``, and when the time budget runs out (training
then stops after the step in progress).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from myoflow.core.errors import MyoflowError
from myoflow.core.io import write_bytes
from myoflow.segment.model.augment import AugmentSettings, apply_affine, copy_transform
from myoflow.segment.model.intensity import IntensitySettings, apply_intensity, random_intensity
from myoflow.segment.model.losses import soft_dice_loss
from myoflow.segment.model.samples import (
    Sample,
)

CHECKPOINT_FILE = "checkpoint.pt"


class TrainingError(MyoflowError):
    """Training cannot start or resume as asked (bad split, mismatched checkpoint, ...)."""


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation recipe. ``epochs`` may grow between a run and its resumption."""

    epochs: int = 50
    batch_size: int = 3
    learning_rate: float = 1e-4
    seed: int = 0
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    checkpoint_minutes: float = 10.0
    # Intensity augmentation of the random copies (off: the recipe before it existed).
    intensity: IntensitySettings = field(default_factory=IntensitySettings)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ValueError("epochs and batch_size must be >= 1 and learning_rate > 0")

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues."""
        out = {
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
            "augment": self.augment.to_dict(),
        }
        if self.intensity.enabled:  # absent when off: older checkpoints still resume
            out["intensity"] = self.intensity.to_dict()
        return out


@dataclass
class TrainState:
    """Where training stands; saved in the checkpoint."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # batches done in the epoch in progress
    step: int = 0  # batches done in all
    elapsed_s: float = 0.0  # training wall time over all runs
    epoch_loss_sum: float = 0.0  # sum of item losses in the epoch in progress
    epoch_losses: list[float] = field(default_factory=list)  # mean loss of each epoch


@dataclass(frozen=True)
class Progress:
    """What the progress display shows after each step."""

    epoch: int  # 0-based epoch in progress
    epochs: int
    step_in_epoch: int
    steps_in_epoch: int
    step: int
    loss: float
    epoch_loss: float  # mean over the epoch so far
    samples_per_second: float
    elapsed_s: float


@dataclass(frozen=True)
class TrainResult:
    """How a call of :func:`train` ended."""

    state: TrainState
    complete: bool  # all epochs done; False: stopped by the time budget
    checkpoint: Path
    steps_run: int  # steps of this call (not of the run it resumed)
    seconds: float  # wall time of this call


# ------------------------------------------------------------------------------ split


def split_participants(
    ids: Sequence[str],
    *,
    val_fraction: float = 0.2,
    held_out: Sequence[str] | None = None,
    folds: int | None = None,
    fold: int | None = None,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """(training ids, held-out ids), both sorted.

    ``held_out`` names them; else with ``folds`` the ids are shuffled with ``seed`` and
    fold ``fold`` (0-based) of ``folds`` near-equal parts is held out; else a
    ``val_fraction`` share (rounded, at least one when the fraction is positive).

    Raises:
        TrainingError: an unknown held-out id, a bad fold, or no training ids left.
    """
    ids = sorted(ids)
    if held_out is not None:
        unknown = sorted(set(held_out) - set(ids))
        if unknown:
            raise TrainingError(f"held-out ids not in the training pairs: {unknown}")
        chosen = set(held_out)
    else:
        order = list(np.random.default_rng(seed).permutation(len(ids)))
        if folds is not None:
            if folds < 2 or fold is None or not 0 <= fold < folds or folds > len(ids):
                raise TrainingError(
                    f"k-fold needs 2 <= folds <= {len(ids)} participants and 0 <= fold < "
                    f"folds; got folds={folds}, fold={fold}"
                )
            chosen = {ids[i] for i in np.array_split(order, folds)[fold]}
        else:
            if not 0 <= val_fraction < 1:
                raise TrainingError(f"val_fraction must lie in [0, 1), got {val_fraction}")
            count = max(1, round(val_fraction * len(ids))) if val_fraction > 0 else 0
            chosen = {ids[i] for i in order[:count]}
    train_ids = [i for i in ids if i not in chosen]
    if not train_ids:
        raise TrainingError("no participants left to train on after holding out")
    return train_ids, sorted(chosen)


# ---------------------------------------------------------------------------- batches


def epoch_plan(n_samples: int, copies: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's items in order: rows (sample index, copy index), copy 0 the original."""
    items = np.stack(np.meshgrid(np.arange(n_samples), np.arange(copies + 1), indexing="ij"))
    items = items.reshape(2, -1).T
    return items[np.random.default_rng([seed, epoch]).permutation(len(items))]


def make_batch(
    samples: Sequence[Sample],
    items: np.ndarray,
    settings: TrainSettings,
    epoch: int,
    spacing_mm: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, X, Y, Z) and targets (N, L, X, Y, Z), float32, of the batch's items."""
    images, targets = [], []
    for sample_index, copy in items:
        sample = samples[int(sample_index)]
        rng = np.random.default_rng([settings.seed, epoch, int(sample_index), int(copy)])
        params = copy_transform(int(copy), rng, settings.augment, spacing_mm)
        image = apply_affine(sample.image, params)
        if copy > 0 and settings.intensity.enabled:
            looks = random_intensity(rng, settings.intensity, image.shape[0])
            image = apply_intensity(image, looks, rng)
        images.append(image)
        targets.append(apply_affine(sample.target, params))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets))


# ------------------------------------------------------------------------ checkpoints


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    fingerprint: Mapping[str, Any],
) -> None:
    """Write model, optimizer, training state and RNG states to ``path`` atomically."""
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": asdict(state),
        "fingerprint": dict(fingerprint),
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        payload["cuda_rng"] = torch.cuda.get_rng_state_all()
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(path, buffer.getvalue())


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    fingerprint: Mapping[str, Any],
    device: torch.device,
) -> TrainState:
    """Restore model, optimizer and RNG states from ``path``; return the training state.

    Raises:
        TrainingError: no checkpoint, an unreadable one, or one of another setup (model
            config, recipe, split or training data differ).
    """
    if not path.is_file():
        raise TrainingError(f"no checkpoint to resume from at {path}")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise TrainingError(f"checkpoint {path} cannot be read: {err}") from err
    saved = payload.get("fingerprint", {})
    differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if differ:
        raise TrainingError(
            f"checkpoint {path} was made with other {', '.join(differ)}; resume with the "
            "same model, recipe, split and training data, or start afresh in a new folder"
        )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["torch_rng"].cpu())
    if "cuda_rng" in payload and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in payload["cuda_rng"]])
    return TrainState(**payload["state"])


# ------------------------------------------------------------------------------- loop


def train(
    model: nn.Module,
    samples: Sequence[Sample],
    settings: TrainSettings,
    out_dir: str | Path,
    *,
    spacing_mm: Sequence[float],
    device: torch.device,
    fingerprint: Mapping[str, Any],
    resume: bool = False,
    deadline: float | None = None,
    progress: Callable[[Progress], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TrainResult:
    """Train ``model`` (already on ``device``) on ``samples`` up to ``settings.epochs``.

    Args:
        model: the network; its weights are updated in place.
        samples: the training samples (their order is part of the seeded plan).
        settings: the recipe.
        out_dir: where ``checkpoint.pt`` is written.
        spacing_mm: voxel size of the crops, for the augmentation's mm shifts.
        device: where batches go.
        fingerprint: what identifies this training (config, split, data hash); stored in
            the checkpoint and compared on ``resume``.
        resume: continue from ``out_dir/checkpoint.pt``.
        deadline: ``clock()`` value after which training stops (after the step in
            progress) with a checkpoint.
        progress: called after every step.
        clock: seconds, monotonic (a parameter for tests).

    Raises:
        TrainingError: no samples, or ``resume`` without a matching checkpoint.
    """
    if not samples:
        raise TrainingError("no training samples")
    path = Path(out_dir) / CHECKPOINT_FILE
    full_fingerprint = dict(fingerprint) | {"recipe": settings.fingerprint()}
    # Channels-last 3D: a step of the width-0.5 V-Net on 2 CPU threads took ~1.4 times
    # less CPU time so (as for inference in myoflow.segment.model.predict).
    model.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    state = (
        load_checkpoint(path, model, optimizer, full_fingerprint, device)
        if resume
        else TrainState()
    )
    model.train()
    batch = settings.batch_size
    started = last_checkpoint = clock()
    elapsed_before, steps_before = state.elapsed_s, state.step
    rate = 0.0

    def result(complete: bool) -> TrainResult:
        return TrainResult(state, complete, path, state.step - steps_before, clock() - started)

    def checkpoint() -> None:
        state.elapsed_s = elapsed_before + clock() - started
        save_checkpoint(path, model, optimizer, state, full_fingerprint)

    while state.epoch < settings.epochs:
        plan = epoch_plan(len(samples), settings.augment.copies, settings.seed, state.epoch)
        steps = math.ceil(len(plan) / batch)
        while state.step_in_epoch < steps:
            tick = clock()
            items = plan[state.step_in_epoch * batch : (state.step_in_epoch + 1) * batch]
            images, targets = make_batch(samples, items, settings, state.epoch, spacing_mm)
            optimizer.zero_grad(set_to_none=True)
            images = images.to(device, memory_format=torch.channels_last_3d)
            loss = soft_dice_loss(model(images), targets.to(device))
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            state.step_in_epoch += 1
            state.step += 1
            state.epoch_loss_sum += value * len(items)
            now = clock()
            # Samples per second over about the last ten steps (batch preparation included).
            current = len(items) / max(now - tick, 1e-9)
            rate = current if rate == 0.0 else 0.9 * rate + 0.1 * current
            if progress is not None:
                done = min(state.step_in_epoch * batch, len(plan))
                progress(
                    Progress(
                        state.epoch,
                        settings.epochs,
                        state.step_in_epoch,
                        steps,
                        state.step,
                        value,
                        state.epoch_loss_sum / done,
                        rate,
                        elapsed_before + now - started,
                    )
                )
            if state.step_in_epoch == steps:
                break
            if deadline is not None and now >= deadline:
                checkpoint()
                return result(False)
            if now - last_checkpoint >= settings.checkpoint_minutes * 60.0:
                checkpoint()
                last_checkpoint = now
        state.epoch_losses.append(state.epoch_loss_sum / len(plan))
        state.epoch += 1
        state.step_in_epoch = 0
        state.epoch_loss_sum = 0.0
        checkpoint()
        last_checkpoint = clock()
        if deadline is not None and clock() >= deadline and state.epoch < settings.epochs:
            return result(False)
    return result(True)
