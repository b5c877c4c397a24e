"""The scanner and sequence tags of the synthetic Dixon series, per protocol and channel.

Siemens-style headers modelled on the UK Biobank (1.5 T Aera) and NAKO (3 T Skyra) body
protocols: :func:`scanner_tags` holds what every series of a protocol shares (scanner,
field strength, TR, flip angle, sequence), :func:`channel_tags` what differs between the
channel series of one station (description, image type, echo time and number, body
part). :mod:`myoflow.synth.dicom_writer` writes them into every file.
"""

from __future__ import annotations

CHANNELS = ("water", "fat", "in", "opp")
"""The Dixon channels, one series each, in the order a station's series are reconstructed."""
_CHANNEL_SUFFIX = {"water": "W", "fat": "F", "in": "in", "opp": "opp"}
_CHANNEL_IMAGE_TYPE = {
    # Siemens marks the Dixon water/fat maps as derived from the two acquired echoes.
    "water": ["DERIVED", "PRIMARY", "DIXON", "WATER"],
    "fat": ["DERIVED", "PRIMARY", "DIXON", "FAT"],
    "in": ["ORIGINAL", "PRIMARY", "DIXON", "IN_PHASE"],
    "opp": ["ORIGINAL", "PRIMARY", "DIXON", "OPPOSED_PHASE"],
}

# Published protocol parameters: UK Biobank body MRI (West et al. 2016, 1.5 T Aera,
# TR 6.69 ms, TE 2.39/4.77 ms, flip 10 deg) and the NAKO 3 T Skyra T1 VIBE Dixon (TE
# 1.23/2.46 ms); NAKO TR, flip angle and bandwidths are plausible values, not quotes.
_SCANNERS: dict[str, dict[str, object]] = {
    "ukbb": {
        "Manufacturer": "SIEMENS",
        "ManufacturerModelName": "Aera",
        "SoftwareVersions": "syngo MR D13A",
        "MagneticFieldStrength": "1.5",
        "ImagingFrequency": "63.676",
        "RepetitionTime": "6.69",
        "FlipAngle": "10",
        "PixelBandwidth": "440",
    },
    "nako": {
        "Manufacturer": "SIEMENS",
        "ManufacturerModelName": "MAGNETOM Skyra",
        "SoftwareVersions": "syngo MR E11",
        "MagneticFieldStrength": "3",
        "ImagingFrequency": "123.256",
        "RepetitionTime": "4.36",
        "FlipAngle": "9",
        "PixelBandwidth": "650",
    },
}
# (opposed-phase, in-phase) echo times in ms: at 1.5 T fat and water precess out of
# phase every ~2.4 ms, at 3 T every ~1.2 ms.
_ECHO_TIMES_MS = {"ukbb": ("2.39", "4.77"), "nako": ("1.23", "2.46")}
# UK Biobank acquires stations 1-3 (neck to abdomen) in 17 s breath-holds.
_UKBB_BREATH_HOLD_STATIONS = (1, 2, 3)
_BODY_PARTS = ("NECK", "CHEST", "ABDOMEN", "PELVIS", "THIGH", "KNEE")


def _check_protocol(protocol: str) -> None:
    if protocol not in _SCANNERS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {sorted(_SCANNERS)}")


def _check_channel(channel: str) -> None:
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {list(CHANNELS)}")


def _protocol_name(protocol: str, station: int) -> str:
    if protocol == "nako":
        return "T1_VIBE_DIXON_tra"
    return "Dixon_BH_17s" if station in _UKBB_BREATH_HOLD_STATIONS else "Dixon_noBH"


def channel_tags(protocol: str, channel: str, station: int) -> dict[str, object]:
    """Return the tags that differ between the channel series of one acquisition.

    Water and fat are computed from both echoes, but Siemens stores a single EchoTime per
    image; they carry the in-phase (second) echo time and echo number, which is what
    the brief asked for and keeps the echo-time check of the in-phase image valid for
    the derived maps too.

    Args:
        protocol: ``"ukbb"`` or ``"nako"``.
        channel: ``"water"``, ``"fat"``, ``"in"`` or ``"opp"``.
        station: 1-based station number.

    Returns:
        DICOM keyword -> value (SeriesDescription, ProtocolName, ImageType, EchoTime,
        EchoNumbers, BodyPartExamined).
    """
    _check_protocol(protocol)
    _check_channel(channel)
    if station < 1:
        raise ValueError(f"station must be >= 1, got {station}")
    protocol_name = _protocol_name(protocol, station)
    te_opp, te_in = _ECHO_TIMES_MS[protocol]
    is_opp = channel == "opp"
    body_part = _BODY_PARTS[station - 1] if station <= len(_BODY_PARTS) else "WHOLEBODY"
    return {
        "SeriesDescription": f"{protocol_name}_{_CHANNEL_SUFFIX[channel]}",
        "ProtocolName": protocol_name,
        "ImageType": list(_CHANNEL_IMAGE_TYPE[channel]),
        "EchoTime": te_opp if is_opp else te_in,
        "EchoNumbers": 1 if is_opp else 2,
        "BodyPartExamined": body_part,
    }


def scanner_tags(protocol: str) -> dict[str, object]:
    """Return the scanner and sequence tags shared by every series of a protocol.

    Args:
        protocol: ``"ukbb"`` (1.5 T Siemens Aera) or ``"nako"`` (3 T Siemens Skyra).

    Returns:
        DICOM keyword -> value (Manufacturer, model, field strength, TR, flip angle,
        sequence description ...).
    """
    _check_protocol(protocol)
    tags = dict(_SCANNERS[protocol])
    tags.update(
        {
            # Two-echo spoiled 3D gradient echo (VIBE), as Siemens labels it.
            "ScanningSequence": "GR",
            "SequenceVariant": ["SP", "OSP"],
            "ScanOptions": "PFP",
            "MRAcquisitionType": "3D",
            "SequenceName": "*fl3d2",
            "ImagedNucleus": "1H",
            "NumberOfAverages": "1",
            "EchoTrainLength": 2,
            "TransmitCoilName": "Body",
            "InPlanePhaseEncodingDirection": "COL",
            "PatientPosition": "HFS",
        }
    )
    return tags
