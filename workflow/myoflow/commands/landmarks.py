"""``myoflow landmarks``: find the hip joint centres of every participant of one shard."""

from __future__ import annotations

import argparse
from pathlib import Path

from myoflow.commands import add_ingest_argument, add_shard_arguments, shard_members_of
from myoflow.core.io import read_tsv, write_tsv
from myoflow.core.sheet import load_sheet
from myoflow.landmarks.stage import landmarks_shard
from myoflow.landmarks.supplied import read_supplied_landmarks

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
            "water and fat are not redone. Participants listed in the --supplied table get "
            "those landmarks instead of detection (source: supplied)."
        ),
    )
    add_shard_arguments(parser, "landmarks.tsv")
    parser.add_argument(
        "--convert",
        required=True,
        type=Path,
        help="the shard's conversion table, e.g. results/shards/r1-0000/convert.tsv",
    )
    parser.add_argument(
        "--supplied",
        type=Path,
        help="table of user-supplied landmarks (config landmarks.supplied): participant_id, "
        "hip_{left,right}_{x,y,z}_mm in LPS mm; replaces detection for those participants",
    )
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        help="detected landmarks less confident than this (0-1) exclude the participant "
        "as landmarks_low_confidence (config landmarks.min_confidence; default 0)",
    )
    add_ingest_argument(
        parser,
        "to make stitched channels removed after an earlier run (config "
        "keep.stitched) again from the DICOM, as the conversion made them",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Find the shard's hips, then write the shard table."""
    members = shard_members_of(args)
    supplied = None
    if args.supplied is not None:  # every row checked, against the whole sheet
        supplied = read_supplied_landmarks(args.supplied, load_sheet(args.sheet)["participant_id"])
    table = landmarks_shard(
        members,
        args.participants_dir,
        read_tsv(args.convert),
        log=lambda line: print(line, flush=True),
        supplied=supplied,
        min_confidence=args.min_confidence,
        ingest=args.ingest,
    )
    write_tsv(args.out, table)
    excluded = int((table["status"] == "excluded").sum())
    print(f"shard {args.shard}: {len(table) - excluded} ok, {excluded} excluded -> {args.out}")
    return 0
