"""Fat-water swaps, station by station (:func:`detect_swaps`).

Two-point Dixon reconstruction picks, voxel by voxel, which of two solutions is water;
when it picks wrong over a station or a region of one, "water" and "fat" trade places
while the in-phase (W + F) and opposed-phase (|W - F|) images stay as they were. Those
two fix each voxel's signals up to the swap: the larger is (in + opp) / 2, the smaller
(in - opp) / 2. What tells which is which is brightness: on these T1-weighted gradient
echoes fat-dominant tissue (subcutaneous and visceral fat, ~1000 in the synthetic model)
is brighter in-phase than water-dominant tissue (muscle, organs, ~500-620). So for every
tissue voxel whose signal is dominated by one of the two (fat fraction under 0.3 or over
0.7: opp > ``dominance`` x in, and |W - F| > ``dominance`` x (W + F), which agree unless
the channels were resampled, see below) the channels labelled water and fat are
consistent if the brighter voxels are labelled fat-dominant and the darker ones
water-dominant, and contradict the labels otherwise. Partial-volume voxels are left out:
those within ``skin_mm`` of the body outline in-plane and any voxel darker than
``local_fraction`` x the brightest within ``local_mm`` in-plane and ``local_z_mm``
through-plane (fat dimmed by air in skin folds, muscle at the edge of fat, marrow
dimmed by the lung in the slice above or below), whose brightness says nothing about
their tissue.

``myoflow convert`` resamples the stations onto one grid (2.23 x 2.23 x 3 mm by default)
by trilinear interpolation, and a coarser acquisition (4.46 x 4.46 x 6 mm for small
synthetic participants) is upsampled twofold. That does two things partial volume
detection must allow for. Each partial-volume voxel is spread over its neighbours, so
the widths above are in mm, as far as the acquired voxels reach, not in voxels of the
grid (in grid voxels, the bands left out were half as deep as the partial volume around
skin folds and thin fat). And the opposed phase is a magnitude, |W - F|, interpolated as
such: halfway between fat and muscle it reads ~0.8 x in-phase while W ~ F, so a
fat-muscle boundary looked water- or fat-dominant at the brightness of neither. Both
made contradicting shells of 5-30 ml in clean participants, past ``min_region_ml``
(bench/swaps.py: the numbers before and after).

The bright (fat) and dark (water) levels are the participant's own: per station the
median in-phase of the dominant voxels labelled fat and of those labelled water, the
larger of the two taken as the fat level whichever way the station is labelled, and the
median over the stations that show both clearly (so a swapped station does not move
them). In a lean participant whose only clear fat lies in a partly swapped station, no
station shows both; the water level is then the median of all dominant voxels (nearly
all muscle) and the fat level ``fallback_ratio`` times it (said in the reason). A
station is

- ``swap``: the median brightness of the voxels labelled fat-dominant (and of those
  labelled water-dominant) is that of the other label for at least ``whole_fraction`` of
  the station's dominant voxels (judged against the participant's levels);
- ``partial_swap``: otherwise, the voxels whose own brightness contradicts their label by
  more than ``margin`` (judged against the station's own levels where it shows both,
  which follow its coil bias) form a 26-connected region of at least ``min_region_ml``;
  the decision names where it is (right/left, anterior/posterior of the body centre);
- ``undetermined``: a channel is missing or no tissue is dominated by water or fat;
- ``ok``: none of the above.

Each station is judged on its own slices (those no other station covers): stitching
blends overlapping stations, which mixes a swapped station's signals with its neighbour's.

Internally the channels are handled slice-first, indexed (k, j, i): NIfTI readers hand
over Fortran-ordered (i, j, k) arrays, whose transpose is C-ordered, so each station's
slab is a contiguous view instead of a copy, and in-plane filters run along contiguous
memory. Every statistic used (counts, medians, percentiles, connected regions) does not
depend on the order voxels are visited in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from myoflow.core import morphology
from myoflow.core.errors import MyoflowError

SWAP_STATUSES = ("ok", "swap", "partial_swap", "undetermined")


class SwapError(MyoflowError):
    """Swap detection cannot run on these inputs; the message says why."""


@dataclass(frozen=True)
class SwapSettings:
    """Thresholds of :func:`detect_swaps` (defaults tuned on synthetic participants).

    Widths are in mm, not voxels of the stitched grid: partial volume reaches as far as the
    acquisition's voxels (and the interpolation that resamples them onto the grid)
    spread it, whatever grid the stations were stitched onto. The defaults cover two
    voxels in-plane and one slice through-plane of the coarsest acquisition taken here
    (4.46 x 4.46 x 6 mm, the small synthetic protocol), i.e. the partial-volume voxel and
    the neighbour that trilinear upsampling mixes it into.
    """

    dominance: float = 0.4  # opp / in and |W - F| / (W + F) above this: W or F dominates
    body_fraction: float = 0.4  # tissue: in-phase above this x the station's 99th percentile
    margin: float = 1.1  # brightness must miss the fat/water midpoint by this factor
    local_fraction: float = 0.7  # darker than this x the brightest nearby: edge, left out
    local_mm: float = 9.0  # "nearby" in-plane: within this distance along i and j
    local_z_mm: float = 6.0  # "nearby" through-plane: within this distance along k
    whole_fraction: float = 0.5  # share of dominant voxels labelled wrong: whole-station swap
    min_region_ml: float = 5.0  # smallest connected contradicting region: partial swap
    skin_mm: float = 9.0  # in-plane depth under the body outline left out (air partial volume)
    min_class_ml: float = 20.0  # volume of each label a station needs to give levels
    min_contrast: float = 1.2  # a station whose label medians differ less gives no levels
    fallback_ratio: float = 1.6  # fat / water level assumed when no station gives levels


@dataclass(frozen=True)
class SwapDecision:
    """The verdict on one station (``SwapDecision(**asdict(d))`` rebuilds a stored one)."""

    station: int  # 1-based position in the station list given
    k_start: int  # the station's slices on the stitched grid, half-open
    k_stop: int
    status: str  # one of SWAP_STATUSES
    score: float | None  # share of dominant voxels whose label's brightness is the other's
    region_ml: float  # volume of the largest connected contradicting region
    region: str  # where that region lies, e.g. "right anterior"; "" if none
    reason: str

    @property
    def swapped(self) -> bool:
        return self.status in ("swap", "partial_swap")


@dataclass(frozen=True)
class _Levels:
    fat: float
    water: float
    assumed: bool = False  # fat level = water level x fallback_ratio (no station showed both)

    @property
    def threshold(self) -> float:
        """The geometric midpoint: brighter voxels look fat-dominant, darker water."""
        return float(np.sqrt(self.fat * self.water))

    def looks_fat(self, intensity: float) -> bool:
        return intensity > self.threshold


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
    settings: SwapSettings = SwapSettings(),
) -> list[SwapDecision]:
    """Per-station fat-water swap decisions on the stitched channels (module docstring).

    Args:
        water, fat, in_phase, opposed: stitched Dixon channels (i, j, k); None if missing.
        stations: each station's (k_start, k_stop) on the stitched grid
            (:func:`station_slices`).
        affine: 4x4 voxel -> RAS mm matrix of the channels.
        settings: thresholds.

    Raises:
        SwapError: the channels are not 3-D arrays of one shape.
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
    linear = np.asarray(affine, dtype=float)[:3, :3]
    geometry = _Geometry(
        voxel_ml=abs(float(np.linalg.det(linear))) / 1000.0,
        spacing_kji_mm=tuple(float(v) for v in np.linalg.norm(linear, axis=0)[::-1]),
    )
    slices_first = [_slices_first(a) for a in (water, fat, in_phase, opposed)]
    own = own_slices(stations, shape[2])
    parts = [_station_voxels(*slices_first, k, settings, geometry) for k in own]
    station_levels = [_station_levels(part, settings) for part in parts]
    levels = _participant_levels(station_levels, parts, settings)
    decisions = []
    for number, (station, k, part, local) in enumerate(
        zip(stations, own, parts, station_levels, strict=True), start=1
    ):
        if levels is None:
            decisions.append(_undetermined(number, station, "no water- or fat-dominant tissue"))
        else:
            decisions.append(_judge(number, station, k, part, levels, local, affine, settings))
    return decisions


def _slices_first(array: np.ndarray) -> np.ndarray:
    """A channel as C-ordered float32 indexed (k, j, i): free for a Fortran-ordered float32
    array (as NIfTI readers give), one copy otherwise."""
    return np.ascontiguousarray(np.asarray(array, dtype=np.float32).T)


def _undetermined(number: int, station: tuple[int, int], reason: str) -> SwapDecision:
    return SwapDecision(number, station[0], station[1], "undetermined", None, 0.0, "", reason)


@dataclass(frozen=True)
class _Geometry:
    """Voxel size of the stitched grid."""

    voxel_ml: float
    spacing_kji_mm: tuple[float, float, float]  # along k (slices), j and i

    def voxels(self, mm: float, axis: int) -> int:
        """Whole voxels along ``axis`` (0: k, 1: j, 2: i) nearest to ``mm``."""
        return round(mm / self.spacing_kji_mm[axis])


@dataclass(frozen=True)
class _StationVoxels:
    """A station's own slices, indexed (k, j, i) with k counted within them."""

    intensity: np.ndarray  # in-phase
    fatty: np.ndarray  # dominant voxels labelled fat-dominant (fat > water)
    watery: np.ndarray  # dominant voxels labelled water-dominant
    body: np.ndarray
    voxel_ml: float


def _station_voxels(water, fat, in_phase, opposed, k, settings, geometry) -> _StationVoxels:
    """Tissue and dominant voxels of the slices ``k``; channels indexed (k, j, i)."""
    contiguous = k.size and k[-1] - k[0] + 1 == k.size
    pick = slice(int(k[0]), int(k[-1]) + 1) if contiguous else k
    w, f, i, o = (a[pick] for a in (water, fat, in_phase, opposed))
    top = float(np.percentile(i, 99)) if i.size else 0.0
    # Tissue away from the skin: partial volume with air makes the outer voxels dim, and in
    # lean participants the thin subcutaneous fat is nothing but such voxels.
    skin = (geometry.voxels(settings.skin_mm, 1) + geometry.voxels(settings.skin_mm, 2)) // 2
    inside = erode_in_plane(i > 0.5 * settings.body_fraction * top, skin)
    body = inside & (i > settings.body_fraction * top)
    # Voxels much darker than their surroundings are partial volume (fat dimmed by air in
    # skin folds, muscle at the edge of fat, marrow dimmed by the lung a slice away): leave
    # them out of levels and judgement.
    radii = (
        geometry.voxels(settings.local_z_mm, 0),
        geometry.voxels(settings.local_mm, 1),
        geometry.voxels(settings.local_mm, 2),
    )
    peak = _peak_nearby(in_phase, k, radii)
    # Dominance read from the separated channels as well as the opposed phase: resampling
    # interpolates the magnitude |W - F|, which overstates it where fat meets muscle
    # (halfway, opp ~ 0.8 x in while W ~ F), whereas W and F interpolate linearly.
    separated = np.abs(w - f) > settings.dominance * (w + f)
    dominant = (
        body & separated & (o > settings.dominance * i) & (i >= settings.local_fraction * peak)
    )
    return _StationVoxels(i, dominant & (f > w), dominant & (w > f), body, geometry.voxel_ml)


def _peak_nearby(in_phase: np.ndarray, k: np.ndarray, radii: Sequence[int]) -> np.ndarray:
    """The brightest in-phase voxel within ``radii`` (k, j, i) of each voxel of slices ``k``
    (``in_phase`` indexed (k, j, i)).

    The window reaches into the neighbouring stations' slices: in-phase does not change
    with a swap, so a swapped neighbour's brightness is as good as any.
    """
    start = max(int(k[0]) - radii[0], 0)
    stop = min(int(k[-1]) + radii[0] + 1, in_phase.shape[0])
    return local_maximum(in_phase[start:stop], radii)[k - start]


def erode_in_plane(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Erode a (k, j, i) mask ``iterations`` times by the in-plane 4-connected cross
    (:func:`myoflow.core.morphology.erode_in_plane`, slices along axis 0)."""
    return morphology.erode_in_plane(mask, iterations, slice_axis=0)


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


def _station_levels(part: _StationVoxels, settings: SwapSettings) -> _Levels | None:
    """A station's own fat and water levels, if it shows both labels clearly: each covers
    ``min_class_ml`` and their medians differ by ``min_contrast``. The brighter median is
    fat whichever way the station is labelled; a station swapped in large part mixes both
    labels and shows no contrast."""
    if min(part.fatty.sum(), part.watery.sum()) * part.voxel_ml < settings.min_class_ml:
        return None
    a = float(np.median(part.intensity[part.fatty]))
    b = float(np.median(part.intensity[part.watery]))
    if max(a, b) < settings.min_contrast * min(a, b):
        return None
    return _Levels(max(a, b), min(a, b))


def _participant_levels(
    own: Sequence[_Levels | None], parts: Sequence[_StationVoxels], settings: SwapSettings
) -> _Levels | None:
    """Fat and water levels of the participant: medians over the stations that show both."""
    shown = [levels for levels in own if levels is not None]
    if shown:
        return _Levels(
            float(np.median([v.fat for v in shown])), float(np.median([v.water for v in shown]))
        )
    # Lean participants may have pure fat in one station only; when that station is
    # swapped in part, no station shows both labels. Water-dominant tissue (muscle) is then
    # nearly all of the dominant voxels: its median is the water level.
    pooled = np.concatenate([part.intensity[part.fatty | part.watery] for part in parts])
    if pooled.size * parts[0].voxel_ml < settings.min_class_ml:
        return None
    water = float(np.median(pooled))
    return _Levels(settings.fallback_ratio * water, water, assumed=True)


def _judge(number, station, k, part, levels, own, affine, settings) -> SwapDecision:
    """One station's verdict. Whole swap: the labels' median brightness says so for most
    dominant voxels (against the participant's levels, which a swapped station does not
    set). Partial swap: a connected region of voxels whose own brightness contradicts
    their label (against the station's own levels where it has them, which follow its
    coil bias)."""
    i = part.intensity
    n_fatty, n_watery = int(part.fatty.sum()), int(part.watery.sum())
    dominant = n_fatty + n_watery
    if dominant == 0:
        return _undetermined(number, station, "no tissue dominated by water or fat")
    wrong = 0
    if n_fatty:
        wrong += n_fatty * (not levels.looks_fat(float(np.median(i[part.fatty]))))
    if n_watery:
        wrong += n_watery * levels.looks_fat(float(np.median(i[part.watery])))
    score = wrong / dominant
    local = own or levels
    t = local.threshold
    contradicting = (part.fatty & (i < t / settings.margin)) | (
        part.watery & (i > t * settings.margin)
    )
    region_ml, where = _largest_region(contradicting, part.body, affine, k, part.voxel_ml)
    summary = (
        f"{100 * score:.0f} % of {dominant} water- or fat-dominant voxels carry the label"
        f" of the other (fat level {levels.fat:.0f}{' assumed' if levels.assumed else ''},"
        f" water level {levels.water:.0f} in-phase); largest contradicting region"
        f" {region_ml:.1f} ml"
    )
    if score >= settings.whole_fraction:
        status, reason = "swap", f"whole station swapped: {summary}"
    elif region_ml >= settings.min_region_ml:
        status, reason = "partial_swap", f"region swapped ({where}): {summary}"
    else:
        status, reason, where = "ok", summary, ""
    return SwapDecision(number, station[0], station[1], status, score, region_ml, where, reason)


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
