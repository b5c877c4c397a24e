"""The whole of ``myoflow refine``: a full-resolution refiner on top of a trained coarse model.

:func:`run_refine` loads the coarse model, attaches a refiner to it
(:func:`myoflow.segment.model.refine_train.attach_refiner`), prepares the refiner's samples
and trains it with the coarse network frozen
(:func:`myoflow.segment.model.refine_train.train_refiner`), evaluates the cascade on held-out
participants (:func:`myoflow.segment.model.evaluate.evaluate`) and writes it with its model
card (:func:`myoflow.segment.model.card.save_model`) and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from myoflow.core.errors import MyoflowError
from myoflow.core.io import write_text
from myoflow.segment.model.card import load_model, read_card, save_model
from myoflow.segment.model.evaluate import evaluate, render_model_card
from myoflow.segment.model.pair_selection import PairSelection, held_out_data, with_coarse_shifts
from myoflow.segment.model.refine import DILATIONS, FEATURES, Cascade, refine_config
from myoflow.segment.model.refine_train import (
    RefineSettings,
    attach_refiner,
    prepare_refine_pairs,
    train_refiner,
)
from myoflow.segment.model.registry import model_channels, parameter_count
from myoflow.segment.model.samples import hash_inputs, training_data_sha256
from myoflow.segment.model.training_run import load_to_derive, software_versions


def run_refine(
    model_dir: str | Path,
    pairs: PairSelection,
    held_out: PairSelection,
    out: str | Path,
    settings: RefineSettings,
    *,
    features: int | None = None,
    dilations: Sequence[int] | None = None,
    coarse_shifts_mm: Sequence[float] | None = None,
    init_from: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    max_minutes: float | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Prepare the refiner's samples, train it, evaluate the cascade, write it.

    Writes to ``out`` (a new folder): ``model.pt`` (both stages), ``model_card.json``
    (the coarse model's config with a ``refine`` section, ``refine_training`` and, with
    held-out pairs, the held-out ``evaluation`` and ``data``), ``MODEL_CARD.md`` and
    ``held_out_*.tsv``. The coarse model's thresholds are dropped: they cut its output,
    so the cascade is calibrated anew. Training stops after ``max_minutes`` (counted from
    the call; None or 0: no limit), then the cascade is evaluated and saved.

    Args:
        model_dir: The trained coarse model's folder.
        pairs: The refiner's training pairs.
        held_out: The pairs to evaluate on (none: no evaluation).
        out: The cascade model folder to write.
        settings: The refiner's optimisation recipe.
        features: Hidden channels of the refiner (None: the default).
        dilations: One per refiner layer (None: the default).
        coarse_shifts_mm: Flat (medial, posterior, superior) mm triples over which the
            first stage is averaged, in training and in use (None: one unshifted crop).
        init_from: A cascade whose refiner (same shape and crop) training continues.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: CPU threads for torch (None: torch's default).
        max_minutes: The time budget.
        log: Receives progress lines.

    Returns:
        The model card as written.

    Raises:
        MyoflowError: ``out`` is the model's own folder, the model already has a refiner,
            participants both train and evaluate, no participant could be prepared, an
            ``init_from`` of another shape or crop, bad coarse shifts or pair selections.
    """
    started = time.monotonic()
    out = Path(out)
    coarse, card, target = load_to_derive(model_dir, out, device, threads)
    if card["config"].get("refine") is not None:
        raise MyoflowError(f"{model_dir} already has a refiner; give its coarse model")
    config = dict(card["config"])
    config.pop("thresholds", None)  # they cut the coarse output; calibrate the cascade anew
    config["refine"] = refine_config(features or FEATURES, dilations or DILATIONS)
    if coarse_shifts_mm:
        config = with_coarse_shifts(config, coarse_shifts_mm)
    train_pairs = pairs.read()
    held = held_out.read()
    overlap = sorted({p.participant_id for p in train_pairs} & {p.participant_id for p in held})
    if overlap:
        raise MyoflowError(f"participants both train the refiner and evaluate: {overlap}")
    cascade = attach_refiner(coarse, config)
    if init_from is not None:  # checked before minutes of preparation
        start_from(cascade, config, init_from)
    samples, excluded = prepare_refine_pairs(coarse, config, train_pairs, target, log)
    if not samples:
        raise MyoflowError("no refiner training participant could be prepared")
    preparation_s = time.monotonic() - started
    for parameter in cascade.coarse.parameters():
        parameter.requires_grad_(False)
    deadline = None if not max_minutes else started + max_minutes * 60.0
    record = train_refiner(cascade.refiner, samples, settings, target, deadline, log)
    channels = model_channels(config)
    record |= {
        "preparation_s": preparation_s,
        "participants": len({s.participant_id for s in samples}),
        "excluded": excluded,
        "data_sha256": training_data_sha256(
            {p.participant_id: hash_inputs(p, channels) for p in train_pairs}
        ),
        "refiner_parameters": parameter_count(cascade.refiner),
        "coarse_weights_sha256": card["weights_sha256"],
        "initialised_from": None if init_from is None else init_record(init_from),
        "software": software_versions(),
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    written = {k: v for k, v in card.items() if k not in ("calibration", "evaluation")}
    written |= {"refine_training": record, "evaluation": None}
    if held:
        evaluation = evaluate(cascade, config, held, target, log=log)
        out.mkdir(parents=True, exist_ok=True)
        evaluation.write(out)
        written["evaluation"] = evaluation.summary()
        written["data"] = held_out_data(card, held, channels)
    written["parameters"] = sum(p.numel() for p in cascade.parameters())  # coarse is frozen
    saved = save_model(out, cascade.state_dict(), config, written)
    write_text(out / "MODEL_CARD.md", render_model_card(saved))
    return saved


def start_from(cascade: Cascade, config: Mapping[str, Any], folder: str | Path) -> None:
    """Load the refiner of the cascade in ``folder`` into ``cascade``.

    The first stage may differ (a retrained one): the refiner's inputs (the image and
    coarse probabilities on the same crop) mean the same, only their errors change.

    Raises:
        MyoflowError: it is not a cascade with this refiner shape over the same crop.
    """
    earlier, earlier_card = load_model(folder, "cpu")
    same_crop = earlier_card["config"].get("crop") == config.get("crop")

    def shape(refine: Mapping[str, Any] | None) -> dict[str, Any]:
        # The coarse shifts are how a cascade is run, not part of the refiner's shape.
        return {k: v for k, v in (refine or {}).items() if k != "coarse_shifts_mm"}

    if shape(earlier_card["config"].get("refine")) != shape(config["refine"]) or not same_crop:
        raise MyoflowError(f"--init-from {folder}: not a refiner of this shape and crop")
    cascade.refiner.load_state_dict(earlier.refiner.state_dict())


def init_record(folder: str | Path) -> dict[str, Any]:
    """Which cascade training started from, for the card."""
    earlier = read_card(folder)
    record = earlier.get("refine_training", {})
    return {
        "weights_sha256": earlier["weights_sha256"],
        "coarse_weights_sha256": record.get("coarse_weights_sha256"),
        "steps_done": record.get("steps_done"),
        "initialised_from": record.get("initialised_from"),
    }
