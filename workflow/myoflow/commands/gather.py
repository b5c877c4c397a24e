"""``myoflow gather``: the cohort's analysis table and exclusions from the shard tables."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from myoflow.cohort.gather import GatherSettings, gather_cohort, write_cohort, write_exclusions
from myoflow.cohort.inputs import read_cohort_inputs
from myoflow.commands import json_object
from myoflow.core.io import write_tsv
from myoflow.core.shards import assign_shards
from myoflow.core.sheet import load_sheet, validate_sheet

HELP = "gather the shard tables into the analysis table and the exclusions"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``gather`` subcommand."""
    parser = subparsers.add_parser(
        "gather",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]}. Reads, for every shard of the sheet, "
            "SHARDS_DIR/{shard}/{STAGE_TABLE}.tsv, metrics.tsv and qc.tsv, and the "
            "phenotypes; every sheet participant ends in PARTICIPANTS_OUT (its CSA profiles in "
            "PROFILES_OUT) or, with the stage and reason, in EXCLUSIONS_OUT. With "
            "--no-phenotypes the phenotype columns and the IMI are empty and no one is "
            "excluded for lacking phenotypes."
        ),
    )
    parser.add_argument("--sheet", required=True, type=Path, help="participant sheet (TSV)")
    parser.add_argument(
        "--shard-size", required=True, type=int, help="participants per shard (config shards.size)"
    )
    parser.add_argument(
        "--shards-dir", required=True, type=Path, help="folder of shard tables: results/shards"
    )
    phenotypes = parser.add_mutually_exclusive_group(required=True)
    phenotypes.add_argument("--phenotypes", type=Path, help="phenotype table (TSV)")
    phenotypes.add_argument(
        "--no-phenotypes",
        action="store_true",
        help="no phenotype table is configured: gather without one",
    )
    parser.add_argument(
        "--stage-table",
        action="append",
        dest="stage_tables",
        metavar="NAME",
        help="stage shard table(s) whose exclusions count (default: measure, the last stage)",
    )
    parser.add_argument(
        "--no-qc", action="store_true", help="no qc.tsv shard tables: everyone measured passes"
    )
    parser.add_argument(
        "--stats",
        type=json_object,
        default={},
        metavar="JSON",
        help="the config's stats block as JSON (plausible ranges, outliers, ...)",
    )
    parser.add_argument("--participants-out", required=True, type=Path)
    parser.add_argument(
        "--profiles-out", required=True, type=Path, help="csa_profiles.tsv (CSA along z)"
    )
    parser.add_argument("--exclusions-out", required=True, type=Path)
    parser.add_argument(
        "--outliers-out", type=Path, help="one row per outlying volume (robust z-score)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Gather, check that the counts add up, write the tables."""
    started = time.perf_counter()
    sheet = load_sheet(args.sheet)
    validate_sheet(sheet, source=str(args.sheet))
    shards = sorted(assign_shards(sheet, args.shard_size)["shard"].unique())
    phenotypes, steps, metrics, qc = read_cohort_inputs(
        sheet,
        args.phenotypes,
        args.shards_dir,
        shards,
        stage_tables=args.stage_tables or ["measure"],
        qc_table=None if args.no_qc else "qc",
    )
    gathered = gather_cohort(
        sheet, phenotypes, steps, metrics, qc, GatherSettings.from_config(args.stats)
    )
    write_exclusions(args.exclusions_out, gathered.cohort)
    if args.outliers_out is not None:
        write_tsv(args.outliers_out, gathered.outliers)
    write_cohort(args.participants_out, args.profiles_out, gathered)
    cohort = gathered.cohort
    if args.phenotypes is None:
        print("no phenotype table (config phenotypes is not set): phenotype columns left empty")
    print(
        f"{cohort.n_sheet} on the sheet ({len(shards)} shards): {len(cohort.table)} analysed, "
        f"{len(cohort.exclusions)} excluded, {len(gathered.outliers)} outlying values flagged "
        f"({time.perf_counter() - started:.1f} s)"
    )
    print(cohort.flow().to_string(index=False))
    return 0
