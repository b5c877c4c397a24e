"""Randomised appearance: how one participant's Dixon images look, drawn from a seed.

The standard renderer gives every participant the same tissue signals, one coil bias
amplitude, one noise level and one encoding, so a stage tuned on it can lean on fixed
contrasts (femoral-head marrow 1.45 x muscle in in-phase). A randomised appearance
draws, per participant, everything a different scanner, protocol, vendor or body would
change, within physically sensible ranges (docs/appearance.md gives them and why):

* the sequence: field strength (1.5 or 3 T), its two echo times, TR and flip angle, so
  T1 weighting ranges from nearly proton-density to strongly T1-weighted;
* per tissue class: proton density, fat fraction (marrow's rising with age, femoral
  marrow fattier than axial), T1 of water and fat, T2*; the signal model is
  :mod:`myoflow.synth.dixon_signal`;
* the acquisition: slice spacing 3-6 mm, in-plane blur, a whole-body coil bias and a
  bias, gain and noise level per station;
* the delivery: a vendor gain and one of :data:`ENCODINGS` (bits stored, rescale slope);
* the target muscles' shapes (:mod:`myoflow.synth.shape_variation`).

:func:`draw_appearance` is pure (a generator in, parameters out); rendering with them is
:func:`myoflow.synth.render.render_participant` (``appearance=``) and
:func:`myoflow.synth.appearance_render.render_appearance` for training code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from myoflow.synth.dixon_signal import (
    COMPONENTS,
    Relaxation,
    Sequence,
    steady_state,
    tissue_components,
)
from myoflow.synth.shape_variation import ShapeVariation, draw_shape_variation
from myoflow.synth.tissues import AMPLITUDE, TARGET_MUSCLES

MODES = ("standard", "randomised")

ECHO_TIMES_MS = {1.5: (2.39, 4.77), 3.0: (1.23, 2.46)}
"""(opposed, in-phase) echo times: UK Biobank 1.5 T (West et al. 2016) and NAKO 3 T."""

ECHO_JITTER = 0.04
"""Relative spread of the echo times around a field's nominal pair (other vendors' pairs)."""

TR_MS = {1.5: (5.5, 8.0), 3.0: (3.8, 6.0)}
FLIP_DEG = (3.0, 14.0)

T1_MS = {
    # (range at 1.5 T, range at 3 T) of the water pool; wider than the literature values.
    "muscle": ((850.0, 1250.0), (1150.0, 1650.0)),
    "fat": ((600.0, 1200.0), (800.0, 1500.0)),  # the little water of adipose tissue
    "marrow": ((450.0, 950.0), (550.0, 1150.0)),
    "organ": ((500.0, 1300.0), (700.0, 1700.0)),
    "heart": ((900.0, 1400.0), (1250.0, 1900.0)),
    "disc": ((800.0, 1400.0), (1000.0, 1700.0)),
    "lung": ((900.0, 1400.0), (1100.0, 1700.0)),
    "bone": ((150.0, 400.0), (200.0, 500.0)),
}
T1_FAT_MS = ((220.0, 400.0), (280.0, 460.0))
T2STAR_MS = {
    "muscle": ((18.0, 40.0), (12.0, 32.0)),
    "fat": ((15.0, 40.0), (10.0, 30.0)),
    "marrow": ((5.0, 25.0), (3.0, 16.0)),  # trabecular bone shortens it
    "organ": ((15.0, 45.0), (10.0, 35.0)),
    "heart": ((20.0, 45.0), (15.0, 35.0)),
    "disc": ((25.0, 60.0), (18.0, 45.0)),
    "lung": ((1.0, 3.0), (0.5, 1.5)),
    "bone": ((0.5, 2.0), (0.3, 1.2)),
}
DENSITY_LOG_SD = 0.12
"""Log-scale spread of each tissue's proton density around the standard amplitude."""

CLASS_OF_TISSUE = {
    "muscle": "muscle",
    "fat": "fat",
    "marrow": "marrow",
    "marrow_femoral": "marrow",
    "bone": "bone",
    "disc": "disc",
    "organ": "organ",
    "visceral": "organ",
    "liver": "organ",
    "heart": "heart",
    "lung": "lung",
}
"""Tissue -> relaxation class (T1/T2* ranges are per class, densities per tissue)."""

FAT_FRACTION_RANGE = {
    "fat": (0.82, 0.97),
    "bone": (0.15, 0.50),
    "disc": (0.0, 0.05),
    "organ": (0.0, 0.12),
    "visceral": (0.0, 0.12),
    "liver": (0.0, 0.25),  # up to steatosis
    "heart": (0.0, 0.05),
    "lung": (0.0, 0.15),
}

MARROW_FF_AT_50 = (0.38, 0.62)
MARROW_FF_PER_YEAR = (0.002, 0.006)
MARROW_FF_SD = 0.05
MARROW_FF_LIMITS = (0.20, 0.92)
FEMORAL_MARROW_EXTRA = (0.12, 0.35)
FEMORAL_MARROW_LIMITS = (0.45, 0.97)

MUSCLE_SNR = (12.0, 80.0)
"""Noiseless muscle water signal over the Rician sigma (standard: about 40)."""

STATION_NOISE = (0.75, 1.35)
STATION_GAIN = (0.85, 1.15)
BIAS_AMPLITUDE = (0.0, 0.35)
STATION_BIAS_AMPLITUDE = (0.0, 0.15)
BLUR_VOXELS = (0.0, 1.0)
"""In-plane Gaussian sigma of the blur, in voxels of the in-plane grid."""

SLICE_MM = (3.0, 6.0)
"""Slice spacing at full size (``size="small"`` doubles every spacing)."""

GAIN = (0.1, 10.0)
"""Vendor gain (log-uniform) for encodings whose rescale slope absorbs the scale."""

ENCODINGS = {
    # name: (bits stored, rescale slope: "fit" per series or "1", stored peak range)
    "siemens12": (12, "fit", (4000, 4000)),
    "unscaled12": (12, "1", (900, 3800)),
    "philips16": (16, "fit", (2000, 60000)),
    "ge16": (16, "1", (1500, 32000)),
}


@dataclass(frozen=True)
class Appearance:
    """One participant's drawn appearance (all that a randomised render needs)."""

    sequence: Sequence
    tissues: dict[str, Relaxation]
    muscle_relaxation: Relaxation  # target and other muscle; its fat fraction is the target's
    muscle_density_scale: float
    muscle_snr: float
    station_noise: tuple[float, ...]
    station_gain: tuple[float, ...]
    bias_amplitude: float
    station_bias_amplitude: float
    blur_voxels: float
    slice_mm: float
    gain: float
    encoding: str
    stored_peak: float
    shape: ShapeVariation = field(default_factory=ShapeVariation)

    def record(self) -> dict[str, object]:
        """Flat ``appearance_*`` truth columns, so benches can stratify by them."""
        seq = self.sequence
        out: dict[str, object] = {
            "appearance": "randomised",
            "appearance_field_t": seq.field_t,
            "appearance_tr_ms": seq.tr_ms,
            "appearance_flip_deg": seq.flip_deg,
            "appearance_te_opp_ms": seq.te_opp_ms,
            "appearance_te_in_ms": seq.te_in_ms,
            "appearance_t1_muscle_ms": self.muscle_relaxation.t1_water_ms,
            "appearance_t2star_muscle_ms": self.muscle_relaxation.t2star_ms,
            "appearance_muscle_density": self.muscle_density_scale,
        }
        for name, tissue in self.tissues.items():
            out[f"appearance_{name}_density"] = tissue.density
            out[f"appearance_{name}_pdff"] = tissue.fat_fraction
            out[f"appearance_{name}_t1_water_ms"] = tissue.t1_water_ms
            out[f"appearance_{name}_t2star_ms"] = tissue.t2star_ms
        out["appearance_t1_fat_ms"] = self.muscle_relaxation.t1_fat_ms
        out.update(
            {
                "appearance_muscle_snr": self.muscle_snr,
                "appearance_station_noise": _join(self.station_noise),
                "appearance_station_gain": _join(self.station_gain),
                "appearance_bias_amplitude": self.bias_amplitude,
                "appearance_station_bias_amplitude": self.station_bias_amplitude,
                "appearance_blur_voxels": self.blur_voxels,
                "appearance_slice_mm": self.slice_mm,
                "appearance_gain": self.gain,
                "appearance_encoding": self.encoding,
                "appearance_stored_peak": self.stored_peak,
            }
        )
        out.update(self.shape.record())
        return out

    def relaxation(self, tissue: str, fat_fraction: float | None = None) -> Relaxation:
        """The relaxation of ``tissue``; muscle tissues take ``fat_fraction`` (their own)."""
        if tissue == "muscle":
            base = self.muscle_relaxation
            phi = base.fat_fraction if fat_fraction is None else fat_fraction
            return Relaxation(base.density, phi, base.t1_water_ms, base.t1_fat_ms, base.t2star_ms)
        return self.tissues[tissue]

    @property
    def signal_scale(self) -> float:
        """Divides every component so that standard muscle water keeps its usual level."""
        muscle, seq = self.muscle_relaxation, self.sequence
        mean_te = 0.5 * (seq.te_in_ms + seq.te_opp_ms)
        return float(steady_state(muscle.t1_water_ms, seq) * np.exp(-mean_te / muscle.t2star_ms))

    def components(self, tissue: str, targets: Mapping[str, float]) -> tuple[float, ...]:
        """The :data:`~myoflow.synth.dixon_signal.COMPONENTS` of ``tissue`` for a
        participant's ``targets``: target muscles (``<muscle>_<side>``) take ``ff_<muscle>``,
        other muscle ``ff_muscle``; "air" is nothing."""
        if tissue == "air":
            return (0.0,) * len(COMPONENTS)
        muscle = tissue.rsplit("_", 1)[0] if tissue.endswith(("_left", "_right")) else tissue
        if muscle in TARGET_MUSCLES:
            relaxation = self.relaxation("muscle", float(targets[f"ff_{muscle}"]))
        elif tissue == "muscle":
            relaxation = self.relaxation("muscle", float(targets["ff_muscle"]))
        elif tissue in self.tissues:
            relaxation = self.tissues[tissue]
        else:
            raise KeyError(f"unknown tissue {tissue!r}")
        scale = self.signal_scale
        return tuple(v / scale for v in tissue_components(relaxation, self.sequence))

    def signal_record(self, targets: Mapping[str, float]) -> dict[str, float]:
        """What the noiseless images hold per tissue: the signal fat fraction of the Dixon
        maps and in-phase over muscle, for target muscles, marrow and fat."""
        muscle_in = float(np.hypot(*self.components("muscle", targets)[2:4]))
        out: dict[str, float] = {}
        names = [*TARGET_MUSCLES, "muscle", "marrow", "marrow_femoral", "fat"]
        for name in names:
            tissue = f"{name}_left" if name in TARGET_MUSCLES else name
            water, fat, in_re, in_im, _, _ = self.components(tissue, targets)
            out[f"appearance_signal_ff_{name}"] = fat / (water + fat)
            out[f"appearance_in_ratio_{name}"] = float(np.hypot(in_re, in_im)) / muscle_in
        return out


def _join(values: tuple[float, ...]) -> str:
    return ";".join(f"{v:.4g}" for v in values)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def draw_sequence(rng: np.random.Generator) -> Sequence:
    """Field strength, echo times, TR and flip angle of a two-point Dixon protocol."""
    field_t = 1.5 if rng.random() < 0.5 else 3.0
    te_opp, te_in = ECHO_TIMES_MS[field_t]
    jitter = 1.0 + ECHO_JITTER * rng.uniform(-1.0, 1.0)
    return Sequence(
        field_t=field_t,
        tr_ms=_uniform(rng, TR_MS[field_t]),
        flip_deg=_uniform(rng, FLIP_DEG),
        te_opp_ms=te_opp * jitter,
        te_in_ms=te_in * jitter,
    )


def marrow_fat_fractions(rng: np.random.Generator, age: float) -> tuple[float, float]:
    """(axial, femoral) marrow fat fraction: rising with age, femoral marrow fattier."""
    axial = (
        _uniform(rng, MARROW_FF_AT_50)
        + _uniform(rng, MARROW_FF_PER_YEAR) * (age - 50.0)
        + MARROW_FF_SD * float(rng.standard_normal())
    )
    axial = float(np.clip(axial, *MARROW_FF_LIMITS))
    femoral = float(np.clip(axial + _uniform(rng, FEMORAL_MARROW_EXTRA), *FEMORAL_MARROW_LIMITS))
    return axial, femoral


def draw_appearance(
    rng: np.random.Generator, *, age: float, n_stations: int, muscle_ff: float = 0.05
) -> Appearance:
    """Draw one participant's randomised appearance (pure: same generator state, same draw).

    Args:
        rng: the participant's own generator (e.g. ``participant_rng(seed, i, "appearance")``).
        age: years; sets the marrow fat fraction.
        n_stations: stations of the protocol (one gain, bias and noise level each).
        muscle_ff: fat fraction recorded for generic muscle (targets carry their own).
    """
    seq = draw_sequence(rng)
    fi = 0 if seq.field_t == 1.5 else 1
    t1_fat = _uniform(rng, T1_FAT_MS[fi])
    axial, femoral = marrow_fat_fractions(rng, age)
    tissues: dict[str, Relaxation] = {}
    for tissue, cls in CLASS_OF_TISSUE.items():
        base = "marrow" if tissue == "marrow_femoral" else tissue
        density = AMPLITUDE[base] * float(np.exp(DENSITY_LOG_SD * rng.standard_normal()))
        if tissue == "marrow":
            phi = axial
        elif tissue == "marrow_femoral":
            phi = femoral
        elif tissue == "muscle":
            phi = muscle_ff
        else:
            phi = _uniform(rng, FAT_FRACTION_RANGE[tissue])
        t1_water = _uniform(rng, T1_MS[cls][fi])
        t2star = _uniform(rng, T2STAR_MS[cls][fi])
        tissues[tissue] = Relaxation(density, phi, t1_water, t1_fat, t2star)
    muscle = tissues.pop("muscle")
    encoding = list(ENCODINGS)[int(rng.integers(len(ENCODINGS)))]
    return Appearance(
        sequence=seq,
        tissues=tissues,
        muscle_relaxation=muscle,
        muscle_density_scale=muscle.density / AMPLITUDE["muscle"],
        muscle_snr=_log_uniform(rng, MUSCLE_SNR),
        station_noise=tuple(float(v) for v in rng.uniform(*STATION_NOISE, n_stations)),
        station_gain=tuple(float(v) for v in rng.uniform(*STATION_GAIN, n_stations)),
        bias_amplitude=_uniform(rng, BIAS_AMPLITUDE),
        station_bias_amplitude=_uniform(rng, STATION_BIAS_AMPLITUDE),
        blur_voxels=_uniform(rng, BLUR_VOXELS),
        slice_mm=_uniform(rng, SLICE_MM),
        gain=_log_uniform(rng, GAIN),
        encoding=encoding,
        stored_peak=_uniform(rng, ENCODINGS[encoding][2]),
        shape=draw_shape_variation(rng),
    )
