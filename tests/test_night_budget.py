"""bench/night_budget.py: the arithmetic of the night budget, on costs worked out by hand,
and that it reads what bench/throughput.py --size full writes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


night_budget = _bench("night_budget")
throughput = _bench("throughput")

STAGES = ("inventory", "convert", "landmarks", "segment", "measure")
# 20 CPU s per participant, 6 of them the forward passes; 40 wall s; 2 CPU s per job.
COSTS = night_budget.Costs(
    cpu_s=dict(zip(STAGES, (1.0, 2.0, 3.0, 10.0, 4.0), strict=True)),
    wall_s=dict(zip(STAGES, (2.0, 4.0, 6.0, 20.0, 8.0), strict=True)),
    forward_cpu_s=6.0,
    job_fixed_cpu_s=dict.fromkeys(STAGES, 2.0),
)
# 40 shards, 200 jobs; 10 cores a node.
COHORT = night_budget.Cohort(
    participants=1000, shard_size=25, cores=10, planning_s=60.0, cohort_s=40.0, submit_per_s=10
)


def test_work_is_participants_times_their_cost_plus_jobs_times_theirs():
    assert COHORT.shards == 40 and COHORT.jobs == 200
    # 1000 x 20 + 200 x (2 + 0.5); with a GPU the 6 forward seconds leave the CPU.
    assert night_budget.cpu_work_s(COSTS, COHORT, 0.5, gpu=False) == pytest.approx(20_500)
    assert night_budget.cpu_work_s(COSTS, COHORT, 0.5, gpu=True) == pytest.approx(14_500)
    # The last shard's chain: 25 participants x 40 wall s.
    assert night_budget.tail_s(COSTS, COHORT) == pytest.approx(1000)


def test_wall_time_of_one_node_with_and_without_a_gpu():
    # planning 60 + 20,500 / 10 cores + tail 1,000 + cohort 40
    assert night_budget.wall_s(COSTS, COHORT, 1, 0.5) == pytest.approx(3150)
    # The GPU takes 1000 x 3 s, longer than the CPUs' 14,500 / 10: it decides.
    assert night_budget.wall_s(COSTS, COHORT, 1, 0.5, 3.0) == pytest.approx(60 + 3000 + 1040)
    # A fast GPU leaves the CPUs deciding.
    assert night_budget.wall_s(COSTS, COHORT, 1, 0.5, 0.1) == pytest.approx(60 + 1450 + 1040)


def test_a_cluster_is_no_faster_than_jobs_are_submitted():
    # 10 nodes: 20,500 / 100 cores = 205 s of work, more than 200 jobs / 10 per s = 20 s.
    assert night_budget.wall_s(COSTS, COHORT, 10, 0.5, submitted=True) == pytest.approx(1305)
    # 1,000 nodes: 2.05 s of work, but submitting the 200 jobs takes 20 s.
    assert night_budget.wall_s(COSTS, COHORT, 1000, 0.5, submitted=True) == pytest.approx(1120)


def test_without_a_gpu_figure_the_gpu_rows_are_not_measured():
    rows = night_budget.budget_rows(COSTS, COHORT, [10], 0.5, None)
    by_layout = {row["layout"]: row for row in rows}
    assert by_layout["one node, one GPU"]["wall_h"] is None
    assert by_layout["SLURM, 10 nodes, a GPU each"]["wall_h"] is None
    # Snakemake starts jobs on its own node in 0.05 CPU s: 20,000 + 200 x 2.05 CPU s.
    assert by_layout["one node, no GPU"]["wall_h"] == pytest.approx((60 + 2041 + 1040) / 3600)
    assert by_layout["SLURM, 10 nodes, no GPU"]["wall_h"] == pytest.approx(1305 / 3600)
    with_gpu = night_budget.budget_rows(COSTS, COHORT, [10], 0.5, 3.0)
    assert all(row["wall_h"] is not None for row in with_gpu)


def test_reads_what_the_throughput_bench_writes():
    timed = {
        stage: {"cpu_s": [cpu, cpu + 2], "wall_s": [2 * cpu, 2 * cpu + 4]}
        for stage, cpu in zip(STAGES, (0.0, 1.0, 2.0, 9.0, 3.0), strict=True)
    }
    timed["segment"] |= {
        "forward_cpu_s": 12.0,
        "forward_wall_s": 14.0,
        "model_load_cpu_s": 0.1,
        "model_load_wall_s": 0.1,
    }
    fixed = {stage: {"cpu_s": 2.0, "wall_s": 3.0} for stage in STAGES}
    figures = throughput.stage_costs(timed, fixed)
    assert figures["total_cpu_s_per_participant"] == pytest.approx(20.0)
    assert figures["total_cpu_s_without_forward"] == pytest.approx(14.0)
    assert figures["target_ratio"] == pytest.approx(20.0 / 8.0)
    assert night_budget.Costs.from_json(figures) == COSTS
