"""The workflow through a real SLURM scheduler, with the SLURM profile a user edits.

Needs the one-node test cluster of ci/slurm/cluster.sh, which `make test` starts when run
as root (and stops after); elsewhere these tests are skipped. SLURM's own records are the
evidence that jobs went through it: squeue keeps finished jobs for MinJobAge (600 s
there) with the comment the executor plugin gives them (rule and wildcards), and the job
completion log (jobcomp/filetxt) holds one line per finished job.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from test_workflow import INGESTION, check, copy_workflow, snakemake

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
PROFILE = ROOT / "config" / "profiles" / "slurm" / "config.yaml"

CLUSTER_NAME = "myoflow-ci"
"""ClusterName of ci/slurm/cluster.sh; jobs are never submitted to another cluster."""
LOCAL_VALUES = {
    ("default-resources", "slurm_partition"): "cpu",
    ("default-resources", "slurm_account"): "myoflow-ci",
    ("set-resources", "segment_shard", "slurm_partition"): "gpu",
    ("set-resources", "segment_shard", "gpu_model"): "fake",
    ("set-resources", "train", "slurm_partition"): "gpu",
    ("set-resources", "train", "gpu_model"): "fake",
}
"""What a user edits in the profile (its header lists exactly these), for the test cluster."""

SHARD_JOBS = {
    f"rule_{rule}_wildcards_{shard}"
    for rule in ["inventory_shard", "convert_shard"]
    for shard in ["r1-0000", "r1-0001"]
}
"""The SLURM jobs of 3 participants in shards of 2; the gathers and `all` run locally."""

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]


def slurm_config() -> dict[str, str]:
    """`scontrol show config` as a mapping, or skip (or fail, in CI) without SLURM."""
    try:
        result = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=20
        )
        reachable = result.returncode == 0 and shutil.which("sinfo") is not None
        why = (result.stderr.strip().splitlines() or [""])[-1]
    except (OSError, subprocess.TimeoutExpired) as error:
        reachable, why = False, str(error)
    if not reachable:
        reason = (
            f"SLURM is not reachable ({why or 'no scontrol'}); `make test` as root starts "
            "a one-node cluster (ci/slurm/cluster.sh start)"
        )
        if os.environ.get("MYOFLOW_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    config = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition("=") for line in result.stdout.splitlines())
        if value
    )
    if config.get("ClusterName") != CLUSTER_NAME:
        pytest.skip(
            f"SLURM cluster {config.get('ClusterName')!r} is not the test cluster of "
            "ci/slurm/cluster.sh; not submitting test jobs to it"
        )
    return config


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    """The test cluster's configuration (skips, or fails in CI, without it)."""
    return slurm_config()


def cluster_profile(target: Path) -> Path:
    """The SLURM profile with the user's edits made for the test cluster, in ``target``.

    Also checks that the edits named in the profile's header are the only placeholders.
    Adds settings for the test cluster: squeue for status queries (sacct needs an
    accounting database), queried every second, and SLURM's logs kept.
    """
    profile = yaml.safe_load(PROFILE.read_text())
    for keys, value in LOCAL_VALUES.items():
        mapping = profile
        for key in keys[:-1]:
            mapping = mapping[key]
        assert str(mapping[keys[-1]]).startswith("EDIT_ME"), keys
        mapping[keys[-1]] = value
    assert "EDIT_ME" not in yaml.safe_dump(profile), "a placeholder the header does not list"
    profile |= {
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 1,
        "seconds-between-status-checks": 1,
        "slurm-keep-successful-logs": True,
    }
    target.mkdir(parents=True)
    (target / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return target


def run_id(output: str) -> str:
    """The executor plugin's run id: the SLURM job name of every job of the run."""
    match = re.search(r"SLURM run ID: (\S+)", output)
    assert match, output
    return match.group(1)


def squeue_jobs(name: str) -> dict[str, tuple[str, str]]:
    """SLURM job id -> (comment, state) of the jobs named ``name``, finished ones included."""
    result = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--name", name, "--format", "%i|%k|%T"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        job: (comment, state)
        for job, comment, state in (line.split("|") for line in result.stdout.splitlines())
    }


def completed_jobs(cluster: dict[str, str], name: str) -> dict[str, dict[str, str]]:
    """The job completion log's records of the jobs named ``name``, by job id."""
    log = Path(cluster["JobCompLoc"])
    records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in log.read_text().splitlines()]
    return {r["JobId"]: r for r in records if r.get("Name") == name}


def workdir_for(tmp_path: Path, name: str, sheet: Path) -> Path:
    """A copy of the workflow reading ``sheet``, in shards of 2."""
    workdir = tmp_path / name
    workdir.mkdir()
    copy_workflow(workdir)
    config_path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config |= {"participants": str(sheet), "shards": {"size": 2}}
    config_path.write_text(yaml.safe_dump(config))
    return workdir


def results(workdir: Path) -> dict[str, Path]:
    """Every file under ``workdir``/results, by its path relative to ``workdir``."""
    return {
        str(p.relative_to(workdir)): p
        for p in sorted((workdir / "results").rglob("*"))
        if p.is_file()
    }


def test_workflow_through_slurm_matches_a_local_run(cluster, tmp_path):
    data = tmp_path / "data"
    subprocess.run(
        [BIN / "myoflow", "synth", "--out", data, "--participants", "3", "--size", "small"]
        + ["--seed", "31"],
        check=True,
        capture_output=True,
    )
    sheet = data / "participants.tsv"
    local = workdir_for(tmp_path, "local", sheet)
    on_slurm = workdir_for(tmp_path, "slurm", sheet)
    profile = cluster_profile(tmp_path / "profile")

    check(snakemake(*INGESTION, "--profile", "config/profiles/local", "--cores", "2", cwd=local))
    output = check(snakemake(*INGESTION, "--profile", str(profile), cwd=on_slurm))

    # SLURM ran one job per shard and stage, each completed, on the profile's partition
    # and account; nothing else of this run went to SLURM.
    name = run_id(output)
    queued = squeue_jobs(name)
    assert {comment for comment, _ in queued.values()} == SHARD_JOBS, queued
    assert len(queued) == len(SHARD_JOBS)
    completed = completed_jobs(cluster, name)
    assert set(completed) == set(queued)
    for job, record in completed.items():
        assert record["JobState"] == "COMPLETED", (queued[job], record)
        assert (record["Partition"], record["Account"]) == ("cpu", "myoflow-ci"), record
        assert record["WorkDir"] == str(on_slurm)
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", output))
    assert submitted == set(queued)

    # The same results: every file byte for byte, the NIfTI images as data (voxels, affine,
    # scale).
    produced = results(on_slurm)
    assert produced.keys() == results(local).keys()
    converted = [p for p in produced if p.endswith(".nii.gz")]
    assert len(converted) == 3 * 4  # every participant converted: the comparison has data
    for relative, path in produced.items():
        if relative.endswith(".nii.gz"):
            ours, theirs = nib.load(path), nib.load(local / relative)
            assert np.array_equal(ours.dataobj.get_unscaled(), theirs.dataobj.get_unscaled())
            assert np.array_equal(ours.affine, theirs.affine)
            assert ours.dataobj.slope == theirs.dataobj.slope
        else:
            assert path.read_bytes() == (local / relative).read_bytes(), relative

    # The records of the run (in the persistence backend the profile names) are complete:
    # nothing to redo, and every job's provenance is there for the rerun triggers.
    dry_run = check(snakemake(*INGESTION, "-n", "--profile", str(profile), cwd=on_slurm))
    assert "Nothing to be done" in dry_run
    assert "missing provenance" not in dry_run
    assert (on_slurm / ".snakemake" / "metadata.db").is_file()


GPU_SNAKEFILE = """
rule all:
    input:
        expand("gpu/{i}.txt", i=[1, 2]),
    localrule: True


rule segment_shard:
    output:
        "gpu/{i}.txt",
    shell:
        "echo $SLURM_JOB_ID $SLURM_JOB_PARTITION ${{CUDA_VISIBLE_DEVICES:-none}} > {output}"
"""


def test_segmentation_jobs_get_a_gpu_each(cluster, tmp_path):
    """The profile's resources for segment_shard ask SLURM for one GPU in the GPU partition,
    and its GPU cap is per job (group), not one GPU job at a time for the whole run."""
    workdir = tmp_path / "gpu"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(GPU_SNAKEFILE)
    profile = cluster_profile(tmp_path / "profile")
    settings = yaml.safe_load((profile / "config.yaml").read_text())
    segment = settings["set-resources"]["segment_shard"]
    assert (segment["slurm_partition"], segment["gpu"], segment["gpu_model"]) == ("gpu", 1, "fake")
    # This node has 2 CPUs and maybe little memory: a GPU node's CPUs and memory would
    # leave the job pending forever here.
    segment |= {"cpus_per_gpu": 1, "mem_mb": 100}
    (profile / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))

    output = check(snakemake("--profile", str(profile), cwd=workdir))

    jobs = {}
    for i in [1, 2]:
        job, partition, gpus = (workdir / "gpu" / f"{i}.txt").read_text().split()
        assert (partition, gpus) == ("gpu", "0")  # SLURM gave the job GPU 0, the fake one
        record = subprocess.run(
            ["scontrol", "show", "job", job], capture_output=True, text=True, check=True
        ).stdout
        assert "TresPerJob=gres:gpu:fake:1" in record
        assert "CpusPerTres=gres:gpu:1" in record
        jobs[job] = (f"rule_segment_shard_wildcards_{i}", "COMPLETED")
    name = run_id(output)
    assert squeue_jobs(name) == jobs
    completed = completed_jobs(cluster, name)
    assert {completed[job]["Partition"] for job in jobs} == {"gpu"}
    # Both were submitted before either ended (SLURM then ran them one after the other on
    # its one GPU): Snakemake did not hold the second back for the first's GPU.
    assert max(completed[job]["SubmitTime"] for job in jobs) < min(
        completed[job]["EndTime"] for job in jobs
    )
