"""Benchmark the cohort end of the workflow at biobank scale: gather, statistics, figures,
report, through the commands the rules call (``myoflow gather``, ``analyse``, ``plot``,
``report``), run in this process one after another; the start-up of one fresh ``myoflow``
process (interpreter and imports, paid once by each rule) is timed apart.

Run: ``.venv/bin/python bench/cohort.py [--participants 100000] [--protocol ukbb] [--keep DIR]``

Setup (timed, not part of the total): a truth-only synthetic cohort (``myoflow synth
--truth-only``) stands in for the pipeline's outputs, written in the shard tables' own
formats for shards of 25:

- ``measure.tsv`` per shard: every participant, 1 % excluded at ingestion (inventory or
  convert), 0.5 % at landmarks, 0.5 % at segmentation (carried forward, as the stages do);
- ``metrics.tsv``: every key of :func:`myoflow.measure.metrics.participant_metrics`, from
  ``truth.tsv`` where the names match (the rest: plausible stand-ins), floats at full
  precision, two 100-bin CSA profiles as JSON list text (the synthetic muscle's profile
  shape times each participant's maximum CSA, 3 % noise per bin);
- ``qc.tsv``: fail where the truth planted a fat-water swap, else pass;
- manual volumes and Dice for a stratified sample of 200 (manual annotations).

Target (issue 6): gather + statistics + figures + report in under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from myoflow.cohort.stats import sampling
from myoflow.cohort.stats.groups import UKBB_AGE_EDGES, age_groups
from myoflow.core.io import read_tsv, write_tsv
from myoflow.core.labels import LABELS
from myoflow.core.shards import assign_shards
from myoflow.measure.metrics import participant_metrics
from myoflow.synth.cohort import CohortSpec, generate_cohort
from myoflow.synth.psoas_profile import relative_csa

TARGET_S = 60.0
BINS = 100
SHARD_SIZE = 25
MYOFLOW = Path(sys.executable).parent / "myoflow"


def metric_keys() -> list[str]:
    """Every key of a metrics record, in the record's order (from a tiny label volume)."""
    labels = np.zeros((24, 8, 6), dtype=np.int16)
    for value in LABELS.values():
        labels[2 * value : 2 * value + 2, 2:6, 1:5] = value
    return list(participant_metrics(labels, np.diag([2.0, 2.0, 3.0, 1.0])))


def _cells(values: np.ndarray) -> list[str]:
    """Cells as ``write_tsv`` writes them: full-precision floats, empty for missing."""
    if values.dtype == bool:
        return ["True" if v else "False" for v in values]
    if np.issubdtype(values.dtype, np.integer):
        return [str(v) for v in values.tolist()]
    return ["" if v != v else repr(v) for v in values.astype(float).tolist()]


def _profiles(maximum: np.ndarray, rng: np.random.Generator) -> list[str]:
    shape = relative_csa((np.arange(BINS) + 0.5) / BINS)
    csa = maximum[:, None] * shape * (1.0 + 0.03 * rng.standard_normal((len(maximum), BINS)))
    return ["[" + ", ".join(map(repr, row)) + "]" for row in csa.tolist()]


def stand_in_metrics(truth: pd.DataFrame, seed: int = 1) -> dict[str, list[str]]:
    """Column -> cells of metrics.tsv: truth values where they exist, stand-ins elsewhere."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    columns: dict[str, list[str]] = {"participant_id": truth["participant_id"].tolist()}
    for key in metric_keys():
        if key.startswith("psoas_csa_profile_"):
            side = key.rsplit("_", 1)[1]
            columns[key] = _profiles(truth[f"psoas_max_csa_{side}_cm2"].to_numpy(), rng)
        elif key == "imi_ml_m2":
            columns[key] = [""] * n  # the measure stage does not know height
        elif key in truth.columns:
            columns[key] = _cells(truth[key].to_numpy())
        elif key.startswith(("n_voxels_", "n_components_")):
            columns[key] = _cells(rng.integers(1, 40_000, n))
        elif key.startswith(("touches_", "csa_axial")) or key.endswith("_eroded"):
            columns[key] = _cells(rng.random(n) < (0.99 if key.startswith("csa") else 0.001))
        else:
            columns[key] = _cells(rng.uniform(0.0, 100.0, n))
    return columns


def stand_in_steps(sheet: pd.DataFrame, seed: int = 2) -> pd.DataFrame:
    """measure.tsv rows: ok, or excluded at an earlier step (carried forward)."""
    rng = np.random.default_rng(seed)
    u = rng.random(len(sheet))
    step = np.select(
        [u < 0.005, u < 0.01, u < 0.015, u < 0.02],
        ["inventory", "convert", "landmarks", "segment"],
        "",
    )
    reason = pd.Series(step).map(
        {
            "inventory": "no_dicom",
            "convert": "missing_station",
            "landmarks": "hip_not_found",
            "segment": "empty_mask",
        }
    )
    return pd.DataFrame(
        {
            "participant_id": sheet["participant_id"],
            "shard": sheet["shard"],
            "status": np.where(step == "", "ok", "excluded"),
            "stage": step,
            "reason": reason.fillna("").to_numpy(),
            "detail": np.where(step == "", "", "stand-in exclusion"),
        }
    )


def _lines(table: pd.DataFrame) -> tuple[str, np.ndarray]:
    """(header line, data lines) of ``table`` as ``write_tsv`` writes it."""
    text = table.to_csv(sep="\t", index=False, lineterminator="\n").split("\n")[:-1]
    return text[0] + "\n", np.array([line + "\n" for line in text[1:]])


def write_shards(folder: Path, sheet: pd.DataFrame, truth: pd.DataFrame) -> int:
    """Write every shard's measure.tsv, metrics.tsv and qc.tsv; return the shard count."""
    steps = stand_in_steps(sheet)
    measured = steps["status"] == "ok"
    metrics = stand_in_metrics(
        truth.set_index("participant_id").loc[steps["participant_id"]].reset_index()
    )
    swap = truth.set_index("participant_id").loc[steps["participant_id"], "artefacts"]
    swapped = swap.astype(str).str.contains("swap").to_numpy()
    qc = pd.DataFrame(
        {
            "participant_id": steps["participant_id"],
            "qc_status": np.where(swapped, "fail", "pass"),
            "qc_reason": np.where(swapped, "fat_water_swap_station_3: swapped", ""),
            "qc_flags": np.where(swapped, '[{"name": "fat_water_swap_station_3"}]', "[]"),
        }
    )
    tables = {
        "measure.tsv": _lines(steps),
        "metrics.tsv": (
            "\t".join(metrics) + "\n",
            np.array(["\t".join(cells) + "\n" for cells in zip(*metrics.values(), strict=True)]),
        ),
        "qc.tsv": _lines(qc),
    }
    for shard, rows in steps.groupby("shard", sort=True).indices.items():
        out = folder / shard
        out.mkdir(parents=True, exist_ok=True)
        measured_rows = rows[measured.to_numpy()[rows]]
        for name, (header, lines) in tables.items():
            chosen = rows if name == "measure.tsv" else measured_rows
            (out / name).write_text(header + "".join(lines[chosen]))
    return steps["shard"].nunique()


def stand_in_annotations(truth: pd.DataFrame, seed: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manual volumes (3 % noise, -5 ml bias) and Dice scores for 200 sampled participants."""
    bands = truth.assign(age_band=age_groups(truth["age"], UKBB_AGE_EDGES).astype(str))
    weights = bands["age_band"].value_counts(normalize=True).to_dict()
    sample = sampling.stratified_sample(
        bands, 200, sampling.balanced_proportions(weights), strata=("sex", "age_band"), seed=seed
    ).table
    rng = np.random.default_rng(seed)
    manual = sample[["participant_id"]].copy()
    volume = sample["vol_iliopsoas_total_ml"].to_numpy()
    manual["manual_vol_iliopsoas_total_ml"] = (
        volume * (1 + 0.03 * rng.standard_normal(len(volume))) - 5
    )
    structures = ("psoas_major_left", "psoas_major_right", "iliacus_left", "iliacus_right")
    dice = pd.DataFrame(
        {
            "participant_id": np.repeat(sample["participant_id"].to_numpy(), len(structures)),
            "structure": np.tile(structures, len(sample)),
            "dice": rng.beta(60, 4, len(sample) * len(structures)),
        }
    )
    return manual, dice


def setup(folder: Path, participants: int, protocol: str) -> None:
    started = time.perf_counter()
    truth = generate_cohort(
        CohortSpec(
            out=folder / "synth",
            participants=participants,
            protocol=protocol,
            seed=6,
            truth_only=True,
        )
    )
    print(f"  setup: myoflow synth --truth-only {time.perf_counter() - started:7.1f} s")
    started = time.perf_counter()
    phenotypes = read_tsv(folder / "synth" / "phenotypes.tsv")
    sheet = pd.DataFrame(
        {
            "participant_id": phenotypes["participant_id"],
            "dicom": "dicom/" + phenotypes["participant_id"],
            "release": phenotypes["release"],
        }
    )
    write_tsv(folder / "participants.tsv", sheet)
    shards = write_shards(folder / "shards", assign_shards(sheet, SHARD_SIZE), truth)
    manual, dice = stand_in_annotations(
        truth.merge(phenotypes[["participant_id", "sex", "age"]], on="participant_id")
    )
    write_tsv(folder / "manual.tsv", manual)
    write_tsv(folder / "dice.tsv", dice)
    size = sum(p.stat().st_size for p in (folder / "shards").rglob("*.tsv")) / 1e6
    print(
        f"  setup: {shards} shards x (measure, metrics, qc) = {size:.0f} MB, manual "
        f"annotations {time.perf_counter() - started:7.1f} s"
    )


def commands(folder: Path, stats: dict) -> list[tuple[str, list[str]]]:
    """The four cohort commands as the rules call them."""
    cohort = folder / "cohort"
    stats_json = json.dumps(stats)
    return [
        (
            "myoflow gather",
            [
                "gather",
                f"--sheet={folder / 'participants.tsv'}",
                f"--shard-size={SHARD_SIZE}",
                f"--shards-dir={folder / 'shards'}",
                f"--phenotypes={folder / 'synth' / 'phenotypes.tsv'}",
                f"--stats={stats_json}",
                f"--participants-out={cohort / 'participants.tsv'}",
                f"--profiles-out={cohort / 'csa_profiles.tsv'}",
                f"--exclusions-out={cohort / 'exclusions.tsv'}",
                f"--outliers-out={cohort / 'outliers.tsv'}",
            ],
        ),
        (
            "myoflow analyse",
            [
                "analyse",
                f"--participants={cohort / 'participants.tsv'}",
                f"--exclusions={cohort / 'exclusions.tsv'}",
                f"--profiles={cohort / 'csa_profiles.tsv'}",
                f"--stats={stats_json}",
                f"--manual={folder / 'manual.tsv'}",
                f"--dice={folder / 'dice.tsv'}",
                f"--out={cohort / 'tables'}",
            ],
        ),
        (
            "myoflow plot",
            [
                "plot",
                f"--tables={cohort / 'tables'}",
                f"--participants={cohort / 'participants.tsv'}",
                f"--stats={stats_json}",
                f"--participants-dir={folder / 'participants'}",
                f"--out={cohort / 'figures'}",
            ],
        ),
        (
            "myoflow report",
            [
                "report",
                f"--tables={cohort / 'tables'}",
                f"--figures={cohort / 'figures'}",
                f"--config={json.dumps({'stats': stats})}",
                f"--out={cohort / 'report.html'}",
            ],
        ),
    ]


def run(folder: Path, participants: int, protocol: str, stats: dict) -> float:
    """Set up, then run the four commands in this process (imports paid once, timed apart)."""
    from myoflow import cli

    print(f"cohort: {participants} participants ({protocol}, truth-only) in {folder}")
    if (folder / "shards").is_dir():  # --keep DIR of an earlier run: same stand-in inputs
        print(f"  setup: reusing the stand-in pipeline outputs in {folder}")
    else:
        setup(folder, participants, protocol)
    started = time.perf_counter()
    subprocess.run([str(MYOFLOW), "--version"], check=True, capture_output=True)
    startup = time.perf_counter() - started
    total = 0.0
    for name, argv in commands(folder, stats):
        print(f"  {name}:", flush=True)
        started = time.perf_counter()
        if cli.main(argv) != 0:
            raise SystemExit(f"{name} failed")
        seconds = time.perf_counter() - started
        total += seconds
        print(f"  {name:<40s} {seconds:7.2f} s", flush=True)
    html = folder / "cohort" / "report.html"
    size = html.stat().st_size / 1e6
    print(f"  {'total (in one process)':<40s} {total:7.2f} s; report.html {size:.1f} MB")
    print(
        f"  {'one process start + myoflow.cli imports':<40s} {startup:7.2f} s (paid by each "
        "of the 4 rules; not in the total)"
    )
    print(
        f"total {total:.1f} s for {participants} participants; target {TARGET_S:.0f} s: "
        f"{'met' if total < TARGET_S else 'MISSED'}"
    )
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=100_000)
    parser.add_argument("--protocol", default="ukbb", choices=("ukbb", "nako"))
    parser.add_argument(
        "--keep", type=Path, help="write the cohort and outputs here (reused if present)"
    )
    parser.add_argument(
        "--config", type=Path, default=Path("config/config.yaml"), help="stats from this config"
    )
    args = parser.parse_args()
    import yaml

    stats = yaml.safe_load(args.config.read_text()).get("stats", {}) or {}
    if args.keep:
        run(args.keep, args.participants, args.protocol, stats)
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp), args.participants, args.protocol, stats)


if __name__ == "__main__":
    main()
