"""Detecting the hip joint centres (femoral head centres) on a stitched DIXON volume.

The femoral head is the largest round ball of fatty marrow in the body: walled by a
thin cortex, in muscle, one each side at about the same height. Detection reads water
and fat only, never their in-phase level:

1. **Fatness** (:func:`myoflow.landmarks.marrow_contrast.marrow_map`): log(fat / water)
   calibrated on the participant's own muscle and fat (0 muscle, 1 fat, marrow about
   0.35-0.8), 0 where a voxel holds little signal in both channels (cortex, gas).
2. **Candidates**: the local maxima of scale-normalised Laplacians of Gaussian that
   respond to head-sized balls of marrow (:func:`bright_ball_response`).
3. **Sphere fit** (:func:`fit_head`): from each candidate, rays find where marrow gives
   way to cortex and muscle for good (a dark line that marrow resumes after, such as a
   physeal scar or the neck's cortex, is crossed; rays running down the neck find no
   edge), and a sphere is fitted to those edges with Tukey weights, recasting from the
   new centre. :func:`head_score` rates the share of rays on the sphere, its size and
   its residual: the heads are the large, round, sharp-edged balls.
4. **Pair** (:func:`best_pair`): the best-scoring two heads side by side at about the
   same height, then the strict anatomical checks of :class:`Plausibility`; a pair not
   found or not clear is looked for again with water and fat exchanged (a fat-water swap
   of the hip station), :func:`detect_hips`.

Positions are returned in LPS mm (DICOM patient coordinates, as the synthetic truth
stores them; RAS on request). A participant without two heads side by side raises
:class:`LandmarkError` (a :class:`~myoflow.core.errors.ParticipantExcluded`) with reason
``landmarks_not_found``; a pair that breaks the anatomical checks, with
``landmarks_implausible``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from myoflow.core.grid import lps_axes
from myoflow.landmarks.marrow_contrast import MARROW_FATNESS, MarrowMap, marrow_map
from myoflow.landmarks.record import HipLandmarks, LandmarkError

BALL_CAP = 0.5
HEAD_RADII_MM = (15.0, 20.0, 25.0)
"""Ball radii the candidate filter is tuned to (adult femoral heads: ~20-27 mm to the
cortex); one scale suffices, since every local maximum is fitted."""
MAX_CANDIDATES = 150
RAY_COUNT = 256
RAY_STEP_MM = 0.5
RAY_RADII_MM = (6.0, 40.0)
"""Edges closer to or further from the centre than this are not the head's surface."""
EDGE_GAP_MM = 5.0
"""After the head's edge the contrast stays below the marrow level for at least this long."""
FIT_TOLERANCE_MM = 3.0
SHARPNESS_MM = 1.5
"""Residual (rms, mm) at which a fit's sharpness factor is 1/e: a head's marrow ends at a
cortex (rms ~1 mm at 4.5 mm voxels), fat and other marrow fade out (~1.6 mm)."""
HEAD_MIN_RADIUS_MM = 18.0
"""Balls smaller than this (compartments of the shaft or trochanters) score less."""
MIN_HEAD_SCORE = 0.3
"""On 80 synthetic participants (small size, bias and noise), femoral heads scored
0.34-0.60 (:func:`head_score`) and every other ball of marrow at most 0.26; to be
checked again on real images."""
TYPICAL_HEAD_SCORE = 0.55
"""Median score of femoral heads on standard and shifted renders (0.56-0.63 small grid,
bench/landmarks.py): confidence 1 from the head scores' side."""
RIVAL_MARGIN = 0.5
"""A rival pair scoring below ``1 - RIVAL_MARGIN`` of the best leaves no doubt."""
SWAP_RETRY_BELOW = 0.5
"""Hips found with less confidence are looked for again with water and fat exchanged."""
SCREEN_RAYS = 64
SCREEN_SCORE = 0.15


@dataclass(frozen=True)
class Plausibility:
    """What a pair of hip joint centres must satisfy (adult anatomy, supine, in mm)."""

    inter_hip_mm: tuple[float, float] = (120.0, 260.0)
    max_height_difference_mm: float = 30.0
    max_depth_difference_mm: float = 40.0
    head_radius_mm: tuple[float, float] = (12.0, 34.0)
    min_edge_fraction: float = 0.35
    """Fewest of the cast rays that must end on the head's surface (inliers of the fit)."""


# ---------------------------------------------------------------------------- sphere geometry


def fibonacci_directions(count: int) -> np.ndarray:
    """``count`` unit vectors spread evenly over the sphere, shape (count, 3)."""
    n = np.arange(count) + 0.5
    polar = np.arccos(1.0 - 2.0 * n / count)
    azimuth = np.pi * (1.0 + 5.0**0.5) * n
    return np.stack(
        [np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], axis=1
    )


def fit_sphere(points: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Least-squares sphere through ``points`` (N, 3): centre and radius, same units.

    Solves the algebraic form ``|p|^2 = 2 c.p + (r^2 - |c|^2)``, linear in the unknowns,
    with optional per-point ``weights``.
    """
    points = np.asarray(points, dtype=float)
    if len(points) < 4:
        raise ValueError(f"a sphere needs at least 4 points, got {len(points)}")
    root = np.sqrt(np.ones(len(points)) if weights is None else np.asarray(weights, float))
    design = np.column_stack([2.0 * points, np.ones(len(points))]) * root[:, None]
    solution, *_ = np.linalg.lstsq(design, (points**2).sum(axis=1) * root, rcond=None)
    centre = solution[:3]
    return centre, float(np.sqrt(max(solution[3] + centre @ centre, 0.0)))


def robust_sphere(
    points: np.ndarray,
    tolerance_mm: float,
    start_mm: np.ndarray | None = None,
    iterations: int = 10,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Sphere fit with Tukey biweights on the radial residual: centre, radius, inlier mask.

    Points further than ``3 * tolerance_mm`` from the sphere get no weight, so a minority
    of edges from other structures (the femoral neck, a physeal line) does not pull it.
    The first sphere is centred on ``start_mm`` (its radius the median distance) when
    given, else the plain least-squares fit, which far outliers can drag anywhere.
    """
    if start_mm is None:
        centre, radius = fit_sphere(points)
    else:
        centre = np.asarray(start_mm, dtype=float)
        radius = float(np.median(np.linalg.norm(points - centre, axis=1)))
    for _ in range(iterations):
        residual = np.linalg.norm(points - centre, axis=1) - radius
        weights = np.clip(1.0 - (residual / (3.0 * tolerance_mm)) ** 2, 0.0, None) ** 2
        if np.count_nonzero(weights) < 4:
            break
        centre, radius = fit_sphere(points, weights)
    residual = np.linalg.norm(points - centre, axis=1) - radius
    return centre, radius, np.abs(residual) < tolerance_mm


# ---------------------------------------------------------------------------- heads


def bright_ball_response(contrast: MarrowMap) -> list[np.ndarray]:
    """Scale-normalised Laplacian-of-Gaussian responses to balls of marrow, one per radius
    of ``HEAD_RADII_MM``.

    Fatness is capped at ``BALL_CAP`` (marrow 0.35-0.8, fat 1) and fatty tissue that is
    not marrow is levelled to muscle, so the responses rank fatty regions by shape and
    size rather than fat fraction. Each scale is searched on its own: a head merging at a
    coarse scale with the acetabulum's marrow still stands out at a finer one.
    """
    capped = np.minimum(contrast.fatness, BALL_CAP)
    image = np.where(contrast.marrow, capped, np.minimum(capped, 0.0))
    responses = []
    for radius in HEAD_RADII_MM:
        sigma = radius / np.sqrt(3.0)
        log = ndimage.gaussian_laplace(image, sigma / contrast.work_spacing_mm, truncate=3.0)
        responses.append(-(sigma**2) * log)
    return responses


def peak_local_max(
    image: np.ndarray,
    min_distance: int = 1,
    threshold_abs: float | None = None,
    threshold_rel: float | None = None,
    exclude_border: bool | int = True,
    num_peaks: int | None = None,
) -> np.ndarray:
    """Local maxima of ``image``, highest first: (N, ndim) voxel indices.

    The semantics of ``skimage.feature.peak_local_max`` (0.26, without footprint or
    labels), on scipy alone: a voxel is a peak where it equals the maximum of the cube of
    side ``2 * min_distance + 1`` around it (edges repeated) and exceeds the threshold
    (``threshold_abs``, by default the image's minimum, raised to ``threshold_rel`` times
    its maximum); an image that is its own maximum everywhere has none. Peaks within
    ``exclude_border`` voxels of an edge (``True``: ``min_distance``) are dropped; the
    rest, by value (ties in C order), are kept greedily unless closer than
    ``min_distance`` (Chebyshev) to one kept before, up to ``num_peaks``.
    """
    image = np.asarray(image)
    threshold = image.min() if threshold_abs is None else threshold_abs
    if threshold_rel is not None:
        threshold = max(threshold, threshold_rel * image.max())
    size = 2 * min_distance + 1
    if size == 1 or image.size == 1:
        mask = image > threshold
    else:
        mask = image == ndimage.maximum_filter(image, size=size, mode="nearest")
        if mask.all():
            mask[:] = False
        mask &= image > threshold
    border = min_distance if exclude_border is True else int(exclude_border)
    if border > 0:
        for axis in range(image.ndim):
            mask[(slice(None),) * axis + (slice(None, border),)] = False
            mask[(slice(None),) * axis + (slice(-border, None),)] = False
    coords = np.argwhere(mask)
    coords = coords[np.argsort(-image[mask], kind="stable")]
    limit = len(coords) if num_peaks is None else int(num_peaks)
    if min_distance <= 1:
        return coords[:limit]
    kept: list[int] = []
    near = np.zeros(image.shape, dtype=bool)  # closer than min_distance to a kept peak
    reach = min_distance - 1
    for n, point in enumerate(coords):
        if len(kept) >= limit:
            break
        if not near[tuple(point)]:
            kept.append(n)
            near[tuple(slice(max(i - reach, 0), i + reach + 1) for i in point)] = True
    return coords[kept]


def head_candidates(contrast: MarrowMap, responses: list[np.ndarray]) -> list[np.ndarray]:
    """Centres (mm from stitched voxel 0) of the strongest balls of marrow in the body:
    the ``MAX_CANDIDATES`` strongest local maxima of each scale's response, nearest first
    to none (within 5 mm of one already listed, a maximum is the same ball)."""
    min_distance = max(1, int(round(10.0 / float(contrast.work_spacing_mm.min()))))
    found: list[np.ndarray] = []
    for response in responses:
        scores = np.where(contrast.marrow, response, 0.0)
        peaks = peak_local_max(
            scores, min_distance, threshold_abs=1e-6, num_peaks=MAX_CANDIDATES, exclude_border=False
        )
        for peak in peaks:
            centre = contrast.to_stitched_mm(peak)
            if all(np.linalg.norm(centre - other) >= 5.0 for other in found):
                found.append(centre)
    return found


def head_edges(contrast: MarrowMap, centre_mm: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Where rays from ``centre_mm`` leave the marrow for good: (N, 3) mm, NaN where none.

    The edge is the first fall of fatness below ``MARROW_FATNESS`` that stays below for
    ``EDGE_GAP_MM`` (cortex, then muscle), interpolated between samples; a dark line that
    marrow resumes after is crossed, and a ray still in marrow at ``RAY_RADII_MM[1]``
    (down the neck) has no edge.
    """
    radii = np.arange(0.0, RAY_RADII_MM[1] + EDGE_GAP_MM + RAY_STEP_MM, RAY_STEP_MM)
    points = centre_mm[None, None, :] + radii[None, :, None] * directions[:, None, :]
    values = contrast.sample(points.reshape(-1, 3)).reshape(len(directions), len(radii))
    above = values >= MARROW_FATNESS
    gap = int(round(EDGE_GAP_MM / RAY_STEP_MM))
    run = np.cumsum(np.pad(~above, ((0, 0), (1, 0))), axis=1)
    stays_below = (run[:, gap:] - run[:, :-gap]) == gap  # [n, r]: r .. r+gap-1 all below
    n = stays_below.shape[1]
    falls = above[:, : n - 1] & stays_below[:, 1:n]
    falls &= (radii[1:n] >= RAY_RADII_MM[0]) & (radii[1:n] <= RAY_RADII_MM[1])
    rows = np.flatnonzero(falls.any(axis=1))
    r0 = np.argmax(falls[rows], axis=1)
    v0, v1 = values[rows, r0], values[rows, r0 + 1]
    fraction = np.clip((v0 - MARROW_FATNESS) / np.maximum(v0 - v1, 1e-6), 0.0, 1.0)
    edges = np.full((len(directions), 3), np.nan)
    edges[rows] = centre_mm + (radii[r0] + fraction * RAY_STEP_MM)[:, None] * directions[rows]
    return edges


@dataclass(frozen=True)
class HeadFit:
    """A ball's centre (mm from stitched voxel 0), marrow radius and how well it fitted."""

    centre_mm: np.ndarray
    radius_mm: float
    inlier_fraction: float
    rms_mm: float


def fit_head(
    contrast: MarrowMap, start_mm: np.ndarray, rounds: int = 3, rays: int = RAY_COUNT
) -> HeadFit | None:
    """Fit a sphere to the marrow edges around ``start_mm``, recasting from each new centre."""
    directions = fibonacci_directions(rays)
    centre = np.asarray(start_mm, dtype=float)
    fit: HeadFit | None = None
    for _ in range(rounds):
        edges = head_edges(contrast, centre, directions)
        found = edges[np.isfinite(edges[:, 0])]
        if len(found) < 0.2 * rays:
            return fit
        new_centre, radius, inliers = robust_sphere(found, FIT_TOLERANCE_MM, centre)
        if np.count_nonzero(inliers) < 4:
            return fit
        residual = np.linalg.norm(found[inliers] - new_centre, axis=1) - radius
        fit = HeadFit(
            new_centre,
            radius,
            float(np.count_nonzero(inliers)) / rays,
            float(np.sqrt(np.mean(residual**2))),
        )
        moved = float(np.linalg.norm(new_centre - centre))
        centre = new_centre
        if moved < 0.2:
            break
    return fit


def head_score(fit: HeadFit) -> float:
    """How much a fitted ball looks like a femoral head, in [0, 1]: the share of rays on
    the sphere, times a size factor (quadratic below ``HEAD_MIN_RADIUS_MM``), times the
    sharpness of the fit."""
    size = min(1.0, fit.radius_mm / HEAD_MIN_RADIUS_MM) ** 2
    sharpness = np.exp(-((fit.rms_mm / SHARPNESS_MM) ** 2))
    return float(fit.inlier_fraction * size * sharpness)


# ---------------------------------------------------------------------------- detection


def find_heads(
    contrast: MarrowMap, response: list[np.ndarray], plausibility: Plausibility
) -> list[tuple[float, HeadFit]]:
    """Every ball of marrow that could be a femoral head (score, fit), best first.

    Each candidate is screened with one round of ``SCREEN_RAYS`` rays; only those that
    could still reach ``MIN_HEAD_SCORE`` get the full fit.
    """
    r_low, r_high = plausibility.head_radius_mm
    screened: list[tuple[float, HeadFit]] = []
    for start in head_candidates(contrast, response):
        quick = fit_head(contrast, start, rounds=1, rays=SCREEN_RAYS)
        if quick is not None and r_low - 3 <= quick.radius_mm <= r_high + 3:
            if head_score(quick) >= SCREEN_SCORE:
                screened.append((head_score(quick), quick))
    heads: list[tuple[float, HeadFit]] = []
    for _, quick in sorted(screened, key=lambda item: -item[0]):
        if any(np.linalg.norm(quick.centre_mm - f.centre_mm) < 5.0 for _, f in heads):
            continue
        fit = fit_head(contrast, quick.centre_mm)
        if fit is not None and r_low <= fit.radius_mm <= r_high:
            score = head_score(fit)
            distinct = all(np.linalg.norm(fit.centre_mm - f.centre_mm) >= 5.0 for _, f in heads)
            if score >= MIN_HEAD_SCORE and distinct:
                heads.append((score, fit))
    return sorted(heads, key=lambda item: -item[0])


@dataclass(frozen=True)
class Pair:
    """The best pair of heads, (left, right) by position, their scores, and the summed
    score of the best other pair (0 when there is none)."""

    left: HeadFit
    right: HeadFit
    scores: tuple[float, float]
    runner_up: float


def best_pair(heads: list[tuple[float, HeadFit]], plausibility: Plausibility) -> Pair:
    """The two heads with the highest summed score that are roughly a pair of hips (within
    twice the height and distance tolerances), and the best other pair's score.

    Raises:
        LandmarkError: ``landmarks_not_found`` when no two heads make such a pair.
    """
    low, high = plausibility.inter_hip_mm
    pairs: list[tuple[float, int, int]] = []
    for n, (_, a) in enumerate(heads):
        for m in range(n + 1, len(heads)):
            offset = a.centre_mm - heads[m][1].centre_mm
            roughly = 0.5 * low <= abs(float(offset[0])) <= 1.5 * high
            roughly &= abs(float(offset[2])) <= 2.0 * plausibility.max_height_difference_mm
            if roughly:
                pairs.append((heads[n][0] + heads[m][0], n, m))
    if not pairs:
        found = "no ball" if not heads else f"{len(heads)} ball{'s' * (len(heads) > 1)}"
        raise LandmarkError(
            "landmarks_not_found",
            f"{found} of marrow shaped like a femoral head; no two side by side at about the"
            " same height",
        )
    pairs.sort(key=lambda pair: -pair[0])
    _, n, m = pairs[0]
    (score_a, a), (score_b, b) = heads[n], heads[m]
    if a.centre_mm[0] < b.centre_mm[0]:  # i runs to the left
        (score_a, a), (score_b, b) = (score_b, b), (score_a, a)
    runner_up = pairs[1][0] if len(pairs) > 1 else 0.0
    return Pair(a, b, (score_a, score_b), runner_up)


def confidence(pair: Pair) -> float:
    """How certain the pair is, in [0, 1]: the smallest of three margins.

    - each head's score above the rejection level: ``(score - MIN_HEAD_SCORE) /
      (TYPICAL_HEAD_SCORE - MIN_HEAD_SCORE)``, so 0 for a head that only just passed and 1
      for one as clear as the typical femoral head (both levels measured, see their
      docstrings);
    - the lead over the best other pair: ``(best - runner_up) / (RIVAL_MARGIN * best)``,
      0 when another pair of balls scores as well, 1 when no other pair reaches
      ``1 - RIVAL_MARGIN`` of the best.

    Each margin is clipped to [0, 1]. On the bench (``bench/landmarks.py``) the error of
    a pair grows as this falls; ``landmarks.min_confidence`` excludes what falls below it.
    """
    span = TYPICAL_HEAD_SCORE - MIN_HEAD_SCORE
    margins = [(score - MIN_HEAD_SCORE) / span for score in pair.scores]
    best = sum(pair.scores)
    margins.append((best - pair.runner_up) / (RIVAL_MARGIN * best))
    return float(np.clip(min(margins), 0.0, 1.0))


def detect_hips(
    water: np.ndarray,
    fat: np.ndarray,
    affine_ras: np.ndarray,
    plausibility: Plausibility = Plausibility(),
) -> HipLandmarks:
    """Find the left and right hip joint centres of one stitched DIXON volume.

    Args:
        water: stitched water channel, i -> L, j -> P, k -> S.
        fat: stitched fat channel, same grid.
        affine_ras: their voxel -> RAS mm affine (as NIfTI stores it).
        plausibility: what the pair must satisfy.

    Returns:
        Hip joint centres in LPS mm with a confidence in [0, 1].

    Raises:
        LandmarkError: ``landmarks_not_found`` when a side has no head-sized ball of
            marrow or no two heads form a rough pair; ``landmarks_implausible`` when the
            pair breaks ``plausibility`` (distance, height or depth difference, fit).
        ValueError: the arrays or affine do not describe one volume in our convention.
    """
    water, fat = np.asarray(water), np.asarray(fat)
    if water.shape != fat.shape or water.ndim != 3:
        raise ValueError(f"water {water.shape} and fat {fat.shape} must be one 3D shape")
    spacing, lps = lps_axes(affine_ras)
    found: HipLandmarks | None = None
    errors: list[LandmarkError] = []
    # A fat-water swap of the station (or region) holding the hips turns marrow into
    # water-dominant tissue: when the hips are not found, or not clearly, they are looked
    # for again with the channels exchanged, and the more confident pair is kept.
    for channels in ((water, fat), (fat, water)):
        try:
            hips = detect_in(*channels, spacing, lps, plausibility)
        except LandmarkError as err:
            errors.append(err)
            continue
        if found is None or hips.confidence > found.confidence:
            found = hips
        if found.confidence >= SWAP_RETRY_BELOW:
            break
    if found is None:
        raise errors[0]  # what the channels as delivered gave
    return found


def detect_in(
    water: np.ndarray,
    fat: np.ndarray,
    spacing: np.ndarray,
    lps: np.ndarray,
    plausibility: Plausibility,
) -> HipLandmarks:
    """:func:`detect_hips` for one reading of the channels (spacing and LPS affine given)."""
    try:
        contrast = marrow_map(water, fat, spacing)
    except ValueError as err:  # no body, or no fat in it: nothing to find a head in
        raise LandmarkError("landmarks_not_found", str(err)) from err
    response = bright_ball_response(contrast)
    heads = find_heads(contrast, response, plausibility)
    pair = best_pair(heads, plausibility)
    fits = {"left": pair.left, "right": pair.right}
    to_lps = lps[:3, :3] / spacing  # mm along the array axes -> LPS mm, before the origin
    landmarks = HipLandmarks(
        left_lps_mm=to_lps @ fits["left"].centre_mm + lps[:3, 3],
        right_lps_mm=to_lps @ fits["right"].centre_mm + lps[:3, 3],
        confidence=confidence(pair),
        head_radius_mm=(fits["left"].radius_mm, fits["right"].radius_mm),
    )
    check_plausible(landmarks, fits, plausibility)
    return landmarks


def check_plausible(
    landmarks: HipLandmarks, fits: dict[str, HeadFit], plausibility: Plausibility
) -> None:
    """Raise ``landmarks_implausible`` when the pair breaks adult hip anatomy."""
    problems = []
    low, high = plausibility.inter_hip_mm
    if not low <= landmarks.inter_hip_mm <= high:
        problems.append(
            f"hips {landmarks.inter_hip_mm:.0f} mm apart (expected {low:.0f}-{high:.0f})"
        )
    offset = np.abs(landmarks.left_lps_mm - landmarks.right_lps_mm)
    if offset[2] > plausibility.max_height_difference_mm:
        problems.append(f"heights differ by {offset[2]:.0f} mm")
    if offset[1] > plausibility.max_depth_difference_mm:
        problems.append(f"depths differ by {offset[1]:.0f} mm")
    for side, fit in fits.items():
        if fit.inlier_fraction < plausibility.min_edge_fraction:
            problems.append(f"{side} head seen on {fit.inlier_fraction:.0%} of its surface")
    if problems:
        raise LandmarkError("landmarks_implausible", "; ".join(problems))
