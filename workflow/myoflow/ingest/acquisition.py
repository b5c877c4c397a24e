"""The acquisition record of a converted participant (``dixon/acquisition.json``).

What was acquired (scanner, sequence, stations) and how it was stitched (grid, what was
ignored), built from an explicit list of DICOM fields: nothing that identifies a person,
a visit or a site (names, ids, dates, times, UIDs, institution, station name, device
serial number) can reach the record, because nothing is copied that is not named here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pydicom

from myoflow.core.grid import Grid
from myoflow.core.volume import Volume
from myoflow.ingest.series import CHANNELS, SeriesPlan
from myoflow.ingest.sources import IgnoredFile
from myoflow.ingest.stitch import z_range_mm


def acquisition_record(
    *,
    source: str,
    series: Mapping[str, Sequence[pydicom.Dataset]],
    plan: SeriesPlan,
    water: Sequence[Volume],
    grid: Grid,
    ignored_files: Sequence[IgnoredFile],
) -> dict:
    """The JSON-compatible acquisition record.

    Args:
        source: ``folder`` or ``zip``.
        series: the datasets of every Dixon series, by SeriesInstanceUID.
        plan: the sorted series (channels, stations head first, ignored series).
        water: the water volume of each station, head first (for the station geometry).
        grid: the stitched grid.
        ignored_files: files of the delivery that are not MR images (counted by reason).
    """
    first = series[plan.stations[0]["water"]][0]
    echo_times = {
        c: sorted({_number(series[keys[c]][0], "EchoTime") for keys in plan.stations} - {None})
        for c in CHANNELS
    }
    ignored_reasons = [f.reason for f in ignored_files]
    return {
        "source": source,
        "protocol": plan.protocol,
        "scanner": {
            "manufacturer": _text(first.get("Manufacturer")),
            "model": _text(first.get("ManufacturerModelName")),
            "field_strength_t": _number(first, "MagneticFieldStrength"),
            "software_versions": _text(first.get("SoftwareVersions")),
        },
        "sequence": {
            "repetition_time_ms": _number(first, "RepetitionTime"),
            "flip_angle_deg": _number(first, "FlipAngle"),
            "echo_times_ms": {c: t[0] if len(t) == 1 else t for c, t in echo_times.items()},
        },
        "n_stations": len(water),
        "stations": [_station(number, volume) for number, volume in enumerate(water, 1)],
        "grid": {
            "shape": list(grid.shape),
            "spacing_mm": list(grid.spacing_mm),
            "origin_lps_mm": list(grid.origin_lps_mm),
            "orientation": "LPS: i -> left, j -> posterior, k -> superior",
            "affine_ras": grid.affine_ras().tolist(),
        },
        "channels": {c: f"{c}.nii.gz" for c in CHANNELS},
        "ignored_files": {r: ignored_reasons.count(r) for r in sorted(set(ignored_reasons))},
        "ignored_series": [vars(ignored) for ignored in plan.ignored],
    }


def _station(number: int, volume: Volume) -> dict:
    """A station's number, z range of its voxel centres (LPS mm), shape and spacing."""
    z = z_range_mm(volume.array.shape, volume.affine_lps)
    return {
        "station": number,
        "z_min_mm": round(z.low, 3),
        "z_max_mm": round(z.high, 3),
        "shape": list(volume.array.shape),
        "spacing_mm": [round(float(v), 6) for v in volume.spacing_mm],
    }


def _number(ds: pydicom.Dataset, keyword: str) -> float | None:
    try:
        return float(ds.get(keyword))
    except (TypeError, ValueError):
        return None


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, Sequence):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()
