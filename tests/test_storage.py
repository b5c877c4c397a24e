"""What a participant's folder keeps (config ``keep.stitched``, docs/storage.md), on real
workflow runs of a small synthetic UK Biobank cohort, and reruns after the stitched
channels were removed.

Two workflow folders share the module. ``removed`` runs with the default
(``keep.stitched: none``): first with the shipped model, then with a model whose card
changes its thresholds (a new model identity: every participant is segmented again, which
needs the removed channels), then with other QC settings, then with one participant's
DICOM gone. ``kept`` runs once with ``keep.stitched: all`` and the changed model from the
start: the reference the ``removed`` folder must equal after its rerun.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from test_reliability import prepare_workdir, run_snakemake, synthesise

from myoflow.core.io import read_tsv
from myoflow.core.kept_channels import folder_bytes
from myoflow.core.participant_files import CHANNELS

pytestmark = pytest.mark.workflow

PARTICIPANTS = 3
SEED = 8
TARGETS = ("results/shards/r1-0000/measure.tsv",)
"""One shard of three: the per-participant stages only (the cohort stages read none of the
files this is about)."""

FULL_SIZE_VOXELS = 224 * 174 * 370
"""Voxels of a full-size UK Biobank participant on the stitched grid (docs/storage.md)."""
BUDGET_FULL_SIZE_BYTES = 15e6
"""Issue 21's target per full-size participant; scaled by voxels for the small ones."""
FIXED_BYTES = 400_000
"""What does not scale with the grid: the overlay PNG (1,500 pixels wide, ~120-300 KB) and
the JSON records."""


def configure(workdir: Path, **changes) -> None:
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(config))


def changed_model(workdir: Path) -> str:
    """A copy of the shipped model whose card raises every threshold by 0.05: same weights,
    another model identity (rules/common.smk model_identity), other masks."""
    target = workdir / "models" / "changed"
    shutil.copytree(workdir / "resources" / "models" / "hips-cascade", target)
    card_path = target / "model_card.json"
    card = json.loads(card_path.read_text())
    card["config"]["thresholds"] = {
        label: round(value + 0.05, 4) for label, value in card["config"]["thresholds"].items()
    }
    card_path.write_text(json.dumps(card, indent=2))
    return str(target.relative_to(workdir))


def run_targets(workdir: Path) -> str:
    """Run the workflow up to :data:`TARGETS` (2 cores); its console output."""
    code, output = run_snakemake(workdir, *TARGETS, "--cores", "2", "--rerun-incomplete")
    assert code == 0, output[-6000:]
    return output


def participants_of(cohort: Path) -> list[str]:
    return read_tsv(cohort / "participants.tsv")["participant_id"].tolist()


def mtimes(workdir: Path, pattern: str) -> dict[str, int]:
    return {
        str(path.relative_to(workdir)): path.stat().st_mtime_ns
        for path in sorted(workdir.glob(pattern))
    }


def voxels(folder: Path) -> int:
    """Voxels of a participant's stitched grid (that of its label map)."""
    return int(np.prod(nib.load(folder / "seg" / "labels.nii.gz").shape))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return synthesise(tmp_path_factory.mktemp("cohort"), PARTICIPANTS, SEED)


@pytest.fixture(scope="module")
def kept(cohort, tmp_path_factory) -> Path:
    """``keep.stitched: all`` with the changed model from the start."""
    workdir = prepare_workdir(tmp_path_factory.mktemp("kept"), cohort, PARTICIPANTS)
    configure(workdir, keep__stitched="all", model__dir=changed_model(workdir))
    run_targets(workdir)
    return workdir


@pytest.fixture(scope="module")
def removed(cohort, tmp_path_factory) -> dict:
    """``keep.stitched: none`` (the default): a first run, then the changed model."""
    workdir = prepare_workdir(tmp_path_factory.mktemp("removed"), cohort, PARTICIPANTS)
    run_targets(workdir)
    participants = workdir / "results" / "participants"
    first = {
        "bytes": {pid: folder_bytes(participants / pid) for pid in participants_of(cohort)},
        "voxels": {pid: voxels(participants / pid) for pid in participants_of(cohort)},
        "mtimes": mtimes(workdir, "results/**/*.*"),
    }
    configure(workdir, model__dir=changed_model(workdir))
    run_targets(workdir)
    return {"workdir": workdir, "first": first, "rerun_mtimes": mtimes(workdir, "results/**/*.*")}


def test_the_default_keeps_no_stitched_channel_and_stays_under_budget(removed, cohort):
    for pid in participants_of(cohort):
        files = removed["first"]["bytes"][pid]
        assert not [c for c in CHANNELS if f"dixon/{c}.nii.gz" in files], files
        assert {"dixon/acquisition.json", "dixon/removed.json"} <= set(files)
        assert {"seg/labels.nii.gz", "qc/preview.nii.gz", "qc/overlay.png", "metrics.json"} <= set(
            files
        )
        scale = removed["first"]["voxels"][pid] / FULL_SIZE_VOXELS
        budget = BUDGET_FULL_SIZE_BYTES * scale + FIXED_BYTES
        assert sum(files.values()) <= budget, (pid, sum(files.values()), budget)


def test_keep_all_keeps_every_channel(kept, cohort):
    for pid in participants_of(cohort):
        folder = kept / "results" / "participants" / pid
        assert all((folder / "dixon" / f"{c}.nii.gz").is_file() for c in CHANNELS)
        assert not (folder / "dixon" / "removed.json").exists()


def test_a_new_model_redoes_exactly_the_segmentation_and_measure(removed, cohort):
    before, after = removed["first"]["mtimes"], removed["rerun_mtimes"]
    changed = {path for path in after if before.get(path) != after[path]}
    participants = [f"results/participants/{pid}" for pid in participants_of(cohort)]
    # Redone: the segmentation and the measurement of every participant, and the record
    # of the channels removed again after being made again for them.
    for folder in participants:
        for name in (
            "seg/labels.nii.gz",
            "seg/segmentation.json",
            "metrics.json",
            "qc/flags.json",
            "qc/overlay.png",
            "qc/preview.nii.gz",
            "dixon/removed.json",
        ):
            assert f"{folder}/{name}" in changed, name
        # Kept: the conversion and the landmarks.
        for name in ("dixon/acquisition.json", "landmarks.json", "dicom/inventory.json"):
            assert f"{folder}/{name}" not in changed, name
        assert not any(
            (removed["workdir"] / folder / "dixon" / f"{c}.nii.gz").exists() for c in CHANNELS
        )
    for stage in ("inventory", "convert", "landmarks"):
        assert f"results/shards/r1-0000/{stage}.tsv" not in changed
    for stage in ("segment", "measure"):
        assert f"results/shards/r1-0000/{stage}.tsv" in changed


def test_results_after_the_rerun_equal_those_of_a_run_that_kept_the_channels(removed, kept, cohort):
    workdir = removed["workdir"]
    for table in ("segment", "metrics", "qc", "measure", "landmarks"):
        assert (workdir / "results/shards/r1-0000" / f"{table}.tsv").read_bytes() == (
            kept / "results/shards/r1-0000" / f"{table}.tsv"
        ).read_bytes(), table
    for pid in participants_of(cohort):
        for name in ("seg/labels.nii.gz", "qc/preview.nii.gz"):
            ours = nib.load(workdir / "results/participants" / pid / name)
            theirs = nib.load(kept / "results/participants" / pid / name)
            assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj)), name
            assert np.allclose(ours.affine, theirs.affine)


@pytest.fixture(scope="module")
def qc_changed(removed) -> dict:
    """The ``removed`` folder after its rerun, run again with another asymmetry threshold."""
    workdir = removed["workdir"]
    before = mtimes(workdir, "results/**/*.*")
    configure(workdir, qc__asymmetry_pct=35.0)
    output = run_targets(workdir)
    return {"before": before, "after": mtimes(workdir, "results/**/*.*"), "output": output}


def test_new_qc_settings_redo_only_the_flags_without_the_channels(qc_changed, removed, cohort):
    workdir = removed["workdir"]
    changed = {
        p for p in qc_changed["after"] if qc_changed["before"].get(p) != qc_changed["after"][p]
    }
    per_participant = {p for p in changed if p.startswith("results/participants/")}
    assert per_participant == {
        f"results/participants/{pid}/qc/flags.json" for pid in participants_of(cohort)
    }
    log = (workdir / "logs/shards/r1-0000/measure.log").read_text()
    assert log.count(": flags redone") == PARTICIPANTS, log


@pytest.fixture(scope="module")
def dicom_gone(qc_changed, removed, cohort) -> dict:
    """The ``removed`` folder once the first participant's DICOM is deleted and the model
    changed back to the shipped one (every participant needs its channels again)."""
    # (The last fixture of the chain: it deletes DICOM of the module's cohort.)
    workdir = removed["workdir"]
    gone = participants_of(cohort)[0]
    shutil.rmtree(cohort / "dicom" / gone)
    configure(workdir, model__dir="resources/models/hips-cascade")
    output = run_targets(workdir)
    return {"gone": gone, "output": output}


def test_a_participant_whose_dicom_vanished_is_excluded_with_a_reason(dicom_gone, removed, cohort):
    workdir = removed["workdir"]
    table = read_tsv(workdir / "results/shards/r1-0000/measure.tsv").set_index("participant_id")
    gone = dicom_gone["gone"]
    exclusion = json.loads((workdir / "results/participants" / gone / "exclusion.json").read_text())
    assert table.loc[gone, "status"] == "excluded"
    assert (exclusion["stage"], exclusion["reason"]) == (
        table.loc[gone, "stage"],
        table.loc[gone, "reason"],
    )
    # The inventory, which runs again because the shard's set of DICOM inputs changed,
    # finds the folder gone before any stage needs the channels (a stage that finds it
    # gone says dixon_not_regenerable: tests/ingest/test_regenerate.py).
    assert (exclusion["stage"], exclusion["reason"]) == ("inventory", "dicom_missing"), exclusion
    others = [pid for pid in participants_of(cohort) if pid != gone]
    assert (table.loc[others, "status"] == "ok").all()
    for log in (workdir / "logs").rglob("*.log"):
        assert "Traceback" not in log.read_text(), log
