"""Per-label thresholds: the decision rule, its calibration, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from scipy import ndimage
from test_predict import GRID, HIPS, ellipsoid, points_lps
from test_train import CONFIG, LABEL_NAMES, cohort, one_thread  # noqa: F401  (fixtures)
from test_workflow import check, copy_workflow, snakemake

from myoflow.cli import main
from myoflow.core.io import read_tsv
from myoflow.core.labels import LABELS
from myoflow.segment.crop import CropSpec, crop_geometry, to_crop
from myoflow.segment.model.calibrate import (
    CalibrationError,
    CalibrationVoxels,
    calibrate_thresholds,
    calibration_table,
    collect_voxels,
    column_values,
    decide,
)
from myoflow.segment.model.card import load_model, read_card, save_model
from myoflow.segment.model.labelling import label_thresholds, stitch_labels
from myoflow.segment.model.registry import ModelConfigError, build_model, check_config

COARSE = CropSpec(shape=(16, 16, 16), spacing_mm=(4.0, 4.0, 6.0), offset_mm=(0.0, 0.0, 0.0))
NAMES = ["psoas_major", "iliacus", "gluteus_medius"]
VOXEL_ML = float(np.prod(GRID.spacing_mm)) / 1000.0


def geometries(spec: CropSpec = COARSE) -> dict:
    return {s: crop_geometry(spec, HIPS[s], s, GRID.affine_ras()) for s in HIPS}


def smooth_random(seed: int) -> dict[str, np.ndarray]:
    """Smooth random probability maps in [0, 1] per side, one per label."""
    rng = np.random.default_rng(seed)
    out = {}
    for side in HIPS:
        noise = ndimage.gaussian_filter(rng.random((len(NAMES), *COARSE.shape)), (0, 1.5, 1.5, 1.5))
        out[side] = ((noise - noise.min()) / (noise.max() - noise.min())).astype(np.float32)
    return out


def test_thresholds_scale_each_labels_cut_and_05_is_the_old_rule():
    """Two labels at one voxel: the one furthest over its own threshold wins; at 0.5 for
    all, the decision is the most probable label reaching 0.5."""
    geo = geometries()
    probabilities = {s: np.zeros((2, *COARSE.shape), np.float32) for s in HIPS}
    probabilities["left"][0] = 0.45  # psoas everywhere in the left crop
    probabilities["left"][1] = 0.35  # iliacus everywhere
    names = NAMES[:2]
    args = (probabilities, geo, names, GRID.shape, GRID.affine_ras())
    assert not stitch_labels(*args)[0].any()  # nothing reaches 0.5
    psoas = stitch_labels(*args, [0.4, 0.5])[0]
    assert set(np.unique(psoas)) == {0, LABELS["psoas_major_left"]}
    # 0.35 / 0.3 > 0.45 / 0.4: iliacus, though less probable, is further over its cut
    iliacus, best = stitch_labels(*args, [0.4, 0.3])
    assert set(np.unique(iliacus)) == {0, LABELS["iliacus_left"]}
    # the winning probability (0.35 inside the crop, less where its edge is interpolated)
    assert np.median(best[iliacus > 0]) == pytest.approx(0.35)
    assert best[iliacus > 0].min() >= 0.3 - 1e-6
    assert np.count_nonzero(iliacus) > 100 and np.count_nonzero(psoas) > 100
    for bad in ([0.5], [0.0, 0.5], [0.5, 1.0]):
        with pytest.raises(ValueError, match="thresholds"):
            stitch_labels(*args, bad)


@pytest.mark.parametrize("thresholds", [[0.5, 0.5, 0.5], [0.3, 0.62, 0.45]])
def test_candidate_voxels_decide_exactly_as_stitch_labels(thresholds):
    """Calibration's fast decision on the collected voxels is the segmentation's own: with
    the truth set to stitch_labels' output, decide() returns it voxel for voxel, and no
    labelled voxel lies outside the candidates."""
    geo, probabilities = geometries(), smooth_random(3)
    labels, _ = stitch_labels(probabilities, geo, NAMES, GRID.shape, GRID.affine_ras(), thresholds)
    assert np.count_nonzero(labels) > 200
    voxels = collect_voxels("p1", probabilities, geo, NAMES, labels, GRID.affine_ras(), VOXEL_ML)
    decided = decide(voxels.probabilities, thresholds, column_values(NAMES))
    np.testing.assert_array_equal(decided, voxels.truth)
    assert np.count_nonzero(decided) == np.count_nonzero(labels)
    values = column_values(NAMES)
    for m in range(len(NAMES)):
        assert voxels.truth_voxels[m] == np.count_nonzero(np.isin(labels, values[[m, m + 3]]))


def under_segmenting(seed: int) -> tuple[np.ndarray, dict, dict]:
    """Two muscles per side and probabilities that under-segment them at 0.5: the linear
    crop of each blurred mask, squared (so the 0.5 contour lies inside the muscle)."""
    points = points_lps(GRID)
    rng = np.random.default_rng(seed)
    truth = np.zeros(GRID.shape, np.int16)
    geo = geometries()
    probabilities = {}
    for side, medial in (("left", -1.0), ("right", 1.0)):
        hip = HIPS[side] + rng.normal(0, 1.0, 3)
        psoas = ellipsoid(points, hip + [6.0 * medial, 4.0, 6.0], (12.0, 10.0, 26.0), tilt=0.2)
        iliacus = ellipsoid(points, hip + [-14.0 * medial, -10.0, -12.0], (10.0, 8.0, 16.0))
        iliacus &= ~psoas
        truth[psoas] = LABELS[f"psoas_major_{side}"]
        truth[iliacus] = LABELS[f"iliacus_{side}"]
        side_maps = []
        for mask, power in ((psoas, 2.0), (iliacus, 3.0)):
            soft = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)
            side_maps.append(to_crop(soft, GRID.affine_ras(), geo[side], 1) ** power)
        probabilities[side] = np.stack(side_maps).astype(np.float32)
    return truth, probabilities, geo


def test_calibrated_thresholds_give_each_labels_annotated_volume():
    names = NAMES[:2]
    collected = []
    for seed in range(3):
        truth, probabilities, geo = under_segmenting(seed)
        collected.append(
            collect_voxels(
                f"p{seed}", probabilities, geo, names, truth, GRID.affine_ras(), VOXEL_ML
            )
        )
    thresholds, sweeps = calibrate_thresholds(collected, names)
    assert 1 <= sweeps < 50
    # squared and cubed probabilities: the cuts fall well below 0.5, iliacus lowest
    assert 0.05 < thresholds[1] < thresholds[0] < 0.45
    table = calibration_table(collected, names, thresholds).set_index(["label", "thresholds"])
    for name in names:
        before, after = table.loc[(name, "0.5")], table.loc[(name, "calibrated")]
        assert before["volume_bias_percent"] < -10
        assert abs(after["predicted_ml"] - after["truth_ml"]) <= 2 * VOXEL_ML
        assert after["dice"] > before["dice"]
    # the real segmentation with these thresholds reproduces the volumes
    truth, probabilities, geo = under_segmenting(0)
    labels, _ = stitch_labels(probabilities, geo, names, GRID.shape, GRID.affine_ras(), thresholds)
    decided = decide(collected[0].probabilities, thresholds, column_values(names))
    for value in column_values(names):
        assert np.count_nonzero(labels == value) == np.count_nonzero(decided == value) > 0


def test_calibration_matches_volume_across_grids_of_different_voxel_size():
    """Participants on two grids: the cut matches the annotated millilitres, not voxels."""
    names = ["psoas_major"]
    voxels = []
    for pid, voxel_ml, annotated in (("fine", 1.0, 30), ("coarse", 2.0, 70)):
        probabilities = np.zeros((100, 2), np.float32)
        probabilities[:, 0] = np.linspace(0.99, 0.01, 100)  # the left side's column
        truth = np.zeros(100, np.int16)
        truth[:annotated] = LABELS["psoas_major_left"]
        voxels.append(CalibrationVoxels(pid, probabilities, truth, np.array([annotated]), voxel_ml))
    thresholds, _ = calibrate_thresholds(voxels, names)
    calibrated = calibration_table(voxels, names, thresholds).iloc[-1]
    assert calibrated["truth_ml"] == 30 * 1.0 + 70 * 2.0
    assert abs(calibrated["predicted_ml"] - calibrated["truth_ml"]) <= 2.0  # one coarse voxel


def test_calibration_refuses_nothing_to_calibrate_on():
    with pytest.raises(CalibrationError, match="no calibration participant"):
        calibrate_thresholds([], NAMES)
    truth, probabilities, geo = under_segmenting(0)
    # the annotation holds no gluteus medius: nothing says where to cut it
    three = {s: np.concatenate([p, p[:1]]) for s, p in probabilities.items()}
    voxels = collect_voxels("p0", three, geo, NAMES, truth, GRID.affine_ras(), 1.0)
    with pytest.raises(CalibrationError, match="gluteus_medius"):
        calibrate_thresholds([voxels], NAMES)


def test_model_config_thresholds_are_checked_and_default_to_05():
    config = dict(CONFIG)
    check_config(config | {"thresholds": {"psoas_major": 0.4}})
    assert label_thresholds(config | {"thresholds": {"iliacus": 0.3}}, LABEL_NAMES) == [
        0.5,
        0.3,
        0.5,
    ]
    for bad in ({"psoas_major": 1.0}, {"gluteus_medius": 0.4}, {"iliacus": True}, [0.4]):
        with pytest.raises(ModelConfigError, match="thresholds"):
            check_config(config | {"thresholds": bad})


def test_calibrate_command_writes_the_same_weights_with_thresholds(cohort, tmp_path):  # noqa: F811
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    save_model(model_dir, build_model(CONFIG).state_dict(), CONFIG, {"evaluation": None})
    pairs = read_tsv(cohort / "pairs.tsv")
    calibration, held = tmp_path / "calibration.tsv", tmp_path / "held.tsv"
    rows = pairs.assign(
        image_dir=[str(cohort / p) for p in pairs["image_dir"]],
        labels=[str(cohort / p) for p in pairs["labels"]],
        landmarks=[str(cohort / p) for p in pairs["landmarks"]],
    )
    rows.iloc[:2].to_csv(calibration, sep="\t", index=False)
    rows.iloc[2:].to_csv(held, sep="\t", index=False)
    out = tmp_path / "calibrated"
    args = ["calibrate", "--model", str(model_dir), "--pairs", str(calibration)]
    args += ["--out", str(out), "--device", "cpu", "--held-out-pairs", str(held)]
    assert main(args) == 0
    model, card = load_model(out)  # verified: same weights as the card says
    assert card["weights_sha256"] == read_card(model_dir)["weights_sha256"]
    thresholds = card["config"]["thresholds"]
    assert set(thresholds) == set(LABEL_NAMES) and all(0 < t < 1 for t in thresholds.values())
    assert card["calibration"]["participants"] == 2
    assert card["evaluation"]["participants"] == 1
    table = read_tsv(out / "calibration.tsv")
    assert len(table) == 2 * len(LABEL_NAMES)
    assert "## Calibration" in (out / "MODEL_CARD.md").read_text()
    assert json.loads((out / "model_card.json").read_text())["config"]["thresholds"] == thresholds
    # calibrating and evaluating on one participant is refused, as is overwriting the model
    both = ["calibrate", "--model", str(model_dir), "--pairs", str(held), "--out", str(out)]
    assert main([*both, "--held-out-pairs", str(held)]) == 2  # a user error
    assert main(["calibrate", "--model", str(model_dir), "--pairs", str(calibration),
                 "--out", str(model_dir)]) == 2  # fmt: skip


def training_workflow(tmp_path) -> dict:
    """A copy of the workflow with empty training and calibration pairs tables; its
    config with ``training.pairs`` set (save it with :func:`save_config`)."""
    copy_workflow(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "participants.tsv").write_text(
        "participant_id\tdicom\trelease\nP1\tdicom/P1\tr1\n"
    )
    for name in ("pairs.tsv", "calibration.tsv"):
        (tmp_path / "data" / name).write_text("participant_id\timage_dir\tlabels\n")
    config = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    config["participants"] = "data/participants.tsv"
    config["training"] |= {"pairs": "data/pairs.tsv"}
    save_config(tmp_path, config)
    return config


def save_config(tmp_path, config: dict) -> None:
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def test_calibrate_rule_dry_runs_and_needs_calibration_pairs(tmp_path):
    config = training_workflow(tmp_path)
    refused = snakemake("-n", "calibrate", "--cores", "1", cwd=tmp_path)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "needs config training.calibration_pairs" in said
    config["training"]["calibration_pairs"] = "data/calibration.tsv"
    save_config(tmp_path, config)
    output = check(snakemake("-n", "-p", "calibrate", "--cores", "1", cwd=tmp_path))
    assert "results/training/model/calibrated/model_card.json" in output
    assert "--pairs data/calibration.tsv" in output and "--split" in output
    assert "rule train:" in output  # the model to calibrate is trained first
