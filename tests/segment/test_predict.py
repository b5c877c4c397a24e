"""Inference: crops -> network -> labels on the stitched grid, with fake and tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from myoflow.core.errors import ParticipantExcluded
from myoflow.core.labels import LABELS
from myoflow.landmarks.record import HipLandmarks
from myoflow.segment.crop import HIPS_COARSE_CROP, CropSpec, crop_geometry, to_crop, uncrop
from myoflow.segment.model.labelling import (
    clean_labels,
    crop_box,
    labels_from_probabilities,
    stitch_labels,
)
from myoflow.segment.model.predict import predict_probabilities, segment_participant
from myoflow.segment.model.registry import ModelConfigError, build_model
from myoflow.synth.geometry import Grid

GRID = Grid((61, 47, 59), (2.232, 2.232, 3.0), (-70.3, -50.1, -90.0))  # odd sizes
HIPS = {"left": np.array([34.6, 1.2, -2.5]), "right": np.array([-36.1, -0.4, 0.8])}  # LPS mm
LANDMARKS = HipLandmarks(HIPS["left"], HIPS["right"], 1.0, (20.0, 20.0))
# 36 x 36 x 48 mm crops centred on the hips: the two do not overlap. Percentiles 0 and 100
# keep a 0/1 mask unchanged when it is cut as an image.
SMALL = CropSpec(
    name="test",
    shape=(16, 16, 16),
    spacing_mm=GRID.spacing_mm,
    offset_mm=(0.0, 0.0, 0.0),
    channels=("water", "fat"),
    percentiles=(0.0, 100.0),
)


class ChannelsAsProbabilities(nn.Module):
    """A fake network: its first ``labels`` input channels are its output probabilities."""

    def __init__(self, labels: int) -> None:
        super().__init__()
        self.labels = labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.labels].clamp(0.0, 1.0)


class FixedMap(nn.Module):
    """A fake network that returns the same probability map (L, X, Y, Z) for every crop."""

    def __init__(self, probabilities: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("probabilities", torch.from_numpy(probabilities))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probabilities.expand(len(x), *self.probabilities.shape).clone()


def config(labels, spec: CropSpec = SMALL, width: float = 0.0625) -> dict:
    return {
        "architecture": "vnet",
        "in_channels": len(spec.channels),
        "labels": list(labels),
        "width": width,
        "crop": spec.to_dict(),
    }


def points_lps(grid: Grid) -> np.ndarray:
    """LPS mm of every voxel centre, shape (3, *grid.shape)."""
    lps = grid.affine_lps()
    index = np.indices(grid.shape).reshape(3, -1)
    return (lps[:3, :3] @ index + lps[:3, 3:4]).reshape(3, *grid.shape)


def ellipsoid(points: np.ndarray, centre, semi_axes, tilt: float = 0.0) -> np.ndarray:
    d = points - np.asarray(centre, dtype=float)[:, None, None, None]
    u = d[0] + tilt * d[2]
    return (u / semi_axes[0]) ** 2 + (d[1] / semi_axes[1]) ** 2 + (d[2] / semi_axes[2]) ** 2 <= 1


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def two_muscles(grid: Grid) -> np.ndarray:
    """psoas_major and iliacus on both sides, inside the SMALL crops, not mirror images."""
    points = points_lps(grid)
    truth = np.zeros(grid.shape, dtype=np.int16)
    for side, medial in (("left", -1.0), ("right", 1.0)):
        hip = HIPS[side]
        psoas = ellipsoid(points, hip + [5.0 * medial, 3.0, 4.0], (7.0, 6.0, 16.0), tilt=0.2)
        iliacus = ellipsoid(points, hip + [-8.0 * medial, -6.0, -9.0], (5.0, 4.0, 8.0))
        truth[psoas] = LABELS[f"psoas_major_{side}"]
        truth[iliacus & ~psoas] = LABELS[f"iliacus_{side}"]
    return truth


def test_equal_spacing_round_trip_puts_each_label_back_exactly():
    """A network that returns the crop of the truth gives the truth back, voxel for voxel,
    on both sides (the left crop is mirrored and must come back unmirrored)."""
    truth = two_muscles(GRID)
    channels = {
        # what the fake network reads as its two probabilities: the muscles of both sides
        "water": np.isin(truth, [LABELS["psoas_major_left"], LABELS["psoas_major_right"]]),
        "fat": np.isin(truth, [LABELS["iliacus_left"], LABELS["iliacus_right"]]),
    }
    channels = {name: mask.astype(np.float32) for name, mask in channels.items()}
    segmentation = segment_participant(
        ChannelsAsProbabilities(2),
        config(["psoas_major", "iliacus"]),
        channels,
        GRID.affine_ras(),
        LANDMARKS,
    )
    assert segmentation.labels.dtype == np.int16
    np.testing.assert_array_equal(segmentation.labels, truth)
    assert set(segmentation.seconds) == {"crop", "infer", "uncrop", "clean"}
    assert segmentation.probabilities_max.shape == GRID.shape
    assert np.all((segmentation.probabilities_max >= 0.5) == (truth > 0))


def test_crop_boxes_are_the_voxels_the_crop_covers_clipped_to_the_volume():
    for side in ("left", "right"):
        geometry = crop_geometry(SMALL, HIPS[side], side, GRID.affine_ras())
        covered = uncrop(np.ones(SMALL.shape, np.uint8), geometry, GRID.shape, GRID.affine_ras())
        box = crop_box(geometry, GRID.shape, GRID.affine_ras())
        expected = np.zeros(GRID.shape, bool)
        expected[tuple(slice(a, b) for a, b in box)] = True
        np.testing.assert_array_equal(covered > 0, expected)
        assert all(b - a == 16 for a, b in box)  # equal spacing: the crop's own size
    # a crop hanging over the volume's edge is clipped, and one off the volume is empty
    geometry = crop_geometry(SMALL, np.array([-75.0, 0.0, 0.0]), "right", GRID.affine_ras())
    assert crop_box(geometry, GRID.shape, GRID.affine_ras())[0] == (0, 6)
    far = crop_geometry(SMALL, np.array([-900.0, 0.0, 0.0]), "right", GRID.affine_ras())
    box = crop_box(far, GRID.shape, GRID.affine_ras())
    assert box[0][0] == box[0][1]


def test_sides_and_mirroring_give_the_right_label_values():
    """One fixed map for both crops, a blob in the crop's medial, posterior, upper corner:
    it must land medial, posterior and above each hip, with that side's label value."""
    probability = np.zeros((2, *SMALL.shape), np.float32)
    probability[1, 10:15, 10:15, 10:15] = 0.9  # channel 1: iliacus
    segmentation = segment_participant(
        FixedMap(probability),
        config(["psoas_major", "iliacus"]),
        {"water": np.zeros(GRID.shape, np.float32), "fat": np.zeros(GRID.shape, np.float32)},
        GRID.affine_ras(),
        LANDMARKS,
    )
    points = points_lps(GRID)
    assert set(np.unique(segmentation.labels)) == {
        0,
        LABELS["iliacus_left"],
        LABELS["iliacus_right"],
    }
    for side, medial in (("left", -1.0), ("right", 1.0)):
        mask = segmentation.labels == LABELS[f"iliacus_{side}"]
        assert np.count_nonzero(mask) == 125
        centre = points[:, mask].mean(axis=1)
        # the blob's centre is 4.5 voxels from the crop's centre along each axis: medial
        # (towards x = 0 from either hip), posterior (+y in LPS) and superior; the crop
        # is snapped to the stitched lattice, by up to half a voxel
        expected = 4.5 * np.array(GRID.spacing_mm) * [medial, 1.0, 1.0]
        assert np.all(np.abs(centre - HIPS[side] - expected) <= np.array(GRID.spacing_mm) / 2)


def test_coarse_crop_round_trip_keeps_dice_above_097():
    """The shipped coarse crop (4 x 4 x 6 mm) on the UK Biobank grid: probabilities that are
    the linear crop of a psoas-sized mask come back with Dice > 0.97."""
    grid = Grid((96, 80, 120), (2.232, 2.232, 3.0), (-107.0, -90.0, -180.0))
    points = points_lps(grid)
    hips = {"left": np.array([88.0, 5.0, -120.0]), "right": np.array([-86.0, 3.0, -122.0])}
    masks = {
        "left": ellipsoid(points, (45.0, 25.0, -20.0), (22.0, 17.0, 90.0), tilt=-0.3),
        "right": ellipsoid(points, (-47.0, 30.0, -15.0), (20.0, 18.0, 85.0), tilt=0.3),
    }
    geometries = {s: crop_geometry(HIPS_COARSE_CROP, hips[s], s, grid.affine_ras()) for s in hips}
    probabilities = {
        s: to_crop(masks[s].astype(np.float32), grid.affine_ras(), geometries[s], 1)[None]
        for s in hips
    }
    labels = labels_from_probabilities(
        probabilities, geometries, ["psoas_major"], grid.shape, grid.affine_ras()
    )
    for side in ("left", "right"):
        assert dice(labels == LABELS[f"psoas_major_{side}"], masks[side]) > 0.97


def test_resampling_only_above_threshold_blocks_is_exact():
    """stitch_labels resamples each label only around crop voxels >= 0.5: the labels must
    equal those of resampling every label's whole crop (smooth random maps, coarse crop)."""
    rng = np.random.default_rng(7)
    spec = CropSpec(shape=(16, 16, 16), spacing_mm=(4.0, 4.0, 6.0), offset_mm=(0.0, 0.0, 0.0))
    geometries = {s: crop_geometry(spec, HIPS[s], s, GRID.affine_ras()) for s in HIPS}
    names = ["psoas_major", "iliacus", "gluteus_medius"]
    probabilities = {}
    for side in HIPS:
        noise = ndimage.gaussian_filter(rng.random((3, *spec.shape)), (0, 1.5, 1.5, 1.5))
        low, high = noise.min(), noise.max()
        probabilities[side] = ((noise - low) / (high - low)).astype(np.float32)
    labels, best = stitch_labels(probabilities, geometries, names, GRID.shape, GRID.affine_ras())
    full = np.zeros((2 * len(names), *GRID.shape), np.float32)
    values = []
    for s, side in enumerate(HIPS):
        for n, name in enumerate(names):
            full[s * len(names) + n] = uncrop(
                probabilities[side][n], geometries[side], GRID.shape, GRID.affine_ras(), order=1
            )
            values.append(LABELS[f"{name}_{side}"])
    expected = np.where(full.max(axis=0) >= 0.5, np.array(values)[full.argmax(axis=0)], 0)
    assert np.count_nonzero(expected) > 100  # the test has something to compare
    np.testing.assert_array_equal(labels, expected)
    # the block's origin differs from the crop's: the same values up to float rounding
    np.testing.assert_allclose(best, np.where(expected > 0, full.max(axis=0), 0), atol=1e-6)


def test_clean_drops_small_26_islands_keeps_large_parts_and_fills_3d_holes_only():
    labels = np.zeros((20, 20, 20), np.int16)
    labels[2:9, 2:9, 2:9] = 1  # a cube with a cavity: 342 voxels
    labels[5, 5, 5] = 0
    labels[9, 9, 9] = 1  # touches the cube at a corner: 26-connected, kept
    labels[15:17, 15:17, 15:17] = 1  # a separate island of 8 voxels (2 %): removed
    labels[2:9, 12:18, 2:3] = 1  # a separate part of 42 voxels (12 %): kept
    labels[12:18, 2:8, 2:8] = 2  # a tube open at both ends (a hole in every slice)
    labels[14:16, 4:6, 2:8] = 0
    labels[13:17, 3:7, 10:16] = 3  # a shell around a voxel of label 4: not filled over
    labels[14:16, 4:6, 11:15] = 0
    labels[14, 4, 12] = 4
    cleaned = clean_labels(labels)
    assert cleaned[5, 5, 5] == 1 and cleaned[9, 9, 9] == 1
    assert not cleaned[15:17, 15:17, 15:17].any()
    assert (cleaned[2:9, 12:18, 2:3] == 1).all()
    assert not cleaned[14:16, 4:6, 2:8].any()  # open in 3D: stays background
    assert cleaned[14, 4, 12] == 4 and cleaned[15, 5, 13] == 3
    assert labels[5, 5, 5] == 0  # the input is not changed


def test_cpu_inference_is_deterministic_and_batch_shaped():
    torch.manual_seed(0)
    model = build_model(config(["psoas_major", "iliacus", "gluteus_maximus"])).eval()
    images = np.random.default_rng(1).random((3, 2, 16, 16, 16)).astype(np.float32)
    first = predict_probabilities(model, images, "cpu", batch_size=2)
    second = predict_probabilities(model, images, "cpu", batch_size=2)
    assert first.shape == (3, 3, 16, 16, 16) and first.dtype == np.float32
    assert first.tobytes() == second.tobytes()
    assert np.all((first >= 0) & (first <= 1)) and first.std() > 0
    # batches are independent: the last crop alone gives what it gave in a batch of one
    alone = predict_probabilities(model, images[2:], "cpu", batch_size=1)
    np.testing.assert_allclose(alone[0], first[2], atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        predict_probabilities(model, images, "cpu", batch_size=0)


def test_labels_must_be_muscles_and_hips_must_be_on_the_image():
    channels = {"water": np.zeros(GRID.shape, np.float32), "fat": np.zeros(GRID.shape, np.float32)}
    with pytest.raises(ModelConfigError, match="not muscles"):
        segment_participant(
            ChannelsAsProbabilities(1),
            config(["iliopsoas"]),
            channels,
            GRID.affine_ras(),
            LANDMARKS,
        )
    far = HipLandmarks(np.array([900.0, 0, 0]), HIPS["right"], 1.0, (20.0, 20.0))
    with pytest.raises(ParticipantExcluded) as excluded:
        segment_participant(
            ChannelsAsProbabilities(1), config(["psoas_major"]), channels, GRID.affine_ras(), far
        )
    assert excluded.value.reason == "crop_outside_volume"
