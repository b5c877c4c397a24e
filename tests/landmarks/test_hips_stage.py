"""The landmarks stage: hips of converted synthetic participants, exclusions, reruns, rule."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dicom_helpers import write_sheet
from test_convert import NATIVE, NO_ARTEFACTS
from test_workflow import check, copy_workflow, job_counts, snakemake

from myoflow.cli import main
from myoflow.core.io import read_tsv, write_tsv
from myoflow.ingest import convert as conv
from myoflow.landmarks import stage as hips
from myoflow.landmarks.record import read_landmarks
from myoflow.landmarks.supplied import COORDINATE_COLUMNS as SUPPLIED_COLUMNS
from myoflow.landmarks.supplied import SuppliedLandmarksError, read_supplied_landmarks
from myoflow.synth.cohort import CohortSpec, generate_cohort

IDS = ["ukbb000001", "ukbb000002", "ukbb000003"]
"""Two synthetic participants and a copy of the second's stitched images (to break)."""
GONE = "zz_gone"  # sorts last: one shard of four


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Two small UK Biobank participants without artefacts."""
    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(
        CohortSpec(out=out, participants=2, protocol="ukbb", seed=21, size="small",
                   rates=NO_ARTEFACTS)
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def converted(cohort, tmp_path_factory) -> Path:
    """The cohort converted at native spacing (the third participant a copy of the second),
    plus a participant the inventory excluded; a sheet of the four and the shard's
    conversion table."""
    root = tmp_path_factory.mktemp("converted")
    dicom = [cohort / "dicom" / pid for pid in IDS[:2]] + [cohort / "dicom" / IDS[1]]
    rows = [(pid, str(path), "r1") for pid, path in zip(IDS, dicom, strict=True)]
    write_sheet(root / "participants.tsv", [*rows, (GONE, "dicom/gone", "r1")])
    members = pd.DataFrame(
        {
            "participant_id": [*IDS[:2], GONE],
            "shard": ["r1-0000"] * 3,
            "dicom_path": [*dicom[:2], root / "dicom" / "gone"],
        }
    )
    inventory = pd.DataFrame(
        {
            "participant_id": members["participant_id"],
            "status": ["ok", "ok", "excluded"],
            "reason": ["", "", "dicom_missing"],
        }
    )
    table = conv.convert_shard(members, root / "participants", inventory, NATIVE, log=print)
    shutil.copytree(root / "participants" / IDS[1], root / "participants" / IDS[2])
    table = pd.concat([table, table.iloc[[1]].assign(participant_id=IDS[2])])
    assert list(table["status"]) == ["ok", "ok", "excluded", "ok"]
    write_tsv(root / "convert.tsv", table)
    return root


def run_landmarks(root: Path, capsys) -> tuple[pd.DataFrame, list[str]]:
    argv = ["landmarks", "--sheet", str(root / "participants.tsv"), "--shard", "r1-0000",
            "--shard-size", "4", "--convert", str(root / "convert.tsv"),
            "--participants-dir", str(root / "participants"),
            "--out", str(root / "landmarks.tsv")]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    return read_tsv(root / "landmarks.tsv").set_index("participant_id"), capsys.readouterr().out


def test_hips_found_broken_water_excluded_and_reruns_skip_current(
    converted,
    cohort,
    tmp_path,
    capsys,  # noqa: F811
):
    root = tmp_path / "stage"
    shutil.copytree(converted, root)
    participants = root / "participants"
    water = participants / IDS[2] / "dixon" / "water.nii.gz"
    water.write_bytes(water.read_bytes()[: water.stat().st_size // 2])  # a cut transfer
    stale = participants / GONE / "landmarks.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")  # from a run before the inventory excluded it

    table, log = run_landmarks(root, capsys)
    assert list(table.columns) == hips.SHARD_COLUMNS[1:]
    truth = pd.read_csv(cohort / "truth.tsv", sep="\t").set_index("participant_id")
    for pid in IDS[:2]:
        assert table.loc[pid, "status"] == "ok"
        found = read_landmarks(participants / pid / "landmarks.json")
        for side, point in (("left", found.left_lps_mm), ("right", found.right_lps_mm)):
            expected = [truth.loc[pid, f"hip_{side}_{a}_mm"] for a in "xyz"]
            assert np.linalg.norm(point - expected) < 8.0, (pid, side)  # issue 4's bound
            np.testing.assert_allclose(
                [table.loc[pid, f"hip_{side}_{a}_mm"] for a in "xyz"], point, rtol=1e-12
            )
        assert table.loc[pid, "inter_hip_mm"] == pytest.approx(found.inter_hip_mm)
    broken = table.loc[IDS[2]]
    assert (broken["status"], broken["stage"], broken["reason"]) == (
        "excluded",
        "landmarks",
        "dixon_unreadable",
    )
    assert "dixon/water.nii.gz" in broken["detail"]
    assert np.isnan(broken["hip_left_x_mm"])
    record = json.loads((participants / IDS[2] / "exclusion.json").read_text())
    assert (record["stage"], record["reason"]) == ("landmarks", "dixon_unreadable")
    assert not (participants / IDS[2] / "landmarks.json").exists()
    gone = table.loc[GONE]
    assert (gone["status"], gone["stage"], gone["reason"]) == (
        "excluded",
        "inventory",
        "dicom_missing",
    )
    assert not stale.exists()
    assert f"{IDS[2]}: excluded, dixon_unreadable" in log

    # A rerun skips current participants; newer water redoes one.
    marker = participants / IDS[0] / "landmarks.json"
    first = marker.stat().st_mtime_ns
    again, log = run_landmarks(root, capsys)
    assert f"{IDS[0]}: current, skipped" in log and f"{IDS[1]}: current, skipped" in log
    assert marker.stat().st_mtime_ns == first
    pd.testing.assert_frame_equal(again, table)
    later = first + 10**9
    os.utime(participants / IDS[0] / "dixon" / "water.nii.gz", ns=(later, later))
    _, log = run_landmarks(root, capsys)
    assert f"{IDS[0]}: ok, confidence" in log and f"{IDS[1]}: current, skipped" in log
    assert marker.stat().st_mtime_ns > first


def test_a_convert_table_without_a_member_stops_the_shard_before_any_work(
    converted, tmp_path, capsys
):
    root = tmp_path / "stage"
    shutil.copytree(converted, root)
    table = read_tsv(root / "convert.tsv")
    write_tsv(root / "convert.tsv", table[table["participant_id"] != IDS[1]])
    argv = ["landmarks", "--sheet", str(root / "participants.tsv"), "--shard", "r1-0000",
            "--shard-size", "4", "--convert", str(root / "convert.tsv"),
            "--participants-dir", str(root / "participants"),
            "--out", str(root / "landmarks.tsv")]  # fmt: skip
    assert main(argv) == 2
    assert f"participant {IDS[1]} is not in the shard's conversion table" in (
        capsys.readouterr().err
    )
    assert not (root / "landmarks.tsv").exists()
    assert not (root / "participants" / IDS[0] / "landmarks.json").exists()


@pytest.mark.workflow
def test_dry_run_plans_one_landmarks_job_per_shard(cohort, tmp_path):
    copy_workflow(tmp_path)
    rows = [(pid, str(cohort / "dicom" / IDS[1]), "r1") for pid in IDS]
    write_sheet(tmp_path / "data" / "participants.tsv", rows)
    config = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    config |= {"participants": "data/participants.tsv", "shards": {"size": 2}}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    targets = [f"results/shards/r1-000{n}/landmarks.tsv" for n in (0, 1)]
    output = check(snakemake("-n", "-p", "--profile", "config/profiles/local", *targets,
                             cwd=tmp_path))  # fmt: skip
    assert job_counts(output) == {"inventory_shard": 2, "convert_shard": 2, "landmarks_shard": 2}
    assert "myoflow landmarks --sheet data/participants.tsv --shard r1-0001" in output
    assert "--convert results/shards/r1-0001/convert.tsv" in output


def test_an_unexpected_error_in_one_participant_does_not_fail_the_shard_job(
    converted, tmp_path, capsys, monkeypatch
):
    """The shard runner's guarantee, through the command the rule runs: a bug hit by one
    participant excludes it as internal_error, the others are found, the job exits 0."""
    root = tmp_path / "stage"
    shutil.copytree(converted, root)
    real = hips.detect_hips

    def detect_with_a_bug(water, fat, affine):
        if (root / "participants" / IDS[0] / "crash").exists():
            (root / "participants" / IDS[0] / "crash").unlink()
            raise IndexError("index 7 is out of bounds for axis 0 with size 7")
        return real(water, fat, affine)

    (root / "participants" / IDS[0] / "crash").write_text("")
    monkeypatch.setattr(hips, "detect_hips", detect_with_a_bug)
    table, log = run_landmarks(root, capsys)  # asserts exit status 0

    crashed = table.loc[IDS[0]]
    assert (crashed["status"], crashed["stage"], crashed["reason"]) == (
        "excluded",
        "landmarks",
        "internal_error",
    )
    assert crashed["detail"] == "IndexError: index 7 is out of bounds for axis 0 with size 7"
    assert list(table.loc[[IDS[1], IDS[2]], "status"]) == ["ok", "ok"]
    assert "Traceback (most recent call last)" in log
    assert (
        json.loads((root / "participants" / IDS[0] / "exclusion.json").read_text())["reason"]
        == "internal_error"
    )

    table, _ = run_landmarks(root, capsys)  # the bug is gone: a rerun finds the hips
    assert table.loc[IDS[0], "status"] == "ok"
    assert not (root / "participants" / IDS[0] / "exclusion.json").exists()


def write_supplied(path: Path, rows: list[list[str]]) -> Path:
    header = ["participant_id", *SUPPLIED_COLUMNS, "note"]
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    "row, message",
    [
        (
            ["ukbb000009", "1", "2", "3", "4", "5", "6", ""],
            "participant 'ukbb000009' is not",
        ),
        (
            [IDS[1], "1", "2", "3", "4", "five", "6", ""],
            "(ukbb000002): hip_right_y_mm 'five'",
        ),
        ([IDS[1], "1", "2", "3", "", "", "", ""], "line 3 (ukbb000002): the right hip has no"),
        (
            [IDS[0], "1", "2", "3", "4", "5", "6", ""],
            "'ukbb000001' is listed twice",
        ),
    ],
)
def test_a_bad_supplied_row_is_named(tmp_path, row, message):
    good = [IDS[0], "90", "30", "-500", "-90", "30", "-500", "by hand"]
    path = write_supplied(tmp_path / "supplied.tsv", [good, row])
    with pytest.raises(SuppliedLandmarksError) as caught:
        read_supplied_landmarks(path, IDS)
    assert str(caught.value).startswith(f"supplied landmarks {path}, line 3")
    assert message in str(caught.value)


def test_supplied_landmarks_replace_detection_and_only_changes_are_redone(
    converted, tmp_path, capsys
):
    root = tmp_path / "stage"
    shutil.copytree(converted, root)
    supplied = write_supplied(
        root / "supplied.tsv", [[IDS[1], "91.5", "20", "-480", "-88", "21", "-481", ""]]
    )
    argv = ["landmarks", "--sheet", str(root / "participants.tsv"), "--shard", "r1-0000",
            "--shard-size", "4", "--convert", str(root / "convert.tsv"),
            "--participants-dir", str(root / "participants"),
            "--out", str(root / "landmarks.tsv"), "--supplied", str(supplied)]  # fmt: skip
    assert main(argv) == 0
    log = capsys.readouterr().out
    table = read_tsv(root / "landmarks.tsv").set_index("participant_id")
    assert f"{IDS[1]}: ok, supplied" in log and f"{IDS[0]}: ok, confidence" in log
    assert list(table.loc[IDS[:3], "hip_source"]) == ["detected", "supplied", "detected"]
    record = json.loads((root / "participants" / IDS[1] / "landmarks.json").read_text())
    assert record["source"] == "supplied" and record["hip_left_x_mm"] == 91.5
    assert record["head_radius_left_mm"] is None
    assert read_landmarks(root / "participants" / IDS[1] / "landmarks.json").source == "supplied"

    # Another supplied position redoes that participant only; the others stay current.
    write_supplied(supplied, [[IDS[1], "92.5", "20", "-480", "-88", "21", "-481", ""]])
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert f"{IDS[1]}: ok, supplied" in log
    assert f"{IDS[0]}: current, skipped" in log and f"{IDS[2]}: current, skipped" in log
    assert read_tsv(root / "landmarks.tsv").set_index("participant_id").loc[
        IDS[1], "hip_left_x_mm"
    ] == pytest.approx(92.5)

    # Without the table it is detected again; a threshold above any confidence excludes.
    assert main([*argv[:-2], "--min-confidence", "1.01"]) == 0
    table = read_tsv(root / "landmarks.tsv").set_index("participant_id")
    assert list(table.loc[IDS[:3], "reason"]) == ["landmarks_low_confidence"] * 3
    assert "landmarks.min_confidence 1.01" in table.loc[IDS[1], "detail"]
