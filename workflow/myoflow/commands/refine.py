"""``myoflow refine``: train a full-resolution refiner on top of a trained coarse model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "train a full-resolution refiner (a cascade's second stage) for a trained model"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``refine`` subcommand."""
    parser = subparsers.add_parser(
        "refine",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]} (myoflow.segment.model.refine). The coarse network is "
            "frozen; the refiner learns, on the --pairs participants, to sharpen its "
            "probabilities at the stitched resolution. Writes OUT/model.pt (both stages), "
            "OUT/model_card.json (config with a 'refine' section, 'refine_training', and "
            "with --held-out-pairs the held-out evaluation), OUT/MODEL_CARD.md and "
            "OUT/held_out_*.tsv. The coarse model's thresholds are dropped: calibrate the "
            "cascade afterwards (myoflow calibrate)."
        ),
    )
    parser.add_argument("--model", required=True, type=Path, help="trained coarse model folder")
    parser.add_argument("--pairs", required=True, type=Path, help="refiner training pairs TSV")
    parser.add_argument("--out", required=True, type=Path, help="cascade model folder")
    parser.add_argument(
        "--train-split",
        type=Path,
        help="train only on the 'train' ids of this split.json (myoflow train) among --pairs",
    )
    parser.add_argument("--held-out-pairs", type=Path, help="pairs TSV to evaluate on")
    held = parser.add_mutually_exclusive_group()
    held.add_argument("--held-out", nargs="+", metavar="ID", help="only these ids of them")
    held.add_argument(
        "--split", type=Path, help="only the held-out ids of this split.json (myoflow train)"
    )
    # Defaults (None) are RefineSettings' and myoflow.segment.model.refine's: torch is not
    # imported to build the command line.
    parser.add_argument("--steps", type=int, help="training steps (default 1500)")
    parser.add_argument("--batch-size", type=int, help="patches per step (default 4)")
    parser.add_argument("--patch", type=int, nargs=3, help="patch size (default 64 64 64)")
    parser.add_argument("--learning-rate", type=float, help="Adam's (default 1e-3)")
    parser.add_argument("--features", type=int, help="hidden channels (default 12)")
    parser.add_argument("--dilations", type=int, nargs="+", help="one per layer (1 2 4 1)")
    parser.add_argument("--seed", type=int, help="seed of patches and weights (default 0)")
    parser.add_argument(
        "--init-from",
        type=Path,
        help="start from the refiner of this cascade (same refiner shape and crop): training "
        "continues it, with fresh patches (give another --seed); over a retrained first "
        "stage it adapts the earlier refiner to the new one's errors",
    )
    parser.add_argument(
        "--coarse-shifts-mm",
        type=float,
        nargs="+",
        metavar="MM",
        help="average the first stage over coarse crops shifted by these (medial, "
        "posterior, superior) mm triples, e.g. 0 0 0 2 2 3 -2 -2 3, in training and in use "
        "(default: one unshifted crop)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        help="stop training after this long (then evaluate, save; 0: no limit)",
    )
    parser.add_argument(
        "--intensity-augmentation",
        action="store_true",
        help="change each patch's intensities the way other scanners do "
        "(myoflow.segment.model.intensity)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prepare the refiner's samples, train it, evaluate the cascade, write it."""
    from myoflow.segment.model.intensity import IntensitySettings
    from myoflow.segment.model.pair_selection import PairSelection
    from myoflow.segment.model.refine_run import run_refine
    from myoflow.segment.model.refine_train import RefineSettings

    given = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "patch": tuple(args.patch) if args.patch else None,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
    }
    settings = RefineSettings(
        **{k: v for k, v in given.items() if v is not None},
        intensity=IntensitySettings(enabled=args.intensity_augmentation),
    )
    card = run_refine(
        args.model,
        PairSelection(args.pairs, split=args.train_split, part="train"),
        PairSelection(
            args.held_out_pairs,
            ids=tuple(args.held_out) if args.held_out else None,
            split=args.split,
        ),
        args.out,
        settings,
        features=args.features,
        dilations=args.dilations,
        coarse_shifts_mm=args.coarse_shifts_mm,
        init_from=args.init_from,
        device=args.device,
        threads=args.threads,
        max_minutes=args.max_minutes or None,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    record = card["refine_training"]
    print(
        f"{args.out}: refiner of {record['refiner_parameters']:,} parameters, "
        f"{record['steps_done']} steps on {record['samples']} sides"
    )
    return 0
