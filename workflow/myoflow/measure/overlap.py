"""Overlap and volumes of two label maps of one participant: Dice per muscle, per group of
muscles and per side, and each map's volume of the same structures.

Shared by the held-out evaluation of a trained model (:mod:`myoflow.segment.model.evaluate`) and
the agreement with manual annotations in the workflow (:mod:`myoflow.cohort.manual`), so that
both score the same structures the same way. Label values are :data:`LABELS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from myoflow.core.grid import lps_axes
from myoflow.core.labels import GROUPS, LABELS
from myoflow.segment.crop import SIDES


def structures(labels: Sequence[str]) -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """Structures to score: name -> (kind, name, muscles); groups only when complete."""
    out = {m: ("muscle", m, (m,)) for m in labels}
    for group, muscles in GROUPS.items():
        if all(m in labels for m in muscles):
            out[group] = ("group", group, muscles)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return float("nan") if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def score_participant(
    participant_id: str,
    predicted: np.ndarray,
    truth: np.ndarray,
    labels: Sequence[str],
    voxel_volume_ml: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Dice rows and volume rows of one participant (both label maps on one grid)."""
    dice_rows, volume_rows = [], []
    for kind, name, muscles in structures(labels).values():
        for side in SIDES:
            values = [LABELS[f"{m}_{side}"] for m in muscles]
            p, t = np.isin(predicted, values), np.isin(truth, values)
            key = {"participant_id": participant_id, "side": side, "structure": name, "kind": kind}
            dice_rows.append(key | {"dice": dice(p, t)})
            volume_rows.append(
                key
                | {
                    "predicted_ml": np.count_nonzero(p) * voxel_volume_ml,
                    "truth_ml": np.count_nonzero(t) * voxel_volume_ml,
                }
            )
    return dice_rows, volume_rows


def labels_on_grid(
    label_map: np.ndarray, label_affine: np.ndarray, shape: Sequence[int], affine: np.ndarray
) -> np.ndarray:
    """``label_map`` on the grid (``shape``, ``affine``), nearest neighbour, 0 outside."""
    if tuple(label_map.shape) == tuple(shape) and np.allclose(label_affine, affine, atol=1e-4):
        return label_map
    _, source = lps_axes(label_affine)
    _, target = lps_axes(affine)
    transform = np.linalg.inv(source) @ target
    return ndimage.affine_transform(
        label_map,
        transform[:3, :3],
        transform[:3, 3],
        output_shape=tuple(shape),
        order=0,
        mode="grid-constant",
        cval=0,
    )
