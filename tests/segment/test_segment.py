"""The segmentation stage: a shard of participants through one tiny model, on CPU."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from dicom_helpers import progress_outcomes, write_sheet

from myoflow.cli import main
from myoflow.core.io import read_tsv, write_tsv
from myoflow.core.labels import LABELS
from myoflow.core.volume import Volume
from myoflow.landmarks.record import HipLandmarks, write_landmarks
from myoflow.segment import stage as seg
from myoflow.segment.crop import CropSpec
from myoflow.segment.model.card import save_model
from myoflow.segment.model.registry import build_model
from myoflow.synth.geometry import protocol
from myoflow.synth.phenotypes import sample_cohort
from myoflow.synth.render import render_participant
from myoflow.synth.rng import participant_rng
from myoflow.synth.signal import Artefacts, stitched_channels

# The hips crop's field of view (256 x 256 x 576 mm) in 16 x 16 x 32 voxels: a fast model.
TINY_CROP = CropSpec(
    name="tiny",
    shape=(16, 16, 32),
    spacing_mm=(16.0, 16.0, 18.0),
    offset_mm=(-3.0, 47.0, 93.0),
    channels=("water", "fat"),
)
LABEL_NAMES = ["psoas_major", "iliacus"]


def save_tiny_model(folder: Path, biases: list[float]) -> dict:
    """A width-0.0625 V-Net whose output is constant: sigmoid(bias) per label."""
    torch.manual_seed(0)
    config = {
        "architecture": "vnet",
        "in_channels": 2,
        "labels": LABEL_NAMES,
        "width": 0.0625,
        "crop": TINY_CROP.to_dict(),
    }
    model = build_model(config)
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.bias.copy_(torch.tensor(biases))
    return save_model(folder, model.state_dict(), config, {"name": "tiny-test"})


@pytest.fixture(scope="module")
def body(tmp_path_factory) -> Path:
    """One small synthetic participant as the conversion and landmarks stages leave it:
    dixon/{water,fat}.nii.gz (int16, as convert writes them) and landmarks.json from the
    generator's true hip centres."""
    folder = tmp_path_factory.mktemp("body") / "participant"
    grid = protocol("ukbb", "small").grid
    row = sample_cohort(3, 1, "ukbb").to_dict("records")[0]
    phantom = render_participant(row, grid, participant_rng(3, 1, "texture"))
    stations = protocol("ukbb", "small").stations
    channels = stitched_channels(
        phantom.water, phantom.fat, stations, Artefacts(), np.random.default_rng(1)
    )
    for name in ("water", "fat"):
        Volume(channels[name], grid.affine_lps()).to_nifti(folder / "dixon" / f"{name}.nii.gz")
    hips = {
        s: np.array([phantom.truth[f"hip_{s}_{a}_mm"] for a in "xyz"]) for s in ("left", "right")
    }
    write_landmarks(
        folder / "landmarks.json", "P", HipLandmarks(hips["left"], hips["right"], 1.0, (22, 22))
    )
    return folder


@pytest.fixture
def shard(body, tmp_path) -> Path:
    """Four participants: P1 good, P2 without its fat image, P3 with hips off the image,
    P4 excluded by the landmarks stage (with stale segmentation outputs of an older run)."""
    participants = tmp_path / "participants"
    for pid in ("P1", "P2", "P3", "P4"):
        shutil.copytree(body, participants / pid)
    (participants / "P2" / "dixon" / "fat.nii.gz").unlink()
    write_landmarks(
        participants / "P3" / "landmarks.json",
        "P3",
        HipLandmarks(np.array([900.0, 0, 0]), np.array([700.0, 0, 0]), 1.0, (22, 22)),
    )
    (participants / "P4" / "seg").mkdir()
    (participants / "P4" / "seg" / "labels.nii.gz").write_bytes(b"stale")
    (participants / "P4" / "exclusion.json").write_text(json.dumps({"stage": "landmarks"}))
    table = pd.DataFrame(
        {
            "participant_id": ["P1", "P2", "P3", "P4"],
            "shard": "r1-0000",
            "status": ["ok", "ok", "ok", "excluded"],
            "stage": ["", "", "", "landmarks"],
            "reason": ["", "", "", "landmarks_not_found"],
            "detail": ["", "", "", "no ball of marrow"],
        }
    )
    write_tsv(tmp_path / "shards" / "r1-0000" / "landmarks.tsv", table)
    save_tiny_model(tmp_path / "model", [4.0, -4.0])  # everything psoas, nothing iliacus
    return tmp_path


def run_shard(root: Path, lines: list[str] | None = None) -> pd.DataFrame:
    landmarks = read_tsv(root / "shards" / "r1-0000" / "landmarks.tsv")
    segmenter = seg.load_segmenter(root / "model", torch.device("cpu"))
    return seg.segment_shard(
        landmarks[["participant_id", "shard"]],
        root / "participants",
        landmarks,
        segmenter,
        log=(lines if lines is not None else []).append,
    )


def test_shard_segments_the_good_and_excludes_the_rest(shard):
    table = run_shard(shard).set_index("participant_id")
    assert list(table.columns) == seg.SHARD_COLUMNS[1:]
    assert table["status"].to_dict() == {
        "P1": "ok",
        "P2": "excluded",
        "P3": "excluded",
        "P4": "excluded",
    }
    assert table.loc["P2", ["stage", "reason"]].tolist() == ["segment", "inputs_unreadable"]
    assert "fat.nii.gz" in table.loc["P2", "detail"]
    assert table.loc["P3", ["stage", "reason"]].tolist() == ["segment", "crop_outside_volume"]
    assert table.loc["P4", ["stage", "reason"]].tolist() == ["landmarks", "landmarks_not_found"]
    assert table.loc["P1", "n_labels"] == 2
    assert table.loc["P1", "missing_labels"] == "iliacus_left iliacus_right"

    participants = shard / "participants"
    for pid in ("P2", "P3"):
        record = json.loads((participants / pid / "exclusion.json").read_text())
        assert record["stage"] == "segment" and record["participant_id"] == pid
        assert not (participants / pid / "seg" / "labels.nii.gz").exists()
    # the earlier stage's record stays; the stale outputs of an older run go
    assert json.loads((participants / "P4" / "exclusion.json").read_text()) == {
        "stage": "landmarks"
    }
    assert not (participants / "P4" / "seg" / "labels.nii.gz").exists()

    # P1: int16 labels on exactly the Dixon grid, inside the crop boxes of their side
    water = nib.load(participants / "P1" / "dixon" / "water.nii.gz")
    labels_image = nib.load(participants / "P1" / "seg" / "labels.nii.gz")
    labels = np.asanyarray(labels_image.dataobj)
    assert labels.dtype == np.int16 and labels.shape == water.shape
    assert np.array_equal(labels_image.affine, water.affine)
    assert set(np.unique(labels)) == {0, LABELS["psoas_major_left"], LABELS["psoas_major_right"]}
    record = json.loads((participants / "P1" / "seg" / "segmentation.json").read_text())
    card = json.loads((shard / "model" / "model_card.json").read_text())
    assert record["model"]["weights_sha256"] == card["weights_sha256"]
    assert record["model"]["name"] == "tiny-test"
    assert record["device"].startswith("cpu")
    assert {"read", "crop", "infer", "uncrop", "clean", "write", "total"} <= set(record["seconds"])
    assert not (participants / "P1" / "exclusion.json").exists()
    for side in ("left", "right"):
        (i0, i1), (j0, j1), (k0, k1) = record["crop_boxes"][side]
        mask = labels == LABELS[f"psoas_major_{side}"]
        assert record["label_voxels"][f"psoas_major_{side}"] == np.count_nonzero(mask) > 0
        inside = np.zeros_like(mask)
        inside[i0:i1, j0:j1, k0:k1] = True
        assert not (mask & ~inside).any()
    # the left crop lies on the patient's left: higher i (i runs to the left)
    left, right = (np.argwhere(labels == LABELS[f"psoas_major_{s}"]) for s in ("left", "right"))
    assert left[:, 0].mean() > right[:, 0].mean()


def test_rerun_skips_current_participants_and_redoes_on_new_weights_or_inputs(shard):
    participants = shard / "participants"
    marker = participants / "P1" / "seg" / "segmentation.json"
    run_shard(shard)
    written = marker.stat().st_mtime_ns
    lines: list[str] = []
    again = run_shard(shard, lines)
    assert "P1: complete, skipped" in progress_outcomes(lines)
    assert marker.stat().st_mtime_ns == written
    assert again.loc[again["participant_id"] == "P1", "n_labels"].item() == 2

    # newer landmarks: redone
    landmarks = participants / "P1" / "landmarks.json"
    os.utime(landmarks, ns=(written + 10**9, written + 10**9))
    lines.clear()
    run_shard(shard, lines)
    assert any(line.startswith("P1: ok") for line in progress_outcomes(lines))

    # new weights that find nothing: redone, and now excluded with its outputs removed
    save_tiny_model(shard / "model", [-4.0, -4.0])
    table = run_shard(shard).set_index("participant_id")
    assert table.loc["P1", "reason"] == "no_muscle_found"
    assert not marker.exists() and not (participants / "P1" / "seg" / "labels.nii.gz").exists()
    # and weights that find iliacus everywhere bring it back, clearing the exclusion
    save_tiny_model(shard / "model", [-4.0, 4.0])
    table = run_shard(shard).set_index("participant_id")
    assert table.loc["P1", "status"] == "ok"
    assert table.loc["P1", "missing_labels"] == "psoas_major_left psoas_major_right"
    assert not (participants / "P1" / "exclusion.json").exists()
    # same weights, recalibrated thresholds (myoflow calibrate): redone. Psoas at
    # sigmoid(-4) = 0.018 over a threshold of 0.005 beats iliacus at 0.982 over 0.5.
    card = json.loads((shard / "model" / "model_card.json").read_text())
    card["config"]["thresholds"] = {"psoas_major": 0.005}
    (shard / "model" / "model_card.json").write_text(json.dumps(card))
    table = run_shard(shard).set_index("participant_id")
    assert table.loc["P1", "missing_labels"] == "iliacus_left iliacus_right"


def test_command_writes_the_shard_table_and_refuses_bad_models(shard, capsys):
    sheet = write_sheet(
        shard / "participants.tsv", [(p, f"dicom/{p}", "r1") for p in ("P1", "P2", "P3", "P4")]
    )
    out = shard / "shards" / "r1-0000" / "segment.tsv"
    args = [
        "segment",
        "--sheet", str(sheet),
        "--shard", "r1-0000",
        "--shard-size", "25",
        "--participants-dir", str(shard / "participants"),
        "--landmarks", str(shard / "shards" / "r1-0000" / "landmarks.tsv"),
        "--model-card", str(shard / "model" / "model_card.json"),
        "--device", "cpu",
        "--threads", "1",
        "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    table = read_tsv(out)
    assert table["participant_id"].tolist() == ["P1", "P2", "P3", "P4"]
    assert table["status"].tolist() == ["ok", "excluded", "excluded", "excluded"]
    assert "1 ok, 3 excluded" in capsys.readouterr().out

    weights = shard / "model" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    out.unlink()
    assert main(args) == 2
    assert "refusing weights that are not the card's" in capsys.readouterr().err
    assert not out.exists()

    if not torch.cuda.is_available():
        save_tiny_model(shard / "model", [4.0, -4.0])
        assert main([*args[:-5], "cuda", *args[-4:]]) == 2
        assert "sees no GPU" in capsys.readouterr().err


def test_segment_command_constants_match_the_package():
    """The command keeps copies so that building the parser does not import torch."""
    from myoflow.commands import segment as command
    from myoflow.segment.model.card import CARD_FILE
    from myoflow.segment.stage import DEVICES

    assert (command.CARD_FILE, command.DEVICES) == (CARD_FILE, DEVICES)
