"""The ingest settings (config ``ingest``): channel rules, protocols and the stitched grid.

:class:`IngestSettings` is what the conversion needs besides the DICOM; its digest goes
into every participant's ``acquisition.json`` so that changed settings redo conversions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from myoflow.core.errors import MyoflowError
from myoflow.ingest.series import (
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
        spacing_mm: voxel size of the stitched grid (x, y, z) in mm, or None for the
            stations' own spacing ("native").
    """

    channel_rules: tuple[ChannelRule, ...] = DEFAULT_CHANNEL_RULES
    protocols: tuple[ProtocolRule, ...] = DEFAULT_PROTOCOLS
    spacing_mm: tuple[float, float, float] | None = UKBB_SPACING_MM

    @classmethod
    def from_config(cls, ingest: Mapping) -> IngestSettings:
        """Build settings from the ``ingest`` section of the configuration.

        Missing keys take the defaults (which ``config/config.yaml`` repeats).

        Raises:
            myoflow.ingest.series.RuleError: a malformed rule.
            SettingsError: a malformed grid spacing.
        """
        defaults = cls().to_config()
        rules = ingest.get("channel_rules", defaults["channel_rules"])
        protocols = ingest.get("protocols", defaults["protocols"])
        spacing = ingest.get("grid", {}).get("spacing_mm", defaults["grid"]["spacing_mm"])
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
            spacing_mm=None if spacing == "native" else tuple(float(v) for v in spacing),
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
                {"name": p.name, "series_description": p.series_description, "stations": p.stations}
                for p in self.protocols
            ],
            "grid": {"spacing_mm": "native" if self.spacing_mm is None else list(self.spacing_mm)},
        }

    def digest(self) -> str:
        """SHA-256 of the settings: a change redoes complete participants."""
        text = json.dumps(self.to_config(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


class SettingsError(MyoflowError, ValueError):
    """The ``ingest`` configuration is malformed."""
