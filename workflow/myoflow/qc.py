"""Quality control of one participant (``qc/flags.json``) and cohort outliers.

Fat-water swaps (:func:`detect_swaps`). Two-point Dixon reconstruction picks, voxel by
voxel, which of two solutions is water; when it picks wrong over a station or a region
of one, "water" and "fat" trade places while the in-phase (W + F) and opposed-phase
(|W - F|) images stay as they were. Those two fix each voxel's signals up to the swap:
the larger is (in + opp) / 2, the smaller (in - opp) / 2. What tells which is which is
brightness: on these T1-weighted gradient echoes fat-dominant tissue (subcutaneous and
visceral fat, ~1000 in the synthetic model) is brighter in-phase than water-dominant
tissue (muscle, organs, ~500-620). So for every tissue voxel whose signal is dominated by
one of the two (opp > ``dominance`` x in, i.e. fat fraction under 0.3 or over 0.7) the
channels labelled water and fat are consistent if the brighter voxels are labelled
fat-dominant and the darker ones water-dominant, and contradict the labels otherwise.
Partial-volume voxels are left out: the ``skin_voxels`` outermost layers of the body and
any voxel darker than ``local_fraction`` x the brightest within two voxels in-plane (fat
dimmed by air in skin folds, muscle at the edge of fat), whose brightness says nothing
about their tissue.

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

Other flags (:func:`participant_flags`) come from the metrics record and landmarks. A
flag is a dict with ``name``, ``severity`` ("fail" excludes from statistics, "warn" only
if configured, see :func:`qc_status`), ``value``, ``threshold`` and ``message``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from myoflow.errors import MyoflowError
from myoflow.synth.anatomy import LABELS

SWAP_STATUSES = ("ok", "swap", "partial_swap", "undetermined")


class QcError(MyoflowError):
    """QC cannot run on these inputs; the message says why."""


@dataclass(frozen=True)
class SwapSettings:
    """Thresholds of :func:`detect_swaps` (defaults tuned on synthetic participants)."""

    dominance: float = 0.4  # opp / in above this: one of water and fat dominates the voxel
    body_fraction: float = 0.4  # tissue: in-phase above this x the station's 99th percentile
    margin: float = 1.1  # brightness must miss the fat/water midpoint by this factor
    local_fraction: float = 0.7  # darker than this x the brightest voxel within 2: edge, left out
    whole_fraction: float = 0.5  # share of dominant voxels labelled wrong: whole-station swap
    min_region_ml: float = 5.0  # smallest connected contradicting region: partial swap
    skin_voxels: int = 2  # in-plane layers under the body outline left out (air partial volume)
    min_class_ml: float = 20.0  # volume of each label a station needs to give levels
    min_contrast: float = 1.2  # a station whose label medians differ less gives no levels
    fallback_ratio: float = 1.6  # fat / water level assumed when no station gives levels


@dataclass(frozen=True)
class SwapDecision:
    """The verdict on one station."""

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
    """Per-station fat-water swap decisions on the stitched channels (see module docstring).

    Args:
        water, fat, in_phase, opposed: stitched Dixon channels (i, j, k); None if missing.
        stations: each station's (k_start, k_stop) on the stitched grid, as ingestion records.
        affine: 4x4 voxel -> RAS mm matrix of the channels.
        settings: thresholds.
    """
    channels = {"water": water, "fat": fat, "in-phase": in_phase, "opposed-phase": opposed}
    missing = [name for name, array in channels.items() if array is None]
    if missing:
        reason = f"channel missing: {', '.join(missing)}"
        return [_undetermined(n, s, reason) for n, s in enumerate(stations, start=1)]
    shape = np.shape(water)
    if any(np.shape(a) != shape for a in channels.values()) or len(shape) != 3:
        shapes = ", ".join(f"{n} {np.shape(a)}" for n, a in channels.items())
        raise QcError(f"channels must be 3-D arrays of one shape, got {shapes}")
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0
    own = own_slices(stations, shape[2])
    parts = [_station_voxels(water, fat, in_phase, opposed, k, settings, voxel_ml) for k in own]
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


def _undetermined(number: int, station: tuple[int, int], reason: str) -> SwapDecision:
    return SwapDecision(number, station[0], station[1], "undetermined", None, 0.0, "", reason)


@dataclass(frozen=True)
class _StationVoxels:
    intensity: np.ndarray  # in-phase of the station's own slices
    fatty: np.ndarray  # dominant voxels labelled fat-dominant (fat > water)
    watery: np.ndarray  # dominant voxels labelled water-dominant
    body: np.ndarray
    voxel_ml: float


def _station_voxels(water, fat, in_phase, opposed, k, settings, voxel_ml) -> _StationVoxels:
    # Slices, not np.take, and C order: NIfTI readers hand over Fortran-ordered arrays,
    # which np.take and the filters below walk several times slower.
    contiguous = k.size and k[-1] - k[0] + 1 == k.size
    pick = slice(int(k[0]), int(k[-1]) + 1) if contiguous else k
    w, f, i, o = (
        np.ascontiguousarray(np.asarray(a)[:, :, pick], dtype=np.float32)
        for a in (water, fat, in_phase, opposed)
    )
    top = float(np.percentile(i, 99)) if i.size else 0.0
    # Tissue away from the skin: partial volume with air makes the outer voxels dim, and in
    # lean participants the thin subcutaneous fat is nothing but such voxels.
    cross = np.zeros((3, 3, 1), dtype=bool)
    cross[1, :, 0] = cross[:, 1, 0] = True
    inside = ndimage.binary_erosion(
        i > 0.5 * settings.body_fraction * top, structure=cross, iterations=settings.skin_voxels
    )
    body = inside & (i > settings.body_fraction * top)
    # Voxels much darker than their surroundings are partial volume (fat dimmed by air in
    # skin folds, muscle at the edge of fat): leave them out of levels and judgement.
    peak = ndimage.maximum_filter(i, size=(5, 5, 1))
    dominant = body & (o > settings.dominance * i) & (i >= settings.local_fraction * peak)
    return _StationVoxels(i, dominant & (f > w), dominant & (w > f), body, voxel_ml)


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

    ``regions`` and ``body`` hold the slices ``k`` of the stitched grid.
    """
    labelled, n = ndimage.label(regions, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return 0.0, ""
    sizes = np.bincount(labelled.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    a = np.asarray(affine, dtype=float)

    def patient_mm(index: np.ndarray) -> np.ndarray:
        slice_k = np.interp(index[2], np.arange(len(k)), k)
        grid = np.array([index[0], index[1], slice_k], dtype=float)
        return a[:3, :3] @ grid + a[:3, 3]

    centre = patient_mm(np.argwhere(labelled == largest).mean(axis=0))
    body_centre = patient_mm(np.argwhere(body).mean(axis=0))
    dx, dy = centre[:2] - body_centre[:2]  # RAS: +x right, +y anterior
    where = f"{'right' if dx > 0 else 'left'} {'anterior' if dy > 0 else 'posterior'}"
    return float(sizes[largest - 1]) * voxel_ml, where


# ---------------------------------------------------------------- participant flags


@dataclass(frozen=True)
class QcSettings:
    """Thresholds and severities of :func:`participant_flags`."""

    hip_distance_mm: tuple[float, float] = (120.0, 260.0)  # plausible hip joint centre distance
    hip_height_tolerance_mm: float = 15.0  # largest difference in z between the hips
    min_main_component: float = 0.95  # largest piece's share of a label below this: warn
    asymmetry_pct: float = 20.0  # |right - left| / mean of the sides beyond this: warn
    asymmetry_groups: tuple[str, ...] = ("iliopsoas", "gluteus")
    severity_touches_border: str = "fail"  # a muscle cut by the field of view
    severity_touches_crop: str = "fail"  # a muscle cut by the crop box
    severity_components: str = "warn"
    severity_asymmetry: str = "warn"
    severity_landmarks: str = "fail"
    severity_swap: str = "fail"
    severity_swap_undetermined: str = "warn"


def flag(name: str, severity: str, value: Any, threshold: Any, message: str) -> dict[str, Any]:
    """One QC flag."""
    if severity not in ("fail", "warn"):
        raise QcError(f"severity must be 'fail' or 'warn', got {severity!r}")
    return {
        "name": name,
        "severity": severity,
        "value": value,
        "threshold": threshold,
        "message": message,
    }


def participant_flags(
    record: Mapping[str, Any] | None = None,
    swaps: Sequence[SwapDecision] = (),
    hips_lps_mm: Mapping[str, Sequence[float]] | None = None,
    settings: QcSettings = QcSettings(),
) -> list[dict[str, Any]]:
    """Every QC flag raised for one participant (none: a clean participant).

    Args:
        record: the participant's :func:`myoflow.metrics.participant_metrics` record.
        swaps: :func:`detect_swaps` decisions.
        hips_lps_mm: ``{"left": (x, y, z), "right": (x, y, z)}`` hip joint centres.
        settings: thresholds and severities.
    """
    flags = [*_swap_flags(swaps, settings)]
    if hips_lps_mm is not None:
        flags += _landmark_flags(hips_lps_mm, settings)
    if record is not None:
        flags += _mask_flags(record, settings)
        flags += _asymmetry_flags(record, settings)
    return flags


def _swap_flags(swaps: Sequence[SwapDecision], s: QcSettings) -> list[dict[str, Any]]:
    out = []
    for d in swaps:
        if d.swapped:
            out.append(
                flag(
                    f"fat_water_swap_station_{d.station}", s.severity_swap, d.score, None, d.reason
                )
            )
        elif d.status == "undetermined":
            out.append(
                flag(
                    f"fat_water_swap_undetermined_station_{d.station}",
                    s.severity_swap_undetermined,
                    None,
                    None,
                    d.reason,
                )
            )
    return out


def _landmark_flags(hips: Mapping[str, Sequence[float]], s: QcSettings) -> list[dict[str, Any]]:
    left, right = (np.asarray(hips[side], dtype=float) for side in ("left", "right"))
    out = []
    distance = float(np.linalg.norm(left - right))
    lo, hi = s.hip_distance_mm
    if not lo <= distance <= hi:
        out.append(
            flag(
                "hip_distance",
                s.severity_landmarks,
                distance,
                [lo, hi],
                f"hip joint centres {distance:.0f} mm apart, outside {lo:.0f}-{hi:.0f} mm",
            )
        )
    dz = float(left[2] - right[2])
    if abs(dz) > s.hip_height_tolerance_mm:
        out.append(
            flag(
                "hip_height_difference",
                s.severity_landmarks,
                dz,
                s.hip_height_tolerance_mm,
                f"left hip {dz:+.0f} mm above the right"
                f" (tolerance {s.hip_height_tolerance_mm:.0f} mm)",
            )
        )
    if distance > 0 and left[0] < right[0]:
        out.append(
            flag(
                "hips_swapped",
                s.severity_landmarks,
                float(left[0] - right[0]),
                0.0,
                "the left hip lies to the right of the right hip (LPS x)",
            )
        )
    return out


def _mask_flags(record: Mapping[str, Any], s: QcSettings) -> list[dict[str, Any]]:
    out = []
    for name in LABELS:
        if record.get(f"touches_border_{name}"):
            out.append(
                flag(
                    f"touches_border_{name}",
                    s.severity_touches_border,
                    True,
                    False,
                    f"{name} reaches the edge of the image: the field of view may cut it",
                )
            )
        if record.get(f"touches_crop_{name}"):
            out.append(
                flag(
                    f"touches_crop_{name}",
                    s.severity_touches_crop,
                    True,
                    False,
                    f"{name} reaches the edge of the crop box: the crop may cut it",
                )
            )
        n = record.get(f"n_components_{name}")
        main = record.get(f"main_component_fraction_{name}")
        if n == 0:
            out.append(flag(f"components_{name}", "fail", 0, 1, f"{name} is empty"))
        elif main is not None and main < s.min_main_component:
            out.append(
                flag(
                    f"components_{name}",
                    s.severity_components,
                    float(main),
                    s.min_main_component,
                    f"{name} is in {n} pieces; the largest holds {100 * main:.0f} % of it"
                    f" (expected at least {100 * s.min_main_component:.0f} %)",
                )
            )
    return out


def _asymmetry_flags(record: Mapping[str, Any], s: QcSettings) -> list[dict[str, Any]]:
    out = []
    for group in s.asymmetry_groups:
        value = record.get(f"{group}_asymmetry_pct")
        if value is not None and abs(value) > s.asymmetry_pct:
            out.append(
                flag(
                    f"asymmetry_{group}",
                    s.severity_asymmetry,
                    float(value),
                    s.asymmetry_pct,
                    f"{group} right - left is {value:+.1f} % of the mean of the sides"
                    f" (bound +-{s.asymmetry_pct:.0f} %)",
                )
            )
    return out


def qc_status(flags: Sequence[Mapping[str, Any]], keep_warnings: bool) -> tuple[str, list[str]]:
    """Overall status and the reasons for it.

    "fail" if any flag fails, or any warns and ``keep_warnings`` is False (warnings then
    exclude from statistics too); "warn" if flags only warn and are kept; else "pass".
    Reasons are ``"name: message"`` of the flags that decided it.
    """
    fails = [f for f in flags if f["severity"] == "fail"]
    warns = [f for f in flags if f["severity"] == "warn"]
    if fails or (warns and not keep_warnings):
        deciding = fails + ([] if keep_warnings else warns)
        return "fail", [f"{f['name']}: {f['message']}" for f in deciding]
    if warns:
        return "warn", [f"{f['name']}: {f['message']}" for f in warns]
    return "pass", []


def write_flags(
    path: str | os.PathLike[str],
    flags: Sequence[Mapping[str, Any]],
    swaps: Sequence[SwapDecision],
    keep_warnings: bool,
) -> None:
    """Write ``qc/flags.json``: status, reasons, flags and the per-station swap decisions."""
    from myoflow.io import write_json

    status, reasons = qc_status(flags, keep_warnings)
    write_json(
        path,
        {
            "status": status,
            "reasons": reasons,
            "flags": list(flags),
            "swap_stations": [asdict(d) for d in swaps],
        },
    )


# ---------------------------------------------------------------- cohort


def robust_outliers(
    df: pd.DataFrame, columns: Sequence[str], by: str | None = "sex", threshold: float = 3.5
) -> pd.DataFrame:
    """Values whose robust z-score within their group exceeds ``threshold``.

    The robust (modified) z-score of Iglewicz and Hoaglin: ``0.6745 (x - median) / MAD``
    with MAD the median absolute deviation from the median, per group of ``by`` (the whole
    table when ``by`` is None); 3.5 is their recommended cut-off. Where a group's MAD is 0
    the scale is 1.253314 x the mean absolute deviation instead (as MAD / 0.6745, it
    estimates the standard deviation of normal data); where that is 0 too, nothing in the
    group is an outlier.

    Returns:
        One row per outlying value: the table's index as ``row``, ``participant_id`` if
        the table has one, ``group``, ``column``, ``value``, ``median``, ``mad`` and ``z``.
    """
    missing = [c for c in [*columns, *([by] if by else [])] if c not in df.columns]
    if missing:
        raise KeyError(f"robust_outliers: no column {', '.join(missing)}")
    groups = df.groupby(by, dropna=False) if by else [("all", df)]
    rows = []
    for group, part in groups:
        for column in columns:
            x = pd.to_numeric(part[column], errors="coerce")
            valid = x.dropna()
            if valid.empty:
                continue
            median = float(valid.median())
            deviation = (valid - median).abs()
            mad = float(deviation.median())
            scale = mad / 0.6745 if mad > 0 else float(deviation.mean()) * 1.253314
            if scale == 0:
                continue
            z = (valid - median) / scale
            for index in z.index[z.abs() > threshold]:
                rows.append(
                    {
                        "row": index,
                        **(
                            {"participant_id": df.at[index, "participant_id"]}
                            if "participant_id" in df.columns
                            else {}
                        ),
                        "group": group[0] if isinstance(group, tuple) else group,
                        "column": column,
                        "value": float(valid[index]),
                        "median": median,
                        "mad": mad,
                        "z": float(z[index]),
                    }
                )
    columns_out = ["row", *(["participant_id"] if "participant_id" in df.columns else [])]
    columns_out += ["group", "column", "value", "median", "mad", "z"]
    return pd.DataFrame(rows, columns=columns_out)
