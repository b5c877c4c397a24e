"""Fat-water swaps, station by station (:func:`detect_swaps`).

Two-point Dixon reconstruction picks, voxel by voxel, which of two solutions is water;
when it picks wrong over a station or a region of one, "water" and "fat" trade places
while the in-phase (W + F) and opposed-phase (|W - F|) images stay as they were. Which
label is right cannot be read from brightness alone: another scanner, flip angle or
vendor scaling moves fat against muscle (docs/appearance.md: from about equal to twice as
bright), and gains differ between stations. So every decision here rests on relations
that no gain, scaling or smooth coil bias changes (docs/swaps.md says why each holds):

- **Whole-station swaps** (:func:`_labelling`). Each station's outer layer (the
  ``shell_mm`` under the skin) is subcutaneous fat, so its dominant voxels should be
  labelled fat; anatomy continues across a station join, so the labels of the slices on
  either side of it should agree; and the sign of fat- against water-labelled brightness
  is the participant's, which most stations set. Every labelling of the stations as
  swapped or not is scored on all three, and the best one is taken: a station whose outer
  layer looks water can still be called clean when its joins and contrast say so (necks
  and shoulders with thin fat), and a swapped station is found from its joins even where
  its outer layer is thin.
- **Partial swaps** (:func:`~myoflow.measure.swap_evidence.hidden_label_edges`). A
  swapped region's border is a label edge that in-phase and opposed phase do not show:
  the labels flip from fat- to water-dominant between two voxels a few mm apart whose
  in-phase and opposed phase are equal and between which opp / in does not dip. A real
  border between fat and muscle shows in one of them, as a change in brightness or as the
  cancelling of the voxels that straddle it in the opposed phase. A station whose such
  edges form a connected sheet of ``min_edge_ml`` or more is a partial swap; the decision
  names where the sheet lies (right/left, anterior/posterior of the body centre).
- ``undetermined``: a channel is missing or no tissue is dominated by water or fat.

Each station is judged on its own slices (those no other station covers): stitching
blends overlapping stations, which mixes a swapped station's signals with its neighbour's.

Internally the channels are handled slice-first, indexed (k, j, i): NIfTI readers hand
over Fortran-ordered (i, j, k) arrays, whose transpose is C-ordered, so each station's
slab is a contiguous view instead of a copy. Every statistic used (counts, medians,
connected regions) does not depend on the order voxels are visited in.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from myoflow.core.errors import MyoflowError
from myoflow.measure.swap_evidence import (
    StationEvidence,
    SwapSettings,
    join_agreement,
    local_maximum,
    station_evidence,
)

__all__ = [
    "SWAP_STATUSES",
    "SwapDecision",
    "SwapError",
    "SwapSettings",
    "detect_swaps",
    "local_maximum",
    "mean_index",
    "own_slices",
    "station_slices",
]

SWAP_STATUSES = ("ok", "swap", "partial_swap", "undetermined")
DEFAULT_SETTINGS = SwapSettings()
MAX_STATIONS = 16  # every labelling of the stations is scored (2 ** n)


class SwapError(MyoflowError):
    """Swap detection cannot run on these inputs; the message says why."""


@dataclass(frozen=True)
class SwapDecision:
    """The verdict on one station (``SwapDecision(**asdict(d))`` rebuilds a stored one)."""

    station: int  # 1-based position in the station list given
    k_start: int  # the station's slices on the stitched grid, half-open
    k_stop: int
    status: str  # one of SWAP_STATUSES
    score: float | None  # share of the outer layer's dominant voxels labelled water
    edge_ml: float  # volume of the largest connected hidden label edge (partial swaps)
    region: str  # where that edge lies in the body, e.g. "right anterior"; "" if none
    reason: str

    @property
    def swapped(self) -> bool:
        return self.status in ("swap", "partial_swap")


def station_slices(
    z_ranges_mm: Sequence[tuple[float, float]], affine: np.ndarray, n_slices: int
) -> list[tuple[int, int]]:
    """Each station's slices on the stitched grid, (k_start, k_stop) half-open.

    Args:
        z_ranges_mm: per station, the patient z (mm; LPS and RAS agree on z) of its first
            and last slice centre, as ``dixon/acquisition.json`` records them.
        affine: 4x4 voxel -> RAS mm matrix of the stitched grid, whose k axis is z.
        n_slices: slices of the stitched grid.

    A stitched slice belongs to a station when its centre lies within the station's z
    range (to 1e-3 of a slice), i.e. where the station's own slices surround it.

    Raises:
        SwapError: the grid's i or j axis has a z component or its k axis none.
    """
    a = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    if np.any(np.abs(a[2, :2]) > 1e-3 * spacing[:2]) or abs(a[2, 2]) < 1e-3 * spacing[2]:
        raise SwapError(f"the stitched grid's k axis is not along z: affine {a.round(4).tolist()}")
    out = []
    for low, high in z_ranges_mm:
        k = sorted(((float(low) - a[2, 3]) / a[2, 2], (float(high) - a[2, 3]) / a[2, 2]))
        start = int(np.ceil(k[0] - 1e-3))
        stop = int(np.floor(k[1] + 1e-3)) + 1
        out.append((min(max(start, 0), n_slices), min(max(stop, 0), n_slices)))
    return out


def own_slices(stations: Sequence[tuple[int, int]], n_slices: int) -> list[np.ndarray]:
    """For each station, the slice indices no other station covers (all of its slices
    where others cover every one of them)."""
    cover = np.zeros(n_slices, dtype=int)
    for start, stop in stations:
        cover[max(start, 0) : min(stop, n_slices)] += 1
    out = []
    for start, stop in stations:
        k = np.arange(max(start, 0), min(stop, n_slices))
        own = k[cover[k] == 1]
        out.append(own if own.size else k)
    return out


def detect_swaps(
    water: np.ndarray | None,
    fat: np.ndarray | None,
    in_phase: np.ndarray | None,
    opposed: np.ndarray | None,
    stations: Sequence[tuple[int, int]],
    affine: np.ndarray,
    settings: SwapSettings = DEFAULT_SETTINGS,
) -> list[SwapDecision]:
    """Per-station fat-water swap decisions on the stitched channels (module docstring).

    Args:
        water, fat, in_phase, opposed: stitched Dixon channels (i, j, k); None if missing.
        stations: each station's (k_start, k_stop) on the stitched grid
            (:func:`station_slices`).
        affine: 4x4 voxel -> RAS mm matrix of the channels.
        settings: thresholds.

    Raises:
        SwapError: the channels are not 3-D arrays of one shape, or there are more than
            ``MAX_STATIONS`` stations.
    """
    channels = {"water": water, "fat": fat, "in-phase": in_phase, "opposed-phase": opposed}
    missing = [name for name, array in channels.items() if array is None]
    if missing:
        reason = f"channel missing: {', '.join(missing)}"
        return [_undetermined(n, s, reason) for n, s in enumerate(stations, start=1)]
    shape = np.shape(water)
    if any(np.shape(a) != shape for a in channels.values()) or len(shape) != 3:
        shapes = ", ".join(f"{n} {np.shape(a)}" for n, a in channels.items())
        raise SwapError(f"channels must be 3-D arrays of one shape, got {shapes}")
    if len(stations) > MAX_STATIONS:
        raise SwapError(f"{len(stations)} stations; swap detection takes {MAX_STATIONS} at most")
    linear = np.asarray(affine, dtype=float)[:3, :3]
    voxel_ml = abs(float(np.linalg.det(linear))) / 1000.0
    spacing = tuple(float(v) for v in np.linalg.norm(linear, axis=0)[::-1])  # k, j, i
    slices_first = [_slices_first(a) for a in (water, fat, in_phase, opposed)]
    own = own_slices(stations, shape[2])
    evidence = [
        station_evidence(*(a[_pick(k)] for a in slices_first), spacing, settings) for k in own
    ]
    joins = _joins(own, evidence, settings)
    swapped = _labelling(evidence, joins, settings)
    decisions = []
    for n, (station, k, ev) in enumerate(zip(stations, own, evidence, strict=True)):
        args = (n + 1, station, k, ev, affine, voxel_ml)
        if not (ev.fatty.any() or ev.watery.any()):
            decisions.append(_undetermined(n + 1, station, "no tissue dominated by water or fat"))
        else:
            decisions.append(_judge(*args, swapped[n], joins, settings))
    return decisions


def _pick(k: np.ndarray) -> slice | np.ndarray:
    """Slices ``k`` as a view where they are contiguous."""
    if k.size and k[-1] - k[0] + 1 == k.size:
        return slice(int(k[0]), int(k[-1]) + 1)
    return k


def _slices_first(array: np.ndarray) -> np.ndarray:
    """A channel as C-ordered float32 indexed (k, j, i): free for a Fortran-ordered float32
    array (as NIfTI readers give), one copy otherwise."""
    return np.ascontiguousarray(np.asarray(array, dtype=np.float32).T)


def _undetermined(number: int, station: tuple[int, int], reason: str) -> SwapDecision:
    return SwapDecision(number, station[0], station[1], "undetermined", None, 0.0, "", reason)


@dataclass(frozen=True)
class _Join:
    """Two stations that meet (0-based, ``lower`` has the smaller slices) and how their
    labels agree across the join."""

    lower: int
    upper: int
    same: int
    other: int

    def agreement(self, settings: SwapSettings) -> float:
        """(same - other) / (same + other), 0 for too few voxels to say."""
        total = self.same + self.other
        return 0.0 if total < settings.min_join_voxels else (self.same - self.other) / total


def _joins(
    own: Sequence[np.ndarray], evidence: Sequence[StationEvidence], settings: SwapSettings
) -> list[_Join]:
    """Each pair of stations adjacent along k, compared on the own slices nearest their
    join (the overlap between them blends both, so it is left out)."""
    order = sorted(
        range(len(own)), key=lambda n: (own[n][0], own[n][-1]) if own[n].size else (0, 0)
    )
    joins = []
    for lower, upper in itertools.pairwise(order):
        if not own[lower].size or not own[upper].size or own[lower][-1] >= own[upper][0]:
            continue
        below, above = evidence[lower], evidence[upper]
        same, other = join_agreement(
            (below.fatty[-1], below.watery[-1]), (above.fatty[0], above.watery[0])
        )
        joins.append(_Join(lower, upper, same, other))
    return joins


def _labelling(
    evidence: Sequence[StationEvidence], joins: Sequence[_Join], settings: SwapSettings
) -> np.ndarray:
    """The stations' swapped (True) or not that agrees best with all evidence.

    Every labelling is scored: each station's outer-layer agreement and its contrast's
    sign against the participant's (which most stations set), flipped for a station
    called swapped, plus each join's agreement, flipped where exactly one of its two
    stations is called swapped, less ``swap_prior`` per station called swapped.
    """
    n = len(evidence)
    shell = np.array([e.shell_agreement or 0.0 for e in evidence])
    contrasts = [e.contrast() for e in evidence]
    shown = [c for c in contrasts if c is not None]
    sign = float(np.sign(np.median(shown))) if shown else 0.0
    relative = np.array(
        [
            0.0 if c is None else np.clip(sign * c / settings.contrast_scale, -1, 1)
            for c in contrasts
        ]
    )
    unary = settings.shell_weight * shell + settings.contrast_weight * relative
    labellings = np.array(list(itertools.product((0, 1), repeat=n)), dtype=bool)
    flip = np.where(labellings, -1.0, 1.0)
    score = flip @ unary - settings.swap_prior * labellings.sum(axis=1)
    for join in joins:
        differ = labellings[:, join.lower] != labellings[:, join.upper]
        score += settings.join_weight * join.agreement(settings) * np.where(differ, -1.0, 1.0)
    return labellings[int(np.argmax(score))]


def _judge(number, station, k, ev, affine, voxel_ml, swapped, joins, settings) -> SwapDecision:
    """One station's verdict: a whole swap from the joint labelling; otherwise a partial
    swap where its hidden label edges
    (:func:`~myoflow.measure.swap_evidence.hidden_label_edges`) form a connected sheet of
    at least ``min_edge_ml``."""
    agreement = ev.shell_agreement
    score = None if agreement is None else (1 - agreement) / 2
    own_joins = [j for j in joins if number - 1 in (j.lower, j.upper)]
    join_text = ", ".join(
        f"{100 * j.other / max(j.same + j.other, 1):.0f} % of {j.same + j.other}"
        f" across the join with station {j.upper + 1 if j.lower == number - 1 else j.lower + 1}"
        for j in own_joins
    )
    summary = (
        f"outer layer {'-' if score is None else f'{100 * score:.0f} %'} labelled water"
        f" ({ev.shell_fat + ev.shell_water} dominant voxels); labels differ for"
        f" {join_text or 'no join'}"
    )
    if swapped:
        # Its edges are its joins, which the labelling has weighed: no edge volume.
        reason = f"whole station swapped: {summary}"
        return SwapDecision(number, station[0], station[1], "swap", score, 0.0, "", reason)
    edge_ml, where = _largest_region(ev.hidden_edges, ev.tissue, affine, k, voxel_ml)
    summary += (
        f"; largest label edge that in-phase and opposed phase do not show {edge_ml:.1f} ml"
        f" (a partial swap from {settings.min_edge_ml:g} ml)"
    )
    if edge_ml >= settings.min_edge_ml:
        status, reason = "partial_swap", f"region swapped ({where}): {summary}"
    else:
        status, reason, where = "ok", summary, ""
    return SwapDecision(number, station[0], station[1], status, score, edge_ml, where, reason)


def _largest_region(
    regions: np.ndarray, body: np.ndarray, affine: np.ndarray, k: np.ndarray, voxel_ml: float
) -> tuple[float, str]:
    """Volume (ml) of the largest connected region and where it lies in the body.

    ``regions`` and ``body`` hold the slices ``k`` of the stitched grid, indexed (k, j, i).
    """
    labelled, n = ndimage.label(regions, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return 0.0, ""
    # Counting only the labelled voxels: most are background, and bincount copies to int64.
    sizes = np.bincount(labelled[labelled > 0], minlength=n + 1)[1:]
    largest = int(np.argmax(sizes)) + 1
    a = np.asarray(affine, dtype=float)

    def patient_mm(index_kji: np.ndarray) -> np.ndarray:
        slice_k = np.interp(index_kji[0], np.arange(len(k)), k)
        grid = np.array([index_kji[2], index_kji[1], slice_k], dtype=float)
        return a[:3, :3] @ grid + a[:3, 3]

    centre = patient_mm(mean_index(labelled == largest))
    body_centre = patient_mm(mean_index(body))
    dx, dy = centre[:2] - body_centre[:2]  # RAS: +x right, +y anterior
    where = f"{'right' if dx > 0 else 'left'} {'anterior' if dy > 0 else 'posterior'}"
    return float(sizes[largest - 1]) * voxel_ml, where


def mean_index(mask: np.ndarray) -> np.ndarray:
    """Mean voxel index of a non-empty mask, per axis: ``np.argwhere(mask).mean(axis=0)``.

    Summed from per-axis counts instead of listing every voxel's index; the sums are
    integers, so the result is the same to the last bit.
    """
    count = np.count_nonzero(mask)
    sums = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        per_index = np.count_nonzero(mask, axis=others)
        sums.append(int(np.dot(np.arange(per_index.size, dtype=np.int64), per_index)))
    return np.array(sums, dtype=float) / count
