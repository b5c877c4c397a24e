"""Separable linear resampling against scipy's affine_transform, which it replaces."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from myoflow.core.resample import linear_resample

SCIPY = {"constant": "grid-constant", "nearest": "nearest"}


def scipy_resample(volume, matrix, offset, shape, outside):
    return ndimage.affine_transform(
        volume, matrix, offset, output_shape=shape, order=1, mode=SCIPY[outside], prefilter=False
    )


@pytest.mark.parametrize("outside", ["constant", "nearest"])
@pytest.mark.parametrize(
    ("diagonal", "offset", "shape"),
    [
        ((1.0002, 0.9998, 1.0), (3.3, 2.7, 4.0), (20, 18, 12)),  # a crop of a larger grid
        ((-1.0, 1.0, 1.0), (28.5, -2.25, 0.5), (30, 25, 20)),  # mirrored, partly outside
        ((0.558, 0.558, 0.5), (0.6, 0.6, 0.0), (50, 40, 36)),  # coarse onto fine (growing)
        ((1.79, -1.79, 2.0), (-3.0, 26.0, -5.0), (12, 10, 8)),  # shrinking, beyond every face
    ],
)
def test_axis_aligned_maps_match_scipy(diagonal, offset, shape, outside):
    rng = np.random.default_rng(0)
    volume = rng.random((30, 25, 20)).astype(np.float32)
    ours = linear_resample(volume, np.diag(diagonal), offset, shape, outside)
    assert ours.shape == shape and ours.dtype == np.float32
    expected = scipy_resample(volume, np.diag(diagonal), offset, shape, outside)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_channels_share_the_map_and_fortran_order_is_read_right():
    rng = np.random.default_rng(1)
    channels = np.asfortranarray(rng.random((3, 16, 14, 12)).astype(np.float32))
    matrix, offset = np.diag([0.7, 1.3, -0.9]), (1.5, -0.5, 10.0)
    ours = linear_resample(channels, matrix, offset, (20, 11, 13), "nearest")
    for channel, resampled in zip(channels, ours, strict=True):
        expected = scipy_resample(channel, matrix, offset, (20, 11, 13), "nearest")
        np.testing.assert_allclose(resampled, expected, atol=1e-6)


def test_integer_shifts_copy_float64_values_exactly():
    volume = np.arange(10 * 9 * 8, dtype=np.float64).reshape(10, 9, 8) * 1e5 + 0.123
    ours = linear_resample(volume, np.eye(3), (2, 1, 3), (5, 6, 4))
    assert ours.dtype == np.float64
    np.testing.assert_array_equal(ours, volume[2:7, 1:7, 3:7])


def test_a_map_entirely_outside_gives_zeros_or_the_edge():
    volume = np.ones((6, 6, 6), np.float32) * np.arange(6)[None, None, :]
    beyond = (1.0, 1.0, 1.0), (0.0, 0.0, 20.0)
    assert not linear_resample(volume, np.diag(beyond[0]), beyond[1], (3, 3, 3)).any()
    edge = linear_resample(volume, np.diag(beyond[0]), beyond[1], (3, 3, 3), "nearest")
    assert np.all(edge == 5.0)


def test_a_rotation_goes_to_scipy():
    rng = np.random.default_rng(2)
    volume = rng.random((12, 12, 12)).astype(np.float32)
    angle = np.deg2rad(20)
    matrix = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    ours = linear_resample(volume, matrix, (2.0, -1.0, 0.5), (12, 12, 12))
    np.testing.assert_array_equal(
        ours, scipy_resample(volume, matrix, (2.0, -1.0, 0.5), (12, 12, 12), "constant")
    )
