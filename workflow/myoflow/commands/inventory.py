"""``myoflow inventory``: inventory the DICOM of every participant of one shard."""

from __future__ import annotations

import argparse

from myoflow.commands import add_shard_arguments, json_section, shard_members_of
from myoflow.core.io import write_tsv
from myoflow.ingest.inventory import inventory_shard
from myoflow.ingest.limits import DEFAULT_LIMITS, DeliveryLimits, LimitsError

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
    parser.add_argument(
        "--limits",
        type=json_section(DeliveryLimits.from_config, (LimitsError, ValueError)),
        default=DEFAULT_LIMITS,
        help="config ingest.limits as a JSON object: what a delivery may declare before it "
        "is refused unread (default: the package's limits)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Inventory the shard's participants, then write the shard table."""
    members = shard_members_of(args)
    table = inventory_shard(
        members,
        args.participants_dir,
        limits=args.limits,
        log=lambda line: print(line, flush=True),
    )
    write_tsv(args.out, table)
    excluded = int((table["status"] == "excluded").sum())
    print(f"shard {args.shard}: {len(table) - excluded} ok, {excluded} excluded -> {args.out}")
    return 0
