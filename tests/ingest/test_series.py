"""Sorting series into Dixon channels and stations, for UK Biobank, NAKO and user naming."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from pydicom.dataset import Dataset

from myoflow.core.errors import ParticipantExcluded
from myoflow.ingest.series import SeriesSummary, classify_channel, sort_series, summarise
from myoflow.ingest.series_rules import (
    CHANNELS,
    DEFAULT_CHANNEL_RULES,
    ChannelRule,
    ProtocolRule,
    RuleError,
)

# What the synthetic writer (and the scanners it imitates) put in ImageType.
IMAGE_TYPE = {
    "water": ("DERIVED", "PRIMARY", "DIXON", "WATER"),
    "fat": ("DERIVED", "PRIMARY", "DIXON", "FAT"),
    "in": ("ORIGINAL", "PRIMARY", "DIXON", "IN_PHASE"),
    "opp": ("ORIGINAL", "PRIMARY", "DIXON", "OPPOSED_PHASE"),
}
SUFFIX = {"water": "W", "fat": "F", "in": "in", "opp": "opp"}


def ukbb_name(channel: str, station: int) -> str:
    return f"Dixon_{'BH_17s' if station <= 3 else 'noBH'}_{SUFFIX[channel]}"


def nako_name(channel: str, station: int) -> str:
    return f"T1_VIBE_DIXON_tra_{SUFFIX[channel]}"


def acquisition(n_stations: int, name=ukbb_name, image_type=IMAGE_TYPE, skip=()) -> list:
    """Summaries of n stations x 4 channels, station 1 at the top, 18 mm overlaps.

    Listed feet first and channels shuffled, so nothing relies on delivery order.
    """
    series = []
    for station in range(n_stations, 0, -1):
        top = 100.0 - (station - 1) * 174.0
        for channel in ("opp", "water", "in", "fat"):
            if (channel, station) in skip:
                continue
            series.append(
                SeriesSummary(
                    key=f"uid.{station}.{channel}",
                    description=name(channel, station),
                    image_type=image_type[channel] if image_type else (),
                    z_range_mm=(top - 189.0, top),
                    n_files=64,
                )
            )
    return series


def expected_stations(n: int) -> tuple[dict[str, str], ...]:
    return tuple({c: f"uid.{s}.{c}" for c in CHANNELS} for s in range(1, n + 1))


def test_ukbb_series_sort_into_six_stations_head_first():
    plan = sort_series(acquisition(6))
    assert plan.protocol == "ukbb"
    assert plan.stations == expected_stations(6)
    assert plan.ignored == ()


def test_nako_series_sort_into_four_stations():
    plan = sort_series(acquisition(4, name=nako_name))
    assert plan.protocol == "nako"
    assert plan.stations == expected_stations(4)


@pytest.mark.parametrize("protocol", ["ukbb", "nako"])
def test_description_alone_or_image_type_alone_names_the_channel(protocol):
    name = ukbb_name if protocol == "ukbb" else nako_name
    for channel in CHANNELS:
        assert classify_channel(name(channel, 2), (), DEFAULT_CHANNEL_RULES) == (channel,)
        assert classify_channel("body", IMAGE_TYPE[channel], DEFAULT_CHANNEL_RULES) == (channel,)
    assert sort_series(acquisition(6 if protocol == "ukbb" else 4, name, None)).protocol == protocol


def test_image_type_tokens_are_whole_values_in_any_case():
    rules = [ChannelRule("water", image_type="water")]
    assert classify_channel("x", ("DERIVED", "WATER"), rules) == ("water",)
    assert classify_channel("x", ("DERIVED", "WATER_MAP"), rules) == ()


SITE_CODES = {"water": "WAT", "fat": "FET", "in": "IP", "opp": "OP"}


def test_user_rules_name_a_site_of_their_own():
    def site_name(channel: str, station: int) -> str:
        return f"WB_{station}_{SITE_CODES[channel]}"

    series = acquisition(3, name=site_name, image_type=None)
    with pytest.raises(ParticipantExcluded) as info:
        sort_series(series)  # the shipped rules know nothing of this site
    assert info.value.reason == "no_dixon_series"
    rules = [
        ChannelRule.from_config({"channel": channel, "series_description": f"^WB_\\d_{code}$"})
        for channel, code in SITE_CODES.items()
    ]
    protocols = [
        ProtocolRule.from_config({"name": "site", "series_description": "^WB_", "stations": 3})
    ]
    plan = sort_series(series, rules, protocols)
    assert (plan.protocol, plan.stations) == ("site", expected_stations(3))


def test_a_rule_needs_all_its_conditions():
    rule = ChannelRule("fat", image_type="FAT", series_description="_F$")
    assert rule.matches("Dixon_noBH_F", ("DIXON", "FAT"))
    assert not rule.matches("Dixon_noBH_F", ("DIXON", "WATER"))
    assert not rule.matches("Dixon_noBH_W", ("DIXON", "FAT"))


def test_ambiguous_and_unknown_series_are_reported_and_ignored():
    series = acquisition(6)
    series.append(
        SeriesSummary("uid.loc", "localizer", ("ORIGINAL", "PRIMARY", "M"), (-900.0, 100.0), 3)
    )
    series.append(  # named water, marked fat: which is it?
        SeriesSummary("uid.odd", "Dixon_noBH_W", IMAGE_TYPE["fat"], (-800.0, -600.0), 64)
    )
    plan = sort_series(series)
    assert plan.stations == expected_stations(6)
    reported = {(s.series_description, s.reason, s.detail) for s in plan.ignored}
    assert reported == {
        ("localizer", "not_dixon", "matches no channel rule"),
        ("Dixon_noBH_W", "ambiguous_channel", "matches rules of water and fat"),
    }
    # Reports name series by a hash of their UID, never by the UID.
    assert all(len(s.series_hash) == 16 and "uid" not in s.series_hash for s in plan.ignored)


def test_missing_channel():
    with pytest.raises(ParticipantExcluded) as info:
        sort_series(acquisition(6, skip={("fat", 3)}))
    assert info.value.reason == "missing_channel"
    assert "station 3 of 6" in info.value.detail and "but no fat" in info.value.detail


@pytest.mark.parametrize("missing", [1, 4, 6])
def test_missing_station(missing):
    skip = {(c, missing) for c in CHANNELS}
    with pytest.raises(ParticipantExcluded) as info:
        sort_series(acquisition(6, skip=skip))
    assert info.value.reason == "missing_station"
    assert "5 stations found, protocol ukbb has 6" in info.value.detail


def test_the_station_count_is_never_left_unchecked():
    series = acquisition(5, name=lambda c, s: f"scan_{SUFFIX[c]}")
    with pytest.raises(ParticipantExcluded) as info:
        sort_series(series)  # no protocol matches, no expected_stations
    assert info.value.reason == "unknown_protocol"
    assert "5 stations found" in info.value.detail and "'scan_W'" in info.value.detail
    plan = sort_series(series, expected_stations=5)
    assert (plan.protocol, len(plan.stations)) == ("", 5)
    with pytest.raises(ParticipantExcluded) as info:
        sort_series(series, expected_stations=6)
    assert info.value.reason == "missing_station"
    assert "5 stations found, ingest.expected_stations is 6" in info.value.detail


def test_a_protocol_is_matched_by_more_than_the_description():
    series = [
        replace(s, protocol_name="WB_DIXON", manufacturer="Philips")
        for s in acquisition(3, name=lambda c, s: f"scan_{SUFFIX[c]}")
    ]
    by_name = ProtocolRule.from_config({"name": "wb", "protocol_name": "^WB_", "stations": 3})
    by_maker = ProtocolRule("philips", manufacturer="(?i)philips", stations=4)
    assert sort_series(series, protocols=[by_name]).protocol == "wb"
    with pytest.raises(ParticipantExcluded, match="protocol philips has 4"):
        sort_series(series, protocols=[by_maker])
    both = ProtocolRule("both", series_description="^scan_", manufacturer="GE", stations=3)
    with pytest.raises(ParticipantExcluded) as info:
        sort_series(series, protocols=[both])  # every condition must hold
    assert info.value.reason == "unknown_protocol"
    with pytest.raises(RuleError, match="give series_description, protocol_name"):
        ProtocolRule.from_config({"name": "x", "stations": 3})
    with pytest.raises(RuleError, match="stations must be"):
        ProtocolRule.from_config({"name": "x", "manufacturer": "GE"})


def test_phase_images_are_never_a_channel_and_missing_channel_lists_what_was_ignored():
    series = acquisition(6)
    water = next(s for s in series if s.key == "uid.2.water")
    series.remove(water)
    # The station-2 water series held magnitude and phase images: split, the phase half
    # is ignored with a reason even though its description names water.
    phase = replace(water, image_type=("ORIGINAL", "PRIMARY", "P", "DIXON"), part="phase")
    series.append(phase)
    with pytest.raises(ParticipantExcluded) as info:
        sort_series(series)
    assert info.value.reason == "missing_channel"
    detail = info.value.detail
    assert "station 2 of 6" in detail and "but no water" in detail
    assert "1 ignored: 'Dixon_BH_17s_W' (ImageType ORIGINAL\\PRIMARY\\P\\DIXON)" in detail
    assert "not_magnitude, phase images" in detail
    series.append(water)
    plan = sort_series(series)
    assert plan.stations == expected_stations(6)
    assert [(s.reason, s.image_type) for s in plan.ignored] == [
        ("not_magnitude", "ORIGINAL\\PRIMARY\\P\\DIXON")
    ]


def test_extra_station_and_duplicate_series():
    with pytest.raises(ParticipantExcluded) as info:
        sort_series(acquisition(7))
    assert info.value.reason == "extra_station"
    series = acquisition(6)
    series.append(SeriesSummary("uid.again", "Dixon_BH_17s_W", IMAGE_TYPE["water"], (-89, 100), 64))
    with pytest.raises(ParticipantExcluded) as info:
        sort_series(series)
    assert info.value.reason == "duplicate_series"
    assert "station 1 of 6" in info.value.detail and "more than one water" in info.value.detail


def test_a_shorter_series_still_joins_its_station():
    series = acquisition(6)
    short = series[0]  # a station-6 series that lost a third of its slices
    low, high = short.z_range_mm
    series[0] = SeriesSummary(short.key, short.description, short.image_type, (low + 63, high), 43)
    assert sort_series(series).stations == expected_stations(6)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"channel": "wat", "image_type": "WATER"}, "channel must be one of"),
        ({"channel": "water"}, "give image_type, series_description or both"),
        ({"channel": "water", "series_description": "(_W"}, "not a regular expression"),
        ({"channel": "water", "imagetype": "WATER"}, "unexpected keyword"),
    ],
)
def test_malformed_rules_are_refused(rule, message):
    with pytest.raises(RuleError, match=message):
        ChannelRule.from_config(rule)


def _slice(z: float, orientation=(1, 0, 0, 0, 1, 0), rows=4, columns=6) -> Dataset:
    ds = Dataset()
    ds.SeriesDescription = "Dixon_BH_17s_W"
    ds.ImageType = ["DERIVED", "PRIMARY", "DIXON", "WATER"]
    ds.ImagePositionPatient = [-10.0, 20.0, z]
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = [2.0, 3.0]  # between rows, between columns
    ds.Rows, ds.Columns = rows, columns
    return ds


def test_summarise_axial_and_coronal_series():
    axial = summarise("1.2.3", [_slice(z) for z in (6.0, 0.0, 3.0)])
    assert axial.z_range_mm == (0.0, 6.0)
    assert axial.image_type == IMAGE_TYPE["water"]
    assert (axial.description, axial.n_files) == ("Dixon_BH_17s_W", 3)
    # Coronal: rows run down (-z), so each slice spans 3 rows x 2 mm below its position.
    coronal = summarise("1.2.4", [_slice(z, (1, 0, 0, 0, 0, -1)) for z in (10.0, 10.0)])
    assert coronal.z_range_mm == (4.0, 10.0)
    broken = _slice(0.0)
    del broken.ImagePositionPatient
    assert np.isnan(summarise("1.2.5", [broken]).z_range_mm[0])
