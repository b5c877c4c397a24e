"""Removing stitched channels on purpose (config keep.stitched) and what the record of it
tells the stages' skip logic (myoflow.core.kept_channels)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from myoflow.core.errors import ParticipantExcluded
from myoflow.core.io import write_json
from myoflow.core.kept_channels import (
    NOT_REGENERABLE,
    adopt_regenerated,
    channel_kept_or_removed,
    channel_mtime_ns,
    file_sha256,
    kept_channels,
    missing_removed,
    remove_channels,
    removed_channels,
)
from myoflow.core.participant_files import CHANNELS, ParticipantFiles
from myoflow.measure.stage import remove_unkept_channels

PROVENANCE = {"convert_version": 1, "settings_sha256": "abc"}


def converted(folder: Path) -> ParticipantFiles:
    """A participant folder with four channel files of distinct bytes and times, and an
    acquisition record."""
    files = ParticipantFiles(folder)
    for index, name in enumerate(CHANNELS):
        path = files.channel(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{name} voxels".encode() * (index + 1))
        os.utime(path, ns=(10**18 + index, 10**18 + index))
    write_json(files.acquisition, {"provenance": PROVENANCE})
    return files


def test_kept_channels_per_setting_and_for_excluded_participants():
    assert kept_channels("none", excluded=False) == ()
    assert kept_channels("water_fat", excluded=False) == ("water", "fat")
    assert kept_channels("all", excluded=False) == CHANNELS
    assert kept_channels("none", excluded=True) == ("water", "fat")
    assert kept_channels("all", excluded=True) == CHANNELS
    with pytest.raises(ValueError, match="keep.stitched"):
        kept_channels("some", excluded=False)


def test_removal_records_each_channel_then_unlinks_it(tmp_path):
    files = converted(tmp_path / "P1")
    sha = {name: file_sha256(files.channel(name)) for name in CHANNELS}
    assert remove_channels(files, keep=("water",)) == ["fat", "in", "opp"]
    assert files.channel("water").is_file()
    assert not any(files.channel(c).exists() for c in ("fat", "in", "opp"))
    record = removed_channels(files)
    assert set(record) == {"fat", "in", "opp"}
    assert record["in"]["sha256"] == sha["in"]
    assert record["opp"]["mtime_ns"] == 10**18 + 3
    assert record["fat"]["bytes"] == len(b"fat voxels") * 2
    # Removing water too adds it to the record, keeping the others.
    assert remove_channels(files, keep=()) == ["water"]
    assert set(removed_channels(files)) == set(CHANNELS)
    assert missing_removed(files) == list(CHANNELS)
    assert remove_channels(files, keep=()) == []


def test_removed_channels_keep_their_times_for_the_skip_logic(tmp_path):
    files = converted(tmp_path / "P1")
    remove_channels(files, keep=("water",))
    assert channel_mtime_ns(files, "water") == files.channel("water").stat().st_mtime_ns
    assert channel_mtime_ns(files, "in") == 10**18 + 2
    assert channel_kept_or_removed(files, "opp")
    # A channel gone without the record is missing, as before.
    files.channel("water").unlink()
    assert not channel_kept_or_removed(files, "water")
    with pytest.raises(FileNotFoundError):
        channel_mtime_ns(files, "water")


def test_a_record_of_another_conversion_is_ignored(tmp_path):
    files = converted(tmp_path / "P1")
    remove_channels(files, keep=())
    write_json(files.acquisition, {"provenance": PROVENANCE | {"settings_sha256": "new"}})
    assert removed_channels(files) == {}
    assert not channel_kept_or_removed(files, "water")
    with pytest.raises(FileNotFoundError):
        channel_mtime_ns(files, "fat")


def test_nothing_is_removed_without_a_conversion_record(tmp_path):
    files = converted(tmp_path / "P1")
    files.acquisition.unlink()
    assert remove_channels(files, keep=()) == []
    assert all(files.channel(c).is_file() for c in CHANNELS)


def test_a_regenerated_channel_is_adopted_only_if_it_is_the_removed_file(tmp_path):
    files = converted(tmp_path / "P1")
    original = files.channel("fat").read_bytes()
    remove_channels(files, keep=())
    files.channel("fat").write_bytes(original)
    adopt_regenerated(files, "fat")
    assert files.channel("fat").stat().st_mtime_ns == 10**18 + 1
    files.channel("in").write_bytes(b"other bytes")
    with pytest.raises(ParticipantExcluded) as excluded:
        adopt_regenerated(files, "in")
    assert excluded.value.reason == NOT_REGENERABLE
    assert "differs from the one removed" in excluded.value.detail
    assert not files.channel("in").exists()


def test_the_measure_stage_removes_per_participant_outcome(tmp_path):
    for pid in ("A", "B", "C"):
        converted(tmp_path / pid)
    status = pd.DataFrame({"participant_id": ["A", "B", "C"], "status": ["ok", "excluded", "ok"]})
    lines: list[str] = []
    remove_unkept_channels(status, tmp_path, "none", log=lines.append)
    assert not list((tmp_path / "A" / "dixon").glob("*.nii.gz"))
    kept = sorted(p.name for p in (tmp_path / "B" / "dixon").glob("*.nii.gz"))
    assert kept == ["fat.nii.gz", "water.nii.gz"]  # excluded: what a person looks at
    assert lines[0] == "A: removed dixon/{water,fat,in,opp}.nii.gz (keep.stitched none)"
    assert json.loads((tmp_path / "C" / "dixon" / "removed.json").read_text())["conversion"] == (
        PROVENANCE
    )
    converted(tmp_path / "D")
    remove_unkept_channels(
        pd.DataFrame({"participant_id": ["D"], "status": ["ok"]}), tmp_path, "all", log=lines.append
    )
    assert len(list((tmp_path / "D" / "dixon").glob("*.nii.gz"))) == 4
