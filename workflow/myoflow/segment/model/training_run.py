"""The whole of ``myoflow train``: prepare samples, train, evaluate, write the model.

:func:`run_training` splits the pairs into training and held-out participants, prepares
(and caches) the training samples, trains with :func:`myoflow.segment.model.train.train` within an
optional time budget, segments the held-out participants the way the workflow does and
scores them (:func:`myoflow.segment.model.evaluate.evaluate`), and writes the weights with their
model card (:func:`myoflow.segment.model.card.save_model`) and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from myoflow.core.errors import MyoflowError
from myoflow.core.io import write_json, write_text
from myoflow.segment.model.card import CARD_FILE, load_model, save_model
from myoflow.segment.model.evaluate import Segmenter, evaluate, render_model_card
from myoflow.segment.model.registry import build_model, check_config, crop_spec, parameter_count
from myoflow.segment.model.samples import (
    TrainingPair,
    hash_inputs,
    prepare_pairs,
    training_data_sha256,
)
from myoflow.segment.model.targets import check_labels
from myoflow.segment.model.train import (
    CHECKPOINT_FILE,
    Progress,
    TrainingError,
    TrainResult,
    TrainSettings,
    split_participants,
    train,
)


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
    init_from: str | Path | None = None,
    max_minutes: float | None = None,
    log: Callable[[str], None] = lambda line: None,
    progress: Callable[[Progress], None] | None = None,
    segment: Segmenter | None = None,
) -> dict[str, Any]:
    """Prepare samples, train, evaluate on the held-out participants, save the model.

    Writes to ``out_dir``: ``checkpoint.pt`` (during training), ``model.pt`` and
    ``model_card.json`` (:func:`myoflow.segment.model.card.save_model`), ``MODEL_CARD.md``,
    ``split.json`` (the participant ids of each part; kept out of the card, which may
    travel with the weights), and the held-out tables ``held_out_dice.tsv``,
    ``held_out_volumes.tsv`` and ``held_out_agreement.tsv``. When ``max_minutes``
    (counted from the call, sample preparation included) runs out, training stops after
    the step in progress and the model trained so far is evaluated and saved, its card
    saying so; ``resume`` continues it. ``init_from`` (a model folder with the same config)
    starts from its weights instead of a random draw, with a fresh optimizer: a model
    trained further on more participants (its card records where it started).

    Returns:
        The model card as written.

    Raises:
        TrainingError: a bad split, no usable training participant, a checkpoint that
            does not match, or an ``init_from`` model of another config.
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
    # Checked before minutes of sample preparation.
    start = None if init_from is None else starting_weights(init_from, config)
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
        "initialised_from": None if start is None else start[1]["weights_sha256"],
    }

    if not resume and (out / CHECKPOINT_FILE).is_file():
        log(f"{out / CHECKPOINT_FILE} exists: starting afresh (--resume continues it)")
    torch.manual_seed(settings.seed)
    model = build_model(config)
    if start is not None and not resume:  # a resumed run takes the checkpoint's weights
        model.load_state_dict(start[0])
        log(f"starting from the weights of {init_from} ({start[1]['weights_sha256'][:12]})")
    model = model.to(target)
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
        evaluation.write(out)
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
        "training": training_record(result, settings, len(samples), prep_s, target)
        | {"initialised_from": None if start is None else init_record(start[1])},
        "software": software_versions(),
        "evaluation": evaluation.summary() if evaluation is not None else None,
    }
    written = save_model(out, model.state_dict(), config, card)
    write_text(out / "MODEL_CARD.md", render_model_card(written))
    log(f"model written to {out} (card {out / CARD_FILE})")
    return written


def starting_weights(
    model_dir: str | Path, config: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The verified weights and card of ``model_dir``, whose model must match ``config``.

    Calibrated thresholds are set aside: they cut a network's output, not shape it.

    Raises:
        TrainingError: another architecture, crop, channels, labels or width.
        ModelIntegrityError: the folder's weights are missing or fail their checksum.
    """
    model, card = load_model(model_dir, "cpu")
    theirs = {k: v for k, v in card["config"].items() if k != "thresholds"}
    ours = {k: v for k, v in json.loads(json.dumps(dict(config))).items() if k != "thresholds"}
    if theirs != ours:
        differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise TrainingError(
            f"--init-from {model_dir}: its model differs from this one in {', '.join(differ)}"
        )
    return model.state_dict(), card


def init_record(card: Mapping[str, Any]) -> dict[str, Any]:
    """Which model training started from, for the card."""
    training = card.get("training") or {}
    return {
        "weights_sha256": card["weights_sha256"],
        "epochs_done": training.get("epochs_done"),
        "steps": training.get("steps"),
        "initialised_from": training.get("initialised_from"),
    }


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
        "intensity_augmentation": settings.intensity.to_dict(),
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


def load_to_derive(
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    device: str,
    threads: int | None,
) -> tuple[torch.nn.Module, dict[str, Any], torch.device]:
    """Load the model a new one is derived from (a refined or calibrated copy) onto the
    device; set torch's CPU threads when given.

    Raises:
        MyoflowError: ``out`` is the model's own folder (it would be overwritten).
    """
    if Path(model_dir).resolve() == Path(out).resolve():
        raise MyoflowError(f"--out {out} must be a new folder, not the model's own")
    if threads:
        torch.set_num_threads(threads)
    target = resolve_device(device)
    model, card = load_model(model_dir, target)
    return model, card, target
