"""From per-side crop probabilities to one label map on the stitched grid: pure functions.

Steps 3 and 4 of :mod:`myoflow.segment.model.predict`: :func:`stitch_labels` resamples each
side's probabilities linearly onto the stitched grid and gives a voxel the label whose
probability is highest relative to its threshold, if it reaches it; :func:`clean_labels`
drops small islands and fills holes. Label values are those of
:data:`myoflow.core.labels.LABELS`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from myoflow.core.grid import lps_axes
from myoflow.core.labels import LABELS
from myoflow.segment.crop import CropGeometry, uncrop

THRESHOLD = 0.5
"""A voxel is muscle when its highest probability reaches this."""

MIN_PART_FRACTION = 0.1
"""Components of a label at least this share of its largest one are kept (see
:func:`clean_labels`)."""


def _translation(offset: Sequence[float]) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = offset
    return matrix


def crop_box(
    geometry: CropGeometry, stitched_shape: Sequence[int], affine_ras: np.ndarray
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """The stitched voxels whose centres lie inside the crop (crop index in (-0.5, n - 0.5)
    along each axis), as a half-open box clipped to the volume; empty boxes have lo == hi.

    These are the voxels :func:`myoflow.segment.crop.uncrop` with ``order=0`` fills.
    """
    _, stitched = lps_axes(affine_ras)
    faces = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in geometry.shape], indexing="ij"))
    corners = geometry.affine_lps[:3, :3] @ faces.reshape(3, -1) + geometry.affine_lps[:3, 3:4]
    index = np.linalg.solve(stitched[:3, :3], corners - stitched[:3, 3:4])
    # Centres strictly inside; 1e-6 voxels absorbs rounding where a face meets a centre.
    low = np.floor(index.min(axis=1) + 1e-6).astype(int) + 1
    high = np.ceil(index.max(axis=1) - 1e-6).astype(int)
    shape = np.asarray(stitched_shape)
    low, high = np.clip(low, 0, shape), np.clip(high, 0, shape)
    high = np.maximum(high, low)
    return tuple((int(a), int(b)) for a, b in zip(low, high, strict=True))  # type: ignore[return-value]


def _above_threshold_block(probability: np.ndarray, threshold: float) -> tuple[slice, ...] | None:
    """The crop voxels that can give a stitched voxel >= ``threshold``, with a 1-voxel rim.

    Linear interpolation is a convex combination of the 8 neighbouring crop voxels, so a
    stitched voxel can only reach the threshold next to a crop voxel that does; resampling
    this block alone gives every label decision exactly, at a fraction of the cost.
    """
    above = probability >= threshold
    if not above.any():
        return None
    block = []
    for axis in range(3):
        hits = np.flatnonzero(above.any(axis=tuple(a for a in range(3) if a != axis)))
        block.append(slice(max(hits[0] - 1, 0), min(hits[-1] + 2, probability.shape[axis])))
    return tuple(block)


def label_thresholds(config: Mapping[str, Any], label_names: Sequence[str]) -> list[float]:
    """Each label's decision threshold: the model config's ``thresholds`` (set by
    :mod:`myoflow.segment.model.calibrate`), :data:`THRESHOLD` for a label it does not name."""
    given = config.get("thresholds") or {}
    return [float(given.get(name, THRESHOLD)) for name in label_names]


def resampled_probabilities(
    probabilities: Mapping[str, np.ndarray],
    geometries: Mapping[str, CropGeometry],
    label_names: Sequence[str],
    stitched_shape: Sequence[int],
    affine_ras: np.ndarray,
    floors: Sequence[float],
) -> Iterator[tuple[str, int, tuple[slice, ...], np.ndarray]]:
    """Each side's and label's probabilities resampled linearly onto the stitched grid,
    where they can reach that label's ``floors`` value.

    Yields ``(side, label index, stitched region, probabilities there)`` per side (in the
    order of ``probabilities``) and label (in the order of ``label_names``);
    labels that reach their floor nowhere are left out. Outside the regions every
    resampled probability is below its floor.

    Raises:
        ValueError: a side's probabilities do not have one channel per label, or a name
            is not a muscle of ``LABELS``.
    """
    shape = tuple(int(n) for n in stitched_shape)
    for side, side_probabilities in probabilities.items():
        geometry = geometries[side]
        side_probabilities = np.asarray(side_probabilities, dtype=np.float32)
        if side_probabilities.shape != (len(label_names), *geometry.shape):
            raise ValueError(
                f"{side}: probabilities {side_probabilities.shape} are not one crop "
                f"{geometry.shape} per label {list(label_names)}"
            )
        for index, (name, probability) in enumerate(
            zip(label_names, side_probabilities, strict=True)
        ):
            key = f"{name}_{side}"
            if key not in LABELS:
                raise ValueError(f"no label value for {key!r}")
            block = _above_threshold_block(probability, floors[index])
            if block is None:
                continue
            # Resample only the block, onto only the stitched voxels it covers.
            start = [s.start for s in block]
            part = CropGeometry(
                side,
                tuple(s.stop - s.start for s in block),  # type: ignore[arg-type]
                geometry.affine_lps @ _translation(start),
            )
            box = crop_box(part, shape, affine_ras)
            box_shape = [b - a for a, b in box]
            if min(box_shape) <= 0:
                continue
            low = [a for a, _ in box]
            resampled = uncrop(
                probability[block], part, box_shape, affine_ras @ _translation(low), order=1
            )
            yield side, index, tuple(slice(a, b) for a, b in box), resampled


def stitch_labels(
    probabilities: Mapping[str, np.ndarray],
    geometries: Mapping[str, CropGeometry],
    label_names: Sequence[str],
    stitched_shape: Sequence[int],
    affine_ras: np.ndarray,
    thresholds: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each voxel's label and side by the highest probability over its label's threshold.

    A voxel takes the label and side with the largest ratio of probability to threshold,
    if that ratio is at least 1; with every threshold 0.5 (the default,
    :data:`THRESHOLD`) that is the most probable label where its probability is >= 0.5.
    Calibrated thresholds (:mod:`myoflow.segment.model.calibrate`) differ per label, and the
    ratio keeps the decision between two labels consistent with each one's own cut.

    Args:
        probabilities: per side, (L, X, Y, Z) probabilities on that side's crop grid.
        geometries: per side, the crop's geometry (:func:`myoflow.segment.crop.crop_geometry`).
        label_names: the L muscle names, in channel order.
        stitched_shape: shape of the stitched grid.
        affine_ras: its voxel -> RAS mm affine.
        thresholds: the L labels' thresholds (default all :data:`THRESHOLD`).

    Returns:
        (int16 labels, float32 winning probability; both 0 where no label reaches its
        threshold). Ties go to the side and label met first.

    Raises:
        ValueError: a side's probabilities do not have one channel per label, a name is
            not a muscle of ``LABELS``, or a threshold is not in (0, 1).
    """
    cuts = [THRESHOLD] * len(label_names) if thresholds is None else list(thresholds)
    if len(cuts) != len(label_names) or not all(0.0 < t < 1.0 for t in cuts):
        raise ValueError(f"thresholds {cuts} are not one value in (0, 1) per label {label_names}")
    shape = tuple(int(n) for n in stitched_shape)
    labels = np.zeros(shape, dtype=np.int16)
    best = np.zeros(shape, dtype=np.float32)
    score = np.zeros(shape, dtype=np.float32)
    for side, index, region, resampled in resampled_probabilities(
        probabilities, geometries, label_names, shape, affine_ras, cuts
    ):
        ratio = resampled / np.float32(cuts[index])
        wins = ratio > score[region]
        score[region][wins] = ratio[wins]
        best[region][wins] = resampled[wins]
        labels[region][wins] = LABELS[f"{label_names[index]}_{side}"]
    below = score < 1.0
    labels[below] = 0
    best[below] = 0.0
    return labels, best


def clean_labels(labels: np.ndarray) -> np.ndarray:
    """Drop each label's small 26-connected islands and fill its holes.

    A label keeps its largest component and every other one at least
    :data:`MIN_PART_FRACTION` of its size; smaller ones become background. Keeping only
    the largest would cut muscles that the coarse crop sees in two: on 3 full-size
    synthetic participants, the partial-volume training targets of the hips crop
    (4 x 4 x 6 mm), put back on the stitched grid, split 3 of 6 iliaci into two parts of
    75-85 % of each other's size, 13-20 mm apart (keeping one would cost ~45 % of the
    muscle), while every other stray part held at most 2 voxels (bench/inference.py's
    oracle; tests/segment/test_predict.py).

    Holes are filled in 3D (:func:`scipy.ndimage.binary_fill_holes` on the label's whole
    mask), not per axial slice. A muscle is a solid body, so background enclosed on every
    side in 3D can only be a dropout of the network. Per slice, background enclosed in
    one axial plane is often real: fat septa and intramuscular fat (what the fat fraction
    measures), or the gap between two heads of a muscle that opens a slice further, so
    filling it would add tissue that is not muscle. Holes are filled only where no other
    label is: a muscle enclosed by another keeps its own label. Returns a new array.
    """
    labels = np.asarray(labels)
    out = labels.copy()
    structure = np.ones((3, 3, 3), dtype=bool)
    for value, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        part = out[region]  # a view: edits land in ``out``
        mask = part == value
        components, count = ndimage.label(mask, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            small = sizes < MIN_PART_FRACTION * sizes.max()
            small[0] = False
            drop = small[components]
            part[drop] = 0
            mask &= ~drop
        holes = ndimage.binary_fill_holes(mask) & ~mask
        part[holes & (part == 0)] = value
    return out


def labels_from_probabilities(
    probabilities: Mapping[str, np.ndarray],
    geometries: Mapping[str, CropGeometry],
    label_names: Sequence[str],
    stitched_shape: Sequence[int],
    affine_ras: np.ndarray,
    thresholds: Sequence[float] | None = None,
) -> np.ndarray:
    """The cleaned int16 label map from per-side crop probabilities.

    :func:`stitch_labels` (linear resampling, highest probability over its threshold
    wins), then :func:`clean_labels` (small islands dropped, holes filled in 3D).
    Arguments as for :func:`stitch_labels`.

    Raises:
        ValueError: see :func:`stitch_labels`.
    """
    labels, _ = stitch_labels(
        probabilities, geometries, label_names, stitched_shape, affine_ras, thresholds
    )
    return clean_labels(labels)
