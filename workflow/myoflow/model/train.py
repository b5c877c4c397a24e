"""Training the segmentation network: split, epochs of augmented batches, checkpoints.

The recipe is the UK Biobank paper's: Adam (learning rate 1e-4), batches of 3, soft Dice
loss, and in every epoch each sample (one side of one participant) once as it is and
``copies`` times randomly shifted and scaled (:mod:`myoflow.model.augment`).

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
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from myoflow.errors import MyoflowError
from myoflow.io import write_bytes, write_json, write_text, write_tsv
from myoflow.model.augment import AugmentSettings, apply_affine, copy_transform
from myoflow.model.card import CARD_FILE, save_model
from myoflow.model.evaluate import Segmenter, evaluate, render_model_card
from myoflow.model.losses import soft_dice_loss
from myoflow.model.registry import build_model, check_config, crop_spec, parameter_count
from myoflow.model.samples import (
    Sample,
    TrainingPair,
    check_labels,
    hash_inputs,
    prepare_pairs,
    training_data_sha256,
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

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ValueError("epochs and batch_size must be >= 1 and learning_rate > 0")

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues."""
        return {
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
            "augment": self.augment.to_dict(),
        }


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
        images.append(apply_affine(sample.image, params))
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
    # less CPU time so (as for inference in myoflow.model.predict).
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


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; otherwise the named device.

    Raises:
        TrainingError: CUDA is asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name} asked for, but CUDA is not available here")
    return device


# ------------------------------------------------------------------ the whole training


@dataclass(frozen=True)
class SplitSettings:
    """How held-out participants are chosen (see :func:`split_participants`)."""

    val_fraction: float = 0.2
    held_out: tuple[str, ...] | None = None
    folds: int | None = None
    fold: int | None = None

    def describe(self, seed: int) -> str:
        if self.held_out is not None:
            return "held-out ids given"
        if self.folds is not None:
            return f"fold {self.fold} of {self.folds} (seed {seed})"
        return f"val_fraction {self.val_fraction} (seed {seed})"


def software_versions() -> dict[str, str]:
    """Versions that decide what a model computes."""
    import platform

    from myoflow import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "myoflow": __version__,
    }


def run_training(
    pairs: Sequence[TrainingPair],
    config: Mapping[str, Any],
    settings: TrainSettings,
    out_dir: str | Path,
    *,
    split: SplitSettings = SplitSettings(),
    cache_dir: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    resume: bool = False,
    max_minutes: float | None = None,
    log: Callable[[str], None] = lambda line: None,
    progress: Callable[[Progress], None] | None = None,
    segment: Segmenter | None = None,
) -> dict[str, Any]:
    """Prepare samples, train, evaluate on the held-out participants, save the model.

    Writes to ``out_dir``: ``checkpoint.pt`` (during training), ``model.pt`` and
    ``model_card.json`` (:func:`myoflow.model.card.save_model`), ``MODEL_CARD.md``,
    ``split.json`` (the participant ids of each part; kept out of the card, which may
    travel with the weights), and the held-out tables ``held_out_dice.tsv``,
    ``held_out_volumes.tsv`` and ``held_out_agreement.tsv``. When ``max_minutes``
    (counted from the call, sample preparation included) runs out, training stops after
    the step in progress and the model trained so far is evaluated and saved, its card
    saying so; ``resume`` continues it.

    Returns:
        The model card as written.

    Raises:
        TrainingError: a bad split, no usable training participant, or a checkpoint that
            does not match.
        PairsError: a file of a pair is missing or unreadable.
        ModelConfigError: ``config`` is invalid.
    """
    started = time.monotonic()
    out = Path(out_dir)
    check_config(config)
    spec = crop_spec(config)
    labels = list(config["labels"])
    check_labels(labels)
    if int(config["in_channels"]) != len(spec.channels):
        raise TrainingError(
            f"in_channels {config['in_channels']} does not match the crop's channels "
            f"{list(spec.channels)}"
        )
    if threads:
        torch.set_num_threads(threads)
    target = resolve_device(device)
    by_id = {pair.participant_id: pair for pair in pairs}
    train_ids, held_ids = split_participants(
        list(by_id),
        val_fraction=split.val_fraction,
        held_out=split.held_out,
        folds=split.folds,
        fold=split.fold,
        seed=settings.seed,
    )
    log(f"{len(train_ids)} training and {len(held_ids)} held-out participants")

    prep_started = time.monotonic()
    prepared, excluded = prepare_pairs([by_id[i] for i in train_ids], spec, labels, cache_dir, log)
    prep_s = time.monotonic() - prep_started
    if not prepared:
        raise TrainingError("no training participant could be prepared")
    samples = [sample for p in prepared for sample in p.samples]
    held_hashes = {i: hash_inputs(by_id[i], spec.channels) for i in held_ids}
    data_sha = training_data_sha256({p.participant_id: p.file_sha256 for p in prepared})
    fingerprint = {
        "config": json.loads(json.dumps(dict(config))),
        "train_ids": [p.participant_id for p in prepared],
        "held_out_ids": held_ids,
        "training_data_sha256": data_sha,
    }

    if not resume and (out / CHECKPOINT_FILE).is_file():
        log(f"{out / CHECKPOINT_FILE} exists: starting afresh (--resume continues it)")
    torch.manual_seed(settings.seed)
    model = build_model(config).to(target)
    deadline = None if max_minutes is None else started + max_minutes * 60.0
    log(
        f"training {parameter_count(model):,} parameters on {target} ({len(samples)} samples "
        f"x {settings.augment.copies + 1} per epoch, batch {settings.batch_size})"
    )
    result = train(
        model,
        samples,
        settings,
        out,
        spacing_mm=spec.spacing_mm,
        device=target,
        fingerprint=fingerprint,
        resume=resume,
        deadline=deadline,
        progress=progress,
    )
    if not result.complete:
        log(f"time budget spent: stopped in epoch {result.state.epoch + 1}; --resume continues")

    evaluation = None
    if held_ids:
        evaluation = evaluate(
            model, config, [by_id[i] for i in held_ids], target, segment=segment, log=log
        )
        write_tsv(out / "held_out_dice.tsv", evaluation.dice)
        write_tsv(out / "held_out_volumes.tsv", evaluation.volumes)
        write_tsv(out / "held_out_agreement.tsv", evaluation.agreement)
    write_json(
        out / "split.json",
        {"train": train_ids, "held_out": held_ids, "excluded": excluded, "split": asdict(split)},
    )
    card = {
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "parameters": parameter_count(model),
        "data": {
            "training_data_sha256": data_sha,
            "held_out_data_sha256": training_data_sha256(held_hashes),
            "train_participants": len(prepared),
            "held_out_participants": len(held_ids),
            "excluded": excluded,
            "split": split.describe(settings.seed),
        },
        "training": training_record(result, settings, len(samples), prep_s, target),
        "software": software_versions(),
        "evaluation": evaluation.summary() if evaluation is not None else None,
    }
    written = save_model(out, model.state_dict(), config, card)
    write_text(out / "MODEL_CARD.md", render_model_card(written))
    log(f"model written to {out} (card {out / CARD_FILE})")
    return written


def training_record(
    result: TrainResult,
    settings: TrainSettings,
    n_samples: int,
    preparation_s: float,
    device: torch.device,
) -> dict[str, Any]:
    """The model card's ``training`` section: recipe, progress, losses and timings."""
    state = result.state
    items = n_samples * (settings.augment.copies + 1)
    done_items = min(items, state.step_in_epoch * settings.batch_size)
    return {
        "epochs": settings.epochs,
        "epochs_done": state.epoch + done_items / items,
        "complete": result.complete,
        "steps": state.step,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "optimizer": "Adam",
        "seed": settings.seed,
        "augment": settings.augment.to_dict(),
        "loss": "soft Dice (V-Net form), mean over samples and labels",
        "epoch_losses": state.epoch_losses,
        "final_loss": state.epoch_losses[-1] if state.epoch_losses else None,
        "unfinished_epoch_loss": state.epoch_loss_sum / done_items if done_items else None,
        "wall_time_s": state.elapsed_s,
        "seconds_per_step": result.seconds / result.steps_run if result.steps_run else None,
        "sample_preparation_s": preparation_s,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
