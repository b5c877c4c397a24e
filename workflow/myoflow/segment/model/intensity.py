"""Training augmentation of intensities: what other scanners and sequences change.

The spatial augmentation (:mod:`myoflow.segment.model.augment`) moves anatomy; this one
changes how the anatomy looks, so that the network cannot key on one generator's
contrast. The transforms and their odds follow nnU-Net's default training pipeline
(Isensee et al., Nat Methods 2021; ``nnunetv2`` ``get_training_transforms``), applied to
the crop after its percentile normalisation (:func:`myoflow.segment.crop.normalise`, which
maps each channel's 1st-99th percentile inside the body to 0-1), each channel drawn on its
own because vendors scale water and fat independently:

=================  =====  ===================================================
transform          odds   what it stands for
=================  =====  ===================================================
Gaussian noise     0.10   lower SNR (variance up to 0.1 of the 0-1 range)
Gaussian blur      0.20   in-plane smoothing, reconstruction filters (0.5-1 voxel)
brightness         0.15   a gain the percentile normalisation left (x 0.75-1.25)
contrast           0.15   tissue contrast about the mean (x 0.75-1.25, range kept)
low resolution     0.25   thicker slices / coarser matrix (zoom 0.5-1, nearest down,
                          cubic up)
gamma              0.30   T1/T2* weighting bends the grey scale (0.7-1.5)
inverted gamma     0.10   the same on the inverted image
bias field         0.30   coil sensitivity left after normalisation (x e^+-0.1-0.3)
=================  =====  ===================================================

Layered as the spatial augmentation: :func:`random_intensity` draws parameters from a
generator, :func:`apply_intensity` applies them deterministically; the body mask (voxels
that are not exactly 0 after normalisation) is kept, so what lies outside the field of
view stays 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from myoflow.core.fields import smooth_field


@dataclass(frozen=True)
class IntensitySettings:
    """Whether intensity augmentation runs, and each transform's odds per sample."""

    enabled: bool = False
    noise: float = 0.10
    blur: float = 0.20
    brightness: float = 0.15
    contrast: float = 0.15
    low_resolution: float = 0.25
    gamma: float = 0.30
    inverted_gamma: float = 0.10
    bias_field: float = 0.30

    def __post_init__(self) -> None:
        for name, odds in self.odds().items():
            if not 0.0 <= odds <= 1.0:
                raise ValueError(f"intensity odds {name} must lie in [0, 1], got {odds}")

    def odds(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "enabled"}

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self)


@dataclass(frozen=True)
class ChannelLook:
    """The drawn look of one channel; None (or 1) where a transform was not drawn."""

    noise_sigma: float = 0.0
    blur_sigma_voxels: float = 0.0
    brightness: float = 1.0
    contrast: float = 1.0
    zoom: float = 1.0
    gamma: float = 1.0
    inverted: bool = False
    bias_seed: int | None = None  # of the coil field's polynomial (core.fields.smooth_field)
    bias_amplitude: float = 0.0


def random_intensity(
    rng: np.random.Generator, settings: IntensitySettings, channels: int
) -> list[ChannelLook]:
    """One look per channel (all draws happen, so one odds' change moves no other draw)."""
    looks = []
    for _ in range(channels):
        u = rng.random(8)
        noise = rng.uniform(0.0, 0.1) ** 0.5
        blur = rng.uniform(0.5, 1.0)
        brightness = rng.uniform(0.75, 1.25)
        contrast = rng.uniform(0.75, 1.25)
        zoom = rng.uniform(0.5, 1.0)
        gamma = rng.uniform(0.7, 1.5)
        inverted_gamma = rng.uniform(0.7, 1.5)
        bias_seed = int(rng.integers(2**31))
        amplitude = float(rng.uniform(0.1, 0.3))
        odds = settings.odds()
        inverted = bool(u[6] < odds["inverted_gamma"])  # wins over the plain gamma
        looks.append(
            ChannelLook(
                noise_sigma=float(noise) if u[0] < odds["noise"] else 0.0,
                blur_sigma_voxels=float(blur) if u[1] < odds["blur"] else 0.0,
                brightness=float(brightness) if u[2] < odds["brightness"] else 1.0,
                contrast=float(contrast) if u[3] < odds["contrast"] else 1.0,
                zoom=float(zoom) if u[4] < odds["low_resolution"] else 1.0,
                gamma=float(inverted_gamma if inverted else gamma if u[5] < odds["gamma"] else 1.0),
                inverted=inverted,
                bias_seed=bias_seed if u[7] < odds["bias_field"] else None,
                bias_amplitude=amplitude,
            )
        )
    return looks


def apply_intensity(
    image: np.ndarray, looks: Sequence[ChannelLook], rng: np.random.Generator
) -> np.ndarray:
    """``image`` (C, X, Y, Z), each channel with its look; float32, 0 outside the body.

    ``rng`` draws the noise itself (its field, not its level, which the look holds).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 4 or image.shape[0] != len(looks):
        raise ValueError(f"expected (channels={len(looks)}, X, Y, Z), got {image.shape}")
    out = np.empty_like(image)
    for c, look in enumerate(looks):
        out[c] = _one_channel(image[c], look, rng)
    return out


def _one_channel(x: np.ndarray, look: ChannelLook, rng: np.random.Generator) -> np.ndarray:
    inside = x != 0
    x = x.copy()
    if look.noise_sigma > 0:
        x = x + rng.normal(0.0, look.noise_sigma, x.shape).astype(np.float32)
    if look.blur_sigma_voxels > 0:
        # In-plane only: slices are what differs most between scanners, and low resolution
        # below covers the slice direction.
        s = look.blur_sigma_voxels
        x = ndimage.gaussian_filter(x, (s, s, 0.0))
    if look.brightness != 1.0:
        x = x * np.float32(look.brightness)
    if look.contrast != 1.0:
        body = x[inside] if inside.any() else x
        mean, low, high = float(body.mean()), float(body.min()), float(body.max())
        x = np.clip((x - mean) * np.float32(look.contrast) + np.float32(mean), low, high)
    if look.zoom < 1.0:
        x = _low_resolution(x, look.zoom)
    if look.gamma != 1.0:
        x = _gamma(x, look.gamma, look.inverted, inside if inside.any() else None)
    if look.bias_seed is not None:
        x = x * smooth_field(x.shape, np.random.default_rng(look.bias_seed), look.bias_amplitude)
    return np.where(inside, x, 0.0).astype(np.float32)


def _low_resolution(x: np.ndarray, zoom: float) -> np.ndarray:
    """Down by ``zoom`` (nearest), back up to the shape (cubic), as nnU-Net simulates it."""
    small = np.maximum(np.round(np.asarray(x.shape) * zoom).astype(int), 1)
    down = ndimage.zoom(x, small / np.asarray(x.shape), order=0, grid_mode=True, mode="nearest")
    up = ndimage.zoom(
        down, np.asarray(x.shape) / np.asarray(down.shape), order=3, grid_mode=True, mode="nearest"
    )
    return up[: x.shape[0], : x.shape[1], : x.shape[2]].astype(np.float32)


def _gamma(x: np.ndarray, gamma: float, inverted: bool, body: np.ndarray | None) -> np.ndarray:
    """x ** gamma on the body's range mapped to 0-1, the body's mean and SD kept (nnU-Net's
    ``retain_stats``), on the inverted image if ``inverted``. Air is left out of the
    statistics: it is reset to 0 afterwards."""
    sign = -1.0 if inverted else 1.0
    y = sign * x
    values = y if body is None else y[body]
    mean, sd = float(values.mean()), float(values.std())
    low, high = float(values.min()), float(values.max())
    span = high - low if high > low else 1.0
    y = np.clip((y - low) / span, 0.0, None) ** gamma * span + low
    bent = y if body is None else y[body]
    new_sd = float(bent.std())
    if new_sd > 0:
        y = (y - float(bent.mean())) / new_sd * sd + mean
    return (sign * y).astype(np.float32)
