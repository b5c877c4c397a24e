"""The shipped model (``resources/models/hips-cascade``) still segments: a Dice floor per
structure on a few small synthetic participants, on CPU.

Two participants of cohort seed 4001 (no training, calibration or benchmark run used it),
rendered in memory at half resolution (``--size small``) the way ``myoflow synth`` renders
them (coil bias, noise per station, stations stitched; no DICOM round trip), hips at the
generator's true centres, segmented by the cascade as the workflow segments
(:func:`myoflow.segment.model.predict.segment_participant`) and scored against the truth
labels per participant and side (:func:`myoflow.measure.overlap.score_participant`).

Lowest Dice measured over the 4 participant sides (torch 2.13 CPU): gluteus 0.954,
gluteus maximus 0.947, medius 0.940, minimus 0.938, iliacus 0.917, iliopsoas 0.944, psoas
major 0.945. :data:`FLOORS` lie 0.03 below, rounded down, which no numerical drift of
inference reaches, while labels moved by one voxel of this grid (4.5 mm across, 6 mm
along the body) fall below at least one floor, and swapped sides or muscles fall to
about 0 (the last tests check that the floors catch these).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from myoflow.core.labels import LABELS
from myoflow.landmarks.record import HipLandmarks
from myoflow.measure.overlap import score_participant
from myoflow.segment.crop import SIDES
from myoflow.segment.model.predict import model_labels, segment_participant
from myoflow.segment.stage import load_segmenter
from myoflow.synth.geometry import protocol
from myoflow.synth.phenotypes import sample_cohort
from myoflow.synth.render import render_participant
from myoflow.synth.rng import participant_rng
from myoflow.synth.signal import Artefacts, bias_field, stitched_channels

MODEL = Path(__file__).resolve().parents[2] / "resources" / "models" / "hips-cascade"
SEED = 4001
PARTICIPANTS = 2
FLOORS = {
    "psoas_major": 0.91,
    "iliacus": 0.88,
    "gluteus_maximus": 0.91,
    "gluteus_medius": 0.91,
    "gluteus_minimus": 0.90,
    "iliopsoas": 0.91,
    "gluteus": 0.92,
}
"""Lowest acceptable Dice of any participant side, per structure."""


@dataclass(frozen=True)
class Segmented:
    """One participant's predicted and true label maps on its stitched grid."""

    participant_id: str
    predicted: np.ndarray
    truth: np.ndarray


@pytest.fixture(scope="module")
def model_labels_and_cases() -> tuple[list[str], list[Segmented]]:
    """The shipped model's labels and its segmentation of each participant."""
    segmenter = load_segmenter(MODEL, torch.device("cpu"))
    ukbb = protocol("ukbb", "small")
    grid = ukbb.grid
    cases = []
    for index, row in enumerate(sample_cohort(SEED, PARTICIPANTS, "ukbb").to_dict("records"), 1):
        phantom = render_participant(row, grid, participant_rng(SEED, index, "texture"))
        bias = bias_field(grid.shape, participant_rng(SEED, index, "bias"))
        channels = stitched_channels(
            phantom.water * bias,
            phantom.fat * bias,
            ukbb.stations,
            Artefacts(),
            participant_rng(SEED, index, "noise"),
        )
        hips = {s: np.array([phantom.truth[f"hip_{s}_{a}_mm"] for a in "xyz"]) for s in SIDES}
        landmarks = HipLandmarks(hips["left"], hips["right"], 1.0, (22.0, 22.0))
        with torch.no_grad():
            segmentation = segment_participant(
                segmenter.model, segmenter.config, channels, grid.affine_ras(), landmarks
            )
        cases.append(Segmented(row["participant_id"], segmentation.labels, phantom.labels))
    return model_labels(segmenter.config), cases


LabelChange = Callable[[np.ndarray], np.ndarray]


def lowest_dice(
    labels: list[str], cases: list[Segmented], change: LabelChange = lambda labels: labels
) -> dict[str, float]:
    """The lowest Dice over participants and sides per structure, of ``change(predicted)``."""
    rows = []
    for case in cases:
        rows += score_participant(
            case.participant_id, change(case.predicted), case.truth, labels, 1.0
        )[0]
    return pd.DataFrame(rows).groupby("structure")["dice"].min().to_dict()


def exchanged(pairs: list[tuple[str, str]]) -> LabelChange:
    """A function giving a label map with the values of each pair of label names exchanged."""
    lookup = np.arange(256, dtype=np.int64)
    for first, second in pairs:
        lookup[LABELS[first]], lookup[LABELS[second]] = LABELS[second], LABELS[first]
    return lambda labels: lookup[labels].astype(labels.dtype)


def below_floor(dice: dict[str, float]) -> list[str]:
    """The structures whose Dice is under their floor (or NaN), sorted."""
    return sorted(s for s, value in dice.items() if not value >= FLOORS[s])


def test_the_shipped_model_scores_above_the_floor_on_every_side(model_labels_and_cases):
    labels, cases = model_labels_and_cases
    assert labels == [
        "psoas_major", "iliacus", "gluteus_maximus", "gluteus_medius", "gluteus_minimus"
    ]  # fmt: skip
    dice = lowest_dice(labels, cases)
    assert set(dice) == set(FLOORS)
    failing = {s: round(dice[s], 3) for s in below_floor(dice)}
    assert not failing, f"lowest Dice below the floor {FLOORS}: {failing}"


def test_the_floor_catches_swapped_sides(model_labels_and_cases):
    labels, cases = model_labels_and_cases
    flip = exchanged([(f"{m}_left", f"{m}_right") for m in labels])
    assert below_floor(lowest_dice(labels, cases, flip)) == sorted(FLOORS)


def test_the_floor_catches_swapped_muscles(model_labels_and_cases):
    labels, cases = model_labels_and_cases
    swap = exchanged(
        [(f"gluteus_medius_{s}", f"gluteus_minimus_{s}") for s in SIDES]
        + [(f"psoas_major_{s}", f"iliacus_{s}") for s in SIDES]
    )
    below = below_floor(lowest_dice(labels, cases, swap))
    assert below == ["gluteus_medius", "gluteus_minimus", "iliacus", "psoas_major"]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_the_floor_catches_labels_one_voxel_off(model_labels_and_cases, axis):
    labels, cases = model_labels_and_cases
    assert below_floor(lowest_dice(labels, cases, lambda a: np.roll(a, 1, axis=axis)))
