"""``myoflow calibrate``: per-label decision thresholds for a trained model."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from myoflow.core.errors import MyoflowError
from myoflow.core.io import write_json, write_text, write_tsv

HELP = "calibrate a trained model's per-label thresholds on annotated participants"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``calibrate`` subcommand."""
    parser = subparsers.add_parser(
        "calibrate",
        help=HELP,
        description=(
            f"{HELP[0].upper()}{HELP[1:]}: for each label the threshold at which the "
            "model's total volume over the calibration participants equals the annotated "
            "total (myoflow.segment.model.calibrate). Calibration participants must be neither "
            "training nor held-out participants of the model. Writes OUT/model.pt (the same "
            "weights), OUT/model_card.json with the thresholds in its config and a "
            "'calibration' section, OUT/calibration.tsv and, with --held-out-pairs, a new "
            "held-out evaluation (OUT/held_out_*.tsv and the card's 'evaluation')."
        ),
    )
    parser.add_argument("--model", required=True, type=Path, help="trained model folder")
    parser.add_argument(
        "--pairs", required=True, type=Path, help="calibration pairs TSV (as for train)"
    )
    parser.add_argument("--out", required=True, type=Path, help="calibrated model folder")
    parser.add_argument("--held-out-pairs", type=Path, help="pairs TSV to evaluate on")
    held = parser.add_mutually_exclusive_group()
    held.add_argument("--held-out", nargs="+", metavar="ID", help="only these ids of them")
    held.add_argument(
        "--split",
        type=Path,
        help="only the held-out ids of this split.json (written by myoflow train)",
    )
    parser.add_argument(
        "--coarse-shifts-mm",
        type=float,
        nargs="+",
        metavar="MM",
        help="for a cascade: average its first stage over coarse crops shifted by these "
        "(medial, posterior, superior) mm triples, e.g. 0 0 0 2 2 3 -2 -2 3; calibrated and "
        "saved with them (default: as the model has it, one unshifted crop)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Calibrate, evaluate on the held-out pairs if given, write the calibrated model."""
    import torch

    from myoflow.segment.model.calibrate import (
        MAX_SWEEPS,
        calibrate_thresholds,
        calibration_table,
        collect_pairs,
    )
    from myoflow.segment.model.card import CARD_FILE, load_model, sha256_file, verify_weights
    from myoflow.segment.model.evaluate import evaluate, render_model_card
    from myoflow.segment.model.predict import model_labels
    from myoflow.segment.model.registry import crop_spec
    from myoflow.segment.model.samples import hash_inputs, read_pairs, training_data_sha256
    from myoflow.segment.model.training_run import resolve_device, software_versions

    if args.model.resolve() == args.out.resolve():
        raise MyoflowError(f"--out {args.out} must be a new folder, not the model's own")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    model, card = load_model(args.model, device)
    config = dict(card["config"])
    config.pop("thresholds", None)  # calibrate the network's output, not an earlier cut
    if args.coarse_shifts_mm:
        config = with_coarse_shifts(config, args.coarse_shifts_mm)
    labels = model_labels(config)
    pairs = read_pairs(args.pairs)
    held = held_out_pairs(args)
    overlap = sorted({p.participant_id for p in pairs} & {p.participant_id for p in held})
    if overlap:
        raise MyoflowError(f"participants both calibrate and evaluate: {overlap}")
    voxels, excluded = collect_pairs(model, config, pairs, device, log)
    thresholds, sweeps = calibrate_thresholds(voxels, labels)
    if sweeps >= MAX_SWEEPS:
        log(f"warning: thresholds still moved after {sweeps} sweeps; the last ones are kept")
    table = calibration_table(voxels, labels, thresholds)
    cuts = zip(labels, thresholds, strict=True)
    config["thresholds"] = {name: round(float(t), 4) for name, t in cuts}
    spec = crop_spec(config)
    calibrated = dict(card) | {
        "config": config,
        "calibration": {
            "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "participants": len(voxels),
            "excluded": excluded,
            "data_sha256": training_data_sha256(
                {p.participant_id: hash_inputs(p, spec.channels) for p in pairs}
            ),
            "sweeps": sweeps,
            "method": "per label, the threshold matching the total annotated volume "
            "(myoflow.segment.model.calibrate)",
            "table": table.to_dict("records"),
            "software": software_versions(),
        },
    }
    if held:
        evaluation = evaluate(model, config, held, device, log=log)
        evaluation.write(args.out)
        calibrated["evaluation"] = evaluation.summary()
        calibrated["data"] = held_out_data(card, held, spec.channels)
    else:
        calibrated["evaluation_before_calibration"] = card.get("evaluation")
        calibrated["evaluation"] = None
    weights = verify_weights(args.model, card)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, args.out / weights.name)
    if sha256_file(args.out / weights.name) != card["weights_sha256"]:
        raise MyoflowError(f"copying {weights} to {args.out} changed its bytes")
    write_tsv(args.out / "calibration.tsv", table)
    write_json(args.out / CARD_FILE, calibrated)
    write_text(args.out / "MODEL_CARD.md", render_model_card(calibrated))
    print(
        f"{args.out}: thresholds {config['thresholds']} from {len(voxels)} participants "
        f"({sweeps} sweeps)"
    )
    return 0


def with_coarse_shifts(config: dict[str, Any], values: list[float]) -> dict[str, Any]:
    """``config`` whose cascade averages its first stage over the shifts in ``values``
    (flat (medial, posterior, superior) mm triples)."""
    from myoflow.segment.model.registry import ModelConfigError, check_config

    if config.get("refine") is None:
        raise MyoflowError("--coarse-shifts-mm needs a cascade (a model with a refiner)")
    if len(values) % 3:
        raise MyoflowError(f"--coarse-shifts-mm takes mm triples; got {len(values)} numbers")
    shifts = [list(values[n : n + 3]) for n in range(0, len(values), 3)]
    shifted = config | {"refine": dict(config["refine"]) | {"coarse_shifts_mm": shifts}}
    try:
        check_config(shifted)
    except ModelConfigError as err:
        raise MyoflowError(str(err)) from err
    return shifted


def held_out_pairs(args: argparse.Namespace) -> list[Any]:
    """The pairs of ``--held-out-pairs``: only the ``--held-out`` ids, or the ``--split``'s
    held-out ids, when given."""
    from myoflow.segment.model.samples import read_pairs

    if args.held_out_pairs is None:
        if args.held_out or args.split:
            raise MyoflowError("--held-out and --split need --held-out-pairs")
        return []
    pairs = read_pairs(args.held_out_pairs)
    if args.split is not None:
        return pairs_of_split(pairs, args.split, "held_out", args.held_out_pairs)
    return pairs if args.held_out is None else only_ids(pairs, args.held_out, args.held_out_pairs)


def pairs_of_split(pairs: list[Any], split: Path, part: str, source: Path) -> list[Any]:
    """The pairs whose ids ``split`` (a ``split.json`` of ``myoflow train``) lists under
    ``part`` ("train" or "held_out"), in its order.

    Raises:
        MyoflowError: the split cannot be read, or lists an id that ``source`` lacks.
    """
    try:
        ids = json.loads(split.read_text())[part]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MyoflowError(f"{split}: no {part} ids ({err})") from err
    return only_ids(pairs, ids, source)


def only_ids(pairs: list[Any], ids: list[str], source: Path) -> list[Any]:
    """The pairs of ``ids``, in their order; an id that ``source`` lacks is an error."""
    by_id = {p.participant_id: p for p in pairs}
    unknown = sorted(set(ids) - set(by_id))
    if unknown:
        raise MyoflowError(f"ids not in {source}: {unknown}")
    return [by_id[i] for i in ids]


def held_out_data(card: dict[str, Any], held: list[Any], channels: Any) -> dict[str, Any]:
    """The card's ``data`` section with a new held-out set's size and data hash."""
    from myoflow.segment.model.samples import hash_inputs, training_data_sha256

    return dict(card.get("data", {})) | {
        "held_out_participants": len(held),
        "held_out_data_sha256": training_data_sha256(
            {p.participant_id: hash_inputs(p, channels) for p in held}
        ),
    }
