"""``myoflow refine``: train a full-resolution refiner on top of a trained coarse model."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from myoflow.commands.calibrate import (
    held_out_data,
    held_out_pairs,
    pairs_of_split,
    with_coarse_shifts,
)
from myoflow.core.errors import MyoflowError
from myoflow.core.io import write_text

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
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prepare the refiner's samples, train it, evaluate the cascade, write it."""
    import torch

    from myoflow.segment.model.card import load_model, save_model
    from myoflow.segment.model.evaluate import evaluate, render_model_card
    from myoflow.segment.model.refine import DILATIONS, FEATURES, refine_config
    from myoflow.segment.model.refine_train import (
        RefineSettings,
        attach_refiner,
        prepare_refine_pairs,
        train_refiner,
    )
    from myoflow.segment.model.registry import model_channels, parameter_count
    from myoflow.segment.model.samples import hash_inputs, training_data_sha256
    from myoflow.segment.model.training_run import resolve_device, software_versions

    started = time.monotonic()
    if args.model.resolve() == args.out.resolve():
        raise MyoflowError(f"--out {args.out} must be a new folder, not the model's own")
    if args.threads:
        torch.set_num_threads(args.threads)
    given = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "patch": tuple(args.patch) if args.patch else None,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
    }
    settings = RefineSettings(**{k: v for k, v in given.items() if v is not None})
    device = resolve_device(args.device)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    coarse, card = load_model(args.model, device)
    if card["config"].get("refine") is not None:
        raise MyoflowError(f"{args.model} already has a refiner; give its coarse model")
    config = dict(card["config"])
    config.pop("thresholds", None)  # they cut the coarse output; calibrate the cascade anew
    config["refine"] = refine_config(args.features or FEATURES, args.dilations or DILATIONS)
    if args.coarse_shifts_mm:
        config = with_coarse_shifts(config, args.coarse_shifts_mm)
    pairs = training_pairs(args)
    held = held_out_pairs(args)
    overlap = sorted({p.participant_id for p in pairs} & {p.participant_id for p in held})
    if overlap:
        raise MyoflowError(f"participants both train the refiner and evaluate: {overlap}")
    cascade = attach_refiner(coarse, config)
    if args.init_from is not None:  # checked before minutes of preparation
        start_from(cascade, config, card, args.init_from)
    samples, excluded = prepare_refine_pairs(coarse, config, pairs, device, log)
    if not samples:
        raise MyoflowError("no refiner training participant could be prepared")
    preparation_s = time.monotonic() - started
    for parameter in cascade.coarse.parameters():
        parameter.requires_grad_(False)
    deadline = None if not args.max_minutes else started + args.max_minutes * 60.0
    record = train_refiner(cascade.refiner, samples, settings, device, deadline, log)
    channels = model_channels(config)
    record |= {
        "preparation_s": preparation_s,
        "participants": len({s.participant_id for s in samples}),
        "excluded": excluded,
        "data_sha256": training_data_sha256(
            {p.participant_id: hash_inputs(p, channels) for p in pairs}
        ),
        "refiner_parameters": parameter_count(cascade.refiner),
        "coarse_weights_sha256": card["weights_sha256"],
        "initialised_from": None if args.init_from is None else init_record(args.init_from),
        "software": software_versions(),
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    written = {k: v for k, v in card.items() if k not in ("calibration", "evaluation")}
    written |= {"refine_training": record, "evaluation": None}
    if held:
        evaluation = evaluate(cascade, config, held, device, log=log)
        args.out.mkdir(parents=True, exist_ok=True)
        evaluation.write(args.out)
        written["evaluation"] = evaluation.summary()
        written["data"] = held_out_data(card, held, channels)
    written["parameters"] = sum(p.numel() for p in cascade.parameters())  # coarse is frozen
    saved = save_model(args.out, cascade.state_dict(), config, written)
    write_text(args.out / "MODEL_CARD.md", render_model_card(saved))
    print(
        f"{args.out}: refiner of {record['refiner_parameters']:,} parameters, "
        f"{record['steps_done']} steps on {len(samples)} sides"
    )
    return 0


def training_pairs(args: argparse.Namespace) -> list:
    """The pairs of ``--pairs``, only the ``--train-split``'s training ids when given."""
    from myoflow.segment.model.samples import read_pairs

    pairs = read_pairs(args.pairs)
    if args.train_split is None:
        return pairs
    return pairs_of_split(pairs, args.train_split, "train", args.pairs)


def start_from(cascade, config: dict, card: dict, folder: Path) -> None:
    """Load the refiner of the cascade in ``folder`` into ``cascade``.

    The first stage may differ (a retrained one): the refiner's inputs (the image and
    coarse probabilities on the same crop) mean the same, only their errors change.

    Raises:
        MyoflowError: it is not a cascade with this refiner shape over the same crop.
    """
    from myoflow.segment.model.card import load_model

    earlier, earlier_card = load_model(folder, "cpu")
    same_crop = earlier_card["config"].get("crop") == config.get("crop")

    def shape(refine: dict | None) -> dict:
        # The coarse shifts are how a cascade is run, not part of the refiner's shape.
        return {k: v for k, v in (refine or {}).items() if k != "coarse_shifts_mm"}

    if shape(earlier_card["config"].get("refine")) != shape(config["refine"]) or not same_crop:
        raise MyoflowError(f"--init-from {folder}: not a refiner of this shape and crop")
    cascade.refiner.load_state_dict(earlier.refiner.state_dict())


def init_record(folder: Path) -> dict:
    """Which cascade training started from, for the card."""
    from myoflow.segment.model.card import read_card

    earlier = read_card(folder)
    record = earlier.get("refine_training", {})
    return {
        "weights_sha256": earlier["weights_sha256"],
        "coarse_weights_sha256": record.get("coarse_weights_sha256"),
        "steps_done": record.get("steps_done"),
        "initialised_from": record.get("initialised_from"),
    }
