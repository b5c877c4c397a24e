"""``myoflow inventory``: inventory the DICOM of every participant of one shard."""

from __future__ import annotations

import argparse
from pathlib import Path

from myoflow.inventory import inventory_shard
from myoflow.io import write_tsv
from myoflow.participants import load_sheet, resolve_dicom_path, validate_sheet
from myoflow.shards import assign_shards, shard_members

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
    parser.add_argument("--sheet", required=True, type=Path, help="participant sheet (TSV)")
    parser.add_argument("--shard", required=True, help="shard name, e.g. r1-0000")
    parser.add_argument(
        "--shard-size", required=True, type=int, help="participants per shard (config shards.size)"
    )
    parser.add_argument(
        "--participants-dir",
        required=True,
        type=Path,
        help="folder of per-participant outputs, e.g. results/participants",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="shard table, e.g. results/shards/r1-0000/inventory.tsv",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Inventory the shard's participants, then write the shard table."""
    sheet = load_sheet(args.sheet)
    validate_sheet(sheet, source=str(args.sheet))
    members = shard_members(assign_shards(sheet, args.shard_size), args.shard)
    members = members.assign(
        dicom_path=[resolve_dicom_path(args.sheet, value) for value in members["dicom"]]
    )
    table = inventory_shard(
        members, args.participants_dir, log=lambda line: print(line, flush=True)
    )
    write_tsv(args.out, table)
    excluded = int((table["status"] == "excluded").sum())
    print(f"shard {args.shard}: {len(table) - excluded} ok, {excluded} excluded -> {args.out}")
    return 0
