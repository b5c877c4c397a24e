"""Training augmentation: random shifts and scalings about the crop centre."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from myoflow.segment.model.augment import (
    AffineParams,
    AugmentSettings,
    affine_matrix,
    apply_affine,
    copy_transform,
    random_affine,
)
from myoflow.segment.model.samples import Sample
from myoflow.segment.model.train import TrainSettings, make_batch

SHAPE = (33, 29, 41)  # odd sizes: the centre is a voxel centre


def blob(shape=SHAPE, centre=None, sigma=(3.0, 2.5, 3.0)) -> np.ndarray:
    """A smooth Gaussian blob (1 channel), far from the faces."""
    centre = (np.asarray(shape) - 1) / 2 if centre is None else np.asarray(centre)
    grid = np.indices(shape, dtype=float)
    d2 = sum(((grid[a] - centre[a]) / sigma[a]) ** 2 for a in range(3))
    return np.exp(-0.5 * d2)[None].astype(np.float32)


def centroid(volume: np.ndarray) -> np.ndarray:
    return np.asarray(ndimage.center_of_mass(volume))


def test_identity_leaves_arrays_unchanged():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, *SHAPE)).astype(np.float16)
    out = apply_affine(image, AffineParams())
    assert out.dtype == np.float32 and out is not image
    np.testing.assert_array_equal(out, image.astype(np.float32))
    # The resampling path itself is the identity too, not only the shortcut.
    matrix, offset = affine_matrix(SHAPE, AffineParams())
    np.testing.assert_array_equal(matrix, np.eye(3))
    np.testing.assert_allclose(offset, 0.0, atol=1e-12)
    almost = AffineParams(scale=(1.0, 1.0, 1.0 + 1e-12))
    np.testing.assert_allclose(apply_affine(image, almost), image.astype(np.float32), atol=1e-6)


@pytest.mark.parametrize("shift", [(2.0, -3.0, 5.0), (0.5, 1.25, -7.5)])
def test_a_shift_moves_the_centroid_by_the_shift(shift):
    image = blob()
    moved = apply_affine(image, AffineParams(shift_voxels=shift))
    np.testing.assert_allclose(centroid(moved[0]) - centroid(image[0]), shift, atol=1e-3)


def test_a_scale_changes_volume_by_its_product_about_the_centre():
    image = blob(sigma=(2.5, 2.5, 3.0))
    scale = (1.2, 0.8, 1.5)
    out = apply_affine(image, AffineParams(scale=scale))
    # Mass (a soft volume) and the thresholded volume both grow by 1.2 * 0.8 * 1.5 = 1.44.
    assert out.sum() / image.sum() == pytest.approx(np.prod(scale), rel=0.01)
    assert np.count_nonzero(out > 0.5) / np.count_nonzero(image > 0.5) == pytest.approx(
        np.prod(scale), rel=0.05
    )
    # Scaled about the crop centre: a centred blob stays put ...
    np.testing.assert_allclose(centroid(out[0]), centroid(image[0]), atol=1e-3)
    # ... and an off-centre one moves away from the centre by the scale.
    centre = (np.asarray(SHAPE) - 1) / 2
    off = blob(centre=centre + [4.0, -3.0, 5.0], sigma=(2.0, 2.0, 2.0))
    out = apply_affine(off, AffineParams(scale=scale))
    np.testing.assert_allclose(
        centroid(out[0]) - centre, np.array([4.0, -3.0, 5.0]) * scale, atol=0.02
    )


def test_random_transforms_stay_within_the_settings_in_mm():
    settings = AugmentSettings()
    for spacing in ((2.232, 2.232, 3.0), (4.0, 4.0, 6.0)):
        rng = np.random.default_rng(1)
        draws = [random_affine(rng, settings, spacing) for _ in range(2000)]
        shift_mm = np.array([d.shift_voxels for d in draws]) * spacing
        scale = np.array([d.scale for d in draws])
        # Grid-independent: the same mm on both grids; 6 and 24 voxels of the paper grid.
        limit = np.array([13.4, 13.4, 72.0])
        assert np.all(np.abs(shift_mm) <= limit + 1e-9)
        assert np.all(np.abs(shift_mm).max(axis=0) > 0.98 * limit)  # the range is used
        assert np.all((scale[:, :2] >= 0.75) & (scale[:, :2] <= 1.25))
        assert np.all((scale[:, 2] >= 0.5) & (scale[:, 2] <= 1.5))
        assert scale[:, 2].min() < 0.55 and scale[:, 2].max() > 1.45
        # The in-plane axes are drawn independently.
        assert abs(np.corrcoef(scale[:, 0], scale[:, 1])[0, 1]) < 0.1


def test_copy_zero_is_the_original_and_copies_are_bounded():
    settings = AugmentSettings(copies=3)
    rng = np.random.default_rng(2)
    assert copy_transform(0, rng, settings, (4.0, 4.0, 6.0)).is_identity
    assert not copy_transform(1, rng, settings, (4.0, 4.0, 6.0)).is_identity
    with pytest.raises(ValueError, match="copy must lie"):
        copy_transform(4, rng, settings, (4.0, 4.0, 6.0))
    with pytest.raises(ValueError):
        AugmentSettings(scale_out_of_plane=1.0)


def test_image_and_target_of_a_batch_move_together():
    """Each item's image and target go through one transform (the labels stay on the
    anatomy), and different copies get different transforms."""
    shape = (16, 16, 24)
    rng = np.random.default_rng(3)
    pattern = ndimage.gaussian_filter(rng.random(shape), 2.0)
    pattern = (pattern - pattern.min()) / np.ptp(pattern)
    sample = Sample(
        "P1",
        "right",
        np.stack([pattern, 1 - pattern]).astype(np.float16),
        pattern[None].astype(np.float16),
    )
    settings = TrainSettings(epochs=1, augment=AugmentSettings(copies=4))
    items = np.array([[0, c] for c in range(5)])
    images, targets = make_batch([sample], items, settings, epoch=0, spacing_mm=(4.0, 4.0, 6.0))
    assert images.shape == (5, 2, *shape) and targets.shape == (5, 1, *shape)
    np.testing.assert_array_equal(images[:, 0].numpy(), targets[:, 0].numpy())
    np.testing.assert_array_equal(images[0, 0].numpy(), pattern.astype(np.float16))
    assert all(
        not np.allclose(targets[a].numpy(), targets[b].numpy())
        for a in range(5)
        for b in range(a + 1, 5)
    )
