"""The nnU-Net v2 backend against nnU-Net's own predictor, on a tiny model (CPU).

The model (tests/segment/nnunet_helpers.py) is untrained: these tests compare predictors
and geometry, not accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from dicom_helpers import progress_outcomes
from nnunet_helpers import make_tiny_nnunet_model, write_participant

from myoflow.cli import main
from myoflow.core.io import read_tsv, write_tsv
from myoflow.core.labels import ALL_LABELS, LABELS
from myoflow.segment import nnunet_backend as nn_backend
from myoflow.segment.nnunet_stage import NnunetSegmentStage
from myoflow.segment.stage import SHARD_COLUMNS, run_segment_stage

IDENTITY = {value: name for name, value in LABELS.items()}
MARGINS = {"lateral": 60.0, "anterior": 80.0, "posterior": 80.0, "superior": 150.0,
           "inferior": 100.0}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A participant folder ``body`` and a tiny nnU-Net model ``model`` made for it."""
    root = tmp_path_factory.mktemp("nnunet")
    channels = write_participant(root / "body")
    water = nib.load(root / "body" / "dixon" / "water.nii.gz")
    image, spacing = nn_backend.to_nnunet_layout(
        [channels["water"], channels["fat"]], water.affine, "SimpleITKIO"
    )
    make_tiny_nnunet_model(root / "model", [image], [spacing])
    return root


def settings(model: Path, **changes) -> nn_backend.NnunetSettings:
    values = dict(
        model_dir=model,
        folds=(0,),
        checkpoint="checkpoint_final.pth",
        channels=("water", "fat"),
        labels=IDENTITY,
        tile_step_size=1.0,  # fewer windows: faster, and all the tests need
        mirroring=False,
    )
    return nn_backend.NnunetSettings(**(values | changes))


def make_shard(tiny: Path, tmp_path: Path) -> Path:
    """P1 good, P2 without its fat image, P3 excluded by the landmarks stage."""
    participants = tmp_path / "participants"
    for pid in ("P1", "P2", "P3"):
        shutil.copytree(tiny / "body", participants / pid)
    (participants / "P2" / "dixon" / "fat.nii.gz").unlink()
    table = pd.DataFrame(
        {
            "participant_id": ["P1", "P2", "P3"],
            "shard": "r1-0000",
            "status": ["ok", "ok", "excluded"],
            "stage": ["", "", "landmarks"],
            "reason": ["", "", "landmarks_not_found"],
            "detail": ["", "", "no ball of marrow"],
        }
    )
    write_tsv(tmp_path / "landmarks.tsv", table)
    return tmp_path


def run(root: Path, model: nn_backend.NnunetModel, lines: list[str] | None = None):
    landmarks = read_tsv(root / "landmarks.tsv")
    log = (lines if lines is not None else []).append
    stage = NnunetSegmentStage(model)
    members = landmarks[["participant_id", "shard"]]
    return run_segment_stage(stage, members, root / "participants", landmarks, log)


# ---------------------------------------------------------------- pure functions


@pytest.mark.parametrize("reader", ["SimpleITKIO", "NibabelIO", "NibabelIOWithReorient"])
def test_layout_is_what_nnunets_reader_gives(tmp_path, reader):
    """Our arrays in nnU-Net's layout equal what its reader makes of the written file, for
    a grid with flipped and permuted axes; and the labels come back onto our grid."""
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    rng = np.random.default_rng(0)
    volume = rng.normal(size=(7, 5, 9)).astype(np.float32)
    affine = np.array([[0, 0, -3.0, 10], [-1.5, 0, 0, -4], [0, 2.0, 0, 7], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "case_0000.nii.gz")
    expected, properties = recursive_find_reader_writer_by_name(reader)().read_images(
        [str(tmp_path / "case_0000.nii.gz")]
    )
    image, spacing = nn_backend.to_nnunet_layout([volume], affine, reader)
    np.testing.assert_array_equal(image, expected.astype(np.float32))
    np.testing.assert_allclose(spacing, properties["spacing"])
    labels = (expected[0] > 0).astype(np.uint8) + (expected[0] > 1)
    back = nn_backend.from_nnunet_layout(labels, affine, volume.shape, reader)
    np.testing.assert_array_equal(back, (volume > 0).astype(np.uint8) + (volume > 1))


def test_map_labels_renames_groups_and_drops_unknown_values():
    predicted = np.array([[0, 1, 2], [3, 7, 9]], dtype=np.uint8)
    mapping = {1: "iliopsoas_left", 2: "iliopsoas_right", 3: "gluteus_maximus_left"}
    expected = np.array([[0, 11, 12], [5, 0, 0]])
    np.testing.assert_array_equal(nn_backend.map_labels(predicted, mapping), expected)
    assert ALL_LABELS["iliopsoas_left"] == 11 and ALL_LABELS["gluteus_right"] == 14


def test_hips_box_spans_the_hips_plus_margins_clipped_to_the_grid():
    affine = np.diag([2.0, 2.0, 5.0, 1.0])  # RAS, origin at voxel 0
    box = nn_backend.hips_box(
        (100, 100, 100),
        affine,
        np.array([120.0, 100, 200]),
        np.array([80.0, 100, 200]),
        {"lateral": 10, "anterior": 20, "posterior": 30, "superior": 400, "inferior": 50},
    )
    # x 70..130 mm -> voxels 35..65; y 70..120 -> 35..60; z 150..600 -> 30..120 (clipped).
    assert box == (slice(35, 66), slice(35, 61), slice(30, 100))
    far = np.array([5000.0, 0, 0])
    assert nn_backend.hips_box((100, 100, 100), affine, far, far, {k: 1 for k in MARGINS}) is None


# ---------------------------------------------------------------- against nnU-Net


def test_backend_labels_equal_nnunet_predict_from_files(tiny, tmp_path):
    """The stage's labels.nii.gz equals nnUNetPredictor.predict_from_files (what
    nnUNetv2_predict runs) on the same files, voxel for voxel, on the Dixon grid."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    root = make_shard(tiny, tmp_path)
    model = nn_backend.load_nnunet_model(settings(tiny / "model"), torch.device("cpu"))
    lines: list[str] = []
    table = run(root, model, lines).set_index("participant_id")
    assert list(table.columns) == SHARD_COLUMNS[1:]
    assert table["status"].to_dict() == {"P1": "ok", "P2": "excluded", "P3": "excluded"}
    assert table.loc["P2", "reason"] == "inputs_unreadable"
    assert progress_outcomes(lines)[0].startswith("P1: ok, ")

    inputs = tmp_path / "nnunet_in"
    inputs.mkdir()
    for index, name in enumerate(("water", "fat")):
        shutil.copy(tiny / "body" / "dixon" / f"{name}.nii.gz", inputs / f"P1_{index:04d}.nii.gz")
    reference = nnUNetPredictor(
        tile_step_size=1.0, use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False
    )
    reference.initialize_from_trained_model_folder(str(tiny / "model"), (0,))
    reference.predict_from_files(str(inputs), str(tmp_path / "nnunet_out"), True, True, 1, 1)
    expected = nib.load(tmp_path / "nnunet_out" / "P1.nii.gz")
    ours = nib.load(root / "participants" / "P1" / "seg" / "labels.nii.gz")
    water = nib.load(root / "participants" / "P1" / "dixon" / "water.nii.gz")
    assert ours.shape == water.shape
    np.testing.assert_allclose(ours.affine, water.affine, atol=1e-4)
    np.testing.assert_allclose(expected.affine, water.affine, atol=1e-4)
    expected_labels = np.asarray(expected.dataobj)
    assert len(np.unique(expected_labels)) == 11  # every label: a comparison that can fail
    # nnU-Net resamples and exports in a worker process with its own thread count, so
    # float rounding may differ in the last bit; a voxel may differ only where its two
    # most likely labels tie to within that rounding (a random network has a few).
    probabilities = np.load(tmp_path / "nnunet_out" / "P1.npz")["probabilities"]
    top_two = np.sort(probabilities, axis=0)[-2:].transpose(0, 3, 2, 1)
    differ = np.asarray(ours.dataobj) != expected_labels
    assert differ.sum() <= 1e-5 * differ.size
    assert np.all(top_two[1][differ] - top_two[0][differ] < 1e-5)

    record = json.loads((root / "participants" / "P1" / "seg" / "segmentation.json").read_text())
    assert record["backend"] == "nnunetv2"
    assert record["model"]["folds"] == ["0"]
    assert record["model"]["channels"] == {"water": "water", "fat": "fat"}
    assert record["provenance"]["weights_sha256"] == nn_backend.weights_sha256(model.settings)
    assert sum(record["label_voxels"][name] for name in LABELS) == np.count_nonzero(expected_labels)


def test_hips_region_segments_the_box_only_with_a_group_mapping(tiny, tmp_path):
    root = make_shard(tiny, tmp_path)
    mapping = {1: "iliopsoas_left", 3: "iliopsoas_left", 2: "iliopsoas_right",
               4: "iliopsoas_right", 5: "gluteus_maximus_left"}  # fmt: skip
    model = nn_backend.load_nnunet_model(
        settings(tiny / "model", labels=mapping, region="hips", hips_margin_mm=MARGINS),
        torch.device("cpu"),
    )
    table = run(root, model).set_index("participant_id")
    assert table.loc["P1", "status"] == "ok"
    assert table.loc["P1", "missing_labels"] == ""
    record = json.loads((root / "participants" / "P1" / "seg" / "segmentation.json").read_text())
    assert record["model"]["labels"] == [
        "gluteus_maximus_left",
        "iliopsoas_left",
        "iliopsoas_right",
    ]
    labels = np.asarray(nib.load(root / "participants" / "P1" / "seg" / "labels.nii.gz").dataobj)
    box = tuple(slice(a, b) for a, b in record["crop_boxes"][0])
    assert labels[box].size < labels.size / 2  # the box is a part of the volume
    outside = labels.copy()
    outside[box] = 0
    assert not outside.any()
    assert set(np.unique(labels[box])) == {0, 5, 11, 12}


def test_rerun_skips_current_participants_and_redoes_on_new_weights(tiny, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny / "model", model_dir)
    root = make_shard(tiny, tmp_path)
    run(root, nn_backend.load_nnunet_model(settings(model_dir), torch.device("cpu")))
    lines: list[str] = []
    run(root, nn_backend.load_nnunet_model(settings(model_dir), torch.device("cpu")), lines)
    assert progress_outcomes(lines)[0] == "P1: complete, skipped"

    checkpoint = model_dir / "fold_0" / "checkpoint_final.pth"
    weights = torch.load(checkpoint, weights_only=False)
    weights["network_weights"]["decoder.seg_layers.1.bias"][3] += 1e-3  # any change reruns
    torch.save(weights, checkpoint)
    lines = []
    run(root, nn_backend.load_nnunet_model(settings(model_dir), torch.device("cpu")), lines)
    assert progress_outcomes(lines)[0].startswith("P1: ok")
    lines = []
    changed = settings(model_dir, labels={1: "psoas_major_left"})  # a new mapping reruns too
    run(root, nn_backend.load_nnunet_model(changed, torch.device("cpu")), lines)
    assert progress_outcomes(lines)[0].startswith("P1: ok")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"channels": ("water",)}, "expects 2"),
        ({"labels": {12: "psoas_major_left"}}, "does not have"),
        ({"labels": {1: "psoas_minor_left"}}, "does not know"),
        ({"folds": (3,)}, "missing"),
    ],
)
def test_a_mapping_that_does_not_fit_the_model_is_refused(tiny, changes, message):
    with pytest.raises(nn_backend.NnunetModelError, match=message):
        nn_backend.load_nnunet_model(settings(tiny / "model", **changes), torch.device("cpu"))


def test_segment_command_runs_the_nnunet_backend(tiny, tmp_path, capsys):
    root = make_shard(tiny, tmp_path)
    (root / "participants" / "P1" / "dixon" / "fat.nii.gz").unlink()  # fast: P1 excluded
    sheet = root / "sheet.tsv"
    sheet.write_text("participant_id\tdicom\trelease\nP1\td/P1\tr1\nP2\td/P2\tr1\nP3\td/P3\tr1\n")
    args = ["segment", "--sheet", str(sheet), "--shard", "r1-0000", "--shard-size", "25"]
    args += ["--landmarks", str(root / "landmarks.tsv"), "--device", "cpu"]
    args += ["--participants-dir", str(root / "participants"), "--out", str(root / "seg.tsv")]
    args += ["--backend", "nnunetv2", "--nnunet-dir", str(tiny / "model"), "--folds", "0"]
    args += ["--channels", "water", "fat", "--labels", "1=psoas_major_left", "--no-mirroring"]
    args += ["--tile-step-size", "1"]
    assert main(args) == 0
    assert "nnU-Net model" in capsys.readouterr().out
    table = read_tsv(root / "seg.tsv")
    assert table["reason"].tolist() == [
        "inputs_unreadable",
        "inputs_unreadable",
        "landmarks_not_found",
    ]
    assert main([*args[: args.index("--nnunet-dir")], "--channels", "water"]) != 0
    assert "needs --nnunet-dir" in capsys.readouterr().err


def test_report_methods_name_the_nnunet_model_and_what_it_does_not_provide():
    from myoflow.cohort.report_methods import nnunet_summary

    model = {
        "backend": "nnunetv2",
        "dir": "/w/Dataset851_TotalSegMRI_part2_muscles_1088subj/nnUNetTrainer__3d_fullres",
        "folds": [0],
        "channels": ["in"],
        "region": "hips",
        "labels": {19: "iliopsoas_left", 20: "iliopsoas_right", 11: "gluteus_maximus_left"},
    }
    text = " ".join(nnunet_summary(model))
    assert "nnU-Net v2 model nnUNetTrainer__3d_fullres (fold(s) 0; input channels in)" in text
    assert "mapped to gluteus_maximus_left, iliopsoas_left, iliopsoas_right." in text
    assert "does not provide psoas_major_left, psoas_major_right, iliacus_left" in text
    assert "gluteus_maximus_right" in text.split("does not provide")[1]
    assert "without a psoas major/iliacus split" in text
