"""The measure stage on converted synthetic participants with their true labels: metrics,
swap flags, overlays, the three shard tables, reruns and the rule."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from dicom_helpers import write_sheet
from test_convert import NATIVE, NO_ARTEFACTS
from test_workflow import check, copy_workflow, job_counts, snakemake

from myoflow.cli import main
from myoflow.cohort.stats.cohort import build_analysis_table
from myoflow.core.io import read_labels, read_tsv, save_nifti, write_json, write_tsv
from myoflow.core.labels import LABELS
from myoflow.ingest import convert as conv
from myoflow.landmarks.record import HipLandmarks, write_landmarks
from myoflow.measure.metrics import participant_metrics
from myoflow.measure.overlay import MAX_BYTES
from myoflow.measure.qc import QcSettings
from myoflow.measure.stage import QC_COLUMNS, SHARD_COLUMNS, measure_shard, metrics_columns
from myoflow.synth.cohort import CohortSpec, generate_cohort
from myoflow.synth.signal import ArtefactRates

CLEAN, SWAPPED, GONE = "ukbb000001", "ukbb000002", "zz_gone"
ONLY_SWAP = ArtefactRates(swap=1, partial_swap=0, missing_station=0, missing_channel=0)
SEED = 8


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Two small participants converted at native spacing, one with a whole-station
    fat-water swap (``myoflow synth --artefacts swap=1``), each with its true labels as
    segmentation and its true hips as landmarks; a third the segmentation excluded.
    Holds the sheet, phenotypes, truth and the landmarks and segmentation shard tables."""
    root = tmp_path_factory.mktemp("measure")
    for pid, first, rates in ((CLEAN, 1, NO_ARTEFACTS), (SWAPPED, 2, ONLY_SWAP)):
        spec = CohortSpec(out=root / pid, participants=1, protocol="ukbb", seed=SEED,
                          size="small", rates=rates, first_index=first)  # fmt: skip
        generate_cohort(spec)
    dicom = {pid: root / pid / "dicom" / pid for pid in (CLEAN, SWAPPED)}
    write_sheet(
        root / "participants.tsv",
        [(pid, str(path), "r1") for pid, path in dicom.items()] + [(GONE, "dicom/gone", "r1")],
    )
    for name in ("phenotypes", "truth"):
        tables = [pd.read_csv(root / pid / f"{name}.tsv", sep="\t") for pid in dicom]
        pd.concat(tables).to_csv(root / f"{name}.tsv", sep="\t", index=False)
    members = pd.DataFrame(
        {"participant_id": list(dicom), "shard": "r1-0000", "dicom_path": list(dicom.values())}
    )
    inventory = members[["participant_id"]].assign(status="ok", reason="")
    converted = conv.convert_shard(members, root / "participants", inventory, NATIVE, log=print)
    assert list(converted["status"]) == ["ok", "ok"]
    truth = pd.read_csv(root / "truth.tsv", sep="\t").set_index("participant_id")
    for pid in dicom:
        segmented_as_truth(root / pid / "truth" / pid, root / "participants" / pid)
        left, right = (
            np.array([truth.loc[pid, f"hip_{side}_{a}_mm"] for a in "xyz"])
            for side in ("left", "right")
        )
        landmarks = HipLandmarks(left, right, 0.5, (20.0, 20.0))
        write_landmarks(root / "participants" / pid / "landmarks.json", pid, landmarks)
    status = pd.DataFrame(
        {"participant_id": [CLEAN, SWAPPED, GONE], "shard": "r1-0000", "status": "ok",
         "stage": "", "reason": "", "detail": ""}
    )  # fmt: skip
    write_tsv(root / "landmarks.tsv", status)
    segmented = status.copy()
    segmented.loc[2, ["status", "stage", "reason", "detail"]] = [
        "excluded", "segment", "no_muscle_found", "no voxel labelled"
    ]  # fmt: skip
    write_tsv(root / "segment.tsv", segmented)
    return root


def segmented_as_truth(truth: Path, participant: Path) -> None:
    """The true labels as ``seg/labels.nii.gz`` on the Dixon grid, and
    ``seg/segmentation.json`` with a crop box per side 8 voxels around its muscles."""
    water = nib.load(participant / "dixon" / "water.nii.gz")
    labels = np.asarray(nib.load(truth / "labels.nii.gz").dataobj).astype(np.int16)
    assert labels.shape == water.shape
    save_nifti(participant / "seg" / "labels.nii.gz", labels, water.affine)
    boxes = {}
    for side in ("left", "right"):
        index = np.argwhere(np.isin(labels, [v for n, v in LABELS.items() if side in n]))
        low = np.maximum(index.min(axis=0) - 8, 0)
        high = np.minimum(index.max(axis=0) + 9, labels.shape)
        boxes[side] = [[int(a), int(b)] for a, b in zip(low, high, strict=True)]
    write_json(
        participant / "seg" / "segmentation.json",
        {"crop_boxes": boxes, "label_values": dict(LABELS)},
    )


def measure_cli(root: Path, capsys, qc: dict | None = None) -> str:
    argv = ["measure", "--sheet", str(root / "participants.tsv"), "--shard", "r1-0000",
            "--shard-size", "3", "--landmarks", str(root / "landmarks.tsv"),
            "--segment", str(root / "segment.tsv"),
            "--participants-dir", str(root / "participants"),
            "--metrics-table", str(root / "metrics.tsv"), "--qc-table", str(root / "qc.tsv"),
            "--out", str(root / "measure.tsv")]  # fmt: skip
    if qc is not None:
        argv += ["--qc", json.dumps(qc)]
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def swapped_station(root: Path) -> int:
    artefacts = pd.read_csv(root / "truth.tsv", sep="\t").set_index("participant_id")
    kind, _, station = artefacts.loc[SWAPPED, "artefacts"].partition(":")
    assert kind == "swap"
    return int(station)


def test_measure_writes_metrics_flags_overlays_and_the_shard_tables(inputs, capsys):
    participants = inputs / "participants"
    stale = participants / GONE / "metrics.json"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("{}")  # from a run before the segmentation excluded it
    measure_cli(inputs, capsys)

    # metrics.json is participant_metrics of the same inputs, with the hips and crop boxes.
    part = participants / CLEAN
    labels, affine = read_labels(part / "seg" / "labels.nii.gz")
    water, fat = (
        nib.load(part / "dixon" / f"{c}.nii.gz").get_fdata(dtype=np.float32)
        for c in ("water", "fat")
    )
    landmarks = json.loads((part / "landmarks.json").read_text())
    hips = {s: [landmarks[f"hip_{s}_{a}_mm"] for a in "xyz"] for s in ("left", "right")}
    boxes = json.loads((part / "seg" / "segmentation.json").read_text())["crop_boxes"]
    expected = participant_metrics(
        labels, affine, water, fat, hips_lps_mm=hips, crop_boxes=list(boxes.values())
    )
    written = json.loads((part / "metrics.json").read_text())
    assert written == json.loads(json.dumps(expected))
    assert written["imi_ml_m2"] is None  # no height here: the gather computes it
    assert written["touches_crop_psoas_major_left"] is False
    assert written["psoas_max_csa_z_left_above_hip_mm"] is not None

    # The shard tables: same columns in every shard, CSA profiles as JSON.
    status = read_tsv(inputs / "measure.tsv").set_index("participant_id")
    assert list(status.reset_index().columns) == SHARD_COLUMNS
    assert list(status["status"]) == ["ok", "ok", "excluded"]
    assert (status.loc[GONE, "stage"], status.loc[GONE, "reason"]) == ("segment", "no_muscle_found")
    assert not stale.exists()
    metrics_table = read_tsv(inputs / "metrics.tsv")
    assert list(metrics_table.columns) == metrics_columns()
    table = metrics_table.set_index("participant_id")
    assert list(table.index) == [CLEAN, SWAPPED]
    row = table.loc[CLEAN]
    assert row["vol_iliopsoas_total_ml"] == written["vol_iliopsoas_total_ml"]  # exact
    assert json.loads(row["psoas_csa_profile_left"]) == written["psoas_csa_profile_left"]
    assert np.isnan(row["imi_ml_m2"])

    # A planted swap fails QC, naming its station; the clean participant passes.
    station = swapped_station(inputs)
    qc = read_tsv(inputs / "qc.tsv").set_index("participant_id")
    assert list(qc.reset_index().columns) == QC_COLUMNS
    assert qc.loc[CLEAN, "qc_status"] == "pass", qc.loc[CLEAN, "qc_reason"]
    assert qc.loc[SWAPPED, "qc_status"] == "fail"
    assert qc.loc[SWAPPED, "qc_reason"].startswith(
        f"fat_water_swap_station_{station}: whole station swapped"
    )
    assert f"fat_water_swap_station_{station}" in json.loads(qc.loc[SWAPPED, "qc_flags"])
    flags = json.loads((participants / SWAPPED / "qc" / "flags.json").read_text())
    assert flags["status"] == "fail"
    assert [d["status"] for d in flags["swap_stations"]] == [
        "swap" if n == station else "ok" for n in range(1, 7)
    ]
    for pid in (CLEAN, SWAPPED):
        overlay = participants / pid / "qc" / "overlay.png"
        assert overlay.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 10_000 < overlay.stat().st_size < MAX_BYTES

    # The QC table is what the analysis table takes: the swap is excluded at stage qc.
    cohort = build_analysis_table(
        pd.read_csv(inputs / "participants.tsv", sep="\t"),
        pd.read_csv(inputs / "phenotypes.tsv", sep="\t"),
        metrics_table,
        qc=qc.reset_index(),
        exclusions=pd.DataFrame(
            {"participant_id": [GONE], "stage": ["segmentation"], "reason": ["no_muscle_found"]}
        ),
    )
    assert list(cohort.table["participant_id"]) == [CLEAN]
    excluded = cohort.exclusions.set_index("participant_id")
    assert (excluded.loc[SWAPPED, "stage"], excluded.loc[SWAPPED, "reason"]) == ("qc", "fail")
    assert excluded.loc[SWAPPED, "detail"].startswith(f"fat_water_swap_station_{station}")


def test_reruns_skip_current_participants_and_redo_only_flags_on_new_settings(
    inputs, tmp_path, capsys
):
    root = tmp_path / "copy"
    shutil.copytree(inputs, root)
    measure_cli(root, capsys)  # current already if the test above ran
    participants = root / "participants"
    metrics_json, flags_json = (participants / CLEAN / f for f in ("metrics.json", "qc/flags.json"))
    before = metrics_json.stat().st_mtime_ns, flags_json.stat().st_mtime_ns
    log = measure_cli(root, capsys)
    assert f"{CLEAN}: current, skipped (qc pass)" in log
    assert f"{SWAPPED}: current, skipped (qc fail, 1 flag)" in log
    assert (metrics_json.stat().st_mtime_ns, flags_json.stat().st_mtime_ns) == before
    tables = {name: (root / f"{name}.tsv").read_text() for name in ("metrics", "qc", "measure")}

    # Stricter settings: warnings now exclude, and every asymmetry warns.
    log = measure_cli(root, capsys, {"keep_warnings": False, "asymmetry_pct": 0.0})
    assert f"{CLEAN}: flags redone (qc fail" in log
    assert metrics_json.stat().st_mtime_ns == before[0]
    assert flags_json.stat().st_mtime_ns > before[1]
    qc = read_tsv(root / "qc.tsv").set_index("participant_id")
    assert qc.loc[CLEAN, "qc_status"] == "fail"
    assert "asymmetry_iliopsoas: iliopsoas right - left" in qc.loc[CLEAN, "qc_reason"]
    assert (root / "metrics.tsv").read_text() == tables["metrics"]

    # Back to the defaults: the tables are as they were. Newer labels: measured again.
    measure_cli(root, capsys)
    assert {name: (root / f"{name}.tsv").read_text() for name in tables} == tables
    later = flags_json.stat().st_mtime_ns + 10**9
    os.utime(participants / CLEAN / "seg" / "labels.nii.gz", ns=(later, later))
    log = measure_cli(root, capsys)
    assert f"{CLEAN}: measured (qc pass)" in log
    assert metrics_json.stat().st_mtime_ns > before[0]
    assert {name: (root / f"{name}.tsv").read_text() for name in tables} == tables


def test_unreadable_labels_exclude_the_participant_not_the_shard(inputs, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(inputs / "participants", root)
    labels = root / SWAPPED / "seg" / "labels.nii.gz"
    labels.write_bytes(labels.read_bytes()[:200])
    members = pd.DataFrame({"participant_id": [SWAPPED, GONE], "shard": "r1-0000"})
    tables = measure_shard(
        members,
        root,
        read_tsv(inputs / "landmarks.tsv"),
        read_tsv(inputs / "segment.tsv"),
        QcSettings(),
        log=print,
    )
    row = tables.status.set_index("participant_id").loc[SWAPPED]
    assert (row["status"], row["stage"], row["reason"]) == (
        "excluded",
        "metrics",
        "segmentation_unreadable",
    )
    assert "seg/labels.nii.gz" in row["detail"]
    record = json.loads((root / SWAPPED / "exclusion.json").read_text())
    assert (record["stage"], record["reason"]) == ("metrics", "segmentation_unreadable")
    assert not (root / SWAPPED / "qc" / "flags.json").exists()
    assert tables.metrics.empty and list(tables.metrics.columns) == metrics_columns()
    assert tables.qc.empty and list(tables.qc.columns) == QC_COLUMNS


@pytest.mark.workflow
def test_rule_runs_and_reruns_when_the_qc_settings_change(inputs, tmp_path):
    copy_workflow(tmp_path)
    (tmp_path / "data").mkdir()
    shutil.copy(inputs / "participants.tsv", tmp_path / "data" / "participants.tsv")
    shutil.copytree(inputs / "participants", tmp_path / "results" / "participants")
    shard = tmp_path / "results" / "shards" / "r1-0000"
    shard.mkdir(parents=True)
    for table in ("landmarks", "segment"):
        shutil.copy(inputs / f"{table}.tsv", shard / f"{table}.tsv")
    config_path = tmp_path / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config |= {"participants": "data/participants.tsv", "shards": {"size": 3}}
    config_path.write_text(yaml.safe_dump(config))
    # Only this stage: the earlier shard tables are given (--allowed-rules takes every
    # word after it, so it comes last).
    run = ["--profile", "config/profiles/local", "--allowed-rules", "measure_shard"]
    targets = [f"results/shards/r1-0000/{t}.tsv" for t in ("measure", "metrics", "qc")]
    output = check(snakemake(*targets, *run, cwd=tmp_path))
    assert job_counts(output) == {"measure_shard": 1}
    assert '--qc \'{"asymmetry_groups":["iliopsoas","gluteus"],' in output
    qc = read_tsv(tmp_path / targets[2]).set_index("participant_id")
    assert list(qc["qc_status"]) == ["pass", "fail"]
    assert "Nothing to be done" in check(snakemake("-n", *targets, *run, cwd=tmp_path))
    config["qc"]["severities"]["swap"] = "warn"
    config_path.write_text(yaml.safe_dump(config))
    output = check(snakemake("-n", *targets, *run, cwd=tmp_path))
    assert job_counts(output) == {"measure_shard": 1}
