"""``myoflow train``: train a segmentation model; ``myoflow train-pairs``: list training pairs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from myoflow.core.errors import MyoflowError
from myoflow.core.io import write_tsv
from myoflow.core.labels import GROUPS, MUSCLES
from myoflow.segment.crop import GLUTEUS_CROP, HIPS_COARSE_CROP, HIPS_CROP, ILIOPSOAS_CROP, CropSpec

# torch and the model code load when a command runs, not here: `myoflow` imports every
# command module, and every other command would pay torch's start-up (seconds).
if TYPE_CHECKING:
    from myoflow.segment.model.train import Progress

CROPS = {c.name: c for c in (HIPS_COARSE_CROP, HIPS_CROP, ILIOPSOAS_CROP, GLUTEUS_CROP)}
DEFAULT_LABELS = {
    "iliopsoas": list(GROUPS["iliopsoas"]),
    "gluteus": list(GROUPS["gluteus"]),
}
"""Labels when none are given: what the crop holds (every muscle for the hips crops)."""
DEFAULT_WIDTH = 0.5

HELP = "train a segmentation model on training pairs (images + label maps)"
PAIRS_HELP = "list the training pairs of a synthetic cohort whose Dixon was converted"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``train`` and ``train-pairs`` subcommands."""
    parser = subparsers.add_parser(
        "train",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]}. The pairs TSV has the columns participant_id, "
            "image_dir (folder with water/fat/in/opp.nii.gz), labels (label NIfTI with the "
            "values of myoflow.core.labels.LABELS) and optionally landmarks "
            "(landmarks.json; else the hips are detected); relative paths are relative to "
            "the TSV. Writes OUT/model.pt, OUT/model_card.json, OUT/MODEL_CARD.md, the "
            "held-out tables and, during training, OUT/checkpoint.pt."
        ),
    )
    parser.add_argument("--pairs", required=True, type=Path, help="training pairs (TSV)")
    parser.add_argument("--out", required=True, type=Path, help="model folder to write")
    model = parser.add_argument_group("model (a --config file, or options that override it)")
    model.add_argument("--config", type=Path, help="model config JSON (architecture, ...)")
    model.add_argument(
        "--labels",
        nargs="+",
        choices=MUSCLES,
        metavar="MUSCLE",
        help=f"output muscles, of {', '.join(MUSCLES)} (default: those the crop holds)",
    )
    model.add_argument("--width", type=float, help=f"channel multiplier (default {DEFAULT_WIDTH})")
    model.add_argument("--crop", choices=sorted(CROPS), help="crop geometry (default hips_coarse)")
    model.add_argument("--channels", nargs="+", help="input channels (default: the crop's)")
    recipe = parser.add_argument_group("training recipe")
    recipe.add_argument("--epochs", type=int, default=50, help="epochs in all (default 50)")
    recipe.add_argument("--batch-size", type=int, default=3, help="default 3")
    recipe.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (1e-4)")
    recipe.add_argument(
        "--copies", type=int, default=7, help="random affine copies per sample per epoch (7)"
    )
    recipe.add_argument("--seed", type=int, default=0, help="seed of weights, split, order")
    recipe.add_argument(
        "--intensity-augmentation",
        action="store_true",
        help="also change the random copies' intensities the way other scanners do: "
        "noise, blur, brightness, contrast, low resolution, gamma, bias field "
        "(myoflow.segment.model.intensity)",
    )
    split = parser.add_argument_group("held-out participants")
    split.add_argument("--val-fraction", type=float, default=0.2, help="share held out (0.2)")
    split.add_argument("--held-out", nargs="+", metavar="ID", help="hold out these ids")
    split.add_argument("--folds", type=int, help="k-fold: number of folds")
    split.add_argument("--fold", type=int, help="k-fold: the fold held out (0-based)")
    running = parser.add_argument_group("running")
    running.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    running.add_argument("--threads", type=int, help="CPU threads for torch")
    running.add_argument(
        "--cache", type=Path, help="sample cache folder (default OUT/sample_cache)"
    )
    running.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    running.add_argument(
        "--init-from",
        type=Path,
        metavar="MODEL_DIR",
        help="start from this model's weights (same config; a fresh optimizer), e.g. to "
        "train a model further on more participants",
    )
    running.add_argument(
        "--max-minutes",
        type=float,
        help="time budget: stop after the step in progress, checkpoint, save the model (0: none)",
    )
    running.add_argument(
        "--checkpoint-minutes", type=float, default=10.0, help="checkpoint interval (10)"
    )
    parser.set_defaults(func=run)

    pairs = subparsers.add_parser(
        "train-pairs",
        help=PAIRS_HELP,
        description=(
            f"{PAIRS_HELP[0].upper()}{PAIRS_HELP[1:]}: SYNTH/truth/{{p}}/labels.nii.gz with "
            "PARTICIPANTS_DIR/{p}/dixon/{water,fat,in,opp}.nii.gz (participants without all "
            "four are left out) and PARTICIPANTS_DIR/{p}/landmarks.json where it exists."
        ),
    )
    pairs.add_argument("--synth", required=True, type=Path, help="a `myoflow synth` folder")
    pairs.add_argument(
        "--participants-dir", required=True, type=Path, help="e.g. results/participants"
    )
    pairs.add_argument("--out", required=True, type=Path, help="pairs TSV to write")
    pairs.set_defaults(func=run_pairs)


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    """The model config from ``--config`` and the options that override it.

    Raises:
        MyoflowError: the config file cannot be read or the result is invalid.
    """
    from myoflow.segment.model.registry import ModelConfigError, check_config

    config: dict[str, Any] = {"architecture": "vnet"}
    if args.config is not None:
        try:
            config = json.loads(args.config.read_text())
        except (OSError, ValueError) as err:
            raise MyoflowError(f"model config {args.config} cannot be read: {err}") from err
    try:
        spec = CropSpec.from_dict(config["crop"]) if "crop" in config else HIPS_COARSE_CROP
        if args.crop is not None:
            spec = CROPS[args.crop]
        if args.channels is not None:
            spec = dataclasses.replace(spec, channels=tuple(args.channels))
    except (TypeError, ValueError) as err:
        raise ModelConfigError(f"crop: {err}") from err
    config["crop"] = spec.to_dict()
    config["in_channels"] = len(spec.channels)
    if args.labels is not None:
        config["labels"] = list(args.labels)
    config.setdefault("labels", DEFAULT_LABELS.get(spec.name, list(MUSCLES)))
    if args.width is not None:
        config["width"] = args.width
    config.setdefault("width", DEFAULT_WIDTH)
    check_config(config)
    return config


def progress_printer(stream: TextIO = sys.stderr) -> Callable[[Progress], None]:
    """One updating line on a terminal; in a log file, a line a minute and per epoch."""
    interactive = stream.isatty()
    last = [0.0]

    def show(p: Progress) -> None:
        line = (
            f"epoch {p.epoch + 1}/{p.epochs} step {p.step_in_epoch}/{p.steps_in_epoch} | "
            f"loss {p.loss:.4f} (epoch {p.epoch_loss:.4f}) | {p.samples_per_second:.2f} "
            f"samples/s | {p.elapsed_s / 60:.1f} min"
        )
        if interactive:
            end = "\n" if p.step_in_epoch == p.steps_in_epoch else ""
            print(f"\r{line}\033[K", end=end, file=stream, flush=True)
        elif time.monotonic() - last[0] >= 60 or p.step_in_epoch == p.steps_in_epoch:
            print(line, file=stream, flush=True)
            last[0] = time.monotonic()

    return show


def run(args: argparse.Namespace) -> int:
    """Train, evaluate on the held-out participants and write the model."""
    from myoflow.segment.model.augment import AugmentSettings
    from myoflow.segment.model.intensity import IntensitySettings
    from myoflow.segment.model.samples import read_pairs
    from myoflow.segment.model.train import TrainSettings
    from myoflow.segment.model.training_run import SplitSettings, run_training

    config = model_config(args)
    try:
        settings = TrainSettings(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            seed=args.seed,
            augment=AugmentSettings(copies=args.copies),
            intensity=IntensitySettings(enabled=args.intensity_augmentation),
            checkpoint_minutes=args.checkpoint_minutes,
        )
    except ValueError as err:
        raise MyoflowError(str(err)) from err
    split = SplitSettings(
        val_fraction=args.val_fraction,
        held_out=tuple(args.held_out) if args.held_out else None,
        folds=args.folds,
        fold=args.fold,
    )
    card = run_training(
        read_pairs(args.pairs),
        config,
        settings,
        args.out,
        split=split,
        cache_dir=args.cache if args.cache is not None else args.out / "sample_cache",
        device=args.device,
        threads=args.threads,
        resume=args.resume,
        init_from=args.init_from,
        max_minutes=args.max_minutes or None,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        progress=progress_printer(),
    )
    training = card["training"]
    print(
        f"{args.out}: {training['epochs_done']:.2f} of {training['epochs']} epochs, "
        f"{training['steps']} steps, final epoch loss {training['final_loss']}"
    )
    return 0


def run_pairs(args: argparse.Namespace) -> int:
    """Write the pairs TSV of a synthetic cohort."""
    from myoflow.segment.model.samples import pairs_table, synthetic_pairs

    pairs = synthetic_pairs(args.synth, args.participants_dir)
    if not pairs:
        raise MyoflowError(
            f"no participant of {args.synth} has converted Dixon under {args.participants_dir}"
        )
    write_tsv(args.out, pairs_table(pairs, args.out.parent))
    print(f"{len(pairs)} training pairs -> {args.out}")
    return 0
