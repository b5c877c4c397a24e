"""Benchmark end-to-end throughput of the real workflow: participant shards vs one job each.

Run: ``.venv/bin/python bench/throughput.py [--participants 50] [--shard-size 25]
[--cores 2]``

Generates one small synthetic UK Biobank cohort (``myoflow synth --size small``), then
runs the whole workflow (``snakemake --cores N``, every stage from the DICOM inventory to
the report) on it twice, each time in a fresh results folder: once with participant
shards and once with shards of one participant (the one-job-per-participant layout).
Prints wall time, jobs run, participants per hour and the sums over jobs of their wall
and CPU seconds (from the rules' benchmark files: the work, against the wall time that
also holds waiting) for both, and the ratio. Issue 7 asks for this figure on 50 small
participants. The config is the shipped one, so the small participants are stitched onto
the full-size UK Biobank grid: every stage after the conversion does full-size work.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def synthesise(folder: Path, participants: int, seed: int) -> Path:
    """A small synthetic cohort in ``folder``; returns its participant sheet."""
    command = [str(BIN / "myoflow"), "synth", "--out", str(folder), "--size", "small"]
    command += ["--participants", str(participants), "--protocol", "ukbb", "--seed", str(seed)]
    subprocess.run(command, check=True, capture_output=True)
    return folder / "participants.tsv"


def run_workflow(workdir: Path, cohort: Path, shard_size: int, cores: int) -> dict[str, float]:
    """One complete run in the fresh folder ``workdir``: its wall seconds, the number of
    jobs, and the sums over jobs of their wall and CPU seconds (Snakemake's benchmarks)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["participants"] = str(cohort / "participants.tsv")
    config["phenotypes"] = str(cohort / "phenotypes.tsv")
    config["shards"] = {"size": shard_size}
    model = config.get("model", {})
    if "dir" in model:  # relative to the repository, and the run happens elsewhere
        model["dir"] = str(REPO / model["dir"])
    workdir.mkdir(parents=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    command = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile")]
    command += ["--configfile", str(workdir / "config.yaml"), "--directory", str(workdir)]
    command += ["--cores", str(cores), "--keep-going", "--persistence-backend", "db"]
    # The rules call `myoflow`: this environment's tools first on PATH (as `make` does).
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"workflow failed (shard size {shard_size}):\n{done.stderr[-4000:]}")
    finished = re.findall(r"(\d+) of (\d+) steps \(100%\) done", done.stderr)
    benchmarks = [
        pd.read_csv(path, sep="\t").iloc[-1] for path in (workdir / "benchmarks").rglob("*.tsv")
    ]
    return {
        "seconds": seconds,
        "jobs": int(finished[-1][1]) if finished else -1,
        "job_seconds": float(sum(b["s"] for b in benchmarks)),
        "job_cpu_seconds": float(sum(b["cpu_time"] for b in benchmarks)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=50)
    parser.add_argument("--shard-size", type=int, default=25)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        synthesise(folder / "cohort", args.participants, args.seed)
        print(
            f"{args.participants} small synthetic participants in "
            f"{time.perf_counter() - started:.0f} s; whole workflow, --cores {args.cores}"
        )
        results = {}
        for layout, size in (("shards", args.shard_size), ("per participant", 1)):
            run = run_workflow(folder / f"run_{size}", folder / "cohort", size, args.cores)
            run["participants_per_hour"] = args.participants / run["seconds"] * 3600
            run["wall_seconds_per_participant"] = run["seconds"] / args.participants
            results[layout] = run
    print(
        f"{'layout':>16} {'jobs':>6} {'seconds':>8} {'s/participant':>14} {'participants/h':>15}"
        f" {'job s':>8} {'job CPU s':>10}"
    )
    for layout, r in results.items():
        print(
            f"{layout:>16} {r['jobs']:>6} {r['seconds']:>8.0f}"
            f" {r['wall_seconds_per_participant']:>14.1f} {r['participants_per_hour']:>15.0f}"
            f" {r['job_seconds']:>8.0f} {r['job_cpu_seconds']:>10.0f}"
        )
    ratio = (
        results["shards"]["participants_per_hour"]
        / results["per participant"]["participants_per_hour"]
    )
    print(f"shards / per participant throughput: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results | {"ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
