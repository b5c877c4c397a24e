"""Incremental data releases through the whole chain (issue 7).

One real run of release r1 (two small synthetic participants, one shard) to the report,
then release r2 (one participant) appended to the sheet and run: only r2's shard runs the
per-participant stages, then the gathers and the cohort rules; r1's files stay untouched.
Dry runs of that completed folder then check what new model weights and a changed
statistics option would rerun.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from dicom_helpers import write_sheet
from test_convert import NO_ARTEFACTS
from test_workflow import ROOT, check, copy_workflow, job_counts, snakemake

from myoflow.cohort.gather import GatherSettings
from myoflow.core.io import read_tsv
from myoflow.segment.model.card import read_card, save_model
from myoflow.synth.cohort import CohortSpec, generate_cohort

pytestmark = pytest.mark.workflow

R1 = ["ukbb000001", "ukbb000002"]
R2 = ["ukbb000003"]
SHIPPED_MODEL = ROOT / "resources" / "models" / "hips-cascade"
RUN = ("--profile", "config/profiles/local", "--cores", "2")
STAGES = ["inventory_shard", "convert_shard", "landmarks_shard", "segment_shard"]
ONE_SHARD = {rule: 1 for rule in [*STAGES, "measure_shard"]}
"""The per-participant stages' jobs of one shard."""
GATHERS = {"inventory_cohort": 1, "convert_cohort": 1}
COHORT_RULES = {"cohort_participants": 1, "cohort_statistics": 1, "cohort_figures": 1}
COHORT_RULES |= {"cohort_report": 1, "all": 1}
"""The jobs after the last per-participant stage (with no manual masks configured)."""
OLD = 946_684_800  # 2000-01-01, in seconds: older than anything the runs write


@dataclass(frozen=True)
class Released:
    """The workflow folder after both releases, and what the runs reported."""

    workdir: Path
    model: Path
    r1_files: dict[Path, int]
    """Every file of r1's participants and shard, with its mtime (ns) after release r1."""
    first_output: str
    second_output: str


def tree_mtimes(workdir: Path, participants: list[str], shards: list[str]) -> dict[Path, int]:
    """mtime (ns) of every file under the participants' and shards' result folders."""
    folders = [workdir / "results" / "participants" / p for p in participants]
    folders += [workdir / "results" / "shards" / s for s in shards]
    return {path: path.stat().st_mtime_ns for f in folders for path in f.rglob("*")}


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Released:
    """Release r1 run to the report, then release r2 appended and run."""
    root = tmp_path_factory.mktemp("releases")
    cohort = root / "cohort"
    generate_cohort(
        CohortSpec(out=cohort, participants=3, protocol="ukbb", seed=31, size="small",
                   rates=NO_ARTEFACTS, release_size=2)
    )  # fmt: skip
    synthetic = read_tsv(cohort / "participants.tsv")[["participant_id", "release"]]
    rows = [(p, str(cohort / "dicom" / p), r) for p, r in synthetic.itertuples(index=False)]
    assert [(p, r) for p, _, r in rows] == [(p, "r1") for p in R1] + [(p, "r2") for p in R2]
    workdir = root / "workflow"
    workdir.mkdir()
    copy_workflow(workdir)
    # A copy of the shipped model, so that a test can replace its weights in place.
    model = root / "model"
    shutil.copytree(SHIPPED_MODEL, model)
    sheet = write_sheet(workdir / "data" / "participants.tsv", rows[:2])
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config |= {
        "participants": "data/participants.tsv",
        "phenotypes": str(cohort / "phenotypes.tsv"),
        "shards": {"size": 2},
    }
    # The small participants' own spacing: no upsampling to the full-size grid (4x the
    # voxels to stitch, write and read) in a test about what runs, not what it measures.
    config["ingest"]["grid"] = {"spacing_mm": "native"}
    config["model"]["dir"] = str(model)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))

    first = check(snakemake(*RUN, cwd=workdir))
    r1_files = tree_mtimes(workdir, R1, ["r1-0000"])
    write_sheet(sheet, rows)
    second = check(snakemake(*RUN, cwd=workdir))
    return Released(workdir, model, r1_files, first, second)


def dry_run(released: Released, config: dict | None = None) -> str:
    """A dry run of the completed folder, with ``config`` merged over the config."""
    extra = []
    if config is not None:
        override = released.workdir / "override.yaml"
        override.write_text(yaml.safe_dump(config))
        extra = ["--configfile", "config/config.yaml", str(override)]
    return check(snakemake("-n", *RUN, *extra, cwd=released.workdir))


def planned_shards(output: str) -> set[str]:
    """The shards of the jobs a (dry) run lists."""
    return set(re.findall(r"wildcards: shard=(\S+)", output))


def write_other_weights(model: Path) -> str:
    """Rewrite the model in ``model`` with every float weight shifted, card consistent;
    return the new weights' sha256."""
    card = read_card(model)
    weights = torch.load(model / "model.pt", weights_only=True)
    shifted = {k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}
    measured = {k: v for k, v in card.items() if not k.startswith("weights") and k != "config"}
    return save_model(model, shifted, card["config"], measured)["weights_sha256"]


def test_release_r1_runs_every_stage_to_the_report(released):
    assert job_counts(released.first_output) == ONE_SHARD | GATHERS | COHORT_RULES
    assert planned_shards(released.first_output) == {"r1-0000"}
    # The r1 snapshot holds every stage's files (else the mtime check below is void).
    names = {path.name for path in released.r1_files}
    # (The stitched channels themselves are removed after measure: keep.stitched: none.)
    assert {"acquisition.json", "removed.json", "landmarks.json", "labels.nii.gz"} <= names
    assert {"segment.tsv", "measure.tsv"} <= names


def test_release_r2_runs_only_its_shard_then_the_gathers_and_cohort(released):
    assert job_counts(released.second_output) == ONE_SHARD | GATHERS | COHORT_RULES
    assert planned_shards(released.second_output) == {"r2-0000"}
    # Nothing of r1 was rewritten: its participants' files and its shard tables.
    assert tree_mtimes(released.workdir, R1, ["r1-0000"]) == released.r1_files
    # Both releases are in the cohort: every participant analysed or excluded, once.
    cohort = released.workdir / "results" / "cohort"
    analysed = list(read_tsv(cohort / "participants.tsv")["participant_id"])
    excluded = list(read_tsv(cohort / "exclusions.tsv")["participant_id"])
    assert sorted(analysed + excluded) == R1 + R2
    assert (cohort / "report.html").stat().st_mtime_ns > max(released.r1_files.values())
    assert "Nothing to be done" in dry_run(released)


def test_new_weights_rerun_segmentation_and_everything_after_for_every_shard(released):
    other = released.workdir.parent / "other_model"
    shutil.copytree(released.model, other)
    write_other_weights(other)
    output = dry_run(released, {"model": {"dir": str(other)}})
    assert job_counts(output) == {"segment_shard": 2, "measure_shard": 2} | COHORT_RULES
    assert planned_shards(output) == {"r1-0000", "r2-0000"}


def test_weights_replaced_in_place_with_old_mtimes_still_rerun(released):
    """A model unpacked from an archive keeps mtimes older than the masks: the weights'
    checksum (a param of the segmentation) catches it where the mtime trigger cannot."""
    backup = released.workdir.parent / "model_backup"
    shutil.copytree(released.model, backup)
    try:
        sha = write_other_weights(released.model)
        for name in ("model.pt", "model_card.json"):
            os.utime(released.model / name, (OLD, OLD))
        output = dry_run(released)
        assert job_counts(output) == {"segment_shard": 2, "measure_shard": 2} | COHORT_RULES
        assert planned_shards(output) == {"r1-0000", "r2-0000"}
        assert sha != read_card(backup)["weights_sha256"]
    finally:
        shutil.rmtree(released.model)
        shutil.copytree(backup, released.model)
        shutil.rmtree(backup)


def test_an_analysis_option_reruns_the_statistics_not_the_gather(released):
    output = dry_run(released, {"stats": {"level": 0.9}})
    assert job_counts(output) == {
        "cohort_statistics": 1,
        "cohort_figures": 1,
        "cohort_report": 1,
        "all": 1,
    }


def test_a_gather_option_reruns_the_gather_and_the_statistics_only(released):
    changed = {"bmi_tolerance": 2.0}
    output = dry_run(released, {"stats": changed})
    assert job_counts(output) == COHORT_RULES
    # The gather is given every stats key it reads, and only those (rules/common.smk
    # GATHER_STATS_KEYS): a key read but not passed would silently take its default.
    command = next(line for line in output.splitlines() if "myoflow gather" in line)
    argv = shlex.split(command[command.index("myoflow gather") :])
    passed = json.loads(argv[argv.index("--stats") + 1])
    assert passed["bmi_tolerance"] == 2.0
    config = yaml.safe_load((released.workdir / "config" / "config.yaml").read_text())
    stats = config["stats"] | changed
    read = KeysRead(stats)
    GatherSettings.from_config(read)
    assert {key for key in read.keys_read if key in stats} == set(passed)
    assert GatherSettings.from_config(passed) == GatherSettings.from_config(stats)


class KeysRead(dict):
    """A dict that records which keys were looked up."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.keys_read: set[str] = set()

    def get(self, key, default=None):
        self.keys_read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.keys_read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self.keys_read.add(key)
        return super().__contains__(key)
