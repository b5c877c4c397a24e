"""The landmarks stage: hip joint centres of every converted participant of one shard.

For each participant of the shard that the conversion left ``ok``, reads
``{participants_dir}/{participant}/dixon/water.nii.gz`` and ``fat.nii.gz``, finds the
femoral head centres (:func:`myoflow.landmarks.hip_detection.detect_hips`) and writes
``{participant}/landmarks.json`` (:func:`myoflow.landmarks.record.write_landmarks`). A
participant whose hips are not found or not plausible, or whose Dixon files cannot be
read, gets ``exclusion.json`` with stage ``landmarks`` and a reason from
:data:`EXCLUSION_REASONS`; a participant excluded earlier keeps its record and passes its
exclusion on. ``landmarks.json`` newer than both channels is current and not redone.

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
from myoflow.landmarks.hip_detection import detect_hips
from myoflow.landmarks.record import EXCLUSION_REASONS as LANDMARK_REASONS
from myoflow.landmarks.record import SIDES, HipLandmarks, read_landmarks, write_landmarks

STAGE = "landmarks"

EXCLUSION_REASONS = {
    **LANDMARK_REASONS,
    "dixon_unreadable": "a stitched Dixon channel cannot be read, is not on an axis-aligned "
    "grid, or the channels disagree on the grid",
    INTERNAL_ERROR: INTERNAL_ERROR_MEANING,
}
"""Why the landmarks stage leaves a participant out: reason code -> what it means."""

LANDMARK_COLUMNS = [f"hip_{side}_{axis}_mm" for side in SIDES for axis in "xyz"] + [
    "hip_confidence",
    "inter_hip_mm",
]
"""The keys of :meth:`myoflow.landmarks.record.HipLandmarks.record`, in its order."""

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
    """The landmarks stage's work for the shard runner (:mod:`myoflow.core.shard_runner`)."""

    name = STAGE
    columns = SHARD_COLUMNS

    def current(self, member: Any, folder: Path) -> Outcome | None:
        hips = current_landmarks(ParticipantFiles(folder))
        return None if hips is None else Outcome(_found(hips), "current, skipped")

    def run(self, member: Any, folder: Path) -> Outcome:
        files = ParticipantFiles(folder)
        files.landmarks.unlink(missing_ok=True)
        channels, affine = read_channels(files, ("water", "fat"))
        try:
            hips = detect_hips(channels["water"], channels["fat"], affine)
        except ValueError as err:  # a grid that is not axis-aligned in our convention
            raise ParticipantExcluded("dixon_unreadable", str(err)) from err
        write_landmarks(files.landmarks, member.participant_id, hips)
        return Outcome(_found(hips), f"ok, confidence {hips.confidence:.2f}")

    def remove_outputs(self, folder: Path) -> None:
        ParticipantFiles(folder).landmarks.unlink(missing_ok=True)


def landmarks_shard(
    members: pd.DataFrame,
    participants_dir: str | os.PathLike[str],
    convert_table: pd.DataFrame,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Find the hips of every participant of a shard; return the shard table.

    Args:
        members: the shard's rows of the sheet (``participant_id``, ``shard``).
        participants_dir: folder holding one folder per participant.
        convert_table: the shard's conversion table (``participant_id``, ``status``,
            ``stage``, ``reason``).
        log: receives one line per participant, naming it and the outcome.

    A participant that cannot be measured gets ``exclusion.json``; it never stops the
    others (:func:`myoflow.core.shard_runner.run_shard`).

    Raises:
        MyoflowError: the conversion table lacks a member (convert the shard first).
    """
    upstream = [Upstream(convert_table, "conversion")]
    return run_shard(LandmarksStage(), members, participants_dir, upstream, log=log).status


def current_landmarks(files: ParticipantFiles) -> HipLandmarks | None:
    """The participant's landmarks if ``landmarks.json`` is newer than water and fat."""
    try:
        written = files.landmarks.stat().st_mtime_ns
        inputs = max(files.channel(c).stat().st_mtime_ns for c in ("water", "fat"))
    except OSError:
        return None
    if written <= inputs:
        return None
    try:
        return read_landmarks(files.landmarks)
    except MyoflowError:
        return None


def _found(hips: HipLandmarks) -> dict:
    return OK | hips.record()
