"""Benchmark hip landmark detection on synthetic participants built on all 40 atlas bodies.

Run: ``.venv/bin/python bench/landmarks.py [--seed 7] [--full 8] [--margins]``

Each atlas body is rendered once (``render_participant``) with a phenotype row of
``sample_cohort(seed, 40, "ukbb")`` whose ``atlas_body`` is set to 0..39, then given the
generator's coil bias (``bias_field``) and Rician noise (``rician``, sigma 15) on water
and fat, as ``myoflow synth`` does. The error is the distance (mm) between the detected
and the true hip joint centre (``phantom.truth["hip_{side}_{x,y,z}_mm"]``, LPS), both
sides. Targets (issue 4): median under 3 mm, maximum under 8 mm. ``--full N`` also runs
the first N bodies at full size (2.232 x 2.232 x 3 mm); ``--margins`` reports how far
each crop geometry's muscles stay from its faces, at 150 and 200 cm.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from myoflow.core.labels import LABELS
from myoflow.landmarks.hip_detection import detect_hips
from myoflow.landmarks.record import LandmarkError
from myoflow.segment.crop import GLUTEUS_CROP, ILIOPSOAS_CROP, CropSpec, crop_geometry
from myoflow.synth.geometry import protocol
from myoflow.synth.phenotypes import sample_cohort
from myoflow.synth.render import render_participant
from myoflow.synth.rng import participant_rng
from myoflow.synth.signal import NOISE_SIGMA, bias_field, rician

TARGET_MEDIAN_MM = 3.0
TARGET_MAX_MM = 8.0


def participant(row: dict, size: str, seed: int, index: int):
    """Rendered phantom, and its water and fat with coil bias and Rician noise."""
    grid = protocol("ukbb", size).grid
    phantom = render_participant(row, grid, participant_rng(seed, index, "texture"))
    bias = bias_field(grid.shape, participant_rng(seed, index, "bias"))
    noise = participant_rng(seed, index, "noise")
    water = rician(phantom.water * bias, NOISE_SIGMA, noise)
    fat = rician(phantom.fat * bias, NOISE_SIGMA, noise)
    return grid, phantom, water, fat


def errors_for(size: str, bodies: range, seed: int) -> tuple[list[float], list[str], list[float]]:
    """Per-side errors (mm), failures and detection seconds over ``bodies``."""
    table = sample_cohort(seed, 40, "ukbb")
    table["atlas_body"] = np.arange(40)
    errors, failures, seconds = [], [], []
    for body in bodies:
        grid, phantom, water, fat = participant(table.iloc[body].to_dict(), size, seed, body + 1)
        started = time.perf_counter()
        try:
            hips = detect_hips(water, fat, grid.affine_ras())
        except LandmarkError as error:
            failures.append(f"body {body}: {error}")
            errors += [np.inf, np.inf]
            continue
        finally:
            seconds.append(time.perf_counter() - started)
        for side, found in (("left", hips.left_lps_mm), ("right", hips.right_lps_mm)):
            truth = np.array([phantom.truth[f"hip_{side}_{a}_mm"] for a in "xyz"])
            errors.append(float(np.linalg.norm(found - truth)))
    return errors, failures, seconds


def report(size: str, errors: list[float], failures: list[str], seconds: list[float]) -> None:
    e = np.asarray(errors)
    ok = np.median(e) < TARGET_MEDIAN_MM and e.max() < TARGET_MAX_MM
    print(
        f"{size:<6} {len(e) // 2:>6} {np.median(e):>10.2f} {np.percentile(e, 90):>7.2f}"
        f" {e.max():>7.2f} {np.mean(seconds):>10.2f}   {'PASS' if ok else 'FAIL'}"
    )
    for failure in failures:
        print(f"    {failure}")


def margins(seed: int) -> None:
    """Smallest distance (mm) from each crop's muscles to its faces, all bodies, 150/200 cm."""
    groups = {
        ILIOPSOAS_CROP.name: (ILIOPSOAS_CROP, ("psoas_major", "iliacus")),
        GLUTEUS_CROP.name: (GLUTEUS_CROP, ("gluteus_maximus", "gluteus_medius", "gluteus_minimus")),
    }
    table = sample_cohort(seed, 40, "ukbb")
    worst = {name: np.full(6, np.inf) for name in groups}
    for body in range(40):
        for height in (150.0, 200.0):
            row = table.iloc[body].to_dict() | {"atlas_body": body, "height_cm": height}
            grid, phantom, _, _ = participant(row, "small", seed, body + 1)
            lps = grid.affine_lps()
            for side in ("left", "right"):
                hip = np.array([phantom.truth[f"hip_{side}_{a}_mm"] for a in "xyz"])
                for name, (spec, muscles) in groups.items():
                    values = [LABELS[f"{m}_{side}"] for m in muscles]
                    points = lps[:3, :3] @ np.argwhere(np.isin(phantom.labels, values)).T
                    worst[name] = np.minimum(
                        worst[name], face_margins(spec, hip, side, grid, points + lps[:3, 3:4])
                    )
    print("\ncrop margins, mm (smallest over 40 bodies x 150/200 cm x 2 sides)")
    faces = ("lateral", "medial", "anterior", "posterior", "below", "above")
    print(f"{'crop':<10} " + " ".join(f"{face:>9}" for face in faces))
    for name, m in worst.items():
        print(f"{name:<10} " + " ".join(f"{v:>9.0f}" for v in m))


def face_margins(
    spec: CropSpec, hip: np.ndarray, side: str, grid, points: np.ndarray
) -> np.ndarray:
    """Distances (mm) from ``points`` (3, N; LPS) to the crop's six faces, the smallest each."""
    geometry = crop_geometry(spec, hip, side, grid.affine_ras())
    index = np.linalg.solve(geometry.affine_lps[:3, :3], points - geometry.affine_lps[:3, 3:4])
    spacing = np.asarray(spec.spacing_mm)
    low = index.min(axis=1) * spacing  # axis 0 runs medially: its low face is lateral
    high = (np.asarray(spec.shape) - 1 - index.max(axis=1)) * spacing
    return np.array([low[0], high[0], low[1], high[1], low[2], high[2]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="cohort seed of the phenotype rows")
    parser.add_argument("--full", type=int, default=8, help="bodies also run at full size")
    parser.add_argument("--margins", action="store_true", help="report crop margins too")
    args = parser.parse_args()
    print(f"hip landmark error, mm (ukbb, seed {args.seed}; targets median < 3, max < 8)")
    print(f"{'size':<6} {'bodies':>6} {'median':>10} {'p90':>7} {'max':>7} {'s/person':>10}")
    for size, bodies in (("small", range(40)), ("full", range(args.full))):
        if len(bodies):
            report(size, *errors_for(size, bodies, args.seed))
    if args.margins:
        margins(args.seed)


if __name__ == "__main__":
    main()
