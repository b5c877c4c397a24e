"""Hostile deliveries cost nothing: a zip bomb, a huge file, too many files or a DICOM header
declaring an absurd image exclude the participant with their own reason before anything
large is read or allocated, and the shard goes on."""

from __future__ import annotations

import io
import os
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from dicom_helpers import SERIES, make_dicom_folder, write_slice, zip_folder

from myoflow.core.errors import ParticipantExcluded
from myoflow.ingest import convert as conv
from myoflow.ingest import inventory as inv
from myoflow.ingest import sources
from myoflow.ingest.limits import (
    DEFAULT_LIMITS,
    LIMIT_REASONS,
    MIB,
    DeliveryLimits,
    LimitsError,
)
from myoflow.ingest.prepare import prepare_participant
from myoflow.ingest.sources import SOURCE_REASONS, participant_members, read_member

BOMB_BYTES = 300 * MIB
"""The zip bomb's member: 300 MiB of zeros, ~0.3 MB compressed."""
PEAK_LIMIT = 50 * MIB
"""Refusing a hostile delivery may allocate at most this much (tracemalloc peak)."""


def refused(call: Callable[[], object]) -> tuple[ParticipantExcluded, int]:
    """Run ``call``, which must exclude the participant; return the exclusion and the peak
    memory Python allocated meanwhile (bytes)."""
    tracemalloc.start()
    try:
        with pytest.raises(ParticipantExcluded) as info:
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return info.value, peak


def add_zeros(archive: Path, name: str, size: int) -> Path:
    """Append a member of ``size`` zero bytes, deflated, to ``archive``."""
    chunk = bytes(MIB)
    with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open(name, "w") as member:
            for start in range(0, size, MIB):
                member.write(chunk[: min(MIB, size - start)])
    return archive


def declare_size(archive: Path, name: str, size: int) -> None:
    """Make ``archive`` lie: its entries for member ``name`` declare ``size`` bytes."""
    with zipfile.ZipFile(archive) as zf:
        local = zf.getinfo(name).header_offset
    data = bytearray(archive.read_bytes())
    data[local + 22 : local + 26] = size.to_bytes(4, "little")  # local file header
    encoded = name.encode()
    central = data.index(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(encoded)] != encoded:
        central = data.index(b"PK\x01\x02", central + 4)
    data[central + 24 : central + 28] = size.to_bytes(4, "little")  # central directory
    archive.write_bytes(bytes(data))


def write_absurd_slice(path: Path, rows: int, columns: int, frames: int, z_mm: float = 0.0) -> Path:
    """An MR file whose header declares ``rows`` x ``columns`` x ``frames`` 16-bit values
    but whose pixel data holds 35 values: the file is 1 KB."""
    write_slice(
        path, series_uid=SERIES[0][0], instance=99, description=SERIES[0][1],
        image_type=SERIES[0][2], z_mm=z_mm,
    )  # fmt: skip
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.save_as(path)
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A real delivery zipped with a 300 MiB member of zeros (~0.3 MB on disk)."""
    root = tmp_path_factory.mktemp("bomb")
    archive = zip_folder(make_dicom_folder(root / "P1"), root / "P1.zip")
    add_zeros(archive, "series1/bomb.dcm", BOMB_BYTES)
    assert archive.stat().st_size < 2 * MIB
    return archive


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_dicom_folder(tmp_path / "P2")


def test_reasons_are_exclusion_reasons_of_both_stages():
    for reason in LIMIT_REASONS:
        assert reason in SOURCE_REASONS
        assert reason in inv.EXCLUSION_REASONS
        assert reason in conv.EXCLUSION_REASONS


def test_zip_member_declaring_too_many_bytes_is_refused_unread(bomb, tmp_path):
    excluded, peak = refused(lambda: inv.inventory_participant(bomb))
    assert excluded.reason == "file_too_large"
    assert f"series1/bomb.dcm declares {BOMB_BYTES} bytes" in excluded.detail
    assert str(DEFAULT_LIMITS.max_file_bytes) in excluded.detail
    assert peak < PEAK_LIMIT


def test_zip_bomb_is_excluded_and_the_shard_goes_on(bomb, folder, tmp_path):
    members = pd.DataFrame(
        {"participant_id": ["P1", "P2"], "shard": "r1-0000", "dicom_path": [bomb, folder]}
    )
    table = inv.inventory_shard(members, tmp_path / "out", log=lambda line: None)
    assert list(zip(table["status"], table["reason"], strict=True)) == [
        ("excluded", "file_too_large"),
        ("ok", ""),
    ]
    assert (tmp_path / "out" / "P1" / "exclusion.json").exists()


def test_zip_member_expanding_beyond_the_ratio_limit_is_a_zip_bomb(folder, tmp_path):
    archive = add_zeros(zip_folder(folder, tmp_path / "P2.zip"), "zeros.dcm", 20 * MIB)
    excluded, peak = refused(lambda: inv.inventory_participant(archive))
    assert excluded.reason == "zip_bomb"
    assert "zeros.dcm expands" in excluded.detail and "times" in excluded.detail
    assert peak < PEAK_LIMIT
    # With a laxer ratio the member is read, and ignored as not DICOM.
    lax = DeliveryLimits(max_compression_ratio=10_000)
    ignored = inv.inventory_participant(archive, lax).ignored
    assert ("zeros.dcm", "not_dicom") in [(f.file, f.reason) for f in ignored]


def test_zip_member_expanding_beyond_its_declared_size_is_a_zip_bomb(bomb, tmp_path):
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bomb.read_bytes())
    declare_size(liar, "series1/bomb.dcm", 1000)
    with zipfile.ZipFile(liar) as zf:
        assert zf.getinfo("series1/bomb.dcm").file_size == 1000
    excluded, peak = refused(lambda: inv.inventory_participant(liar))
    assert excluded.reason == "zip_bomb"
    assert "series1/bomb.dcm expands to more than the 1000 bytes" in excluded.detail
    assert peak < PEAK_LIMIT


def test_honest_incompressible_member_is_read(folder, tmp_path):
    archive = zip_folder(folder, tmp_path / "P2.zip")
    with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("random.bin", os.urandom(2 * MIB))
    result = inv.inventory_participant(archive)
    assert result.n_files == 5
    assert ("random.bin", "not_dicom") in [(f.file, f.reason) for f in result.ignored]


def test_huge_file_in_a_folder_is_refused_unread(folder):
    with (folder / "series1" / "huge.dcm").open("wb") as handle:
        handle.truncate(BOMB_BYTES)  # sparse: costs no disk
    excluded, peak = refused(lambda: inv.inventory_participant(folder))
    assert excluded.reason == "file_too_large"
    assert f"series1/huge.dcm is {BOMB_BYTES} bytes" in excluded.detail
    assert peak < PEAK_LIMIT


@pytest.mark.parametrize("source", ["folder", "zip"])
def test_absurd_image_header_is_refused_before_its_pixels(folder, tmp_path, source):
    write_absurd_slice(folder / "series1" / "absurd.dcm", 65535, 65535, 10000)
    assert (folder / "series1" / "absurd.dcm").stat().st_size < 2000
    delivery = folder if source == "folder" else zip_folder(folder, tmp_path / "P2.zip")
    for call in (
        lambda: inv.inventory_participant(delivery),
        lambda: prepare_participant(delivery),  # the conversion reads pixels
    ):
        excluded, peak = refused(call)
        assert excluded.reason == "image_too_large"
        assert excluded.detail.startswith("series1/absurd.dcm: ")
        assert "65535 rows x 65535 columns x 10000 frames" in excluded.detail
        assert str(65535 * 65535 * 10000 * 2) in excluded.detail
        assert peak < PEAK_LIMIT


def test_read_member_checks_the_image_without_a_delivery(folder):
    path = write_absurd_slice(folder / "absurd.dcm", 65535, 65535, 1)
    data = path.read_bytes()
    with pytest.raises(ParticipantExcluded, match="image_too_large"):
        read_member("absurd.dcm", lambda: io.BytesIO(data), pixels=True)
    lax = DeliveryLimits(max_image_bytes=10 * 2**30, max_delivery_bytes=10 * 2**30)
    assert read_member("absurd.dcm", lambda: io.BytesIO(data), limits=lax).Rows == 65535


def test_pixel_data_declared_by_a_whole_delivery_is_limited(folder):
    for n in range(3):  # 8 MiB each once decoded, 1 KB each on disk
        write_absurd_slice(folder / "big" / f"{n}.dcm", 2048, 2048, 1, z_mm=10.0 + n)
    limits = DeliveryLimits(max_image_bytes=10 * MIB, max_delivery_bytes=20 * MIB)
    excluded, _ = refused(lambda: inv.inventory_participant(folder, limits))
    assert excluded.reason == "delivery_too_large"
    assert excluded.detail.startswith("up to big/2.dcm, its MR headers declare")
    assert inv.inventory_participant(folder).n_files == 8  # within the default limits


@pytest.mark.parametrize("source", ["folder", "zip"])
def test_too_many_files_or_bytes_are_refused(folder, tmp_path, source):
    delivery = folder if source == "folder" else zip_folder(folder, tmp_path / "P2.zip")
    excluded, _ = refused(lambda: inv.inventory_participant(delivery, DeliveryLimits(max_files=6)))
    assert (excluded.reason, excluded.detail) == (
        "delivery_too_large",
        f"{delivery} holds more than 6 files",
    )
    assert inv.inventory_participant(delivery, DeliveryLimits(max_files=7)).n_files == 5
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    excluded, _ = refused(
        lambda: inv.inventory_participant(delivery, DeliveryLimits(max_delivery_bytes=total - 1))
    )
    assert excluded.reason == "delivery_too_large"
    assert f"its 7 files hold {total} bytes" in excluded.detail


def test_members_are_checked_before_the_first_is_yielded(bomb):
    _, members = participant_members(bomb)
    with pytest.raises(ParticipantExcluded, match="file_too_large"):
        next(members)


def test_limits_from_config():
    assert DeliveryLimits.from_config({}) == DEFAULT_LIMITS
    assert DeliveryLimits.from_config(DEFAULT_LIMITS.to_config()) == DEFAULT_LIMITS
    assert DEFAULT_LIMITS.to_config() == {
        "max_file_mib": 256,
        "max_delivery_mib": 2048,
        "max_files": 100_000,
        "max_compression_ratio": 100.0,
        "max_image_mib": 256,
    }
    limits = DeliveryLimits.from_config({"max_file_mib": 0.5, "max_files": 10})
    assert (limits.max_file_bytes, limits.max_files) == (512 * 1024, 10)
    assert limits.to_config()["max_file_mib"] == 0.5
    for bad, message in [
        ({"max_file_bytes": 1}, "unknown key"),
        ({"max_image_mib": 0}, "max_image_mib must be a positive number"),
        ({"max_delivery_mib": "1 GB"}, "must be a positive number"),
        ({"max_compression_ratio": True}, "must be a positive number"),
        ({"max_files": 10.5}, "max_files must be a positive integer"),
    ]:
        with pytest.raises(LimitsError, match=message):
            DeliveryLimits.from_config(bad)


def many_entries(archive: Path, count: int) -> Path:
    """A zip of ``count`` empty files (ZIP64 end records beyond 65,535)."""
    with zipfile.ZipFile(archive, "w") as zf:
        for n in range(count):
            zf.writestr(f"f{n}", b"")
    return archive


@pytest.mark.parametrize("count", [5_000, 70_000], ids=["zip", "zip64"])
def test_a_zip_declaring_too_many_entries_is_refused_before_its_directory_is_read(
    count, tmp_path, monkeypatch
):
    archive = many_entries(tmp_path / "P.zip", count)
    assert sources.zip_entry_count(archive) == count

    def no_directory(*args, **kwargs):
        raise AssertionError("the central directory was parsed")

    monkeypatch.setattr(sources.zipfile, "ZipFile", no_directory)
    excluded, _ = refused(lambda: list(sources.zip_members(archive, DeliveryLimits(max_files=100))))
    assert excluded.reason == "delivery_too_large"
    assert f"declares {count} entries" in excluded.detail


def test_entry_count_of_a_zip_with_a_comment_and_of_a_non_zip(folder, tmp_path):
    archive = zip_folder(folder, tmp_path / "P2.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.comment = b"a comment after the end record " * 300
    with zipfile.ZipFile(archive) as zf:
        assert sources.zip_entry_count(archive) == len(zf.infolist())
    (tmp_path / "not.zip").write_bytes(b"plain text")
    assert sources.zip_entry_count(tmp_path / "not.zip") is None
