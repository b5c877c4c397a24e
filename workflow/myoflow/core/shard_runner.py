"""The one loop every per-participant stage runs over its shard.

A stage supplies only its work (:class:`ShardStage`): whether a participant's outputs are
current, how to process one participant, and how to remove its partial outputs. The
runner owns everything else, the same for every stage:

- **upstream exclusions**: a participant that an earlier stage excluded (its shard table,
  :class:`Upstream`) is not processed; its stale outputs are removed and the earlier
  stage, reason and detail are carried into this stage's table;
- **skipping**: a participant whose outputs are current is not redone;
- **exclusions**: a :class:`~myoflow.core.errors.ParticipantExcluded` raised by the stage
  becomes the participant's ``exclusion.json`` with this stage's name; success removes
  this stage's own earlier record;
- **the guarantee that one participant cannot fail the shard job**: any other exception
  raised while processing a participant becomes its ``exclusion.json`` with reason
  ``internal_error``, the exception type and message as detail; the traceback goes to
  the shard log and the runner goes on to the next participant;
- **progress**: one line per participant, ``[i/n] participant: outcome (s, ETA)``;
- **the shard table**, one row per member in the sheet's order; :meth:`ShardRun.write`
  writes the side tables first and the status table last, each atomically, so the
  declared output exists only once every participant has been handled.

Conditions that concern the whole shard, not one participant (an earlier stage's table
lacks a member: the stages ran out of order), raise :class:`~myoflow.core.errors.MyoflowError`
before any participant is touched.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from myoflow.core.errors import MyoflowError, ParticipantExcluded
from myoflow.core.exclusions import clear_exclusion, record_exclusion
from myoflow.core.io import write_tsv

STATUS_COLUMNS = ["participant_id", "shard", "status", "stage", "reason", "detail"]
"""The first columns of every stage's shard table."""

INTERNAL_ERROR = "internal_error"
"""The exclusion reason of a participant whose processing raised an unexpected error."""

INTERNAL_ERROR_MEANING = (
    "processing this participant raised an unexpected error (a bug, or input nobody "
    "foresaw): the exception type and message are the detail, the traceback is in the "
    "shard log; the other participants of the shard were processed"
)

OK = {"status": "ok", "stage": "", "reason": "", "detail": ""}
"""The status columns of a participant a stage processed."""


@dataclass(frozen=True)
class Outcome:
    """What a stage did with one participant.

    Attributes:
        record: the participant's shard-table cells after ``participant_id`` and ``shard``
            (at least ``status``; missing columns are left empty).
        note: what happened, for the progress line (``ok, confidence 0.81``).
        side_rows: one row per side table the participant contributes to (e.g. the
            measure stage's ``metrics`` and ``qc`` tables), keyed by table name.
    """

    record: Mapping[str, Any]
    note: str
    side_rows: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class ShardStage(Protocol):
    """What a stage gives the runner. ``member`` is the participant's row of the sheet
    (``participant_id``, ``shard`` and, before conversion, ``dicom_path``)."""

    name: str
    """The stage name recorded in ``exclusion.json`` and the shard table."""

    columns: Sequence[str]
    """The shard table's columns, starting with :data:`STATUS_COLUMNS`' first three."""

    defaults: Mapping[str, Any]
    """Optional: cells a row takes where the outcome's record has none (e.g. counts of 0
    for an excluded participant); a stage without it leaves them empty."""

    def current(self, member: Any, folder: Path) -> Outcome | None:
        """The participant's outcome if its outputs are current, else None."""

    def run(self, member: Any, folder: Path) -> Outcome:
        """Process one participant and write its outputs (the completion marker last).

        Raises:
            ParticipantExcluded: the participant cannot be processed, for a reason the
                stage documents.
        """

    def remove_outputs(self, folder: Path) -> None:
        """Remove the participant's outputs of this stage, the completion marker first."""


@dataclass(frozen=True)
class Upstream:
    """An earlier stage's shard table: who it passed, and why it excluded the others."""

    table: pd.DataFrame
    stage: str
    """The earlier stage's name, for a table without a ``stage`` column (the inventory's)."""

    def require(self, members: pd.DataFrame) -> None:
        """Check, before any work, that the table lists every member.

        Raises:
            MyoflowError: a member is missing (run ``stage`` for this shard first).
        """
        missing = sorted(set(members["participant_id"]) - set(self.table["participant_id"]))
        if missing:
            raise MyoflowError(
                f"participant {', '.join(missing[:5])} is not in the shard's {self.stage} "
                f"table; run the {self.stage} of this shard first"
            )

    def exclusion(self, participant_id: str, folder: Path) -> dict[str, str] | None:
        """The participant's exclusion there (``stage``, ``reason``, ``detail``), or None
        when that stage passed it. A table without ``detail`` (the conversion's) takes the
        detail from the participant's ``exclusion.json`` when that stage wrote it."""
        row = self.table[self.table["participant_id"] == participant_id].iloc[0]
        if row["status"] == "ok":
            return None
        record = {key: _text(row.get(key)) for key in ("stage", "reason", "detail")}
        record["stage"] = record["stage"] or self.stage
        if not record["detail"]:
            record["detail"] = _recorded_detail(folder / "exclusion.json", record["stage"])
        return record


@dataclass(frozen=True)
class ShardRun:
    """The tables of one shard run: the status table and any side tables."""

    status: pd.DataFrame
    side: dict[str, pd.DataFrame]

    def write(self, status_path: str | os.PathLike[str], **side_paths: str) -> None:
        """Write every side table, then the status table (the declared output) last."""
        for name, path in side_paths.items():
            write_tsv(path, self.side[name])
        write_tsv(status_path, self.status)


def run_shard(
    stage: ShardStage,
    members: pd.DataFrame,
    participants_dir: str | os.PathLike[str],
    upstream: Sequence[Upstream] = (),
    side_columns: Mapping[str, Sequence[str]] | None = None,
    log: Callable[[str], None] = print,
) -> ShardRun:
    """Run ``stage`` over every member of a shard; return its tables.

    Args:
        stage: the stage's work (:class:`ShardStage`).
        members: the shard's rows of the sheet (``participant_id``, ``shard``, ...).
        participants_dir: folder holding one folder per participant.
        upstream: earlier stages' shard tables, in pipeline order; the first that
            excluded a participant is carried on.
        side_columns: the columns of each side table (see :class:`Outcome`).
        log: receives the progress lines and, for an internal error, the traceback.

    No exception raised while handling one participant stops the others (see the module
    docstring).

    Raises:
        MyoflowError: an upstream table lacks a member (run that stage first).
    """
    for earlier in upstream:
        earlier.require(members)
    side_columns = dict(side_columns or {})
    rows: list[dict[str, Any]] = []
    side_rows: dict[str, list[Mapping[str, Any]]] = {name: [] for name in side_columns}
    total, started_shard = len(members), time.perf_counter()
    defaults = getattr(stage, "defaults", {})
    for index, member in enumerate(members.itertuples(index=False), start=1):
        pid = str(member.participant_id)
        started = time.perf_counter()
        outcome = _handle(stage, member, Path(participants_dir) / pid, upstream, log)
        seconds = time.perf_counter() - started
        rows.append(
            {"participant_id": pid, "shard": member.shard}
            | {
                column: outcome.record.get(column, defaults.get(column, ""))
                for column in stage.columns[2:]
            }
        )
        for name, rows_of_table in side_rows.items():
            if name in outcome.side_rows:
                rows_of_table.append(outcome.side_rows[name])
        elapsed = time.perf_counter() - started_shard
        eta = elapsed / index * (total - index)
        log(f"[{index}/{total}] {pid}: {outcome.note} ({seconds:.1f} s, ETA {_duration(eta)})")
    return ShardRun(
        status=pd.DataFrame(rows, columns=list(stage.columns)),
        side={
            name: pd.DataFrame(side_rows[name], columns=list(columns))
            for name, columns in side_columns.items()
        },
    )


def _handle(
    stage: ShardStage,
    member: Any,
    folder: Path,
    upstream: Sequence[Upstream],
    log: Callable[[str], None],
) -> Outcome:
    """One participant through the stage; never raises."""
    pid = str(member.participant_id)
    exclusion = folder / "exclusion.json"
    try:
        for earlier in upstream:
            if (record := earlier.exclusion(pid, folder)) is not None:
                stage.remove_outputs(folder)
                return Outcome(
                    {"status": "excluded"} | record,
                    f"excluded at {record['stage']} ({record['reason']}), not processed",
                )
        if (done := stage.current(member, folder)) is not None:
            return done
        try:
            outcome = stage.run(member, folder)
        except ParticipantExcluded as excluded:
            stage.remove_outputs(folder)
            record = record_exclusion(exclusion, pid, stage.name, excluded)
            return Outcome(record, f"excluded, {excluded.reason}: {excluded.detail}")
        clear_exclusion(exclusion, stage.name)
        return outcome
    except Exception as err:  # noqa: BLE001 - the guarantee: one participant never fails the job
        log(f"{pid}: internal error in {stage.name}:\n{traceback.format_exc().rstrip()}")
        return _internal_error(stage, folder, pid, err, log)


def _internal_error(
    stage: ShardStage, folder: Path, pid: str, err: Exception, log: Callable[[str], None]
) -> Outcome:
    """Record an unexpected error as the participant's exclusion; never raises."""
    detail = f"{type(err).__name__}: {err}".strip()
    excluded = ParticipantExcluded(INTERNAL_ERROR, detail)
    try:
        stage.remove_outputs(folder)
    except Exception as cleanup:  # noqa: BLE001 - still record the exclusion below
        log(f"{pid}: could not remove partial outputs: {type(cleanup).__name__}: {cleanup}")
    try:
        record = record_exclusion(folder / "exclusion.json", pid, stage.name, excluded)
    except Exception as write:  # noqa: BLE001 - the table row still says why
        log(f"{pid}: could not write exclusion.json: {type(write).__name__}: {write}")
        record = {"status": "excluded", "stage": stage.name, "reason": INTERNAL_ERROR}
        record["detail"] = detail
    return Outcome(record, f"excluded, {INTERNAL_ERROR}: {detail}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _recorded_detail(path: Path, stage: str) -> str:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    return str(record.get("detail", "")) if record.get("stage") == stage else ""
