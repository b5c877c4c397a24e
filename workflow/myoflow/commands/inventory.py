"""``myoflow inventory``: inventory the DICOM of every participant of one shard."""

from __future__ import annotations

import argparse

from myoflow.commands import add_shard_arguments, shard_members_of
from myoflow.core.io import write_tsv
from myoflow.ingest.inventory import inventory_shard

HELP = "inventory the DICOM series of every participant of one shard"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``inventory`` subcommand."""
    parser = subparsers.add_parser(
        "inventory",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]}. Shard membership is recomputed from the sheet "
            "and shard size exactly as the workflow computes it. Writes, per participant, "
            "PARTICIPANTS_DIR/{participant}/dicom/inventory.tsv and inventory.json, or "
            "PARTICIPANTS_DIR/{participant}/exclusion.json; then the shard table OUT, last."
        ),
    )
    add_shard_arguments(parser, "inventory.tsv")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Inventory the shard's participants, then write the shard table."""
    members = shard_members_of(args)
    table = inventory_shard(
        members, args.participants_dir, log=lambda line: print(line, flush=True)
    )
    write_tsv(args.out, table)
    excluded = int((table["status"] == "excluded").sum())
    print(f"shard {args.shard}: {len(table) - excluded} ok, {excluded} excluded -> {args.out}")
    return 0
