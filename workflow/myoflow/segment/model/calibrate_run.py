"""The whole of ``myoflow calibrate``: per-label decision thresholds for a trained model.

:func:`run_calibration` loads the model, segments the calibration participants up to the
probabilities (:func:`myoflow.segment.model.calibrate.collect_pairs`), finds the thresholds
that match the annotated volumes (:func:`myoflow.segment.model.calibrate.calibrate_thresholds`),
evaluates the calibrated model on held-out participants if given
(:func:`myoflow.segment.model.evaluate.evaluate`) and writes the same weights with a card
holding the thresholds, ``calibration.tsv`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from myoflow.core.errors import MyoflowError
from myoflow.core.io import write_json, write_text, write_tsv
from myoflow.segment.model.calibrate import (
    MAX_SWEEPS,
    calibrate_thresholds,
    calibration_table,
    collect_pairs,
)
from myoflow.segment.model.card import CARD_FILE, sha256_file, verify_weights
from myoflow.segment.model.evaluate import evaluate, render_model_card
from myoflow.segment.model.pair_selection import PairSelection, held_out_data, with_coarse_shifts
from myoflow.segment.model.predict import model_labels
from myoflow.segment.model.registry import crop_spec
from myoflow.segment.model.samples import hash_inputs, training_data_sha256
from myoflow.segment.model.training_run import load_to_derive, software_versions


def run_calibration(
    model_dir: str | Path,
    pairs: PairSelection,
    held_out: PairSelection,
    out: str | Path,
    *,
    coarse_shifts_mm: Sequence[float] | None = None,
    device: str = "auto",
    threads: int | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Calibrate, evaluate on the held-out pairs if given, write the calibrated model.

    Writes to ``out`` (a new folder): the model's weights file (the same bytes),
    ``model_card.json`` with the thresholds in its config and a ``calibration`` section,
    ``calibration.tsv``, ``MODEL_CARD.md`` and, with held-out pairs, a new held-out
    evaluation (``held_out_*.tsv`` and the card's ``evaluation`` and ``data``); without
    them the card keeps the model's evaluation as ``evaluation_before_calibration``.

    Args:
        model_dir: The trained model's folder (its thresholds, if any, are replaced).
        pairs: The calibration pairs: neither training nor held-out participants of the
            model.
        held_out: The pairs to evaluate on (none: no evaluation).
        out: The calibrated model folder to write.
        coarse_shifts_mm: For a cascade: flat (medial, posterior, superior) mm triples over
            which its first stage is averaged, calibrated and saved with the model (None:
            as the model has it).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: CPU threads for torch (None: torch's default).
        log: Receives progress lines.

    Returns:
        The model card as written.

    Raises:
        MyoflowError: ``out`` is the model's own folder, participants both calibrate and
            evaluate, copying the weights changed them, bad coarse shifts or pair
            selections.
    """
    out = Path(out)
    model, card, target = load_to_derive(model_dir, out, device, threads)
    config = dict(card["config"])
    config.pop("thresholds", None)  # calibrate the network's output, not an earlier cut
    if coarse_shifts_mm:
        config = with_coarse_shifts(config, coarse_shifts_mm)
    labels = model_labels(config)
    calibration_pairs = pairs.read()
    held = held_out.read()
    ids = {p.participant_id for p in calibration_pairs}
    overlap = sorted(ids & {p.participant_id for p in held})
    if overlap:
        raise MyoflowError(f"participants both calibrate and evaluate: {overlap}")
    voxels, excluded = collect_pairs(model, config, calibration_pairs, target, log)
    thresholds, sweeps = calibrate_thresholds(voxels, labels)
    if sweeps >= MAX_SWEEPS:
        log(f"warning: thresholds still moved after {sweeps} sweeps; the last ones are kept")
    table = calibration_table(voxels, labels, thresholds)
    cuts = zip(labels, thresholds, strict=True)
    config["thresholds"] = {name: round(float(t), 4) for name, t in cuts}
    spec = crop_spec(config)
    calibrated = dict(card) | {
        "config": config,
        "calibration": {
            "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "participants": len(voxels),
            "excluded": excluded,
            "data_sha256": training_data_sha256(
                {p.participant_id: hash_inputs(p, spec.channels) for p in calibration_pairs}
            ),
            "sweeps": sweeps,
            "method": "per label, the threshold matching the total annotated volume "
            "(myoflow.segment.model.calibrate)",
            "table": table.to_dict("records"),
            "software": software_versions(),
        },
    }
    if held:
        evaluation = evaluate(model, config, held, target, log=log)
        evaluation.write(out)
        calibrated["evaluation"] = evaluation.summary()
        calibrated["data"] = held_out_data(card, held, spec.channels)
    else:
        calibrated["evaluation_before_calibration"] = card.get("evaluation")
        calibrated["evaluation"] = None
    weights = verify_weights(model_dir, card)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, out / weights.name)
    if sha256_file(out / weights.name) != card["weights_sha256"]:
        raise MyoflowError(f"copying {weights} to {out} changed its bytes")
    write_tsv(out / "calibration.tsv", table)
    write_json(out / CARD_FILE, calibrated)
    write_text(out / "MODEL_CARD.md", render_model_card(calibrated))
    return calibrated
