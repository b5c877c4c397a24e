"""``myoflow synth``: generate a synthetic DIXON cohort with exact ground truth."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from myoflow.synth.cohort import CohortSpec, generate_cohort
from myoflow.synth.signal import ArtefactRates

HELP = "generate a synthetic DIXON MRI cohort (DICOM, phenotypes, ground truth)"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _rates(text: str) -> ArtefactRates:
    try:
        return ArtefactRates.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``synth`` subcommand."""
    parser = subparsers.add_parser(
        "synth",
        help=HELP,
        description=(
            "Generate a cohort a user could mistake for a biobank delivery: per participant "
            "multi-station DIXON DICOM (water, fat, in-phase, opposed-phase) with planted fake "
            "identifiers, phenotypes with planted population effects, ground-truth labels and "
            "a truth table. Participant i depends only on (seed, i): a larger cohort contains a "
            "smaller one with the same seed."
        ),
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--participants", required=True, type=_positive, help="number of participants"
    )
    parser.add_argument(
        "--protocol",
        choices=("ukbb", "nako"),
        default="ukbb",
        help="UK Biobank 6-station or NAKO 4-position",
    )
    parser.add_argument("--seed", type=int, default=1, help="cohort seed (default 1)")
    parser.add_argument(
        "--size",
        choices=("full", "small"),
        default="full",
        help="full resolution, or half resolution for tests",
    )
    parser.add_argument(
        "--truth-only",
        action="store_true",
        help="phenotypes and truth only, no images (100,000 in under a minute)",
    )
    parser.add_argument(
        "--zip",
        action="store_true",
        help="one zip per participant, as UK Biobank bulk delivery ships",
    )
    parser.add_argument(
        "--artefacts",
        type=_rates,
        default=ArtefactRates(),
        metavar="NAME=RATE,...",
        help="artefact rates: swap, partial_swap, missing_station, missing_channel"
        " (defaults 0.02, 0.02, 0.005, 0.005)",
    )
    parser.add_argument(
        "--release-size",
        type=_positive,
        default=None,
        help="participants per data release (r1, r2, ...); default: all in r1",
    )
    parser.add_argument(
        "--first-index",
        type=_positive,
        default=1,
        help="number of the first participant (to generate a later release)",
    )
    parser.add_argument(
        "--preview", action="store_true", help="also write preview.png of the first participant"
    )
    parser.add_argument(
        "--noiseless",
        action="store_true",
        help="also write truth/{participant}/water_noiseless.nii.gz (bias, no noise)",
    )
    parser.add_argument(
        "--bad-inputs",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="damage this fraction of participants, one bad-input case each (bad_inputs.tsv)",
    )
    parser.add_argument(
        "--appearance",
        choices=("standard", "randomised"),
        default="standard",
        help="standard: one fixed look; randomised: per participant a drawn sequence "
        "(1.5/3 T, TR, flip, echo times), tissue signals, slice spacing 3-6 mm, blur, bias, "
        "noise, encoding and muscle shapes, recorded in truth.tsv (docs/appearance.md)",
    )
    parser.add_argument(
        "--appearance-seed",
        type=int,
        default=None,
        help="with --appearance randomised: draw the appearances from this seed instead of "
        "--seed (the same participants as another set of scanners would deliver them)",
    )
    parser.add_argument(
        "--workers", type=_positive, default=1, help="participants rendered in parallel"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the cohort and print a one-line summary."""
    spec = CohortSpec(
        out=args.out,
        participants=args.participants,
        protocol=args.protocol,
        seed=args.seed,
        size=args.size,
        truth_only=args.truth_only,
        zip=args.zip,
        rates=args.artefacts,
        release_size=args.release_size,
        first_index=args.first_index,
        preview=args.preview,
        workers=args.workers,
        noiseless=args.noiseless,
        bad_inputs=args.bad_inputs,
        appearance=args.appearance,
        appearance_seed=args.appearance_seed,
    )
    started = time.perf_counter()
    try:
        truth = generate_cohort(spec)
    except ValueError as err:
        if not (args.truth_only and args.appearance != "standard"):
            raise
        print(f"myoflow synth: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    with_artefacts = int((truth["artefacts"] != "none").sum())
    mode = "truth only" if args.truth_only else f"{args.size} DICOM"
    print(
        f"myoflow synth: {len(truth)} {args.protocol} participants ({mode}, "
        f"{with_artefacts} with artefacts) in {seconds:.1f} s -> {args.out}"
    )
    return 0
