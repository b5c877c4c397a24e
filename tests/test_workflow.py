"""The workflow itself: lint, a dry run, and real runs on three tiny participants."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dicom_helpers import make_dicom_folder, write_sheet, zip_folder

from myoflow.core.io import read_tsv

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
WORKFLOW_FILES = ["Snakefile", "rules", "config", "envs", "workflow/scripts", "workflow/report"]
"""Copied for a run; `resources` (the shipped model) is linked, not copied."""

pytestmark = pytest.mark.workflow


def snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run Snakemake with this environment's tools first on PATH (as `make` does)."""
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def check(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A copy of the workflow with a cohort of 3 (r1): a folder, a zip, a missing folder."""
    copy_workflow(tmp_path)
    data = tmp_path / "data"
    make_dicom_folder(data / "dicom" / "P001")
    zip_folder(make_dicom_folder(tmp_path / "staging" / "P002"), data / "dicom" / "P002.zip")
    write_sheet(
        data / "participants.tsv",
        [
            ("P002", "dicom/P002.zip", "r1"),
            ("P001", "dicom/P001", "r1"),
            ("P003", "dicom/P003", "r1"),
        ],
    )
    config = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    config |= {"participants": "data/participants.tsv", "shards": {"size": 2}}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def copy_workflow(target: Path) -> None:
    """Copy what a workflow run needs (Snakefile, rules, config, envs, scripts) to ``target``."""
    for name in WORKFLOW_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target / name)
    (target / "resources").symlink_to(ROOT / "resources", target_is_directory=True)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake run or dry run, as rule -> count."""
    lines = output.split("Job stats:")[1].splitlines()
    counts = {}
    for line in lines[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


INGESTION = ("results/cohort/inventory.tsv", "results/cohort/convert.tsv")
"""Targets of the ingestion tests: their tiny series are no Dixon acquisition, so every
participant ends at the conversion (the later stages have their own tests)."""

ONE_SHARD_RERUN = {
    "inventory_shard": 1,
    "inventory_cohort": 1,
    "convert_shard": 1,
    "convert_cohort": 1,
}
"""Jobs when one shard's inputs change: that shard's stages and the gathers."""


def test_lint_passes():
    output = check(
        snakemake("--lint", "--config", "participants=config/participants.example.tsv", cwd=ROOT)
    )
    assert "Lints for" not in output


def test_dry_run_plans_one_job_per_shard(workdir):
    output = check(snakemake(*INGESTION, "-n", "--profile", "config/profiles/local", cwd=workdir))
    assert job_counts(output) == {
        "inventory_shard": 2,
        "inventory_cohort": 1,
        "convert_shard": 2,
        "convert_cohort": 1,
    }
    assert "results/shards/r1-0000/inventory.tsv" in output
    assert "results/shards/r1-0001/inventory.tsv" in output


def test_bad_sheet_stops_the_workflow_naming_the_row(workdir):
    sheet = workdir / "data" / "participants.tsv"
    sheet.write_text(sheet.read_text() + "../P004\tdicom/P004\tr1\n")
    result = snakemake(*INGESTION, "-n", "--profile", "config/profiles/local", cwd=workdir)
    assert result.returncode != 0
    assert "data row 4 (line 5): participant_id '../P004'" in result.stdout + result.stderr


def test_real_run_then_a_new_release(workdir):
    check(snakemake(*INGESTION, "--profile", "config/profiles/local", "--cores", "2", cwd=workdir))

    cohort = read_tsv(workdir / "results" / "cohort" / "inventory.tsv").set_index("participant_id")
    assert list(cohort.index) == ["P001", "P002", "P003"]
    assert list(cohort["shard"]) == ["r1-0000", "r1-0000", "r1-0001"]
    assert list(cohort["status"]) == ["ok", "ok", "excluded"]
    assert cohort.loc["P003", "reason"] == "dicom_missing"
    assert list(cohort["n_series"]) == [2, 2, 0]
    participants = workdir / "results" / "participants"
    for ok in ["P001", "P002"]:
        assert len(read_tsv(participants / ok / "dicom" / "inventory.tsv")) == 2
        # (excluded by the conversion, which needs a whole Dixon acquisition)
        assert json.loads((participants / ok / "exclusion.json").read_text())["stage"] == "convert"
    exclusion = json.loads((participants / "P003" / "exclusion.json").read_text())
    assert (exclusion["stage"], exclusion["reason"]) == ("inventory", "dicom_missing")
    # These tiny series are no Dixon acquisition: the conversion excludes them, and passes
    # on the inventory's exclusion of P003.
    converted = read_tsv(workdir / "results" / "cohort" / "convert.tsv").set_index("participant_id")
    assert list(converted["stage"]) == ["convert", "convert", "inventory"]
    assert converted.loc["P003", "reason"] == "dicom_missing"
    for shard in ["r1-0000", "r1-0001"]:
        assert (workdir / "logs" / "shards" / shard / "inventory.log").stat().st_size > 0
        assert (workdir / "benchmarks" / "shards" / shard / "inventory.tsv").is_file()

    # Nothing left to do.
    assert "Nothing to be done" in check(
        snakemake(*INGESTION, "-n", "--profile", "config/profiles/local", cwd=workdir)
    )

    # Release r2 arrives: only its shard and the gather run; r1's shard tables stay.
    r1_tables = {
        s: (workdir / "results" / "shards" / s / "inventory.tsv") for s in ["r1-0000", "r1-0001"]
    }
    r1_mtimes = {s: path.stat().st_mtime_ns for s, path in r1_tables.items()}
    make_dicom_folder(workdir / "data" / "dicom" / "Q001")
    sheet = workdir / "data" / "participants.tsv"
    sheet.write_text(sheet.read_text() + "Q001\tdicom/Q001\tr2\n")
    output = check(
        snakemake(*INGESTION, "--profile", "config/profiles/local", "--cores", "2", cwd=workdir)
    )
    assert job_counts(output) == ONE_SHARD_RERUN
    assert {s: path.stat().st_mtime_ns for s, path in r1_tables.items()} == r1_mtimes
    cohort = read_tsv(workdir / "results" / "cohort" / "inventory.tsv")
    assert list(cohort["participant_id"]) == ["P001", "P002", "P003", "Q001"]
    assert cohort["status"].tolist()[-1] == "ok"

    # P003's folder appears: its shard's input set changes, so that shard alone reruns.
    make_dicom_folder(workdir / "data" / "dicom" / "P003")
    output = check(
        snakemake(*INGESTION, "--profile", "config/profiles/local", "--cores", "2", cwd=workdir)
    )
    assert job_counts(output) == ONE_SHARD_RERUN
    assert r1_tables["r1-0000"].stat().st_mtime_ns == r1_mtimes["r1-0000"]
    assert r1_tables["r1-0001"].stat().st_mtime_ns > r1_mtimes["r1-0001"]
    cohort = read_tsv(workdir / "results" / "cohort" / "inventory.tsv")
    assert cohort["status"].tolist() == ["ok"] * 4
    assert json.loads((participants / "P003" / "exclusion.json").read_text())["stage"] == "convert"


def test_paths_with_spaces_and_a_configured_results_folder(tmp_path):
    """Every path a rule passes to a shell command is quoted, and every output goes under
    config `results`: a workflow folder, a sheet, DICOM and a results folder whose names
    hold spaces run through the ingestion, and nothing is written to results/."""
    workdir = tmp_path / "my cohort"
    workdir.mkdir()
    copy_workflow(workdir)
    make_dicom_folder(workdir / "raw data" / "dicom" / "P 001")
    write_sheet(workdir / "raw data" / "sheet one.tsv", [("P001", "dicom/P 001", "r1")])
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config |= {"participants": "raw data/sheet one.tsv", "results": "run 1"}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    targets = [f"run 1/cohort/{name}.tsv" for name in ("inventory", "convert")]
    check(snakemake(*targets, "--profile", "config/profiles/local", "--cores", "2", cwd=workdir))

    inventory = read_tsv(workdir / "run 1" / "cohort" / "inventory.tsv")
    assert (inventory["participant_id"].tolist(), inventory["status"].tolist()) == (
        ["P001"],
        ["ok"],
    )
    assert (workdir / "run 1" / "participants" / "P001" / "dicom" / "inventory.tsv").is_file()
    assert (workdir / "run 1" / "shards" / "r1-0000" / "convert.tsv").is_file()
    assert not (workdir / "results").exists()
