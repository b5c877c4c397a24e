"""``myoflow manual-agreement``: Dice and manual volumes of the participants annotated by hand."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from myoflow.cohort.manual import manual_agreement, read_mask_sheet
from myoflow.core.io import write_tsv

HELP = "score the workflow's masks against manual label maps (Dice, manual volumes)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``manual-agreement`` subcommand."""
    parser = subparsers.add_parser(
        "manual-agreement",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]}. MASKS is a TSV of participant_id and labels (a "
            "label map NIfTI with myoflow's label values, relative to the TSV's folder). "
            "Writes the Dice table (participant, structure, side), the manual volumes "
            "(manual_vol_<structure>_<side|total>_ml, for `myoflow analyse --manual`) and "
            "the status of every listed participant (scored, or skipped with a reason)."
        ),
    )
    parser.add_argument("--masks", required=True, type=Path, help="sheet of manual masks")
    parser.add_argument(
        "--participants-dir", required=True, type=Path, help="e.g. results/participants"
    )
    parser.add_argument("--dice-out", required=True, type=Path)
    parser.add_argument("--volumes-out", required=True, type=Path)
    parser.add_argument("--status-out", required=True, type=Path)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Score every listed participant; write the three tables."""
    started = time.perf_counter()
    result = manual_agreement(read_mask_sheet(args.masks), args.participants_dir)
    write_tsv(args.dice_out, result.dice)
    write_tsv(args.volumes_out, result.volumes)
    write_tsv(args.status_out, result.status)
    scored = int((result.status["status"] == "scored").sum())
    print(
        f"{scored} of {len(result.status)} annotated participants scored "
        f"({time.perf_counter() - started:.1f} s) -> {args.dice_out}, {args.volumes_out}"
    )
    return 0
