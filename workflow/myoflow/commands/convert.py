"""``myoflow convert``: stitch the Dixon DICOM of every participant of one shard to NIfTI."""

from __future__ import annotations

import argparse
from pathlib import Path

from myoflow.commands import add_ingest_argument, add_shard_arguments, shard_members_of
from myoflow.core.io import read_tsv, write_tsv
from myoflow.ingest.convert import convert_shard

HELP = "convert and stitch the Dixon DICOM of every participant of one shard"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``convert`` subcommand."""
    parser = subparsers.add_parser(
        "convert",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]}. Shard membership is recomputed from the sheet "
            "and shard size exactly as the workflow computes it; participants excluded in "
            "the shard's inventory table are not converted. Writes, per participant, "
            "PARTICIPANTS_DIR/{participant}/dixon/{water,fat,in,opp}.nii.gz and "
            "acquisition.json, or PARTICIPANTS_DIR/{participant}/exclusion.json; then the "
            "shard table OUT, last."
        ),
    )
    add_shard_arguments(parser, "convert.tsv")
    parser.add_argument(
        "--inventory",
        required=True,
        type=Path,
        help="the shard's inventory table, e.g. results/shards/r1-0000/inventory.tsv",
    )
    add_ingest_argument(parser, "for the conversion")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert the shard's participants, then write the shard table."""
    members = shard_members_of(args)
    table = convert_shard(
        members,
        args.participants_dir,
        read_tsv(args.inventory),
        args.ingest,
        log=lambda line: print(line, flush=True),
    )
    write_tsv(args.out, table)
    excluded = int((table["status"] == "excluded").sum())
    print(f"shard {args.shard}: {len(table) - excluded} ok, {excluded} excluded -> {args.out}")
    return 0
