"""Robustness: the same participants as our generator renders them and as other scanners
would, through landmarks, segmentation and swap QC, in one table (issue 18).

Run, from a fresh checkout::

    .venv/bin/python bench/robustness.py --seed 3001 --participants 6

Participants 1 to N of ``myoflow synth`` cohort ``--seed`` (UK Biobank, full size unless
``--size small``, no acquisition artefacts) are rendered three ways:

- **standard**: the generator's own look, the one the shipped model was trained on;
- **randomised A** and **randomised B**: ``--appearance randomised`` with two independent
  ``--appearance-seed`` values (default 9001 and 9002): the same bodies and phenotypes,
  each with a drawn sequence (1.5 / 3 T, echo times), tissue signals, slice spacing 3-6 mm,
  blur, bias fields, noise, vendor scaling and encoding, and randomised muscle shapes
  (docs/appearance.md). Neither seed was used to develop any stage.

Each render is synthesised as DICOM and converted by the workflow's own stages
(``bench/accuracy.py``'s :func:`synthesised_pairs`, cached under ``--work``, default
``data/robustness/``; the standard render reuses ``data/accuracy/`` when it is there), then:

- **landmarks**: :func:`myoflow.landmarks.hip_detection.detect_hips` on the converted water
  and fat; error = distance to the generator's true hip joint centre (truth.tsv), both
  sides; a participant without hips counts as not found;
- **segmentation**: the model (``--model``, default the shipped cascade) on the
  participants whose hips were found, from those hips
  (:func:`myoflow.segment.model.evaluate.evaluate`): Dice per structure and the volume
  bias in % of the mean of predicted and true volume (Bland-Altman);
- **swap QC**: :func:`myoflow.measure.swaps.detect_swaps` on each converted participant
  as delivered (clean: any flag is a false positive) and with a swap planted on the
  stitched grid: every station's water and fat traded in turn (a whole-station swap), and
  one partial swap per participant (an ellipsoid inside one station, drawn as the
  generator draws its partial swaps). Planting after stitching trades the already
  stitched magnitudes, which is what a mislabelled reconstruction delivers, except in
  the few slices where two stations overlap and the converter blends them.

Printed: one row per render with hips found, median and max error, Dice of the iliopsoas,
gluteus and psoas major, their volume bias, swap sensitivity and specificity, and the
issue's targets with pass/FAIL. ``--json`` writes the same figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import PROTOCOL, WORK_ROOT, synthesised_pairs  # noqa: E402  (a sibling bench)

from myoflow.core.io import read_tsv  # noqa: E402
from myoflow.landmarks.hip_detection import detect_hips  # noqa: E402
from myoflow.landmarks.record import LandmarkError  # noqa: E402
from myoflow.measure.swaps import detect_swaps, station_slices  # noqa: E402
from myoflow.segment.model.card import load_model  # noqa: E402
from myoflow.segment.model.evaluate import evaluate  # noqa: E402
from myoflow.segment.model.samples import read_channels  # noqa: E402
from myoflow.synth.rng import participant_rng  # noqa: E402
from myoflow.synth.signal import ArtefactRates, sample_artefacts, swap_region  # noqa: E402

CHANNELS = ("water", "fat", "in", "opp")
STRUCTURES = ("iliopsoas", "gluteus", "psoas_major")
ONLY_PARTIAL = ArtefactRates(swap=0, partial_swap=1, missing_station=0, missing_channel=0)
ROBUSTNESS_ROOT = WORK_ROOT.parent / "robustness"
"""Default parent of the randomised renders' work folders (git-ignored ``data/``)."""

TARGETS = {
    # appearance -> (Dice minimum per structure, |volume bias| limit in %)
    "standard": ({"iliopsoas": 0.95, "gluteus": 0.95, "psoas_major": 0.92}, 2.0),
    "randomised": ({"iliopsoas": 0.93, "gluteus": 0.93, "psoas_major": 0.90}, 3.0),
}
"""Issue 18's segmentation targets (full-size participants)."""
HIPS_FOUND, HIPS_MEDIAN_MM, HIPS_MAX_MM = 0.995, 2.0, 6.0
SWAP_SENSITIVITY, SWAP_SPECIFICITY = 0.95, 0.99


@dataclass(frozen=True)
class Render:
    """One way of rendering the cohort."""

    name: str
    appearance: str
    appearance_seed: int | None


@dataclass
class Outcome:
    """What one render gave, summed over its participants."""

    render: Render
    participants: int = 0
    not_converted: dict[str, dict[str, str]] = field(default_factory=dict)
    hip_errors_mm: list[float] = field(default_factory=list)
    hips_found: int = 0
    hips_missing: dict[str, str] = field(default_factory=dict)
    dice: dict[str, float] = field(default_factory=dict)
    dice_min: dict[str, float] = field(default_factory=dict)
    bias_percent: dict[str, float] = field(default_factory=dict)
    swaps_planted: int = 0
    swaps_found: int = 0
    clean_acquisitions: int = 0
    clean_flagged: int = 0
    flagged_examples: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        errors = np.asarray(self.hip_errors_mm)
        return {
            "render": self.render.name,
            "appearance": self.render.appearance,
            "appearance_seed": self.render.appearance_seed,
            "participants": self.participants,
            "not_converted": self.not_converted,
            "hips_found": self.hips_found,
            "hips_missing": self.hips_missing,
            "hip_error_median_mm": float(np.median(errors)) if errors.size else None,
            "hip_error_max_mm": float(errors.max()) if errors.size else None,
            "dice_mean": self.dice,
            "dice_min": self.dice_min,
            "volume_bias_percent": self.bias_percent,
            "swap_sensitivity": _rate(self.swaps_found, self.swaps_planted),
            "swap_specificity": _rate(
                self.clean_acquisitions - self.clean_flagged, self.clean_acquisitions
            ),
            "swaps_planted": self.swaps_planted,
            "clean_acquisitions": self.clean_acquisitions,
            "flagged_clean": self.flagged_examples,
            "seconds": self.seconds,
        }


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def truth_hips(batches: set[Path]) -> dict[str, dict[str, np.ndarray]]:
    """True hip joint centres (LPS mm) per participant, from the batches' truth.tsv."""
    out = {}
    for batch in batches:
        for row in read_tsv(batch / "truth.tsv").to_dict("records"):
            out[str(row["participant_id"])] = {
                side: np.array([float(row[f"hip_{side}_{a}_mm"]) for a in "xyz"])
                for side in ("left", "right")
            }
    return out


def stations_of(participants_dir: Path, pid: str, affine: np.ndarray, n_slices: int):
    """Each station's slices on the stitched grid, from the conversion's record."""
    record = json.loads((participants_dir / pid / "dixon" / "acquisition.json").read_text())
    stations = sorted(record["stations"], key=lambda s: s["station"])
    z_ranges = [(float(s["z_min_mm"]), float(s["z_max_mm"])) for s in stations]
    return station_slices(z_ranges, affine, n_slices)


def swapped(channels: dict[str, np.ndarray], region: tuple[slice, ...], mask=None):
    """water, fat, in, opp with water and fat traded inside ``region`` (and ``mask``)."""
    water, fat = channels["water"].copy(), channels["fat"].copy()
    if mask is None:
        water[region], fat[region] = channels["fat"][region], channels["water"][region]
    else:
        w, f = water[region], fat[region]
        water[region], fat[region] = np.where(mask, f, w), np.where(mask, w, f)
    return water, fat, channels["in"], channels["opp"]


def judge_swaps(outcome: Outcome, pid: str, index: int, seed: int, channels, affine, stations):
    """Clean, every whole-station swap and one partial swap of one participant."""
    flagged = [d.station for d in detect_swaps(*(channels[c] for c in CHANNELS), stations, affine)
               if d.swapped]  # fmt: skip
    outcome.clean_acquisitions += 1
    if flagged:
        outcome.clean_flagged += 1
        outcome.flagged_examples.append(f"{pid}: stations {flagged}")
    for number, acquisition in planted_swaps(channels, stations, seed, index):
        decisions = detect_swaps(*acquisition, stations, affine)
        outcome.swaps_planted += 1
        outcome.swaps_found += any(d.swapped and d.station == number for d in decisions)


def planted_swaps(channels, stations, seed: int, index: int):
    """(station, acquisition) for every whole-station swap and one partial swap, made one
    at a time (each acquisition copies water and fat: ~115 MB at full size)."""
    for number, (start, stop) in enumerate(stations, start=1):
        yield number, swapped(channels, (slice(None), slice(None), slice(max(start, 0), stop)))
    draw = sample_artefacts(participant_rng(seed, index, "robustness-swap"), len(stations),
                            ONLY_PARTIAL)  # fmt: skip
    number = draw.partial_swap_station
    start, stop = stations[number - 1]
    region = (slice(None), slice(None), slice(max(start, 0), stop))
    shape = channels["water"][region].shape
    mask = swap_region(shape, draw.partial_swap_centre, draw.partial_swap_radii)
    yield number, swapped(channels, region, mask)


def run_render(render: Render, args, model, card, log) -> Outcome:
    """Synthesise (or reuse), convert and score one render of the cohort."""
    if render.appearance == "standard":
        work = args.work / f"{PROTOCOL}-{args.size}-seed{args.seed}"
        if args.work == ROBUSTNESS_ROOT and (WORK_ROOT / work.name).is_dir():
            work = WORK_ROOT / work.name  # bench/accuracy.py made it already
    else:
        work = args.work / f"{PROTOCOL}-{args.size}-seed{args.seed}-look{render.appearance_seed}"
    outcome = Outcome(render)
    started = time.perf_counter()
    pairs, outcome.not_converted = synthesised_pairs(
        work, args.seed, args.participants, args.size, log, render.appearance,
        render.appearance_seed,
    )  # fmt: skip
    outcome.seconds["synthesise_convert"] = time.perf_counter() - started
    outcome.participants = len(pairs) + len(outcome.not_converted)
    truth = truth_hips({p.labels.parents[2] for p in pairs})
    found = {}
    landmark_seconds = swap_seconds = 0.0
    for pair in pairs:
        channels, affine = read_channels(pair, list(CHANNELS))
        started = time.perf_counter()
        try:
            hips = detect_hips(channels["water"], channels["fat"], affine)
        except LandmarkError as err:
            outcome.hips_missing[pair.participant_id] = str(err)
        else:
            found[pair.participant_id] = hips
            true = truth[pair.participant_id]
            outcome.hip_errors_mm += [
                float(np.linalg.norm(hips.left_lps_mm - true["left"])),
                float(np.linalg.norm(hips.right_lps_mm - true["right"])),
            ]
        landmark_seconds += time.perf_counter() - started
        started = time.perf_counter()
        stations = stations_of(work / "participants", pair.participant_id, affine,
                               channels["water"].shape[2])  # fmt: skip
        number = int(pair.participant_id.removeprefix(PROTOCOL))
        judge_swaps(outcome, pair.participant_id, number, args.seed, channels, affine, stations)
        swap_seconds += time.perf_counter() - started
    outcome.hips_found = len(found)
    outcome.seconds["landmarks_per_participant"] = landmark_seconds / max(len(pairs), 1)
    outcome.seconds["swap_qc_per_participant"] = swap_seconds / max(len(pairs), 1)
    started = time.perf_counter()
    scored = [p for p in pairs if p.participant_id in found]
    if scored:
        result = evaluate(model, card["config"], scored, torch.device("cpu"), hips=found, log=log)
        means = result.dice_summary.set_index("structure")["mean"]
        minima = result.dice.groupby("structure")["dice"].min()
        percent = result.agreement[result.agreement["units"] == "%"].set_index("structure")
        for structure in STRUCTURES:
            outcome.dice[structure] = float(means.get(structure, np.nan))
            outcome.dice_min[structure] = float(minima.get(structure, np.nan))
            bias = percent["bias"].get(structure, np.nan) if len(percent) else np.nan
            outcome.bias_percent[structure] = float(bias)
    outcome.seconds["segment_per_participant"] = (time.perf_counter() - started) / max(
        len(scored), 1
    )
    return outcome


def verdicts(outcome: Outcome) -> list[tuple[str, float | None, bool]]:
    """Each of issue 18's targets for this render: (target, measured, met)."""
    summary = outcome.summary()
    total = outcome.participants or 1
    out = [
        (f"hips found >= {HIPS_FOUND:.1%}", outcome.hips_found / total,
         outcome.hips_found / total >= HIPS_FOUND),
        (f"hip error median < {HIPS_MEDIAN_MM} mm", summary["hip_error_median_mm"],
         (summary["hip_error_median_mm"] or np.inf) < HIPS_MEDIAN_MM),
        (f"hip error max < {HIPS_MAX_MM} mm", summary["hip_error_max_mm"],
         (summary["hip_error_max_mm"] or np.inf) < HIPS_MAX_MM),
    ]  # fmt: skip
    minimum, bias_limit = TARGETS[outcome.render.appearance]
    for structure, target in minimum.items():
        value = outcome.dice.get(structure, np.nan)
        out.append((f"{structure} Dice >= {target}", value, bool(value >= target)))
        bias = outcome.bias_percent.get(structure, np.nan)
        out.append((f"{structure} volume bias within +-{bias_limit}%", bias,
                    bool(abs(bias) <= bias_limit)))  # fmt: skip
    sensitivity, specificity = summary["swap_sensitivity"], summary["swap_specificity"]
    out.append((f"swap sensitivity >= {SWAP_SENSITIVITY}", sensitivity,
                (sensitivity or 0) >= SWAP_SENSITIVITY))  # fmt: skip
    out.append((f"swap specificity >= {SWAP_SPECIFICITY}", specificity,
                (specificity or 0) >= SWAP_SPECIFICITY))  # fmt: skip
    return out


def table(outcomes: list[Outcome]) -> pd.DataFrame:
    """The one table: a row per render."""
    rows = []
    for outcome in outcomes:
        s = outcome.summary()
        row = {
            "render": s["render"],
            "n": s["participants"],
            "hips": f"{s['hips_found']}/{s['participants']}",
            "hip med mm": s["hip_error_median_mm"],
            "hip max mm": s["hip_error_max_mm"],
        }
        for structure in STRUCTURES:
            row[f"Dice {structure}"] = outcome.dice.get(structure)
        for structure in STRUCTURES:
            row[f"bias % {structure}"] = outcome.bias_percent.get(structure)
        row["swap sens"] = s["swap_sensitivity"]
        row["swap spec"] = s["swap_specificity"]
        rows.append(row)
    return pd.DataFrame(rows)


def progress(line: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=3001, help="cohort seed (the participants)")
    parser.add_argument("--participants", type=int, default=6)
    parser.add_argument("--size", choices=("full", "small"), default="full")
    parser.add_argument("--appearance-seeds", type=int, nargs=2, default=(9001, 9002))
    parser.add_argument("--model", type=Path, default=Path("resources/models/hips-cascade"))
    parser.add_argument("--work", type=Path, default=ROBUSTNESS_ROOT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, card = load_model(args.model, "cpu")
    renders = [
        Render("standard", "standard", None),
        Render(f"randomised A (look {args.appearance_seeds[0]})", "randomised",
               args.appearance_seeds[0]),
        Render(f"randomised B (look {args.appearance_seeds[1]})", "randomised",
               args.appearance_seeds[1]),
    ]  # fmt: skip
    outcomes = []
    for render in renders:
        progress(f"--- {render.name}")
        outcomes.append(run_render(render, args, model, card, progress))
    print(
        f"\nparticipants 1-{args.participants} of cohort seed {args.seed} ({PROTOCOL}, "
        f"{args.size}); model {args.model} (sha256 {card['weights_sha256'][:12]})\n"
    )
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table(outcomes).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for outcome in outcomes:
        print(f"\n{outcome.render.name}: target, measured, result")
        for name, value, met in verdicts(outcome):
            shown = "n/a" if value is None or np.isnan(value) else f"{value:.3f}"
            print(f"  {name:<40}{shown:>10}  {'pass' if met else 'FAIL'}")
        if outcome.hips_missing:
            print(f"  hips not found: {outcome.hips_missing}")
        if outcome.flagged_examples:
            print(f"  clean participants flagged: {outcome.flagged_examples[:6]}")
        print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in outcome.seconds.items()))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        figures = [o.summary() | {"targets": verdicts(o)} for o in outcomes]
        args.json.write_text(json.dumps(figures, indent=1, default=_jsonable))
    return 0


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))


if __name__ == "__main__":
    sys.exit(main())
