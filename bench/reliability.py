"""Reliability of the whole workflow on a larger synthetic cohort (issue 8).

Run: ``.venv/bin/python bench/reliability.py [--participants 70] [--bad-inputs 0.2]
[--shard-size 10] [--kills 4] [--seed 2026] [--kill-seed N] [--second-run] [--keep DIR]``

The checks of ``tests/test_reliability.py`` (imported from there, so both run the same
code) on a cohort where every bad-input case of ``myoflow synth --bad-inputs`` appears
(14 cases: 70 participants at 20 %):

1. ``myoflow synth`` a clean small UK Biobank cohort and the same seed with bad inputs;
2. a clean run of the whole workflow (DICOM to results/cohort/report.html), timed;
3. a run over the bad cohort: nobody lost, each damaged participant excluded with the
   reason its case implies (or, for ignored junk, as when clean), everyone else with the
   clean run's metrics.json and masks, no Traceback in any log; and each unsafe or
   repeated participant id of ``participants_unsafe.tsv`` refused at start-up, naming
   its row;
4. the clean cohort again in a new folder, killed with SIGKILL at ``--kills`` random
   moments (``--kill-seed``, printed) and resumed each time until done: its tables and
   masks must equal the clean run's, every output must read whole;
5. with ``--second-run``, one more uninterrupted clean run (determinism without kills);
6. every file the runs wrote scanned for the identifiers planted in the DICOM.

Prints the table of docs/reliability.md. Random kill moments: sorted uniform times within
the clean run's duration, each invocation killed after the gap to the next one (a rerun
skips what is done, so the kills spread over the stages).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_reliability import (  # noqa: E402  (the test module is the shared code)
    EXPECTED_OUTCOMES,
    Kill,
    KillPoint,
    after_seconds,
    cohort_tables,
    differences,
    has_clean_outputs,
    hidden_by_earlier_exclusion,
    lost_participants,
    outcomes,
    planted_identifiers,
    prepare_workdir,
    run_snakemake,
    run_with_kills,
    run_workflow,
    scan_run,
    synthesise,
    temporaries,
    tracebacks,
    unreadable_outputs,
    wrong_outcomes,
)

from myoflow.core.io import read_tsv  # noqa: E402


def timed(what: str, action):
    """Run ``action()``, print how long it took, return its result and the seconds."""
    started = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - started
    print(f"  {what}: {seconds:.0f} s", flush=True)
    return result, seconds


def model_digest() -> str:
    """The configured model's card as text (its weights' sha256 and its thresholds): the
    runs link the repository's resources/, so a model replaced or recalibrated during the
    bench would make the runs disagree."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return (REPO / config["model"]["dir"] / "model_card.json").read_text()


def cohort(folder: Path, participants: int, seed: int, bad_inputs: float = 0.0) -> Path:
    """``myoflow synth`` into ``folder``, or the cohort already there when its manifest
    says it was made with these settings (``--keep`` a folder to rerun cheaply)."""
    manifest = folder / "manifest.json"
    if manifest.exists():
        made = json.loads(manifest.read_text())
        wanted = {"participants": participants, "seed": seed, "bad_inputs": bad_inputs}
        if {k: made.get(k) for k in wanted} == wanted and made.get("size") == "small":
            print(f"  reusing {folder}", flush=True)
            return folder
    shutil.rmtree(folder, ignore_errors=True)
    return synthesise(folder, participants, seed, bad_inputs)


def fresh(folder: Path, cohort_folder: Path, shard_size: int) -> Path:
    """A new workflow folder for ``cohort_folder`` (an old one at ``folder`` is removed)."""
    shutil.rmtree(folder, ignore_errors=True)
    return prepare_workdir(folder, cohort_folder, shard_size)


def refused_rows(cohort: Path, workdir: Path, scratch: Path) -> tuple[int, int]:
    """Each extra row of participants_unsafe.tsv appended alone to the sheet: how many of
    them stop a dry run with a message naming the row and no traceback, of how many."""
    sheet = read_tsv(cohort / "participants.tsv")
    unsafe = pd.read_csv(cohort / "participants_unsafe.tsv", sep="\t", dtype=str)
    extra = unsafe.iloc[len(sheet) :]
    refused = 0
    for n, (_, row) in enumerate(extra.iterrows()):
        path = scratch / f"unsafe_{n}.tsv"
        pd.concat([sheet, row.to_frame().T]).to_csv(path, sep="\t", index=False)
        code, output = run_snakemake(workdir, "-n", "--config", f"participants={path}")
        named = f"(line {len(sheet) + 2}): participant_id {row['participant_id']!r}" in output
        refused += code != 0 and named and "Traceback" not in output
    return refused, len(extra)


def random_kill_points(count: int, duration_s: float, seed: int) -> list[KillPoint]:
    """``count`` kills at sorted uniform moments of a run lasting ``duration_s``: each
    invocation is killed after the gap since the previous moment."""
    rng = random.Random(seed)
    moments = sorted(rng.uniform(0.02, 0.95) * duration_s for _ in range(count))
    gaps = [b - a for a, b in zip([0.0, *moments], moments, strict=False)]
    return [
        KillPoint(f"random kill {n + 1} after {gap:.1f} s", after_seconds(gap))
        for n, gap in enumerate(gaps)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=70)
    parser.add_argument("--bad-inputs", type=float, default=0.2)
    parser.add_argument("--shard-size", type=int, default=10)
    parser.add_argument("--kills", type=int, default=4, help="random SIGKILL/rerun cycles")
    parser.add_argument("--seed", type=int, default=2026, help="cohort seed")
    parser.add_argument("--kill-seed", type=int, default=None, help="default: drawn, printed")
    parser.add_argument("--second-run", action="store_true", help="an uninterrupted 2nd run")
    parser.add_argument(
        "--keep", type=Path, help="work here and keep it (default: a temporary folder)"
    )
    args = parser.parse_args()
    kill_seed = (
        args.kill_seed if args.kill_seed is not None else random.SystemRandom().randrange(10**6)
    )
    root = args.keep or Path(tempfile.mkdtemp(prefix="myoflow-reliability-"))
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"{args.participants} small UK Biobank participants, seed {args.seed}, "
        f"bad inputs {args.bad_inputs:g}, shards of {args.shard_size}, kill seed {kill_seed}; "
        f"in {root}",
        flush=True,
    )
    model = model_digest()
    try:
        table = run_checks(args, kill_seed, root)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    if model_digest() != model:
        table.append(("warning", "the model in resources/ changed during the bench: rerun it"))
    print("\n| check | result |\n|---|---|")
    for check, result in table:
        print(f"| {check} | {result} |")


@dataclass(frozen=True)
class Runs:
    """The cohorts and workflow folders of one bench."""

    clean: Path
    bad: Path
    clean_run: Path
    bad_run: Path
    killed_run: Path
    second_run: Path | None
    kills: list[Kill]
    refused: tuple[int, int]


def run_checks(args: argparse.Namespace, kill_seed: int, root: Path) -> list[tuple[str, str]]:
    """Steps 1-6 of the module docstring; the table rows."""
    runs = make_runs(args, kill_seed, root)
    return outcome_rows(runs) + scan_rows(runs) + kill_rows(runs, kill_seed)


def make_runs(args: argparse.Namespace, kill_seed: int, root: Path) -> Runs:
    """Synthesise both cohorts and run the workflow on them (steps 1-5)."""
    n, size = args.participants, args.shard_size
    clean, _ = timed("synth (clean)", lambda: cohort(root / "clean", n, args.seed))
    bad, _ = timed(
        "synth (bad inputs)", lambda: cohort(root / "bad", n, args.seed, args.bad_inputs)
    )
    clean_run = fresh(root / "run_clean", clean, size)
    _, duration = timed("clean run", lambda: run_workflow(clean_run))
    bad_run = fresh(root / "run_bad", bad, size)
    timed("bad-input run", lambda: run_workflow(bad_run))
    refused, _ = timed("unsafe sheets", lambda: refused_rows(bad, bad_run, root))
    killed_run = fresh(root / "run_killed", clean, size)
    points = random_kill_points(args.kills, duration, kill_seed)
    (kills, _), _ = timed("killed run", lambda: run_with_kills(killed_run, points))
    for kill in kills:
        state = "killed" if kill.killed else "finished before"
        print(
            f"    {kill.point}: {state} at {kill.seconds:.1f} s;"
            f" {len(kill.temporaries)} temporary files present"
        )
    second_run = None
    if args.second_run:
        second_run = fresh(root / "run_second", clean, size)
        timed("second clean run", lambda: run_workflow(second_run))
    return Runs(clean, bad, clean_run, bad_run, killed_run, second_run, kills, refused)


def outcome_rows(runs: Runs) -> list[tuple[str, str]]:
    """Bad-input cases, lost participants, outcomes and the other participants' outputs."""
    cases = read_tsv(runs.bad / "bad_inputs.tsv")
    damaged = dict(zip(cases["participant_id"], cases["case"], strict=True))
    bad, clean = outcomes(runs.bad_run), outcomes(runs.clean_run)
    wrong = wrong_outcomes(cases, bad, clean)
    hidden = [f"{p} ({c})" for p, c in damaged.items() if hidden_by_earlier_exclusion(c, clean[p])]
    others = [p for p in sorted(bad) if has_clean_outputs(damaged.get(p))]
    differing = differences(runs.bad_run, runs.clean_run, others)
    differing += [f"{p}: outcome" for p in others if p not in damaged and bad[p] != clean[p]]
    for line in wrong + differing:
        print(f"    {line}")
    n = len(bad)
    refused, unsafe = runs.refused
    lost = lost_participants(runs.bad, runs.bad_run)
    return [
        (
            "bad-input cases tried",
            f"{cases['case'].nunique()} of {len(EXPECTED_OUTCOMES)} cases on {len(cases)} "
            f"participants ({len(cases) / n:.0%} of {n}); unsafe or repeated ids refused at "
            f"start-up naming the row: {refused} of {unsafe}",
        ),
        ("participants lost", f"{len(lost)} of {n}"),
        (
            "damaged participants with another outcome than their case's",
            f"{len(wrong)} of {len(cases)}"
            + (
                f" ({len(hidden)} seen only as the clean run's earlier exclusion: "
                f"{', '.join(hidden)})"
                if hidden
                else ""
            ),
        ),
        (
            "other participants whose outputs differ from the clean run's",
            f"{len(differing)} of {len(others)}",
        ),
    ]


def scan_rows(runs: Runs) -> list[tuple[str, str]]:
    """The identifier scan and the tracebacks, over every run."""
    folders = [runs.clean_run, runs.bad_run, runs.killed_run, runs.second_run]
    folders = [f for f in folders if f is not None]
    identifiers = planted_identifiers([runs.clean, runs.bad])
    scans, _ = timed("identifier scan", lambda: [scan_run(f, identifiers) for f in folders])
    hits = [hit for scan in scans for hit in scan.hits]
    for hit in hits[:20]:
        print(f"    leak: {hit}")
    planted = len(identifiers.text) + len(identifiers.numbers)
    files = sum(len(scan.files) for scan in scans)
    with_traceback = [log for f in folders for log in tracebacks(f)]
    return [
        (
            "identifiers leaked",
            f"{len(hits)} ({planted} planted strings; {files} files of {len(folders)} runs)",
        ),
        ("logs holding a Traceback", f"{len(with_traceback)}"),
    ]


def kill_rows(runs: Runs, kill_seed: int) -> list[tuple[str, str]]:
    """Kill/rerun cycles, what they left, and determinism."""
    sheet = read_tsv(runs.clean / "participants.tsv")["participant_id"].tolist()
    reference = cohort_tables(runs.clean_run)
    rows = []
    compared = {"killed run": runs.killed_run, "second run": runs.second_run}
    diffs = {}
    for name, folder in compared.items():
        if folder is None:
            continue
        tables = cohort_tables(folder)
        diffs[name] = sorted(
            k for k in reference.keys() | tables.keys() if reference.get(k) != tables.get(k)
        )
        diffs[name] += differences(runs.clean_run, folder, sheet)
        for line in diffs[name]:
            print(f"    {name}: {line} differs")
    unreadable = unreadable_outputs(runs.killed_run)
    left = temporaries(runs.killed_run)
    for path in left:
        print(f"    left by a kill: {path.relative_to(runs.killed_run)}")
    killed = sum(k.killed for k in runs.kills)
    survived = killed if not diffs["killed run"] and not unreadable else 0
    rows.append(
        (
            "kill/rerun cycles survived",
            f"{survived} of {killed} (kill seed {kill_seed}; {len(runs.kills) - killed} runs "
            f"ended before their kill); final tables and masks equal the clean run's: "
            f"{'yes' if not diffs['killed run'] else 'NO'}",
        )
    )
    rows.append(("outputs unreadable after the kills", f"{len(unreadable)}"))
    landed = sum(bool(k.temporaries) for k in runs.kills)
    rows.append(
        ("temporary files left by the kills", f"{len(left)} ({landed} kills landed mid-write)")
    )
    name = "second run" if runs.second_run is not None else "killed run"
    verdict = "identical" if not diffs[name] else f"{len(diffs[name])} differences"
    rows.append(
        (
            f"determinism (clean run vs {name})",
            f"{verdict}: {len(reference)} cohort tables byte for byte, masks and metrics.json "
            f"of {len(sheet)} participants",
        )
    )
    return rows


if __name__ == "__main__":
    main()
