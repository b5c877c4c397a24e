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
        "--model-card",
        required=True,
        type=Path,
        help="the model's model_card.json; its weights (model.pt) are read from beside it",
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


def run(args: argparse.Namespace) -> int:
    """Load the model once, segment the shard's participants, then write the shard table."""
    import torch

    from myoflow.segment.stage import load_segmenter, resolve_device, segment_shard

    if args.model_card.name != CARD_FILE:
        raise MyoflowError(f"--model-card must name a {CARD_FILE}, got {args.model_card}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    members = shard_members_of(args)
    landmarks = read_tsv(args.landmarks)
    segmenter = load_segmenter(args.model_card.parent, resolve_device(args.device))
    print(
        f"model {segmenter.name} (weights sha256 {segmenter.card['weights_sha256'][:12]}) on "
        f"{segmenter.describe_device()}",
        flush=True,
    )
    table = segment_shard(
        members,
        args.participants_dir,
        landmarks,
        segmenter,
        args.batch_size,
        log=lambda line: print(line, flush=True),
        ingest=args.ingest,
    )
    write_tsv(args.out, table)
    excluded = int((table["status"] == "excluded").sum())
    print(f"shard {args.shard}: {len(table) - excluded} ok, {excluded} excluded -> {args.out}")
    return 0
