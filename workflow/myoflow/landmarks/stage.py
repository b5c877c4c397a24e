"""The landmarks stage: hip joint centres of every converted participant of one shard.

For each participant of the shard that the conversion left ``ok``, reads
``{participants_dir}/{participant}/dixon/water.nii.gz`` and ``fat.nii.gz``, finds the
femoral head centres (:func:`myoflow.landmarks.hip_detection.detect_hips`) and writes
``{participant}/landmarks.json`` (:func:`myoflow.landmarks.record.write_landmarks`). A
participant whose hips are not found or not plausible, or whose Dixon files cannot be
read, gets ``exclusion.json`` with stage ``landmarks`` and a reason from
:data:`EXCLUSION_REASONS`; a participant excluded earlier keeps its record and passes its
exclusion on. ``landmarks.json`` newer than both channels is current and not redone.

Participants in the supplied-landmarks table (config ``landmarks.supplied``,
:mod:`myoflow.landmarks.supplied`) get those positions, recorded with ``source``
``supplied``, and are not detected; their ``landmarks.json`` is current while it holds
exactly the supplied positions. Detected landmarks whose confidence is below
``min_confidence`` exclude the participant (``landmarks_low_confidence``); detected ones
are current while newer than water and fat, not supplied, and at or above the threshold.
So a changed table or threshold redoes only the participants it changes.

The shard table (:data:`SHARD_COLUMNS`, ``results/shards/{shard}/landmarks.tsv``) holds one
row per participant: its status and, for those found, the landmark record.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from myoflow.core.errors import MyoflowError, ParticipantExcluded
from myoflow.core.kept_channels import NOT_REGENERABLE, NOT_REGENERABLE_MEANING, channel_mtime_ns
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
from myoflow.landmarks.hip_detection import detect_hips
from myoflow.landmarks.record import EXCLUSION_REASONS as LANDMARK_REASONS
from myoflow.landmarks.record import (
    SIDES,
    HipLandmarks,
    LandmarkError,
    read_landmarks,
    write_landmarks,
)

STAGE = "landmarks"

EXCLUSION_REASONS = {
    **LANDMARK_REASONS,
    "dixon_unreadable": "a stitched Dixon channel cannot be read, is not on an axis-aligned "
    "grid, or the channels disagree on the grid",
    NOT_REGENERABLE: NOT_REGENERABLE_MEANING,
    INTERNAL_ERROR: INTERNAL_ERROR_MEANING,
}
"""Why the landmarks stage leaves a participant out: reason code -> what it means."""

LANDMARK_COLUMNS = [f"hip_{side}_{axis}_mm" for side in SIDES for axis in "xyz"] + [
    "hip_confidence",
    "inter_hip_mm",
    "hip_source",
]
"""The keys of :meth:`myoflow.landmarks.record.HipLandmarks.record`, in its order, and
where the landmarks come from (``detected`` or ``supplied``)."""

SHARD_COLUMNS = STATUS_COLUMNS + LANDMARK_COLUMNS
"""Columns of ``results/shards/{shard}/landmarks.tsv``: one row per participant."""


def read_channels(
    files: ParticipantFiles, names: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The named stitched channels (float32, (i, j, k)) and their RAS affine.

    Raises:
        ParticipantExcluded: ``dixon_unreadable``: see
            :func:`myoflow.core.participant_files.read_channels`.
    """
    return read_participant_channels(files, names, "dixon_unreadable")


class LandmarksStage:
    """The landmarks stage's work for the shard runner (:mod:`myoflow.core.shard_runner`).

    Args:
        supplied: landmarks by participant that replace detection (``source="supplied"``).
        min_confidence: detected landmarks less confident than this exclude the participant.
        ingest: the conversion's settings, to make channels removed after an earlier run
            again from the DICOM (None: they stay missing; :mod:`myoflow.ingest.regenerate`).
    """

    name = STAGE
    columns = SHARD_COLUMNS

    def __init__(
        self,
        supplied: dict[str, HipLandmarks] | None = None,
        min_confidence: float = 0.0,
        ingest: IngestSettings | None = None,
    ) -> None:
        self.supplied = supplied or {}
        self.min_confidence = min_confidence
        self.ingest = ingest

    def current(self, member: Any, folder: Path) -> Outcome | None:
        files = ParticipantFiles(folder)
        given = self.supplied.get(member.participant_id)
        if given is not None:
            try:
                hips = read_landmarks(files.landmarks)
            except MyoflowError:
                return None
            same = hips.source == "supplied" and all(
                np.array_equal(a, b)
                for a, b in (
                    (hips.left_lps_mm, given.left_lps_mm),
                    (hips.right_lps_mm, given.right_lps_mm),
                )
            )
            return Outcome(_found(hips), "current, skipped") if same else None
        hips = current_landmarks(files)
        if hips is None or hips.source != "detected" or hips.confidence < self.min_confidence:
            return None
        return Outcome(_found(hips), "current, skipped")

    def run(self, member: Any, folder: Path) -> Outcome:
        files = ParticipantFiles(folder, channel_source(member, self.ingest))
        files.landmarks.unlink(missing_ok=True)
        given = self.supplied.get(member.participant_id)
        if given is not None:
            write_landmarks(files.landmarks, member.participant_id, given)
            return Outcome(_found(given), "ok, supplied")
        channels, affine = read_channels(files, ("water", "fat"))
        try:
            hips = detect_hips(channels["water"], channels["fat"], affine)
        except ValueError as err:  # a grid that is not axis-aligned in our convention
            raise ParticipantExcluded("dixon_unreadable", str(err)) from err
        if hips.confidence < self.min_confidence:
            raise LandmarkError(
                "landmarks_low_confidence",
                f"confidence {hips.confidence:.2f} below landmarks.min_confidence"
                f" {self.min_confidence:.2f} (hips at LPS {_mm(hips.left_lps_mm)} and"
                f" {_mm(hips.right_lps_mm)}); supply them in landmarks.supplied to use them",
            )
        write_landmarks(files.landmarks, member.participant_id, hips)
        return Outcome(_found(hips), f"ok, confidence {hips.confidence:.2f}")

    def remove_outputs(self, folder: Path) -> None:
        ParticipantFiles(folder).landmarks.unlink(missing_ok=True)


def landmarks_shard(
    members: pd.DataFrame,
    participants_dir: str | os.PathLike[str],
    convert_table: pd.DataFrame,
    log: Callable[[str], None] = print,
    supplied: dict[str, HipLandmarks] | None = None,
    min_confidence: float = 0.0,
    ingest: IngestSettings | None = None,
) -> pd.DataFrame:
    """Find the hips of every participant of a shard; return the shard table.

    Args:
        members: the shard's rows of the sheet (``participant_id``, ``shard``).
        participants_dir: folder holding one folder per participant.
        convert_table: the shard's conversion table (``participant_id``, ``status``,
            ``stage``, ``reason``).
        log: receives one line per participant, naming it and the outcome.
        supplied: landmarks that replace detection, by participant
            (:func:`myoflow.landmarks.supplied.read_supplied_landmarks`).
        min_confidence: detected landmarks below this confidence exclude the participant.
        ingest: the conversion's settings, to make removed channels again (members then
            need ``dicom_path``); None: removed channels stay missing.

    A participant that cannot be measured gets ``exclusion.json``; it never stops the
    others (:func:`myoflow.core.shard_runner.run_shard`).

    Raises:
        MyoflowError: the conversion table lacks a member (convert the shard first).
    """
    upstream = [Upstream(convert_table, "conversion")]
    stage = LandmarksStage(supplied, min_confidence, ingest)
    return run_shard(stage, members, participants_dir, upstream, log=log).status


def current_landmarks(files: ParticipantFiles) -> HipLandmarks | None:
    """The participant's landmarks if ``landmarks.json`` is newer than water and fat (the
    times their files had when removed, for channels removed on purpose)."""
    try:
        written = files.landmarks.stat().st_mtime_ns
        inputs = max(channel_mtime_ns(files, c) for c in ("water", "fat"))
    except OSError:
        return None
    if written <= inputs:
        return None
    try:
        return read_landmarks(files.landmarks)
    except MyoflowError:
        return None


def _found(hips: HipLandmarks) -> dict:
    return OK | hips.record() | {"hip_source": hips.source}


def _mm(point: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in point) + ") mm"
