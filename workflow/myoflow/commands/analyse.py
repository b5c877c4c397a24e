"""``myoflow analyse``: every configured cohort statistic, one TSV table each."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from myoflow.cohort.analysis import AnalysisSettings, run_analysis
from myoflow.cohort.analysis_tables import read_analysis_cohort, read_profiles, write_tables
from myoflow.commands import json_object
from myoflow.core.io import read_tsv

HELP = "run the configured cohort statistics on the analysis table"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``analyse`` subcommand."""
    parser = subparsers.add_parser(
        "analyse",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]}: Table 1 and 2, asymmetry, handedness, "
            "correlations, regressions, GAMs, percentiles, CSA profiles and, with manual "
            "annotations, Bland-Altman and Dice. Writes OUT/{table}.tsv and "
            "OUT/analyses.tsv (which analyses ran, which the data could not support)."
        ),
    )
    parser.add_argument("--participants", required=True, type=Path, help="participants.tsv")
    parser.add_argument("--exclusions", required=True, type=Path, help="exclusions.tsv")
    parser.add_argument(
        "--profiles", type=Path, help="csa_profiles.tsv (without: no CSA profile tables)"
    )
    parser.add_argument("--stats", type=json_object, default={}, metavar="JSON")
    parser.add_argument(
        "--manual",
        type=Path,
        help="manual annotations: participant_id and manual_<metric> columns",
    )
    parser.add_argument(
        "--dice",
        type=Path,
        help="Dice of automatic vs manual masks: participant_id, structure, dice",
    )
    parser.add_argument(
        "--no-phenotypes",
        action="store_true",
        help="no phenotype table is configured: the analyses that need phenotypes are "
        "recorded as not run, the others run over the whole cohort",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        help="manifest.json of a synthetic cohort: its planted values beside the results "
        "(read only if the file exists)",
    )
    parser.add_argument("--out", required=True, type=Path, help="folder of tables")
    parser.set_defaults(func=run)


def read_manifest(path: Path | None) -> dict | None:
    """A synthetic cohort's manifest.json, or None when there is none (a real cohort)."""
    if path is None or not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return manifest if isinstance(manifest, dict) else None


def run(args: argparse.Namespace) -> int:
    """Read the cohort, run the analyses, write the tables."""
    started = time.perf_counter()
    settings = AnalysisSettings.from_config(args.stats)
    cohort = read_analysis_cohort(args.participants, args.exclusions)
    result = run_analysis(
        cohort,
        settings,
        profiles=read_profiles(args.profiles) if args.profiles else None,
        manual=read_tsv(args.manual) if args.manual else None,
        dice=read_tsv(args.dice) if args.dice else None,
        phenotypes=not args.no_phenotypes,
        manifest=read_manifest(args.manifest),
    )
    write_tables(args.out, result.tables)
    print(result.analyses.to_string(index=False))
    print(
        f"{len(result.tables)} tables from {len(cohort.table)} participants -> {args.out} "
        f"({time.perf_counter() - started:.1f} s)"
    )
    return 0
