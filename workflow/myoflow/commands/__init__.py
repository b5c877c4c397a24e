"""Subcommands of the ``myoflow`` command line, one module each.

A command module provides ``add_parser(subparsers)``, which adds its parser and sets
``run`` as the parser's default ``func``, and ``run(args) -> int``. ``myoflow.cli`` lists
the modules in ``COMMANDS``; adding a command is one new module and one line there.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pandas as pd

from myoflow.core.shards import assign_shards, shard_members
from myoflow.core.sheet import load_sheet, resolve_dicom_path, validate_sheet

Settings = TypeVar("Settings")


def json_object(text: str) -> dict:
    """An argparse type: a JSON object given on the command line (argparse's message
    names the option)."""
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def json_section(
    from_config: Callable[[dict], Settings], errors: tuple[type[Exception], ...]
) -> Callable[[str], Settings]:
    """An argparse type: a config section passed as a JSON object (as the rules pass it,
    :func:`json_object`) and turned into settings by ``from_config``, whose ``errors``
    become argparse's usage errors."""

    def parse(text: str) -> Settings:
        try:
            return from_config(json_object(text))
        except errors as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    return parse


def add_shard_arguments(parser: argparse.ArgumentParser, table: str) -> None:
    """Add what every per-shard command takes: the sheet, the shard, where outputs go.

    ``table`` names the shard table in the ``--out`` example (``inventory.tsv``, ...).
    """
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
        "--out", required=True, type=Path, help=f"shard table, e.g. results/shards/r1-0000/{table}"
    )


def add_ingest_argument(parser: argparse.ArgumentParser, purpose: str) -> None:
    """Add ``--ingest``: the config's ingest section as JSON; ``purpose`` says what for."""
    # Loaded here, not at import: the ingest settings import the series rules.
    from myoflow.ingest.settings import IngestSettings, SettingsError

    parser.add_argument(
        "--ingest",
        type=json_section(IngestSettings.from_config, (SettingsError, ValueError)),
        default=IngestSettings(),
        metavar="JSON",
        help=f"the config's ingest section as JSON (channel rules, protocols, grid), {purpose}; "
        "default: the shipped UK Biobank and NAKO rules and the UK Biobank grid",
    )


def shard_members_of(args: argparse.Namespace) -> pd.DataFrame:
    """The shard's rows of the validated sheet, with ``dicom_path`` resolved.

    Membership is recomputed from the sheet and shard size exactly as the workflow
    computes it (:func:`myoflow.core.shards.assign_shards`).
    """
    sheet = load_sheet(args.sheet)
    validate_sheet(sheet, source=str(args.sheet))
    members = shard_members(assign_shards(sheet, args.shard_size), args.shard)
    return members.assign(
        dicom_path=[resolve_dicom_path(args.sheet, value) for value in members["dicom"]]
    )
