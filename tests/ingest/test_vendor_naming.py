"""Dixon deliveries named as Siemens, Philips and GE name them, through the participant stage.

Each test writes a small two-station delivery (tests/dicom_helpers.write_slice, with the
vendor's SeriesDescription and ImageType), converts it in memory
(:func:`myoflow.ingest.prepare.prepare_participant`) with the shipped channel rules, and
checks that the four channels are found and stitched; then drops a channel of station 2
and checks that the ``missing_channel`` detail names every ignored series with its
description and ImageType.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import UID_ROOT, write_slice

from myoflow.core.errors import ParticipantExcluded
from myoflow.ingest.prepare import prepare_participant
from myoflow.ingest.series import classify_channel
from myoflow.ingest.series_rules import CHANNELS, DEFAULT_CHANNEL_RULES
from myoflow.ingest.settings import IngestSettings
from myoflow.synth.enhanced import pack_enhanced
from myoflow.synth.scanner_tags import channel_tags

# Station 1 above station 2; they share one 3 mm slice position (z = 0).
STATION_Z = {1: [3.0 * k for k in range(10)], 2: [3.0 * k for k in range(-9, 1)]}
SETTINGS = IngestSettings(expected_stations=2, spacing_mm=None)
LOCALISER = ("3-pl loc", ["ORIGINAL", "PRIMARY", "OTHER"])

# vendor -> manufacturer, channel -> (SeriesDescription, ImageType).
VENDORS = {
    # Siemens VIBE Dixon: syngo appends _W/_F/_in/_opp; ImageType ...\DIXON\<map>
    # (scanner_tags holds the synthetic cohort's; real scanners write OPP_PHASE).
    "siemens": (
        "SIEMENS",
        {
            c: (f"t1_vibe_dixon_cor_{s}", channel_tags("nako", c, 1)["ImageType"])
            for c, s in zip(CHANNELS, ("W", "F", "in", "opp"), strict=True)
        }
        | {"opp": ("t1_vibe_dixon_cor_opp", ["ORIGINAL", "PRIMARY", "DIXON", "OPP_PHASE"])},
    ),
    # Philips mDIXON: ImageType DERIVED\PRIMARY\W\W\DERIVED and so on.
    "philips": (
        "Philips Medical Systems",
        {
            "water": ("mDIXON W", ["DERIVED", "PRIMARY", "W", "W", "DERIVED"]),
            "fat": ("mDIXON F", ["DERIVED", "PRIMARY", "F", "F", "DERIVED"]),
            "in": ("mDIXON IP", ["ORIGINAL", "PRIMARY", "IP", "IP", "DERIVED"]),
            "opp": ("mDIXON OP", ["ORIGINAL", "PRIMARY", "OP", "OP", "DERIVED"]),
        },
    ),
    # GE LAVA-Flex: the recon type prefixes the description; ImageType ...\OUT_PHASE.
    "ge_lava_flex": (
        "GE MEDICAL SYSTEMS",
        {
            "water": ("WATER: AX LAVA-FLEX", ["DERIVED", "PRIMARY", "WATER"]),
            "fat": ("FAT: AX LAVA-FLEX", ["DERIVED", "PRIMARY", "FAT"]),
            "in": ("InPhase: AX LAVA-FLEX", ["ORIGINAL", "PRIMARY", "IN_PHASE"]),
            "opp": ("OutPhase: AX LAVA-FLEX", ["ORIGINAL", "PRIMARY", "OUT_PHASE"]),
        },
    ),
    # GE IDEAL with an uninformative ImageType: the description alone names the channel.
    "ge_ideal": (
        "GE MEDICAL SYSTEMS",
        {
            c: (f"{prefix}: Ax T1 IDEAL", ["ORIGINAL", "PRIMARY", "OTHER"])
            for c, prefix in zip(CHANNELS, ("WATER", "FAT", "InPhase", "OutPhase"), strict=True)
        },
    ),
}


class Delivery:
    """Writes series into one participant folder, a unique UID and file names per series."""

    def __init__(self, folder: Path, manufacturer: str, first_series: int = 1) -> None:
        self.folder, self.manufacturer, self.count = folder, manufacturer, first_series - 1

    def series(self, description: str, images: list[tuple[list[str], float, dict]]) -> None:
        """One series of (ImageType, z, extra tags) images."""
        self.count += 1
        uid = f"{UID_ROOT}.7.{self.count}"
        for n, (image_type, z, extra) in enumerate(images, 1):
            path = self.folder / f"S{self.count:03d}" / f"IM_{n:04d}.dcm"
            write_slice(
                path,
                series_uid=uid,
                instance=n,
                description=description,
                image_type=image_type,
                z_mm=z,
            )
            ds = pydicom.dcmread(path)
            ds.Manufacturer = self.manufacturer
            for keyword, value in extra.items():
                setattr(ds, keyword, value)
            ds.save_as(path)

    def station(self, station: int, description: str, image_type: list[str], **extra) -> None:
        self.series(description, [(image_type, z, extra) for z in STATION_Z[station]])


def write_delivery(folder: Path, vendor: str, skip: tuple = ()) -> Path:
    manufacturer, naming = VENDORS[vendor]
    delivery = Delivery(folder, manufacturer)
    delivery.station(1, *LOCALISER)
    for station in (1, 2):
        for channel in CHANNELS:
            if (station, channel) not in skip:
                delivery.station(station, *naming[channel])
    return folder


def assert_four_channels_stitched(prepared) -> None:
    assert len(prepared.stations) == 2
    for station in prepared.stations:
        assert sorted(station.volumes) == sorted(CHANNELS)
        for volume in station.volumes.values():
            assert volume.array.shape == (7, 5, 10)
    for channel in CHANNELS:
        # Two stations of 10 slices sharing one position: 19 slices, 3 mm apart.
        assert prepared.stitched(channel).shape == (7, 5, 19)
    assert prepared.grid.shape == (7, 5, 19)


@pytest.mark.parametrize("vendor", list(VENDORS))
def test_vendor_naming_gives_four_stitched_channels(vendor, tmp_path):
    prepared = prepare_participant(write_delivery(tmp_path / vendor, vendor), SETTINGS)
    assert_four_channels_stitched(prepared)
    (ignored,) = prepared.acquisition["ignored_series"]
    assert (ignored["series_description"], ignored["reason"]) == ("3-pl loc", "not_dixon")
    assert ignored["image_type"] == "ORIGINAL\\PRIMARY\\OTHER"


@pytest.mark.parametrize("vendor", list(VENDORS))
def test_missing_channel_names_every_ignored_series(vendor, tmp_path):
    folder = write_delivery(tmp_path / vendor, vendor, skip={(2, "opp")})
    # A station-2 series that no rule knows: what the user needs to see to write one.
    Delivery(folder / "extra", VENDORS[vendor][0], first_series=100).station(
        2, "Opp AX custom", ["ORIGINAL", "PRIMARY", "M", "ND"]
    )
    with pytest.raises(ParticipantExcluded) as info:
        prepare_participant(folder, SETTINGS)
    assert info.value.reason == "missing_channel"
    detail = info.value.detail
    assert "station 2 of 2" in detail and "but no opp" in detail
    assert "2 ignored: " in detail
    assert "'3-pl loc' (ImageType ORIGINAL\\PRIMARY\\OTHER): not_dixon" in detail
    assert "'Opp AX custom' (ImageType ORIGINAL\\PRIMARY\\M\\ND): not_dixon" in detail


@pytest.mark.parametrize("vendor", list(VENDORS))
def test_each_vendor_naming_alone_names_the_channel(vendor):
    """Description alone (ImageType uninformative) and, where the vendor marks the map
    in ImageType, ImageType alone (description unknown) give the channel."""
    _, naming = VENDORS[vendor]
    for channel, (description, image_type) in naming.items():
        assert classify_channel(description, ("ORIGINAL", "PRIMARY", "M"), DEFAULT_CHANNEL_RULES)
        assert classify_channel(description, image_type, DEFAULT_CHANNEL_RULES) == (channel,)
        if vendor != "ge_ideal":
            assert classify_channel("body", image_type, DEFAULT_CHANNEL_RULES) == (channel,)


def test_one_philips_series_holding_w_f_ip_op_gives_all_four(tmp_path):
    _, naming = VENDORS["philips"]
    delivery = Delivery(tmp_path / "P", "Philips Medical Systems")
    for station in (1, 2):
        # One series per station; its images interleave the four maps at every position.
        images = [
            (naming[channel][1], z, {"EchoNumbers": 2 if channel != "opp" else 1})
            for z in STATION_Z[station]
            for channel in CHANNELS
        ]
        delivery.series("sWIP mDIXON BH", images)
    prepared = prepare_participant(tmp_path / "P", SETTINGS)
    assert_four_channels_stitched(prepared)
    assert prepared.acquisition["ignored_series"] == []


def test_one_enhanced_philips_file_holding_w_f_ip_op_frames_gives_all_four(tmp_path):
    r"""Philips exports mDIXON as enhanced MR too: one file per station whose frames are
    the four maps (FrameType ...\W\W\DERIVED and so on), split frame by frame."""
    _, naming = VENDORS["philips"]
    classic = Delivery(tmp_path / "classic", "Philips Medical Systems")
    for station in (1, 2):
        images = [(naming[c][1], z, {}) for z in STATION_Z[station] for c in CHANNELS]
        classic.series("sWIP mDIXON BH", images)
    enhanced = tmp_path / "enhanced"
    enhanced.mkdir()
    for series in sorted((tmp_path / "classic").iterdir()):
        files = sorted(series.glob("*.dcm"), key=lambda p: int(p.stem.split("_")[1]))
        datasets = [pydicom.dcmread(p) for p in files]
        order = list(range(len(datasets)))[::-1]  # frames in no particular order
        packed = pack_enhanced(
            datasets, order=order, frame_types=[list(datasets[i].ImageType) for i in order]
        )
        packed.save_as(enhanced / f"{series.name}.dcm", enforce_file_format=True)
    prepared = prepare_participant(enhanced, SETTINGS)
    assert_four_channels_stitched(prepared)
    reference = prepare_participant(tmp_path / "classic", SETTINGS)
    for channel in CHANNELS:
        np.testing.assert_array_equal(prepared.stitched(channel), reference.stitched(channel))
    assert prepared.acquisition["ignored_series"] == []


def test_magnitude_and_phase_in_one_series_convert_the_magnitude_and_ignore_the_phase(tmp_path):
    """Philips writes magnitude (...\\M\\FFE) and phase (...\\PHASE MAP\\P\\FFE) images at
    every position of one series; once split, the magnitude is the channel and the phase
    is ignored with a reason."""
    _, naming = VENDORS["philips"]
    delivery = Delivery(tmp_path / "P", "Philips Medical Systems")
    phase = ["ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"]
    for station in (1, 2):
        for channel in CHANNELS:
            description, image_type = naming[channel]
            if channel == "water":
                image_type = ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"]
            images = [(t, z, {}) for z in STATION_Z[station] for t in (image_type, phase)]
            delivery.series(description, images)
    # Before splitting, the magnitude and phase images at one position made the series
    # unreadable (duplicate_slices).
    prepared = prepare_participant(tmp_path / "P", SETTINGS)
    assert_four_channels_stitched(prepared)
    ignored = prepared.acquisition["ignored_series"]
    assert len(ignored) == 8  # the phase half of every series
    assert {(s["reason"], s["image_type"]) for s in ignored} == {
        ("not_magnitude", "ORIGINAL\\PRIMARY\\PHASE MAP\\P\\FFE")
    }
    assert {s["detail"] for s in ignored} == {"phase images: a Dixon channel is a magnitude image"}
    water = prepared.stations[0].volumes["water"].array
    np.testing.assert_array_equal(water[:, :, 0], np.arange(35).reshape(5, 7).T)


def test_a_protocol_matched_by_manufacturer_checks_the_station_count(tmp_path):
    folder = write_delivery(tmp_path / "G", "ge_lava_flex")
    settings = IngestSettings.from_config(
        {
            "protocols": [{"name": "ge_wb", "manufacturer": "^GE MEDICAL", "stations": 3}],
            "grid": {"spacing_mm": "native"},
        }
    )
    with pytest.raises(ParticipantExcluded) as info:
        prepare_participant(folder, settings)
    assert info.value.reason == "missing_station"
    assert "2 stations found, protocol ge_wb has 3" in info.value.detail
    # Without a protocol or expected_stations the count is not skipped: it is refused.
    with pytest.raises(ParticipantExcluded) as info:
        prepare_participant(folder, IngestSettings(spacing_mm=None))
    assert info.value.reason == "unknown_protocol"
    assert "'WATER: AX LAVA-FLEX'" in info.value.detail
