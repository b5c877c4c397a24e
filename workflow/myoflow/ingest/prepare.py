"""One participant's DICOM delivery to stitched channel arrays, in memory.

Steps 1-4 of :mod:`myoflow.ingest.convert`: read the files, check that they come from one
person, study and orientation, sort the series into channels and stations, read each as
a volume and stitch each channel onto one grid. Nothing is written here; the conversion
stage writes the result.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pydicom

from myoflow.core.errors import ParticipantExcluded
from myoflow.core.grid import Grid
from myoflow.core.volume import Volume
from myoflow.ingest.acquisition import acquisition_record
from myoflow.ingest.dicom import ORIENTATION_TOL, series_volumes
from myoflow.ingest.dicom_errors import DicomError
from myoflow.ingest.image_types import SubSeries, group_by_subseries
from myoflow.ingest.series import (
    CHANNELS,
    assign_stations,
    classify_series,
    summarise,
)
from myoflow.ingest.settings import IngestSettings
from myoflow.ingest.sources import (
    DAMAGED,
    IGNORED_REASONS,
    IgnoredFile,
    participant_members,
    read_member,
)
from myoflow.ingest.stitch import (
    StitchError,
    check_contiguous,
    common_grid,
    stitch,
    z_range_mm,
)

STORAGE_DTYPE = "int16"
"""NIfTI data type of the stitched channels (``scl_slope`` = max / 30000, see Volume).

Measured on one full-size UK Biobank participant (bench/convert.py): the four
stitched channels take 84 MB as int16 and 110 MB as float32 (.nii.gz), against 82 MB
for dcm2niix's 24 unstitched series (NAKO: 93 against 193 MB): int16 saves 2.6 TB per
100,000 UK Biobank participants.
Its rounding error, at most 1/60000 of the image maximum (~0.03 for water), is
hundreds of times below the scanner noise (sigma ~15), so nothing is lost.
"""


@dataclass(frozen=True)
class Station:
    """One station (numbered from the head down) and its four channels as volumes."""

    number: int
    volumes: dict[str, Volume]


@dataclass(frozen=True)
class PreparedParticipant:
    """Everything checked and read: stations, the shared grid and the acquisition record."""

    stations: tuple[Station, ...]
    grid: Grid
    acquisition: dict

    def stitched(self, channel: str) -> np.ndarray:
        """The channel stitched onto :attr:`grid` (float32)."""
        volumes = [station.volumes[channel] for station in self.stations]
        return stitch([v.array for v in volumes], [v.affine_lps for v in volumes], self.grid)


def prepare_participant(
    dicom_path: str | os.PathLike[str], settings: IngestSettings = IngestSettings()
) -> PreparedParticipant:
    """Read, sort and check one participant's DICOM; everything short of stitching.

    Raises:
        ParticipantExcluded: the DICOM cannot give a correct stitched image; ``reason``
            is a key of :data:`EXCLUSION_REASONS`.
    """
    source, members = participant_members(dicom_path, settings.limits)
    datasets, ignored_files = _read_dicom(members)
    # One key per series, echo and image type (magnitude, phase, ..., Dixon map), as
    # convert-series splits a series: a series holding all four channels gives four.
    groups = group_by_subseries(datasets)
    summaries = [summarise(key, group) for key, group in groups.items()]
    _check_one_person(datasets)
    dixon, ignored_series = classify_series(summaries, settings.channel_rules)
    _check_orientation({(c, s.key): groups[s.key] for c, s in dixon})
    plan = assign_stations(dixon, settings.protocols, ignored_series, settings.expected_stations)
    stations = tuple(
        Station(number, {c: _volume(groups, key, c, number) for c, key in keys.items()})
        for number, keys in enumerate(plan.stations, 1)
    )
    volumes = [v for station in stations for v in station.volumes.values()]
    grid = common_grid(
        [v.array.shape for v in volumes], [v.affine_lps for v in volumes], settings.spacing_mm
    )
    # Stitching would refuse a gap too; checking every channel first means a gap never
    # leaves a half-written set of files.
    for channel in CHANNELS:
        channel_volumes = [station.volumes[channel] for station in stations]
        try:
            check_contiguous([z_range_mm(v.array.shape, v.affine_lps) for v in channel_volumes])
        except StitchError as err:
            raise ParticipantExcluded(err.reason, f"{channel}: {err.detail}") from err
    acquisition = acquisition_record(
        source=source,
        series={key: groups[key] for keys in plan.stations for key in keys.values()},
        plan=plan,
        water=[station.volumes["water"] for station in stations],
        grid=grid,
        ignored_files=ignored_files,
    ) | {"storage_dtype": STORAGE_DTYPE}
    return PreparedParticipant(stations, grid, acquisition)


def _read_dicom(members: Iterable) -> tuple[list[pydicom.Dataset], list[IgnoredFile]]:
    """Read every member with pixels; damaged files exclude, foreign ones are ignored."""
    datasets, ignored = [], []
    for name, open_member in members:
        item = read_member(name, open_member, pixels=True)
        if isinstance(item, IgnoredFile):
            if item.reason in DAMAGED:
                raise ParticipantExcluded(
                    "corrupt_file", f"{name}: {IGNORED_REASONS[item.reason]} ({item.detail})"
                )
            ignored.append(item)
            continue
        item.filename = name  # messages name the file within the delivery
        datasets.append(item)
    if not datasets:
        raise ParticipantExcluded(
            "no_dixon_series", f"no MR image among {len(ignored)} files ({_counts(ignored)})"
        )
    return datasets, ignored


def _counts(ignored: Sequence[IgnoredFile]) -> str:
    reasons = [f.reason for f in ignored]
    return ", ".join(f"{reasons.count(r)} {r}" for r in IGNORED_REASONS if r in reasons) or "none"


def _check_one_person(datasets: Sequence[pydicom.Dataset]) -> None:
    """Refuse MR files from more than one person or study (values are never printed)."""
    for keyword in ("PatientID", "StudyInstanceUID"):
        values = {str(ds.get(keyword, "") or "").strip() for ds in datasets}
        if len(values) > 1:
            raise ParticipantExcluded(
                "mixed_participants",
                f"the MR files carry {len(values)} different {keyword} values: the folder "
                "mixes people or studies",
            )


def _check_orientation(series: Mapping[tuple[str, object], Sequence[pydicom.Dataset]]) -> None:
    """Refuse Dixon series whose slices do not all share one orientation."""
    reference = None
    for (channel, _), datasets in series.items():
        for ds in datasets:
            try:
                orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
            except (AttributeError, TypeError, ValueError):
                continue  # reading the series reports missing geometry
            if reference is None:
                reference = (channel, orientation)
            elif orientation.shape != (6,) or (
                np.abs(orientation - reference[1]).max() > ORIENTATION_TOL
            ):
                angle = _angle_deg(reference[1], orientation)
                raise ParticipantExcluded(
                    "orientation_mismatch",
                    f"the {channel} series of {ds.filename} is turned {angle:.1f} degrees from "
                    f"the first {reference[0]} series",
                )


def _angle_deg(first: np.ndarray, second: np.ndarray) -> float:
    """Largest angle in degrees between the row or column directions of two orientations."""
    if second.shape != (6,):
        return float("nan")
    cosines = [first[:3] @ second[:3], first[3:] @ second[3:]]
    return float(np.degrees(np.arccos(np.clip(min(cosines), -1.0, 1.0))))


def _volume(
    groups: dict[SubSeries, list[pydicom.Dataset]], key: SubSeries, channel: str, station: int
) -> Volume:
    """Read one Dixon (sub-)series as one volume."""
    try:
        volumes = series_volumes(groups[key], key.part)
    except DicomError as err:
        raise ParticipantExcluded(
            "invalid_series", f"{channel} of station {station}: {err.reason}: {err.detail}"
        ) from err
    if len(volumes) != 1:
        raise ParticipantExcluded(
            "invalid_series",
            f"{channel} of station {station}: {len(volumes)} echoes in one series",
        )
    return volumes[0]
