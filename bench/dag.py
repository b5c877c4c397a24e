"""Benchmark planning (a dry run) of the real workflow at biobank scale: shards vs one job
each, and a new release added to a completed run.

Run: ``.venv/bin/python bench/dag.py [--sizes 1000 10000 30000 100000] [--shard-size 25]
[--per-participant-max 30000] [--completed 30000] [--added 1000] [--stub folder|zip]``

For each cohort size it writes a participant sheet whose DICOM paths exist as stubs
(``--stub folder``: an empty folder per participant, or ``zip``: an empty zip file;
planning stats each path but reads nothing) and times ``snakemake -n`` on this
repository's Snakefile, once with participant shards and once with shards of one
participant (the one-job-per-participant layout), in the same run, reporting wall time,
peak memory and the ratio.

Then it makes a completed run of ``--completed`` participants without running anything:
every output the dry run lists is created empty (a folder for the outputs without a
suffix, such as results/cohort/tables), and ``snakemake --touch --forceall`` records
Snakemake's metadata of every job as a real run would, so that the rerun triggers
(params, input, code) are checked too. It times the dry run of that completed run
(nothing to do), appends ``--added`` participants as a new release and times the dry run
that plans them, checking that only the new release's shards are planned.

Targets (issue 7): 100,000 participants planned in under 60 s and 2 GB; adding 1,000
participants to a completed 30,000-participant run plans in under 30 s.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RELEASE_SIZE = 10_000
"""Participants per release of the benchmark's sheets."""

# `snakemake --touch` with the touch executor's pause between jobs (0.1 s, to order the
# mtimes of one job's outputs) removed: the stubs are touched in DAG order anyway.
TOUCH_WITHOUT_PAUSE = """
import sys
import snakemake.executors.touch as touch
touch.Executor.SLEEPING_TIME = 0
from snakemake.cli import main
sys.argv = ["snakemake", *sys.argv[1:]]
main()
"""


@dataclass(frozen=True)
class Plan:
    """One dry run: wall seconds, peak resident MB, jobs planned and its output."""

    seconds: float
    peak_mb: float
    jobs: int
    output: str

    def shards(self) -> set[str]:
        """The shards of the jobs planned."""
        return set(re.findall(r"wildcards: shard=(\S+)", self.output))

    def jobs_by_rule(self) -> Counter:
        """The dry run's job stats, rule -> count (empty when nothing is to be done)."""
        if "Job stats:" not in self.output:
            return Counter()
        table = self.output.split("Job stats:")[1].splitlines()[3:]
        counts = Counter()
        for line in table:
            parts = line.split()
            if len(parts) != 2 or parts[0] == "total":
                break
            counts[parts[0]] = int(parts[1])
        return counts


def sheet_rows(
    folder: Path, first: int, participants: int, stub: str, release: str | None = None
) -> pd.DataFrame:
    """Rows of participants ``first``... in releases of RELEASE_SIZE (or all in ``release``),
    with their DICOM stubs created under ``folder/dicom``: an empty folder, or an empty
    ``.zip`` file, per participant. Planning stats every one (``shard_dicom_inputs``
    leaves out paths that do not exist, which would plan less than a real run)."""
    numbers = range(first, first + participants)
    ids = [f"sub{i:07d}" for i in numbers]
    releases = [release or f"r{1 + i // RELEASE_SIZE}" for i in numbers]
    paths = [f"dicom/{pid}.zip" if stub == "zip" else f"dicom/{pid}" for pid in ids]
    (folder / "dicom").mkdir(parents=True, exist_ok=True)
    for path in paths:
        if stub == "zip":
            (folder / path).touch()
        else:
            (folder / path).mkdir(exist_ok=True)
    return pd.DataFrame({"participant_id": ids, "dicom": paths, "release": releases})


def write_sheet(folder: Path, participants: int, stub: str) -> Path:
    """A sheet of ``participants`` in releases of RELEASE_SIZE, their DICOM stubs made."""
    path = folder / f"sheet_{participants}.tsv"
    sheet_rows(folder, 0, participants, stub).to_csv(path, sep="\t", index=False)
    return path


def write_config(folder: Path, sheet: Path, shard_size: int) -> Path:
    """This repository's config with the sheet, the shard size, an empty phenotype table
    (never read by a dry run) and the model's absolute path (the runs happen in
    ``folder``). A command-line configfile replaces the Snakefile's own, so it is whole."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    phenotypes = folder / "phenotypes.tsv"
    if not phenotypes.exists():
        phenotypes.write_text("participant_id\n")
    config |= {
        "participants": str(sheet),
        "shards": {"size": shard_size},
        "phenotypes": str(phenotypes),
    }
    config["model"]["dir"] = str(REPO / config["model"]["dir"])
    path = folder / f"config_{sheet.stem}_{shard_size}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake_options(folder: Path, config: Path) -> list[str]:
    """Options of every run: the Snakefile, the config, the folder, the metadata database
    (as config/profiles/local uses)."""
    return [
        "--snakefile", str(REPO / "Snakefile"), "--configfile", str(config),
        "--directory", str(folder), "--persistence-backend", "db",
    ]  # fmt: skip


def plan(folder: Path, config: Path) -> Plan:
    """One dry run in a fresh child process."""
    peak_file = folder / "peak_kb.txt"
    # /usr/bin/time reports this one run's peak resident memory (GNU time, %M in KB).
    command = ["/usr/bin/time", "-f", "%M", "-o", str(peak_file), str(BIN / "snakemake")]
    command += ["-n", "--cores", "1", *snakemake_options(folder, config)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"dry run failed:\n{done.stderr[-3000:]}")
    peak_mb = int(peak_file.read_text().split()[-1]) / 1024
    output = done.stdout + done.stderr
    jobs = next(
        (int(line.split()[-1]) for line in output.splitlines() if line.startswith("total")),
        0 if "Nothing to be done" in output else -1,
    )
    return Plan(seconds, peak_mb, jobs, output)


def complete(folder: Path, config: Path, sheet: Path, fresh: Plan) -> int:
    """Make the run that ``fresh`` plans look done: stub outputs, then Snakemake's metadata.

    Returns the number of outputs created. The sheet and the phenotypes are made older
    than every output, as after a real run.
    """
    listed = re.findall(r"^\s+output: (.*)$", fresh.output, flags=re.MULTILINE)
    outputs = {path.strip() for line in listed for path in line.split(",")}
    for name in outputs:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix:
            path.touch()
        else:  # a directory() output (the statistics tables, the figures)
            path.mkdir(exist_ok=True)
    hour_ago = time.time() - 3600
    for old in (sheet, folder / "phenotypes.tsv"):
        os.utime(old, (hour_ago, hour_ago))
    command = [str(BIN / "python"), "-c", TOUCH_WITHOUT_PAUSE, "--touch", "--forceall"]
    command += ["--cores", "256", "--scheduler", "greedy", *snakemake_options(folder, config)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"touch run failed:\n{done.stderr[-3000:]}")
    return len(outputs)


def compare_layouts(
    folder: Path, sizes: list[int], shard_size: int, per_participant_max: int, stub: str
):
    """Print fresh planning time and memory of shards vs one job per participant."""
    header = f"{'participants':>12} {'layout':>16} {'jobs':>8} {'seconds':>8} {'peak MB':>8}"
    print(header + f" {'ratio':>7}")
    for n in sorted(sizes):
        sheet = write_sheet(folder, n, stub)
        sharded = plan(folder, write_config(folder, sheet, shard_size))
        print(f"{n:>12} {'shards':>16} {sharded.jobs:>8} {sharded.seconds:>8.1f} "
              f"{sharded.peak_mb:>8.0f}")  # fmt: skip
        if n <= per_participant_max:
            single = plan(folder, write_config(folder, sheet, 1))
            print(
                f"{n:>12} {'per participant':>16} {single.jobs:>8} {single.seconds:>8.1f}"
                f" {single.peak_mb:>8.0f} {single.seconds / sharded.seconds:>6.1f}x"
            )


def add_a_release(folder: Path, completed: int, added: int, shard_size: int, stub: str) -> None:
    """Print how long planning takes once ``completed`` participants are done, and after
    ``added`` more arrive as a new release; check that only the new shards are planned."""
    folder.mkdir()
    sheet = write_sheet(folder, completed, stub)
    config = write_config(folder, sheet, shard_size)
    fresh = plan(folder, config)
    started = time.perf_counter()
    n_outputs = complete(folder, config, sheet, fresh)
    print(
        f"\ncompleted run of {completed} participants: {fresh.jobs} jobs planned fresh in "
        f"{fresh.seconds:.1f} s; {n_outputs} outputs stubbed and touched in "
        f"{time.perf_counter() - started:.0f} s"
    )
    done = plan(folder, config)
    if done.jobs != 0:
        raise SystemExit(f"the completed run still plans {done.jobs} jobs:\n{done.output[-3000:]}")
    print(f"  dry run, nothing to do: {done.seconds:.1f} s, peak {done.peak_mb:.0f} MB")
    release = f"r{1 + (completed - 1) // RELEASE_SIZE + 1}"
    new_rows = sheet_rows(folder, completed, added, stub, release)
    new_rows.to_csv(sheet, sep="\t", index=False, header=False, mode="a")
    grown = plan(folder, config)
    shards = grown.shards()
    stray = sorted(s for s in shards if not s.startswith(f"{release}-"))
    expected = -(-added // shard_size)
    print(
        f"  {added} participants added as release {release}: {grown.jobs} jobs planned in "
        f"{grown.seconds:.1f} s, peak {grown.peak_mb:.0f} MB; {len(shards)} shards planned "
        f"({expected} expected), {len(stray)} of earlier releases"
    )
    print("  " + ", ".join(f"{rule} {n}" for rule, n in grown.jobs_by_rule().items()))
    if stray or len(shards) != expected:
        raise SystemExit(f"unexpected shards planned: {sorted(shards)[:10]} ...")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10_000, 30_000, 100_000])
    parser.add_argument("--shard-size", type=int, default=25)
    parser.add_argument(
        "--per-participant-max",
        type=int,
        default=30_000,
        help="largest cohort also planned one job per participant (slow by design)",
    )
    parser.add_argument("--completed", type=int, default=30_000, help="0: skip this part")
    parser.add_argument("--added", type=int, default=1000)
    parser.add_argument(
        "--stub", choices=["folder", "zip"], default="folder", help="what each DICOM path is"
    )
    args = parser.parse_args()
    print(
        f"snakemake -n on {REPO / 'Snakefile'}; shard size {args.shard_size}; DICOM paths: "
        f"existing empty {args.stub}s; load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        compare_layouts(folder, args.sizes, args.shard_size, args.per_participant_max, args.stub)
        if args.completed:
            add_a_release(
                folder / "release", args.completed, args.added, args.shard_size, args.stub
            )


if __name__ == "__main__":
    main()
