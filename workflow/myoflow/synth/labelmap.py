"""Label maps from supersampled partial volumes that keep every label's volume.

Labelling each voxel by the majority of its supersamples loses thin structures: a voxel
a muscle only grazes is never its own, while the voxels it fills count once either way
(iliacus -3.8 % on average, -6 % at worst on the small grid; -1.3 % on the full grid).
Here each label holds, slice by slice, its exact volume rounded to whole voxels: every
voxel a label touches starts as that label, each label's least covered voxels are
thinned away where that splits nothing, and labels still short grow into the background
voxels touching them that they cover most. A label enclosed by another (a gluteus
minimus inside the medius, with no background around it) can only grow into its
neighbour's voxels; with ``trade`` it takes them, and the neighbour grows back into its
own background (:func:`_trade`).

:class:`LabelMapBuilder` runs the steps: per block of slices :func:`labelled_box`,
:func:`voxel_sample_counts`, :func:`covered_labels` and :func:`voxel_coverage`; then
once per grid :func:`join_coverage`, :func:`slice_targets` and
:func:`count_preserving_labels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_FACTOR = 6  # factor**3 samples per voxel must fit the uint8 counts


def labelled_box(
    sample_labels: np.ndarray, factor: int
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """In-plane voxel bounds ``((i0, i1), (j0, j1))`` of the labelled (non-zero) samples.

    Counting only inside these bounds spares the empty rest of the grid. None when no
    sample is labelled.
    """
    in_i = np.flatnonzero(sample_labels.any(axis=(1, 2)))
    if in_i.size == 0:
        return None
    in_j = np.flatnonzero(sample_labels.any(axis=(0, 2)))
    return (
        (int(in_i[0]) // factor, int(in_i[-1]) // factor + 1),
        (int(in_j[0]) // factor, int(in_j[-1]) // factor + 1),
    )


def voxel_sample_counts(sample_labels: np.ndarray, factor: int, n_labels: int) -> np.ndarray:
    """Supersamples of each label in every voxel, shape (nx, ny, nz, n_labels), uint8.

    ``sample_labels`` holds label values (< ``n_labels``) on the supersample lattice,
    ``factor`` samples per voxel along each axis; a voxel's counts sum to ``factor**3``.

    Raises:
        ValueError: if ``factor`` is not 1 to :data:`MAX_FACTOR`.
    """
    if not 1 <= factor <= MAX_FACTOR:
        raise ValueError(f"supersampling factor {factor} is not 1 to {MAX_FACTOR}")
    nx, ny, nz = (n // factor for n in sample_labels.shape)
    blocks = sample_labels.reshape(nx, factor, ny, factor, nz, factor).transpose(0, 2, 4, 1, 3, 5)
    voxel = np.arange(nx * ny * nz, dtype=np.int64)[:, None] * n_labels
    flat = (voxel + blocks.reshape(nx * ny * nz, factor**3)).ravel()
    counts = np.bincount(flat, minlength=nx * ny * nz * n_labels)
    return counts.reshape(nx, ny, nz, n_labels).astype(np.uint8)


def covered_labels(counts: np.ndarray) -> np.ndarray:
    """Every voxel holding samples of a label (> 0) gets the label with the most, else 0.

    ``counts`` as from :func:`voxel_sample_counts`; ties go to the lower label value.
    Each label then covers its truth, and is connected wherever the truth is (bar voxels
    another label covers more): the start :func:`count_preserving_labels` thins.
    uint8, (nx, ny, nz).
    """
    labelled = counts[..., 1:]
    best = labelled.argmax(axis=-1).astype(np.uint8) + 1
    return np.where(labelled.any(axis=-1), best, 0).astype(np.uint8)


@dataclass(frozen=True)
class Coverage:
    """Sparse partial volumes of a grid: every (voxel, label > 0) whose voxel holds samples
    of that label, as parallel int64 arrays."""

    voxel: np.ndarray  # flat (C-order) index into the grid
    label: np.ndarray
    samples: np.ndarray  # samples of the label in the voxel, of `per_voxel`
    support: np.ndarray  # samples of the label in the voxel and its 8 in-plane neighbours
    per_voxel: int  # samples per voxel (factor**3)


def voxel_coverage(
    counts: np.ndarray, origin: tuple[int, int, int], shape: tuple[int, int, int]
) -> Coverage:
    """:class:`Coverage` of a block of ``counts`` (nx, ny, nz, n_labels) whose first voxel
    sits at ``origin`` (i, j, k) of a grid of ``shape``.

    In-plane neighbours outside the block count as unlabelled, which is exact when the
    block holds every labelled sample of its slices (see :func:`labelled_box`).
    """
    i, j, k, label = np.nonzero(counts[..., 1:])
    label = label + 1
    padded = np.pad(counts, ((1, 1), (1, 1), (0, 0), (0, 0)))
    support = np.zeros(i.size, dtype=np.int64)
    for di in range(3):
        for dj in range(3):
            support += padded[i + di, j + dj, k, label]
    voxel = np.ravel_multi_index((i + origin[0], j + origin[1], k + origin[2]), shape)
    samples = counts[i, j, k, label].astype(np.int64)
    per_voxel = int(counts[0, 0, 0].sum(dtype=np.int64)) if counts.size else 1
    return Coverage(voxel.astype(np.int64), label.astype(np.int64), samples, support, per_voxel)


def join_coverage(parts: Sequence[Coverage]) -> Coverage:
    """One :class:`Coverage` of disjoint blocks (e.g. the chunks of slices of a render).

    Raises:
        ValueError: if there are no parts or they differ in samples per voxel.
    """
    if not parts or len({p.per_voxel for p in parts}) != 1:
        raise ValueError("join_coverage needs parts with the same samples per voxel")
    fields = ("voxel", "label", "samples", "support")
    arrays = (np.concatenate([getattr(p, name) for p in parts]) for name in fields)
    return Coverage(*arrays, per_voxel=parts[0].per_voxel)


def slice_targets(sample_counts: np.ndarray, factor: int) -> np.ndarray:
    """Voxels each label should hold in each slice, from its supersamples per slice.

    ``sample_counts`` is (n_labels, nz). Rounding the running total up the slices (halves
    up) rather than each slice keeps every slice within one voxel of its exact share
    while each label's total is its exact volume rounded to whole voxels. Returns int64,
    (n_labels, nz).
    """
    per_voxel = factor**3
    running = np.cumsum(np.asarray(sample_counts, dtype=np.int64), axis=1)
    rounded = (2 * running + per_voxel) // (2 * per_voxel)
    return np.diff(rounded, axis=1, prepend=0)


class LabelMapBuilder:
    """Builds a grid's count-preserving label map from its supersampled labels, added a
    block of whole slices at a time (so a render never holds the whole canvas)."""

    def __init__(
        self, shape: tuple[int, int, int], n_labels: int, factor: int, trade: bool = False
    ) -> None:
        self.shape, self.n_labels, self.factor, self.trade = shape, n_labels, factor, trade
        self.labels = np.zeros(shape, dtype=np.uint8)
        self.sample_counts = np.zeros((n_labels, shape[2]), dtype=np.int64)
        self.coverage: list[Coverage] = []

    def add(self, sample_labels: np.ndarray, k0: int) -> None:
        """Add slices ``k0 ..`` from their supersampled labels (values < n_labels)."""
        f = self.factor
        box = labelled_box(sample_labels, f)
        if box is None:
            return  # nothing labelled: labels and counts stay 0
        (i0, i1), (j0, j1) = box
        counts = voxel_sample_counts(
            sample_labels[i0 * f : i1 * f, j0 * f : j1 * f], f, self.n_labels
        )
        k1 = k0 + counts.shape[2]
        self.sample_counts[:, k0:k1] = counts.sum(axis=(0, 1), dtype=np.int64).T
        self.labels[i0:i1, j0:j1, k0:k1] = covered_labels(counts)
        self.coverage.append(voxel_coverage(counts, (i0, j0, k0), self.shape))

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """The label map (uint8, grid shape) and the supersamples of each label in each
        slice ((n_labels, nz), the truth the map keeps)."""
        if not self.coverage:
            return self.labels, self.sample_counts
        targets = slice_targets(self.sample_counts, self.factor)
        coverage = join_coverage(self.coverage)
        labels = count_preserving_labels(self.labels, coverage, targets, trade=self.trade)
        return labels, self.sample_counts


def count_preserving_labels(
    start: np.ndarray,
    coverage: Coverage,
    targets: np.ndarray,
    max_rounds: int = 64,
    trade: bool = False,
) -> np.ndarray:
    """Labels holding ``targets`` voxels per label and slice as far as the partial volumes
    and the labels' connectivity allow, thinned and grown from ``start``.

    ``start`` is best :func:`covered_labels` (a superset of every label, connected
    wherever the truth is). Per slice, a label over its target gives its least covered
    voxels back to background, each only where removing it cannot split the label's
    voxels around it (26-connectivity), so thinning splits no label. Then a label under
    target takes the background voxels it covers most among those touching it, so
    growing adds no islands; a voxel wanted by several labels goes to the one covering
    most of it. A label never takes another's voxel, so none goes under target for
    another. Ties in coverage go to the voxel with most of the label around it in-plane
    (smoother outlines), then to a fixed hash of its position (no direction preferred):
    the result is deterministic. Fully covered voxels are never given up. With
    ``trade``, a label still under target then takes voxels it covers from a touching
    label that can grow back into background by as many (:func:`_trade`).

    Args:
        start: uint8 labels, (nx, ny, nz).
        coverage: partial volumes of the grid's voxels (see :func:`voxel_coverage`).
        targets: voxels per label and slice, (n_labels, nz) (see :func:`slice_targets`).
        max_rounds: most rounds of thinning, of growing, and of trading.
        trade: let labels still short take voxels from their neighbours (off: the map
            the standard phantom has always had).

    Returns:
        uint8 labels, (nx, ny, nz); voxels outside ``coverage`` keep their ``start`` label.

    Raises:
        ValueError: if ``targets`` has not one column per slice, or ``coverage`` names a
            label or voxel outside ``targets`` or ``start``.
    """
    _check(start.shape, coverage, targets)
    out = start.astype(np.uint8, copy=True)
    if coverage.voxel.size == 0:
        return out
    state = _Assignment.build(start, coverage, targets)
    _thin(state, max_rounds)
    _grow(state, max_rounds)
    if trade:
        _trade(state, max_rounds)
    box = tuple(slice(a, b) for a, b in zip(state.lo, state.hi, strict=True))
    out[box] = state.labels[1:-1, 1:-1, 1:-1]
    return out


def _check(shape: tuple[int, ...], coverage: Coverage, targets: np.ndarray) -> None:
    if targets.ndim != 2 or targets.shape[1] != shape[2]:
        raise ValueError(f"targets have shape {targets.shape}, expected (n_labels, {shape[2]})")
    if targets.size >= 2**_GROUP_BITS:
        raise ValueError(f"{targets.size} label-slice pairs are too many to order")
    if coverage.per_voxel > MAX_FACTOR**3:
        raise ValueError(f"{coverage.per_voxel} samples per voxel are too many to order")
    labels, voxels = coverage.label, coverage.voxel
    if labels.size and not 0 < labels.min() <= labels.max() < len(targets):
        raise ValueError(f"coverage has labels outside 1..{len(targets) - 1}")
    if voxels.size and not 0 <= voxels.min() <= voxels.max() < np.prod(shape):
        raise ValueError(f"coverage has voxels outside the grid of shape {shape}")


_STEPS = np.array([s for s in np.ndindex(3, 3, 3) if s != (1, 1, 1)], dtype=np.int64) - 1
_SHELL_ADJACENT = (np.abs(_STEPS[:, None] - _STEPS[None]).max(axis=-1) == 1).astype(np.float32)
_GROUP_BITS = 20  # sort keys: group | samples (8 bits) | support (11) | position hash (24)


@dataclass
class _Assignment:
    """Labels being balanced and the coverage pairs that can change, flattened.

    ``labels`` is the box of the grid holding every coverage voxel and its neighbours,
    ``[lo, hi)``, padded by one unlabelled voxel. Pair arrays are parallel: ``at`` (index
    into the padded box), ``label``, ``group`` (label * nz + slice), and sort keys ordering
    each group's pairs least covered first (``give_key``) or most covered first
    (``take_key``), ties by in-plane support, then a hash of the position.
    """

    labels: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    at: np.ndarray
    label: np.ndarray
    group: np.ndarray
    give_key: np.ndarray
    take_key: np.ndarray
    parity: np.ndarray  # 4 * (i % 2) + 2 * (j % 2) + k % 2: equal ones are never neighbours
    samples: np.ndarray
    support: np.ndarray
    per_voxel: int
    held: np.ndarray  # voxels per group now
    n_slices: int  # groups are label * n_slices + slice
    wanted: np.ndarray  # voxels per group
    neighbours: np.ndarray  # flat offsets of the 26 neighbours in `labels`

    @classmethod
    def build(cls, start: np.ndarray, coverage: Coverage, targets: np.ndarray) -> _Assignment:
        ijk = np.stack(np.unravel_index(coverage.voxel, start.shape))
        lo = np.maximum(ijk.min(axis=1) - 1, 0)
        hi = np.minimum(ijk.max(axis=1) + 2, start.shape)
        labels = np.zeros(tuple(hi - lo + 2), dtype=np.uint8)
        labels[1:-1, 1:-1, 1:-1] = start[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        at = np.ravel_multi_index(tuple(ijk - lo[:, None] + 1), labels.shape)
        i, j, k = ijk
        group = coverage.label * start.shape[2] + k
        tie = ((i * 73856093) ^ (j * 19349663) ^ (k * 83492791)) & 0xFFFFFF
        samples, support = coverage.samples, coverage.support
        give_key = (group << 43) | (samples << 35) | (support << 24) | tie
        take_key = (group << 43) | ((255 - samples) << 35) | ((2047 - support) << 24) | tie
        wanted = np.asarray(targets, dtype=np.int64).reshape(-1)
        mine = labels.reshape(-1)[at] == coverage.label
        return cls(
            labels=labels,
            lo=lo,
            hi=hi,
            at=at,
            label=coverage.label,
            group=group,
            give_key=give_key,
            take_key=take_key,
            parity=4 * (i % 2) + 2 * (j % 2) + k % 2,
            samples=samples,
            support=support,
            per_voxel=coverage.per_voxel,
            held=np.bincount(group[mine], minlength=wanted.size),
            n_slices=int(start.shape[2]),
            wanted=wanted,
            neighbours=_STEPS @ (np.array(labels.strides) // labels.itemsize),
        )

    @property
    def flat(self) -> np.ndarray:
        return self.labels.reshape(-1)  # a view: writes land in `labels`

    def neighbour_is_mine(self, pairs: np.ndarray) -> np.ndarray:
        """(len(pairs), 26): which 26-neighbours of each pair's voxel hold its label."""
        around = self.flat[self.at[pairs, None] + self.neighbours]
        return around == self.label[pairs, None]

    def set(self, pairs: np.ndarray, value: int | np.ndarray, sign: int) -> None:
        """Label the pairs' voxels ``value`` and count them in (+1) or out (-1) of their group."""
        self.flat[self.at[pairs]] = value
        self.held += sign * np.bincount(self.group[pairs], minlength=self.held.size)


def _thin(state: _Assignment, max_rounds: int) -> None:
    """Give back each over-target group's least covered voxels whose removal keeps the
    label's voxels around them connected.

    Round r tries only voxels of parity class r % 8; no two of them are neighbours, so
    removals each safe alone are safe together. A voxel tried is removed or kept for
    good, so thinning ends, when no group over target has voxels left to try.
    """
    mine = state.flat[state.at] == state.label
    over = (state.held - state.wanted)[state.group] > 0
    pairs = np.flatnonzero(mine & over & (state.samples < state.per_voxel))
    pairs = pairs[np.argsort(state.give_key[pairs])]
    tried = np.zeros(state.at.size, dtype=bool)  # given up, or kept for good
    for r in range(max_rounds):
        surplus = (state.held - state.wanted)[state.group[pairs]]
        pairs = pairs[(surplus > 0) & ~tried[pairs]]
        surplus = (state.held - state.wanted)[state.group[pairs]]
        first = pairs[_rank_in_group(state.group[pairs]) < surplus]
        if first.size == 0:
            return
        now = first[state.parity[first] == r % 8]
        safe = _keeps_neighbours_connected(state.neighbour_is_mine(now))
        state.set(now[safe], 0, -1)
        tried[now] = True


def _grow(state: _Assignment, max_rounds: int) -> None:
    """Give each under-target group the background voxels touching it that it covers most."""
    for _ in range(max_rounds):
        deficit = state.wanted - state.held
        pairs = np.flatnonzero(deficit[state.group] > 0)
        pairs = pairs[state.flat[state.at[pairs]] == 0]
        pairs = pairs[state.neighbour_is_mine(pairs).any(axis=1)]
        pairs = pairs[np.argsort(state.take_key[pairs])]
        pairs = pairs[_rank_in_group(state.group[pairs]) < deficit[state.group[pairs]]]
        if pairs.size == 0:
            return
        # One winner per voxel: most coverage, then most support, then the lowest label.
        pairs = pairs[
            np.lexsort(
                (state.label[pairs], -state.support[pairs], -state.samples[pairs], state.at[pairs])
            )
        ]
        won = pairs[np.r_[True, state.at[pairs][1:] != state.at[pairs][:-1]]]
        state.set(won, state.label[won], +1)


def _trade(state: _Assignment, max_rounds: int) -> None:
    """Let groups still under target take voxels they cover and touch from another label
    of the same slice, as many as that label can win back from background.

    After thinning and growing, a label short of target has no background voxel it covers
    and touches left: its remaining partial voxels are another label's. Such a voxel
    changes hands only where the giver loses no connectivity (26-neighbourhood, one
    parity class per round, as in :func:`_thin`), the giver is not itself short, and the
    giver has, per taken voxel, a background voxel it covers and touches to grow into
    (:func:`_grow` runs after every round). Every trade therefore moves a voxel's worth of
    deficit to a label that is then made whole, and no label goes under target for good.
    """
    quiet = 0
    for r in range(max_rounds):
        deficit = state.wanted - state.held
        pairs = np.flatnonzero(deficit[state.group] > 0)
        giver = state.flat[state.at[pairs]].astype(np.int64)
        keep = (giver != 0) & (giver != state.label[pairs]) & (state.parity[pairs] == r % 8)
        pairs, giver = pairs[keep], giver[keep]
        touching = state.neighbour_is_mine(pairs).any(axis=1)
        pairs, giver = pairs[touching], giver[touching]
        around = state.flat[state.at[pairs, None] + state.neighbours] == giver[:, None]
        safe = _keeps_neighbours_connected(around)
        pairs, giver = pairs[safe], giver[safe]
        slice_of = state.group[pairs] - state.label[pairs] * state.n_slices
        giver_group = giver * state.n_slices + slice_of
        spare = np.maximum(state.held - state.wanted, 0) + _regrowable(state)
        ok = deficit[giver_group] <= 0
        pairs, giver_group = pairs[ok], giver_group[ok]
        # Most covered first for the taker, then within what each giver can spare.
        order = np.argsort(state.take_key[pairs])
        pairs, giver_group = pairs[order], giver_group[order]
        first = _rank_in_group(state.group[pairs]) < deficit[state.group[pairs]]
        pairs, giver_group = pairs[first], giver_group[first]
        by_giver = np.argsort(giver_group, kind="stable")
        within = np.empty(pairs.size, dtype=bool)
        within[by_giver] = _rank_in_group(giver_group[by_giver]) < spare[giver_group[by_giver]]
        pairs, giver_group = pairs[within], giver_group[within]
        if pairs.size == 0:
            quiet += 1  # a round tries one parity class: stop after a quiet sweep of all
            if quiet >= 8:
                return
            continue
        quiet = 0
        # One taker per voxel, as in growing: most coverage, most support, lowest label.
        order = np.lexsort(
            (state.label[pairs], -state.support[pairs], -state.samples[pairs], state.at[pairs])
        )
        pairs, giver_group = pairs[order], giver_group[order]
        one = np.r_[True, state.at[pairs][1:] != state.at[pairs][:-1]]
        pairs, giver_group = pairs[one], giver_group[one]
        state.held -= np.bincount(giver_group, minlength=state.held.size)
        state.set(pairs, state.label[pairs], +1)
        _grow(state, max_rounds)


def _regrowable(state: _Assignment) -> np.ndarray:
    """Per group, the background voxels it covers that touch its label (what it can grow)."""
    pairs = np.flatnonzero(state.flat[state.at] == 0)
    pairs = pairs[state.neighbour_is_mine(pairs).any(axis=1)]
    return np.bincount(state.group[pairs], minlength=state.held.size)


def _keeps_neighbours_connected(mine: np.ndarray) -> np.ndarray:
    """Per row of ``mine`` ((n, 26) bool: which 26-neighbours of a voxel hold its label),
    whether those neighbours are 26-connected among themselves without the voxel, so
    that removing it cannot split its label (a voxel with no such neighbour may go)."""
    reach = np.zeros_like(mine)
    rows = np.flatnonzero(mine.any(axis=1))
    reach[rows, mine[rows].argmax(axis=1)] = True
    for _ in range(mine.shape[1]):
        grown = mine & (reach | (reach.astype(np.float32) @ _SHELL_ADJACENT > 0))
        if np.array_equal(grown, reach):
            break
        reach = grown
    return (reach == mine).all(axis=1)


def _rank_in_group(sorted_groups: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal values (input sorted by group)."""
    if sorted_groups.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    lengths = np.diff(np.r_[starts, sorted_groups.size])
    return np.arange(sorted_groups.size) - np.repeat(starts, lengths)
