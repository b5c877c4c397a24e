"""The files of one participant's DICOM delivery, from a folder or a zip, and reading them.

Every stage that reads a participant's DICOM (inventory, conversion) iterates the same
members in the same order and reads each with :func:`read_member`, so a folder and the
zip of that folder give the same results, and every stage agrees on which files are
not DICOM, not MR, or damaged. A member is a relative POSIX name and a function that
opens it for reading; zip members are read into memory one at a time, when the
iteration reaches them.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.errors import InvalidDicomError

from myoflow.core.errors import ParticipantExcluded

Member = tuple[str, Callable[[], BinaryIO]]
"""A file of a participant's DICOM: its relative name and a function opening it."""

SOURCE_REASONS = {
    "dicom_missing": "the DICOM folder or zip named in the sheet does not exist",
    "dicom_unreadable": "the DICOM folder or zip exists but cannot be read",
    "zip_corrupt": "the zip archive is damaged or not a zip archive",
}
"""Exclusion reasons raised while listing or reading a delivery."""

IGNORED_REASONS = {
    "not_dicom": "not a DICOM file (no DICM preamble)",
    "empty": "an empty file",
    "not_mr": "a DICOM file whose Modality is not MR",
    "no_series_uid": "an MR DICOM file without SeriesInstanceUID",
    "unreadable": "a DICOM file that pydicom cannot parse",
    "no_pixel_data": "an MR DICOM file that ends before any pixel data (truncated, or no image)",
    "truncated": "a DICOM file shorter than its pixel data says",
}
"""Why :func:`read_member` passed over a file."""

DAMAGED = frozenset({"empty", "unreadable", "no_pixel_data", "truncated"})
"""The reasons of IGNORED_REASONS that mean a damaged file rather than a foreign one."""

PIXEL_DATA_GROUP = 0x7FE0
UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class IgnoredFile:
    """A file passed over by :func:`read_member`; ``reason`` is a key of IGNORED_REASONS."""

    file: str
    reason: str
    detail: str


def participant_members(dicom_path: str | os.PathLike[str]) -> tuple[str, Iterator[Member]]:
    """Return ``("folder" | "zip", members)`` for a participant's DICOM folder or zip.

    The folder is listed, or the zip opened, only when iteration starts; errors then
    surface from the iteration.

    Raises:
        ParticipantExcluded: the path does not exist (``dicom_missing``) or is neither a
            folder nor a file (``dicom_unreadable``); while iterating, also
            ``dicom_unreadable`` and ``zip_corrupt`` (see :data:`SOURCE_REASONS`).
    """
    path = Path(dicom_path)
    if path.is_dir():
        return "folder", folder_members(path)
    if path.is_file():
        return "zip", zip_members(path)
    if path.exists():
        raise ParticipantExcluded("dicom_unreadable", f"{path} is neither a folder nor a file")
    raise ParticipantExcluded("dicom_missing", f"no folder or zip at {path}")


def folder_members(root: Path) -> Iterator[Member]:
    """Yield (relative POSIX name, opener) for every file under ``root``, sorted by name."""

    def fail(err: OSError) -> None:
        raise ParticipantExcluded("dicom_unreadable", f"cannot list {err.filename}: {err.strerror}")

    paths = [
        Path(folder, name) for folder, _, files in os.walk(root, onerror=fail) for name in files
    ]
    for name, path in sorted((path.relative_to(root).as_posix(), path) for path in paths):
        yield name, lambda path=path: path.open("rb")


def zip_members(archive: Path) -> Iterator[Member]:
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


def read_member(
    name: str, open_member: Callable[[], BinaryIO], *, pixels: bool = False
) -> pydicom.Dataset | IgnoredFile:
    """Read one MR DICOM file; return its dataset, or why it is passed over.

    A file is passed over when it is not DICOM, empty, not MR (a Modality other than
    MR; one without Modality counts as not MR only if its pixel data is whole), has no
    SeriesInstanceUID, cannot be parsed, or its pixel data is missing or cut short:
    pydicom reads a truncated file without complaint, even one cut inside a UID, so the
    rest of the file must hold the whole pixel data element.

    Args:
        name: the member's relative name, for the report.
        open_member: opens the member for binary reading.
        pixels: also read the pixel data (otherwise the dataset stops before it).
    """
    try:
        with open_member() as handle:
            if not handle.read(1):
                return IgnoredFile(name, "empty", "zero bytes")
            handle.seek(0)
            ds = pydicom.dcmread(handle, stop_before_pixels=True)
            modality = str(ds.get("Modality", "") or "").strip()
            if modality and modality != "MR":
                return IgnoredFile(name, "not_mr", f"Modality {modality}")
            element = _pixel_data_element(handle, *ds.original_encoding)
            if isinstance(element, IgnoredFile):
                return IgnoredFile(name, element.reason, element.detail)
            if not modality:
                return IgnoredFile(name, "not_mr", "Modality missing")
            if not str(ds.get("SeriesInstanceUID", "") or "").strip():
                return IgnoredFile(name, "no_series_uid", "SeriesInstanceUID missing")
            if pixels:
                _read_pixel_data(ds, handle, *element)
            return ds
    except InvalidDicomError:
        return IgnoredFile(name, "not_dicom", "no DICM preamble")
    except Exception as err:  # pydicom raises many exception types on damaged headers
        return IgnoredFile(name, "unreadable", f"{type(err).__name__}: {err}")


def _pixel_data_element(
    handle: BinaryIO, implicit_vr: bool, little_endian: bool
) -> tuple[int, str, int] | IgnoredFile:
    """Check the pixel data element where ``dcmread(stop_before_pixels=True)`` stopped.

    Returns:
        (offset of its value, VR or "" when implicit, value length), or an IgnoredFile
        (with an empty name) when the pixel data is absent or cut short. Encapsulated
        (compressed) pixel data has no length to check and passes.
    """
    start = handle.tell()
    header = handle.read(12)
    order = "<" if little_endian else ">"
    if len(header) < 8 or struct.unpack(order + "H", header[:2])[0] != PIXEL_DATA_GROUP:
        return IgnoredFile("", "no_pixel_data", "file ends before any pixel data")
    if implicit_vr:
        header_bytes, vr, (length,) = 8, "", struct.unpack(order + "I", header[4:8])
    elif len(header) == 12:
        header_bytes, vr = 12, header[4:6].decode("ascii", "replace")
        (length,) = struct.unpack(order + "I", header[8:12])
    else:
        return IgnoredFile("", "truncated", "file ends inside the pixel data header")
    if length != UNDEFINED_LENGTH:
        available = handle.seek(0, io.SEEK_END) - start - header_bytes
        if available < length:
            return IgnoredFile("", "truncated", f"{available} of {length} pixel data bytes")
    return start + header_bytes, vr, length


def _read_pixel_data(
    ds: pydicom.Dataset, handle: BinaryIO, offset: int, vr: str, length: int
) -> None:
    """Add the (checked) pixel data element at ``offset`` of ``handle`` to ``ds``."""
    if length == UNDEFINED_LENGTH:  # encapsulated: let pydicom parse the fragments
        handle.seek(0)
        ds[0x7FE00010] = pydicom.dcmread(handle)[0x7FE00010]
        return
    handle.seek(offset)
    if not vr:
        vr = "OW" if int(ds.get("BitsAllocated", 16) or 16) > 8 else "OB"
    ds.add_new(0x7FE00010, vr, handle.read(length))
