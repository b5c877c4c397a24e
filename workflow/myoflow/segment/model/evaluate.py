"""Held-out evaluation of a trained model, and the model card's human-readable page.

Each held-out participant is segmented the way the pipeline will segment the cohort
(``myoflow.segment.model.predict.segment_participant``: crops, network, probabilities back on the
stitched grid) and compared with its label map: Dice and volumes per side for every
muscle the model outputs and for every group (:data:`myoflow.measure.metrics.GROUPS`) whose
muscles it all outputs; then Dice summaries and Bland-Altman bias and limits of
agreement of the volumes (ml and % of the pair mean), with one observation per
participant and side.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from myoflow.cohort.stats.agreement import bland_altman, dice_summary
from myoflow.core.errors import ParticipantExcluded
from myoflow.core.io import write_tsv
from myoflow.core.label_grid import voxel_geometry
from myoflow.landmarks.record import HipLandmarks
from myoflow.measure.overlap import labels_on_grid, score_participant
from myoflow.segment.model.registry import model_channels
from myoflow.segment.model.samples import (
    TrainingPair,
    participant_hips,
    read_channels,
    read_label_map,
)

Segmenter = Callable[..., Any]
"""``segment_participant(model, config, channels, affine_ras, landmarks, device,
batch_size)`` returning an object whose ``labels`` are LABELS values on the stitched grid."""

MIN_AGREEMENT_PAIRS = 3
"""Bland-Altman needs at least this many participant sides."""
AGREEMENT_COLUMNS = [
    "structure", "units", "n", "mean_method", "mean_reference", "bias", "bias_ci_low",
    "bias_ci_high", "sd", "loa_low", "loa_high", "loa_low_ci_low", "loa_low_ci_high",
    "loa_high_ci_low", "loa_high_ci_high",
]  # fmt: skip


@dataclass(frozen=True)
class Evaluation:
    """Held-out results.

    Attributes:
        dice: participant_id, side, structure, kind (muscle/group), dice.
        volumes: participant_id, side, structure, kind, predicted_ml, truth_ml.
        dice_summary: structure, n, mean, sd, median, quartiles, min, max.
        agreement: structure, units ("ml" or "%"), n, bias, sd, loa_low, loa_high and
            their confidence intervals.
        excluded: participant_id -> {"reason", "detail"} for those not segmented.
    """

    dice: pd.DataFrame
    volumes: pd.DataFrame
    dice_summary: pd.DataFrame
    agreement: pd.DataFrame
    excluded: dict[str, dict[str, str]] = field(default_factory=dict)

    def write(self, folder: str | os.PathLike[str]) -> None:
        """The tables beside a model: ``held_out_dice.tsv``, ``held_out_volumes.tsv`` and
        ``held_out_agreement.tsv``."""
        write_tsv(Path(folder) / "held_out_dice.tsv", self.dice)
        write_tsv(Path(folder) / "held_out_volumes.tsv", self.volumes)
        write_tsv(Path(folder) / "held_out_agreement.tsv", self.agreement)

    def summary(self) -> dict[str, Any]:
        """JSON-able figures for the model card."""
        dice = {
            row["structure"]: {"n": int(row["n"]), "mean": row["mean"], "sd": row["sd"]}
            for row in self.dice_summary.to_dict("records")
        }
        agreement: dict[str, dict[str, Any]] = {}
        for row in self.agreement.to_dict("records"):
            agreement.setdefault(row["structure"], {})[row["units"]] = {
                k: row[k] for k in ("n", "bias", "sd", "loa_low", "loa_high")
            }
        return {
            "participants": int(self.dice["participant_id"].nunique()) if len(self.dice) else 0,
            "excluded": self.excluded,
            "dice": _finite(dice),
            "volume_agreement": _finite(agreement),
        }


def _finite(value: Any) -> Any:
    """Replace NaN by None, recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def agreement_table(volumes: pd.DataFrame) -> pd.DataFrame:
    """Bland-Altman of predicted vs truth volume per structure, in ml and in %."""
    rows = []
    for structure, part in volumes.groupby("structure", sort=False):
        if len(part) < MIN_AGREEMENT_PAIRS:
            continue
        for relative, units in ((False, "ml"), (True, "%")):
            data = part
            if relative:  # % of the mean is undefined where both volumes are 0
                data = part[(part["predicted_ml"] + part["truth_ml"]) > 0]
                if len(data) < MIN_AGREEMENT_PAIRS:
                    continue
            result = bland_altman(
                data, {structure: ("predicted_ml", "truth_ml")}, relative=relative
            )
            row = result.summary.iloc[0].to_dict()
            rows.append(
                {"structure": structure, "units": units}
                | {k: v for k, v in row.items() if k not in ("measure", "method", "reference")}
            )
    return pd.DataFrame(rows)


def evaluate(
    model: nn.Module,
    config: Mapping[str, Any],
    pairs: Sequence[TrainingPair],
    device: torch.device,
    *,
    batch_size: int = 2,
    segment: Segmenter | None = None,
    hips: Mapping[str, HipLandmarks] | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> Evaluation:
    """Segment each held-out pair with ``model`` and score it against its labels.

    Args:
        model: the trained network (put in eval mode here).
        config: its model config (labels, crop).
        pairs: the held-out pairs.
        device: where inference runs.
        batch_size: crops per forward pass.
        segment: the segmenter (default ``myoflow.segment.model.predict.segment_participant``).
        hips: landmarks already known per participant (else from the pair or detected).
        log: receives one line per participant.

    Participants whose hips cannot be found are listed in ``excluded``.

    Raises:
        PairsError: a file of a pair is missing or unreadable.
    """
    if segment is None:
        from myoflow.segment.model.predict import segment_participant

        segment = segment_participant
    model.eval()
    labels = list(config["labels"])
    wanted = model_channels(config)
    dice_rows: list[dict[str, Any]] = []
    volume_rows: list[dict[str, Any]] = []
    excluded: dict[str, dict[str, str]] = {}
    for n, pair in enumerate(pairs, start=1):
        known = (hips or {}).get(pair.participant_id)
        detect = known is None and pair.landmarks is None
        # The crops' channels, and water and fat where the hips must be detected.
        needed = dict.fromkeys([*wanted, *(("water", "fat") if detect else ())])
        channels, affine = read_channels(pair, list(needed))
        try:
            landmarks = known if known is not None else participant_hips(pair, channels, affine)
            with torch.no_grad():
                predicted = np.asarray(
                    segment(model, config, channels, affine, landmarks, device, batch_size).labels
                )
        except ParticipantExcluded as err:
            excluded[pair.participant_id] = {"reason": err.reason, "detail": err.detail}
            log(f"held-out [{n}/{len(pairs)}] {pair.participant_id}: left out ({err})")
            continue
        label_map, label_affine = read_label_map(pair.labels, pair.participant_id)
        truth = labels_on_grid(label_map, label_affine, predicted.shape, affine)
        rows = score_participant(
            pair.participant_id, predicted, truth, labels, voxel_geometry(affine).voxel_volume_ml
        )
        dice_rows += rows[0]
        volume_rows += rows[1]
        mean = np.nanmean([r["dice"] for r in rows[0]]) if rows[0] else float("nan")
        log(f"held-out [{n}/{len(pairs)}] {pair.participant_id}: mean Dice {mean:.3f}")
    dice_table = pd.DataFrame(
        dice_rows, columns=["participant_id", "side", "structure", "kind", "dice"]
    )
    volumes = pd.DataFrame(
        volume_rows,
        columns=["participant_id", "side", "structure", "kind", "predicted_ml", "truth_ml"],
    )
    summary = dice_summary(dice_table, by="structure") if len(dice_table) else pd.DataFrame()
    return Evaluation(dice_table, volumes, summary, agreement_table(volumes), excluded)


# ------------------------------------------------------------------------ model card


def _number(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _calibration_lines(card: Mapping[str, Any]) -> list[str]:
    """The card page's calibration section (none when the model was not calibrated)."""
    calibration = card.get("calibration")
    if not calibration:
        return []
    thresholds = card.get("config", {}).get("thresholds", {})
    lines = [
        "## Calibration",
        "",
        f"- per-label thresholds {thresholds} from {calibration.get('participants')} "
        f"annotated participants (data sha256 `{calibration.get('data_sha256')}`), "
        "neither training nor held-out",
        "",
        "| label | thresholds | threshold | volume bias % | Dice |",
        "|---|---|---|---|---|",
    ]
    for row in calibration.get("table", []):
        lines.append(
            f"| {row['label']} | {row['thresholds']} | {_number(row['threshold'])} | "
            f"{_number(row['volume_bias_percent'], 1)} | {_number(row['dice'])} |"
        )
    return [*lines, ""]


def _refine_lines(card: Mapping[str, Any]) -> list[str]:
    """The card page's refiner section (none for a model without a second stage)."""
    record = card.get("refine_training")
    refine = card.get("config", {}).get("refine")
    if not record or not refine:
        return []
    settings = record.get("settings", {})
    crop = refine.get("crop") or {}
    losses = record.get("losses") or [None]
    return [
        "## Refiner (second stage, myoflow.segment.model.refine)",
        "",
        f"- {record.get('refiner_parameters')} parameters: {len(refine.get('dilations', []))} "
        f"3x3x3 convolutions of {refine.get('features')} channels, dilations "
        f"{refine.get('dilations')}; crop {crop.get('name')} {crop.get('shape')} voxels at "
        f"{crop.get('spacing_mm')} mm",
        f"- trained on {record.get('participants')} participants (data sha256 "
        f"`{record.get('data_sha256')}`) over the frozen first stage (weights sha256 "
        f"`{record.get('coarse_weights_sha256')}`)",
        f"- {record.get('steps_done')} of {settings.get('steps')} steps"
        f"{'' if record.get('complete') else ' (stopped by the time budget)'} of "
        f"{settings.get('batch_size')} patches {settings.get('patch')}, learning rate "
        f"{settings.get('learning_rate')}, seed {settings.get('seed')}; loss "
        f"{_number(losses[0], 4)} -> {_number(losses[-1], 4)}",
        f"- wall time: {_number(record.get('wall_time_s', 0) / 3600, 2)} h on "
        f"{record.get('device')} ({_number(record.get('seconds_per_step'), 2)} s per step)",
        *_start_lines(record),
        *_shift_lines(refine),
        "",
    ]


def _shift_lines(refine: Mapping[str, Any]) -> list[str]:
    """The coarse crop's shifts, when the first stage is averaged over several."""
    shifts = refine.get("coarse_shifts_mm")
    if not shifts or len(shifts) < 2:
        return []
    listed = ", ".join("(" + ", ".join(f"{v:g}" for v in shift) + ")" for shift in shifts)
    return [
        f"- first stage averaged over {len(shifts)} coarse crops, shifted by {listed} mm "
        "(medial, posterior, superior)"
    ]


def _start_lines(record: Mapping[str, Any]) -> list[str]:
    """Where a training continued from (``--init-from``); nothing for a fresh start."""
    start = record.get("initialised_from")
    if not start:
        return []
    return [f"- started from the weights sha256 `{start.get('weights_sha256')}`"]


def render_model_card(card: Mapping[str, Any]) -> str:
    """``MODEL_CARD.md``: the card's figures as a page for people (the JSON stays the record)."""
    config = card.get("config", {})
    crop = config.get("crop") or {}
    data = card.get("data", {})
    training = card.get("training", {})
    held = card.get("evaluation") or {}
    lines = [
        f"# Model card: {', '.join(config.get('labels', []))}",
        "",
        "## Model",
        "",
        f"- architecture: {config.get('architecture')} (width {config.get('width')}, "
        f"{card.get('parameters', 'n/a')} parameters), {config.get('in_channels')} input "
        f"channel(s) {crop.get('channels')}",
        f"- crop: {crop.get('name')} {crop.get('shape')} voxels at {crop.get('spacing_mm')} mm",
        f"- weights sha256: `{card.get('weights_sha256')}`",
        "",
        "## Training",
        "",
        f"- data sha256: `{data.get('training_data_sha256')}`",
        f"- participants: {data.get('train_participants')} training, "
        f"{data.get('held_out_participants')} held out ({data.get('split')}); "
        f"{len(data.get('excluded', {}))} left out (no landmarks)",
        f"- epochs: {training.get('epochs_done')} of {training.get('epochs')}"
        f"{'' if training.get('complete') else ' (stopped by the time budget)'}, "
        f"{training.get('steps')} steps of batch {training.get('batch_size')}, "
        f"learning rate {training.get('learning_rate')}, seed {training.get('seed')}",
        f"- augmentation: {training.get('augment')}",
        f"- intensity augmentation: {training.get('intensity_augmentation', 'none')}",
        f"- final epoch loss (soft Dice): {_number(training.get('final_loss'), 4)}",
        f"- wall time: {_number(training.get('wall_time_s', 0) / 3600, 2)} h on "
        f"{training.get('device')}",
        *_start_lines(training),
        f"- software: {card.get('software')}",
        "",
        *_refine_lines(card),
        *_calibration_lines(card),
        "## Held-out evaluation",
        "",
    ]
    if not held.get("dice"):
        lines.append("No held-out participants were evaluated.")
    else:
        lines += ["| structure | n | Dice mean | Dice sd |", "|---|---|---|---|"]
        for name, d in held["dice"].items():
            lines.append(f"| {name} | {d['n']} | {_number(d['mean'])} | {_number(d['sd'])} |")
        lines += [
            "",
            "Volume agreement (predicted - truth, per participant side; Bland-Altman):",
            "",
            "| structure | units | n | bias | limits of agreement |",
            "|---|---|---|---|---|",
        ]
        if not held.get("volume_agreement"):
            lines.append(f"| too few participant sides (< {MIN_AGREEMENT_PAIRS}) | | | | |")
        for name, by_units in held.get("volume_agreement", {}).items():
            for units, a in by_units.items():
                lines.append(
                    f"| {name} | {units} | {a['n']} | {_number(a['bias'], 2)} | "
                    f"{_number(a['loa_low'], 2)} to {_number(a['loa_high'], 2)} |"
                )
    return "\n".join(lines) + "\n"
