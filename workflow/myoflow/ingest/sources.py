"""The files of one participant's DICOM delivery, from a folder or a zip, and reading them.

Every stage that reads a participant's DICOM (inventory, conversion) iterates the same
members in the same order and reads each with :func:`read_member`, so a folder and the
zip of that folder give the same results, and every stage agrees on which files are
not DICOM, not MR, or damaged. A member is a relative POSIX name and a function that
opens it for reading; zip members are read into memory one at a time, when the
iteration reaches them.

A delivery beyond its limits (:mod:`myoflow.ingest.limits`) excludes the participant before
anything large is read or allocated: the folder listing or the zip's central directory
is checked before the first member is yielded, a zip member is read with a bounded
reader, and :func:`read_member` checks the image each MR header declares before its pixel
data is read. Each member's opener carries its delivery's limits and running totals
(:class:`MemberOpener`), so every stage applies the same limits.
"""

from __future__ import annotations

import copy
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
from myoflow.ingest.limits import (
    DEFAULT_LIMITS,
    LIMIT_REASONS,
    DeliveryLimits,
    DeliveryTally,
    check_listing,
)

Member = tuple[str, Callable[[], BinaryIO]]
"""A file of a participant's DICOM: its relative name and a function opening it."""

SOURCE_REASONS = {
    "dicom_missing": "the DICOM folder or zip named in the sheet does not exist",
    "dicom_unreadable": "the DICOM folder or zip exists but cannot be read",
    "zip_corrupt": "the zip archive is damaged or not a zip archive",
    **LIMIT_REASONS,
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


@dataclass(frozen=True)
class MemberOpener:
    """Opens one member of a delivery; carries the delivery's limits and running totals."""

    opener: Callable[[], BinaryIO]
    tally: DeliveryTally

    def __call__(self) -> BinaryIO:
        return self.opener()


def participant_members(
    dicom_path: str | os.PathLike[str], limits: DeliveryLimits = DEFAULT_LIMITS
) -> tuple[str, Iterator[Member]]:
    """Return ``("folder" | "zip", members)`` for a participant's DICOM folder or zip.

    The folder is listed, or the zip opened, only when iteration starts; errors then
    surface from the iteration. Reading the members with :func:`read_member` applies
    ``limits`` to their headers too.

    Raises:
        ParticipantExcluded: the path does not exist (``dicom_missing``) or is neither a
            folder nor a file (``dicom_unreadable``); while iterating, also
            ``dicom_unreadable``, ``zip_corrupt`` and the reasons of a delivery beyond
            ``limits`` (see :data:`SOURCE_REASONS`).
    """
    path = Path(dicom_path)
    if path.is_dir():
        return "folder", folder_members(path, limits)
    if path.is_file():
        return "zip", zip_members(path, limits)
    if path.exists():
        raise ParticipantExcluded("dicom_unreadable", f"{path} is neither a folder nor a file")
    raise ParticipantExcluded("dicom_missing", f"no folder or zip at {path}")


def folder_members(root: Path, limits: DeliveryLimits = DEFAULT_LIMITS) -> Iterator[Member]:
    """Yield (relative POSIX name, opener) for every file under ``root``, sorted by name.

    The listing (count, sizes) is checked against ``limits`` before the first file is
    yielded; listing stops as soon as it finds more than ``limits.max_files`` files.
    """

    def fail(err: OSError) -> None:
        raise ParticipantExcluded("dicom_unreadable", f"cannot list {err.filename}: {err.strerror}")

    paths: list[Path] = []
    for folder, _, files in os.walk(root, onerror=fail):
        paths.extend(Path(folder, name) for name in files)
        if len(paths) > limits.max_files:
            raise ParticipantExcluded(
                "delivery_too_large", f"{root} holds more than {limits.max_files} files"
            )
    named = sorted((path.relative_to(root).as_posix(), path) for path in paths)
    check_listing(str(root), ((name, _size(path), None) for name, path in named), limits)
    tally = DeliveryTally(limits)
    for name, path in named:
        yield name, MemberOpener(lambda path=path: path.open("rb"), tally)


def _size(path: Path) -> int:
    """A file's size; 0 when it cannot be read (reading it then reports the file)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def zip_members(archive: Path, limits: DeliveryLimits = DEFAULT_LIMITS) -> Iterator[Member]:
    """Yield (member name, opener) for every file member of a zip, sorted by name.

    The central directory (count, declared sizes, compression ratios) is checked against
    ``limits`` before the first member is read, and each member is read with a bounded
    reader (:func:`_read_zip_member`). The entry count the archive's end record declares
    is checked even before that, since zipfile holds the whole central directory in
    memory (about 0.5 KB per entry) once it opens the archive.
    """
    try:
        entries = zip_entry_count(archive)
        if entries is not None and entries > 2 * limits.max_files:
            raise ParticipantExcluded(
                "delivery_too_large",
                f"{archive} declares {entries} entries, more than twice the limit of "
                f"{limits.max_files} files",
            )
        with zipfile.ZipFile(archive) as zf:
            infos = sorted((i for i in zf.infolist() if not i.is_dir()), key=lambda i: i.filename)
            listing = ((i.filename, i.file_size, i.compress_size) for i in infos)
            check_listing(str(archive), listing, limits)
            tally = DeliveryTally(limits)
            for info in infos:
                data = _read_zip_member(zf, info, archive)
                yield info.filename, MemberOpener(lambda data=data: io.BytesIO(data), tally)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise ParticipantExcluded("zip_corrupt", f"{archive}: {err}") from err
    except OSError as err:
        raise ParticipantExcluded("dicom_unreadable", f"{archive}: {err.strerror or err}") from err


_EOCD = b"PK\x05\x06"  # end of central directory record
_ZIP64_LOCATOR = b"PK\x06\x07"
_EOCD_SEARCH = 22 + 0xFFFF  # the record, and the longest comment it may carry


def zip_entry_count(archive: Path) -> int | None:
    """The number of entries (files and folders) a zip's end record declares, read from
    the archive's last 64 KiB without parsing its central directory; None when there is
    no end record (zipfile then reports the archive as corrupt)."""
    with open(archive, "rb") as stream:
        stream.seek(0, os.SEEK_END)
        size = stream.tell()
        stream.seek(max(0, size - _EOCD_SEARCH))
        tail = stream.read()
        end = tail.rfind(_EOCD)
        if end < 0 or len(tail) < end + 22:
            return None
        count = int.from_bytes(tail[end + 10 : end + 12], "little")
        locator = end - 20
        if count != 0xFFFF or locator < 0 or tail[locator : locator + 4] != _ZIP64_LOCATOR:
            return count
        # ZIP64: the locator gives the offset of the ZIP64 end record, which holds the count.
        stream.seek(int.from_bytes(tail[locator + 8 : locator + 16], "little") + 32)
        return int.from_bytes(stream.read(8), "little")


_OVERSHOOT = 1 << 20
"""Bytes a bounded zip read lets zipfile decompress beyond the declared size (it asks for
at most 4 KiB more than requested)."""


def _read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path) -> bytes:
    """Read a member, asking for at most one byte more than its declared size.

    ``zf.read`` decompresses a whole stream in one call before cutting it to the declared
    size (a 1000-byte entry of a 300 MiB stream costs 300 MiB); this reader asks for the
    declared size plus one byte, so a member expanding beyond what its entry declares
    costs a few KiB and is refused.

    Raises:
        ParticipantExcluded: ``zip_bomb``: the member expands beyond its declared size.
    """
    declared = info.file_size
    # zipfile cuts a member at its file_size and then checks its CRC, which a lying member
    # fails (zip_corrupt); a larger file_size lets it hand over the excess bytes instead.
    # It decompresses at most one chunk beyond what is asked, so memory stays bounded.
    probe = copy.copy(info)
    probe.file_size = declared + _OVERSHOOT
    with zf.open(probe) as stream:
        data = stream.read(declared + 1)
    if len(data) > declared:
        raise ParticipantExcluded(
            "zip_bomb",
            f"{archive}: {info.filename} expands to more than the {declared} bytes its entry "
            "declares",
        )
    return data


def read_member(
    name: str,
    open_member: Callable[[], BinaryIO],
    *,
    pixels: bool = False,
    limits: DeliveryLimits = DEFAULT_LIMITS,
) -> pydicom.Dataset | IgnoredFile:
    """Read one MR DICOM file; return its dataset, or why it is passed over.

    A file is passed over when it is not DICOM, empty, not MR (a Modality other than
    MR; one without Modality counts as not MR only if its pixel data is whole), has no
    SeriesInstanceUID, cannot be parsed, or its pixel data is missing or cut short:
    pydicom reads a truncated file without complaint, even one cut inside a UID, so the
    rest of the file must hold the whole pixel data element.

    The image an MR header declares is checked against the delivery's limits before its
    pixel data is read, even when ``pixels`` is false, so every stage refuses the same
    participants: the limits and running totals of ``open_member`` when it is a
    :class:`MemberOpener` (as :func:`participant_members` yields), else ``limits``
    (without totals over files).

    Args:
        name: the member's relative name, for the report.
        open_member: opens the member for binary reading.
        pixels: also read the pixel data (otherwise the dataset stops before it).
        limits: the limits when ``open_member`` carries none.

    Raises:
        ParticipantExcluded: ``image_too_large`` or ``delivery_too_large``
            (:data:`~myoflow.ingest.limits.LIMIT_REASONS`).
    """
    tally = getattr(open_member, "tally", None)
    if not isinstance(tally, DeliveryTally):
        tally = DeliveryTally(limits)
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
            tally.add_image(name, ds)  # before any pixel data is read or decoded
            if pixels:
                _read_pixel_data(ds, handle, *element)
            return ds
    except InvalidDicomError:
        return IgnoredFile(name, "not_dicom", "no DICM preamble")
    except ParticipantExcluded:
        raise
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
