"""From noiseless water and fat to what each station's scanner reconstruction delivers.

A smooth receive-coil bias field over the whole body (a function of patient position, so
the same for all four channels and wherever stations overlap), then per station optional
fat-water swaps, two-point Dixon in-phase (W + F) and opposed-phase (|W - F|) images, and
Rician noise on every magnitude image. Because the bias is one field, the generator's
noiseless stitched water (``--noiseless``) is well defined and stitching can be checked
against it. Artefacts are drawn per participant from their own random stream and
recorded in the truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from myoflow.core.fields import smooth_field
from myoflow.synth.geometry import Grid, Station

CHANNELS = ("water", "fat", "in", "opp")
NOISE_SIGMA = 15.0  # Rician noise level; muscle water signal is ~590 (SNR ~40)
BIAS_AMPLITUDE = 0.12  # peak relative deviation of the coil sensitivity


@dataclass(frozen=True)
class ArtefactRates:
    """Probability per participant of each artefact (independent draws)."""

    swap: float = 0.02  # fat-water swap of a whole station
    partial_swap: float = 0.02  # fat-water swap of a region within one station
    missing_station: float = 0.005  # all four channels of one station absent
    missing_channel: float = 0.005  # one channel of one station absent

    @classmethod
    def none(cls) -> ArtefactRates:
        """No artefact at all: clean participants for accuracy and ingestion benches."""
        return cls(**dict.fromkeys(cls.__dataclass_fields__, 0.0))

    @classmethod
    def parse(cls, text: str) -> ArtefactRates:
        """Parse ``"swap=0.05,missing_station=0.01"`` (unnamed rates keep their defaults)."""
        values = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            if name not in cls.__dataclass_fields__:
                raise ValueError(
                    f"unknown artefact {name!r}; "
                    f"expected one of {', '.join(cls.__dataclass_fields__)}"
                )
            rate = float(value)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"artefact rate {name}={value} is not a probability")
            values[name] = rate
        return cls(**values)


@dataclass(frozen=True)
class Artefacts:
    """What is wrong with one participant's acquisition (0 / "" means nothing)."""

    swap_station: int = 0
    partial_swap_station: int = 0
    partial_swap_centre: tuple[float, float, float] = (
        0.0,
        0.0,
        0.0,
    )  # fractions of the station box
    partial_swap_radii: tuple[float, float, float] = (0.0, 0.0, 0.0)  # fractions of the station box
    missing_station: int = 0
    missing_channel: str = ""  # "<channel>@<station>", e.g. "fat@3"

    def summary(self) -> str:
        """One readable token list for tables, e.g. ``swap:3;missing_channel:fat@2``."""
        parts = []
        if self.swap_station:
            parts.append(f"swap:{self.swap_station}")
        if self.partial_swap_station:
            parts.append(f"partial_swap:{self.partial_swap_station}")
        if self.missing_station:
            parts.append(f"missing_station:{self.missing_station}")
        if self.missing_channel:
            parts.append(f"missing_channel:{self.missing_channel}")
        return ";".join(parts) or "none"

    def record(self) -> dict[str, object]:
        """Flat truth columns."""
        return {
            "artefacts": self.summary(),
            "artefact_swap_station": self.swap_station,
            "artefact_partial_swap_station": self.partial_swap_station,
            "artefact_missing_station": self.missing_station,
            "artefact_missing_channel": self.missing_channel,
        }

    def swapped_stations(self) -> set[int]:
        return {s for s in (self.swap_station, self.partial_swap_station) if s}


def sample_artefacts(rng: np.random.Generator, n_stations: int, rates: ArtefactRates) -> Artefacts:
    """Draw one participant's artefacts; every draw happens whatever the rates, so changing
    one rate never changes which station another artefact hits."""
    u = rng.random(4)
    stations = rng.permutation(np.arange(1, n_stations + 1))  # distinct stations per artefact
    centre = tuple(float(v) for v in rng.uniform(0.25, 0.75, 3))
    radii = tuple(float(v) for v in rng.uniform(0.2, 0.45, 3))
    channel = CHANNELS[int(rng.integers(len(CHANNELS)))]
    fields = asdict(Artefacts())
    if u[0] < rates.swap:
        fields["swap_station"] = int(stations[0])
    if u[1] < rates.partial_swap:
        fields.update(
            partial_swap_station=int(stations[1]),
            partial_swap_centre=centre,
            partial_swap_radii=radii,
        )
    if u[2] < rates.missing_station:
        fields["missing_station"] = int(stations[2])
    if u[3] < rates.missing_channel:
        fields["missing_channel"] = f"{channel}@{int(stations[3 % n_stations])}"
    return Artefacts(**fields)


def bias_field(
    shape: tuple[int, int, int], rng: np.random.Generator, amplitude: float = BIAS_AMPLITUDE
) -> np.ndarray:
    """A smooth multiplicative coil sensitivity over a volume (mean ~1, within
    +-``amplitude``, 12 % by default): :func:`myoflow.core.fields.smooth_field`."""
    return smooth_field(shape, rng, amplitude)


def swap_region(shape: tuple[int, int, int], centre, radii) -> np.ndarray:
    """Boolean ellipsoid (box-relative centre and radii) where a partial swap applies."""
    axes = [(np.arange(n, dtype=np.float32) + 0.5) / n for n in shape]
    d = [((a - c) / r) ** 2 for a, c, r in zip(axes, centre, radii, strict=True)]
    return (d[0][:, None, None] + d[1][None, :, None] + d[2][None, None, :]) <= 1.0


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise."""
    real = signal + rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    return np.hypot(real, imaginary).astype(np.float32)


def station_channels(
    water: np.ndarray,
    fat: np.ndarray,
    station: Station,
    artefacts: Artefacts,
    rng: np.random.Generator,
    noise_sigma: float = NOISE_SIGMA,
) -> tuple[dict[str, np.ndarray], float]:
    """The four noisy channels of one station, and the fraction of its voxels swapped.

    ``water`` and ``fat`` are the noiseless stitched volumes with the coil bias applied;
    the station is a slab of them. In-phase and opposed-phase images are swap-invariant
    (a swap only mislabels which Dixon solution is water), which is what automatic swap
    detection can use.
    """
    part = slice(station.start, station.stop)
    w = water[:, :, part]
    f = fat[:, :, part]
    swapped_fraction = 0.0
    if artefacts.swap_station == station.number:
        w, f = f, w
        swapped_fraction = 1.0
    if artefacts.partial_swap_station == station.number:
        region = swap_region(w.shape, artefacts.partial_swap_centre, artefacts.partial_swap_radii)
        w, f = np.where(region, f, w), np.where(region, w, f)
        swapped_fraction = float(region.mean())
    clean = {"water": w, "fat": f, "in": w + f, "opp": np.abs(w - f)}
    return {name: rician(clean[name], noise_sigma, rng) for name in CHANNELS}, swapped_fraction


def stitched_channels(
    water: np.ndarray,
    fat: np.ndarray,
    stations: tuple[Station, ...],
    artefacts: Artefacts,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Every station's four noisy channels, stitched by averaging where stations overlap.

    Stations are slabs of one lattice, so this is the in-memory stand-in for a delivered
    and stitched participant that QC tests and benchmarks need without writing DICOM.
    """
    total = {c: np.zeros(water.shape, dtype=np.float32) for c in CHANNELS}
    count = np.zeros(water.shape[2])
    for station in stations:
        channels, _ = station_channels(water, fat, station, artefacts, rng)
        for name in CHANNELS:
            total[name][:, :, station.start : station.stop] += channels[name]
        count[station.start : station.stop] += 1
    return {name: value / count for name, value in total.items()}


def station_grid(grid: Grid, station: Station) -> Grid:
    """The geometry of one station's series."""
    return grid.slab(station.start, station.count)
