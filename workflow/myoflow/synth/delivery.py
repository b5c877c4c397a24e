"""Write one participant's stations as DICOM series and move them into place.

The cohort writer (:mod:`myoflow.synth.cohort`) decides what each station's four channels
hold (standard: :func:`myoflow.synth.signal.station_channels`; randomised appearance:
:func:`myoflow.synth.appearance_render.station_images`); this writes them as a scanner
delivers them, skipping missing stations and channels, and publishes the participant's
folder (or zip) in one step.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from myoflow.synth.dicom_writer import (
    DEFAULT_ENCODING,
    PatientInfo,
    PixelEncoding,
    SeriesInfo,
    write_series,
    zip_directory,
)
from myoflow.synth.geometry import Protocol, Station
from myoflow.synth.signal import CHANNELS, Artefacts, station_grid

StationImages = Callable[[Station], tuple[dict[str, np.ndarray], float]]
"""A station -> (its four channels, the fraction of it swapped)."""


def write_stations(
    proto: Protocol,
    images: StationImages,
    artefacts: Artefacts,
    staging: Path,
    protocol_name: str,
    uid_seed: str,
    patient: PatientInfo,
    encoding: PixelEncoding = DEFAULT_ENCODING,
    overrides: Callable[[str], dict[str, object]] | None = None,
) -> float:
    """Write every delivered series of one participant; return the partial-swap fraction.

    ``overrides(channel)`` gives header tags replacing the protocol's (see
    :func:`myoflow.synth.dicom_writer.write_series`).
    """
    swapped = 0.0
    direction = np.eye(3)
    for station in proto.stations:
        channels, fraction = images(station)
        if artefacts.partial_swap_station == station.number:
            swapped = fraction
        if artefacts.missing_station == station.number:
            continue
        sub_grid = station_grid(proto.grid, station)
        for c, channel in enumerate(CHANNELS):
            if artefacts.missing_channel == f"{channel}@{station.number}":
                continue
            number = (station.number - 1) * len(CHANNELS) + c + 1
            series = SeriesInfo(
                protocol=protocol_name,
                channel=channel,
                station=station.number,
                series_number=number,
                uid_seed=uid_seed,
            )
            write_series(
                channels[channel],
                origin_lps_mm=np.array(sub_grid.origin_lps_mm),
                spacing_mm=np.array(sub_grid.spacing_mm),
                direction=direction,
                out_dir=staging / f"S{number:03d}",
                series=series,
                patient=patient,
                encoding=encoding,
                overrides=None if overrides is None else overrides(channel),
            )
    return swapped


def publish(staging: Path, dicom_root: Path, pid: str, as_zip: bool) -> None:
    """Move a finished participant into place in one rename (or one atomic zip write)."""
    final_dir, final_zip = dicom_root / pid, dicom_root / f"{pid}.zip"
    shutil.rmtree(final_dir, ignore_errors=True)
    final_zip.unlink(missing_ok=True)
    if as_zip:
        zip_directory(staging, final_zip)
    else:
        os.replace(staging, final_dir)
