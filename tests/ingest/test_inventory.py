"""DICOM inventory of tiny folders and zips with known contents."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from dicom_helpers import (
    SERIES,
    make_dicom_folder,
    progress_outcomes,
    write_sheet,
    write_slice,
    zip_folder,
)

from myoflow.cli import main
from myoflow.core.io import read_tsv
from myoflow.ingest import inventory as inv


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_dicom_folder(tmp_path / "P001")


def test_folder_inventory(folder):
    result = inv.inventory_participant(folder)
    table = result.series
    assert list(table.columns) == inv.SERIES_COLUMNS
    assert len(table) == 2
    water = table.set_index("series_description").loc["Dixon_BH_17s_W"]
    assert water["series_hash"] == hashlib.sha256(SERIES[0][0].encode()).hexdigest()[:16]
    assert water["modality"] == "MR"
    assert water["image_type"] == "DERIVED\\PRIMARY\\DIXON\\WATER"
    assert water["n_files"] == 3
    assert (water["z_min_mm"], water["z_max_mm"]) == (-40.0, -34.0)
    assert (water["rows"], water["columns"]) == ("5", "7")
    assert water["pixel_spacing_mm"] == "2.23214\\2.5"
    assert water["slice_thickness_mm"] == "3"
    fat = table.set_index("series_description").loc["Dixon_BH_17s_F"]
    assert (fat["n_files"], fat["z_max_mm"]) == (2, -37.0)
    assert result.n_files == 5
    assert result.source == "folder"
    assert [(f.file, f.reason) for f in result.ignored] == [
        ("ct/ct0001.dcm", "not_mr"),
        ("notes.txt", "not_dicom"),
    ]


def test_inventory_holds_no_identifiers(folder, tmp_path):
    files = inv.ParticipantFiles(tmp_path / "out" / "P001")
    inv.inventory_shard(members([("P001", folder)]), tmp_path / "out")
    written = files.series_table.read_text() + files.summary.read_text()
    for uid, *_ in SERIES:
        assert uid not in written
    assert "SECRET-PATIENT-ID" not in written


def test_zip_gives_the_same_inventory(folder, tmp_path):
    archive = zip_folder(folder, tmp_path / "P001.zip")
    from_zip = inv.inventory_participant(archive)
    pd.testing.assert_frame_equal(from_zip.series, inv.inventory_participant(folder).series)
    assert from_zip.source == "zip"
    assert [f.file for f in from_zip.ignored] == ["ct/ct0001.dcm", "notes.txt"]


def test_missing_folder_is_an_exclusion(tmp_path):
    with pytest.raises(inv.ParticipantExcluded) as info:
        inv.inventory_participant(tmp_path / "nowhere")
    assert info.value.reason == "dicom_missing"
    assert "nowhere" in info.value.detail


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_zip_is_an_exclusion(folder, tmp_path, damage):
    archive = tmp_path / "P001.zip"
    if damage == "garbage":
        archive.write_bytes(b"PK\x03\x04 this is not really a zip" * 10)
    else:
        data = zip_folder(folder, tmp_path / "whole.zip").read_bytes()
        archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(inv.ParticipantExcluded) as info:
        inv.inventory_participant(archive)
    assert info.value.reason == "zip_corrupt"


def test_member_with_bad_crc_is_an_exclusion(folder, tmp_path):
    archive = tmp_path / "P001.zip"
    data = bytearray(zip_folder(folder, tmp_path / "whole.zip").read_bytes())
    header = data.index(b"PK\x03\x04")  # first local file: flip one byte of its data
    name_length = int.from_bytes(data[header + 26 : header + 28], "little")
    extra_length = int.from_bytes(data[header + 28 : header + 30], "little")
    data[header + 30 + name_length + extra_length + 5] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(inv.ParticipantExcluded) as info:
        inv.inventory_participant(archive)
    assert info.value.reason == "zip_corrupt"


def test_no_mr_series_is_an_exclusion(tmp_path):
    only_ct = tmp_path / "P001"
    write_slice(
        only_ct / "ct.dcm", series_uid="1.2.3", instance=1, description="CT",
        image_type=["ORIGINAL"], z_mm=0.0, modality="CT",
    )  # fmt: skip
    (only_ct / "readme.txt").write_text("hello")
    with pytest.raises(inv.ParticipantExcluded) as info:
        inv.inventory_participant(only_ct)
    assert info.value.reason == "no_mr_series"
    assert "1 not_dicom, 1 not_mr" in info.value.detail
    (tmp_path / "empty").mkdir()
    with pytest.raises(inv.ParticipantExcluded, match="no_mr_series: .*no files"):
        inv.inventory_participant(tmp_path / "empty")


def test_truncated_dicom_files_are_ignored(folder):
    # pydicom itself reads these without error, the first with a cut-off series UID.
    cut_in_header = folder / "series1" / "im0001.dcm"
    cut_in_header.write_bytes(cut_in_header.read_bytes()[:560])
    cut_in_pixels = folder / "series1" / "im0002.dcm"
    cut_in_pixels.write_bytes(cut_in_pixels.read_bytes()[:-1])
    result = inv.inventory_participant(folder)
    reasons = {f.file: f.reason for f in result.ignored}
    assert reasons["series1/im0001.dcm"] == "no_pixel_data"
    assert reasons["series1/im0002.dcm"] == "truncated"
    assert result.n_files == 3
    assert len(result.series) == 2


def members(rows: list[tuple[str, Path]], shard: str = "r1-0000") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "participant_id": [pid for pid, _ in rows],
            "shard": shard,
            "dicom_path": [str(path) for _, path in rows],
        }
    )


def test_shard_records_ok_and_excluded_participants(folder, tmp_path):
    corrupt = tmp_path / "P003.zip"
    corrupt.write_bytes(b"not a zip")
    out = tmp_path / "participants"
    table = inv.inventory_shard(
        members([("P001", folder), ("P002", tmp_path / "P002"), ("P003", corrupt)]), out
    )
    assert list(table.columns) == inv.SHARD_COLUMNS
    assert table.to_dict("records") == [
        {"participant_id": "P001", "shard": "r1-0000", "status": "ok", "reason": "",
         "n_series": 2, "n_files": 5, "n_ignored": 2},
        {"participant_id": "P002", "shard": "r1-0000", "status": "excluded",
         "reason": "dicom_missing", "n_series": 0, "n_files": 0, "n_ignored": 0},
        {"participant_id": "P003", "shard": "r1-0000", "status": "excluded",
         "reason": "zip_corrupt", "n_series": 0, "n_files": 0, "n_ignored": 0},
    ]  # fmt: skip
    assert len(read_tsv(out / "P001" / "dicom" / "inventory.tsv")) == 2
    summary = json.loads((out / "P001" / "dicom" / "inventory.json").read_text())
    assert summary["ignored"][1] == {"file": "notes.txt", "reason": "not_dicom",
                                     "detail": "no DICM preamble"}  # fmt: skip
    assert not (out / "P001" / "exclusion.json").exists()
    record = json.loads((out / "P002" / "exclusion.json").read_text())
    assert set(record) == {"participant_id", "stage", "reason", "detail"}
    assert (record["participant_id"], record["stage"], record["reason"]) == (
        "P002", "inventory", "dicom_missing")  # fmt: skip
    assert not (out / "P002" / "dicom").exists()


def test_rerun_skips_complete_participants_and_redoes_changed_ones(folder, tmp_path):
    out = tmp_path / "participants"
    files = inv.ParticipantFiles(out / "P001")
    inv.inventory_shard(members([("P001", folder)]), out)
    past = folder.stat().st_mtime_ns - 10**9
    os.utime(folder, ns=(past, past))
    first = files.summary.stat().st_mtime_ns
    lines = []
    inv.inventory_shard(members([("P001", folder)]), out, log=lines.append)
    assert progress_outcomes(lines) == ["P001: complete, skipped"]
    assert files.summary.stat().st_mtime_ns == first

    write_slice(  # a new file makes the folder newer than the summary
        folder / "late.dcm", series_uid="1.2.9", instance=1, description="late",
        image_type=["ORIGINAL"], z_mm=100.0,
    )  # fmt: skip
    lines.clear()
    table = inv.inventory_shard(members([("P001", folder)]), out, log=lines.append)
    assert progress_outcomes(lines) == ["P001: ok, 3 series"]
    assert table.loc[0, "n_series"] == 3


def test_rerun_redoes_participants_of_another_inventory_version(folder, tmp_path, monkeypatch):
    out = tmp_path / "participants"
    inv.inventory_shard(members([("P001", folder)]), out)
    monkeypatch.setattr(inv, "INVENTORY_VERSION", inv.INVENTORY_VERSION + 1)
    lines = []
    inv.inventory_shard(members([("P001", folder)]), out, log=lines.append)
    assert progress_outcomes(lines) == ["P001: ok, 2 series"]


def test_status_change_removes_the_stale_outcome(folder, tmp_path):
    out = tmp_path / "participants"
    files = inv.ParticipantFiles(out / "P001")
    moved = tmp_path / "moved"
    folder.rename(moved)
    inv.inventory_shard(members([("P001", folder)]), out)
    assert files.exclusion.exists() and not files.summary.exists()
    moved.rename(folder)
    inv.inventory_shard(members([("P001", folder)]), out)
    assert files.summary.exists() and not files.exclusion.exists()
    folder.rename(moved)
    inv.inventory_shard(members([("P001", folder)]), out)
    assert files.exclusion.exists()
    assert not files.summary.exists() and not files.series_table.exists()


def test_exclusion_of_a_later_stage_is_kept(folder, tmp_path):
    out = tmp_path / "participants"
    later = out / "P001" / "exclusion.json"
    later.parent.mkdir(parents=True)
    later.write_text(json.dumps({"participant_id": "P001", "stage": "segment"}))
    inv.inventory_shard(members([("P001", folder)]), out)
    assert json.loads(later.read_text())["stage"] == "segment"


def test_cli_writes_the_shard_table(tmp_path, capsys):
    make_dicom_folder(tmp_path / "data" / "A1")
    zip_folder(make_dicom_folder(tmp_path / "B"), tmp_path / "data" / "B1.zip")
    sheet = write_sheet(
        tmp_path / "data" / "participants.tsv",
        [("B1", "B1.zip", "r1"), ("A1", "A1", "r1"), ("C1", "C1", "r1"), ("D1", "D1", "r2")],
    )
    out = tmp_path / "results" / "shards" / "r1-0000" / "inventory.tsv"
    participants = tmp_path / "results" / "participants"
    argv = ["inventory", "--sheet", str(sheet), "--shard", "r1-0000", "--shard-size", "2",
            "--participants-dir", str(participants), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = read_tsv(out)
    assert list(table["participant_id"]) == ["A1", "B1"]
    assert list(table["status"]) == ["ok", "ok"]
    assert "2 ok, 0 excluded" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("sheet_text", "shard", "message"),
    [
        ("participant_id\tdicom\trelease\n../x\td\tr1\n", "r1-0000", "participant_id '../x'"),
        ("participant_id\tdicom\trelease\nP1\td\tr1\n", "r9-0000", "'r9-0000' has no participants"),
        ("participant_id\trelease\nP1\tr1\n", "r1-0000", "lacks column(s) dicom"),
    ],
)
def test_cli_reports_bad_input_without_traceback(tmp_path, capsys, sheet_text, shard, message):
    sheet = tmp_path / "participants.tsv"
    sheet.write_text(sheet_text)
    argv = ["inventory", "--sheet", str(sheet), "--shard", shard, "--shard-size", "2",
            "--participants-dir", str(tmp_path), "--out", str(tmp_path / "t.tsv")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("myoflow: error: ")
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "t.tsv").exists()
