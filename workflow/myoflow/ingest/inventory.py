"""DICOM inventory: which MR series each participant's DICOM folder or zip holds.

For every file of a participant's DICOM folder or zip, the header is read with pydicom
(``stop_before_pixels=True``) and files are grouped by SeriesInstanceUID into one row per
series. Series are identified by a hash of their UID, never by the UID itself. Files that
are not DICOM, not MR, or unreadable are reported by relative name and ignored.

Per participant, the outcome is either

- ``{participants_dir}/{participant}/dicom/inventory.tsv`` (one row per series) and
  ``dicom/inventory.json`` (counts, ignored files, and what produced it), or
- ``{participants_dir}/{participant}/exclusion.json`` with a reason code from
  :data:`EXCLUSION_REASONS`, when the folder or zip is missing, unreadable, corrupt,
  beyond the delivery limits (:mod:`myoflow.ingest.limits`: a zip bomb, a huge file, a
  header declaring an absurd image) or holds no MR series.

``inventory.json`` is written last and marks the participant complete: a rerun skips a
participant whose marker is newer than its DICOM folder or zip and was written by the same
:data:`INVENTORY_VERSION` and pydicom version. Bump :data:`INVENTORY_VERSION` whenever
the content of these files changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
import pydicom
from pydicom.multival import MultiValue

from myoflow.core.errors import ParticipantExcluded
from myoflow.core.io import write_json, write_tsv
from myoflow.core.shard_runner import INTERNAL_ERROR, INTERNAL_ERROR_MEANING, Outcome, run_shard
from myoflow.ingest.limits import DEFAULT_LIMITS, DeliveryLimits
from myoflow.ingest.sources import (
    IGNORED_REASONS,
    SOURCE_REASONS,
    IgnoredFile,
    participant_members,
    read_member,
)

INVENTORY_VERSION = 2
"""Version of the inventory outputs; bump it to make reruns redo complete participants."""

STAGE = "inventory"

EXCLUSION_REASONS = {
    **SOURCE_REASONS,
    "no_mr_series": "no file is an MR DICOM image with a SeriesInstanceUID",
    INTERNAL_ERROR: INTERNAL_ERROR_MEANING,
}

SERIES_COLUMNS = [
    "series_hash",
    "modality",
    "series_description",
    "image_type",
    "n_files",
    "z_min_mm",
    "z_max_mm",
    "rows",
    "columns",
    "pixel_spacing_mm",
    "slice_thickness_mm",
]
"""Columns of a participant's ``dicom/inventory.tsv``.

``series_hash`` is the first 16 hex digits of the SHA-256 of SeriesInstanceUID;
``z_min_mm``/``z_max_mm`` span the z of ImagePositionPatient over the series' files (the
station's table position range); ``pixel_spacing_mm`` is ``row\\column`` as in DICOM.
Where files of one series disagree on a text field, the distinct values are joined
with ``|``.
"""

SHARD_COLUMNS = ["participant_id", "shard", "status", "reason", "n_series", "n_files", "n_ignored"]
"""Columns of ``results/shards/{shard}/inventory.tsv``: one row per participant."""


@dataclass(frozen=True)
class SliceHeader:
    """The header fields of one MR DICOM file that the inventory keeps."""

    series_uid: str
    description: str
    image_type: str
    rows: str
    columns: str
    pixel_spacing_mm: str
    slice_thickness_mm: str
    z_mm: float


@dataclass(frozen=True)
class Inventory:
    """A participant's series table (SERIES_COLUMNS) and the files it ignored."""

    series: pd.DataFrame
    ignored: tuple[IgnoredFile, ...]
    source: str

    @property
    def n_files(self) -> int:
        """Number of MR files in the series table."""
        return int(self.series["n_files"].sum())


def inventory_participant(
    dicom_path: str | os.PathLike[str], limits: DeliveryLimits = DEFAULT_LIMITS
) -> Inventory:
    """Inventory one participant's DICOM folder (searched recursively) or zip.

    Raises:
        ParticipantExcluded: the path is missing, unreadable or a corrupt zip, the delivery
            is beyond ``limits``, or it holds no MR series.
    """
    path = Path(dicom_path)
    source, members = participant_members(path, limits)
    headers: list[SliceHeader] = []
    ignored: list[IgnoredFile] = []
    for name, open_member in members:
        header = read_header(name, open_member)
        (headers if isinstance(header, SliceHeader) else ignored).append(header)
    if not headers:
        counts = {reason: sum(f.reason == reason for f in ignored) for reason in IGNORED_REASONS}
        found = ", ".join(f"{n} {reason}" for reason, n in counts.items() if n) or "no files"
        raise ParticipantExcluded("no_mr_series", f"{source} {path} holds {found}")
    return Inventory(series=summarise_series(headers), ignored=tuple(ignored), source=source)


def read_header(name: str, open_member: Callable[[], BinaryIO]) -> SliceHeader | IgnoredFile:
    """Read one file's header; return what the inventory keeps, or why the file is ignored."""
    ds = read_member(name, open_member)
    if isinstance(ds, IgnoredFile):
        return ds
    try:
        position = ds.get("ImagePositionPatient")
        return SliceHeader(
            series_uid=str(ds.SeriesInstanceUID).strip(),
            description=str(ds.get("SeriesDescription", "") or "").strip(),
            image_type=_join(ds.get("ImageType")),
            rows=_join(ds.get("Rows")),
            columns=_join(ds.get("Columns")),
            pixel_spacing_mm=_join(ds.get("PixelSpacing"), number=True),
            slice_thickness_mm=_join(ds.get("SliceThickness"), number=True),
            z_mm=float(position[2]) if position is not None and len(position) == 3 else math.nan,
        )
    except Exception as err:  # pydicom raises many exception types on damaged values
        return IgnoredFile(name, "unreadable", f"{type(err).__name__}: {err}")


def _join(value: Any, *, number: bool = False) -> str:
    """Render a DICOM value as text; multi-values joined with a backslash as in DICOM."""
    if value is None or value == "":
        return ""
    values = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    return "\\".join(f"{float(v):.6g}" if number else str(v).strip() for v in values)


def series_hash(series_uid: str) -> str:
    """Return the first 16 hex digits of the SHA-256 of a SeriesInstanceUID."""
    return hashlib.sha256(series_uid.encode("ascii", "replace")).hexdigest()[:16]


def summarise_series(headers: list[SliceHeader]) -> pd.DataFrame:
    """Group file headers by series into one row per series (SERIES_COLUMNS).

    Rows are sorted by ``z_min_mm`` (series without positions last), then description,
    image type and hash, so the same files always give the same table.
    """
    rows = []
    for uid, group in _group_by(headers, lambda h: h.series_uid).items():
        z = [h.z_mm for h in group if not math.isnan(h.z_mm)]
        rows.append(
            {
                "series_hash": series_hash(uid),
                "modality": "MR",
                "series_description": _distinct(h.description for h in group),
                "image_type": _distinct(h.image_type for h in group),
                "n_files": len(group),
                "z_min_mm": min(z) if z else math.nan,
                "z_max_mm": max(z) if z else math.nan,
                "rows": _distinct(h.rows for h in group),
                "columns": _distinct(h.columns for h in group),
                "pixel_spacing_mm": _distinct(h.pixel_spacing_mm for h in group),
                "slice_thickness_mm": _distinct(h.slice_thickness_mm for h in group),
            }
        )
    table = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    return table.sort_values(
        ["z_min_mm", "series_description", "image_type", "series_hash"],
        na_position="last",
        kind="stable",
        ignore_index=True,
    )


def _group_by(items: list[SliceHeader], key: Callable[[SliceHeader], str]) -> dict:
    groups: dict[str, list[SliceHeader]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def _distinct(values: Iterator[str]) -> str:
    return "|".join(sorted({v for v in values if v}))


@dataclass(frozen=True)
class ParticipantFiles:
    """Where the inventory stage writes one participant's outputs."""

    root: Path

    @property
    def series_table(self) -> Path:
        return self.root / "dicom" / "inventory.tsv"

    @property
    def summary(self) -> Path:
        return self.root / "dicom" / "inventory.json"

    @property
    def exclusion(self) -> Path:
        return self.root / "exclusion.json"


def inventory_shard(
    members: pd.DataFrame,
    participants_dir: str | os.PathLike[str],
    log: Callable[[str], None] = print,
    limits: DeliveryLimits = DEFAULT_LIMITS,
) -> pd.DataFrame:
    """Inventory every participant of a shard; return the shard table (SHARD_COLUMNS).

    Args:
        members: rows with ``participant_id``, ``shard`` and ``dicom_path`` (resolved).
        participants_dir: folder holding one folder per participant.
        log: receives one progress line per participant.
        limits: what one delivery may hold (config ``ingest.limits``).

    A participant that cannot be inventoried gets ``exclusion.json`` and an ``excluded``
    row; it never stops the others (:func:`myoflow.core.shard_runner.run_shard`).
    Participants already complete are skipped.
    """
    return run_shard(InventoryStage(limits), members, participants_dir, log=log).status


class InventoryStage:
    """The inventory's work for the shard runner (:mod:`myoflow.core.shard_runner`)."""

    name = STAGE
    columns = SHARD_COLUMNS
    defaults = {"n_series": 0, "n_files": 0, "n_ignored": 0}

    def __init__(self, limits: DeliveryLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits

    def current(self, member: Any, folder: Path) -> Outcome | None:
        files = ParticipantFiles(folder)
        summary = complete_summary(files, member.participant_id, Path(member.dicom_path))
        return None if summary is None else Outcome(summary, "complete, skipped")

    def run(self, member: Any, folder: Path) -> Outcome:
        summary = _inventory_one(
            ParticipantFiles(folder), member.participant_id, Path(member.dicom_path), self.limits
        )
        return Outcome(summary, f"ok, {summary['n_series']} series")

    def remove_outputs(self, folder: Path) -> None:
        files = ParticipantFiles(folder)
        files.summary.unlink(missing_ok=True)  # the completion marker first
        files.series_table.unlink(missing_ok=True)


def _inventory_one(
    files: ParticipantFiles,
    participant_id: str,
    dicom_path: Path,
    limits: DeliveryLimits = DEFAULT_LIMITS,
) -> dict:
    """Inventory one participant and write its outputs; return its summary.

    Raises:
        ParticipantExcluded: the delivery cannot be inventoried; the caller records it.
    """
    inventory = inventory_participant(dicom_path, limits)
    write_tsv(files.series_table, inventory.series)
    summary = {
        "participant_id": participant_id,
        "status": "ok",
        "reason": "",
        "dicom_path": str(dicom_path),
        "source": inventory.source,
        "n_series": len(inventory.series),
        "n_files": inventory.n_files,
        "n_ignored": len(inventory.ignored),
        "ignored": [vars(f) for f in inventory.ignored],
        "inventory_version": INVENTORY_VERSION,
        "pydicom_version": pydicom.__version__,
    }
    write_json(files.summary, summary)
    return summary


def complete_summary(files: ParticipantFiles, participant_id: str, dicom_path: Path) -> dict | None:
    """Return a participant's earlier summary if it is still valid, else None.

    Valid means: the series table and summary exist, the summary is newer than the DICOM
    folder or zip (for a folder, its own mtime, which changes when entries are added or
    removed directly in it), and it was written for the same participant and path by the
    same INVENTORY_VERSION and pydicom version.
    """
    try:
        summary = json.loads(files.summary.read_text())
        complete = (
            files.series_table.is_file()
            and files.summary.stat().st_mtime_ns > dicom_path.stat().st_mtime_ns
        )
    except (OSError, ValueError):
        return None
    expected = {
        "participant_id": participant_id,
        "dicom_path": str(dicom_path),
        "inventory_version": INVENTORY_VERSION,
        "pydicom_version": pydicom.__version__,
    }
    if not complete or any(summary.get(key) != value for key, value in expected.items()):
        return None
    return summary
