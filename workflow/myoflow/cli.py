"""The ``myoflow`` command line: wires the subcommands in :mod:`myoflow.commands`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from myoflow import __version__
from myoflow.commands import (
    analyse,
    calibrate,
    convert,
    convert_series,
    gather,
    inventory,
    landmarks,
    manual,
    measure,
    plot,
    refine,
    report,
    segment,
    status,
    synth,
    train,
)
from myoflow.core.errors import MyoflowError
from myoflow.core.io import OutputError

COMMANDS = [
    inventory,
    convert,
    convert_series,
    synth,
    landmarks,
    train,
    refine,
    calibrate,
    segment,
    measure,
    manual,
    gather,
    analyse,
    plot,
    report,
    status,
]
"""Command modules, each with ``add_parser(subparsers)`` and ``run(args)``."""

USER_ERRORS = (MyoflowError, OutputError)
"""Errors caused by data, configuration or the file system: reported without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with one subcommand per module in COMMANDS."""
    parser = argparse.ArgumentParser(
        prog="myoflow", description="DIXON MRI muscle biomarkers at biobank scale."
    )
    parser.add_argument("--version", action="version", version=f"myoflow {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (2 for errors in data or usage)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"myoflow: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
