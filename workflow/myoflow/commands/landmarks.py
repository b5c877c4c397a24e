"""``myoflow landmarks``: find the hip joint centres of every participant of one shard."""

from __future__ import annotations

import argparse
from pathlib import Path

from myoflow.commands import add_shard_arguments, shard_members_of
from myoflow.core.io import read_tsv, write_tsv
from myoflow.landmarks.stage import landmarks_shard

HELP = "find the hip joint centres of every converted participant of one shard"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``landmarks`` subcommand."""
    parser = subparsers.add_parser(
        "landmarks",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]}. Shard membership is recomputed from the sheet "
            "and shard size exactly as the workflow computes it; participants the shard's "
            "conversion table does not list as ok are passed on as excluded. Reads "
            "PARTICIPANTS_DIR/{participant}/dixon/{water,fat}.nii.gz and writes "
            "PARTICIPANTS_DIR/{participant}/landmarks.json, or exclusion.json; then the "
            "shard table OUT, last. Participants whose landmarks.json is newer than their "
            "water and fat are not redone."
        ),
    )
    add_shard_arguments(parser, "landmarks.tsv")
    parser.add_argument(
        "--convert",
        required=True,
        type=Path,
        help="the shard's conversion table, e.g. results/shards/r1-0000/convert.tsv",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Find the shard's hips, then write the shard table."""
    table = landmarks_shard(
        shard_members_of(args),
        args.participants_dir,
        read_tsv(args.convert),
        log=lambda line: print(line, flush=True),
    )
    write_tsv(args.out, table)
    excluded = int((table["status"] == "excluded").sum())
    print(f"shard {args.shard}: {len(table) - excluded} ok, {excluded} excluded -> {args.out}")
    return 0
