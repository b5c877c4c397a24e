"""Intensity augmentation (myoflow.segment.model.intensity): each transform does what it
stands for, outside the body stays 0, draws are reproducible, and training uses it only
when asked."""

from __future__ import annotations

import numpy as np
import pytest

from myoflow.segment.model.intensity import (
    ChannelLook,
    IntensitySettings,
    apply_intensity,
    random_intensity,
)
from myoflow.segment.model.samples import Sample
from myoflow.segment.model.train import TrainSettings, make_batch


def normalised_crop(seed: int = 0) -> np.ndarray:
    """Two channels of a 'body' (a box of smooth texture in 0-1) with air around it."""
    rng = np.random.default_rng(seed)
    image = np.zeros((2, 24, 20, 16), dtype=np.float32)
    i, j, k = np.meshgrid(*(np.linspace(0, 1, n) for n in (16, 12, 10)), indexing="ij")
    image[0, 4:20, 4:16, 3:13] = 0.2 + 0.6 * i * j + 0.05 * rng.random((16, 12, 10))
    image[1, 4:20, 4:16, 3:13] = 0.9 - 0.5 * k + 0.05 * rng.random((16, 12, 10))
    return image


BODY = normalised_crop()[0] != 0


def one(look: ChannelLook, seed: int = 1) -> np.ndarray:
    image = normalised_crop()
    return apply_intensity(image, [look, ChannelLook()], np.random.default_rng(seed))


def test_the_identity_look_changes_nothing():
    image = normalised_crop()
    out = apply_intensity(image, [ChannelLook(), ChannelLook()], np.random.default_rng(0))
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize(
    "look",
    [
        ChannelLook(noise_sigma=0.2),
        ChannelLook(blur_sigma_voxels=1.0),
        ChannelLook(brightness=1.2),
        ChannelLook(contrast=0.8),
        ChannelLook(zoom=0.5),
        ChannelLook(gamma=1.4),
        ChannelLook(gamma=0.7, inverted=True),
        ChannelLook(bias_seed=3, bias_amplitude=0.3),
    ],
    ids=["noise", "blur", "brightness", "contrast", "lowres", "gamma", "inverted", "bias"],
)
def test_each_transform_changes_only_its_channel_inside_the_body(look):
    image = normalised_crop()
    out = one(look)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.abs(out[0][BODY] - image[0][BODY]).mean() > 1e-3
    assert not out[0][~BODY].any()  # air stays air
    np.testing.assert_array_equal(out[1], image[1])  # the other channel keeps its look


def test_what_each_transform_does():
    image = normalised_crop()[0]
    inside = image[BODY]
    assert one(ChannelLook(brightness=1.2))[0][BODY] == pytest.approx(inside * 1.2, rel=1e-5)
    contrast = one(ChannelLook(contrast=0.5))[0][BODY]
    assert contrast.std() < 0.75 * inside.std()
    gamma = one(ChannelLook(gamma=1.5))[0][BODY]
    # retain_stats: mean and SD kept, the grey scale bent (the order of values is kept).
    assert gamma.mean() == pytest.approx(inside.mean(), abs=0.02)
    assert gamma.std() == pytest.approx(inside.std(), rel=0.05)
    assert np.corrcoef(gamma, inside)[0, 1] > 0.95 and not np.allclose(gamma, inside)
    # In-plane only: slices of constant value each keep their value in the body's middle.
    layered = np.zeros((1, 24, 20, 16), dtype=np.float32)
    layered[0, 2:22, 2:18, 3:13] = np.linspace(0.1, 0.9, 10)
    blurred = apply_intensity(
        layered, [ChannelLook(blur_sigma_voxels=1.0)], np.random.default_rng(0)
    )
    np.testing.assert_allclose(blurred[0, 12, 10, 3:13], layered[0, 12, 10, 3:13], rtol=1e-4)
    assert blurred[0, 2, 10, 8] < 0.9 * layered[0, 2, 10, 8]  # the body's edge is smoothed
    noisy = one(ChannelLook(noise_sigma=0.2))[0][BODY] - inside
    assert noisy.std() == pytest.approx(0.2, rel=0.1)
    bias = one(ChannelLook(bias_seed=3, bias_amplitude=0.3))[0][BODY] / inside
    assert 0.7 < bias.min() < bias.max() < 1.4 and bias.std() > 0.01


def test_draws_follow_the_odds_and_the_seed():
    settings = IntensitySettings(enabled=True)
    looks = [
        look
        for seed in range(400)
        for look in random_intensity(np.random.default_rng(seed), settings, 2)
    ]
    share = {
        "noise": np.mean([x.noise_sigma > 0 for x in looks]),
        "gamma": np.mean([x.gamma != 1.0 and not x.inverted for x in looks]),
        "low_resolution": np.mean([x.zoom < 1.0 for x in looks]),
        "bias_field": np.mean([x.bias_seed is not None for x in looks]),
    }
    # gamma (0.3) is drawn where the inverted gamma (0.1) is not: 0.3 * 0.9.
    expected = {"noise": 0.10, "gamma": 0.27, "low_resolution": 0.25, "bias_field": 0.30}
    for name, odds in expected.items():
        assert share[name] == pytest.approx(odds, abs=0.04), name
    again = random_intensity(np.random.default_rng(7), settings, 2)
    assert again == random_intensity(np.random.default_rng(7), settings, 2)
    none = IntensitySettings(enabled=True, **dict.fromkeys(settings.odds(), 0.0))
    for look in random_intensity(np.random.default_rng(7), none, 2):
        assert look.noise_sigma == look.blur_sigma_voxels == 0 and look.bias_seed is None
        assert look.brightness == look.contrast == look.zoom == look.gamma == 1.0
        assert not look.inverted
    with pytest.raises(ValueError, match="gamma"):
        IntensitySettings(gamma=1.5)


def test_training_batches_change_intensities_only_when_asked():
    image = normalised_crop()
    target = np.zeros((1, *image.shape[1:]), dtype=np.float32)
    target[0, 8:14, 8:12, 5:9] = 1
    samples = [Sample("p1", "left", image.astype(np.float16), target.astype(np.float16))]
    items = np.array([[0, 0], [0, 1], [0, 2], [0, 3]])
    plain = TrainSettings(epochs=1, batch_size=4)
    varied = TrainSettings(epochs=1, batch_size=4, intensity=IntensitySettings(enabled=True))
    spacing = (4.0, 4.0, 6.0)
    plain_images, plain_targets = make_batch(samples, items, plain, 0, spacing)
    varied_images, varied_targets = make_batch(samples, items, varied, 0, spacing)
    # Same geometry (same draws first) and targets; copy 0 is the original in both.
    np.testing.assert_array_equal(plain_targets.numpy(), varied_targets.numpy())
    np.testing.assert_array_equal(plain_images[0].numpy(), varied_images[0].numpy())
    changed = [
        not np.allclose(plain_images[n].numpy(), varied_images[n].numpy()) for n in (1, 2, 3)
    ]
    assert any(changed)
    assert "intensity" not in plain.fingerprint()
    assert varied.fingerprint()["intensity"]["enabled"] is True
