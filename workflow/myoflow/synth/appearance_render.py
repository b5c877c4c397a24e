"""Acquiring a randomised-appearance phantom: what its scanner and vendor do to it.

:func:`myoflow.synth.render.render_participant` with an appearance gives noiseless Dixon
maps and complex echoes on the participant's own grid (:func:`acquisition_protocol`:
the protocol resliced to the drawn slice spacing). Here they become what a delivery
holds: blurred in-plane (the complex echoes, before their magnitudes), one whole-body
coil bias, the vendor gain, and per station a gain, a bias field of its own and Rician
noise of its own level. :func:`render_appearance` does all of it in memory for training
code and tests; the cohort writer (:mod:`myoflow.synth.cohort`) uses the same steps and
writes DICOM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from myoflow.synth.appearance import ENCODINGS, MODES, Appearance, draw_appearance
from myoflow.synth.dicom_writer import PixelEncoding
from myoflow.synth.dixon_signal import GYROMAGNETIC_MHZ_PER_T, channels_from_components
from myoflow.synth.geometry import Grid, Protocol, Station, protocol, resliced
from myoflow.synth.render import Phantom, render_participant
from myoflow.synth.rng import participant_rng
from myoflow.synth.signal import CHANNELS, Artefacts, bias_field, rician, swap_region


def acquisition_protocol(name: str, size: str, appearance: Appearance) -> Protocol:
    """The protocol's stations and grid with the appearance's slice spacing, where the
    protocol allows it: never finer than its own slices (``size="small"`` has 6 mm
    slices, so small renders keep them)."""
    proto = protocol(name, size)
    slice_mm = max(appearance.slice_mm, proto.grid.spacing_mm[2])
    return resliced(proto, slice_mm)


def pixel_encoding(appearance: Appearance) -> PixelEncoding:
    """The DICOM pixel encoding of the appearance's vendor style."""
    bits, slope, _ = ENCODINGS[appearance.encoding]
    target = int(round(appearance.stored_peak)) if slope == "fit" else 4000
    return PixelEncoding(bits_stored=bits, fit_slope=slope == "fit", target_max=target)


def header_overrides(appearance: Appearance, channel: str) -> dict[str, object]:
    """Scanner tags of the drawn sequence for one channel's series."""
    seq = appearance.sequence
    te = seq.te_opp_ms if channel == "opp" else seq.te_in_ms
    return {
        "ManufacturerModelName": "Aera" if seq.field_t == 1.5 else "MAGNETOM Skyra",
        "MagneticFieldStrength": f"{seq.field_t:g}",
        "ImagingFrequency": f"{seq.field_t * GYROMAGNETIC_MHZ_PER_T:.3f}",
        "RepetitionTime": f"{seq.tr_ms:.2f}",
        "FlipAngle": f"{seq.flip_deg:.0f}",
        "EchoTime": f"{te:.2f}",
    }


def noiseless_channels(
    phantom: Phantom, appearance: Appearance, grid: Grid, bias_rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], float]:
    """Blurred, biased and scaled noiseless water, fat, in and opp; and the vendor gain.

    Encodings without a fitted slope store rounded values, so their gain puts the
    brightest noiseless voxel (at the brightest station) at the drawn stored peak.
    """
    if phantom.echoes is None:
        raise ValueError("the phantom was rendered without an appearance")
    components = {"water": phantom.water, "fat": phantom.fat, **phantom.echoes}
    sigma = appearance.blur_voxels
    if sigma > 0:
        components = {
            name: ndimage.gaussian_filter(value, (sigma, sigma, 0.0))
            for name, value in components.items()
        }
    channels = channels_from_components(components)
    bias = bias_field(grid.shape, bias_rng, appearance.bias_amplitude)
    channels = {name: value * bias for name, value in channels.items()}
    if ENCODINGS[appearance.encoding][1] == "fit":
        gain = appearance.gain
    else:
        peak = max(float(v.max()) for v in channels.values()) * max(appearance.station_gain)
        gain = appearance.stored_peak / peak
    return {name: value * np.float32(gain) for name, value in channels.items()}, float(gain)


def station_images(
    channels: Mapping[str, np.ndarray],
    station: Station,
    appearance: Appearance,
    artefacts: Artefacts,
    noise_sigma: float,
    field_rng: np.random.Generator,
    noise_rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], float]:
    """One station's four noisy channels and the fraction of it swapped.

    ``noise_sigma`` is the participant's Rician sigma before the station's own factor.
    """
    part = slice(station.start, station.stop)
    index = station.number - 1
    shape = channels["water"][:, :, part].shape
    field = appearance.station_gain[index] * bias_field(
        shape, field_rng, appearance.station_bias_amplitude
    )
    clean = {name: channels[name][:, :, part] * field for name in CHANNELS}
    swapped_fraction = 0.0
    if artefacts.swap_station == station.number:
        clean["water"], clean["fat"] = clean["fat"], clean["water"]
        swapped_fraction = 1.0
    if artefacts.partial_swap_station == station.number:
        region = swap_region(shape, artefacts.partial_swap_centre, artefacts.partial_swap_radii)
        w, f = clean["water"], clean["fat"]
        clean["water"], clean["fat"] = np.where(region, f, w), np.where(region, w, f)
        swapped_fraction = float(region.mean())
    sigma = noise_sigma * appearance.station_noise[index]
    return {name: rician(clean[name], sigma, noise_rng) for name in CHANNELS}, swapped_fraction


def noise_sigma(appearance: Appearance, targets: Mapping[str, float], gain: float) -> float:
    """Rician sigma giving the drawn SNR of the participant's noiseless muscle water."""
    return gain * appearance.components("muscle", targets)[0] / appearance.muscle_snr


@dataclass(frozen=True)
class RandomisedRender:
    """A randomised participant in memory: stitched noisy channels, labels and truth."""

    protocol: Protocol
    channels: dict[str, np.ndarray]  # water, fat, in, opp on protocol.grid, float32
    noiseless: dict[str, np.ndarray]  # the same before station fields and noise
    phantom: Phantom
    gain: float


def render_appearance(
    participant: Mapping[str, float],
    protocol_name: str,
    size: str,
    appearance: Appearance,
    rng: np.random.Generator,
    artefacts: Artefacts | None = None,
) -> RandomisedRender:
    """Render and acquire ``participant`` with ``appearance``, stitched by averaging the
    station overlaps (what training code and QC tests need without DICOM).

    ``rng`` seeds the texture, bias, station fields and noise (independent streams).
    """
    artefacts = Artefacts() if artefacts is None else artefacts
    texture, bias, fields, noise = rng.spawn(4)
    proto = acquisition_protocol(protocol_name, size, appearance)
    phantom = render_participant(participant, proto.grid, texture, appearance)
    clean, gain = noiseless_channels(phantom, appearance, proto.grid, bias)
    sigma = noise_sigma(appearance, participant, gain)
    total = {c: np.zeros(proto.grid.shape, dtype=np.float32) for c in CHANNELS}
    count = np.zeros(proto.grid.shape[2], dtype=np.float32)
    for station in proto.stations:
        images, _ = station_images(clean, station, appearance, artefacts, sigma, fields, noise)
        for name in CHANNELS:
            total[name][:, :, station.start : station.stop] += images[name]
        count[station.start : station.stop] += 1
    stitched = {name: value / count for name, value in total.items()}
    return RandomisedRender(proto, stitched, clean, phantom, gain)


def cohort_appearance(
    mode: str, seed: int, index: int, participant: Mapping[str, float], n_stations: int
) -> Appearance | None:
    """Participant ``index``'s appearance in a cohort: None for ``"standard"``, else drawn
    from its own stream (``participant_rng(seed, index, "appearance")``), so it depends
    on nothing but the seed, the index and the participant's age."""
    if mode == "standard":
        return None
    if mode != "randomised":
        raise ValueError(f"unknown appearance {mode!r}; expected one of {list(MODES)}")
    return draw_appearance(
        participant_rng(seed, index, "appearance"),
        age=float(participant["age"]),
        n_stations=n_stations,
        muscle_ff=float(participant["ff_muscle"]),
    )


def appearance_truth(
    appearance: Appearance, participant: Mapping[str, float], gain: float, grid: Grid
) -> dict[str, object]:
    """The truth columns of a randomised participant: the drawn parameters, what the
    noiseless images hold per tissue, the gain applied and the grid it was acquired on."""
    out = appearance.record()
    out["appearance_gain"] = gain
    out.update(appearance.signal_record(participant))
    out["appearance_grid_slices"] = grid.shape[2]
    out["appearance_slice_spacing_mm"] = grid.spacing_mm[2]
    return out
