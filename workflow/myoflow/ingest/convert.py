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
marks the participant complete (its channels may since have been removed on purpose,
config ``keep.stitched``): a rerun skips a participant whose marker is newer than
its DICOM folder or zip and was written by the same :data:`CONVERT_VERSION`, pydicom
version and ingest settings. Bump :data:`CONVERT_VERSION` whenever outputs change.

Steps 1-4 happen in memory (:mod:`myoflow.ingest.prepare`, with the settings of
:mod:`myoflow.ingest.settings`); this module is the stage: files, reruns, the shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom

from myoflow.core.io import write_json
from myoflow.core.kept_channels import channel_kept_or_removed
from myoflow.core.participant_files import ParticipantFiles
from myoflow.core.shard_runner import (
    INTERNAL_ERROR,
    INTERNAL_ERROR_MEANING,
    OK,
    Outcome,
    Upstream,
    run_shard,
)
from myoflow.core.volume import Volume
from myoflow.ingest.prepare import STORAGE_DTYPE, prepare_participant
from myoflow.ingest.series import (
    CHANNELS,
    SORT_REASONS,
)
from myoflow.ingest.settings import IngestSettings
from myoflow.ingest.sources import (
    SOURCE_REASONS,
)

CONVERT_VERSION = 1
"""Version of the conversion outputs; bump it to make reruns redo complete participants."""

STAGE = "convert"

EXCLUSION_REASONS = {
    **SOURCE_REASONS,
    "corrupt_file": "a DICOM file is empty, cannot be parsed, or is cut short",
    "mixed_participants": "the MR files carry more than one PatientID or StudyInstanceUID",
    "orientation_mismatch": "the Dixon series do not share one ImageOrientationPatient",
    **SORT_REASONS,
    "invalid_series": "a Dixon series cannot be read as one volume "
    "(see myoflow.ingest.dicom.REASONS)",
    "station_gap": "two neighbouring stations do not touch along z",
    INTERNAL_ERROR: INTERNAL_ERROR_MEANING,
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
class ConvertFiles(ParticipantFiles):
    """Where the conversion writes one participant's outputs."""

    def remove_outputs(self) -> None:
        """Remove the conversion outputs, the completion marker first."""
        self.acquisition.unlink(missing_ok=True)
        self.removed.unlink(missing_ok=True)
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

    def current(self, member: Any, folder: Path) -> Outcome | None:
        record = complete_record(ConvertFiles(folder), Path(member.dicom_path), self.settings)
        return None if record is None else Outcome(record, "complete, skipped")

    def run(self, member: Any, folder: Path) -> Outcome:
        files, dicom_path = ConvertFiles(folder), Path(member.dicom_path)
        prepared = prepare_participant(dicom_path, self.settings)
        files.acquisition.unlink(missing_ok=True)  # incomplete until every channel is written
        files.removed.unlink(missing_ok=True)  # it described the channels of the last conversion
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

    Valid means: ``acquisition.json`` exists, is newer than the DICOM folder or zip and
    was written from the same path by the same CONVERT_VERSION, pydicom version and ingest
    settings, and every channel exists or was removed on purpose after this conversion
    (config ``keep.stitched``, :mod:`myoflow.core.kept_channels`).
    """
    try:
        acquisition = json.loads(files.acquisition.read_text())
        newer = files.acquisition.stat().st_mtime_ns > dicom_path.stat().st_mtime_ns
    except (OSError, ValueError):
        return None
    current = acquisition.get("provenance") == provenance(dicom_path, settings)
    if not (newer and current and all(channel_kept_or_removed(files, c) for c in CHANNELS)):
        return None
    return _record(acquisition)
