"""Crops around the hips: geometry, mirroring, intensity scaling and the way back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from myoflow.core.labels import LABELS
from myoflow.landmarks.record import HipLandmarks
from myoflow.segment.crop import (
    GLUTEUS_CROP,
    ILIOPSOAS_CROP,
    CropSpec,
    crop_geometry,
    crop_participant,
    inside_volume,
    normalise,
    to_crop,
    uncrop,
)
from myoflow.synth.geometry import Grid, protocol
from myoflow.synth.phenotypes import sample_cohort
from myoflow.synth.render import render_participant

SMALL = CropSpec(name="test", shape=(16, 12, 20), offset_mm=(9.0, -4.0, 15.0))
GRID = Grid((61, 47, 59), (2.232, 2.232, 3.0), (-70.3, -50.1, -90.0))  # odd sizes, model spacing
HIP = np.array([-10.4, 3.3, -1.7])  # LPS mm, off the lattice


def index_volume(shape) -> np.ndarray:
    """Each voxel holds its own index, so any resampling error shows."""
    i, j, k = np.indices(shape)
    return (i + 1000 * j + 1_000_000 * k).astype(np.float64)


def first_index(geometry, grid: Grid) -> np.ndarray:
    """Stitched voxel index of the crop's voxel (0, 0, 0)."""
    lps = grid.affine_lps()
    return np.linalg.solve(lps[:3, :3], geometry.affine_lps[:3, 3] - lps[:3, 3])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_specs_round_trip_through_json_and_suit_the_network():
    for spec in (ILIOPSOAS_CROP, GLUTEUS_CROP, SMALL):
        assert CropSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert ILIOPSOAS_CROP.shape == (96, 96, 192)  # the paper's crop
    assert ILIOPSOAS_CROP.spacing_mm == (2.232, 2.232, 3.0)
    for spec in (ILIOPSOAS_CROP, GLUTEUS_CROP):
        assert all(n % 16 == 0 for n in spec.shape)  # the V-Net halves four times


@pytest.mark.parametrize(
    "bad",
    [
        {"shape": (16, 0, 16)},
        {"spacing_mm": (1.0, -1.0, 1.0)},
        {"channels": ()},
        {"percentiles": (99, 1)},
    ],
)
def test_bad_specs_are_refused(bad):
    with pytest.raises(ValueError):
        CropSpec(**bad)
    with pytest.raises(ValueError, match="unknown crop spec keys"):
        CropSpec.from_dict({"shape": [96, 96, 192], "ofset_mm": [0, 0, 0]})


@pytest.mark.parametrize(("side", "medial"), [("right", 1.0), ("left", -1.0)])
def test_crop_centre_is_the_offset_from_the_hip_snapped_to_the_lattice(side, medial):
    geometry = crop_geometry(SMALL, HIP, side, GRID.affine_ras())
    centre = geometry.affine_lps @ np.array([*((np.array(SMALL.shape) - 1) / 2), 1.0])
    expected = HIP + np.array(SMALL.offset_mm) * np.array([medial, 1.0, 1.0])
    assert np.all(np.abs(centre[:3] - expected) <= np.array(GRID.spacing_mm) / 2 + 1e-9)
    assert np.allclose(
        geometry.affine_lps[:3, :3], np.diag(np.array(SMALL.spacing_mm) * [medial, 1, 1])
    )
    index = first_index(geometry, GRID)
    assert np.allclose(index, np.round(index), atol=1e-9)
    assert geometry.mirrored == (side == "left")


def test_equal_spacing_copies_voxels_and_mirrors_the_left_side():
    volume = index_volume(GRID.shape)
    for side in ("right", "left"):
        geometry = crop_geometry(SMALL, HIP, side, GRID.affine_ras())
        i0, j0, k0 = np.round(first_index(geometry, GRID)).astype(int)
        n0, n1, n2 = SMALL.shape
        rows = slice(i0, i0 + n0) if side == "right" else slice(i0, i0 - n0, -1)
        expected = volume[rows, j0 : j0 + n1, k0 : k0 + n2]
        for order in (0, 1):
            np.testing.assert_array_equal(
                to_crop(volume, GRID.affine_ras(), geometry, order), expected
            )


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize(
    "hip, spacing",
    [
        (HIP, (2.232, 2.232, 3.0)),  # inside, equal spacing
        (np.array([-68.0, -49.0, 80.0]), (2.232, 2.232, 3.0)),  # over two corners
        (np.array([55.5, 40.2, -88.9]), (1.7, 2.9, 4.4)),  # over others, another spacing
        (np.array([400.0, 0.0, 0.0]), (2.232, 2.232, 3.0)),  # wholly outside
    ],
)
def test_inside_volume_is_to_crop_of_ones(side, hip, spacing):
    # The reference: resampling a whole volume of ones (what crop_side did before).
    spec = CropSpec(
        name="test", shape=(16, 12, 20), offset_mm=(9.0, -4.0, 15.0), spacing_mm=spacing
    )
    geometry = crop_geometry(spec, hip, side, GRID.affine_ras())
    expected = to_crop(np.ones(GRID.shape, np.uint8), GRID.affine_ras(), geometry, 0) > 0
    inside = inside_volume(GRID.shape, GRID.affine_ras(), geometry)
    assert inside.shape == expected.shape and inside.dtype == bool
    np.testing.assert_array_equal(inside, expected)


def test_left_crop_of_the_mirrored_volume_is_the_right_crop():
    """Also on a crop grid unlike the stitched one (chosen so that no crop voxel falls
    exactly halfway between stitched voxels, where nearest neighbour has no mirror image)."""
    rng = np.random.default_rng(3)
    image = rng.random(GRID.shape).astype(np.float32)
    labels = rng.integers(0, 5, GRID.shape).astype(np.uint8)
    lps = GRID.affine_lps()
    index = np.linalg.solve(lps[:3, :3], HIP - lps[:3, 3])
    mirrored_hip = lps[:3, :3] @ (index * [-1, 1, 1] + [GRID.shape[0] - 1, 0, 0]) + lps[:3, 3]
    for spec in (
        SMALL,
        CropSpec(shape=(16, 12, 20), spacing_mm=(3.0, 2.0, 4.4), offset_mm=(9, -4, 15)),
    ):
        right = crop_geometry(spec, HIP, "right", GRID.affine_ras())
        left = crop_geometry(spec, mirrored_hip, "left", GRID.affine_ras())
        for volume, order in ((image, 1), (labels, 0)):
            np.testing.assert_allclose(
                to_crop(volume[::-1], GRID.affine_ras(), left, order),
                to_crop(volume, GRID.affine_ras(), right, order),
                rtol=1e-6,
            )


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("spacing", [(2.232, 2.232, 3.0), (4.464, 4.464, 6.0), (3.125, 3.125, 6.0)])
def test_label_round_trip_is_exact_when_the_crop_grid_is_as_fine(side, spacing):
    """Random labels (every voxel differs) survive crop -> uncrop inside the crop region."""
    grid = Grid((41, 37, 29), spacing, (-40.0 * spacing[0], -18.0 * spacing[1], -14.0 * spacing[2]))
    labels = np.random.default_rng(5).integers(1, 250, grid.shape).astype(np.uint8)
    geometry = crop_geometry(SMALL, HIP, side, grid.affine_ras())
    cropped = to_crop(labels, grid.affine_ras(), geometry, 0)
    back = uncrop(cropped, geometry, grid.shape, grid.affine_ras(), order=0)
    inside = back > 0
    np.testing.assert_array_equal(back[inside], labels[inside])
    lps = grid.affine_lps()
    index = np.indices(grid.shape).reshape(3, -1)
    crop_index = np.linalg.solve(
        geometry.affine_lps[:3, :3],
        (lps[:3, :3] @ index + lps[:3, 3:4]) - geometry.affine_lps[:3, 3:4],
    )
    within = np.all(
        (crop_index > -0.5) & (crop_index < np.array(SMALL.shape)[:, None] - 0.5), axis=0
    )
    np.testing.assert_array_equal(inside.ravel(), within)  # the whole crop region, nothing else


def test_mask_round_trip_on_a_finer_stitched_grid_keeps_dice_above_099():
    """Crop coarser than the stitched grid (NAKO 1.5625 mm): masks go linear both ways."""
    grid = Grid((131, 101, 91), (1.5625, 1.5625, 3.0), (-100.0, -80.0, -130.0))
    lps = grid.affine_lps()
    points = (lps[:3, :3] @ np.indices(grid.shape).reshape(3, -1) + lps[:3, 3:4]).reshape(
        3, *grid.shape
    )
    centres = [(-20.0, 5.0, 10.0), (25.0, -10.0, -20.0)]  # psoas-sized ellipsoids, tilted
    axes = [(22.0, 17.0, 90.0), (30.0, 20.0, 60.0)]
    spec = CropSpec(shape=(96, 80, 80), offset_mm=(0.0, 0.0, 0.0))
    geometry = crop_geometry(spec, np.array([0.3, -0.7, 1.1]), "left", grid.affine_ras())
    for centre, semi in zip(centres, axes, strict=True):
        d = points - np.array(centre)[:, None, None, None]
        u = d[0] + 0.3 * d[2]
        mask = (u / semi[0]) ** 2 + (d[1] / semi[1]) ** 2 + (d[2] / semi[2]) ** 2 <= 1.0
        probability = to_crop(mask.astype(np.float32), grid.affine_ras(), geometry, 1)
        back = uncrop(probability, geometry, grid.shape, grid.affine_ras(), order=1) > 0.5
        assert dice(mask, back) > 0.99


def test_uncrop_outside_the_volume_and_wrong_shapes():
    geometry = crop_geometry(SMALL, np.array([900.0, 0.0, 0.0]), "right", GRID.affine_ras())
    assert not uncrop(np.ones(SMALL.shape, np.uint8), geometry, GRID.shape, GRID.affine_ras()).any()
    assert not to_crop(np.ones(GRID.shape), GRID.affine_ras(), geometry, 1).any()
    with pytest.raises(ValueError, match="does not match the crop"):
        uncrop(np.ones((2, 2, 2)), geometry, GRID.shape, GRID.affine_ras())


def test_normalise_maps_percentiles_to_zero_and_one():
    image = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    inside = np.ones(image.shape, bool)
    inside[0] = False  # outside the field of view: 0, and not counted
    scaled = normalise(image, inside, (1.0, 99.0))
    low, high = np.percentile(image[inside], (1.0, 99.0))
    assert np.isclose(scaled[inside].min(), (image[inside].min() - low) / (high - low))
    assert np.isclose(np.percentile(scaled[inside], 99.0), 1.0)
    assert np.isclose(np.percentile(scaled[inside], 1.0), 0.0)
    assert not scaled[0].any()
    flat = normalise(np.full(image.shape, 7.0, np.float32), inside, (1.0, 99.0))
    assert np.isfinite(flat).all() and not flat.any()


@pytest.fixture(scope="module")
def tall_and_short():
    """Two synthetic participants (small size), 150 and 200 cm: the crop must fit both."""
    grid = protocol("ukbb", "small").grid
    rows = sample_cohort(11, 2, "ukbb").to_dict("records")
    people = []
    for row, height, body in zip(rows, (150.0, 200.0), (4, 33), strict=True):
        row.update(height_cm=height, atlas_body=body)
        people.append(render_participant(row, grid, np.random.default_rng(body)))
    return grid, people


def inside_fraction(labels, values, spec, hip, side, grid: Grid, margin_mm: float) -> float:
    """Share of ``values`` voxels in the crop at least ``margin_mm`` from its faces."""
    geometry = crop_geometry(spec, hip, side, grid.affine_ras())
    lps = grid.affine_lps()
    points = lps[:3, :3] @ np.argwhere(np.isin(labels, values)).T + lps[:3, 3:4]
    index = np.linalg.solve(geometry.affine_lps[:3, :3], points - geometry.affine_lps[:3, 3:4])
    margin = margin_mm / np.array(spec.spacing_mm)[:, None]
    ok = np.all((index >= margin) & (index <= np.array(spec.shape)[:, None] - 1 - margin), axis=0)
    return float(ok.mean())


def test_the_crops_hold_their_muscles_from_150_to_200_cm(tall_and_short):
    grid, people = tall_and_short
    glutei = ("gluteus_maximus", "gluteus_medius", "gluteus_minimus")
    outside_ilio = []
    for phantom in people:
        for side in ("left", "right"):
            hip = np.array([phantom.truth[f"hip_{side}_{a}_mm"] for a in "xyz"])
            ilio = [LABELS[f"{m}_{side}"] for m in ("psoas_major", "iliacus")]
            glut = [LABELS[f"{m}_{side}"] for m in glutei]
            assert (
                inside_fraction(phantom.labels, ilio, ILIOPSOAS_CROP, hip, side, grid, 15.0) == 1.0
            )
            assert inside_fraction(phantom.labels, glut, GLUTEUS_CROP, hip, side, grid, 15.0) == 1.0
            outside_ilio.append(
                1 - inside_fraction(phantom.labels, glut, ILIOPSOAS_CROP, hip, side, grid, 0.0)
            )
    # why a second geometry: the iliopsoas crop cuts off part of the gluteal compartment
    # (lateral of the greater trochanter; on 40 bodies, 60 % of sides, up to 36 mm)
    assert max(outside_ilio) > 0.0


def test_crop_participant_gives_normalised_mirrored_crops(tall_and_short):
    grid, people = tall_and_short
    phantom = people[0]
    hips = {
        s: np.array([phantom.truth[f"hip_{s}_{a}_mm"] for a in "xyz"]) for s in ("left", "right")
    }
    landmarks = HipLandmarks(hips["left"], hips["right"], 1.0, (20.0, 20.0))
    spec = CropSpec(shape=(48, 48, 96), spacing_mm=(4.464, 4.464, 6.0), channels=("water", "fat"))
    crops = crop_participant(
        {"water": phantom.water, "fat": phantom.fat}, grid.affine_ras(), landmarks, spec
    )
    assert set(crops) == {"left", "right"}
    for side, crop in crops.items():
        assert crop.image.shape == (2, 48, 48, 96) and crop.image.dtype == np.float32
        assert crop.geometry.mirrored == (side == "left")
        assert np.isclose(np.percentile(crop.image[0], 99.0), 1.0, atol=0.02)
    # a symmetric body gives similar crops once the left is mirrored: compare to unmirrored
    left, right = crops["left"].image[0], crops["right"].image[0]
    assert (
        np.corrcoef(left.ravel(), right.ravel())[0, 1]
        > np.corrcoef(left[::-1].ravel(), right.ravel())[0, 1]
    )
    with pytest.raises(KeyError, match="needs channel 'opp'"):
        crop_participant(
            {"water": phantom.water}, grid.affine_ras(), landmarks, CropSpec(channels=("opp",))
        )
