"""Which Dixon channel and which station each of a participant's MR series holds.

A participant's delivery holds one sub-series per channel (water, fat, in-phase,
opposed-phase) and station (table position): a series, or the part of one with one echo
and one image type (:class:`myoflow.ingest.image_types.SubSeries`; a Philips mDIXON
series can hold all four channels). The **channel** comes from configurable rules on
ImageType and SeriesDescription (:class:`myoflow.ingest.series_rules.ChannelRule`;
Siemens, Philips and GE Dixon naming, UK Biobank and NAKO ship as defaults); phase, real
and imaginary images and field maps are never a channel. The **station** comes from where
the series lies along the body axis (z), never from names, so every channel gets the same
set of stations. The number of stations is checked for every delivery: against the
matching **protocol** (:class:`~myoflow.ingest.series_rules.ProtocolRule`) or else
``ingest.expected_stations``; with neither, the delivery is excluded
(``unknown_protocol``) rather than accepted unchecked.

Everything here works on :class:`SeriesSummary` values (a few header fields per series),
so it is pure and fast to test; :func:`summarise` builds one from a series' datasets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom

from myoflow.core.errors import ParticipantExcluded
from myoflow.ingest.dicom_errors import DicomError
from myoflow.ingest.dicom_frames import frame_headers
from myoflow.ingest.image_class import MAGNITUDE, NOT_MAGNITUDE, image_class, image_values
from myoflow.ingest.image_types import SubSeries
from myoflow.ingest.series_rules import (
    CHANNELS,
    DEFAULT_CHANNEL_RULES,
    DEFAULT_PROTOCOLS,
    ChannelRule,
    ProtocolRule,
)

SORT_REASONS = {
    "no_dixon_series": "no MR series matches a channel rule (ingest.channel_rules)",
    "missing_channel": "a station lacks one of the four Dixon channels",
    "duplicate_series": "two series claim the same channel at the same station",
    "missing_station": "fewer stations than the protocol's complete acquisition",
    "extra_station": "more stations than the protocol's complete acquisition",
    "unknown_protocol": "no protocol matches and ingest.expected_stations is not set, so "
    "the number of stations cannot be checked",
}
"""Exclusion reasons raised by :func:`sort_series`."""

SAME_STATION_OVERLAP = 0.5
"""Two series are one station when their z ranges overlap by more than this fraction of
the shorter one. Neighbouring stations overlap by ~10 % (UK Biobank: 18 of 192 mm)."""


@dataclass(frozen=True)
class SeriesSummary:
    """What sorting needs to know about one series.

    Attributes:
        key: the sub-series key (:class:`~myoflow.ingest.image_types.SubSeries`: UID, echo,
            image-type class), or a plain SeriesInstanceUID; kept in memory only, reports
            use :attr:`series_hash`.
        description: SeriesDescription.
        image_type: ImageType values.
        z_range_mm: lowest and highest LPS z (mm) of any pixel centre of the series.
        n_files: number of files.
        part: image-type class; phase, real and imaginary images are never a channel.
        echo: echo number when the series holds several echoes, else None.
        protocol_name: ProtocolName.
        manufacturer: Manufacturer.
    """

    key: SubSeries | str
    description: str
    image_type: tuple[str, ...]
    z_range_mm: tuple[float, float]
    n_files: int
    part: str = MAGNITUDE
    echo: int | None = None
    protocol_name: str = ""
    manufacturer: str = ""

    @property
    def uid(self) -> str:
        """The SeriesInstanceUID."""
        return self.key.uid if isinstance(self.key, SubSeries) else self.key

    @property
    def series_hash(self) -> str:
        """First 16 hex digits of the SHA-256 of the SeriesInstanceUID (as the inventory)."""
        return hashlib.sha256(self.uid.encode("ascii", "replace")).hexdigest()[:16]


@dataclass(frozen=True)
class IgnoredSeries:
    """An MR (sub-)series that is not a Dixon channel.

    ``reason`` is not_dixon, ambiguous_channel or not_magnitude (phase, real or
    imaginary images, split from their series as dcm2niix does).
    """

    series_hash: str
    series_description: str
    image_type: str
    reason: str
    detail: str


@dataclass(frozen=True)
class SeriesPlan:
    """A participant's sorted Dixon series.

    Attributes:
        protocol: name of the matched :class:`ProtocolRule`, or "" when none matched.
        stations: per station, head first, channel -> (sub-)series key.
        ignored: MR series that are not Dixon channels.
    """

    protocol: str
    stations: tuple[dict[str, str], ...]
    ignored: tuple[IgnoredSeries, ...]


def summarise(key: SubSeries | str, datasets: Sequence[pydicom.Dataset]) -> SeriesSummary:
    """Summarise one (sub-)series from its datasets (headers suffice).

    ``z_range_mm`` covers the corners of every slice (every frame of an enhanced file),
    so it is right whatever the slice orientation; slices without usable geometry are
    left out of it (reading the series later refuses them with a reason). A sub-series
    of an enhanced file that mixes classes is described by its own frames' FrameType.
    """
    first = datasets[0]
    z_values = []
    image_type = tuple(image_values(first))
    for ds in datasets:
        if "PerFrameFunctionalGroupsSequence" in ds:
            try:
                frames = frame_headers(ds, "")
            except DicomError:
                continue
            if isinstance(key, SubSeries):
                frames = [frame for frame in frames if frame.part == key.part]
            if ds is first and frames:
                image_type = frames[0].image_type
            geometry = [(f.position, f.orientation, f.pixel_spacing, f.size) for f in frames]
        else:  # read directly: the full frame header costs ~0.2 ms a file
            geometry = [_plane_geometry(ds)]
        for position, orientation, pixel_spacing, (rows, columns) in geometry:
            if None in (position, orientation, pixel_spacing):
                continue
            between_rows, between_columns = pixel_spacing
            # Along the row direction (IOP[0:3]) lie the columns, and vice versa.
            extent = (columns - 1) * between_columns, (rows - 1) * between_rows
            corners = [0.0, orientation[2] * extent[0], orientation[5] * extent[1]]
            z_values += [position[2] + min(0, corners[1]) + min(0, corners[2])]
            z_values += [position[2] + max(0, corners[1]) + max(0, corners[2])]
    z_range = (min(z_values), max(z_values)) if z_values else (np.nan, np.nan)
    return SeriesSummary(
        key=key,
        description=_text(first, "SeriesDescription"),
        image_type=image_type,
        z_range_mm=(float(z_range[0]), float(z_range[1])),
        n_files=len(datasets),
        part=key.part if isinstance(key, SubSeries) else image_class(first),
        echo=key.echo if isinstance(key, SubSeries) else None,
        protocol_name=_text(first, "ProtocolName"),
        manufacturer=_text(first, "Manufacturer"),
    )


def _plane_geometry(ds: pydicom.Dataset) -> tuple:
    """(position, orientation, pixel spacing, (rows, columns)) of a single-frame image; a
    value that is missing or malformed is None."""
    try:
        position = [float(v) for v in ds.ImagePositionPatient]
        orientation = [float(v) for v in ds.ImageOrientationPatient]
        spacing = [float(v) for v in ds.PixelSpacing]
        size = (int(ds.Rows), int(ds.Columns))
    except (AttributeError, TypeError, ValueError):
        return None, None, None, (0, 0)
    if (len(position), len(orientation), len(spacing)) != (3, 6, 2):
        return None, None, None, (0, 0)
    return position, orientation, spacing, size


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def classify_channel(
    description: str, image_type: Sequence[str], rules: Sequence[ChannelRule]
) -> tuple[str, ...]:
    """The distinct channels whose rules match a series, in :data:`CHANNELS` order.

    One channel: the series holds it. None: not a Dixon series. Several: ambiguous.
    """
    matched = {rule.channel for rule in rules if rule.matches(description, image_type)}
    return tuple(channel for channel in CHANNELS if channel in matched)


def classify_series(
    series: Sequence[SeriesSummary], rules: Sequence[ChannelRule] = DEFAULT_CHANNEL_RULES
) -> tuple[list[tuple[str, SeriesSummary]], list[IgnoredSeries]]:
    """Split series into Dixon (channel, series) pairs and ignored series.

    A series is ignored as ``not_magnitude`` when it holds phase, real or imaginary
    images, as ``not_dixon`` when it matches no rule (or has no slice positions), and as
    ``ambiguous_channel`` when it matches rules of several channels.
    """
    dixon: list[tuple[str, SeriesSummary]] = []
    ignored = []
    for summary in series:
        channels = classify_channel(summary.description, summary.image_type, rules)
        if summary.part in NOT_MAGNITUDE:
            reason = "not_magnitude"
            detail = f"{summary.part} images: a Dixon channel is a magnitude image"
        elif len(channels) == 1 and not np.isnan(summary.z_range_mm[0]):
            dixon.append((channels[0], summary))
            continue
        elif len(channels) > 1:
            reason, detail = "ambiguous_channel", f"matches rules of {' and '.join(channels)}"
        elif channels:
            reason, detail = "not_dixon", f"a {channels[0]} series without slice positions"
        else:
            reason, detail = "not_dixon", "matches no channel rule"
        if summary.echo is not None:
            detail = f"echo {summary.echo}: {detail}"
        image_type = "\\".join(summary.image_type)
        ignored.append(
            IgnoredSeries(summary.series_hash, summary.description, image_type, reason, detail)
        )
    return dixon, ignored


def assign_stations(
    dixon: Sequence[tuple[str, SeriesSummary]],
    protocols: Sequence[ProtocolRule] = DEFAULT_PROTOCOLS,
    ignored: Sequence[IgnoredSeries] = (),
    expected_stations: int | None = None,
) -> SeriesPlan:
    """Group Dixon series into stations by position; check every station is complete.

    Series whose z ranges overlap by more than :data:`SAME_STATION_OVERLAP` of the
    shorter one are one station; stations are numbered from the head down (1 = highest
    z), as scanners acquire them. The protocol is the first whose conditions every
    series meets; it says how many stations there must be, else ``expected_stations``
    does; with neither the delivery is refused (``unknown_protocol``), never accepted
    unchecked.

    Raises:
        ParticipantExcluded: with a reason of :data:`SORT_REASONS`; the details of
            ``no_dixon_series`` and ``missing_channel`` list every ignored series.
    """
    if not dixon:
        raise ParticipantExcluded(
            "no_dixon_series",
            f"none of the {len(ignored)} MR series matches a channel rule; {ignored_text(ignored)}",
        )
    stations = _stations(list(dixon))
    protocol = next((p for p in protocols if p.matches([s for _, s in dixon])), None)
    _check_complete(stations, protocol, expected_stations, ignored)
    return SeriesPlan(
        protocol=protocol.name if protocol else "",
        stations=tuple({c: s.key for c, s in station} for station in stations),
        ignored=tuple(ignored),
    )


def sort_series(
    series: Sequence[SeriesSummary],
    rules: Sequence[ChannelRule] = DEFAULT_CHANNEL_RULES,
    protocols: Sequence[ProtocolRule] = DEFAULT_PROTOCOLS,
    expected_stations: int | None = None,
) -> SeriesPlan:
    """:func:`classify_series`, then :func:`assign_stations`.

    Raises:
        ParticipantExcluded: with a reason of :data:`SORT_REASONS`.
    """
    dixon, ignored = classify_series(series, rules)
    return assign_stations(dixon, protocols, ignored, expected_stations)


def ignored_text(ignored: Sequence[IgnoredSeries]) -> str:
    """Every ignored series with its description, ImageType and why, for messages."""
    if not ignored:
        return "no MR series was ignored"
    listed = "; ".join(
        f"{s.series_description!r} (ImageType {s.image_type or '(none)'}): {s.reason}, {s.detail}"
        for s in ignored
    )
    return f"{len(ignored)} ignored: {listed}"


def _stations(
    dixon: list[tuple[str, SeriesSummary]],
) -> list[list[tuple[str, SeriesSummary]]]:
    """Group (channel, series) by position along z, head first."""
    ordered = sorted(dixon, key=lambda cs: -sum(cs[1].z_range_mm))
    stations: list[list[tuple[str, SeriesSummary]]] = []
    for channel, summary in ordered:
        if stations and _same_station(stations[-1][0][1].z_range_mm, summary.z_range_mm):
            stations[-1].append((channel, summary))
        else:
            stations.append([(channel, summary)])
    return stations


def _same_station(a: tuple[float, float], b: tuple[float, float]) -> bool:
    overlap = min(a[1], b[1]) - max(a[0], b[0])
    shorter = min(a[1] - a[0], b[1] - b[0])
    return overlap > SAME_STATION_OVERLAP * shorter if shorter > 0 else overlap >= 0


def _check_complete(
    stations: list[list[tuple[str, SeriesSummary]]],
    protocol: ProtocolRule | None,
    expected_stations: int | None,
    ignored: Sequence[IgnoredSeries],
) -> None:
    for number, station in enumerate(stations, 1):
        channels = [channel for channel, _ in station]
        where = f"station {number} of {len(stations)} (z {_z_text(station)})"
        repeated = sorted({c for c in channels if channels.count(c) > 1})
        if repeated:
            raise ParticipantExcluded(
                "duplicate_series",
                f"{where} has {len(channels)} series: more than one {', '.join(repeated)}",
            )
        missing = [c for c in CHANNELS if c not in channels]
        if missing:
            raise ParticipantExcluded(
                "missing_channel",
                f"{where} has {', '.join(channels)} but no {', '.join(missing)}; "
                f"{ignored_text(ignored)}",
            )
    ranges = "; ".join(_z_text(station) for station in stations)
    if protocol is not None:
        expected, source = protocol.stations, f"protocol {protocol.name} has"
    elif expected_stations is not None:
        expected, source = expected_stations, "ingest.expected_stations is"
    else:
        descriptions = sorted({s.description for station in stations for _, s in station})
        raise ParticipantExcluded(
            "unknown_protocol",
            f"{len(stations)} stations found, but no protocol of ingest.protocols matches "
            f"the Dixon series ({', '.join(map(repr, descriptions))}) and "
            "ingest.expected_stations is not set: add a protocol or set expected_stations",
        )
    if len(stations) != expected:
        reason = "missing_station" if len(stations) < expected else "extra_station"
        raise ParticipantExcluded(
            reason,
            f"{len(stations)} stations found, {source} {expected} (z ranges, head first: {ranges})",
        )


def _z_text(station: list[tuple[str, SeriesSummary]]) -> str:
    low = min(s.z_range_mm[0] for _, s in station)
    high = max(s.z_range_mm[1] for _, s in station)
    return f"{low:.1f} to {high:.1f} mm"
