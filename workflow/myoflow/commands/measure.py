"""``myoflow measure``: metrics, QC flags and overlays of every participant of one shard."""

from __future__ import annotations

import argparse
from pathlib import Path

from myoflow.commands import (
    add_ingest_argument,
    add_shard_arguments,
    json_section,
    shard_members_of,
)
from myoflow.core.io import read_tsv
from myoflow.core.kept_channels import KEEP_STITCHED
from myoflow.measure.qc import QcError, QcSettings
from myoflow.measure.stage import measure_shard, write_tables

HELP = "measure metrics, QC flags and an overlay for every segmented participant of one shard"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``measure`` subcommand."""
    parser = subparsers.add_parser(
        "measure",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]}. Shard membership is recomputed from the sheet "
            "and shard size exactly as the workflow computes it; participants the shard's "
            "landmarks or segmentation table does not list as ok are passed on as "
            "excluded. Reads PARTICIPANTS_DIR/{participant}/seg/labels.nii.gz, "
            "seg/segmentation.json, landmarks.json and dixon/; writes metrics.json, "
            "qc/overlay.png, qc/preview.nii.gz and qc/flags.json (or exclusion.json); removes "
            "the stitched channels --keep-stitched does not keep; then the metrics table, "
            "the QC table and, last, the shard table OUT."
        ),
    )
    add_shard_arguments(parser, "measure.tsv")
    parser.add_argument(
        "--landmarks",
        required=True,
        type=Path,
        help="the shard's landmarks table, e.g. results/shards/r1-0000/landmarks.tsv",
    )
    parser.add_argument(
        "--segment",
        required=True,
        type=Path,
        help="the shard's segmentation table, e.g. results/shards/r1-0000/segment.tsv",
    )
    parser.add_argument(
        "--metrics-table",
        required=True,
        type=Path,
        help="where the shard's metrics table goes, e.g. results/shards/r1-0000/metrics.tsv",
    )
    parser.add_argument(
        "--qc-table",
        required=True,
        type=Path,
        help="where the shard's QC table goes, e.g. results/shards/r1-0000/qc.tsv",
    )
    parser.add_argument(
        "--qc",
        type=json_section(QcSettings.from_config, (QcError, TypeError, ValueError)),
        default=QcSettings(),
        metavar="JSON",
        help="the config's qc section as JSON (thresholds, severities, keep_warnings); "
        "default: the shipped settings",
    )
    parser.add_argument(
        "--keep-stitched",
        choices=list(KEEP_STITCHED),
        default="all",
        help="stitched channels each participant keeps once measured (config keep.stitched): "
        "none, water_fat or all; an excluded participant also keeps water and fat "
        "(default: all, nothing removed)",
    )
    add_ingest_argument(
        parser,
        "to make stitched channels removed after an earlier run (config "
        "keep.stitched) again from the DICOM, as the conversion made them",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Measure the shard's participants, then write the shard tables."""
    tables = measure_shard(
        shard_members_of(args),
        args.participants_dir,
        read_tsv(args.landmarks),
        read_tsv(args.segment),
        args.qc,
        log=lambda line: print(line, flush=True),
        ingest=args.ingest,
        keep_stitched=args.keep_stitched,
    )
    write_tables(tables, args.out, args.metrics_table, args.qc_table)
    status = tables.status["status"]
    failed = int((tables.qc["qc_status"] != "pass").sum())
    print(
        f"shard {args.shard}: {int((status == 'ok').sum())} measured ({failed} failing QC), "
        f"{int((status == 'excluded').sum())} excluded -> {args.out}"
    )
    return 0
