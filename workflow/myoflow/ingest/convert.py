"""Conversion: one participant's multi-station DIXON DICOM to one stitched NIfTI per channel.

For every participant of a shard that passed the inventory:

1. read every file of the DICOM folder or zip (:mod:`myoflow.ingest.sources`): files that are
   not DICOM or not MR are counted and ignored; an empty, unreadable or truncated file
   excludes the participant;
2. group files by series and sort the series into channels and stations
   (:mod:`myoflow.ingest.series`), after checking that they come from one person and one study
   and share one orientation;
3. read each Dixon series as a volume (:func:`myoflow.ingest.dicom.series_volumes`: LPS
   geometry, rescale applied, spacing checked);
4. stitch each channel's stations onto one grid shared by all four channels
   (:mod:`myoflow.ingest.stitch`), by default the UK Biobank stitched grid spacing;
5. write ``{participants_dir}/{participant}/dixon/{water,fat,in,opp}.nii.gz`` (int16 with
   ``scl_slope``) and, last, ``dixon/acquisition.json``: the scanner, sequence, stations
   and grid, what was ignored, and what produced it; nothing that identifies a person.

A participant whose DICOM cannot give a correct stitched image gets
``{participant}/exclusion.json`` with a reason from :data:`EXCLUSION_REASONS` instead;
one excluded at the inventory is not converted and keeps its record. ``acquisition.json``
marks the participant complete: a rerun skips a participant whose marker is newer than
its DICOM folder or zip and was written by the same :data:`CONVERT_VERSION`, pydicom
version and ingest settings. Bump :data:`CONVERT_VERSION` whenever outputs change.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pydicom

from myoflow.core.errors import MyoflowError, ParticipantExcluded
from myoflow.core.grid import Grid
from myoflow.core.io import write_json
from myoflow.core.participant_files import ParticipantFiles
from myoflow.core.shard_runner import OK, Outcome, Upstream, run_shard
from myoflow.core.volume import Volume
from myoflow.ingest.acquisition import acquisition_record
from myoflow.ingest.dicom import ORIENTATION_TOL, group_by_series, series_volumes
from myoflow.ingest.dicom_errors import DicomError
from myoflow.ingest.series import (
    CHANNELS,
    DEFAULT_CHANNEL_RULES,
    DEFAULT_PROTOCOLS,
    SORT_REASONS,
    ChannelRule,
    ProtocolRule,
    assign_stations,
    classify_series,
    summarise,
)
from myoflow.ingest.sources import (
    DAMAGED,
    IGNORED_REASONS,
    SOURCE_REASONS,
    IgnoredFile,
    participant_members,
    read_member,
)
from myoflow.ingest.stitch import (
    UKBB_SPACING_MM,
    StitchError,
    check_contiguous,
    common_grid,
    stitch,
    z_range_mm,
)

CONVERT_VERSION = 1
"""Version of the conversion outputs; bump it to make reruns redo complete participants."""

STAGE = "convert"

STORAGE_DTYPE = "int16"
"""NIfTI data type of the stitched channels (``scl_slope`` = max / 30000, see Volume).

Measured on one full-size UK Biobank participant (bench/convert.py): the four
stitched channels take 84 MB as int16 and 110 MB as float32 (.nii.gz), against 82 MB
for dcm2niix's 24 unstitched series (NAKO: 93 against 193 MB): int16 saves 2.6 TB per
100,000 UK Biobank participants.
Its rounding error, at most 1/60000 of the image maximum (~0.03 for water), is
hundreds of times below the scanner noise (sigma ~15), so nothing is lost.
"""

EXCLUSION_REASONS = {
    **SOURCE_REASONS,
    "corrupt_file": "a DICOM file is empty, cannot be parsed, or is cut short",
    "mixed_participants": "the MR files carry more than one PatientID or StudyInstanceUID",
    "orientation_mismatch": "the Dixon series do not share one ImageOrientationPatient",
    **SORT_REASONS,
    "invalid_series": "a Dixon series cannot be read as one volume "
    "(see myoflow.ingest.dicom.REASONS)",
    "station_gap": "two neighbouring stations do not touch along z",
}
"""Why the conversion leaves a participant out: reason code -> what it means."""

SHARD_COLUMNS = [
    "participant_id",
    "shard",
    "status",
    "stage",
    "reason",
    "protocol",
    "n_stations",
    "n_ignored_series",
    "n_ignored_files",
]
"""Columns of ``results/shards/{shard}/convert.tsv``: one row per participant.

``stage`` says which stage excluded an ``excluded`` participant (``inventory`` or
``convert``) and is empty for ``ok`` ones.
"""


@dataclass(frozen=True)
class IngestSettings:
    """How series are recognised and onto which grid they are stitched (``ingest``).

    Attributes:
        channel_rules: rules naming each series' channel.
        protocols: known protocols and their number of stations.
        spacing_mm: voxel size of the stitched grid (x, y, z) in mm, or None for the
            stations' own spacing ("native").
    """

    channel_rules: tuple[ChannelRule, ...] = DEFAULT_CHANNEL_RULES
    protocols: tuple[ProtocolRule, ...] = DEFAULT_PROTOCOLS
    spacing_mm: tuple[float, float, float] | None = UKBB_SPACING_MM

    @classmethod
    def from_config(cls, ingest: Mapping) -> IngestSettings:
        """Build settings from the ``ingest`` section of the configuration.

        Missing keys take the defaults (which ``config/config.yaml`` repeats).

        Raises:
            myoflow.ingest.series.RuleError: a malformed rule.
            SettingsError: a malformed grid spacing.
        """
        defaults = cls().to_config()
        rules = ingest.get("channel_rules", defaults["channel_rules"])
        protocols = ingest.get("protocols", defaults["protocols"])
        spacing = ingest.get("grid", {}).get("spacing_mm", defaults["grid"]["spacing_mm"])
        if spacing != "native" and (
            not isinstance(spacing, list | tuple)
            or len(spacing) != 3
            or not all(isinstance(v, int | float) and v > 0 for v in spacing)
        ):
            raise SettingsError(
                "ingest.grid.spacing_mm must be 'native' or three positive numbers, "
                f"got {spacing!r}"
            )
        return cls(
            channel_rules=tuple(ChannelRule.from_config(item) for item in rules),
            protocols=tuple(ProtocolRule.from_config(item) for item in protocols),
            spacing_mm=None if spacing == "native" else tuple(float(v) for v in spacing),
        )

    def to_config(self) -> dict:
        """The settings as an ``ingest`` configuration section (JSON-compatible)."""
        return {
            "channel_rules": [
                {
                    key: value
                    for key, value in (
                        ("channel", rule.channel),
                        ("image_type", rule.image_type),
                        ("series_description", rule.series_description),
                    )
                    if value
                }
                for rule in self.channel_rules
            ],
            "protocols": [
                {"name": p.name, "series_description": p.series_description, "stations": p.stations}
                for p in self.protocols
            ],
            "grid": {"spacing_mm": "native" if self.spacing_mm is None else list(self.spacing_mm)},
        }

    def digest(self) -> str:
        """SHA-256 of the settings: a change redoes complete participants."""
        text = json.dumps(self.to_config(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


class SettingsError(MyoflowError, ValueError):
    """The ``ingest`` configuration is malformed."""


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
    source, members = participant_members(dicom_path)
    datasets, ignored_files = _read_dicom(members)
    groups = group_by_series(datasets)
    summaries = [summarise(uid, group) for uid, group in groups.items()]
    _check_one_person(datasets)
    dixon, ignored_series = classify_series(summaries, settings.channel_rules)
    _check_orientation({(c, s.key): groups[s.key] for c, s in dixon})
    plan = assign_stations(dixon, settings.protocols, ignored_series)
    stations = tuple(
        Station(number, {c: _volume(groups[key], c, number) for c, key in keys.items()})
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


def _check_orientation(series: Mapping[tuple[str, str], Sequence[pydicom.Dataset]]) -> None:
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


def _volume(datasets: Sequence[pydicom.Dataset], channel: str, station: int) -> Volume:
    """Read one Dixon series as one volume."""
    try:
        volumes = series_volumes(datasets)
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


@dataclass(frozen=True)
class ConvertFiles(ParticipantFiles):
    """Where the conversion writes one participant's outputs."""

    def remove_outputs(self) -> None:
        """Remove the conversion outputs, the completion marker first."""
        self.acquisition.unlink(missing_ok=True)
        for name in CHANNELS:
            self.channel(name).unlink(missing_ok=True)


def provenance(dicom_path: Path, settings: IngestSettings) -> dict:
    """What makes a participant's outputs current (compared on rerun)."""
    return {
        "convert_version": CONVERT_VERSION,
        "pydicom_version": pydicom.__version__,
        "settings_sha256": settings.digest(),
        "dicom_path_sha256": hashlib.sha256(str(dicom_path).encode()).hexdigest(),
    }


def convert_shard(
    members: pd.DataFrame,
    participants_dir: str | os.PathLike[str],
    inventory: pd.DataFrame,
    settings: IngestSettings = IngestSettings(),
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Convert every participant of a shard; return the shard table (SHARD_COLUMNS).

    Args:
        members: rows with ``participant_id``, ``shard`` and ``dicom_path`` (resolved).
        participants_dir: folder holding one folder per participant.
        inventory: the shard's inventory table (``participant_id``, ``status``, ``reason``).
        settings: channel rules, protocols and grid.
        log: receives one line per participant, naming it and the outcome.

    A participant excluded at the inventory is not converted (its record stays); one
    that cannot be converted gets ``exclusion.json``; neither stops the others
    (:func:`myoflow.core.shard_runner.run_shard`). Participants already complete are
    skipped.

    Raises:
        MyoflowError: the inventory table lacks a member (run the inventory first).
    """
    stage = ConvertStage(settings)
    return run_shard(
        stage, members, participants_dir, [Upstream(inventory, "inventory")], log=log
    ).status


@dataclass(frozen=True)
class ConvertStage:
    """The conversion's work for the shard runner (:mod:`myoflow.core.shard_runner`)."""

    settings: IngestSettings
    name = STAGE
    columns = SHARD_COLUMNS
    defaults: ClassVar[dict] = {}

    def current(self, member: Any, folder: Path) -> Outcome | None:
        record = complete_record(ConvertFiles(folder), Path(member.dicom_path), self.settings)
        return None if record is None else Outcome(record, "complete, skipped")

    def run(self, member: Any, folder: Path) -> Outcome:
        files, dicom_path = ConvertFiles(folder), Path(member.dicom_path)
        prepared = prepare_participant(dicom_path, self.settings)
        files.acquisition.unlink(missing_ok=True)  # incomplete until every channel is written
        for channel in CHANNELS:
            Volume(prepared.stitched(channel), prepared.grid.affine_lps()).to_nifti(
                files.channel(channel), dtype=STORAGE_DTYPE
            )
        acquisition = prepared.acquisition | {"provenance": provenance(dicom_path, self.settings)}
        write_json(files.acquisition, acquisition)
        return Outcome(_record(acquisition), "ok")

    def remove_outputs(self, folder: Path) -> None:
        ConvertFiles(folder).remove_outputs()


def _record(acquisition: dict) -> dict:
    return OK | {
        "protocol": acquisition["protocol"],
        "n_stations": acquisition["n_stations"],
        "n_ignored_series": len(acquisition["ignored_series"]),
        "n_ignored_files": sum(acquisition["ignored_files"].values()),
    }


def complete_record(files: ConvertFiles, dicom_path: Path, settings: IngestSettings) -> dict | None:
    """Return a participant's shard-table record if its outputs are still valid, else None.

    Valid means: every channel and ``acquisition.json`` exist, the latter is newer than
    the DICOM folder or zip and was written from the same path by the same
    CONVERT_VERSION, pydicom version and ingest settings.
    """
    try:
        acquisition = json.loads(files.acquisition.read_text())
        newer = files.acquisition.stat().st_mtime_ns > dicom_path.stat().st_mtime_ns
    except (OSError, ValueError):
        return None
    current = acquisition.get("provenance") == provenance(dicom_path, settings)
    if not (newer and current and all(files.channel(c).is_file() for c in CHANNELS)):
        return None
    return _record(acquisition)
