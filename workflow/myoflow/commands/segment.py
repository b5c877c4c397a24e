"""``myoflow segment``: segment the muscles of every participant of one shard."""

from __future__ import annotations

import argparse
from pathlib import Path

from myoflow.commands import add_ingest_argument, add_shard_arguments, shard_members_of
from myoflow.core.errors import MyoflowError
from myoflow.core.io import read_tsv, write_tsv

# torch and the model code load in run(), not here: `myoflow` imports every command module
# to build its parser, and torch would add seconds to the start of every other command.
CARD_FILE = "model_card.json"  # myoflow.segment.model.card.CARD_FILE (a test checks they agree)
DEVICES = ("auto", "cpu", "cuda")  # myoflow.segment.stage.DEVICES
BACKENDS = ("myoflow", "nnunetv2")
CHANNELS = ("water", "fat", "in", "opp")

HELP = "segment the muscles of every participant of one shard with one loaded model"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``segment`` subcommand."""
    parser = subparsers.add_parser(
        "segment",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]}. Shard membership is recomputed from the sheet "
            "and shard size exactly as the workflow computes it; participants excluded in "
            "the shard's landmarks table are not segmented. The model is loaded once, after "
            "its weights are checked against the sha256 of its card. Writes, per "
            "participant, PARTICIPANTS_DIR/{participant}/seg/labels.nii.gz and "
            "seg/segmentation.json, or PARTICIPANTS_DIR/{participant}/exclusion.json; then "
            "the shard table OUT, last."
        ),
    )
    add_shard_arguments(parser, "segment.tsv")
    parser.add_argument(
        "--landmarks",
        required=True,
        type=Path,
        help="the shard's landmarks table, e.g. results/shards/r1-0000/landmarks.tsv",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="myoflow",
        help="myoflow (the V-Net cascade of --model-card) or nnunetv2 (the trained nnU-Net v2 "
        "model folder --nnunet-dir)",
    )
    parser.add_argument(
        "--model-card",
        type=Path,
        help="backend myoflow: the model's model_card.json; its weights (model.pt) are read "
        "from beside it",
    )
    nnunet = parser.add_argument_group("backend nnunetv2 (docs/backends.md)")
    nnunet.add_argument(
        "--nnunet-dir",
        type=Path,
        help="trained model folder: plans.json, dataset.json, fold_*/CHECKPOINT",
    )
    nnunet.add_argument("--folds", nargs="+", default=["0"], help="folds to ensemble (or all)")
    nnunet.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file")
    nnunet.add_argument(
        "--channels",
        nargs="+",
        choices=CHANNELS,
        help="our Dixon channel for each input channel of the model's dataset.json, in order",
    )
    nnunet.add_argument(
        "--labels",
        nargs="+",
        type=_label_pair,
        help="VALUE=STRUCTURE pairs: the model's label value -> ours ({muscle}_{side} or "
        "{group}_{side}); values not named are dropped",
    )
    nnunet.add_argument(
        "--region", choices=("whole", "hips"), default="whole", help="what to segment"
    )
    nnunet.add_argument(
        "--hips-margin-mm",
        nargs=5,
        type=float,
        metavar=("LATERAL", "ANTERIOR", "POSTERIOR", "SUPERIOR", "INFERIOR"),
        help="region hips: how far the box reaches beyond the hip centres, mm",
    )
    nnunet.add_argument(
        "--tile-step-size", type=float, default=0.5, help="sliding-window step (of a patch)"
    )
    nnunet.add_argument(
        "--no-mirroring", action="store_true", help="no test-time mirroring (8x faster in 3D)"
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where the network runs: auto (a GPU when there is one), cpu or cuda",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive,
        default=2,
        help="crops per forward pass (2: one participant)",
    )
    parser.add_argument(
        "--threads", type=_positive, default=None, help="CPU threads for torch (default: torch's)"
    )
    add_ingest_argument(
        parser,
        "to make stitched channels removed after an earlier run (config "
        "keep.stitched) again from the DICOM, as the conversion made them",
    )
    parser.set_defaults(func=run)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _label_pair(text: str) -> tuple[int, str]:
    value, _, name = text.partition("=")
    try:
        return int(value), name
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected VALUE=STRUCTURE, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """Load the model once, segment the shard's participants, then write the shard table."""
    import torch

    from myoflow.segment.stage import resolve_device

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    members = shard_members_of(args)
    landmarks = read_tsv(args.landmarks)
    log = lambda line: print(line, flush=True)  # noqa: E731
    if args.backend == "nnunetv2":
        table = _run_nnunet(args, device, members, landmarks, log)
    else:
        table = _run_myoflow(args, device, members, landmarks, log)
    write_tsv(args.out, table)
    excluded = int((table["status"] == "excluded").sum())
    print(f"shard {args.shard}: {len(table) - excluded} ok, {excluded} excluded -> {args.out}")
    return 0


def _run_myoflow(args, device, members, landmarks, log):
    from myoflow.segment.stage import load_segmenter, segment_shard

    if args.model_card is None or args.model_card.name != CARD_FILE:
        raise MyoflowError(f"--model-card must name a {CARD_FILE}, got {args.model_card}")
    segmenter = load_segmenter(args.model_card.parent, device)
    log(
        f"model {segmenter.name} (weights sha256 {segmenter.card['weights_sha256'][:12]}) on "
        f"{segmenter.describe_device()}"
    )
    return segment_shard(
        members,
        args.participants_dir,
        landmarks,
        segmenter,
        args.batch_size,
        log=log,
        ingest=args.ingest,
    )


def _run_nnunet(args, device, members, landmarks, log):
    import time

    from myoflow.segment.nnunet_backend import MARGIN_KEYS, NnunetSettings, load_nnunet_model
    from myoflow.segment.nnunet_stage import NnunetSegmentStage
    from myoflow.segment.stage import run_segment_stage

    if args.nnunet_dir is None or not args.channels or not args.labels:
        raise MyoflowError("--backend nnunetv2 needs --nnunet-dir, --channels and --labels")
    if args.region == "hips" and args.hips_margin_mm is None:
        raise MyoflowError("--region hips needs --hips-margin-mm")
    settings = NnunetSettings(
        model_dir=args.nnunet_dir,
        folds=tuple(f if f == "all" else int(f) for f in args.folds),
        checkpoint=args.checkpoint,
        channels=tuple(args.channels),
        labels=dict(args.labels),
        region=args.region,
        hips_margin_mm=dict(zip(MARGIN_KEYS, args.hips_margin_mm or (), strict=False)),
        tile_step_size=args.tile_step_size,
        mirroring=not args.no_mirroring,
    )
    started = time.perf_counter()
    model = load_nnunet_model(settings, device)
    log(
        f"nnU-Net model {args.nnunet_dir} folds {list(settings.folds)} (sha256 "
        f"{model.weights_sha256[:12]}) on {model.describe_device()}, loaded in "
        f"{time.perf_counter() - started:.2f} s"
    )
    return run_segment_stage(
        NnunetSegmentStage(model, args.ingest), members, args.participants_dir, landmarks, log
    )
