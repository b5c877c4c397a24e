"""What each station shows about its water and fat labels, read from relations that no
scaling moves (used by :func:`myoflow.measure.swaps.detect_swaps`; the method is in its
module docstring).

Arrays here are one station's own slices indexed (k, j, i), as swaps.py hands them over.
Every statistic is a count, a sign or a difference of log intensities within one station,
so a station's gain, the vendor's scaling and a smooth coil bias (locally a constant
factor) leave it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class SwapSettings:
    """Thresholds of :func:`myoflow.measure.swaps.detect_swaps` (defaults tuned on
    synthetic participants of both appearances, bench/swaps.py).

    Widths are in mm, not voxels of the stitched grid: partial volume reaches as far as
    the acquisition's voxels spread it, whatever grid the stations were stitched onto.
    """

    dominance: float = 0.4  # |W - F| / (W + F) and opp / in above this: W or F dominates
    tissue_fraction: float = 0.08  # tissue: in-phase above this x the station's 99th pct
    shell_mm: float = 12.0  # depth under the body outline (in-plane) of the outer layer
    core_mm: float = 4.5  # in-plane: a label's core has no other label within this
    core_z_mm: float = 6.0  # the same through-plane
    outer_mm: float = 5.0  # depth of the outermost layer searched for partial swaps
    reach_mm: float = 40.0  # references of a region's brightness: within this of it
    shell_weight: float = 1.0  # weight of the outer layer's agreement (-1 .. 1)
    join_weight: float = 1.0  # weight of each join's agreement (-1 .. 1)
    contrast_weight: float = 0.5  # weight of a station's fat / water sign against the rest
    contrast_scale: float = 0.2  # log in-phase difference that counts fully (about x 1.22)
    swap_prior: float = 0.05  # score a labelling loses per station it calls swapped
    min_join_voxels: int = 30  # voxels dominant on both sides that a join needs to count
    min_region_ml: float = 30.0  # smallest water-labelled outer region: partial swap


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
    outer: np.ndarray  # the outermost ``outer_mm`` of tissue

    @property
    def shell_agreement(self) -> float | None:
        """(fat - water) / (fat + water) over the outer layer's dominant voxels: near +1
        when labelled as anatomy has it (that layer is subcutaneous fat), near -1 when
        swapped; None without dominant voxels there."""
        total = self.shell_fat + self.shell_water
        return None if total == 0 else (self.shell_fat - self.shell_water) / total

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
    return StationEvidence(
        log_in=np.log(np.maximum(i, 1e-12 * max(top, 1e-30))),
        fatty=fatty,
        watery=watery,
        tissue=tissue,
        fatty_core=core(fatty, radii),
        watery_core=core(watery, radii),
        shell_fat=int(np.count_nonzero(shell & fatty)),
        shell_water=int(np.count_nonzero(shell & watery)),
        outer=tissue & (depth <= settings.outer_mm),
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


def outer_regions(evidence: StationEvidence, voxel_ml: float, min_ml: float) -> list[np.ndarray]:
    """Connected (26-neighbour) water-labelled parts of the outer layer of at least
    ``min_ml``, largest first: where a correctly labelled body has subcutaneous fat."""
    labelled, n = ndimage.label(
        evidence.outer & evidence.watery, structure=np.ones((3, 3, 3), dtype=bool)
    )
    if n == 0:
        return []
    sizes = np.bincount(labelled[labelled > 0], minlength=n + 1)[1:]
    order = [int(v) + 1 for v in np.argsort(-sizes) if sizes[v] * voxel_ml >= min_ml]
    return [labelled == v for v in order]


def looks_like_fat(
    evidence: StationEvidence, region: np.ndarray, reach_vox: Sequence[int]
) -> tuple[bool, float, float] | None:
    """Whether a water-labelled outer region is as bright in-phase as the fat-labelled
    outer layer around it rather than the water-labelled tissue under it (its own
    station, within ``reach_vox`` (k, j, i) voxels of its bounding box, where a smooth
    bias is nearly one factor). None where either reference is missing.

    Returns:
        (fat-like, log distance to the fat reference, log distance to the water one).
    """
    box = tuple(
        slice(max(int(idx.min()) - r, 0), int(idx.max()) + r + 1)
        for idx, r in zip(np.nonzero(region), reach_vox, strict=True)
    )
    log_in = evidence.log_in[box]
    fat_ref = evidence.outer[box] & evidence.fatty[box]
    water_ref = ~evidence.outer[box] & evidence.watery_core[box]
    if not fat_ref.any() or not water_ref.any():
        return None
    level = float(np.median(log_in[region[box]]))
    to_fat = abs(level - float(np.median(log_in[fat_ref])))
    to_water = abs(level - float(np.median(log_in[water_ref])))
    return to_fat < to_water, to_fat, to_water


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
