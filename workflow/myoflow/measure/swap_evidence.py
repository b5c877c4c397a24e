"""What each station shows about its water and fat labels, read from relations that no
scaling moves (used by :func:`myoflow.measure.swaps.detect_swaps`; the method is in its
module docstring).

Arrays here are one station's own slices indexed (k, j, i), as swaps.py hands them over.
Every statistic is a count, a sign, a ratio of two channels at one voxel or a difference
of log intensities within one station (thresholds on intensity are fractions of the
station's own 99th percentile), so a station's gain, the vendor's scaling and a smooth
coil bias (locally a constant factor) leave it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class SwapSettings:
    """Thresholds of :func:`myoflow.measure.swaps.detect_swaps`: set on 16 + 16
    synthetic participants of seed 2024 (standard and randomised appearance) and checked
    on seed 7 (bench/swaps.py; docs/swaps.md).

    Widths are in mm, not voxels of the stitched grid: partial volume reaches as far as
    the acquisition's voxels spread it, whatever grid the stations were stitched onto.
    """

    dominance: float = 0.4  # |W - F| / (W + F) and opp / in above this: W or F dominates
    tissue_fraction: float = 0.08  # tissue: in-phase above this x the station's 99th pct
    shell_mm: float = 12.0  # depth under the body outline (in-plane) of the outer layer
    core_mm: float = 4.5  # in-plane: a label's core has no other label within this
    core_z_mm: float = 6.0  # the same through-plane
    shell_weight: float = 1.0  # weight of the outer layer's agreement (-1 .. 1)
    join_weight: float = 1.0  # weight of each join's agreement (-1 .. 1)
    contrast_weight: float = 0.5  # weight of a station's fat / water sign against the rest
    contrast_scale: float = 0.2  # log in-phase difference that counts fully (about x 1.22)
    swap_prior: float = 0.05  # score a labelling loses per station it calls swapped
    min_join_voxels: int = 30  # voxels dominant on both sides that a join needs to count
    min_label_share: float = 0.02  # each label's least share of the dominant voxels for
    # the outer layer to say anything (a swap trades the labels, so it shows both)
    edge_mm: float = 4.5  # in-plane distance across which a label edge is looked for
    edge_z_mm: float = 6.0  # the same through-plane
    edge_ratio: float = 1.15  # in-phase and opposed-phase equal within this factor
    edge_dip: float = 0.8  # opp / in between the two ends stays above this x the ends'
    min_edge_ml: float = 10.0  # smallest connected hidden label edge: partial swap


@dataclass(frozen=True)
class StationEvidence:
    """One station's labelled voxels and what they say."""

    log_in: np.ndarray  # log in-phase (k, j, i)
    fatty: np.ndarray  # dominant voxels labelled fat-dominant (fat > water)
    watery: np.ndarray  # dominant voxels labelled water-dominant
    tissue: np.ndarray
    fatty_core: np.ndarray  # fatty voxels with no other label near them (no partial volume)
    watery_core: np.ndarray
    shell_fat: int  # dominant voxels of the outer layer labelled fat
    shell_water: int  # and labelled water
    both_labels: bool  # each label holds ``min_label_share`` of the dominant voxels
    hidden_edges: np.ndarray  # label edges that in-phase and opposed phase do not show

    @property
    def shell_agreement(self) -> float | None:
        """(fat - water) / (fat + water) over the outer layer's dominant voxels: near +1
        when labelled as anatomy has it (that layer is subcutaneous fat), near -1 when
        swapped; None without dominant voxels there, or where the station shows nearly one
        label only: a swapped body shows both (muscle turned fat, fat turned water), so a
        station of water-labelled tissue only is not one, whatever its outer layer holds."""
        total = self.shell_fat + self.shell_water
        if total == 0 or not self.both_labels:
            return None
        return (self.shell_fat - self.shell_water) / total

    def contrast(self) -> float | None:
        """Median log in-phase of the fat-labelled cores minus that of the water-labelled
        ones: the station's own sign of fat against water tissue (a swap reverses it)."""
        if not self.fatty_core.any() or not self.watery_core.any():
            return None
        return float(
            np.median(self.log_in[self.fatty_core]) - np.median(self.log_in[self.watery_core])
        )


def station_evidence(
    water: np.ndarray,
    fat: np.ndarray,
    in_phase: np.ndarray,
    opposed: np.ndarray,
    spacing_kji_mm: Sequence[float],
    settings: SwapSettings = SwapSettings(),
) -> StationEvidence:
    """Labels, tissue, cores and the outer layer of one station's slices (k, j, i)."""
    w, f, i, o = water, fat, in_phase, opposed
    top = float(np.percentile(i, 99)) if i.size else 0.0
    tissue = i > settings.tissue_fraction * top
    separated = np.abs(w - f) > settings.dominance * (w + f)
    dominant = tissue & separated & (o > settings.dominance * i)
    fatty, watery = dominant & (f > w), dominant & (w > f)
    depth = outline_depth_mm(tissue, spacing_kji_mm[1:])
    shell = tissue & (depth <= settings.shell_mm)
    radii = (
        round(settings.core_z_mm / spacing_kji_mm[0]),
        round(settings.core_mm / spacing_kji_mm[1]),
        round(settings.core_mm / spacing_kji_mm[2]),
    )
    n_fatty, n_watery = int(np.count_nonzero(fatty)), int(np.count_nonzero(watery))
    tiny = 1e-12 * max(top, 1e-30)  # keeps log finite in air; far below any noise floor
    return StationEvidence(
        log_in=np.log(np.maximum(i, tiny)),
        fatty=fatty,
        watery=watery,
        tissue=tissue,
        fatty_core=core(fatty, radii),
        watery_core=core(watery, radii),
        shell_fat=int(np.count_nonzero(shell & fatty)),
        shell_water=int(np.count_nonzero(shell & watery)),
        both_labels=min(n_fatty, n_watery) >= settings.min_label_share * (n_fatty + n_watery),
        hidden_edges=hidden_label_edges(
            np.log(np.maximum(i, tiny)),
            np.log(np.maximum(o, tiny)),
            dominant,
            fatty,
            (
                max(round(settings.edge_z_mm / spacing_kji_mm[0]), 1),
                max(round(settings.edge_mm / spacing_kji_mm[1]), 1),
                max(round(settings.edge_mm / spacing_kji_mm[2]), 1),
            ),
            settings,
        ),
    )


def outline_depth_mm(tissue: np.ndarray, spacing_ji_mm: Sequence[float]) -> np.ndarray:
    """In-plane distance (mm) of each voxel from outside the body, slice by slice; the
    body is the tissue with its holes (lungs, bowel gas) filled, so depth counts from the
    skin, not from the lungs."""
    depth = np.zeros(tissue.shape, dtype=np.float32)
    for k in range(tissue.shape[0]):
        body = ndimage.binary_fill_holes(tissue[k])
        if body.any():
            depth[k] = ndimage.distance_transform_edt(body, sampling=spacing_ji_mm)
    return depth


def core(mask: np.ndarray, radii: Sequence[int]) -> np.ndarray:
    """Voxels of ``mask`` with only ``mask`` voxels within ``radii`` (k, j, i) voxels."""
    return ~local_maximum(~mask, radii)


def join_agreement(
    below: tuple[np.ndarray, np.ndarray], above: tuple[np.ndarray, np.ndarray]
) -> tuple[int, int]:
    """Voxels (j, i) dominant on both sides of a station join that carry the same label,
    and those that carry the other.

    Args:
        below, above: (fatty, watery) masks of the slice each station has nearest the
            join, indexed (j, i). Anatomy continues across the join: fat stays fat.
    """
    both = (below[0] | below[1]) & (above[0] | above[1])
    same = both & (below[0] == above[0])
    n_same = int(np.count_nonzero(same))
    return n_same, int(np.count_nonzero(both)) - n_same


def hidden_label_edges(
    log_in: np.ndarray,
    log_opp: np.ndarray,
    dominant: np.ndarray,
    fatty: np.ndarray,
    steps_kji: Sequence[int],
    settings: SwapSettings = SwapSettings(),
) -> np.ndarray:
    """Label edges that the swap-invariant images do not show: the outline of a region
    whose water and fat were traded.

    A pair of dominant voxels ``steps_kji`` apart along one axis is a hidden edge when
    one is labelled fat-dominant and the other water-dominant, yet their in-phase and
    their opposed phase are equal within ``edge_ratio``, and opp / in does not dip
    (below ``edge_dip`` x the smaller of the two ends') on the voxels between them. Both
    voxels and those between are marked.

    Why this singles out swaps: in-phase (W + F) and opposed phase (|W - F|) are the same
    whichever solution is called water, so a swap's border is invisible in them, while a
    real border between fat- and water-dominant tissue shows in one of two ways. Either
    the two tissues differ in brightness, or the voxels that straddle the border mix
    both (partial volume, and the trilinear resampling of ``myoflow convert``), whose
    signals cancel in the opposed phase (the dark rim of opposed-phase images). Every
    test is a ratio of two channels of one voxel or of one channel at two voxels a few
    mm apart, so no gain, scaling or smooth coil bias moves it.

    Args:
        log_in, log_opp: log in-phase and log opposed phase (k, j, i).
        dominant: voxels dominated by water or fat, by both the labels and opp / in.
        fatty: dominant voxels labelled fat-dominant.
        steps_kji: pair distance in voxels along k, j and i (about one acquired voxel:
            on a grid upsampled twofold it spans the interpolated voxel between two
            acquired ones, over which a sharp edge is spread).
        settings: ``edge_ratio`` and ``edge_dip``.
    """
    edges = np.zeros(dominant.shape, dtype=bool)
    log_ratio = log_opp - log_in
    same = np.log(settings.edge_ratio)
    dip = np.log(settings.edge_dip)
    for axis, step in enumerate(steps_kji):
        n = dominant.shape[axis]
        if step < 1 or n <= step:
            continue

        def part(offset: int, axis=axis, step=step, n=n) -> tuple[slice, ...]:
            """Voxels ``offset`` along ``axis`` from the pairs' first ends."""
            index = [slice(None)] * dominant.ndim
            index[axis] = slice(offset, n - step + offset)
            return tuple(index)

        first, last = part(0), part(step)
        pair = (
            dominant[first]
            & dominant[last]
            & (fatty[first] != fatty[last])
            & (np.abs(log_in[first] - log_in[last]) < same)
            & (np.abs(log_opp[first] - log_opp[last]) < same)
        )
        floor = np.minimum(log_ratio[first], log_ratio[last]) + dip
        for offset in range(1, step):
            pair &= log_ratio[part(offset)] >= floor
        for offset in range(step + 1):
            edges[part(offset)] |= pair
    return edges


def local_maximum(stack: np.ndarray, radii: Sequence[int]) -> np.ndarray:
    """Maximum over the box of ``2 r + 1`` voxels along each axis around each voxel.

    Equal to ``ndimage.maximum_filter(stack, size=[2 r + 1 for r in radii])`` (whose
    default 'reflect' edges only repeat values already in the window), by running maxima
    of shifted views: a few passes over contiguous memory instead of a filter.
    """
    out = stack
    for axis, radius in enumerate(radii):
        n = out.shape[axis]
        if radius < 1 or n < 2:
            continue
        step = out.copy()
        for shift in range(1, min(radius, n - 1) + 1):
            lower = [slice(None)] * out.ndim
            upper = [slice(None)] * out.ndim
            lower[axis], upper[axis] = slice(0, n - shift), slice(shift, n)
            # Each voxel takes the larger of itself and its neighbour `shift` away, both ways.
            np.maximum(step[tuple(lower)], out[tuple(upper)], out=step[tuple(lower)])
            np.maximum(step[tuple(upper)], out[tuple(lower)], out=step[tuple(upper)])
        out = step
    return out
