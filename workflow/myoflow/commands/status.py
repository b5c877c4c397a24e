"""``myoflow status``: participants done, excluded and pending per stage of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from myoflow.core.progress import read_progress
from myoflow.core.shards import assign_shards
from myoflow.core.sheet import load_sheet

HELP = "count participants done, excluded and pending per stage from the shard tables"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``status`` subcommand."""
    parser = subparsers.add_parser(
        "status",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]} under the results folder (while a run is under "
            "way, or after). The sheet, shard size and results folder come from the "
            "config files, later ones overriding earlier ones as Snakemake's --configfile "
            "does, or from the options."
        ),
    )
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        help="config file(s), e.g. --config config/config.yaml --config config/demo.yaml "
        "(default: config/config.yaml)",
    )
    parser.add_argument("--sheet", type=Path, help="participant sheet (config participants)")
    parser.add_argument("--shard-size", type=int, help="config shards.size")
    parser.add_argument("--results", type=Path, help="results folder (config results)")
    parser.set_defaults(func=run)


def _config(paths: list[Path] | None) -> dict:
    merged: dict = {}
    for path in paths or [Path("config/config.yaml")]:
        if path.is_file():
            merged |= yaml.safe_load(path.read_text()) or {}
    return merged


def run(args: argparse.Namespace) -> int:
    """Read the sheet and the shard tables, print one line per stage."""
    config = _config(args.config)
    sheet_path = args.sheet or Path(config.get("participants", ""))
    size = args.shard_size or int((config.get("shards") or {}).get("size", 25))
    results = args.results or Path(config.get("results", "results"))
    shards = assign_shards(load_sheet(sheet_path), size)
    progress = read_progress(shards, results)
    print(f"{len(shards)} participants on {sheet_path}, results in {results}")
    print(progress.to_string(index=False))
    return 0
