"""Geometry of the phantom: grids and stations, the atlas, shapes and their rasterisation."""

from __future__ import annotations

import numpy as np
import pytest

from myoflow.synth import atlas, psoas_profile
from myoflow.synth.anatomy import calibrate, rendered_volume_ml
from myoflow.synth.geometry import Grid, protocol
from myoflow.synth.shapes import block_mean, render_chunks, stack, upsample


@pytest.mark.parametrize("name", ["ukbb", "nako"])
@pytest.mark.parametrize("size", ["full", "small"])
def test_stations_tile_the_stitched_grid_with_overlaps(name, size):
    proto = protocol(name, size)
    covered = np.zeros(proto.grid.shape[2], dtype=int)
    for station in proto.stations:
        covered[station.start : station.stop] += 1
    assert covered.min() >= 1  # no gap
    assert (covered == 2).sum() >= len(proto.stations) - 1  # every junction overlaps
    assert proto.stations[0].stop == proto.grid.shape[2]  # station 1 is the head end
    assert [s.number for s in proto.stations] == list(range(1, len(proto.stations) + 1))


def test_ukbb_full_grid_is_the_atlas_grid_and_affines_agree():
    grid = protocol("ukbb", "full").grid
    assert grid.shape == (224, 174, 370)
    np.testing.assert_allclose(grid.spacing_mm, (2.232142857, 2.232142857, 3.0), atol=1e-6)
    voxel = np.array([10.0, 20.0, 30.0, 1.0])
    lps = grid.affine_lps() @ voxel
    ras = grid.affine_ras() @ voxel
    np.testing.assert_allclose(ras[:3], lps[:3] * [-1, -1, 1])
    np.testing.assert_allclose(lps[:3], np.array(grid.origin_lps_mm) + voxel[:3] * grid.spacing_mm)
    small = protocol("ukbb", "small").grid
    # Same field of view: first and last voxel edges coincide.
    for axis in range(3):
        lo = grid.origin_lps_mm[axis] - grid.spacing_mm[axis] / 2
        lo_small = small.origin_lps_mm[axis] - small.spacing_mm[axis] / 2
        assert lo_small == pytest.approx(lo, abs=grid.spacing_mm[axis])


@pytest.mark.parametrize("index", [0, 17, 39])
def test_atlas_summary_matches_the_atlas_files(index):
    measured = atlas.measure_body(index)
    shipped = atlas.atlas_summary()[index]
    np.testing.assert_allclose(shipped, [measured[c] for c in atlas.SUMMARY_COLUMNS], atol=1e-3)
    assert measured["hip_left_x_mm"] > measured["hip_right_x_mm"]  # LPS: +x is left


def test_scaled_body_keeps_hips_inside_and_follows_girth():
    body = atlas.load_body(3)
    grid = protocol("ukbb", "small").grid
    thin = atlas.resample_body(body, atlas.body_scaling(body, 170, 55), grid)
    heavy = atlas.resample_body(body, atlas.body_scaling(body, 170, 110), grid)
    assert heavy.sum() > 1.4 * thin.sum()
    inverse = np.linalg.inv(grid.affine_lps())
    for hip in (body.hip_left_lps_mm, body.hip_right_lps_mm):
        i, j, k = np.rint(inverse[:3, :3] @ hip + inverse[:3, 3]).astype(int)
        assert thin[i, j, k] and heavy[i, j, k]


def test_psoas_profile_volume_identity():
    t = np.linspace(0, 1, 100_001)
    assert psoas_profile.relative_csa(psoas_profile.T_MAX) == pytest.approx(1.0)
    assert t[np.argmax(psoas_profile.relative_csa(t))] == pytest.approx(
        psoas_profile.T_MAX, abs=1e-4
    )
    length_cm = psoas_profile.psoas_length_mm(170.0) / 10
    expected = 10.0 * length_cm * np.trapezoid(psoas_profile.relative_csa(t), t)
    assert psoas_profile.psoas_volume_ml(10.0, 170.0) == pytest.approx(expected, rel=1e-6)


SMALL = Grid((48, 40, 36), (1.5, 1.5, 2.0), (0.0, 0.0, 0.0))


def _counts(shapes, grid=SMALL, factor=2, allowed=None):
    counts = np.zeros(len(shapes) + 1, dtype=np.int64)
    for chunk in render_chunks(shapes, grid, factor, chunk_slices=5, allowed=allowed):
        counts += np.bincount(chunk.labels.ravel(), minlength=len(shapes) + 1)
    return counts


def test_rasterised_volume_converges_on_the_analytic_volume():
    cylinder = stack("c", "muscle", [10.0, 60.0], 36.0, 30.0, 12.0, 7.0, 0.4)
    sample_ml = SMALL.voxel_volume_ml / 8
    rendered = _counts([cylinder])[1] * sample_ml
    assert rendered == pytest.approx(cylinder.volume_ml(), rel=0.02)
    assert cylinder.volume_ml() == pytest.approx(np.pi * 12 * 7 * 50 / 1000, rel=1e-6)


def test_later_shapes_win_and_allowed_mask_clips():
    big = stack("big", "muscle", [10.0, 50.0], 36.0, 30.0, 12.0, 12.0)
    small = stack("small", "muscle", [20.0, 40.0], 36.0, 30.0, 5.0, 5.0)
    counts = _counts([big, small])
    alone = _counts([big])
    assert counts[1] + counts[2] == alone[1]
    assert counts[2] == _counts([small])[1]
    allowed = np.zeros(SMALL.shape, dtype=bool)
    allowed[:24] = True  # only x < 36 mm
    clipped = _counts([big], allowed=allowed)
    assert 0.4 * alone[1] < clipped[1] < 0.6 * alone[1]


def test_calibration_hits_target_under_a_shape_painted_above():
    # Tapered and tilted like a muscle: a constant cylinder on a coarse grid changes volume
    # in steps (every slice's boundary crosses a sample row at once).
    under = stack(
        "under",
        "muscle",
        [10.0, 35.0, 60.0],
        [28.0, 30.0, 33.0],
        30.0,
        [6.0, 11.0, 7.0],
        [5.0, 8.0, 6.0],
        0.3,
        dense=30,
    )
    above = stack("above", "muscle", [10.0, 60.0], 38.0, 30.0, 8.0, 8.0)
    target = 9.0
    fitted = calibrate(under, [above], target, SMALL, 2)
    assert rendered_volume_ml(fitted, [above], SMALL, 2) == pytest.approx(target, rel=0.005)
    assert rendered_volume_ml(under, [above], SMALL, 2) != pytest.approx(target, rel=0.05)
    assert _counts([fitted, above])[1] * SMALL.voxel_volume_ml / 8 == pytest.approx(
        target, rel=0.005
    )


def test_block_mean_and_upsample_are_inverse_on_constant_blocks():
    rng = np.random.default_rng(0)
    coarse = rng.random((3, 4, 5)).astype(np.float32)
    fine = upsample(coarse, 2)
    assert fine.shape == (6, 8, 10)
    np.testing.assert_allclose(block_mean(fine, 2), coarse, rtol=1e-6)
    samples = rng.random((6, 8, 10))
    np.testing.assert_allclose(
        block_mean(samples, 2), samples.reshape(3, 2, 4, 2, 5, 2).mean(axis=(1, 3, 5)), rtol=1e-5
    )
