"""``exclusion.json``: the one record per participant of why a stage left it out.

Every per-participant stage writes ``{participants_dir}/{participant}/exclusion.json``
when it cannot process a participant, with ``participant_id``, ``stage``, ``reason`` (a
code from that stage's table of reasons) and ``detail``. The record names the earliest
stage that excluded the participant: a stage that succeeds removes its own earlier
record (or a damaged one) and leaves those of other stages alone, and later stages do
not process a participant that an earlier one excluded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from myoflow.core.errors import ParticipantExcluded
from myoflow.core.io import write_json


def write_exclusion(
    path: str | os.PathLike[str], participant_id: str, stage: str, excluded: ParticipantExcluded
) -> None:
    """Write a participant's exclusion record atomically."""
    write_json(
        path,
        {
            "participant_id": participant_id,
            "stage": stage,
            "reason": excluded.reason,
            "detail": excluded.detail,
        },
    )


def clear_exclusion(path: str | os.PathLike[str], stage: str) -> None:
    """Remove the record at ``path`` if ``stage`` wrote it or it is damaged."""
    path = Path(path)
    try:
        written_by = json.loads(path.read_text()).get("stage")
    except FileNotFoundError:
        return
    except (OSError, ValueError, AttributeError):
        written_by = stage  # a damaged record: let the stage replace it
    if written_by == stage:
        path.unlink(missing_ok=True)


def exclusion_record(excluded: ParticipantExcluded, stage: str) -> dict:
    """The status columns of a shard-table row for a participant ``stage`` excluded."""
    return {
        "status": "excluded",
        "stage": stage,
        "reason": excluded.reason,
        "detail": excluded.detail,
    }


def record_exclusion(
    path: str | os.PathLike[str], participant_id: str, stage: str, excluded: ParticipantExcluded
) -> dict:
    """Write the participant's ``exclusion.json`` (:func:`write_exclusion`) and return the
    status columns of its shard-table row (:func:`exclusion_record`)."""
    write_exclusion(path, participant_id, stage, excluded)
    return exclusion_record(excluded, stage)
