"""``myoflow report``: the cohort's results as one self-contained HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path

from myoflow.cohort.report import read_report_inputs, write_report
from myoflow.commands import json_object

HELP = "write the cohort report: one self-contained HTML page"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``report`` subcommand."""
    parser = subparsers.add_parser(
        "report",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]} (figures embedded, no external resources), with "
            "methods written from the configuration, the model card, software versions "
            "and the counts."
        ),
    )
    parser.add_argument("--tables", required=True, type=Path, help="folder of analysis tables")
    parser.add_argument("--figures", type=Path, help="folder of figures (with figures.tsv)")
    parser.add_argument(
        "--config", type=json_object, default={}, metavar="JSON", help="the workflow config"
    )
    parser.add_argument(
        "--model-card", type=Path, help="model_card.json of the segmentation model, if any"
    )
    parser.add_argument("--out", required=True, type=Path, help="report.html")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read everything the page shows and write it."""
    inputs = read_report_inputs(
        args.tables, args.figures, args.config, args.model_card, report_dir=args.out.parent
    )
    write_report(args.out, inputs)
    card = "with" if inputs.model_card else "without"
    print(
        f"{len(inputs.tables)} tables, {len(inputs.figures)} figures, {card} model card "
        f"-> {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)"
    )
    return 0
