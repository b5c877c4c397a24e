"""The ingest settings (config ``ingest``): channel rules, protocols, station count, grid.

:class:`IngestSettings` is what the conversion needs besides the DICOM; its digest goes
into every participant's ``acquisition.json`` so that changed settings redo conversions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from myoflow.core.errors import MyoflowError
from myoflow.ingest.limits import DEFAULT_LIMITS, DeliveryLimits
from myoflow.ingest.series_rules import (
    DEFAULT_CHANNEL_RULES,
    DEFAULT_PROTOCOLS,
    ChannelRule,
    ProtocolRule,
)
from myoflow.ingest.stitch import (
    UKBB_SPACING_MM,
)


@dataclass(frozen=True)
class IngestSettings:
    """How series are recognised and onto which grid they are stitched (``ingest``).

    Attributes:
        channel_rules: rules naming each series' channel.
        protocols: known protocols and their number of stations.
        expected_stations: number of stations of a delivery that matches no protocol;
            None: such a delivery is excluded (``unknown_protocol``).
        spacing_mm: voxel size of the stitched grid (x, y, z) in mm, or None for the
            stations' own spacing ("native").
        limits: what a delivery may declare before it is refused unread
            (:mod:`myoflow.ingest.limits`); not part of the digest, since limits never
            change a converted participant's images.
    """

    channel_rules: tuple[ChannelRule, ...] = DEFAULT_CHANNEL_RULES
    protocols: tuple[ProtocolRule, ...] = DEFAULT_PROTOCOLS
    expected_stations: int | None = None
    spacing_mm: tuple[float, float, float] | None = UKBB_SPACING_MM
    limits: DeliveryLimits = DEFAULT_LIMITS

    @classmethod
    def from_config(cls, ingest: Mapping) -> IngestSettings:
        """Build settings from the ``ingest`` section of the configuration.

        Missing keys take the defaults (which ``config/config.yaml`` repeats).

        Raises:
            myoflow.ingest.series_rules.RuleError: a malformed rule.
            SettingsError: a malformed grid spacing or expected_stations.
            myoflow.ingest.limits.LimitsError: malformed limits.
        """
        defaults = cls().to_config()
        rules = ingest.get("channel_rules", defaults["channel_rules"])
        protocols = ingest.get("protocols", defaults["protocols"])
        spacing = ingest.get("grid", {}).get("spacing_mm", defaults["grid"]["spacing_mm"])
        expected = ingest.get("expected_stations", defaults["expected_stations"])
        if expected is not None and (
            isinstance(expected, bool) or not isinstance(expected, int) or expected < 1
        ):
            raise SettingsError(
                f"ingest.expected_stations must be null or a whole number >= 1, got {expected!r}"
            )
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
            expected_stations=expected,
            spacing_mm=None if spacing == "native" else tuple(float(v) for v in spacing),
            limits=DeliveryLimits.from_config(ingest.get("limits", {})),
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
                {
                    key: value
                    for key, value in (
                        ("name", p.name),
                        ("series_description", p.series_description),
                        ("protocol_name", p.protocol_name),
                        ("manufacturer", p.manufacturer),
                        ("stations", p.stations),
                    )
                    if value
                }
                for p in self.protocols
            ],
            "expected_stations": self.expected_stations,
            "grid": {"spacing_mm": "native" if self.spacing_mm is None else list(self.spacing_mm)},
            "limits": self.limits.to_config(),
        }

    def digest(self) -> str:
        """SHA-256 of the settings: a change redoes complete participants."""
        recipe = {k: v for k, v in self.to_config().items() if k != "limits"}
        text = json.dumps(recipe, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


class SettingsError(MyoflowError, ValueError):
    """The ``ingest`` configuration is malformed."""
