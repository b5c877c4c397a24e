"""``myoflow calibrate``: per-label decision thresholds for a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "calibrate a trained model's per-label thresholds on annotated participants"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``calibrate`` subcommand."""
    parser = subparsers.add_parser(
        "calibrate",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]}: for each label the threshold at which the "
            "model's total volume over the calibration participants equals the annotated "
            "total (myoflow.segment.model.calibrate). Calibration participants must be neither "
            "training nor held-out participants of the model. Writes OUT/model.pt (the same "
            "weights), OUT/model_card.json with the thresholds in its config and a "
            "'calibration' section, OUT/calibration.tsv and, with --held-out-pairs, a new "
            "held-out evaluation (OUT/held_out_*.tsv and the card's 'evaluation')."
        ),
    )
    parser.add_argument("--model", required=True, type=Path, help="trained model folder")
    parser.add_argument(
        "--pairs", required=True, type=Path, help="calibration pairs TSV (as for train)"
    )
    parser.add_argument("--out", required=True, type=Path, help="calibrated model folder")
    parser.add_argument("--held-out-pairs", type=Path, help="pairs TSV to evaluate on")
    held = parser.add_mutually_exclusive_group()
    held.add_argument("--held-out", nargs="+", metavar="ID", help="only these ids of them")
    held.add_argument(
        "--split",
        type=Path,
        help="only the held-out ids of this split.json (written by myoflow train)",
    )
    parser.add_argument(
        "--coarse-shifts-mm",
        type=float,
        nargs="+",
        metavar="MM",
        help="for a cascade: average its first stage over coarse crops shifted by these "
        "(medial, posterior, superior) mm triples, e.g. 0 0 0 2 2 3 -2 -2 3; calibrated and "
        "saved with them (default: as the model has it, one unshifted crop)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Calibrate, evaluate on the held-out pairs if given, write the calibrated model."""
    from myoflow.segment.model.calibrate_run import run_calibration
    from myoflow.segment.model.pair_selection import PairSelection

    card = run_calibration(
        args.model,
        PairSelection(args.pairs),
        PairSelection(
            args.held_out_pairs,
            ids=tuple(args.held_out) if args.held_out else None,
            split=args.split,
        ),
        args.out,
        coarse_shifts_mm=args.coarse_shifts_mm,
        device=args.device,
        threads=args.threads,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    calibration = card["calibration"]
    print(
        f"{args.out}: thresholds {card['config']['thresholds']} from "
        f"{calibration['participants']} participants ({calibration['sweeps']} sweeps)"
    )
    return 0
