"""Accuracy of a segmentation model on held-out synthetic participants: the issue's table.

Run, from a fresh checkout::

    .venv/bin/python bench/accuracy.py --seed 3001 --participants 20

which synthesises participants 1 to 20 of ``myoflow synth`` cohort seed 3001 (full-size
UK Biobank, 6 stations, no acquisition artefacts; ``--size small`` for a quick check) in
``data/accuracy/ukbb-full-seed3001/`` (``--work`` for another folder), converts their
DICOM as the workflow does (inventory, then conversion and stitching onto the default
grid: :func:`myoflow.ingest.convert.convert_shard`) and scores them. Participant *i*
depends only on (seed, *i*), so a rerun reuses what is already there and a larger
``--participants`` only adds the missing ones. The shipped model was trained on seeds
1001 and 1005 and calibrated on 1003; give a seed none of them used.

Or score pairs that already exist: ``--pairs TSV`` (``participant_id``, ``image_dir``,
``labels``, ``landmarks``; :func:`myoflow.segment.model.samples.read_pairs`), e.g.
``--pairs data/train/pairs_r2.tsv --ids ukbb000029 ... ukbb000048``, or ``--synth DIR
--participants-dir DIR`` for every converted participant of a ``myoflow synth`` cohort
(``myoflow train-pairs`` lists the same pairs). Participants must not be among the
model's training participants: the model card's ``split.json`` lives beside the weights
of a training run, and ids found in its ``train`` list are refused.

Each participant is segmented the way the workflow does (hips detected from water and
fat, crops, network, probabilities back on the stitched grid, clean-up) by
:func:`myoflow.segment.model.evaluate.evaluate`, and scored against its truth labels. Printed:
Dice per structure (mean +- SD, min over participants and sides), Bland-Altman of the
volumes in ml and in % of the mean, and each target of the issue with pass/fail:
iliopsoas and gluteus Dice >= 0.95, psoas major >= 0.92, volume bias within +-2%.
``--out`` also writes the tables (TSV) and a JSON summary.

``--oracle`` scores, instead of the network, a perfect first stage: each participant's
partial-volume truth on the model's (coarse) crop, put back on the stitched grid and
cleaned as the network's probabilities are, at 0.5. That is the most any network on that
crop grid can score; a cascade's refiner (:mod:`myoflow.segment.model.refine`) is what can pass it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from myoflow.core.io import read_tsv, write_json, write_tsv
from myoflow.ingest.convert import convert_shard
from myoflow.ingest.inventory import inventory_shard
from myoflow.segment.crop import SIDES, crop_geometry
from myoflow.segment.model.card import load_model
from myoflow.segment.model.evaluate import evaluate
from myoflow.segment.model.labelling import labels_from_probabilities
from myoflow.segment.model.predict import Segmentation, model_labels
from myoflow.segment.model.registry import crop_spec
from myoflow.segment.model.samples import (
    TrainingPair,
    read_channels,
    read_label_map,
    read_pairs,
    synthetic_pairs,
)
from myoflow.segment.model.targets import side_label_values, soft_targets
from myoflow.synth.cohort import CohortSpec, generate_cohort
from myoflow.synth.signal import ArtefactRates

TARGETS = {
    ("iliopsoas", "dice"): 0.95,
    ("gluteus", "dice"): 0.95,
    ("psoas_major", "dice"): 0.92,
}
BIAS_LIMIT_PERCENT = 2.0
"""Volume bias target: within +-2% of the mean of predicted and true volume."""
PROTOCOL = "ukbb"
"""The protocol of the synthesised participants: the one the shipped model was trained on."""
NO_ARTEFACTS = ArtefactRates.none()
"""Synthesised participants are acquired cleanly: accuracy, not artefact handling, is scored."""
BATCH = 5
"""Participants synthesised per batch: an interrupted run keeps its finished batches."""
WORK_ROOT = Path(__file__).resolve().parents[1] / "data" / "accuracy"
"""Default parent of the synthesised cohorts' work folders (git-ignored ``data/``)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("resources/models/hips-cascade"))
    parser.add_argument(
        "--seed", type=int, help="synthesise the participants of this cohort seed and score them"
    )
    parser.add_argument(
        "--participants", type=int, help="with --seed: how many (participants 1 to N)"
    )
    parser.add_argument(
        "--size",
        choices=("full", "small"),
        default="full",
        help="with --seed: full-size participants, or half resolution for a quick check",
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="with --seed: folder for the cohort and its conversion, reused when there "
        "(default data/accuracy/ukbb-{size}-seed{seed})",
    )
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

    not_converted: dict[str, dict[str, str]] = {}
    if sum(x is not None for x in (args.seed, args.pairs, args.synth)) != 1:
        parser.error("give one of --seed, --pairs, or --synth with --participants-dir")
    if args.seed is not None:
        if args.participants is None or args.participants < 1:
            parser.error("--seed needs --participants N (N >= 1)")
        work = args.work or WORK_ROOT / f"{PROTOCOL}-{args.size}-seed{args.seed}"
        pairs, not_converted = synthesised_pairs(
            work, args.seed, args.participants, args.size, progress
        )
    elif args.pairs is not None:
        pairs = read_pairs(args.pairs)
    elif args.participants_dir is not None:
        pairs = synthetic_pairs(args.synth, args.participants_dir)
    else:
        parser.error("--synth needs --participants-dir")
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
        log=progress,
    )
    seconds = time.perf_counter() - started
    scored = result.dice["participant_id"].nunique()
    left_out = len(result.excluded) + len(not_converted)
    if args.seed is not None:
        print(
            f"\nfrom participants 1-{args.participants} of synthetic cohort seed {args.seed} "
            f"({PROTOCOL}, {args.size} size, no artefacts), hips detected on the images"
        )
    print(
        f"\n{'oracle of ' if args.oracle else ''}model {args.model} "
        f"(sha256 {card['weights_sha256'][:12]}, width "
        f"{card['config']['width']}, crop {card['config']['crop']['name']}): {scored} "
        f"participants scored, {left_out} left out, {seconds / max(len(pairs), 1):.1f} "
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
            | {"not_converted": not_converted}
            | {"targets": [{"target": n, "measured": v, "pass": ok} for n, v, ok in verdicts]},
        )
    return 0


def progress(line: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(line, file=sys.stderr, flush=True)


def synthesised_pairs(
    work: Path,
    seed: int,
    participants: int,
    size: str,
    log: Callable[[str], None],
    appearance: str = "standard",
    appearance_seed: int | None = None,
) -> tuple[list[TrainingPair], dict[str, dict[str, str]]]:
    """Participants 1 to ``participants`` of cohort ``seed``, synthesised and converted.

    ``appearance`` and ``appearance_seed`` are those of ``myoflow synth`` (a randomised
    look, drawn from the cohort seed unless another is given).

    Participants no complete batch holds are generated in batches of up to :data:`BATCH`,
    ``work/synth/{first:06d}-{last:06d}``, each a ``myoflow synth`` folder whose
    ``manifest.json``, written last, marks it complete (a batch without one is removed and
    made again). Their DICOM is then inventoried and converted into
    ``work/participants/{participant}`` by the workflow's own stages, which skip
    participants already complete. No landmarks file is written: the hips are detected on
    the images when scored.

    Returns:
        The pairs (converted images, truth labels) in participant order, and the
        participants the inventory or conversion left out, as ``{id: {reason, detail}}``.

    Raises:
        SystemExit: ``work`` holds a batch of another cohort (seed, size, protocol or
            artefact rates).
    """
    wanted = range(1, participants + 1)
    batches = work / "synth"
    held: dict[int, Path] = {}
    for folder in sorted(p for p in batches.glob("*") if p.is_dir()):
        if not (folder / "manifest.json").is_file():
            shutil.rmtree(folder)  # generation was cut short: make it again if needed
            continue
        made = json.loads((folder / "manifest.json").read_text())
        expected = {
            "protocol": PROTOCOL,
            "seed": seed,
            "size": size,
            "artefact_rates": asdict(NO_ARTEFACTS),
            "bad_inputs": 0.0,
        }
        look = made.get("appearance", {"mode": "standard"})
        expected_look = {"mode": appearance}
        if appearance != "standard":
            expected_look["seed"] = seed if appearance_seed is None else appearance_seed
        if any(made.get(key) != value for key, value in expected.items()) or any(
            look.get(key) != value for key, value in expected_look.items()
        ):
            sys.exit(
                f"{folder} is not a batch of cohort {expected | expected_look}: give another --work"
            )
        first = int(made["first_index"])
        held |= dict.fromkeys(range(first, first + int(made["participants"])), folder)
    missing = [i for i in wanted if i not in held]
    for first, last in _runs(missing, BATCH):
        folder = batches / f"{first:06d}-{last:06d}"
        log(f"synthesising participants {first}-{last} of seed {seed} ({size}) in {folder}")
        started = time.perf_counter()
        spec = CohortSpec(
            out=folder,
            participants=last - first + 1,
            protocol=PROTOCOL,
            seed=seed,
            size=size,
            rates=NO_ARTEFACTS,
            first_index=first,
            appearance=appearance,
            appearance_seed=appearance_seed,
        )
        generate_cohort(spec)
        log(f"synthesised in {time.perf_counter() - started:.0f} s")
        held |= dict.fromkeys(range(first, last + 1), folder)
    members = []
    for folder in sorted({held[i] for i in wanted}):
        sheet = read_tsv(folder / "participants.tsv")
        for row in sheet.to_dict("records"):
            if int(str(row["participant_id"]).removeprefix(PROTOCOL)) in wanted:
                members.append(
                    {
                        "participant_id": row["participant_id"],
                        "shard": "accuracy",
                        "dicom_path": (folder / str(row["dicom"])).resolve(),
                        "batch": folder,
                    }
                )
    table = pd.DataFrame(members).sort_values("participant_id", ignore_index=True)
    converted = work / "participants"
    started = time.perf_counter()
    inventory = inventory_shard(table, converted, log=log)
    status = convert_shard(table, converted, inventory, log=log)
    log(f"inventory and conversion: {time.perf_counter() - started:.0f} s")
    left_out = {
        row["participant_id"]: {"reason": row["reason"], "detail": f"{row['stage']} stage"}
        for row in status.to_dict("records")
        if row["status"] != "ok"
    }
    ids = set(table["participant_id"]) - set(left_out)
    pairs = [
        pair
        for folder in sorted(set(table["batch"]))
        for pair in synthetic_pairs(folder, converted)
        if pair.participant_id in ids
    ]
    return sorted(pairs, key=lambda pair: pair.participant_id), left_out


def _runs(indices: list[int], longest: int) -> list[tuple[int, int]]:
    """Consecutive runs of sorted ``indices``, at most ``longest`` long, as (first, last)."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index - 1 and index - runs[-1][0] < longest:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


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
