"""The measure stage: metrics, QC flags and an overlay for every segmented participant of
one shard.

For each participant of the shard that the landmarks and segmentation stages left ``ok``,
from ``{participants_dir}/{participant}/``:

- reads ``seg/labels.nii.gz`` (on the grid of the stitched Dixon channels),
  ``seg/segmentation.json`` (``crop_boxes``: the voxel boxes the segmentation was
  confined to, one per side, as a list or keyed by side; without the file, crop contact
  is not measured), ``landmarks.json``, ``dixon/{water,fat,in,opp}.nii.gz`` and the
  stations of ``dixon/acquisition.json``;
- computes the metrics record (:func:`myoflow.measure.metrics.participant_metrics`; no height,
  so ``imi_ml_m2`` is empty until the cohort gather joins the phenotypes), fat-water
  swap decisions per station (:func:`myoflow.measure.swaps.detect_swaps`) and QC flags
  (:func:`myoflow.measure.qc.participant_flags`);
- writes ``metrics.json``, ``qc/overlay.png``, ``qc/preview.nii.gz``
  (:mod:`myoflow.measure.preview`) and, last, ``qc/flags.json``, which marks the
  participant complete and records what produced it (:func:`provenance`).

A participant whose inputs cannot be read gets ``exclusion.json`` with stage ``metrics``
(the cohort's name for this stage) and a reason from :data:`EXCLUSION_REASONS`; one
excluded earlier passes its exclusion on and loses any outputs of an earlier run.

Reruns: ``qc/flags.json`` newer than every input and written by this ``MEASURE_VERSION``
means the measurement is current; if the QC settings changed since, only the flags are
redone (from ``metrics.json`` and the stored swap decisions, in milliseconds instead of
seconds), else the participant is skipped.

Then, as the last stage that reads the stitched channels, it removes those each
participant no longer needs (config ``keep.stitched``, :func:`remove_unkept_channels`); a
later run that needs them again makes them again from the DICOM
(:mod:`myoflow.ingest.regenerate`).

Three shard tables come back (:class:`ShardTables`), with the same columns in every shard
whatever its participants, for the cohort gather to concatenate: the status table
(``measure.tsv``), the metrics table (``participant_id`` and every metric; CSA profiles
as JSON lists) and the QC table (``participant_id``, ``qc_status``, ``qc_reason``,
``qc_flags``) in the form :func:`myoflow.cohort.stats.cohort.build_analysis_table` reads:
``qc_status`` is ``pass`` for a participant that stays in the statistics (no flag, or
only warnings while ``keep_warnings`` is set) and ``fail`` otherwise, with the deciding
flags' messages in ``qc_reason``.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from myoflow.core.errors import MyoflowError, ParticipantExcluded
from myoflow.core.io import read_labels, write_json, write_tsv
from myoflow.core.kept_channels import (
    NOT_REGENERABLE,
    NOT_REGENERABLE_MEANING,
    channel_mtime_ns,
    kept_channels,
    remove_channels,
)
from myoflow.core.label_grid import MetricsError, Value
from myoflow.core.participant_files import ParticipantFiles, read_channels
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
from myoflow.measure.metrics import metric_keys, participant_metrics
from myoflow.measure.overlay import participant_overlay
from myoflow.measure.preview import write_preview
from myoflow.measure.qc import QcError, QcSettings, participant_flags, qc_status, write_flags
from myoflow.measure.swaps import SwapDecision, SwapError, detect_swaps, station_slices

STAGE = "metrics"
"""The stage a participant that cannot be measured is excluded at (as the cohort names it)."""

MEASURE_VERSION = 2  # 2: scale-free swap decisions (edge_ml replaces region_ml)
"""Version of the measurement (metrics, swap decisions, overlay); bump it when they change."""

CHANNELS = ("water", "fat", "in", "opp")

EXCLUSION_REASONS = {
    "dixon_unreadable": "a stitched Dixon channel or dixon/acquisition.json cannot be read",
    "segmentation_unreadable": "seg/labels.nii.gz or seg/segmentation.json cannot be read, "
    "or the labels are not on the grid of the Dixon channels",
    "landmarks_unreadable": "landmarks.json cannot be read",
    NOT_REGENERABLE: NOT_REGENERABLE_MEANING,
    INTERNAL_ERROR: INTERNAL_ERROR_MEANING,
}
"""Why the measure stage leaves a participant out: reason code -> what it means."""

SHARD_COLUMNS = STATUS_COLUMNS
"""Columns of ``results/shards/{shard}/measure.tsv``."""

QC_COLUMNS = ["participant_id", "qc_status", "qc_reason", "qc_flags"]
"""Columns of ``results/shards/{shard}/qc.tsv``."""

QC_PASS, QC_FAIL = "pass", "fail"


def metrics_columns() -> list[str]:
    """Columns of ``results/shards/{shard}/metrics.tsv``."""
    return ["participant_id", *metric_keys()]


@dataclass(frozen=True)
class MeasureFiles(ParticipantFiles):
    """One participant's folder: what the stage reads and what it writes."""

    def input_mtimes_ns(self) -> list[int]:
        """Modification times of every file the measurement reads (``seg/segmentation.json``
        if there; a channel removed on purpose counts with the time its file had).

        Raises:
            OSError: an input is missing.
        """
        paths = [self.acquisition, self.landmarks, self.labels]
        paths += [self.segmentation] if self.segmentation.exists() else []
        channels = [channel_mtime_ns(self, c) for c in CHANNELS]
        return channels + [path.stat().st_mtime_ns for path in paths]

    def remove_outputs(self) -> None:
        """Remove the stage's outputs, the completion marker (``qc/flags.json``) first."""
        for path in (self.flags, self.metrics, self.overlay, self.preview):
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class ShardTables:
    """The measure stage's three shard tables (see the module docstring)."""

    status: pd.DataFrame
    metrics: pd.DataFrame
    qc: pd.DataFrame


def settings_digest(settings: QcSettings) -> str:
    """SHA-256 of the QC settings: a change redoes the flags."""
    return hashlib.sha256(json.dumps(settings.to_config(), sort_keys=True).encode()).hexdigest()


def provenance(settings: QcSettings) -> dict[str, Any]:
    """What makes a participant's outputs current (stored in ``qc/flags.json``)."""
    return {"measure_version": MEASURE_VERSION, "qc_settings_sha256": settings_digest(settings)}


def measure_shard(
    members: pd.DataFrame,
    participants_dir: str | os.PathLike[str],
    landmarks_table: pd.DataFrame,
    segment_table: pd.DataFrame,
    settings: QcSettings,
    log: Callable[[str], None] = print,
    ingest: IngestSettings | None = None,
    keep_stitched: str = "all",
) -> ShardTables:
    """Measure every participant of a shard; return the three shard tables.

    Args:
        members: the shard's rows of the sheet (``participant_id``, ``shard``).
        participants_dir: folder holding one folder per participant.
        landmarks_table: the shard's landmarks table (``participant_id``, ``status``,
            ``stage``, ``reason``, ``detail``).
        segment_table: the shard's segmentation table (same status columns).
        settings: QC thresholds, severities and whether warnings pass.
        log: receives one line per participant, naming it and the outcome.
        ingest: the conversion's settings, to make channels removed after an earlier run
            again from the DICOM (members then need ``dicom_path``); None: they stay
            missing (:mod:`myoflow.ingest.regenerate`).
        keep_stitched: config ``keep.stitched``: which stitched channels every member keeps
            once measured (:func:`remove_unkept_channels`); ``all`` removes none.

    A participant that cannot be measured gets ``exclusion.json``; it never stops the
    others (:func:`myoflow.core.shard_runner.run_shard`).

    Raises:
        MyoflowError: an earlier stage's table lacks a member (run that stage first).
    """
    upstream = [Upstream(landmarks_table, "landmarks"), Upstream(segment_table, "segmentation")]
    run = run_shard(
        MeasureStage(settings, ingest),
        members,
        participants_dir,
        upstream,
        side_columns={"metrics": metrics_columns(), "qc": QC_COLUMNS},
        log=log,
    )
    remove_unkept_channels(run.status, participants_dir, keep_stitched, log)
    return ShardTables(status=run.status, metrics=run.side["metrics"], qc=run.side["qc"])


def remove_unkept_channels(
    status: pd.DataFrame,
    participants_dir: str | os.PathLike[str],
    keep_stitched: str,
    log: Callable[[str], None] = print,
) -> None:
    """Remove the stitched channels each member of the shard no longer needs.

    The measure stage is the last that reads them, so once its outputs are written a
    measured participant keeps only the channels config ``keep.stitched`` names; one
    excluded at any stage also keeps water and fat, to look at
    (:func:`myoflow.core.kept_channels.kept_channels`). A participant whose channels cannot be
    removed (a file system error) keeps them, with a line in the log; it never stops the
    shard.

    Raises:
        ValueError: ``keep_stitched`` is not a value of config ``keep.stitched``.
    """
    kept = {excluded: kept_channels(keep_stitched, excluded) for excluded in (False, True)}
    for pid, outcome in zip(status["participant_id"], status["status"], strict=True):
        files = ParticipantFiles(Path(participants_dir) / str(pid))
        try:
            removed = remove_channels(files, kept[outcome != "ok"])
        except OSError as err:
            log(f"{pid}: stitched channels not removed ({err}); they are kept")
            continue
        if removed:
            log(
                f"{pid}: removed dixon/{{{','.join(removed)}}}.nii.gz"
                f" (keep.stitched {keep_stitched})"
            )


@dataclass(frozen=True)
class MeasureStage:
    """The measure stage's work for the shard runner (:mod:`myoflow.core.shard_runner`)."""

    settings: QcSettings
    ingest: IngestSettings | None = None
    name = STAGE
    columns = SHARD_COLUMNS

    def current(self, member: Any, folder: Path) -> Outcome | None:
        """A current measurement; flags redone here when only the QC settings changed."""
        files = MeasureFiles(folder)
        stored = current_measurement(files)
        if stored is None:
            return None
        record, swaps, stored_provenance = stored
        if stored_provenance == provenance(self.settings):
            flags = json.loads(files.flags.read_text())["flags"]
            return self._outcome(member, record, flags, "current, skipped")
        try:
            flags = _flag(files, record, swaps, self.settings)
        except ParticipantExcluded:
            return None  # an input went bad since: measure again, which excludes it
        return self._outcome(member, record, flags, "flags redone")

    def run(self, member: Any, folder: Path) -> Outcome:
        files = MeasureFiles(folder, channel_source(member, self.ingest))
        record, flags = measure_participant(files, member.participant_id, self.settings)
        return self._outcome(member, record, flags, "measured")

    def remove_outputs(self, folder: Path) -> None:
        MeasureFiles(folder).remove_outputs()

    def _outcome(self, member: Any, record: Mapping, flags: list[dict], what: str) -> Outcome:
        pid = member.participant_id
        return Outcome(
            OK,
            f"{what} ({_status_text(flags, self.settings)})",
            {
                "metrics": {"participant_id": pid} | _table_values(record),
                "qc": {"participant_id": pid} | qc_row(flags, self.settings.keep_warnings),
            },
        )


def _status_text(flags: Sequence[Mapping[str, Any]], settings: QcSettings) -> str:
    status, _ = qc_status(flags, settings.keep_warnings)
    return f"qc {status}" + (f", {len(flags)} flag{'s' * (len(flags) > 1)}" if flags else "")


def measure_participant(
    files: MeasureFiles, participant_id: str, settings: QcSettings
) -> tuple[dict[str, Value], list[dict]]:
    """Measure one participant and write its outputs; return its record and flags.

    Raises:
        ParticipantExcluded: an input cannot be read (:data:`EXCLUSION_REASONS`).
    """
    files.flags.unlink(missing_ok=True)  # incomplete until the flags are written
    channels, affine = read_channels(files, CHANNELS, "dixon_unreadable")
    labels = _labels_on_grid(files, affine, channels["water"].shape)
    hips = _hips(files)
    segmentation = _segmentation(files)
    stations = _stations(files, affine, labels.shape[2])
    try:
        record = participant_metrics(
            labels,
            affine,
            channels["water"],
            channels["fat"],
            hips_lps_mm=hips,
            crop_boxes=segmentation.crop_boxes,
        )
        swaps = detect_swaps(*(channels[c] for c in CHANNELS), stations, affine)
        flags = participant_flags(record, swaps, hips, settings, segmentation.labels)
    except (MetricsError, SwapError, QcError) as err:
        raise ParticipantExcluded("segmentation_unreadable", str(err)) from err
    write_json(files.metrics, dict(record))
    participant_overlay(files.overlay, channels["water"], labels, affine, participant_id, record)
    write_preview(files.preview, channels["water"], channels["fat"], affine)
    write_flags(files.flags, flags, swaps, settings.keep_warnings, provenance(settings))
    return record, flags


def _flag(
    files: MeasureFiles,
    record: Mapping[str, Value],
    swaps: Sequence[SwapDecision],
    settings: QcSettings,
) -> list[dict]:
    """Redo one participant's flags from its stored record and swap decisions."""
    hips = _hips(files)
    flags = participant_flags(record, swaps, hips, settings, _segmentation(files).labels)
    write_flags(files.flags, flags, swaps, settings.keep_warnings, provenance(settings))
    return flags


def current_measurement(
    files: MeasureFiles,
) -> tuple[dict[str, Value], list[SwapDecision], dict] | None:
    """A participant's stored record, swap decisions and provenance, if current.

    Current means: ``qc/flags.json`` is newer than every input and was written by this
    ``MEASURE_VERSION``, and ``metrics.json``, the overlay and the preview exist (the QC settings
    may differ: the caller compares the provenance).
    """
    try:
        written = files.flags.stat().st_mtime_ns
        newest_input = max(files.input_mtimes_ns())
        stored = json.loads(files.flags.read_text())
        record = json.loads(files.metrics.read_text())
        files.landmarks.stat()
    except (OSError, ValueError):
        return None
    stored_provenance = stored.get("provenance") or {}
    if (
        written <= newest_input
        or stored_provenance.get("measure_version") != MEASURE_VERSION
        or not files.overlay.is_file()
        or not files.preview.is_file()
        or set(record) != set(metric_keys())
    ):
        return None
    try:
        swaps = [SwapDecision(**decision) for decision in stored["swap_stations"]]
    except (KeyError, TypeError):
        return None
    return record, swaps, stored_provenance


def qc_row(flags: Sequence[Mapping[str, Any]], keep_warnings: bool) -> dict[str, str]:
    """A participant's row of the QC table (``qc_status``, ``qc_reason``, ``qc_flags``).

    ``qc_status`` is ``pass`` when :func:`myoflow.measure.qc.qc_status` says pass, or warn while
    warnings are kept; ``fail`` otherwise. ``qc_reason`` joins the deciding flags'
    messages (for a kept warning, the warnings'); ``qc_flags`` lists every flag's name.
    """
    status, reasons = qc_status(flags, keep_warnings)
    return {
        "qc_status": QC_FAIL if status == "fail" else QC_PASS,
        "qc_reason": "; ".join(reasons),
        "qc_flags": json.dumps([f["name"] for f in flags]),
    }


def _table_values(record: Mapping[str, Value]) -> dict[str, Any]:
    """A metrics record as table cells: lists as JSON text, None as empty."""
    return {
        key: json.dumps(value) if isinstance(value, list) else value
        for key, value in record.items()
    }


def _labels_on_grid(files: MeasureFiles, affine: np.ndarray, shape: tuple) -> np.ndarray:
    from nibabel.filebasedimages import ImageFileError

    try:
        labels, labels_affine = read_labels(files.labels)
    except (OSError, EOFError, ValueError, zlib.error, ImageFileError, MyoflowError) as err:
        raise ParticipantExcluded("segmentation_unreadable", f"seg/labels.nii.gz: {err}") from err
    if labels.shape != shape or not np.allclose(labels_affine, affine, atol=1e-4):
        raise ParticipantExcluded(
            "segmentation_unreadable",
            f"seg/labels.nii.gz {labels.shape} is not on the grid of the Dixon channels {shape}",
        )
    return labels


def _hips(files: MeasureFiles) -> dict[str, np.ndarray]:
    try:
        landmarks = read_landmarks(files.landmarks)
    except MyoflowError as err:
        raise ParticipantExcluded("landmarks_unreadable", str(err)) from err
    return {"left": landmarks.left_lps_mm, "right": landmarks.right_lps_mm}


@dataclass(frozen=True)
class _Segmentation:
    crop_boxes: list | None  # None: crop contact not measured
    labels: list[str] | None  # the label names the model segments; None: all


def _segmentation(files: MeasureFiles) -> _Segmentation:
    """The crop boxes (a list, or a mapping by side) and segmented labels (the keys of
    ``label_values``) of ``seg/segmentation.json``; neither without the file."""
    if not files.segmentation.exists():
        return _Segmentation(None, None)
    try:
        record = json.loads(files.segmentation.read_text())
        boxes = record["crop_boxes"]
        labels = record.get("label_values")
        return _Segmentation(
            list(boxes.values()) if isinstance(boxes, Mapping) else list(boxes),
            None if labels is None else list(labels),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ParticipantExcluded(
            "segmentation_unreadable", f"seg/segmentation.json has no crop_boxes: {err}"
        ) from err


def _stations(files: MeasureFiles, affine: np.ndarray, n_slices: int) -> list[tuple[int, int]]:
    """Each station's slices on the stitched grid, head first, from the acquisition record."""
    try:
        acquisition = json.loads(files.acquisition.read_text())
        stations = sorted(acquisition["stations"], key=lambda s: s["station"])
        z_ranges = [(float(s["z_min_mm"]), float(s["z_max_mm"])) for s in stations]
        return station_slices(z_ranges, affine, n_slices)
    except (OSError, ValueError, KeyError, TypeError, SwapError) as err:
        raise ParticipantExcluded(
            "dixon_unreadable", f"dixon/acquisition.json gives no stations: {err}"
        ) from err


def write_tables(tables: ShardTables, status: Path, metrics: Path, qc: Path) -> None:
    """Write the three shard tables, the status table last."""
    write_tsv(metrics, tables.metrics)
    write_tsv(qc, tables.qc)
    write_tsv(status, tables.status)
