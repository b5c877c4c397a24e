"""Stitching on small synthetic slabs whose values are known functions of position."""

from __future__ import annotations

import numpy as np
import pytest

from myoflow.ingest import stitch
from myoflow.synth.geometry import Grid


def linear(points: np.ndarray) -> np.ndarray:
    """A linear function of LPS mm (trilinear interpolation reproduces it exactly)."""
    x, y, z = points
    return 500.0 + 2.0 * x - 1.5 * y + 0.75 * z


def smooth(points: np.ndarray) -> np.ndarray:
    """A smooth, non-linear function of LPS mm (varies over ~50 mm)."""
    x, y, z = points
    return 500.0 + 100.0 * np.sin(x / 40.0) * np.cos(y / 50.0) + 80.0 * np.sin(z / 30.0)


def slab(
    function,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """An array sampling ``function`` at its voxel centres, and its LPS affine."""
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if direction is None else direction) * np.asarray(spacing)
    affine[:3, 3] = origin
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1)
    points = affine[:3, :3] @ index + affine[:3, 3:4]
    return function(points).reshape(shape).astype(np.float32), affine


def grid_values(function, grid: Grid) -> np.ndarray:
    points = np.stack(np.meshgrid(*[grid.axis_mm(a) for a in range(3)], indexing="ij"))
    return function(points.reshape(3, -1)).reshape(grid.shape)


# Two stations of 9 x 7 x 12 voxels (3 x 4 x 5 mm), overlapping by 3 slices (15 mm).
SPACING = (3.0, 4.0, 5.0)
UPPER = slab(linear, (9, 7, 12), SPACING, (-12.0, 10.0, 45.0))
LOWER = slab(linear, (9, 7, 12), SPACING, (-12.0, 10.0, 0.0))


def test_native_grid_coincides_with_the_station_voxels():
    grid = stitch.common_grid([UPPER[0].shape, LOWER[0].shape], [UPPER[1], LOWER[1]], None)
    assert grid.shape == (9, 7, 21)
    assert grid.spacing_mm == SPACING
    assert grid.origin_lps_mm == (-12.0, 10.0, 0.0)


def test_stitched_equals_the_function_on_native_and_other_grids():
    arrays, affines = [UPPER[0], LOWER[0]], [UPPER[1], LOWER[1]]
    for spacing in (None, (2.0, 2.5, 3.0), (4.5, 1.0, 7.0)):
        grid = stitch.common_grid([a.shape for a in arrays], affines, spacing)
        result = stitch.stitch(arrays, affines, grid)
        np.testing.assert_allclose(result, grid_values(linear, grid), rtol=1e-5)


def test_stitched_smooth_function_within_interpolation_error():
    arrays, affines = zip(
        slab(smooth, (40, 30, 25), (2.0, 2.0, 3.0), (-40.0, -30.0, 60.0)),
        slab(smooth, (40, 30, 25), (2.0, 2.0, 3.0), (-40.0, -30.0, 0.0)),
        strict=True,
    )
    grid = stitch.common_grid([a.shape for a in arrays], affines, (1.5, 1.7, 2.2))
    result = stitch.stitch(arrays, affines, grid)
    # Linear interpolation error: at most spacing^2 / 8 x the second derivative (< 0.2 here).
    np.testing.assert_allclose(result, grid_values(smooth, grid), atol=0.3)


def test_grid_of_another_spacing_is_centred_inside_the_stations():
    grid = stitch.common_grid(
        [UPPER[0].shape, LOWER[0].shape], [UPPER[1], LOWER[1]], (2.5, 3.0, 4.0)
    )
    # x: centres span -12..12 mm (24 mm): 9 steps of 2.5 leave 1.5 mm, split evenly.
    assert grid.shape == (10, 9, 26)
    assert grid.origin_lps_mm[0] == pytest.approx(-11.25)
    assert grid.axis_mm(0)[-1] == pytest.approx(11.25)
    assert grid.origin_lps_mm[2] == pytest.approx(0.0)  # 100 mm = 25 steps of 4 exactly
    assert grid.axis_mm(2)[-1] == pytest.approx(100.0)


def test_stations_of_different_spacing():
    # The same field of view in-plane; z centres overlap from 30 to 32 mm.
    fine = slab(linear, (13, 10, 20), (2.0, 3.0, 2.0), (-12.0, 0.0, 30.0))
    coarse = slab(linear, (9, 7, 10), (3.0, 4.5, 4.0), (-12.0, 0.0, -4.0))
    arrays, affines = [fine[0], coarse[0]], [fine[1], coarse[1]]
    grid = stitch.common_grid([a.shape for a in arrays], affines, None)
    assert grid.spacing_mm == (2.0, 3.0, 2.0)  # native: the finest along each axis
    result = stitch.stitch(arrays, affines, grid)
    np.testing.assert_allclose(result, grid_values(linear, grid), rtol=1e-5)


def test_blend_weights_sum_to_one_and_ramp_across_the_overlap():
    z = np.linspace(-10, 110, 241)
    upper, lower = stitch.ZRange(45.0, 100.0, 2.5), stitch.ZRange(0.0, 55.0, 2.5)
    weights = stitch.blend_weights(z, [upper, lower])
    covered = (z >= -2.5) & (z <= 102.5)
    np.testing.assert_allclose(weights.sum(axis=0)[covered], 1.0)
    assert not weights[:, ~covered].any()
    overlap = (z >= 45.0) & (z <= 55.0)  # from the upper's lowest to the lower's highest slice
    ramp = weights[0, overlap]
    assert ramp[0] == pytest.approx(0.0, abs=stitch.MIN_WEIGHT)
    assert ramp[-1] == pytest.approx(1.0, abs=stitch.MIN_WEIGHT)
    steps = np.diff(ramp[1:-1])
    assert steps.min() > 0
    np.testing.assert_allclose(steps, steps[0])  # linear
    np.testing.assert_allclose(weights[0, (z > 55.0) & covered], 1.0, atol=stitch.MIN_WEIGHT)
    np.testing.assert_allclose(weights[1, (z < 45.0) & covered], 1.0, atol=stitch.MIN_WEIGHT)


def test_touching_stations_hand_over_halfway():
    z = np.arange(0.0, 20.0, 0.5)
    weights = stitch.blend_weights(
        z, [stitch.ZRange(10.0, 20.0, 1.0), stitch.ZRange(0.0, 8.0, 1.0)]
    )
    np.testing.assert_allclose(weights[0], z >= 9.0, atol=stitch.MIN_WEIGHT)
    np.testing.assert_allclose(weights[1], z < 9.0, atol=stitch.MIN_WEIGHT)


def test_overlap_blends_two_stations_that_disagree_linearly():
    upper = (UPPER[0] + 100.0, UPPER[1])  # the upper station reads 100 higher
    grid = stitch.common_grid([UPPER[0].shape, LOWER[0].shape], [UPPER[1], LOWER[1]], None)
    excess = stitch.stitch([upper[0], LOWER[0]], [upper[1], LOWER[1]], grid) - grid_values(
        linear, grid
    )
    profile = excess[4, 3]
    z = grid.axis_mm(2)
    np.testing.assert_allclose(profile[z < 45], 0.0, atol=2e-3)
    np.testing.assert_allclose(profile[z > 55], 100.0, atol=2e-3)
    # Slices overlap from 45 to 55 mm: the upper station's share rises 0, 1/2, 1.
    np.testing.assert_allclose(profile[(z > 44) & (z < 56)], [0.0, 50.0, 100.0], atol=2e-3)


def test_a_gap_between_stations_is_refused():
    apart = slab(linear, (9, 7, 12), SPACING, (-12.0, 10.0, 65.0))  # 10 mm above LOWER's top
    grid = stitch.common_grid([apart[0].shape, LOWER[0].shape], [apart[1], LOWER[1]], None)
    with pytest.raises(stitch.StitchError) as info:
        stitch.stitch([apart[0], LOWER[0]], [apart[1], LOWER[1]], grid)
    assert info.value.reason == "station_gap"
    assert "5.0 mm apart" in info.value.detail  # 62.5 (upper's edge) - 57.5 (lower's edge)


def test_touching_stations_are_not_a_gap():
    touching = slab(linear, (9, 7, 12), SPACING, (-12.0, 10.0, 60.0))  # next slice up
    grid = stitch.common_grid([touching[0].shape, LOWER[0].shape], [touching[1], LOWER[1]], None)
    result = stitch.stitch([touching[0], LOWER[0]], [touching[1], LOWER[1]], grid)
    np.testing.assert_allclose(result, grid_values(linear, grid), rtol=1e-5)


def test_separable_and_general_paths_agree_for_permuted_and_flipped_axes():
    # i runs posterior->anterior, j along +x, k downwards: still axis-aligned.
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    array, affine = slab(smooth, (11, 13, 9), (2.0, 3.0, 4.0), (5.0, 20.0, 40.0), direction)
    grid = Grid((17, 12, 15), (1.9, 1.7, 2.3), (-3.0, -8.0, 7.0))  # partly outside too
    separable = stitch.sample(array, affine, grid, method="separable")
    general = stitch.sample(array, affine, grid, method="general")
    np.testing.assert_array_equal(separable[1] * np.ones(grid.shape, bool), general[1])
    assert 0 < general[1].mean() < 1
    np.testing.assert_allclose(separable[0], general[0], rtol=1e-5)


def test_oblique_stations_are_stitched_through_the_general_path():
    angle = np.radians(8.0)
    tilt = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    arrays, affines = zip(
        slab(linear, (12, 10, 12), SPACING, (-15.0, 5.0, 45.0), tilt),
        slab(linear, (12, 10, 12), SPACING, (-15.0, 5.0, 0.0), tilt),
        strict=True,
    )
    with pytest.raises(ValueError, match="axis-aligned"):
        stitch.sample(
            arrays[0], affines[0], Grid((2, 2, 2), SPACING, (0, 0, 0)), method="separable"
        )
    grid = stitch.common_grid([a.shape for a in arrays], affines, None)
    result = stitch.stitch(arrays, affines, grid)
    # Outside the tilted footprint the result is 0; between the stations' voxel
    # centres (not in the half-voxel margin, where edge values are taken) it is exact.
    points = np.stack(np.meshgrid(*[grid.axis_mm(a) for a in range(3)], indexing="ij"))
    index = np.linalg.inv(affines[1])[:3, :3] @ points.reshape(3, -1)
    index = (index + np.linalg.inv(affines[1])[:3, 3:4]).reshape(3, *grid.shape)
    between = np.all((index[:2] >= 0) & (index[:2] <= np.array([[[[11]]], [[[9]]]])), axis=0)
    outside = np.any((index[:2] < -0.5) | (index[:2] > np.array([[[[11.5]]], [[[9.5]]]])), axis=0)
    assert 0.3 < between.mean() < 0.9 and outside.any()
    assert not result[outside].any()
    np.testing.assert_allclose(result[between], grid_values(linear, grid)[between], rtol=1e-5)


def test_stations_with_different_fields_of_view_in_plane():
    wide = slab(linear, (12, 7, 12), SPACING, (-12.0, 10.0, 45.0))  # 3 more columns to +x
    arrays, affines = [wide[0], LOWER[0]], [wide[1], LOWER[1]]
    grid = stitch.common_grid([a.shape for a in arrays], affines, None)
    assert grid.shape == (12, 7, 21)
    result = stitch.stitch(arrays, affines, grid)
    expected = grid_values(linear, grid)
    # Columns only the upper station has: its value down to its lowest slice, 0 below.
    z = grid.axis_mm(2)
    np.testing.assert_allclose(result[9:, :, z >= 45], expected[9:, :, z >= 45], rtol=1e-5)
    assert not result[9:, :, z < 45].any()
    np.testing.assert_allclose(result[:9], expected[:9], rtol=1e-5)
