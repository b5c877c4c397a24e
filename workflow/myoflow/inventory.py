"""DICOM inventory: which MR series each participant's DICOM folder or zip holds.

For every file of a participant's DICOM folder or zip, the header is read with pydicom
(``stop_before_pixels=True``) and files are grouped by SeriesInstanceUID into one row per
series. Series are identified by a hash of their UID, never by the UID itself. Files that
are not DICOM, not MR, or unreadable are reported by relative name and ignored.

Per participant, the outcome is either

- ``{participants_dir}/{participant}/dicom/inventory.tsv`` (one row per series) and
  ``dicom/inventory.json`` (counts, ignored files, and what produced it), or
- ``{participants_dir}/{participant}/exclusion.json`` with a reason code from
  :data:`EXCLUSION_REASONS`, when the folder or zip is missing, unreadable, corrupt or
  holds no MR series.

``inventory.json`` is written last and marks the participant complete: a rerun skips a
participant whose marker is newer than its DICOM folder or zip and was written by the same
:data:`INVENTORY_VERSION` and pydicom version. Bump :data:`INVENTORY_VERSION` whenever
the content of these files changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from myoflow.errors import MyoflowError
from myoflow.io import write_json, write_tsv

INVENTORY_VERSION = 1
"""Version of the inventory outputs; bump it to make reruns redo complete participants."""

STAGE = "inventory"

EXCLUSION_REASONS = {
    "dicom_missing": "the DICOM folder or zip named in the sheet does not exist",
    "dicom_unreadable": "the DICOM folder or zip exists but cannot be read",
    "zip_corrupt": "the zip archive is damaged or not a zip archive",
    "no_mr_series": "no file is an MR DICOM image with a SeriesInstanceUID",
}

IGNORED_REASONS = {
    "not_dicom": "not a DICOM file (no DICM preamble)",
    "not_mr": "a DICOM file whose Modality is not MR",
    "no_series_uid": "an MR DICOM file without SeriesInstanceUID",
    "unreadable": "a DICOM file that pydicom cannot parse",
    "no_pixel_data": "a DICOM file that ends before any pixel data (truncated, or no image)",
    "truncated": "a DICOM file shorter than its pixel data says",
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

PIXEL_DATA_GROUP = 0x7FE0
UNDEFINED_LENGTH = 0xFFFFFFFF

Member = tuple[str, Callable[[], BinaryIO]]
"""A file of a participant's DICOM: its relative name and a function opening it."""

SHARD_COLUMNS = ["participant_id", "shard", "status", "reason", "n_series", "n_files", "n_ignored"]
"""Columns of ``results/shards/{shard}/inventory.tsv``: one row per participant."""


class ParticipantExcluded(MyoflowError):
    """A participant's DICOM cannot be inventoried; ``reason`` is a key of EXCLUSION_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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
class IgnoredFile:
    """A file left out of the inventory; ``reason`` is a key of IGNORED_REASONS."""

    file: str
    reason: str
    detail: str


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


def inventory_participant(dicom_path: str | os.PathLike[str]) -> Inventory:
    """Inventory one participant's DICOM folder (searched recursively) or zip.

    Raises:
        ParticipantExcluded: the path is missing, unreadable or a corrupt zip, or it holds
            no MR series.
    """
    path = Path(dicom_path)
    if path.is_dir():
        source, members = "folder", _folder_members(path)
    elif path.is_file():
        source, members = "zip", _zip_members(path)
    elif path.exists():
        raise ParticipantExcluded("dicom_unreadable", f"{path} is neither a folder nor a file")
    else:
        raise ParticipantExcluded("dicom_missing", f"no folder or zip at {path}")
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


def _folder_members(root: Path) -> Iterator[Member]:
    """Yield (relative POSIX name, opener) for every file under ``root``, sorted."""

    def fail(err: OSError) -> None:
        raise ParticipantExcluded("dicom_unreadable", f"cannot list {err.filename}: {err.strerror}")

    paths = [
        Path(folder, name) for folder, _, files in os.walk(root, onerror=fail) for name in files
    ]
    for name, path in sorted((path.relative_to(root).as_posix(), path) for path in paths):
        yield name, lambda path=path: path.open("rb")


def _zip_members(archive: Path) -> Iterator[Member]:
    """Yield (member name, opener) for every file member of a zip, sorted by name."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = sorted((i for i in zf.infolist() if not i.is_dir()), key=lambda i: i.filename)
            for info in infos:
                data = zf.read(info)
                yield info.filename, lambda data=data: io.BytesIO(data)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise ParticipantExcluded("zip_corrupt", f"{archive}: {err}") from err
    except OSError as err:
        raise ParticipantExcluded("dicom_unreadable", f"{archive}: {err.strerror or err}") from err


def read_header(name: str, open_member: Callable[[], BinaryIO]) -> SliceHeader | IgnoredFile:
    """Read one file's header; return what the inventory keeps, or why the file is ignored."""
    try:
        with open_member() as handle:
            ds = pydicom.dcmread(handle, stop_before_pixels=True)
            # pydicom reads a truncated file without complaint, even one cut inside a UID,
            # so the rest of the file must hold the whole pixel data element.
            damage = _pixel_data_damage(handle, *ds.original_encoding)
            if damage is not None:
                return IgnoredFile(name, *damage)
            modality = str(ds.get("Modality", "") or "").strip()
            if modality != "MR":
                return IgnoredFile(name, "not_mr", f"Modality {modality or 'missing'}")
            series_uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
            if not series_uid:
                return IgnoredFile(name, "no_series_uid", "SeriesInstanceUID missing")
            position = ds.get("ImagePositionPatient")
            return SliceHeader(
                series_uid=series_uid,
                description=str(ds.get("SeriesDescription", "") or "").strip(),
                image_type=_join(ds.get("ImageType")),
                rows=_join(ds.get("Rows")),
                columns=_join(ds.get("Columns")),
                pixel_spacing_mm=_join(ds.get("PixelSpacing"), number=True),
                slice_thickness_mm=_join(ds.get("SliceThickness"), number=True),
                z_mm=float(position[2])
                if position is not None and len(position) == 3
                else math.nan,
            )
    except InvalidDicomError:
        return IgnoredFile(name, "not_dicom", "no DICM preamble")
    except Exception as err:  # pydicom raises many exception types on damaged headers
        return IgnoredFile(name, "unreadable", f"{type(err).__name__}: {err}")


def _pixel_data_damage(
    handle: BinaryIO, implicit_vr: bool, little_endian: bool
) -> tuple[str, str] | None:
    """Return (reason, detail) if the pixel data is absent or cut short, else None.

    ``handle`` is where ``dcmread(stop_before_pixels=True)`` left it: at the pixel data
    element, if the file has one. Encapsulated (compressed) pixel data has no length to
    check and passes.
    """
    start = handle.tell()
    header = handle.read(12)
    order = "<" if little_endian else ">"
    if len(header) < 8 or struct.unpack(order + "H", header[:2])[0] != PIXEL_DATA_GROUP:
        return "no_pixel_data", "file ends before any pixel data"
    if implicit_vr:
        header_bytes, (length,) = 8, struct.unpack(order + "I", header[4:8])
    elif len(header) == 12:
        header_bytes, (length,) = 12, struct.unpack(order + "I", header[8:12])
    else:
        return "truncated", "file ends inside the pixel data header"
    if length == UNDEFINED_LENGTH:
        return None
    available = handle.seek(0, io.SEEK_END) - start - header_bytes
    if available < length:
        return "truncated", f"{available} of {length} pixel data bytes"
    return None


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
) -> pd.DataFrame:
    """Inventory every participant of a shard; return the shard table (SHARD_COLUMNS).

    Args:
        members: rows with ``participant_id``, ``shard`` and ``dicom_path`` (resolved).
        participants_dir: folder holding one folder per participant.
        log: receives one progress line per participant.

    A participant that cannot be inventoried gets ``exclusion.json`` and an ``excluded``
    row; it never stops the others. Participants already complete are skipped.
    """
    rows = []
    for member in members.itertuples(index=False):
        files = ParticipantFiles(Path(participants_dir) / member.participant_id)
        summary = complete_summary(files, member.participant_id, Path(member.dicom_path))
        if summary is not None:
            log(f"{member.participant_id}: complete, skipped")
        else:
            summary = _inventory_one(files, member.participant_id, Path(member.dicom_path))
            log(f"{member.participant_id}: {summary['status']} {summary['reason']}".rstrip())
        rows.append(
            {"participant_id": member.participant_id, "shard": member.shard}
            | {column: summary.get(column, "") for column in SHARD_COLUMNS[2:]}
        )
    return pd.DataFrame(rows, columns=SHARD_COLUMNS)


def _inventory_one(files: ParticipantFiles, participant_id: str, dicom_path: Path) -> dict:
    """Inventory one participant and write its outputs; return its summary."""
    try:
        inventory = inventory_participant(dicom_path)
    except ParticipantExcluded as excluded:
        # Remove the completion marker first so a crash in between never looks complete.
        files.summary.unlink(missing_ok=True)
        files.series_table.unlink(missing_ok=True)
        record = {
            "participant_id": participant_id,
            "stage": STAGE,
            "reason": excluded.reason,
            "detail": excluded.detail,
        }
        write_json(files.exclusion, record)
        return {
            "status": "excluded",
            "reason": excluded.reason,
            "n_series": 0,
            "n_files": 0,
            "n_ignored": 0,
        }
    if _exclusion_stage(files.exclusion) == STAGE:
        files.exclusion.unlink()
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


def _exclusion_stage(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("stage")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        return STAGE  # a damaged record: let the inventory replace it


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
