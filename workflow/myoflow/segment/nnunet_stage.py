"""Segmentation stage with the nnU-Net v2 backend: a shard through one ``nnUNetPredictor``.

The files, exclusions and shard table are the V-Net stage's (:mod:`myoflow.segment.stage`):
per participant that passed the landmarks stage, read ``landmarks.json`` and the channels
``model.channels`` names, segment (:func:`myoflow.segment.nnunet_backend.segment_arrays`,
the whole volume or the hips box), write ``seg/labels.nii.gz`` on the stitched grid
(values of :data:`myoflow.core.labels.ALL_LABELS`) and, last, ``seg/segmentation.json``
with the backend, folds, the model's sha256 and the settings. A rerun skips a participant
whose marker is newer than its inputs and records the same provenance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from myoflow.core.errors import MyoflowError, ParticipantExcluded
from myoflow.core.io import save_nifti, write_json
from myoflow.core.labels import ALL_LABELS
from myoflow.core.shard_runner import OK, Outcome
from myoflow.ingest.regenerate import channel_source
from myoflow.ingest.settings import IngestSettings
from myoflow.landmarks.record import read_landmarks
from myoflow.segment.nnunet_backend import NnunetModel, hips_box, segment_arrays
from myoflow.segment.stage import (
    SEGMENT_VERSION,
    SHARD_COLUMNS,
    STAGE,
    SegmentFiles,
    current_segmentation,
    read_channels,
)


def label_voxels(labels: np.ndarray) -> dict[str, int]:
    """Voxel count of every name of ``ALL_LABELS`` (0 for those absent)."""
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(ALL_LABELS.values()) + 1)
    return {name: int(counts[value]) for name, value in ALL_LABELS.items()}


def provided_labels(model: NnunetModel) -> list[str]:
    """The structures (``ALL_LABELS`` names) the model's mapping can produce, in our order."""
    targets = set(model.settings.labels.values())
    return [name for name in ALL_LABELS if name in targets]


def _record(written: dict[str, Any], provided: list[str]) -> dict[str, Any]:
    voxels = written["label_voxels"]
    return OK | {
        "n_labels": sum(1 for name in provided if voxels.get(name)),
        "missing_labels": " ".join(name for name in provided if not voxels.get(name)),
    }


def complete_record(files: SegmentFiles, model: NnunetModel) -> dict[str, Any] | None:
    """A participant's shard-table record if its outputs are current, else None
    (:func:`myoflow.segment.stage.current_segmentation`)."""
    written = current_segmentation(
        files, model.settings.channels, model.provenance(SEGMENT_VERSION)
    )
    return None if written is None else _record(written, provided_labels(model))


def segment_one(files: SegmentFiles, participant_id: str, model: NnunetModel) -> dict[str, Any]:
    """Segment one participant with the nnU-Net model; write its outputs; return its record.

    Raises:
        ParticipantExcluded: inputs unreadable, the hips box off the grid, or no muscle found.
    """
    started = time.perf_counter()
    try:
        landmarks = read_landmarks(files.landmarks)
    except MyoflowError as err:
        raise ParticipantExcluded("inputs_unreadable", str(err)) from err
    channels, affine = read_channels(files, model.settings.channels)
    read_s = time.perf_counter() - started
    shape = next(iter(channels.values())).shape
    box = None
    if model.settings.region == "hips":
        box = hips_box(
            shape,
            affine,
            landmarks.left_ras_mm,
            landmarks.right_ras_mm,
            model.settings.hips_margin_mm,
        )
        if box is None:
            raise ParticipantExcluded(
                "crop_outside_volume", "the box around the hips does not overlap the volume"
            )
    segmentation = segment_arrays(model, channels, affine, box)
    if not segmentation.labels.any():
        raise ParticipantExcluded("no_muscle_found", "the nnU-Net model labelled no muscle voxel")
    written = time.perf_counter()
    files.segmentation.unlink(missing_ok=True)  # incomplete until the labels are written
    save_nifti(files.labels, segmentation.labels, affine, descrip="myoflow segmentation (nnU-Net)")
    seconds = {"read": read_s, **segmentation.seconds, "write": time.perf_counter() - written}
    provided = provided_labels(model)
    record = {
        "participant_id": participant_id,
        "backend": "nnunetv2",
        "model": {
            "name": Path(model.settings.model_dir).resolve().name,
            "weights_sha256": model.weights_sha256,
            "folds": [str(f) for f in model.settings.folds],
            "checkpoint": model.settings.checkpoint,
            "configuration": model.configuration,
            "trainer": model.trainer,
            "channels": dict(zip(model.dataset_channels, model.settings.channels, strict=True)),
            "labels": provided,
        },
        "device": model.describe_device(),
        "region": model.settings.region,
        # As the V-Net's: the voxel boxes the labels were confined to (the measure stage
        # flags muscles touching a box face); one box, the hips box or the whole grid.
        "crop_boxes": [[[s.start, s.stop] for s in segmentation.box]],
        "label_values": {name: ALL_LABELS[name] for name in provided},
        "label_voxels": label_voxels(segmentation.labels),
        "seconds": {step: round(value, 3) for step, value in seconds.items()}
        | {"total": round(time.perf_counter() - started, 3)},
        "provenance": model.provenance(SEGMENT_VERSION),
    }
    write_json(files.segmentation, record)
    return _record(record, provided)


@dataclass(frozen=True)
class NnunetSegmentStage:
    """The nnU-Net segmentation's work for the shard runner (:mod:`myoflow.core.shard_runner`)."""

    model: NnunetModel
    # The conversion's settings, to make channels removed after an earlier run again from
    # the DICOM (myoflow.ingest.regenerate); None: they stay missing.
    ingest: IngestSettings | None = None
    name = STAGE
    columns = SHARD_COLUMNS

    def current(self, member: Any, folder: Path) -> Outcome | None:
        record = complete_record(SegmentFiles(folder), self.model)
        return None if record is None else Outcome(record, "complete, skipped")

    def run(self, member: Any, folder: Path) -> Outcome:
        files = SegmentFiles(folder, channel_source(member, self.ingest))
        record = segment_one(files, member.participant_id, self.model)
        return Outcome(record, f"ok, {record['n_labels']} labels")

    def remove_outputs(self, folder: Path) -> None:
        SegmentFiles(folder).remove_outputs()
