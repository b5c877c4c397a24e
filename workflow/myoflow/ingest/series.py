"""Which Dixon channel and which station each of a participant's MR series holds.

A participant's delivery holds one series per channel (water, fat, in-phase,
opposed-phase) and station (table position). The **channel** comes from configurable
rules on ImageType and SeriesDescription (:class:`ChannelRule`; UK Biobank and NAKO
naming ship in :data:`DEFAULT_CHANNEL_RULES`); the **station** from where the series
lies along the body axis (z), never from names, so every channel gets the same set of
stations. The **protocol** (:class:`ProtocolRule`) says how many stations a complete
acquisition has.

Everything here works on :class:`SeriesSummary` values (a few header fields per series),
so it is pure and fast to test; :func:`summarise` builds one from a series' datasets.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom

from myoflow.core.errors import MyoflowError, ParticipantExcluded

CHANNELS = ("water", "fat", "in", "opp")
"""Dixon channels: water, fat, in-phase (W + F) and opposed-phase (|W - F|)."""

SORT_REASONS = {
    "no_dixon_series": "no MR series matches a channel rule (ingest.channel_rules)",
    "missing_channel": "a station lacks one of the four Dixon channels",
    "duplicate_series": "two series claim the same channel at the same station",
    "missing_station": "fewer stations than the protocol's complete acquisition",
    "extra_station": "more stations than the protocol's complete acquisition",
}
"""Exclusion reasons raised by :func:`sort_series`."""

SAME_STATION_OVERLAP = 0.5
"""Two series are one station when their z ranges overlap by more than this fraction of
the shorter one. Neighbouring stations overlap by ~10 % (UK Biobank: 18 of 192 mm)."""


class RuleError(MyoflowError, ValueError):
    """A channel or protocol rule in the configuration is malformed."""


@dataclass(frozen=True)
class ChannelRule:
    """A series holds ``channel`` when every condition given here holds.

    Attributes:
        channel: one of :data:`CHANNELS`.
        image_type: a value that must be one of the series' ImageType values (compared
            case-insensitively), e.g. ``WATER`` for ``DERIVED\\PRIMARY\\DIXON\\WATER``.
        series_description: a regular expression searched in SeriesDescription
            (``re.search``, case-sensitive; write ``(?i)`` to ignore case).
    """

    channel: str
    image_type: str | None = None
    series_description: str | None = None
    _pattern: re.Pattern | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise RuleError(f"channel rule {self}: channel must be one of {', '.join(CHANNELS)}")
        if not self.image_type and not self.series_description:
            raise RuleError(f"channel rule {self}: give image_type, series_description or both")
        if self.series_description:
            object.__setattr__(self, "_pattern", _compile(self.series_description, self))

    def matches(self, description: str, image_type: Sequence[str]) -> bool:
        """Whether a series with this SeriesDescription and ImageType values matches."""
        if self.image_type and self.image_type.upper() not in {v.upper() for v in image_type}:
            return False
        return self._pattern is None or self._pattern.search(description) is not None

    @classmethod
    def from_config(cls, item: Mapping) -> ChannelRule:
        """Build a rule from one item of ``ingest.channel_rules``."""
        return _from_config(cls, item, "ingest.channel_rules")


def _from_config(cls: type, item: Mapping, where: str):
    try:
        return cls(**dict(item))
    except TypeError as err:  # a missing or unknown key
        raise RuleError(f"{where} item {dict(item)}: {err}") from err


def _compile(pattern: str, rule: object) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise RuleError(f"{rule}: series_description is not a regular expression: {err}") from err


@dataclass(frozen=True)
class ProtocolRule:
    """An acquisition protocol, recognised when every Dixon series' description matches.

    Attributes:
        name: short name, recorded in ``acquisition.json`` (e.g. ``ukbb``).
        series_description: regular expression searched in every Dixon series'
            SeriesDescription.
        stations: number of stations of a complete acquisition.
    """

    name: str
    series_description: str
    stations: int
    _pattern: re.Pattern | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pattern", _compile(self.series_description, self))
        if self.stations < 1:
            raise RuleError(f"protocol {self}: stations must be at least 1")

    def matches(self, descriptions: Sequence[str]) -> bool:
        """Whether every description matches this protocol."""
        return all(self._pattern.search(d) for d in descriptions)

    @classmethod
    def from_config(cls, item: Mapping) -> ProtocolRule:
        """Build a protocol from one item of ``ingest.protocols``."""
        return _from_config(cls, item, "ingest.protocols")


DEFAULT_CHANNEL_RULES = (
    # Siemens marks the Dixon maps in ImageType, whatever the protocol is called.
    ChannelRule("water", image_type="WATER"),
    ChannelRule("fat", image_type="FAT"),
    ChannelRule("in", image_type="IN_PHASE"),
    ChannelRule("opp", image_type="OPPOSED_PHASE"),
    ChannelRule("opp", image_type="OPP_PHASE"),
    # UK Biobank (Dixon_BH_17s_W, Dixon_noBH_F, ...) and NAKO (T1_VIBE_DIXON_tra_W, ...).
    ChannelRule("water", series_description="^(Dixon_(BH_17s|noBH)|T1_VIBE_DIXON_tra)_W$"),
    ChannelRule("fat", series_description="^(Dixon_(BH_17s|noBH)|T1_VIBE_DIXON_tra)_F$"),
    ChannelRule("in", series_description="^(Dixon_(BH_17s|noBH)|T1_VIBE_DIXON_tra)_in$"),
    ChannelRule("opp", series_description="^(Dixon_(BH_17s|noBH)|T1_VIBE_DIXON_tra)_opp$"),
)
"""Shipped channel rules; ``config/config.yaml`` (``ingest.channel_rules``) holds the same."""

DEFAULT_PROTOCOLS = (
    ProtocolRule("ukbb", "^Dixon_(BH_17s|noBH)_", 6),
    ProtocolRule("nako", "^T1_VIBE_DIXON_tra_", 4),
)
"""Shipped protocols; ``config/config.yaml`` (``ingest.protocols``) holds the same."""


@dataclass(frozen=True)
class SeriesSummary:
    """What sorting needs to know about one series.

    Attributes:
        key: the SeriesInstanceUID (kept in memory only; reports use :attr:`series_hash`).
        description: SeriesDescription.
        image_type: ImageType values.
        z_range_mm: lowest and highest LPS z (mm) of any pixel centre of the series.
        n_files: number of files.
    """

    key: str
    description: str
    image_type: tuple[str, ...]
    z_range_mm: tuple[float, float]
    n_files: int

    @property
    def series_hash(self) -> str:
        """First 16 hex digits of the SHA-256 of the SeriesInstanceUID (as the inventory)."""
        return hashlib.sha256(self.key.encode("ascii", "replace")).hexdigest()[:16]


@dataclass(frozen=True)
class IgnoredSeries:
    """An MR series that is not a Dixon channel; ``reason`` is not_dixon or ambiguous."""

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
        stations: per station, head first, channel -> series key.
        ignored: MR series that are not Dixon channels.
    """

    protocol: str
    stations: tuple[dict[str, str], ...]
    ignored: tuple[IgnoredSeries, ...]


def summarise(key: str, datasets: Sequence[pydicom.Dataset]) -> SeriesSummary:
    """Summarise one series from its datasets (headers suffice).

    ``z_range_mm`` covers the corners of every slice, so it is right whatever the slice
    orientation; slices without usable geometry are left out of it (reading the
    series later refuses them with a reason).
    """
    first = datasets[0]
    z_values = []
    for ds in datasets:
        try:
            position = np.array([float(v) for v in ds.ImagePositionPatient])
            orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
            between_rows, between_columns = (float(v) for v in ds.PixelSpacing)
            # Along the row direction (IOP[0:3]) lie the columns, and vice versa.
            extent = (int(ds.Columns) - 1) * between_columns, (int(ds.Rows) - 1) * between_rows
        except (AttributeError, TypeError, ValueError):
            continue
        corners = [0.0, orientation[2] * extent[0], orientation[5] * extent[1]]
        z_values += [position[2] + min(0, corners[1]) + min(0, corners[2])]
        z_values += [position[2] + max(0, corners[1]) + max(0, corners[2])]
    z_range = (min(z_values), max(z_values)) if z_values else (np.nan, np.nan)
    return SeriesSummary(
        key=key,
        description=str(first.get("SeriesDescription", "") or "").strip(),
        image_type=tuple(str(v).strip() for v in _values(first.get("ImageType"))),
        z_range_mm=(float(z_range[0]), float(z_range[1])),
        n_files=len(datasets),
    )


def _values(value: object) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return value.split("\\")
    return list(value)  # type: ignore[call-overload]


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

    A series is ignored as ``not_dixon`` when it matches no rule (or has no slice
    positions), and as ``ambiguous_channel`` when it matches rules of several channels.
    """
    dixon: list[tuple[str, SeriesSummary]] = []
    ignored = []
    for summary in series:
        channels = classify_channel(summary.description, summary.image_type, rules)
        if len(channels) == 1 and not np.isnan(summary.z_range_mm[0]):
            dixon.append((channels[0], summary))
            continue
        if len(channels) > 1:
            reason, detail = "ambiguous_channel", f"matches rules of {' and '.join(channels)}"
        elif channels:
            reason, detail = "not_dixon", f"a {channels[0]} series without slice positions"
        else:
            reason, detail = "not_dixon", "matches no channel rule"
        image_type = "\\".join(summary.image_type)
        ignored.append(
            IgnoredSeries(summary.series_hash, summary.description, image_type, reason, detail)
        )
    return dixon, ignored


def assign_stations(
    dixon: Sequence[tuple[str, SeriesSummary]],
    protocols: Sequence[ProtocolRule] = DEFAULT_PROTOCOLS,
    ignored: Sequence[IgnoredSeries] = (),
) -> SeriesPlan:
    """Group Dixon series into stations by position; check every station is complete.

    Series whose z ranges overlap by more than :data:`SAME_STATION_OVERLAP` of the
    shorter one are one station; stations are numbered from the head down (1 = highest
    z), as scanners acquire them. The protocol is the first whose description pattern
    every series matches; it says how many stations there must be.

    Raises:
        ParticipantExcluded: with a reason of :data:`SORT_REASONS`.
    """
    if not dixon:
        raise ParticipantExcluded(
            "no_dixon_series", f"none of the {len(ignored)} MR series matches a channel rule"
        )
    stations = _stations(list(dixon))
    protocol = next((p for p in protocols if p.matches([s.description for _, s in dixon])), None)
    _check_complete(stations, protocol)
    return SeriesPlan(
        protocol=protocol.name if protocol else "",
        stations=tuple({c: s.key for c, s in station} for station in stations),
        ignored=tuple(ignored),
    )


def sort_series(
    series: Sequence[SeriesSummary],
    rules: Sequence[ChannelRule] = DEFAULT_CHANNEL_RULES,
    protocols: Sequence[ProtocolRule] = DEFAULT_PROTOCOLS,
) -> SeriesPlan:
    """:func:`classify_series`, then :func:`assign_stations`.

    Raises:
        ParticipantExcluded: with a reason of :data:`SORT_REASONS`.
    """
    dixon, ignored = classify_series(series, rules)
    return assign_stations(dixon, protocols, ignored)


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
    stations: list[list[tuple[str, SeriesSummary]]], protocol: ProtocolRule | None
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
                f"{where} has {', '.join(channels)} but no {', '.join(missing)}",
            )
    if protocol is not None and len(stations) != protocol.stations:
        reason = "missing_station" if len(stations) < protocol.stations else "extra_station"
        ranges = "; ".join(_z_text(station) for station in stations)
        raise ParticipantExcluded(
            reason,
            f"{len(stations)} stations found, protocol {protocol.name} has "
            f"{protocol.stations} (z ranges, head first: {ranges})",
        )


def _z_text(station: list[tuple[str, SeriesSummary]]) -> str:
    low = min(s.z_range_mm[0] for _, s in station)
    high = max(s.z_range_mm[1] for _, s in station)
    return f"{low:.1f} to {high:.1f} mm"
