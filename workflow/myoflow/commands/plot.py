"""``myoflow plot``: the cohort figures, drawn from the analysis tables."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from myoflow.cohort.analysis import AnalysisSettings
from myoflow.cohort.analysis_by_sex import with_fat_fraction_percent
from myoflow.cohort.analysis_tables import read_tables
from myoflow.cohort.figures import POINT_COLUMNS, cohort_figures, write_figures
from myoflow.commands import json_object

HELP = "draw the cohort figures (PNG and PDF) from the analysis tables"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``plot`` subcommand."""
    parser = subparsers.add_parser(
        "plot",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]}; participants' values only as scatter points. "
            "Writes OUT/{figure}.png and .pdf, the QC montage OUT/qc_montage.png (full "
            "resolution) and its thumbnail from PARTICIPANTS_DIR/{participant}/qc/overlay.png "
            "where those exist, and OUT/figures.tsv (name, file, caption, full, text_px)."
        ),
    )
    parser.add_argument("--tables", required=True, type=Path, help="folder of analysis tables")
    parser.add_argument("--participants", required=True, type=Path, help="participants.tsv")
    parser.add_argument("--stats", type=json_object, default={}, metavar="JSON")
    parser.add_argument(
        "--participants-dir", type=Path, help="per-participant outputs, for the QC montage"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder of figures")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read tables and points, draw, write."""
    started = time.perf_counter()
    settings = AnalysisSettings.from_config(args.stats)
    wanted = {*POINT_COLUMNS, *settings.gam_metrics}
    points = pd.read_csv(
        args.participants,
        sep="\t",
        usecols=lambda column: column in wanted,
        dtype={"participant_id": str},
    )
    points = with_fat_fraction_percent(points)
    drawn = cohort_figures(read_tables(args.tables), points, settings)
    index = write_figures(args.out, drawn, points, args.participants_dir)
    print(
        f"{len(index)} figures -> {args.out} ({time.perf_counter() - started:.1f} s): "
        + ", ".join(index["name"])
    )
    return 0
