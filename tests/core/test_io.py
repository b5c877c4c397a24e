"""Atomic writers: all or nothing, ordinary permissions, reproducible bytes, clear errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nibabel.filebasedimages import ImageFileError

from myoflow.core import io

BIN = Path(sys.executable).parent


def test_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "table.tsv"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_survives_a_failed_rewrite(tmp_path):
    target = tmp_path / "a.json"
    io.write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        io.write_json(target, {"bad": object()})
    assert io.json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_outputs_get_umask_permissions_not_private_ones(tmp_path):
    io.write_text(tmp_path / "x.txt", "x")
    mode = stat.S_IMODE((tmp_path / "x.txt").stat().st_mode)
    assert mode == 0o666 & ~io._process_umask()
    assert mode & stat.S_IRGRP or io._process_umask() & stat.S_IRGRP


def test_nifti_bytes_reproducible_and_scaled(tmp_path):
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    io.save_nifti(tmp_path / "a.nii.gz", data, affine, scl_slope=0.5)
    io.save_nifti(tmp_path / "b.nii.gz", data, affine, scl_slope=0.5)
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()
    image = nib.load(tmp_path / "a.nii.gz")
    np.testing.assert_allclose(image.get_fdata(), data * 0.5)
    np.testing.assert_allclose(image.affine, affine)
    assert image.get_data_dtype() == np.int16


@pytest.mark.parametrize("name", ["scaled.nii.gz", "scaled.nii"])
def test_load_nifti_gives_what_nibabel_load_gives(tmp_path, name):
    rng = np.random.default_rng(3)
    array = rng.integers(-2000, 2000, size=(7, 5, 3), dtype=np.int16)
    affine = np.diag([-2.2, -2.2, 3.0, 1.0])
    affine[:3, 3] = [10.0, -4.0, 7.5]
    io.save_nifti(tmp_path / name, array, affine, scl_slope=0.37)
    ours, theirs = io.load_nifti(tmp_path / name), nib.load(tmp_path / name)
    assert np.array_equal(ours.get_fdata(dtype=np.float32), theirs.get_fdata(dtype=np.float32))
    assert np.array_equal(np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj))
    assert np.array_equal(ours.affine, theirs.affine)
    assert ours.get_data_dtype() == np.int16


def test_load_nifti_reads_nifti2(tmp_path):
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    nib.save(nib.Nifti2Image(array, np.eye(4)), tmp_path / "two.nii.gz")
    assert np.array_equal(io.load_nifti(tmp_path / "two.nii.gz").get_fdata(), array)


@pytest.mark.parametrize(
    "damage, error",
    [
        (lambda data: data[: len(data) // 2], EOFError),  # truncated gzip
        (lambda data: data[:20] + bytes(200) + data[220:], ImageFileError),  # corrupt deflate
        (lambda data: b"\x1f\x8b" + b"not gzip" * 40, OSError),
        (lambda data: b"not a nifti at all" * 40, ImageFileError),
    ],
)
def test_load_nifti_damage_raises_what_readers_catch(tmp_path, damage, error):
    path = tmp_path / "x.nii.gz"
    rng = np.random.default_rng(0)
    io.save_nifti(path, rng.integers(0, 1000, (20, 20, 20), dtype=np.int16), np.eye(4))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(error) as caught:
        io.load_nifti(path).get_fdata()
    # The stages turn exactly these into exclusions (participant_files.read_channels).
    assert isinstance(caught.value, (OSError, EOFError, ValueError, ImageFileError))


def test_tsv_round_trip_keeps_ids_as_text(tmp_path):
    table = pd.DataFrame({"participant_id": ["007", "010"], "v": [1.5, 2.0]})
    io.write_tsv(tmp_path / "t.tsv", table)
    back = io.read_tsv(tmp_path / "t.tsv")
    assert list(back["participant_id"]) == ["007", "010"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_folder_names_the_path(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(io.OutputError, match=str(locked / "x.txt")):
            io.write_text(locked / "x.txt", "x")
    finally:
        locked.chmod(0o700)


def test_missing_parent_that_cannot_be_created_names_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(io.OutputError, match="cannot write .*file/sub/x.txt"):
        io.write_text(blocker / "sub" / "x.txt", "x")


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs: a disk that fills up (root only; skipped where mount is refused)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace')}")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_names_the_path_and_leaves_no_partial_file(full_disk):
    target = full_disk / "big.bin"
    with pytest.raises(io.OutputError, match=f"cannot write {target}: No space left on device"):
        io.write_bytes(target, b"0" * 400_000)
    assert list(full_disk.iterdir()) == []  # neither the target nor its temporary


def test_a_command_on_a_full_disk_says_so_without_a_traceback(full_disk):
    done = subprocess.run(
        [str(BIN / "myoflow"), "synth", "--out", str(full_disk / "cohort"),
         "--participants", "1", "--size", "small"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert "No space left on device" in done.stderr and str(full_disk) in done.stderr
    assert "Traceback" not in done.stderr
