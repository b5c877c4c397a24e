"""The night budget: wall hours for a whole cohort from the measured cost of each stage.

Run: ``.venv/bin/python bench/night_budget.py --costs COSTS.json [--gpu GPU.json]
[--participants 100000] [--shard-size 25] [--cores 64] [--nodes 1 4 16 64]
[--job-start-s S | --measure-job-start]``

``COSTS.json`` is what ``bench/throughput.py --size full --json`` writes: per stage the
CPU seconds per full-size participant and a shard job's fixed CPU seconds (the command
rerun on its completed shard: Python, imports, the model's load), and the network's
forward passes apart. ``GPU.json`` (optional) holds ``{"forward_s_per_participant": s}``:
the network's seconds per participant on one GPU, from ``bench/inference.py`` on a GPU
machine. Without it the GPU rows say "not measured"; nothing is assumed for it.

The model (every figure an input, none fitted):

- **work**: participants x CPU seconds per participant (all stages), plus jobs x (a shard
  job's fixed CPU seconds + Snakemake's start of that job); jobs = stages x shards;
- **one node of C cores**: the work spread over C cores (a lower bound: perfect packing);
  with a GPU, the segmentation's forward passes leave the CPUs for the GPU, which then
  takes participants x its seconds per participant, and the node takes the longer of
  the two (the GPU fed while the CPUs do the other stages);
- **a SLURM cluster of N nodes**: the work over N x C cores, but no faster than the
  Snakemake process submits jobs (``max-jobs-per-timespan`` of config/profiles/slurm,
  10 per second); queue waits are not modelled (they depend on the cluster);
- **around that**: planning before the first job (measured: 100,000 participants in
  shards of 25, 62.3 s, docs/sharding.md), the tail (the last shard's five stages run
  one after another: shard size x the wall seconds per participant of the chain) and the
  cohort rules (gather, statistics, figures: 17 + 17 + 12 s measured at 100,000
  participants, rules/cohort.smk).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

STAGES = ("inventory", "convert", "landmarks", "segment", "measure")
PLANNING_S = 62.3
"""Planning 100,000 participants in shards of 25 (bench/dag.py, docs/sharding.md)."""
COHORT_S = 17.0 + 17.0 + 12.0
"""The cohort gather, statistics and figures at 100,000 participants (rules/cohort.smk);
the report and the two ingestion gathers are not measured and not counted."""
SUBMIT_PER_S = 10.0
"""Jobs submitted per second (config/profiles/slurm: max-jobs-per-timespan 10/1s)."""
LOCAL_JOB_START_S = 0.05
"""Snakemake's own CPU seconds per job when it runs jobs on its own node (about 50 ms,
docs/sharding.md); on SLURM each job parses the workflow again (--measure-job-start)."""
NIGHT_H = 12.0


@dataclass(frozen=True)
class Costs:
    """Measured costs of one full-size participant and of a shard job.

    Attributes:
        cpu_s: CPU seconds per participant of each stage (segmentation on the CPU).
        wall_s: wall seconds per participant of each stage (one process, as measured).
        forward_cpu_s: CPU seconds per participant of the network's forward passes (in
            ``cpu_s["segment"]``).
        job_fixed_cpu_s: CPU seconds of one shard job of each stage beyond its
            participants.
    """

    cpu_s: dict[str, float]
    wall_s: dict[str, float]
    forward_cpu_s: float
    job_fixed_cpu_s: dict[str, float]

    @classmethod
    def from_json(cls, figures: dict) -> Costs:
        """From the JSON of ``bench/throughput.py --size full``."""
        stages = figures["stages"]
        return cls(
            {s: stages[s]["cpu_s_per_participant"] for s in STAGES},
            {s: stages[s]["wall_s_per_participant"] for s in STAGES},
            figures["forward"]["cpu_s_per_participant"],
            {s: stages[s]["job_fixed_cpu_s"] for s in STAGES},
        )


@dataclass(frozen=True)
class Cohort:
    """What is run, and where."""

    participants: int = 100_000
    shard_size: int = 25
    cores: int = 64
    planning_s: float = PLANNING_S
    cohort_s: float = COHORT_S
    submit_per_s: float = SUBMIT_PER_S

    @property
    def shards(self) -> int:
        return math.ceil(self.participants / self.shard_size)

    @property
    def jobs(self) -> int:
        return self.shards * len(STAGES)


def cpu_work_s(costs: Costs, cohort: Cohort, job_start_s: float, gpu: bool) -> float:
    """CPU seconds of every per-participant job of the cohort; with ``gpu`` the forward
    passes are not on the CPU."""
    per_participant = sum(costs.cpu_s.values()) - (costs.forward_cpu_s if gpu else 0.0)
    per_job = sum(costs.job_fixed_cpu_s.values()) / len(STAGES) + job_start_s
    return cohort.participants * per_participant + cohort.jobs * per_job


def tail_s(costs: Costs, cohort: Cohort) -> float:
    """The last shard's chain: its stages one after another, its participants in turn."""
    return min(cohort.shard_size, cohort.participants) * sum(costs.wall_s.values())


def wall_s(
    costs: Costs,
    cohort: Cohort,
    nodes: int,
    job_start_s: float,
    gpu_s_per_participant: float | None = None,
    submitted: bool = False,
) -> float:
    """Wall seconds for the cohort on ``nodes`` nodes of ``cohort.cores`` cores.

    Args:
        gpu_s_per_participant: with one GPU per node, its seconds per participant of the
            forward passes; None: no GPU.
        submitted: jobs go through a scheduler at ``cohort.submit_per_s`` (SLURM).
    """
    gpu = gpu_s_per_participant is not None
    compute = cpu_work_s(costs, cohort, job_start_s, gpu) / (nodes * cohort.cores)
    if gpu:
        compute = max(compute, cohort.participants * gpu_s_per_participant / nodes)
    if submitted:
        compute = max(compute, cohort.jobs / cohort.submit_per_s)
    return cohort.planning_s + compute + tail_s(costs, cohort) + cohort.cohort_s


def budget_rows(
    costs: Costs,
    cohort: Cohort,
    nodes: list[int],
    cluster_job_start_s: float,
    gpu_s_per_participant: float | None,
) -> list[dict]:
    """One row per layout: one node without and with a GPU, then SLURM clusters."""
    layouts = [("one node, no GPU", 1, LOCAL_JOB_START_S, False, False)]
    layouts += [("one node, one GPU", 1, LOCAL_JOB_START_S, True, False)]
    for n in nodes:
        layouts += [(f"SLURM, {n} nodes, no GPU", n, cluster_job_start_s, False, True)]
        layouts += [(f"SLURM, {n} nodes, a GPU each", n, cluster_job_start_s, True, True)]
    rows = []
    for name, n, job_start, gpu, submitted in layouts:
        if gpu and gpu_s_per_participant is None:
            rows.append({"layout": name, "nodes": n, "cpu_h": None, "wall_h": None})
            continue
        seconds = wall_s(
            costs, cohort, n, job_start, gpu_s_per_participant if gpu else None, submitted
        )
        rows.append(
            {
                "layout": name,
                "nodes": n,
                "cpu_h": cpu_work_s(costs, cohort, job_start, gpu) / 3600,
                "wall_h": seconds / 3600,
            }
        )
    return rows


def measure_job_start(participants: int, shard_size: int, work: Path | None = None) -> float:
    """CPU seconds of ``snakemake --list-rules --mode remote`` on a sheet of
    ``participants``: what each SLURM job spends parsing the workflow (the sheet read,
    checked and sharded) before its command starts."""
    sys.path.insert(0, str(Path(__file__).parent))
    import dag  # bench/dag.py: stub sheets and configs as a real run has them

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        folder = Path(tmp)
        config = dag.write_config(
            folder, dag.write_sheet(folder, participants, "folder"), shard_size
        )
        # --mode remote: as a job's Snakemake runs (workflow.is_main_process false, so
        # rules/common.smk skips the schema validation of the sheet, ~4 CPU s of it).
        command = [str(dag.BIN / "snakemake"), "--list-rules", "--mode", "remote"]
        command += dag.snakemake_options(folder, config)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=dag.REPO)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(
        f"a SLURM job's parse of the workflow ({participants} participants):"
        f" {cpu:.2f} CPU s, {wall:.2f} s"
    )
    return cpu


def print_table(rows: list[dict], cohort: Cohort) -> None:
    """The budget as a Markdown table."""
    print(
        f"| Layout ({cohort.participants:,} participants, shards of {cohort.shard_size},"
        f" {cohort.cores}-core nodes) | CPU hours | Wall hours | In a {NIGHT_H:g} h night |"
    )
    print("|---|---|---|---|")
    for row in rows:
        if row["wall_h"] is None:
            print(f"| {row['layout']} | not measured | not measured (no GPU figure) | - |")
            continue
        fits = "yes" if row["wall_h"] <= NIGHT_H else "no"
        print(f"| {row['layout']} | {row['cpu_h']:,.0f} | {row['wall_h']:.1f} | {fits} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--costs", type=Path, required=True, help="bench/throughput.py --size full --json"
    )
    parser.add_argument(
        "--gpu", type=Path, help='JSON {"forward_s_per_participant": s} measured on one GPU'
    )
    parser.add_argument("--participants", type=int, default=100_000)
    parser.add_argument("--shard-size", type=int, default=25)
    parser.add_argument("--cores", type=int, default=64)
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 16, 64])
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--job-start-s", type=float, help="CPU s each SLURM job spends parsing the workflow"
    )
    start.add_argument(
        "--measure-job-start", action="store_true", help="measure it (snakemake --list-rules)"
    )
    parser.add_argument("--work", type=Path, help="folder for the stub sheet (default: TMPDIR)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    costs = Costs.from_json(json.loads(args.costs.read_text()))
    cohort = Cohort(args.participants, args.shard_size, args.cores)
    job_start = args.job_start_s
    if args.measure_job_start:
        job_start = measure_job_start(args.participants, args.shard_size, args.work)
    if job_start is None:
        raise SystemExit("give --job-start-s or --measure-job-start")
    gpu = None
    if args.gpu:
        gpu = float(json.loads(args.gpu.read_text())["forward_s_per_participant"])
    print(
        f"per participant: {sum(costs.cpu_s.values()):.2f} CPU s"
        f" ({sum(costs.cpu_s.values()) - costs.forward_cpu_s:.2f} without the forward passes);"
        f" {cohort.jobs:,} shard jobs; SLURM job start {job_start:.2f} CPU s"
    )
    rows = budget_rows(costs, cohort, args.nodes, job_start, gpu)
    print_table(rows, cohort)
    if args.json:
        args.json.write_text(json.dumps({"job_start_s": job_start, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
