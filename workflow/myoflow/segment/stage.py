"""Segmentation stage: every participant of a shard through one loaded model.

One process per shard loads the model once (:func:`load_segmenter`: the card's sha256
is checked, weights load with ``weights_only``), then for each participant that passed
the landmarks stage (its row in the shard's ``landmarks.tsv``):

1. reads ``{participant}/landmarks.json`` and the channels the model's crop needs from
   ``{participant}/dixon/`` (all on one grid);
2. segments it (:func:`myoflow.segment.model.predict.segment_participant`);
3. writes ``{participant}/seg/labels.nii.gz`` (int16 values of
   :data:`myoflow.core.labels.LABELS`, on exactly the Dixon grid: same shape and
   affine) and, last, ``seg/segmentation.json``: the model's name, weights sha256,
   labels and crop, the crop boxes, the device, voxel counts per label and the seconds
   of each step.

A participant that cannot be segmented gets ``{participant}/exclusion.json`` (stage
``segment``, a reason of :data:`EXCLUSION_REASONS`) and the shard goes on; one excluded
at an earlier stage is not segmented and keeps its record. ``segmentation.json`` marks a
participant complete: a rerun skips one whose marker is newer than its inputs and was
written with the same weights (sha256), model config and :data:`SEGMENT_VERSION`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from myoflow.core.errors import MyoflowError, ParticipantExcluded
from myoflow.core.io import save_nifti, write_json
from myoflow.core.kept_channels import NOT_REGENERABLE, NOT_REGENERABLE_MEANING, channel_mtime_ns
from myoflow.core.labels import LABELS
from myoflow.core.participant_files import ParticipantFiles
from myoflow.core.participant_files import read_channels as read_participant_channels
from myoflow.core.shard_runner import (
    INTERNAL_ERROR,
    INTERNAL_ERROR_MEANING,
    OK,
    STATUS_COLUMNS,
    Outcome,
    Upstream,
    run_shard,
)
from myoflow.ingest.regenerate import channel_source
from myoflow.ingest.settings import IngestSettings
from myoflow.landmarks.record import read_landmarks
from myoflow.segment.model import predict
from myoflow.segment.model.card import load_model
from myoflow.segment.model.registry import crop_spec, model_channels

SEGMENT_VERSION = 1
"""Version of the segmentation outputs; bump it to make reruns redo complete participants."""

STAGE = "segment"

DEVICES = ("auto", "cpu", "cuda")
"""Values of the config's ``model.device``: auto takes a GPU when there is one."""

EXCLUSION_REASONS = {
    "inputs_unreadable": "landmarks.json or a Dixon channel the model needs is missing, "
    "unreadable or not on the grid of the others",
    NOT_REGENERABLE: NOT_REGENERABLE_MEANING,
    **predict.EXCLUSION_REASONS,
    "no_muscle_found": "the model labelled no voxel as any muscle",
    INTERNAL_ERROR: INTERNAL_ERROR_MEANING,
}
"""Why the segmentation leaves a participant out: reason code -> what it means."""

SHARD_COLUMNS = [*STATUS_COLUMNS, "n_labels", "missing_labels"]
"""Columns of ``results/shards/{shard}/segment.tsv``: one row per participant.

``n_labels`` counts the label values (muscle and side) with at least one voxel;
``missing_labels`` names those without (space-separated), a first hint for QC.
"""


@dataclass(frozen=True)
class Segmenter:
    """A loaded, verified model, its card, and where it runs."""

    model: nn.Module
    card: dict[str, Any]
    name: str
    device: torch.device

    @property
    def config(self) -> dict[str, Any]:
        return self.card["config"]

    def provenance(self) -> dict[str, Any]:
        """What makes a participant's outputs current (compared on rerun)."""
        return {
            "segment_version": SEGMENT_VERSION,
            "weights_sha256": self.card["weights_sha256"],
            "model_config": self.config,
        }

    def describe_device(self) -> str:
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return f"cpu ({torch.get_num_threads()} threads)"


def resolve_device(setting: str) -> torch.device:
    """The torch device for ``model.device``: ``auto`` is CUDA when available, else CPU.

    Raises:
        MyoflowError: ``setting`` is not one of :data:`DEVICES`, or ``cuda`` is asked for
            on a machine without a usable GPU.
    """
    if setting not in DEVICES:
        raise MyoflowError(f"model.device must be one of {list(DEVICES)}, got {setting!r}")
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MyoflowError(
            "model.device is 'cuda' but torch sees no GPU here (set it to 'auto' or 'cpu' to "
            "segment on the CPU)"
        )
    return torch.device("cuda")


def load_segmenter(model_dir: str | os.PathLike[str], device: torch.device) -> Segmenter:
    """Load and verify the model of ``model_dir`` once, for a whole shard.

    Raises:
        myoflow.segment.model.card.ModelIntegrityError: the card or weights are missing, damaged
            or not each other's.
        myoflow.segment.model.registry.ModelConfigError: the model's labels are not muscles.
    """
    model, card = load_model(model_dir, device)
    predict.model_labels(card["config"])
    return Segmenter(model, card, str(card.get("name") or Path(model_dir).resolve().name), device)


@dataclass(frozen=True)
class SegmentFiles(ParticipantFiles):
    """Where the segmentation reads and writes one participant's files."""

    def input_mtimes_ns(self, channels: Sequence[str]) -> list[int]:
        """Modification times of ``landmarks.json`` and the channels read (for a channel
        removed on purpose, the time its file had: :func:`channel_mtime_ns`).

        Raises:
            OSError: an input is missing.
        """
        landmarks = self.landmarks.stat().st_mtime_ns
        return [landmarks, *(channel_mtime_ns(self, name) for name in channels)]

    def remove_outputs(self) -> None:
        """Remove the segmentation outputs, the completion marker first."""
        self.segmentation.unlink(missing_ok=True)
        self.labels.unlink(missing_ok=True)


def read_channels(
    files: ParticipantFiles, names: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The named stitched channels (float32) and their shared voxel -> RAS affine.

    Raises:
        ValueError: ``names`` is empty.
        ParticipantExcluded: ``inputs_unreadable``: see
            :func:`myoflow.core.participant_files.read_channels`.
    """
    return read_participant_channels(files, names, "inputs_unreadable")


def label_voxels(labels: np.ndarray) -> dict[str, int]:
    """Voxel count of every label name of ``LABELS`` (0 for those absent)."""
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(LABELS.values()) + 1)
    return {name: int(counts[value]) for name, value in LABELS.items()}


def expected_labels(config: Mapping[str, Any]) -> list[str]:
    """The label names (muscle and side) the model can produce."""
    return [f"{m}_{side}" for m in config["labels"] for side in ("left", "right")]


def _record(segmentation_json: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    voxels = segmentation_json["label_voxels"]
    missing = [name for name in expected_labels(config) if not voxels.get(name)]
    return OK | {
        "n_labels": sum(1 for name in expected_labels(config) if voxels.get(name)),
        "missing_labels": " ".join(missing),
    }


def complete_record(files: SegmentFiles, segmenter: Segmenter) -> dict[str, Any] | None:
    """A participant's shard-table record if its outputs are current, else None
    (:func:`current_segmentation`)."""
    written = current_segmentation(files, model_channels(segmenter.config), segmenter.provenance())
    return None if written is None else _record(written, segmenter.config)


def current_segmentation(
    files: SegmentFiles, channels: Sequence[str], provenance: Mapping[str, Any]
) -> dict[str, Any] | None:
    """A participant's ``segmentation.json`` if its outputs are current, else None; any
    backend's.

    Current means: ``labels.nii.gz`` exists and ``segmentation.json`` is newer than
    ``landmarks.json`` and the channels read (channels removed on purpose count with the
    time their files had), and was written with ``provenance`` (weights, model config,
    :data:`SEGMENT_VERSION`).
    """
    try:
        written = json.loads(files.segmentation.read_text())
        marker = files.segmentation.stat().st_mtime_ns
        newer = all(marker > mtime for mtime in files.input_mtimes_ns(channels))
    except (OSError, ValueError):
        return None
    as_stored = json.loads(json.dumps(provenance))  # as JSON stores it: tuples become lists
    if not (newer and files.labels.is_file()) or written.get("provenance") != as_stored:
        return None
    return written


def segment_one(
    files: SegmentFiles, participant_id: str, segmenter: Segmenter, batch_size: int
) -> dict[str, Any]:
    """Segment one participant and write its outputs; return its shard-table record.

    Raises:
        ParticipantExcluded: inputs unreadable, or no muscle found
            (:data:`EXCLUSION_REASONS`); the caller records it.
    """
    started = time.perf_counter()
    try:
        landmarks = read_landmarks(files.landmarks)
    except MyoflowError as err:
        raise ParticipantExcluded("inputs_unreadable", str(err)) from err
    channels, affine = read_channels(files, model_channels(segmenter.config))
    read_s = time.perf_counter() - started
    segmentation = predict.segment_participant(
        segmenter.model,
        segmenter.config,
        channels,
        affine,
        landmarks,
        segmenter.device,
        batch_size,
    )
    if not segmentation.labels.any():
        raise ParticipantExcluded(
            "no_muscle_found",
            "no voxel reached its label's probability threshold in either crop",
        )
    written = time.perf_counter()
    files.segmentation.unlink(missing_ok=True)  # incomplete until the labels are written
    save_nifti(files.labels, segmentation.labels, affine, descrip="myoflow segmentation")
    seconds = {"read": read_s, **segmentation.seconds, "write": time.perf_counter() - written}
    record = {
        "participant_id": participant_id,
        "model": {
            "name": segmenter.name,
            "weights_sha256": segmenter.card["weights_sha256"],
            "labels": list(segmenter.config["labels"]),
            "crop": crop_spec(segmenter.config).to_dict(),
        }
        | ({"refine": segmenter.config["refine"]} if segmenter.config.get("refine") else {}),
        "device": segmenter.describe_device(),
        "batch_size": batch_size,
        "crop_boxes": {
            side: [list(pair) for pair in box] for side, box in segmentation.crop_boxes.items()
        },
        "label_values": {name: LABELS[name] for name in expected_labels(segmenter.config)},
        "label_voxels": label_voxels(segmentation.labels),
        "seconds": {step: round(value, 3) for step, value in seconds.items()}
        | {"total": round(time.perf_counter() - started, 3)},
        "provenance": segmenter.provenance(),
    }
    write_json(files.segmentation, record)
    return _record(record, segmenter.config)


def segment_shard(
    members: pd.DataFrame,
    participants_dir: str | os.PathLike[str],
    landmarks: pd.DataFrame,
    segmenter: Segmenter,
    batch_size: int = 2,
    log: Callable[[str], None] = print,
    ingest: IngestSettings | None = None,
) -> pd.DataFrame:
    """Segment every participant of a shard; return the shard table (SHARD_COLUMNS).

    Args:
        members: rows with ``participant_id`` and ``shard``.
        participants_dir: folder holding one folder per participant.
        landmarks: the shard's landmarks table (``participant_id``, ``status``,
            ``stage``, ``reason``, ``detail``): who passed the earlier stages.
        segmenter: the loaded model (:func:`load_segmenter`).
        batch_size: crops per forward pass.
        log: receives one line per participant, naming it and the outcome.
        ingest: the conversion's settings, to make channels removed after an earlier run
            again from the DICOM (members then need ``dicom_path``); None: they stay
            missing (:mod:`myoflow.ingest.regenerate`).

    A participant excluded at an earlier stage is not segmented (its record stays, stale
    segmentation outputs are removed); one that cannot be segmented gets
    ``exclusion.json``; neither stops the others (:func:`myoflow.core.shard_runner.run_shard`).
    Complete participants are skipped.

    Raises:
        MyoflowError: the landmarks table lacks a member (run the landmarks stage first).
    """
    return run_segment_stage(
        SegmentStage(segmenter, batch_size, ingest), members, participants_dir, landmarks, log
    )


def run_segment_stage(
    stage: Any,
    members: pd.DataFrame,
    participants_dir: str | os.PathLike[str],
    landmarks: pd.DataFrame,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run any backend's segmentation ``stage`` (:class:`SegmentStage`, or
    :class:`myoflow.segment.nnunet_stage.NnunetSegmentStage`) over a shard, as
    :func:`segment_shard` describes; return the shard table."""
    return run_shard(
        stage, members, participants_dir, [Upstream(landmarks, "landmarks")], log=log
    ).status


@dataclass(frozen=True)
class SegmentStage:
    """The segmentation's work for the shard runner (:mod:`myoflow.core.shard_runner`)."""

    segmenter: Segmenter
    batch_size: int
    ingest: IngestSettings | None = None
    name = STAGE
    columns = SHARD_COLUMNS

    def current(self, member: Any, folder: Path) -> Outcome | None:
        record = complete_record(SegmentFiles(folder), self.segmenter)
        return None if record is None else Outcome(record, "complete, skipped")

    def run(self, member: Any, folder: Path) -> Outcome:
        files = SegmentFiles(folder, channel_source(member, self.ingest))
        record = segment_one(files, member.participant_id, self.segmenter, self.batch_size)
        return Outcome(record, f"ok, {record['n_labels']} labels")

    def remove_outputs(self, folder: Path) -> None:
        SegmentFiles(folder).remove_outputs()
