"""Per-label decision thresholds, calibrated on annotated participants.

Why: a network's probabilities need not be cut at 0.5 to give unbiased volumes. The
shipped model sees the hips at 4 x 4 x 6 mm and learnt partial-volume targets with a soft
Dice loss; put back on the 2.2 x 2.2 x 3 mm stitched grid and cut at 0.5 its held-out
volumes came out 8-17 % below truth, differently per muscle (thin, curved iliacus worst).
Volume is what the cohort statistics use, so the bias goes straight into every table. A
threshold per label, chosen so that the model's total volume of that label over a set
of annotated *calibration* participants equals the annotated total, removes it. The
calibration participants must be neither training participants (on which the model is
better than on new ones) nor the held-out ones (which then measure the result).

How: each calibration participant is segmented as the workflow segments it, up to the
probabilities on the stitched grid (:func:`myoflow.segment.model.labelling.resampled_probabilities`)
at every voxel where some label reaches :data:`FLOOR`. The decision rule of
:func:`myoflow.segment.model.labelling.stitch_labels` gives a voxel to label ``l`` (either side)
when ``p_l / t_l >= max(1, r)``, ``r`` the best ratio of the other labels; so with the
other thresholds fixed, ``l`` holds a voxel exactly when ``t_l <= p_l / max(1, r)``, and
the threshold that gives the annotated volume is where those values, taken from the
largest down and each weighted by its voxel's volume (participants may lie on different
grids), add up to it. Sweeping the labels in turn until no threshold moves by
more than :data:`TOLERANCE` settles the interactions. The small islands and holes that
:func:`myoflow.segment.model.labelling.clean_labels` then removes or fills are not modelled (they
are a fraction of a percent of a muscle's volume); the held-out evaluation that follows
calibration runs the whole segmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from myoflow.core.labels import LABELS
from myoflow.segment.crop import SIDES, CropGeometry
from myoflow.segment.model.labelling import THRESHOLD, resampled_probabilities

FLOOR = 0.05
"""Lowest threshold calibration may choose: probabilities below it are not kept."""
CEILING = 0.95
"""Highest threshold calibration may choose."""
TOLERANCE = 1e-4
"""Sweeps stop when no threshold moved more than this."""
MAX_SWEEPS = 50


class CalibrationError(ValueError):
    """Calibration was given nothing to calibrate on, or inconsistent inputs."""


@dataclass(frozen=True)
class CalibrationVoxels:
    """One participant's candidate voxels: wherever some label reaches :data:`FLOOR`.

    Attributes:
        participant_id: whose.
        probabilities: (n, 2 L) float32, the resampled probability of each (side, label)
            column at each candidate voxel: columns side by side in :data:`SIDES` order,
            labels in the model's order within a side (0 where a side's crop has none).
        truth: (n,) the annotated label value (:data:`LABELS`) at each candidate voxel.
        truth_voxels: (L,) voxels of each label (both sides) in the whole annotation.
        voxel_ml: volume of one stitched voxel.
    """

    participant_id: str
    probabilities: np.ndarray
    truth: np.ndarray
    truth_voxels: np.ndarray
    voxel_ml: float


def column_values(label_names: Sequence[str]) -> np.ndarray:
    """The label value (:data:`LABELS`) of each (side, label) column."""
    return np.array([LABELS[f"{name}_{side}"] for side in SIDES for name in label_names])


def collect_voxels(
    participant_id: str,
    probabilities: Mapping[str, np.ndarray],
    geometries: Mapping[str, CropGeometry],
    label_names: Sequence[str],
    truth: np.ndarray,
    affine_ras: np.ndarray,
    voxel_ml: float,
) -> CalibrationVoxels:
    """The candidate voxels of one participant.

    Args:
        participant_id: whose.
        probabilities: per side (keys of :data:`SIDES`), (L, X, Y, Z) crop probabilities.
        geometries: per side, the crop's geometry.
        label_names: the model's L labels.
        truth: the annotated label map on the stitched grid.
        affine_ras: the stitched grid's voxel -> RAS affine.
        voxel_ml: volume of one stitched voxel.
    """
    shape = np.shape(truth)
    n_labels = len(label_names)
    floors = [FLOOR] * n_labels
    side_column = {side: n * n_labels for n, side in enumerate(SIDES)}
    parts: list[tuple[int, np.ndarray, np.ndarray]] = []
    for side, index, region, resampled in resampled_probabilities(
        {side: probabilities[side] for side in SIDES},
        geometries,
        label_names,
        shape,
        affine_ras,
        floors,
    ):
        keep = resampled >= FLOOR
        local = np.nonzero(keep)
        flat = np.ravel_multi_index(
            tuple(c + s.start for c, s in zip(local, region, strict=True)), shape
        )
        parts.append((side_column[side] + index, flat, resampled[keep]))
    flat_all = np.unique(np.concatenate([flat for _, flat, _ in parts] or [np.array([], int)]))
    matrix = np.zeros((flat_all.size, 2 * n_labels), dtype=np.float32)
    for column, flat, values in parts:
        matrix[np.searchsorted(flat_all, flat), column] = values
    values = column_values(label_names)
    truth = np.asarray(truth)
    counts = np.array(
        [np.count_nonzero(np.isin(truth, values[[m, m + n_labels]])) for m in range(n_labels)]
    )
    return CalibrationVoxels(
        participant_id, matrix, truth.ravel()[flat_all], counts, float(voxel_ml)
    )


def decide(
    probabilities: np.ndarray, thresholds: Sequence[float], values: np.ndarray
) -> np.ndarray:
    """The label value :func:`~myoflow.segment.model.labelling.stitch_labels` gives each candidate
    voxel (0: background) under per-label ``thresholds``."""
    cuts = np.tile(np.asarray(thresholds, dtype=np.float32), 2)
    ratio = probabilities / cuts
    winner = np.argmax(ratio, axis=1)  # ties: the first column, as in stitch_labels
    kept = ratio[np.arange(len(ratio)), winner] >= 1.0
    return np.where(kept, values[winner], 0)


def calibrate_thresholds(
    voxels: Sequence[CalibrationVoxels], label_names: Sequence[str]
) -> tuple[np.ndarray, int]:
    """Per-label thresholds under which each label's total volume over ``voxels`` equals
    its annotated total (the module docstring says how), and the sweeps it took.

    Raises:
        CalibrationError: no participant, or a label that no participant's annotation holds.
    """
    if not voxels:
        raise CalibrationError("no calibration participant")
    n_labels = len(label_names)
    targets_ml = np.sum([v.truth_voxels * v.voxel_ml for v in voxels], axis=0)
    missing = [name for name, ml in zip(label_names, targets_ml, strict=True) if ml == 0]
    if missing:
        raise CalibrationError(f"no calibration participant's annotation holds {missing}")
    probabilities = np.concatenate([v.probabilities for v in voxels])
    voxel_ml = np.concatenate([np.full(len(v.probabilities), v.voxel_ml) for v in voxels])
    thresholds = np.full(n_labels, THRESHOLD)
    for sweep in range(1, MAX_SWEEPS + 1):
        moved = 0.0
        for label in range(n_labels):
            columns = [label, label + n_labels]
            others = np.delete(np.arange(2 * n_labels), columns)
            other_cuts = np.tile(thresholds, 2)[others]
            rival = (probabilities[:, others] / other_cuts).max(axis=1, initial=0.0)
            reach = probabilities[:, columns].max(axis=1) / np.maximum(rival, 1.0)
            cut = _cut_for_volume(reach, voxel_ml, targets_ml[label])
            new = float(np.clip(cut, FLOOR, CEILING))
            moved = max(moved, abs(new - thresholds[label]))
            thresholds[label] = new
        if moved <= TOLERANCE:
            return thresholds, sweep
    return thresholds, MAX_SWEEPS


def _cut_for_volume(values: np.ndarray, voxel_ml: np.ndarray, target_ml: float) -> float:
    """The largest cut ``t`` such that the voxels with ``values >= t`` hold at least
    ``target_ml`` (the smallest value when all of them hold less)."""
    if values.size == 0:
        return FLOOR
    order = np.argsort(values)[::-1]
    held = np.cumsum(voxel_ml[order])
    reached = min(int(np.searchsorted(held, target_ml - 1e-9)), values.size - 1)
    return float(values[order[reached]])


def calibration_table(
    voxels: Sequence[CalibrationVoxels],
    label_names: Sequence[str],
    thresholds: Sequence[float],
) -> pd.DataFrame:
    """Per label: threshold, annotated and predicted volume (ml, summed over participants
    and sides) and pooled Dice, at 0.5 and at ``thresholds``, on the calibration voxels
    (before :func:`~myoflow.segment.model.labelling.clean_labels`)."""
    values = column_values(label_names)
    n_labels = len(label_names)
    rows = []
    for name, cut in ((f"{THRESHOLD:g}", [THRESHOLD] * n_labels), ("calibrated", thresholds)):
        predicted = np.zeros(n_labels)
        overlap = np.zeros(n_labels)
        truth_ml = np.zeros(n_labels)
        for v in voxels:
            decided = decide(v.probabilities, cut, values)
            for m in range(n_labels):
                side_values = values[[m, m + n_labels]]
                mine = np.isin(decided, side_values)
                predicted[m] += np.count_nonzero(mine) * v.voxel_ml
                overlap[m] += np.count_nonzero(mine & (decided == v.truth)) * v.voxel_ml
                truth_ml[m] += v.truth_voxels[m] * v.voxel_ml
        for m, label in enumerate(label_names):
            rows.append(
                {
                    "label": label,
                    "thresholds": name,
                    "threshold": float(cut[m]),
                    "truth_ml": truth_ml[m],
                    "predicted_ml": predicted[m],
                    "volume_bias_percent": 100.0 * (predicted[m] - truth_ml[m]) / truth_ml[m],
                    "dice": 2.0 * overlap[m] / (predicted[m] + truth_ml[m]),
                }
            )
    return pd.DataFrame(rows)


def participant_voxels(
    model: Any,
    config: Mapping[str, Any],
    pair: Any,
    device: Any,
    batch_size: int = 2,
) -> CalibrationVoxels:
    """Segment one annotated pair (:class:`myoflow.segment.model.samples.TrainingPair`) up to its
    stitched probabilities and collect its candidate voxels.

    Raises:
        PairsError: a file of the pair is missing or unreadable.
        LandmarkError: no landmarks file and the hips cannot be detected.
    """
    import torch

    from myoflow.core.label_grid import voxel_geometry
    from myoflow.measure.overlap import labels_on_grid
    from myoflow.segment.model.predict import model_labels, side_probabilities
    from myoflow.segment.model.registry import model_channels
    from myoflow.segment.model.samples import participant_hips, read_channels, read_label_map

    label_names = model_labels(config)
    detect = () if pair.landmarks else ("water", "fat")
    needed = list(dict.fromkeys([*model_channels(config), *detect]))
    channels, affine = read_channels(pair, needed)
    hips = participant_hips(pair, channels, affine)
    with torch.no_grad():
        probabilities, geometries, _ = side_probabilities(
            model, config, channels, affine, hips, device, batch_size
        )
    label_map, label_affine = read_label_map(pair.labels, pair.participant_id)
    shape = np.shape(next(iter(channels.values())))
    truth = labels_on_grid(label_map, label_affine, shape, affine)
    return collect_voxels(
        pair.participant_id,
        probabilities,
        geometries,
        label_names,
        truth,
        affine,
        voxel_geometry(affine).voxel_volume_ml,
    )


def collect_pairs(
    model: Any,
    config: Mapping[str, Any],
    pairs: Sequence[Any],
    device: Any,
    log: Callable[[str], None] = lambda line: None,
) -> tuple[list[CalibrationVoxels], dict[str, dict[str, str]]]:
    """:func:`participant_voxels` of each pair; those whose hips cannot be found are
    returned apart with their reason."""
    from myoflow.segment.model.samples import each_pair

    return each_pair(
        pairs, lambda pair: participant_voxels(model, config, pair, device), "calibration", log
    )
