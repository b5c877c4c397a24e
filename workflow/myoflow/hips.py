"""The landmarks stage: hip joint centres of every converted participant of one shard.

For each participant of the shard that the conversion left ``ok``, reads
``{participants_dir}/{participant}/dixon/water.nii.gz`` and ``fat.nii.gz``, finds the
femoral head centres (:func:`myoflow.hip_detection.detect_hips`) and writes
``{participant}/landmarks.json`` (:func:`myoflow.landmarks.write_landmarks`). A
participant whose hips are not found or not plausible, or whose Dixon files cannot be
read, gets ``exclusion.json`` with stage ``landmarks`` and a reason from
:data:`EXCLUSION_REASONS`; a participant excluded earlier keeps its record and passes its
exclusion on. ``landmarks.json`` newer than both channels is current and not redone.

The shard table (:data:`SHARD_COLUMNS`, ``results/shards/{shard}/landmarks.tsv``) holds one
row per participant: its status and, for those found, the landmark record.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from myoflow.errors import MyoflowError, ParticipantExcluded
from myoflow.exclusions import clear_exclusion, record_exclusion
from myoflow.hip_detection import detect_hips
from myoflow.landmarks import EXCLUSION_REASONS as LANDMARK_REASONS
from myoflow.landmarks import SIDES, HipLandmarks, read_landmarks, write_landmarks
from myoflow.participant_files import ParticipantFiles
from myoflow.participant_files import read_channels as read_participant_channels

STAGE = "landmarks"

EXCLUSION_REASONS = {
    **LANDMARK_REASONS,
    "dixon_unreadable": "a stitched Dixon channel cannot be read, is not on an axis-aligned "
    "grid, or the channels disagree on the grid",
}
"""Why the landmarks stage leaves a participant out: reason code -> what it means."""

STATUS_COLUMNS = ["participant_id", "shard", "status", "stage", "reason", "detail"]
"""The first columns of every shard table from the landmarks stage on."""

LANDMARK_COLUMNS = [f"hip_{side}_{axis}_mm" for side in SIDES for axis in "xyz"] + [
    "hip_confidence",
    "inter_hip_mm",
]
"""The keys of :meth:`myoflow.landmarks.HipLandmarks.record`, in its order."""

SHARD_COLUMNS = STATUS_COLUMNS + LANDMARK_COLUMNS
"""Columns of ``results/shards/{shard}/landmarks.tsv``: one row per participant."""


def read_channels(
    files: ParticipantFiles, names: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The named stitched channels (float32, (i, j, k)) and their RAS affine.

    Raises:
        ParticipantExcluded: ``dixon_unreadable``: see
            :func:`myoflow.participant_files.read_channels`.
    """
    return read_participant_channels(files, names, "dixon_unreadable")


def upstream_exclusion(
    table: pd.DataFrame, participant_id: str, files: ParticipantFiles
) -> dict | None:
    """A participant's exclusion by an earlier stage, from that stage's shard table.

    Returns None when the participant is ``ok`` there; else ``stage``, ``reason`` and
    ``detail`` (from the table, or the participant's ``exclusion.json`` where the table
    has no ``detail`` column, as the conversion's has not).

    Raises:
        MyoflowError: the table has no row for the participant (run that stage first).
    """
    rows = table[table["participant_id"] == participant_id]
    if rows.empty:
        raise MyoflowError(
            f"participant {participant_id} is not in the earlier stage's shard table; "
            "run that stage for this shard first"
        )
    row = rows.iloc[0]
    if row["status"] == "ok":
        return None
    record = {key: _text(row.get(key)) for key in ("stage", "reason", "detail")}
    if not record["detail"]:
        record["detail"] = _recorded_detail(files.exclusion, record["stage"])
    return record


def require_members(table: pd.DataFrame, members: pd.DataFrame, stage: str) -> None:
    """Check, before any work, that an earlier stage's shard table lists every member.

    Raises:
        MyoflowError: a member is missing (run ``stage`` for this shard first).
    """
    missing = sorted(set(members["participant_id"]) - set(table["participant_id"]))
    if missing:
        raise MyoflowError(
            f"participant {', '.join(missing[:5])} is not in the shard's {stage} table; "
            f"run the {stage} of this shard first"
        )


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _recorded_detail(path: Path, stage: str) -> str:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    return str(record.get("detail", "")) if record.get("stage") == stage else ""


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
    others.

    Raises:
        MyoflowError: the conversion table lacks a member (convert the shard first).
    """
    require_members(convert_table, members, "conversion")
    rows = []
    for member in members.itertuples(index=False):
        pid = member.participant_id
        files = ParticipantFiles(Path(participants_dir) / pid)
        earlier = upstream_exclusion(convert_table, pid, files)
        if earlier is not None:
            files.landmarks.unlink(missing_ok=True)
            record = {"status": "excluded"} | earlier
            log(f"{pid}: excluded at {earlier['stage']} ({earlier['reason']}), not measured")
        elif (hips := current_landmarks(files)) is not None:
            record = _found(hips)
            log(f"{pid}: current, skipped")
        else:
            started = time.perf_counter()
            record = _find_one(files, pid)
            seconds = time.perf_counter() - started
            outcome = (
                f"excluded, {record['reason']}: {record['detail']}"
                if record["status"] != "ok"
                else f"ok, confidence {record['hip_confidence']:.2f}"
            )
            log(f"{pid}: {outcome} ({seconds:.1f} s)")
        rows.append({"participant_id": pid, "shard": member.shard} | record)
    return pd.DataFrame(rows, columns=SHARD_COLUMNS)


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


def _find_one(files: ParticipantFiles, participant_id: str) -> dict:
    """Detect one participant's hips and write its landmarks or exclusion."""
    files.landmarks.unlink(missing_ok=True)
    try:
        channels, affine = read_channels(files, ("water", "fat"))
        try:
            hips = detect_hips(channels["water"], channels["fat"], affine)
        except ValueError as err:  # a grid that is not axis-aligned in our convention
            raise ParticipantExcluded("dixon_unreadable", str(err)) from err
    except ParticipantExcluded as excluded:
        return record_exclusion(files.exclusion, participant_id, STAGE, excluded)
    write_landmarks(files.landmarks, participant_id, hips)
    clear_exclusion(files.exclusion, STAGE)
    return _found(hips)


def _found(hips: HipLandmarks) -> dict:
    return {"status": "ok", "stage": "", "reason": "", "detail": ""} | hips.record()
