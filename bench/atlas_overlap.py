"""Held-out Dice split by whether the participant's atlas body was among the training ones.

Synthetic participants are built on 40 real body outlines (``myoflow.synth.atlas``); each
draws one (the ``atlas_body`` column of the cohort's ``targets.tsv``) and its own muscles,
fat, size and noise. A held-out participant whose body outline no training participant
had is the nearer stand-in for a real, never-seen person, so this table says how much of
a held-out score rests on outlines the model has seen. Run after ``bench/accuracy.py
--out DIR``::

    .venv/bin/python bench/atlas_overlap.py --dice DIR/dice.tsv \\
        --split data/train/model_r2/split.json --synth data/train/ukbb data/train/bodies/*

``--synth`` takes every cohort folder the training and held-out participants come from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

STRUCTURES = ("iliopsoas", "gluteus", "psoas_major")


def atlas_bodies(folders: list[Path]) -> dict[str, int]:
    """participant id -> atlas body index, from each cohort's ``targets.tsv``."""
    bodies: dict[str, int] = {}
    for folder in folders:
        table = pd.read_csv(folder / "targets.tsv", sep="\t", dtype={"participant_id": str})
        bodies |= dict(zip(table["participant_id"], table["atlas_body"].astype(int), strict=True))
    return bodies


def overlap_table(dice: pd.DataFrame, bodies: dict[str, int], train_ids: list[str]) -> pd.DataFrame:
    """Dice mean, SD and count per structure, for seen and unseen atlas bodies."""
    missing = sorted({*dice["participant_id"], *train_ids} - set(bodies))
    if missing:
        raise SystemExit(f"no atlas body known for {missing[:5]} (give their --synth folder)")
    seen = {bodies[i] for i in train_ids}
    scored = dice[dice["structure"].isin(STRUCTURES)].assign(
        body=lambda d: d["participant_id"].map(bodies),
        seen=lambda d: d["body"].isin(seen).map({True: "seen", False: "unseen"}),
    )
    return scored.groupby(["structure", "seen"])["dice"].agg(["count", "mean", "std"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dice", type=Path, required=True, help="dice.tsv of bench/accuracy")
    parser.add_argument("--split", type=Path, required=True, help="the model's split.json")
    parser.add_argument("--synth", type=Path, nargs="+", required=True, help="cohort folders")
    args = parser.parse_args(argv)
    dice = pd.read_csv(args.dice, sep="\t", dtype={"participant_id": str})
    train_ids = json.loads(args.split.read_text())["train"]
    bodies = atlas_bodies(args.synth)
    table = overlap_table(dice, bodies, train_ids)  # refuses ids of unknown body first
    held = sorted(set(dice["participant_id"]))
    seen = {bodies[i] for i in train_ids}
    print(
        f"{len(train_ids)} training participants on {len(seen)} of 40 atlas bodies; "
        f"{sum(bodies[i] in seen for i in held)} of {len(held)} held-out participants "
        "on one of them"
    )
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
