"""Benchmark throughput: shards against one job each, or each stage's CPU s at full size.

The whole workflow in participant shards against one job per participant, or the CPU
seconds of each stage on full-size participants.

Run: ``.venv/bin/python bench/throughput.py [--participants 50] [--shard-size 25]
[--cores 2]``, or ``.venv/bin/python bench/throughput.py --size full [--participants 2]
[--threads 2] [--json FILE]``

Default (``--size small``): generates one small synthetic UK Biobank cohort (``myoflow
synth --size small``), then runs the whole workflow (``snakemake --cores N``, every stage
from the DICOM inventory to the report) on it twice, each time in a fresh results folder:
once with participant shards and once with shards of one participant (the
one-job-per-participant layout). Prints wall time, jobs run, participants per hour and
the sums over jobs of their wall and CPU seconds (from the rules' benchmark files: the
work, against the wall time that also holds waiting) for both, and the ratio. Issue 7
asks for this figure on 50 small participants. The config is the shipped one, so the
small participants are stitched onto the full-size UK Biobank grid: every stage after the
conversion does full-size work.

``--size full`` (issue 21): generates N full-size UK Biobank participants without
artefacts (``myoflow synth --size full``; 6 stations, 224 x 174 x 370 stitched voxels)
and runs the chain stage by stage in this process, one shard of all N, through each
stage's own shard function with the shipped config (inventory, convert, landmarks,
segment on the CPU with ``--threads`` torch threads, measure). Per stage it prints the
CPU seconds (this process: user + sys of every thread) and wall seconds per participant,
timed between the shard runner's progress lines; the network's forward passes are timed
apart (global forward hooks). Then each stage's command, as its rule runs it, is rerun as
a fresh process on the completed shard (every participant skipped): the fixed cost of one
shard job (Python start, imports, the model's load and check, the tables). Prints the
total per participant, the total without the forward passes, and their ratios to the
issue's targets; ``--json`` writes the figures that ``bench/night_budget.py`` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from collections.abc import Callable
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


# ------------------------------------------------------------- full size, stage by stage

STAGES = ("inventory", "convert", "landmarks", "segment", "measure")
TARGET_CPU_S = 8.0
"""Issue 21: DICOM -> metrics in at most 8 CPU seconds per full-size participant, with
the segmentation on the CPU ..."""
TARGET_CPU_S_WITHOUT_FORWARD = 4.0
"""... and at most 4 CPU seconds without the network's forward passes."""
NO_ARTEFACTS = "swap=0,partial_swap=0,missing_station=0,missing_channel=0"
SHARD = "r1-0000"


def synthesise_full(folder: Path, participants: int, seed: int) -> Path:
    """Full-size synthetic UK Biobank participants without artefacts (so every one goes
    the whole way); returns the participant sheet."""
    command = [str(BIN / "myoflow"), "synth", "--out", str(folder), "--size", "full"]
    command += ["--participants", str(participants), "--protocol", "ukbb", "--seed", str(seed)]
    command += ["--artefacts", NO_ARTEFACTS]
    subprocess.run(command, check=True, capture_output=True)
    return folder / "participants.tsv"


def shipped_config() -> dict:
    """config/config.yaml, with the model folder made absolute."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["model"]["dir"] = str(REPO / config["model"]["dir"])
    return config


def _now() -> tuple[float, float]:
    """(CPU seconds of this process: user + sys of all its threads, wall seconds)."""
    return time.process_time(), time.perf_counter()


class ForwardClock:
    """CPU and wall seconds spent inside outermost ``nn.Module`` calls (the networks'
    forward passes), counted by global forward hooks while the clock is entered."""

    def __init__(self) -> None:
        self.cpu_s = self.wall_s = 0.0
        self._depth = 0
        self._started = (0.0, 0.0)
        self._handles: list = []

    def __enter__(self) -> ForwardClock:
        from torch.nn.modules import module

        self._handles = [
            module.register_module_forward_pre_hook(self._enter),
            module.register_module_forward_hook(self._leave),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _enter(self, *_: object) -> None:
        if self._depth == 0:
            self._started = _now()
        self._depth += 1

    def _leave(self, *_: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            cpu, wall = _now()
            self.cpu_s += cpu - self._started[0]
            self.wall_s += wall - self._started[1]


def time_shard(stage: str, run: Callable[[Callable[[str], None]], pd.DataFrame]) -> dict:
    """Run one stage's shard function (``run(log)``, returning the shard table); the CPU
    and wall seconds of each participant, between the shard runner's progress lines (the
    first also holds the few milliseconds of the shard's setup).

    Raises:
        SystemExit: a participant was excluded, so the figures would not be a whole chain.
    """
    marks = [_now()]

    def log(line: str) -> None:
        if line.startswith("["):  # "[i/n] participant: outcome (s, ETA)", one each
            marks.append(_now())

    table = run(log)
    if not (table["status"] == "ok").all():
        bad = table.loc[table["status"] != "ok", ["participant_id", "reason", "detail"]]
        raise SystemExit(f"{stage}: participants excluded:\n{bad.to_string()}")
    pairs = list(zip(marks, marks[1:], strict=False))
    return {
        "table": table,
        "cpu_s": [end[0] - start[0] for start, end in pairs],
        "wall_s": [end[1] - start[1] for start, end in pairs],
    }


def run_chain(sheet: Path, results: Path, config: dict, threads: int) -> dict[str, dict]:
    """Every per-participant stage on one shard of the whole sheet, in this process, each
    through its shard function; per stage the seconds of :func:`time_shard`, and for the
    segmentation the model's load and the forward passes apart."""
    # What the stages import lazily, imported now so the first participant does not pay.
    import nibabel  # noqa: F401
    import pydicom  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import torch

    from myoflow.commands import shard_members_of
    from myoflow.core.io import write_tsv
    from myoflow.ingest.convert import convert_shard
    from myoflow.ingest.inventory import inventory_shard
    from myoflow.ingest.limits import DeliveryLimits
    from myoflow.ingest.settings import IngestSettings
    from myoflow.landmarks.stage import landmarks_shard
    from myoflow.measure.qc import QcSettings
    from myoflow.measure.stage import measure_shard
    from myoflow.segment.stage import load_segmenter, segment_shard

    size = len(pd.read_csv(sheet, sep="\t"))
    members = shard_members_of(Namespace(sheet=sheet, shard_size=size, shard=SHARD))
    out, tables = results / "participants", results / "shards" / SHARD
    ingest = IngestSettings.from_config(config["ingest"])
    limits = DeliveryLimits.from_config(config["ingest"].get("limits", {}))
    qc = QcSettings.from_config(config.get("qc", {}))
    torch.set_num_threads(threads)
    timed: dict[str, dict] = {}
    timed["inventory"] = time_shard(
        "inventory", lambda log: inventory_shard(members, out, log=log, limits=limits)
    )
    write_tsv(tables / "inventory.tsv", timed["inventory"]["table"])
    timed["convert"] = time_shard(
        "convert",
        lambda log: convert_shard(members, out, timed["inventory"]["table"], ingest, log=log),
    )
    write_tsv(tables / "convert.tsv", timed["convert"]["table"])
    timed["landmarks"] = time_shard(
        "landmarks",
        lambda log: landmarks_shard(
            members,
            out,
            timed["convert"]["table"],
            log=log,
            min_confidence=config["landmarks"]["min_confidence"],
        ),
    )
    write_tsv(tables / "landmarks.tsv", timed["landmarks"]["table"])
    started = _now()
    segmenter = load_segmenter(config["model"]["dir"], torch.device("cpu"))
    loaded = _now()
    with ForwardClock() as forward:
        timed["segment"] = time_shard(
            "segment",
            lambda log: segment_shard(
                members,
                out,
                timed["landmarks"]["table"],
                segmenter,
                config["model"]["batch_size"],
                log=log,
            ),
        )
    timed["segment"] |= {
        "model_load_cpu_s": loaded[0] - started[0],
        "model_load_wall_s": loaded[1] - started[1],
        "forward_cpu_s": forward.cpu_s,
        "forward_wall_s": forward.wall_s,
    }
    write_tsv(tables / "segment.tsv", timed["segment"]["table"])
    timed["measure"] = time_shard(
        "measure",
        lambda log: (
            measure_shard(
                members, out, timed["landmarks"]["table"], timed["segment"]["table"], qc, log=log
            ).status
        ),
    )
    for stage in timed.values():
        del stage["table"]
    return timed


def stage_command(stage: str, sheet: Path, results: Path, config: dict, threads: int) -> list[str]:
    """``myoflow <stage>`` on the shard of the whole sheet, as its rule writes it
    (rules/*.smk), writing its tables under ``results/rerun``."""
    size = len(pd.read_csv(sheet, sep="\t"))
    tables, rerun = results / "shards" / SHARD, results / "rerun"
    compact = {"sort_keys": True, "separators": (",", ":")}
    card = Path(config["model"]["dir"]) / "model_card.json"
    extra = {
        "inventory": ["--limits", json.dumps(config["ingest"].get("limits", {}), **compact)],
        "convert": ["--inventory", tables / "inventory.tsv"]
        + ["--ingest", json.dumps(config["ingest"], **compact)],
        "landmarks": ["--convert", tables / "convert.tsv"]
        + ["--min-confidence", config["landmarks"]["min_confidence"]],
        "segment": ["--landmarks", tables / "landmarks.tsv", "--model-card", card]
        + ["--device", "cpu", "--batch-size", config["model"]["batch_size"]]
        + ["--threads", threads],
        "measure": ["--landmarks", tables / "landmarks.tsv", "--segment", tables / "segment.tsv"]
        + ["--qc", json.dumps(config.get("qc", {}), **compact)]
        + ["--metrics-table", rerun / "metrics.tsv", "--qc-table", rerun / "qc.tsv"],
    }[stage]
    command = [BIN / "myoflow", stage, "--sheet", sheet, "--shard", SHARD, "--shard-size", size]
    command += ["--participants-dir", results / "participants", "--out", rerun / f"{stage}.tsv"]
    return [str(part) for part in command + extra]


def job_fixed_seconds(command: list[str]) -> dict[str, float]:
    """CPU and wall seconds of one command run as a child process (it must succeed)."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or "skipped" not in done.stdout:
        raise SystemExit(
            f"{' '.join(command)} did not skip its shard:\n{done.stdout[-2000:]}"
            f"{done.stderr[-2000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_s": cpu, "wall_s": wall}


def stage_costs(timed: dict[str, dict], fixed: dict[str, dict]) -> dict:
    """The figures: per stage the mean CPU and wall seconds per participant and a shard
    job's fixed cost; the forward passes per participant; the totals and target ratios."""
    n = len(timed["inventory"]["cpu_s"])
    stages = {
        stage: {
            "cpu_s_per_participant": sum(t["cpu_s"]) / n,
            "wall_s_per_participant": sum(t["wall_s"]) / n,
            "job_fixed_cpu_s": fixed[stage]["cpu_s"],
            "job_fixed_wall_s": fixed[stage]["wall_s"],
        }
        for stage, t in timed.items()
    }
    segment = timed["segment"]
    forward = {
        "cpu_s_per_participant": segment["forward_cpu_s"] / n,
        "wall_s_per_participant": segment["forward_wall_s"] / n,
    }
    total = sum(s["cpu_s_per_participant"] for s in stages.values())
    without_forward = total - forward["cpu_s_per_participant"]
    return {
        "participants": n,
        "stages": stages,
        "forward": forward,
        "model_load": {
            "cpu_s": segment["model_load_cpu_s"],
            "wall_s": segment["model_load_wall_s"],
        },
        "total_cpu_s_per_participant": total,
        "total_wall_s_per_participant": sum(s["wall_s_per_participant"] for s in stages.values()),
        "total_cpu_s_without_forward": without_forward,
        "target_ratio": total / TARGET_CPU_S,
        "target_ratio_without_forward": without_forward / TARGET_CPU_S_WITHOUT_FORWARD,
        "per_participant": {
            stage: {k: t[k] for k in ("cpu_s", "wall_s")} for stage, t in timed.items()
        },
    }


def print_costs(costs: dict, threads: int) -> None:
    """The table of :func:`stage_costs`."""
    print(
        f"{'stage':<22} {'CPU s/participant':>18} {'wall s/participant':>19}"
        f" {'job fixed CPU s':>16} {'job fixed wall s':>17}"
    )
    for stage, s in costs["stages"].items():
        print(
            f"{stage:<22} {s['cpu_s_per_participant']:>18.2f} {s['wall_s_per_participant']:>19.2f}"
            f" {s['job_fixed_cpu_s']:>16.2f} {s['job_fixed_wall_s']:>17.2f}"
        )
        if stage == "segment":
            f = costs["forward"]
            print(
                f"{'  of which forward':<22} {f['cpu_s_per_participant']:>18.2f}"
                f" {f['wall_s_per_participant']:>19.2f}"
            )
    print(
        f"{'total':<22} {costs['total_cpu_s_per_participant']:>18.2f}"
        f" {costs['total_wall_s_per_participant']:>19.2f}"
    )
    print(f"{'total without forward':<22} {costs['total_cpu_s_without_forward']:>18.2f}")
    load = costs["model_load"]
    print(
        f"model load (once per segmentation job, in its fixed cost): {load['cpu_s']:.2f} CPU s,"
        f" {load['wall_s']:.2f} s; torch threads {threads}"
    )
    print(
        f"target {TARGET_CPU_S:g} CPU s per participant: ratio"
        f" {costs['target_ratio']:.2f}; target {TARGET_CPU_S_WITHOUT_FORWARD:g} without the"
        f" forward pass: ratio {costs['target_ratio_without_forward']:.2f} (<= 1 meets it)"
    )


def full_size(args: argparse.Namespace) -> dict:
    """The ``--size full`` mode: synthesise, run the chain, rerun each command; returns
    the figures after printing them."""
    config = shipped_config()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        sheet = synthesise_full(folder / "cohort", args.participants, args.seed)
        print(
            f"{args.participants} full-size synthetic UK Biobank participants in"
            f" {time.perf_counter() - started:.0f} s; the chain in one shard, this process"
        )
        results = folder / "results"
        timed = run_chain(sheet, results, config, args.threads)
        fixed = {
            stage: job_fixed_seconds(stage_command(stage, sheet, results, config, args.threads))
            for stage in STAGES
        }
    costs = stage_costs(timed, fixed) | {"threads": args.threads, "seed": args.seed}
    print_costs(costs, args.threads)
    return costs


def shards_against_single(args: argparse.Namespace) -> dict:
    """The default mode: the whole workflow in shards and one job per participant."""
    participants = args.participants
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        synthesise(folder / "cohort", participants, args.seed)
        print(
            f"{participants} small synthetic participants in "
            f"{time.perf_counter() - started:.0f} s; whole workflow, --cores {args.cores}"
        )
        results = {}
        for layout, size in (("shards", args.shard_size), ("per participant", 1)):
            run = run_workflow(folder / f"run_{size}", folder / "cohort", size, args.cores)
            run["participants_per_hour"] = participants / run["seconds"] * 3600
            run["wall_seconds_per_participant"] = run["seconds"] / participants
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
    return results | {"ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        choices=("small", "full"),
        default="small",
        help="small: shards against one job per participant (the whole workflow); "
        "full: CPU seconds per stage on full-size participants",
    )
    parser.add_argument("--participants", type=int, help="participants (default 50 small, 2 full)")
    parser.add_argument("--shard-size", type=int, default=25)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads of the segmentation (--size full)"
    )
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--work", type=Path, help="folder for the temporary data (default: TMPDIR)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.participants is None:
        args.participants = 2 if args.size == "full" else 50
    figures = full_size(args) if args.size == "full" else shards_against_single(args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
