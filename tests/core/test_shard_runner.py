"""The shard runner: skipping, exclusions, upstream exclusions, progress, and the guarantee
that an error in one participant never fails the shard."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from myoflow.core.errors import MyoflowError, ParticipantExcluded
from myoflow.core.shard_runner import (
    INTERNAL_ERROR,
    OK,
    STATUS_COLUMNS,
    Outcome,
    Upstream,
    run_shard,
)


class CountingStage:
    """Writes ``out.txt`` per participant; ``behaviour`` says what each one does instead."""

    name = "count"
    columns = [*STATUS_COLUMNS, "value"]

    def __init__(self, behaviour: dict[str, str]):
        self.behaviour = behaviour
        self.ran: list[str] = []

    def current(self, member, folder: Path) -> Outcome | None:
        if (folder / "out.txt").is_file():
            return Outcome(OK | {"value": (folder / "out.txt").read_text()}, "current, skipped")
        return None

    def run(self, member, folder: Path) -> Outcome:
        pid = member.participant_id
        self.ran.append(pid)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "partial.txt").write_text("half")  # written before the failure below
        what = self.behaviour.get(pid)
        if what == "exclude":
            raise ParticipantExcluded("bad_input", f"{pid} has bad input")
        if what == "crash":
            raise KeyError("a bug")
        if what == "crash_twice":  # raises, and cleaning up raises too
            self.behaviour[pid] = "crash_cleanup"
            raise ZeroDivisionError("division by zero")
        (folder / "out.txt").write_text(pid.upper())
        return Outcome(OK | {"value": pid.upper()}, "ok", {"side": {"participant_id": pid}})

    def remove_outputs(self, folder: Path) -> None:
        if self.behaviour.get(folder.name) == "crash_cleanup":
            raise PermissionError("read-only")
        for name in ("out.txt", "partial.txt"):
            (folder / name).unlink(missing_ok=True)


def members(*ids: str) -> pd.DataFrame:
    return pd.DataFrame({"participant_id": list(ids), "shard": ["s-0000"] * len(ids)})


def test_an_unexpected_error_excludes_that_participant_and_the_others_finish(tmp_path):
    stage = CountingStage({"p2": "crash"})
    lines: list[str] = []
    run = run_shard(stage, members("p1", "p2", "p3"), tmp_path, log=lines.append)

    assert stage.ran == ["p1", "p2", "p3"]
    table = run.status.set_index("participant_id")
    assert list(table["status"]) == ["ok", "excluded", "ok"]
    assert list(table["value"]) == ["P1", "", "P3"]
    crashed = table.loc["p2"]
    assert (crashed["stage"], crashed["reason"]) == ("count", INTERNAL_ERROR)
    assert crashed["detail"] == "KeyError: 'a bug'"
    record = json.loads((tmp_path / "p2" / "exclusion.json").read_text())
    assert record == {
        "participant_id": "p2",
        "stage": "count",
        "reason": INTERNAL_ERROR,
        "detail": "KeyError: 'a bug'",
    }
    assert not (tmp_path / "p2" / "partial.txt").exists()  # partial outputs removed
    log = "\n".join(lines)
    assert "Traceback (most recent call last)" in log and 'raise KeyError("a bug")' in log
    assert list(run.side) == []


def test_a_failing_cleanup_still_records_the_internal_error(tmp_path):
    stage = CountingStage({"p1": "crash_twice"})
    lines: list[str] = []
    run = run_shard(stage, members("p1", "p2"), tmp_path, log=lines.append)
    assert list(run.status["reason"]) == [INTERNAL_ERROR, ""]
    assert "could not remove partial outputs: PermissionError: read-only" in "\n".join(lines)
    assert json.loads((tmp_path / "p1" / "exclusion.json").read_text())["detail"] == (
        "ZeroDivisionError: division by zero"
    )


def test_exclusions_reruns_and_progress_lines(tmp_path):
    stage = CountingStage({"p2": "exclude"})
    lines: list[str] = []
    run_shard(stage, members("p1", "p2"), tmp_path, log=lines.append)
    assert json.loads((tmp_path / "p2" / "exclusion.json").read_text())["reason"] == "bad_input"
    assert lines[0].startswith("[1/2] p1: ok (") and ", ETA " in lines[0]
    assert lines[1].startswith("[2/2] p2: excluded, bad_input: p2 has bad input (")

    stage.behaviour.clear()  # the input was fixed
    lines.clear()
    run = run_shard(stage, members("p1", "p2"), tmp_path, log=lines.append)
    assert stage.ran == ["p1", "p2", "p2"]  # p1 was current
    assert lines[0].startswith("[1/2] p1: current, skipped")
    assert list(run.status["status"]) == ["ok", "ok"]
    assert not (tmp_path / "p2" / "exclusion.json").exists()  # its own record is cleared


def test_an_upstream_exclusion_is_carried_on_and_stale_outputs_removed(tmp_path):
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "out.txt").write_text("stale")
    (tmp_path / "p1" / "exclusion.json").write_text(
        json.dumps({"participant_id": "p1", "stage": "earlier", "reason": "r", "detail": "why"})
    )
    earlier = pd.DataFrame({"participant_id": ["p1", "p2"], "status": ["excluded", "ok"]})
    earlier["reason"] = ["r", ""]
    stage = CountingStage({})
    run = run_shard(stage, members("p1", "p2"), tmp_path, [Upstream(earlier, "earlier")])
    row = run.status.set_index("participant_id").loc["p1"]
    assert (row["status"], row["stage"], row["reason"], row["detail"]) == (
        "excluded",
        "earlier",
        "r",
        "why",
    )
    assert stage.ran == ["p2"] and not (tmp_path / "p1" / "out.txt").exists()


def test_a_member_missing_upstream_fails_before_any_work(tmp_path):
    earlier = pd.DataFrame({"participant_id": ["p1"], "status": ["ok"], "reason": [""]})
    stage = CountingStage({})
    with pytest.raises(MyoflowError, match="p2 is not in the shard's earlier table"):
        run_shard(stage, members("p1", "p2"), tmp_path, [Upstream(earlier, "earlier")])
    assert stage.ran == []


def test_side_tables_are_written_before_the_status_table(tmp_path, monkeypatch):
    from myoflow.core import shard_runner

    stage = CountingStage({"p2": "exclude"})
    run = run_shard(
        stage, members("p1", "p2"), tmp_path / "p", side_columns={"side": ["participant_id"]}
    )
    assert list(run.side["side"]["participant_id"]) == ["p1"]
    written: list[str] = []
    real = shard_runner.write_tsv
    monkeypatch.setattr(
        shard_runner,
        "write_tsv",
        lambda path, table: (written.append(path.name), real(path, table)),
    )
    run.write(tmp_path / "status.tsv", side=tmp_path / "side.tsv")
    assert written == ["side.tsv", "status.tsv"]
    assert list(pd.read_csv(tmp_path / "status.tsv", sep="\t")["status"]) == ["ok", "excluded"]
