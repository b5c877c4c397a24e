"""Atomic writers: all or nothing, ordinary permissions, reproducible bytes, clear errors."""

from __future__ import annotations

import os
import stat

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from myoflow import io


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
