"""Stitched channels removed on purpose (config keep.stitched) made again from the DICOM
(myoflow.ingest.regenerate), and the stages' skip logic while they are absent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from dicom_helpers import progress_outcomes

from myoflow.core.errors import ParticipantExcluded
from myoflow.core.kept_channels import NOT_REGENERABLE, remove_channels
from myoflow.core.participant_files import CHANNELS, ParticipantFiles, read_channels
from myoflow.ingest.convert import convert_shard
from myoflow.ingest.regenerate import DicomChannelSource, channel_source
from myoflow.ingest.settings import IngestSettings
from myoflow.landmarks.stage import landmarks_shard
from myoflow.synth.cohort import CohortSpec, generate_cohort
from myoflow.synth.signal import ArtefactRates

NATIVE = IngestSettings(spacing_mm=None)
"""Conversion at the synthetic data's own spacing: fast, and as good for these checks."""


def members(dicom: Path) -> pd.DataFrame:
    return pd.DataFrame({"participant_id": ["P1"], "shard": ["r1-0000"], "dicom_path": [dicom]})


def convert(dicom: Path, out: Path, settings: IngestSettings = NATIVE) -> list[str]:
    inventory = pd.DataFrame({"participant_id": ["P1"], "status": ["ok"], "reason": [""]})
    lines: list[str] = []
    convert_shard(members(dicom), out, inventory, settings, log=lines.append)
    return progress_outcomes(lines)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path]:
    """One small UK Biobank participant: its DICOM folder and its converted folder P1."""
    out = tmp_path_factory.mktemp("cohort")
    none = ArtefactRates(swap=0, partial_swap=0, missing_station=0, missing_channel=0)
    generate_cohort(
        CohortSpec(out=out, participants=1, protocol="ukbb", seed=5, size="small", rates=none)
    )
    dicom = out / "dicom" / "ukbb000001"
    participants = tmp_path_factory.mktemp("participants")
    assert convert(dicom, participants) == ["P1: ok"]
    return dicom, participants / "P1"


@pytest.fixture
def participant(converted, tmp_path) -> tuple[Path, ParticipantFiles, dict, dict]:
    """A copy of the converted participant (its DICOM, files, channel bytes and times)."""
    dicom, folder = converted
    files = ParticipantFiles(shutil.copytree(folder, tmp_path / "P1", copy_function=shutil.copy2))
    data = {c: files.channel(c).read_bytes() for c in CHANNELS}
    times = {c: files.channel(c).stat().st_mtime_ns for c in CHANNELS}
    return dicom, files, data, times


def test_reading_a_removed_channel_makes_every_removed_one_again_as_it_was(participant):
    dicom, files, data, times = participant
    remove_channels(files, keep=())
    with_source = ParticipantFiles(files.root, DicomChannelSource(dicom, NATIVE))
    channels, _ = read_channels(with_source, ("water",), "dixon_unreadable")
    assert channels["water"].ndim == 3
    for name in CHANNELS:  # one conversion restores all four
        assert files.channel(name).read_bytes() == data[name], name
        assert files.channel(name).stat().st_mtime_ns == times[name], name


def test_nothing_is_converted_when_the_channels_read_are_there(participant):
    dicom, files, _, _ = participant
    remove_channels(files, keep=("water", "fat"))
    source = DicomChannelSource(dicom.parent / "not-there", NATIVE)  # would fail if used
    read_channels(ParticipantFiles(files.root, source), ("water", "fat"), "dixon_unreadable")
    assert not files.channel("in").exists()


def test_without_a_source_a_removed_channel_is_unreadable_as_before(participant):
    _, files, _, _ = participant
    remove_channels(files, keep=())
    with pytest.raises(ParticipantExcluded) as excluded:
        read_channels(files, ("water",), "dixon_unreadable")
    assert excluded.value.reason == "dixon_unreadable"


def test_a_vanished_dicom_excludes_with_a_reason(converted, tmp_path):
    dicom = shutil.copytree(converted[0], tmp_path / "dicom")
    assert convert(dicom, tmp_path / "participants") == ["P1: ok"]
    files = ParticipantFiles(tmp_path / "participants" / "P1")
    remove_channels(files, keep=())
    shutil.rmtree(dicom)
    source = DicomChannelSource(dicom, NATIVE)
    with pytest.raises(ParticipantExcluded) as excluded:
        read_channels(ParticipantFiles(files.root, source), ("water",), "inputs_unreadable")
    assert excluded.value.reason == NOT_REGENERABLE
    assert "no longer exists" in excluded.value.detail


def test_other_ingest_settings_exclude_instead_of_mixing_conversions(participant):
    dicom, files, _, _ = participant
    remove_channels(files, keep=())
    source = DicomChannelSource(dicom, IngestSettings())  # the UK Biobank grid, not native
    with pytest.raises(ParticipantExcluded) as excluded:
        read_channels(ParticipantFiles(files.root, source), ("fat",), "dixon_unreadable")
    assert excluded.value.reason == NOT_REGENERABLE
    assert "another conversion" in excluded.value.detail
    assert not files.channel("fat").exists()


def test_channel_source_needs_settings_and_a_dicom_path():
    row = next(members(Path("/data/P1")).itertuples(index=False))
    assert channel_source(row, NATIVE) == DicomChannelSource(Path("/data/P1"), NATIVE)
    assert channel_source(row, None) is None
    bare = next(pd.DataFrame({"participant_id": ["P1"]}).itertuples(index=False))
    assert channel_source(bare, NATIVE) is None


def test_conversion_and_landmarks_stay_current_while_the_channels_are_removed(
    participant, converted
):
    dicom, files, _, _ = participant
    participants = files.root.parent
    convert_table = convert(dicom, participants)
    assert convert_table == ["P1: complete, skipped"]
    table = pd.DataFrame({"participant_id": ["P1"], "status": ["ok"], "reason": [""]})
    lines: list[str] = []
    landmarks_shard(members(dicom), participants, table, log=lines.append, ingest=NATIVE)
    assert progress_outcomes(lines)[0].startswith("P1: ok")
    remove_channels(files, keep=())
    assert convert(dicom, participants) == ["P1: complete, skipped"]
    lines.clear()
    landmarks_shard(members(dicom), participants, table, log=lines.append, ingest=NATIVE)
    assert progress_outcomes(lines) == ["P1: current, skipped"]
    assert not files.channel("water").exists()  # skipped without making them again
    # A conversion with other settings converts again and forgets the removal.
    assert convert(dicom, participants, IngestSettings()) == ["P1: ok"]
    assert all(files.channel(c).is_file() for c in CHANNELS)
    assert not files.removed.exists()
