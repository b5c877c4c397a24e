"""Benchmark planning (a dry run) of the real workflow at biobank scale: shards vs one job each.

Run: ``.venv/bin/python bench/dag.py [--sizes 1000 10000 30000 100000] [--shard-size 25]
[--per-participant-max 30000]``

For each cohort size it writes a participant sheet with stub DICOM paths (nothing is read
at planning time) and times ``snakemake -n`` on this repository's Snakefile, once with
participant shards and once with shards of one participant (the one-job-per-participant
layout), in the same run, reporting wall time, peak memory and the ratio. Targets
(issue 7): 100,000 participants planned in under 60 s and 2 GB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def write_sheet(folder: Path, participants: int) -> Path:
    """A sheet of ``participants`` in releases of 10,000 (DICOM paths need not exist)."""
    ids = [f"sub{i:07d}" for i in range(participants)]
    sheet = pd.DataFrame(
        {
            "participant_id": ids,
            "dicom": [f"dicom/{pid}" for pid in ids],
            "release": [f"r{1 + i // 10_000}" for i in range(participants)],
        }
    )
    path = folder / f"sheet_{participants}.tsv"
    sheet.to_csv(path, sep="\t", index=False)
    return path


def plan(folder: Path, sheet: Path, shard_size: int) -> tuple[float, float, int]:
    """Seconds, peak MB and job count of one dry run (in a fresh child process)."""
    config = folder / f"config_{sheet.stem}_{shard_size}.yaml"
    config.write_text(f"participants: {sheet}\nshards:\n  size: {shard_size}\n")
    peak_file = folder / "peak_kb.txt"
    # /usr/bin/time reports this one run's peak resident memory (GNU time, %M in KB).
    command = ["/usr/bin/time", "-f", "%M", "-o", str(peak_file), str(SNAKEMAKE), "-n"]
    command += ["--cores", "1", "--snakefile", str(REPO / "Snakefile")]
    command += ["--configfile", str(config), "--directory", str(folder)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"dry run failed:\n{done.stderr[-3000:]}")
    peak_mb = int(peak_file.read_text().split()[-1]) / 1024
    jobs = next(
        (int(line.split()[-1]) for line in done.stdout.splitlines() if line.startswith("total")),
        -1,
    )
    return seconds, peak_mb, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 30_000, 100_000])
    parser.add_argument("--shard-size", type=int, default=25)
    parser.add_argument(
        "--per-participant-max",
        type=int,
        default=30_000,
        help="largest cohort also planned one job per participant (slow by design)",
    )
    args = parser.parse_args()
    print(f"snakemake -n on {REPO / 'Snakefile'}; shard size {args.shard_size}")
    header = f"{'participants':>12} {'layout':>16} {'jobs':>8} {'seconds':>8} {'peak MB':>8}"
    print(header + f" {'ratio':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for n in sorted(args.sizes):
            sheet = write_sheet(folder, n)
            sharded = plan(folder, sheet, args.shard_size)
            print(f"{n:>12} {'shards':>16} {sharded[2]:>8} {sharded[0]:>8.1f} {sharded[1]:>8.0f}")
            if n <= args.per_participant_max:
                single = plan(folder, sheet, 1)
                ratio = single[0] / sharded[0]
                print(
                    f"{n:>12} {'per participant':>16} {single[2]:>8} {single[0]:>8.1f}"
                    f" {single[1]:>8.0f} {ratio:>6.1f}x"
                )


if __name__ == "__main__":
    main()
