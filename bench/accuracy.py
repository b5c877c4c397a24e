"""Accuracy of a segmentation model on held-out synthetic participants: the issue's table.

Run::

    .venv/bin/python bench/accuracy.py --model resources/models/hips-cascade \\
        --pairs data/train/pairs_r2.tsv --ids ukbb000029 ... ukbb000048

or ``--synth DIR --participants-dir DIR`` for every converted participant of a
``myoflow synth`` cohort (``myoflow train-pairs`` lists the same pairs). Participants must
not be among the model's training participants: the model card's ``split.json`` lives
beside the weights of a training run, and ids found in its ``train`` list are refused.

Each participant is segmented the way the workflow does (hips detected from water and
fat, crops, network, probabilities back on the stitched grid, clean-up) by
:func:`myoflow.model.evaluate.evaluate`, and scored against its truth labels. Printed:
Dice per structure (mean +- SD, min over participants and sides), Bland-Altman of the
volumes in ml and in % of the mean, and each target of the issue with pass/fail:
iliopsoas and gluteus Dice >= 0.95, psoas major >= 0.92, volume bias within +-2%.
``--out`` also writes the tables (TSV) and a JSON summary.

``--oracle`` scores, instead of the network, a perfect first stage: each participant's
partial-volume truth on the model's (coarse) crop, put back on the stitched grid and
cleaned as the network's probabilities are, at 0.5. That is the most any network on that
crop grid can score; a cascade's refiner (:mod:`myoflow.model.refine`) is what can pass it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from myoflow.crop import SIDES, crop_geometry
from myoflow.io import write_json, write_tsv
from myoflow.model.card import load_model
from myoflow.model.evaluate import evaluate
from myoflow.model.predict import Segmentation, labels_from_probabilities, model_labels
from myoflow.model.registry import crop_spec
from myoflow.model.samples import read_channels, read_label_map, read_pairs, synthetic_pairs
from myoflow.model.targets import side_label_values, soft_targets

TARGETS = {
    ("iliopsoas", "dice"): 0.95,
    ("gluteus", "dice"): 0.95,
    ("psoas_major", "dice"): 0.92,
}
BIAS_LIMIT_PERCENT = 2.0
"""Volume bias target: within +-2% of the mean of predicted and true volume."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("resources/models/hips-cascade"))
    parser.add_argument("--pairs", type=Path, help="training-pairs TSV")
    parser.add_argument(
        "--synth", type=Path, help="a myoflow synth folder (with --participants-dir)"
    )
    parser.add_argument("--participants-dir", type=Path)
    parser.add_argument("--ids", nargs="+", help="only these participants")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="folder for the tables and summary")
    parser.add_argument(
        "--oracle", action="store_true", help="score the truth on the model's crop grid instead"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.pairs is not None:
        pairs = read_pairs(args.pairs)
    elif args.synth is not None and args.participants_dir is not None:
        pairs = synthetic_pairs(args.synth, args.participants_dir)
    else:
        parser.error("give --pairs, or --synth and --participants-dir")
    if args.ids:
        wanted = set(args.ids)
        pairs = [p for p in pairs if p.participant_id in wanted]
        missing = wanted - {p.participant_id for p in pairs}
        if missing:
            parser.error(f"no pair for {sorted(missing)}")
    split = args.model / "split.json"
    if split.is_file():
        trained = set(json.loads(split.read_text()).get("train", []))
        overlap = sorted(trained & {p.participant_id for p in pairs})
        if overlap:
            parser.error(f"{len(overlap)} participants were trained on: {overlap[:5]}")

    model, card = load_model(args.model, args.device)
    started = time.perf_counter()
    result = evaluate(
        model,
        card["config"],
        pairs,
        torch.device(args.device),
        segment=oracle_segmenter(pairs) if args.oracle else None,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    seconds = time.perf_counter() - started
    scored = result.dice["participant_id"].nunique()
    print(
        f"\n{'oracle of ' if args.oracle else ''}model {args.model} "
        f"(sha256 {card['weights_sha256'][:12]}, width "
        f"{card['config']['width']}, crop {card['config']['crop']['name']}): {scored} "
        f"participants scored, {len(result.excluded)} left out, {seconds / max(len(pairs), 1):.1f} "
        "s per participant on " + args.device
    )
    print(f"\n{'structure':<18}{'n':>4}{'Dice mean':>11}{'SD':>8}{'min':>8}")
    minimum = result.dice.groupby("structure")["dice"].min()
    for row in result.dice_summary.to_dict("records"):
        print(
            f"{row['structure']:<18}{row['n']:>4}{row['mean']:>11.3f}{row['sd']:>8.3f}"
            f"{minimum[row['structure']]:>8.3f}"
        )
    print(f"\n{'structure':<18}{'units':>6}{'bias':>9}{'LoA low':>10}{'LoA high':>10}")
    for row in result.agreement.to_dict("records"):
        print(
            f"{row['structure']:<18}{row['units']:>6}{row['bias']:>9.2f}{row['loa_low']:>10.2f}"
            f"{row['loa_high']:>10.2f}"
        )
    verdicts = []
    means = result.dice_summary.set_index("structure")["mean"]
    for (structure, _), target in TARGETS.items():
        value = float(means.get(structure, float("nan")))
        verdicts.append((f"{structure} Dice >= {target}", value, value >= target))
    percent = result.agreement[result.agreement["units"] == "%"].set_index("structure")
    for structure in ("iliopsoas", "gluteus", "psoas_major"):
        if structure in percent.index:
            bias = float(percent.loc[structure, "bias"])
            ok = abs(bias) <= BIAS_LIMIT_PERCENT
            verdicts.append((f"{structure} volume bias within +-{BIAS_LIMIT_PERCENT}%", bias, ok))
    print(f"\n{'target':<40}{'measured':>10}  result")
    for name, value, ok in verdicts:
        print(f"{name:<40}{value:>10.3f}  {'pass' if ok else 'FAIL'}")
    if args.out is not None:
        write_tsv(args.out / "dice.tsv", result.dice)
        write_tsv(args.out / "volumes.tsv", result.volumes)
        write_tsv(args.out / "agreement.tsv", result.agreement)
        write_json(
            args.out / "summary.json",
            result.summary()
            | {"targets": [{"target": n, "measured": v, "pass": ok} for n, v, ok in verdicts]},
        )
    return 0


def oracle_segmenter(pairs: list) -> Callable[..., Segmentation]:
    """A segmenter answering with each pair's truth on the model's crop grid (the pair is
    found by the bytes of its water image: participants share one stitched grid)."""
    by_water: dict[bytes, object] = {}

    def key(water: np.ndarray) -> bytes:
        return hashlib.sha1(np.ascontiguousarray(water, np.float32).tobytes()).digest()

    def segment(model, config, channels, affine_ras, landmarks, device, batch_size):
        if not by_water:
            for pair in pairs:
                by_water[key(read_channels(pair, ["water"])[0]["water"])] = pair
        pair = by_water[key(channels["water"])]
        names = model_labels(config)
        label_map, label_affine = read_label_map(pair.labels, pair.participant_id)
        spec = crop_spec(config)
        hips = {"left": landmarks.left_lps_mm, "right": landmarks.right_lps_mm}
        geometries = {s: crop_geometry(spec, hips[s], s, affine_ras) for s in SIDES}
        probabilities = {
            s: soft_targets(label_map, label_affine, g, side_label_values(names, s))
            for s, g in geometries.items()
        }
        shape = np.shape(channels["water"])
        labels = labels_from_probabilities(probabilities, geometries, names, shape, affine_ras)
        return Segmentation(labels, {})

    return segment


if __name__ == "__main__":
    raise SystemExit(main())
