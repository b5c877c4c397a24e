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


@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique"])
@pytest.mark.parametrize("gap_mm", [0.02, 0.06, 0.099])
def test_a_gap_within_tolerance_is_bridged_with_no_empty_slice(gap_mm, oblique):
    """Stations a hair apart pass the gap check; a grid slice inside the gap must take a
    station's edge value, not be left at 0 (it was, while the check allowed 0.1 mm and
    coverage bridged 3 um)."""
    tilt = np.deg2rad(1e-3 if oblique else 0.0)  # oblique enough for the general path
    cos, sin = np.cos(tilt), np.sin(tilt)
    direction = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]])
    lower = slab(z_ramp, (9, 7, 12), SPACING, (-12.0, 10.0, 0.0), direction)
    # LOWER's top edge is at 57.5 mm; the upper station's bottom edge gap_mm above it.
    upper = slab(z_ramp, (9, 7, 12), SPACING, (-12.0, 10.0, 60.0 + gap_mm), direction)
    arrays, affines = [upper[0], lower[0]], [upper[1], lower[1]]
    # One grid slice in the middle of the gap.
    middle = 57.5 + gap_mm / 2
    grid = Grid((9, 7, 3), (3.0, 4.0, 3.0), (-12.0, 10.0, middle - 3.0))
    result = stitch.stitch(arrays, affines, grid)
    assert (result[1:-1, 1:-1] > 0).all()
    edge_values = {float(z_ramp(np.array([[0.0], [0.0], [z]]))[0]) for z in (55.0, 60.0 + gap_mm)}
    assert any(np.isclose(result[4, 3, 1], value, rtol=1e-3) for value in edge_values)


def test_a_gap_beyond_tolerance_is_refused_however_small():
    apart = slab(linear, (9, 7, 12), SPACING, (-12.0, 10.0, 60.0 + 1.5 * stitch.GAP_TOLERANCE_MM))
    grid = stitch.common_grid([apart[0].shape, LOWER[0].shape], [apart[1], LOWER[1]], None)
    with pytest.raises(stitch.StitchError, match="station_gap|apart"):
        stitch.stitch([apart[0], LOWER[0]], [apart[1], LOWER[1]], grid)


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


# Issue 22: a delivery whose outer stations have 4.5 mm slices (their affines giving
# 4.499999999999999 mm) put stitched slices exactly on a station's half-voxel edge, which
# float rounding decided both ways. Three stations, head to feet, as in such a delivery:
# 4.5 mm (10 slices), 3 mm (16 slices), 4.5 mm (12 slices), on in-plane UK Biobank voxels.
# Their centres span 148.5 - 6 x overlap mm, so a 3 mm grid (UK Biobank or native) sits
# 0.75 mm above the lowest centre, and every station's edges facing a neighbour fall on
# grid slices: the overlaps are ``overlap`` grid slices, edges included (1: stations whose
# edges meet on a grid slice, which rounding could leave to neither).
IN_PLANE_MM = 500.0 / 224.0
EDGE_CASE_SHAPES = ((8, 6, 10), (8, 6, 16), (8, 6, 12))  # upper, middle, lower
EDGE_CASE_SPACING_Z = (4.5, 3.0, 4.5)


def edge_case_stations(function, overlap: int, feet_first: bool, noise: int):
    """The three stations (upper first; lower first when ``feet_first``, whose slices
    also run head to feet) sampling ``function``, and their affines. ``noise`` -1 or +1
    moves every spacing by one float step down or up (4.499999999999999 or
    4.500000000000001 mm, as positions read from DICOM give), 0 leaves them exact."""
    low = -200.25  # the lower station's lowest centre; grid slices at low + 0.75 + 3 i
    grid_z = low + 0.75 + 3.0 * np.arange(60)
    lowest = (
        grid_z[35 - 2 * overlap] + 2.25,  # upper: lowest edge on slice 35 - 2 x overlap
        grid_z[18 - overlap] + 1.5,  # middle: lowest edge on slice 18 - overlap
        low,  # lower: highest edge on slice 17
    )
    stations = []
    for shape, step, z0 in zip(EDGE_CASE_SHAPES, EDGE_CASE_SPACING_Z, lowest, strict=True):
        spacing = np.array([IN_PLANE_MM, IN_PLANE_MM, step])
        if noise:
            spacing = np.nextafter(spacing, noise * np.inf)
        origin = np.array([-8.0, 5.0, z0])
        direction = np.eye(3)
        if feet_first:  # slice 0 is the highest (DICOM positions give its z exactly)
            origin[2] = z0 + step * (shape[2] - 1)
            direction[2, 2] = -1.0
        stations.append(slab(function, shape, tuple(spacing), tuple(origin), direction))
    if feet_first:
        stations.reverse()
    arrays, affines = zip(*stations, strict=True)
    return list(arrays), list(affines)


def station_edges_mm(arrays, affines) -> tuple[np.ndarray, np.ndarray]:
    """(n_stations, 2) z of each station's lower and upper half-voxel edge, and its margin."""
    ranges = [stitch.z_range_mm(a.shape, f) for a, f in zip(arrays, affines, strict=True)]
    margin = np.array([r.margin for r in ranges])
    return np.array([[r.low, r.high] for r in ranges]) + margin[:, None] * [-1, 1], margin


def z_ramp(points: np.ndarray) -> np.ndarray:
    """Linear in z only (and constant in-plane), ~350 to ~500 over the stations."""
    return 500.0 + 0.75 * points[2]


@pytest.mark.parametrize("grid_spacing", [stitch.UKBB_SPACING_MM, None], ids=["ukbb", "native"])
@pytest.mark.parametrize("noise", [-1, 1], ids=["noise_down", "noise_up"])
@pytest.mark.parametrize("feet_first", [False, True], ids=["head_first", "feet_first"])
@pytest.mark.parametrize("overlap", [1, 2, 3, 4, 5])
def test_stations_of_4_5_and_3_mm_with_float_noise(overlap, feet_first, noise, grid_spacing):
    arrays, affines = edge_case_stations(z_ramp, overlap, feet_first, noise)
    grid = stitch.common_grid([a.shape for a in arrays], affines, grid_spacing)
    z = grid.axis_mm(2)
    # The geometry of the issue: grid slices on the stations' edges facing a neighbour.
    edges, margin = station_edges_mm(arrays, affines)
    on_edge = np.abs(z[:, None, None] - edges[None]) < 1e-9
    assert on_edge.any(axis=0).sum() == 4
    assert grid.shape[2] == 50 - 2 * overlap  # the union of the stations, centre to centre

    # The same value in every station: exactly that value on every slice.
    constant = [np.full_like(a, 700.0) for a in arrays]
    np.testing.assert_allclose(stitch.stitch(constant, affines, grid), 700.0, rtol=1e-6)

    # Each station's own constant: that constant where it alone covers z, a blend of the
    # two in the overlaps; every slice covered by exactly the stations whose edges allow.
    levels = [100.0, 200.0, 300.0] if not feet_first else [300.0, 200.0, 100.0]
    separate = [np.full_like(a, level) for a, level in zip(arrays, levels, strict=True)]
    result = stitch.stitch(separate, affines, grid)
    assert np.ptp(result, axis=(0, 1)).max() < 1e-3  # the same over each slice
    profile = result[0, 0]
    inside = (z[:, None] >= edges[:, 0] - 1e-9) & (z[:, None] <= edges[:, 1] + 1e-9)
    for s, level in enumerate(levels):
        alone = inside[:, s] & (inside.sum(axis=1) == 1)
        assert alone.any()
        np.testing.assert_allclose(profile[alone], level, rtol=1e-6)
    both = inside.sum(axis=1) == 2
    assert both.sum() == 2 * overlap
    assert ((profile[both] > 100.0 - 1e-3) & (profile[both] < 300.0 + 1e-3)).all()

    # A linear ramp in z is reproduced between any station's voxel centres (edge values
    # enter with MIN_WEIGHT only); a slice in the margins alone (where edges meet) takes
    # the edge value of one of the stations there.
    result = stitch.stitch(arrays, affines, grid)
    expected = grid_values(z_ramp, grid)
    centres = (z[:, None] >= edges[:, 0] + margin - 1e-9) & (
        z[:, None] <= edges[:, 1] - margin + 1e-9
    )
    between = centres.any(axis=1)
    assert (~between).sum() == (2 if overlap == 1 else 0)
    np.testing.assert_allclose(result[..., between], expected[..., between], rtol=1e-4)
    for k in np.flatnonzero(~between):
        nearest = np.clip(z[k], edges[:, 0] + margin, edges[:, 1] - margin)[inside[k]]
        values = z_ramp(np.array([0.0, 0.0, 1.0])[:, None] * nearest)
        assert np.isclose(result[..., k, None], values, rtol=1e-6).any(axis=-1).all()

    # Removing the noise changes nothing.
    exact_arrays, exact_affines = edge_case_stations(z_ramp, overlap, feet_first, 0)
    exact_grid = stitch.common_grid([a.shape for a in exact_arrays], exact_affines, grid_spacing)
    assert exact_grid.shape == grid.shape
    exact = stitch.stitch(exact_arrays, exact_affines, exact_grid)
    assert np.abs(result - exact).max() < 1e-4 * np.abs(exact).max()


@pytest.mark.parametrize("feet_first", [False, True], ids=["head_first", "feet_first"])
def test_points_within_tolerance_of_an_edge_are_covered_and_take_the_edge_value(feet_first):
    step = np.nextafter(4.5, 0.0)  # 4.499999999999999, as such an affine gives
    direction = np.diag([1.0, 1.0, -1.0 if feet_first else 1.0])
    origin = (0.0, 0.0, 22.5 if feet_first else 0.0)  # centres 0 to 22.5 mm either way
    array, affine = slab(z_ramp, (4, 3, 6), (2.0, 2.0, step), origin, direction)
    bottom, top = (array[..., -1], array[..., 0]) if feet_first else (array[..., 0], array[..., -1])
    tolerance_mm = stitch.z_tolerance_voxels(4.5) * 4.5  # along z: half the gap tolerance
    assert tolerance_mm == pytest.approx(stitch.GAP_TOLERANCE_MM / 2)
    cases = [  # z (mm), covered, value there
        (-2.25, True, bottom),  # the half-voxel edges
        (24.75, True, top),
        (-2.25 - 0.5 * tolerance_mm, True, bottom),  # within tolerance beyond them
        (24.75 + 0.5 * tolerance_mm, True, top),
        (-2.25 - 2.0 * tolerance_mm, False, None),  # beyond it
        (24.75 + 2.0 * tolerance_mm, False, None),
    ]
    for z, covered, value in cases:
        grid = Grid((4, 3, 1), (2.0, 2.0, 3.0), (0.0, 0.0, z))
        for method in ("separable", "general"):
            values, inside = stitch.sample(array, affine, grid, method=method)
            assert np.broadcast_to(inside, grid.shape).all() == covered, (z, method)
            assert np.broadcast_to(inside, grid.shape).any() == covered, (z, method)
            if covered:
                np.testing.assert_allclose(values[..., 0], value, rtol=1e-6)
        assert stitch.coverage(array.shape, affine, grid).slices.tolist() == [covered]
