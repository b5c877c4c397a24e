"""The rules that name a Dixon series' channel and a delivery's protocol.

A :class:`ChannelRule` says which channel (water, fat, in-phase, opposed-phase) a series
holds, from its ImageType and SeriesDescription; a :class:`ProtocolRule` recognises an
acquisition protocol (and so its number of stations) from SeriesDescription, ProtocolName
or Manufacturer. Siemens, Philips and GE Dixon naming, UK Biobank and NAKO ship as
:data:`DEFAULT_CHANNEL_RULES` and :data:`DEFAULT_PROTOCOLS`; ``ingest.channel_rules``
and ``ingest.protocols`` in the configuration replace them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from myoflow.core.errors import MyoflowError

if TYPE_CHECKING:
    from myoflow.ingest.series import SeriesSummary

CHANNELS = ("water", "fat", "in", "opp")
"""Dixon channels: water, fat, in-phase (W + F) and opposed-phase (|W - F|)."""


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


def _compile(pattern: str, rule: object, key: str = "series_description") -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise RuleError(f"{rule}: {key} is not a regular expression: {err}") from err


_SUMMARY_FIELD = {
    "series_description": "description",
    "protocol_name": "protocol_name",
    "manufacturer": "manufacturer",
}


@dataclass(frozen=True)
class ProtocolRule:
    """An acquisition protocol, recognised when every Dixon series meets every condition.

    Attributes:
        name: short name, recorded in ``acquisition.json`` (e.g. ``ukbb``).
        series_description: regular expression searched in every Dixon series'
            SeriesDescription.
        stations: number of stations of a complete acquisition.
        protocol_name: regular expression searched in every Dixon series' ProtocolName.
        manufacturer: regular expression searched in every Dixon series' Manufacturer.
    """

    name: str
    series_description: str | None = None
    stations: int | None = None
    protocol_name: str | None = None
    manufacturer: str | None = None
    _patterns: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        conditions = {
            key: getattr(self, key)
            for key in ("series_description", "protocol_name", "manufacturer")
            if getattr(self, key)
        }
        if not conditions:
            raise RuleError(
                f"protocol {self}: give series_description, protocol_name or manufacturer"
            )
        patterns = tuple((key, _compile(value, self, key)) for key, value in conditions.items())
        object.__setattr__(self, "_patterns", patterns)
        if isinstance(self.stations, bool) or not isinstance(self.stations, int):
            raise RuleError(f"protocol {self}: stations must be a whole number")
        if self.stations < 1:
            raise RuleError(f"protocol {self}: stations must be at least 1")

    def matches(self, series: Sequence[SeriesSummary]) -> bool:
        """Whether every series meets every condition of this protocol."""
        return all(
            pattern.search(getattr(summary, _SUMMARY_FIELD[key]))
            for summary in series
            for key, pattern in self._patterns
        )

    @classmethod
    def from_config(cls, item: Mapping) -> ProtocolRule:
        """Build a protocol from one item of ``ingest.protocols``."""
        return _from_config(cls, item, "ingest.protocols")


_GE_PRODUCTS = "(LAVA|FLEX|IDEAL|DIXON)"

DEFAULT_CHANNEL_RULES = (
    # The Dixon maps marked in ImageType, whatever the protocol is called: Siemens
    # (DERIVED\PRIMARY\DIXON\WATER, ...\FAT, ...\IN_PHASE, ...\OPP_PHASE or OPPOSED_PHASE),
    # GE LAVA-Flex / IDEAL (...\WATER, ...\FAT, ...\IN_PHASE, ...\OUT_PHASE) and
    # Philips mDIXON (DERIVED\PRIMARY\W\W\DERIVED, ...\F\F..., ...\IP..., ...\OP...).
    ChannelRule("water", image_type="WATER"),
    ChannelRule("fat", image_type="FAT"),
    ChannelRule("in", image_type="IN_PHASE"),
    ChannelRule("opp", image_type="OPPOSED_PHASE"),
    ChannelRule("opp", image_type="OPP_PHASE"),
    ChannelRule("opp", image_type="OUT_PHASE"),
    ChannelRule("water", image_type="W"),
    ChannelRule("fat", image_type="F"),
    ChannelRule("in", image_type="IP"),
    ChannelRule("opp", image_type="OP"),
    # UK Biobank (Dixon_BH_17s_W, Dixon_noBH_F, ...) and NAKO (T1_VIBE_DIXON_tra_W, ...).
    ChannelRule("water", series_description="^(Dixon_(BH_17s|noBH)|T1_VIBE_DIXON_tra)_W$"),
    ChannelRule("fat", series_description="^(Dixon_(BH_17s|noBH)|T1_VIBE_DIXON_tra)_F$"),
    ChannelRule("in", series_description="^(Dixon_(BH_17s|noBH)|T1_VIBE_DIXON_tra)_in$"),
    ChannelRule("opp", series_description="^(Dixon_(BH_17s|noBH)|T1_VIBE_DIXON_tra)_opp$"),
    # Siemens Dixon and VIBE Dixon: syngo appends _W, _F, _in, _opp to the protocol name.
    ChannelRule("water", series_description="(?i)dixon.*_W$"),
    ChannelRule("fat", series_description="(?i)dixon.*_F$"),
    ChannelRule("in", series_description="(?i)dixon.*_in$"),
    ChannelRule("opp", series_description="(?i)dixon.*_opp$"),
    # Philips mDIXON: mDIXON W, mDIXON_F, WIP mDIXON IP, T1_mDIXON_OP ...
    ChannelRule("water", series_description="(?i)m-?dixon.*[ _-](W|WATER)$"),
    ChannelRule("fat", series_description="(?i)m-?dixon.*[ _-](F|FAT)$"),
    ChannelRule("in", series_description="(?i)m-?dixon.*[ _-](IP|IN[ _-]?PHASE)$"),
    ChannelRule("opp", series_description="(?i)m-?dixon.*[ _-](OP|OUT[ _-]?PHASE)$"),
    # GE LAVA-Flex, IDEAL, Flex: the recon type prefixes the description
    # (WATER: AX LAVA-FLEX, FAT: ..., InPhase: ..., OutPhase: ...).
    ChannelRule("water", series_description=f"(?i)^WATER:.*{_GE_PRODUCTS}"),
    ChannelRule("fat", series_description=f"(?i)^FAT:.*{_GE_PRODUCTS}"),
    ChannelRule("in", series_description=f"(?i)^IN[ _-]?PHASE:.*{_GE_PRODUCTS}"),
    ChannelRule("opp", series_description=f"(?i)^OUT[ _-]?PHASE:.*{_GE_PRODUCTS}"),
)
"""Shipped channel rules; ``config/config.yaml`` (``ingest.channel_rules``) holds the same."""

DEFAULT_PROTOCOLS = (
    ProtocolRule("ukbb", "^Dixon_(BH_17s|noBH)_", 6),
    ProtocolRule("nako", "^T1_VIBE_DIXON_tra_", 4),
)
"""Shipped protocols; ``config/config.yaml`` (``ingest.protocols``) holds the same."""
