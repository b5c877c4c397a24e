"""Limits on what one participant's delivery may make a stage read or allocate.

A hostile or broken delivery must cost nothing: a zip member that expands to gigabytes (a
zip bomb), a folder holding a huge file or millions of files, or a DICOM header whose
Rows x Columns x NumberOfFrames would make a decoder allocate terabytes is refused with
its own reason (:data:`LIMIT_REASONS`) before anything large is read or allocated, so one
participant cannot exhaust a shard job's memory; the shard goes on with the others.

Everything is checked from what the delivery declares: the folder listing (file sizes)
or the zip's central directory (declared and compressed sizes) before any file is read,
and each DICOM header before its pixel data is read or decoded. A zip member is read with
a bounded reader, so one that expands beyond what it declares is refused as well
(:mod:`myoflow.ingest.sources`).

The defaults (:class:`DeliveryLimits`) leave a wide margin over real biobank deliveries:
a UK Biobank Dixon delivery is ~2,000 files of ~0.1 MB (~0.2 GB), one image 224 x 174
16-bit values (76 KiB); an enhanced multi-frame station is a few tens of MB.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pydicom
from pydicom.multival import MultiValue

from myoflow.core.errors import MyoflowError, ParticipantExcluded

MIB = 1 << 20

LIMIT_REASONS = {
    "file_too_large": "a file of the delivery, or a zip member by its declared size, is larger "
    "than ingest.limits.max_file_mib",
    "delivery_too_large": "the delivery holds more files than ingest.limits.max_files, or more "
    "bytes (uncompressed, or of pixel data its MR headers declare) than "
    "ingest.limits.max_delivery_mib",
    "zip_bomb": "a zip member expands more than ingest.limits.max_compression_ratio times, or "
    "to more bytes than its entry in the zip declares",
    "image_too_large": "an MR DICOM header declares more pixel data (Rows x Columns x frames x "
    "samples x bytes per sample) than ingest.limits.max_image_mib",
}
"""Exclusion reasons of a delivery beyond its limits (part of ``SOURCE_REASONS``)."""

RATIO_FLOOR_BYTES = MIB
"""Zip members declaring at most this many bytes are not checked for their compression
ratio: small files of zeros compress well and cost nothing."""


@dataclass(frozen=True)
class DeliveryLimits:
    """What one participant's delivery may hold (config ``ingest.limits``; sizes in bytes).

    Attributes:
        max_file_bytes: one file, or one zip member uncompressed (declared and actual).
        max_delivery_bytes: all files of the delivery together (uncompressed), and
            separately all pixel data that its MR headers declare.
        max_files: files in the delivery (folder or zip).
        max_compression_ratio: uncompressed / compressed size of a zip member declaring
            more than :data:`RATIO_FLOOR_BYTES`.
        max_image_bytes: the pixel data one DICOM header declares once decoded: Rows x
            Columns x NumberOfFrames x SamplesPerPixel x bytes per sample.
    """

    max_file_bytes: int = 256 * MIB
    max_delivery_bytes: int = 2048 * MIB
    max_files: int = 100_000
    max_compression_ratio: float = 100.0
    max_image_bytes: int = 256 * MIB

    @classmethod
    def from_config(cls, limits: Mapping) -> DeliveryLimits:
        """Build limits from the ``ingest.limits`` section; missing keys take the defaults.

        Raises:
            LimitsError: an unknown key, or a value that is not a positive number (an
                integer for ``max_files``).
        """
        defaults = cls().to_config()
        unknown = sorted(set(limits) - set(defaults))
        if unknown:
            raise LimitsError(f"ingest.limits has unknown key(s) {', '.join(unknown)}")
        values = {**defaults, **limits}
        for key, value in values.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or value <= 0 or (key == "max_files" and not isinstance(value, int)):
                kind = "a positive integer" if key == "max_files" else "a positive number"
                raise LimitsError(f"ingest.limits.{key} must be {kind}, got {value!r}")
        return cls(
            max_file_bytes=int(values["max_file_mib"] * MIB),
            max_delivery_bytes=int(values["max_delivery_mib"] * MIB),
            max_files=values["max_files"],
            max_compression_ratio=float(values["max_compression_ratio"]),
            max_image_bytes=int(values["max_image_mib"] * MIB),
        )

    def to_config(self) -> dict:
        """The limits as an ``ingest.limits`` configuration section."""
        return {
            "max_file_mib": _mib(self.max_file_bytes),
            "max_delivery_mib": _mib(self.max_delivery_bytes),
            "max_files": self.max_files,
            "max_compression_ratio": self.max_compression_ratio,
            "max_image_mib": _mib(self.max_image_bytes),
        }


DEFAULT_LIMITS = DeliveryLimits()


class LimitsError(MyoflowError, ValueError):
    """The ``ingest.limits`` configuration is malformed."""


def _mib(n_bytes: int) -> int | float:
    mib = n_bytes / MIB
    return int(mib) if mib.is_integer() else mib


def check_listing(
    source: str,
    entries: Iterable[tuple[str, int, int | None]],
    limits: DeliveryLimits = DEFAULT_LIMITS,
) -> None:
    """Check a delivery's listing before any file is read.

    Args:
        source: the folder or zip, for messages.
        entries: (name, size, compressed size or None for a plain file) of every file;
            for a zip, the sizes its central directory declares.
        limits: the limits.

    Raises:
        ParticipantExcluded: ``file_too_large``, ``zip_bomb`` or ``delivery_too_large``.
    """
    total = count = 0
    for name, size, compressed in entries:
        count += 1
        if count > limits.max_files:
            raise ParticipantExcluded(
                "delivery_too_large", f"{source} holds more than {limits.max_files} files"
            )
        if size > limits.max_file_bytes:
            declares = "is" if compressed is None else "declares"
            raise ParticipantExcluded(
                "file_too_large",
                f"{source}: {name} {declares} {size} bytes, more than the limit of "
                f"{limits.max_file_bytes}",
            )
        if compressed is not None and size > RATIO_FLOOR_BYTES:
            ratio = size / max(compressed, 1)
            if ratio > limits.max_compression_ratio:
                raise ParticipantExcluded(
                    "zip_bomb",
                    f"{source}: {name} expands {compressed} to {size} bytes ({ratio:.0f} "
                    f"times), more than the limit of {limits.max_compression_ratio:g} times",
                )
        total += size
    if total > limits.max_delivery_bytes:
        raise ParticipantExcluded(
            "delivery_too_large",
            f"{source}: its {count} files hold {total} bytes, more than the limit of "
            f"{limits.max_delivery_bytes}",
        )


def image_bytes(ds: pydicom.Dataset) -> int:
    """The bytes the pixel data of ``ds`` takes decoded, as its header declares them.

    Rows x Columns x NumberOfFrames x SamplesPerPixel x ceil(BitsAllocated / 8); a header
    without Rows or Columns declares no image (0). Malformed counts read as 1, a missing
    BitsAllocated as 16.
    """
    rows, columns = _count(ds.get("Rows"), 0), _count(ds.get("Columns"), 0)
    frames, samples = _count(ds.get("NumberOfFrames"), 1), _count(ds.get("SamplesPerPixel"), 1)
    bits = _count(ds.get("BitsAllocated"), 16)
    return rows * columns * max(frames, 1) * max(samples, 1) * max(math.ceil(bits / 8), 1)


def _count(value: object, default: int) -> int:
    """A header count as a non-negative int (its first value if several)."""
    if value is None or value == "":
        return default
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if len(value) else default
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default
    return number if number >= 0 else default


def check_image(name: str, ds: pydicom.Dataset, limits: DeliveryLimits = DEFAULT_LIMITS) -> int:
    """Refuse a DICOM header declaring an absurd image; return its decoded bytes.

    Call it on the header (``dcmread(..., stop_before_pixels=True)``) before the pixel
    data is read or decoded.

    Raises:
        ParticipantExcluded: ``image_too_large``.
    """
    n_bytes = image_bytes(ds)
    if n_bytes > limits.max_image_bytes:
        rows, columns = _count(ds.get("Rows"), 0), _count(ds.get("Columns"), 0)
        frames = max(_count(ds.get("NumberOfFrames"), 1), 1)
        raise ParticipantExcluded(
            "image_too_large",
            f"{name}: its header declares {rows} rows x {columns} columns x {frames} frames, "
            f"{n_bytes} bytes of pixel data, more than the limit of {limits.max_image_bytes}",
        )
    return n_bytes


@dataclass
class DeliveryTally:
    """Running totals over one delivery's files, against its limits."""

    limits: DeliveryLimits = DEFAULT_LIMITS
    image_bytes: int = 0

    def add_image(self, name: str, ds: pydicom.Dataset) -> None:
        """Check one MR header (:func:`check_image`) and add its pixel data to the total.

        Raises:
            ParticipantExcluded: ``image_too_large``, or ``delivery_too_large`` once the
                pixel data declared by the delivery's MR files passes the delivery limit.
        """
        self.image_bytes += check_image(name, ds, self.limits)
        if self.image_bytes > self.limits.max_delivery_bytes:
            raise ParticipantExcluded(
                "delivery_too_large",
                f"up to {name}, its MR headers declare {self.image_bytes} bytes of pixel "
                f"data, more than the limit of {self.limits.max_delivery_bytes}",
            )
