"""Training: pairs, soft targets, the sample cache, loss, split, the loop, resume, the card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from test_workflow import ROOT, check, copy_workflow, snakemake

from myoflow.cli import main
from myoflow.core.grid import Grid
from myoflow.core.io import read_tsv, save_nifti
from myoflow.core.labels import LABELS
from myoflow.landmarks.record import HipLandmarks, write_landmarks
from myoflow.segment.crop import CropSpec, crop_geometry, uncrop
from myoflow.segment.model.augment import AugmentSettings
from myoflow.segment.model.card import load_model
from myoflow.segment.model.evaluate import evaluate, render_model_card
from myoflow.segment.model.losses import soft_dice_loss
from myoflow.segment.model.registry import build_model
from myoflow.segment.model.samples import (
    PairsError,
    hash_inputs,
    load_or_prepare,
    prepare_pairs,
    read_pairs,
    sample_key,
    synthetic_pairs,
    training_data_sha256,
)
from myoflow.segment.model.targets import partial_volume_kernel, soft_targets
from myoflow.segment.model.train import (
    TrainingError,
    TrainSettings,
    load_checkpoint,
    split_participants,
    train,
)
from myoflow.synth.geometry import protocol
from myoflow.synth.phenotypes import sample_cohort
from myoflow.synth.render import render_participant

TINY = CropSpec(
    name="tiny",
    shape=(16, 16, 32),
    spacing_mm=(16.0, 16.0, 18.0),
    offset_mm=(-3.0, 47.0, 93.0),
    channels=("water", "fat"),
)
"""The hips crop's field of view (256 x 256 x 576 mm) in 16 x 16 x 32 voxels."""
LABEL_NAMES = ["psoas_major", "iliacus", "gluteus_maximus"]
CONFIG = {
    "architecture": "vnet",
    "in_channels": 2,
    "labels": LABEL_NAMES,
    "width": 0.0625,
    "crop": TINY.to_dict(),
}
FAST = TrainSettings(epochs=2, batch_size=3, augment=AugmentSettings(copies=1))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: tiny models gain nothing from more on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Three small synthetic participants as training pairs (truth hips as landmarks)."""
    out = tmp_path_factory.mktemp("train_cohort")
    proto = protocol("ukbb", "small")
    affine = proto.grid.affine_ras()
    rows = ["participant_id\timage_dir\tlabels\tlandmarks"]
    for n, row in enumerate(sample_cohort(5, 3, "ukbb").to_dict("records")):
        phantom = render_participant(row, proto.grid, np.random.default_rng(n))
        pid = row["participant_id"]
        water, fat = phantom.water.astype(np.float32), phantom.fat.astype(np.float32)
        channels = {"water": water, "fat": fat, "in": water + fat, "opp": np.abs(water - fat)}
        for name, data in channels.items():
            save_nifti(out / pid / "dixon" / f"{name}.nii.gz", data, affine)
        save_nifti(out / pid / "labels.nii.gz", phantom.labels, affine)
        hips = {
            side: np.array([phantom.truth[f"hip_{side}_{a}_mm"] for a in "xyz"])
            for side in ("left", "right")
        }
        write_landmarks(
            out / pid / "landmarks.json",
            pid,
            HipLandmarks(hips["left"], hips["right"], 1.0, (20.0, 20.0)),
        )
        rows.append(f"{pid}\t{pid}/dixon\t{pid}/labels.nii.gz\t{pid}/landmarks.json")
    (out / "pairs.tsv").write_text("\n".join(rows) + "\n")
    return out


@pytest.fixture(scope="module")
def samples(cohort, tmp_path_factory):
    """The cohort's prepared samples (6: three participants, two sides)."""
    prepared, excluded = prepare_pairs(
        read_pairs(cohort / "pairs.tsv"), TINY, LABEL_NAMES, tmp_path_factory.mktemp("cache")
    )
    assert not excluded
    return [s for p in prepared for s in p.samples]


def fresh_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(CONFIG)


# ------------------------------------------------------------------------------ loss


def test_soft_dice_loss_is_0_for_a_perfect_and_1_for_a_disjoint_prediction():
    rng = np.random.default_rng(0)
    soft = torch.from_numpy(rng.random((2, 3, 4, 5, 6)).astype(np.float32))
    assert float(soft_dice_loss(soft, soft)) == pytest.approx(0.0, abs=1e-6)
    a = torch.zeros(1, 1, 4, 4, 4)
    b = torch.zeros(1, 1, 4, 4, 4)
    a[..., :2], b[..., 2:] = 1.0, 1.0
    assert float(soft_dice_loss(a, b)) == pytest.approx(1.0, abs=1e-6)
    # Half of a 32-voxel target found and nothing else: 1 - 2 * 16 / (16 + 32) = 1/3.
    half = b.clone()
    half[..., 3] = 0.0
    assert float(soft_dice_loss(half, b)) == pytest.approx(1 / 3, abs=1e-6)
    assert float(soft_dice_loss(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2))) == 0.0
    with pytest.raises(ValueError, match="must share"):
        soft_dice_loss(a, b[:, :, :2])


# ---------------------------------------------------------------------- soft targets


def test_partial_volume_kernel_is_a_centred_box():
    np.testing.assert_allclose(partial_volume_kernel(1.0), [1.0])
    np.testing.assert_allclose(partial_volume_kernel(3.0), [1 / 3] * 3)
    np.testing.assert_allclose(partial_volume_kernel(2.0), [0.25, 0.5, 0.25])
    kernel = partial_volume_kernel(4.0 / 2.232)
    np.testing.assert_allclose(kernel, kernel[::-1])
    assert kernel.sum() == pytest.approx(1.0) and len(kernel) == 3


def test_soft_targets_keep_volume_and_the_side_and_give_sub_voxel_masks():
    grid = Grid((60, 50, 70), (2.0, 2.0, 3.0), (-60.0, -50.0, -100.0))
    affine = grid.affine_ras()
    labels = np.zeros(grid.shape, np.int16)
    labels[20:33, 18:29, 25:46] = LABELS["psoas_major_right"]  # 13 x 11 x 21 voxels
    labels[5:12, 18:29, 25:46] = LABELS["psoas_major_left"]  # the other side, nearby
    hip = np.array([-20.0, -2.0, -20.0])
    spec = CropSpec(name="t", shape=(24, 24, 24), spacing_mm=(4.0, 4.0, 6.0), offset_mm=(0, 0, 0))
    geometry = crop_geometry(spec, hip, "right", affine)
    target = soft_targets(labels, affine, geometry, [LABELS["psoas_major_right"]])
    assert target.shape == (1, 24, 24, 24) and target.min() >= 0 and target.max() <= 1
    truth_ml = 13 * 11 * 21 * 12.0 / 1000
    assert target.sum() * 96.0 / 1000 == pytest.approx(truth_ml, rel=0.02)
    assert 0 < np.count_nonzero((target > 0.01) & (target < 0.99))  # partial volume
    # Probabilities back on the fine grid, thresholded at 0.5: the box, not 4 mm steps.
    back = uncrop(target[0], geometry, grid.shape, affine, order=1) > 0.5
    right = labels == LABELS["psoas_major_right"]
    dice = 2 * np.count_nonzero(back & right) / (back.sum() + right.sum())
    assert dice > 0.95
    assert not np.any(back & (labels == LABELS["psoas_major_left"]))


# ------------------------------------------------------------------- pairs and cache


def test_read_pairs_resolves_paths_and_refuses_bad_tables(cohort, tmp_path):
    pairs = read_pairs(cohort / "pairs.tsv")
    assert [p.participant_id for p in pairs] == sorted(p.participant_id for p in pairs)
    assert pairs[0].labels == cohort / pairs[0].participant_id / "labels.nii.gz"
    assert pairs[0].channel_path("fat").is_file() and pairs[0].landmarks.is_file()
    bad = tmp_path / "bad.tsv"
    bad.write_text("participant_id\timage_dir\nA\tx\n")
    with pytest.raises(PairsError, match="lack the columns"):
        read_pairs(bad)
    bad.write_text("participant_id\timage_dir\tlabels\nA\tx\ty\nA\tx\tz\n")
    with pytest.raises(PairsError, match="repeated"):
        read_pairs(bad)


def test_synthetic_pairs_list_only_converted_participants(cohort, tmp_path):
    synth, converted = tmp_path / "synth", tmp_path / "participants"
    for pid in ("A", "B"):
        (synth / "truth" / pid).mkdir(parents=True)
        (synth / "truth" / pid / "labels.nii.gz").write_bytes(b"x")
        (converted / pid / "dixon").mkdir(parents=True)
        for channel in ("water", "fat", "in") + (("opp",) if pid == "A" else ()):
            (converted / pid / "dixon" / f"{channel}.nii.gz").write_bytes(b"x")
    (converted / "A" / "landmarks.json").write_text("{}")
    pairs = synthetic_pairs(synth, converted)
    assert [(p.participant_id, p.landmarks is not None) for p in pairs] == [("A", True)]
    assert main(["train-pairs", "--synth", str(synth), "--participants-dir", str(converted),
                 "--out", str(tmp_path / "lists" / "pairs.tsv")]) == 0  # fmt: skip
    table = read_tsv(tmp_path / "lists" / "pairs.tsv")
    assert table["image_dir"].tolist() == ["../participants/A/dixon"]
    assert (
        read_pairs(tmp_path / "lists" / "pairs.tsv")[0].labels.resolve()
        == (synth / "truth" / "A" / "labels.nii.gz").resolve()
    )


def test_the_data_hash_and_cache_key_follow_the_label_file(cohort, tmp_path):
    pair = read_pairs(cohort / "pairs.tsv")[0]
    before = hash_inputs(pair, TINY.channels)
    assert set(before) == {"water", "fat", "labels", "landmarks"}
    copy = tmp_path / "labels.nii.gz"
    image = nib.load(pair.labels)
    data = np.asarray(image.dataobj).copy()
    save_nifti(copy, data, image.affine)
    same = type(pair)(pair.participant_id, pair.image_dir, copy, pair.landmarks)
    assert hash_inputs(same, TINY.channels) == before  # same content, same hash
    data[tuple(np.argwhere(data == LABELS["iliacus_left"])[0])] = 0  # one voxel less
    save_nifti(copy, data, image.affine)
    after = hash_inputs(same, TINY.channels)
    assert after["labels"] != before["labels"] and after["water"] == before["water"]
    pid = pair.participant_id
    assert training_data_sha256({pid: after}) != training_data_sha256({pid: before})
    assert sample_key(after, TINY, LABEL_NAMES) != sample_key(before, TINY, LABEL_NAMES)
    assert sample_key(before, TINY, ["psoas_major"]) != sample_key(before, TINY, LABEL_NAMES)
    # The cache serves the unchanged pair and prepares the changed one anew.
    cache = tmp_path / "cache"
    first = load_or_prepare(pair, TINY, LABEL_NAMES, cache)
    again = load_or_prepare(pair, TINY, LABEL_NAMES, cache)
    np.testing.assert_array_equal(first.samples[1].target, again.samples[1].target)
    changed = load_or_prepare(same, TINY, LABEL_NAMES, cache)
    assert len(list(cache.glob("*.npz"))) == 2
    assert changed.samples[0].target.astype(float).sum() < first.samples[0].target.sum()


def test_samples_have_the_side_muscles_as_soft_targets(samples):
    assert [s.side for s in samples[:2]] == ["left", "right"]
    for sample in samples:
        assert sample.image.shape == (2, 16, 16, 32) and sample.image.dtype == np.float16
        assert sample.target.shape == (3, 16, 16, 32) and sample.target.dtype == np.float16
        volumes = sample.target.astype(float).sum(axis=(1, 2, 3))
        assert np.all(volumes > 0)  # every muscle is in the crop
        assert 0 < sample.target.max() <= 1


# ----------------------------------------------------------------------------- split


def test_split_by_fraction_folds_or_names():
    ids = [f"P{n:02d}" for n in range(10)]
    train_ids, held = split_participants(ids, val_fraction=0.2, seed=3)
    assert len(held) == 2 and sorted(train_ids + held) == ids
    assert split_participants(ids, val_fraction=0.2, seed=3)[1] == held  # seeded
    folds = [split_participants(ids, folds=3, fold=f, seed=1)[1] for f in range(3)]
    assert sorted(sum(folds, [])) == ids and [len(f) for f in folds] == [4, 3, 3]
    assert split_participants(ids, held_out=["P03"])[1] == ["P03"]
    assert split_participants(ids, val_fraction=0.0)[1] == []
    with pytest.raises(TrainingError, match="not in the training pairs"):
        split_participants(ids, held_out=["X"])
    with pytest.raises(TrainingError, match="k-fold"):
        split_participants(ids, folds=3, fold=3)


# ------------------------------------------------------------------------------ loop


def test_loss_falls_when_a_tiny_model_overfits_one_sample(samples, tmp_path):
    settings = TrainSettings(
        epochs=30, batch_size=1, learning_rate=1e-3, augment=AugmentSettings(copies=0)
    )
    result = train(
        fresh_model(),
        samples[1:2],
        settings,
        tmp_path,
        spacing_mm=TINY.spacing_mm,
        device=torch.device("cpu"),
        fingerprint={},
    )
    losses = result.state.epoch_losses
    assert result.complete and result.state.step == 30 and len(losses) == 30
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    assert np.all(np.diff(losses[:10]) < 0), losses  # falling step by step at first


def test_resume_continues_exactly_where_training_stopped(samples, tmp_path):
    common = {"spacing_mm": TINY.spacing_mm, "device": torch.device("cpu")}
    fingerprint = {"train_ids": ["a"]}
    straight = fresh_model()
    done = train(straight, samples, FAST, tmp_path / "a", fingerprint=fingerprint, **common)
    assert done.complete and done.state.epoch == 2 and done.state.step == 8  # 12 items / 3

    # Stopped by the time budget after its first step ...
    stopped = train(
        fresh_model(), samples, FAST, tmp_path / "b", fingerprint=fingerprint, deadline=0.0,
        **common,
    )  # fmt: skip
    assert not stopped.complete and stopped.state.step == 1 and stopped.checkpoint.is_file()
    # ... then resumed in a new process (a fresh model and optimizer) and run to the end.
    seen = []
    resumed_model = fresh_model(seed=99)
    resumed = train(
        resumed_model, samples, FAST, tmp_path / "b", fingerprint=fingerprint, resume=True,
        progress=seen.append, **common,
    )  # fmt: skip
    assert (seen[0].epoch, seen[0].step_in_epoch, seen[0].step) == (0, 2, 2)
    assert resumed.complete and resumed.state.step == 8 and resumed.steps_run == 7
    assert resumed.state.epoch_losses == pytest.approx(done.state.epoch_losses, rel=1e-5)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], value, msg=name)

    # More epochs later: the run goes on at epoch 3 (index 2).
    more = TrainSettings(epochs=3, batch_size=3, augment=AugmentSettings(copies=1))
    seen.clear()
    train(
        resumed_model, samples, more, tmp_path / "b", fingerprint=fingerprint, resume=True,
        progress=seen.append, **common,
    )  # fmt: skip
    assert (seen[0].epoch, seen[0].step_in_epoch, seen[-1].epoch) == (2, 1, 2)

    # A checkpoint of another training is refused.
    model = fresh_model()
    with pytest.raises(TrainingError, match="train_ids"):
        load_checkpoint(
            tmp_path / "b" / "checkpoint.pt",
            model,
            torch.optim.Adam(model.parameters()),
            {"train_ids": ["b"], "recipe": more.fingerprint()},
            torch.device("cpu"),
        )


# ------------------------------------------------------------------- command and rule


def test_train_command_writes_a_verified_model_and_card(cohort, tmp_path):
    config = tmp_path / "model.json"
    config.write_text(json.dumps(CONFIG))
    pids = [p.participant_id for p in read_pairs(cohort / "pairs.tsv")]
    out = tmp_path / "model"
    args = ["train", "--pairs", str(cohort / "pairs.tsv"), "--out", str(out)]
    args += ["--config", str(config), "--epochs", "1", "--copies", "1", "--threads", "1"]
    assert main([*args, "--held-out", pids[2]]) == 0
    model, card = load_model(out)
    assert card["config"]["labels"] == LABEL_NAMES and card["config"]["crop"]["name"] == "tiny"
    data, training = card["data"], card["training"]
    assert (data["train_participants"], data["held_out_participants"]) == (2, 1)
    assert len(data["training_data_sha256"]) == 64
    assert (training["epochs_done"], training["steps"], training["complete"]) == (1.0, 3, True)
    assert set(card["software"]) == {"python", "torch", "numpy", "myoflow"}
    # Groups only when the model outputs all their muscles: iliopsoas, not gluteus.
    assert set(card["evaluation"]["dice"]) == {*LABEL_NAMES, "iliopsoas"}
    assert card["evaluation"]["participants"] == 1
    page = (out / "MODEL_CARD.md").read_text()
    assert card["weights_sha256"] in page and "psoas_major" in page
    dice = read_tsv(out / "held_out_dice.tsv")
    assert set(dice["participant_id"]) == {pids[2]} and len(dice) == 4 * 2
    assert json.loads((out / "split.json").read_text())["held_out"] == [pids[2]]
    assert isinstance(model, torch.nn.Module) and not model.training
    # --init-from starts from those weights (more participants, a fresh optimizer); a model
    # of another config is refused before any preparation
    more = tmp_path / "more"
    # a learning rate so small that the weights stay where they started
    assert main([*args[:4], str(more), *args[5:], "--lr", "1e-12", "--init-from", str(out)]) == 0
    continued, more_card = load_model(more)
    started = more_card["training"]["initialised_from"]
    assert started["weights_sha256"] == card["weights_sha256"] and started["steps"] == 3
    assert card["weights_sha256"] in (more / "MODEL_CARD.md").read_text()
    assert card["training"]["initialised_from"] is None
    for name, value in model.state_dict().items():
        assert torch.allclose(continued.state_dict()[name], value, atol=1e-8), name
    other = tmp_path / "other.json"
    other.write_text(json.dumps(CONFIG | {"width": CONFIG["width"] * 2}))
    refused = [*args[:4], str(tmp_path / "x"), "--config", str(other), *args[7:]]
    assert main([*refused, "--init-from", str(out)]) == 2
    assert not (tmp_path / "x").exists()


def test_train_rule_dry_runs(tmp_path):
    copy_workflow(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "participants.tsv").write_text(
        "participant_id\tdicom\trelease\nP1\tdicom/P1\tr1\n"
    )
    (tmp_path / "data" / "pairs.tsv").write_text("participant_id\timage_dir\tlabels\n")
    config = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    config["participants"] = "data/participants.tsv"
    config["training"] |= {"pairs": "data/pairs.tsv", "folds": 5, "fold": 2, "device": "cuda"}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    output = check(snakemake("-n", "-p", "train", "--cores", "2", cwd=tmp_path))
    assert "results/training/model/model_card.json" in output
    assert "--folds 5 --fold 2" in output and "--device cuda" in output
    assert "gpu=1" in output
    assert "--init-from" not in output
    (tmp_path / "start").mkdir()
    (tmp_path / "start" / "model_card.json").write_text("{}")
    config["training"]["init_from"] = "start"
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    output = check(snakemake("-n", "-p", "train", "--cores", "2", cwd=tmp_path))
    assert "--init-from start" in output


def test_training_config_is_checked_by_the_schema():
    schema = yaml.safe_load((ROOT / "config" / "schemas" / "config.schema.yaml").read_text())
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    jsonschema.validate(config, schema)
    for bad in ({"labels": ["quadriceps"]}, {"crop": "knee"}, {"folds": 1}, {"max_minutes": 0}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(config | {"training": config["training"] | bad}, schema)


def test_evaluation_scores_a_known_segmentation(cohort):
    """A fake segmenter returns the truth with one left iliacus voxel in three removed:
    Dice and volumes follow exactly, and the Bland-Altman bias is that loss."""
    pairs = read_pairs(cohort / "pairs.tsv")
    truth = {p.participant_id: np.asarray(nib.load(p.labels).dataobj) for p in pairs}
    calls = []

    def segment(model, config, channels, affine_ras, landmarks, device, batch_size):
        pid = pairs[len(calls)].participant_id
        calls.append((sorted(channels), batch_size))
        labels = truth[pid].astype(np.int16)
        iliacus = np.flatnonzero(labels == LABELS["iliacus_left"])
        labels.flat[iliacus[::3]] = 0
        return type("Segmentation", (), {"labels": labels})

    result = evaluate(fresh_model(), CONFIG, pairs, torch.device("cpu"), segment=segment)
    assert calls == [(["fat", "water"], 2)] * 3  # the crop's channels; landmarks given
    dice = result.dice.set_index(["participant_id", "side", "structure"])["dice"]
    for pid, labels in truth.items():
        kept = np.count_nonzero(labels == LABELS["iliacus_left"])
        found = kept - len(range(0, kept, 3))
        assert dice[pid, "left", "iliacus"] == pytest.approx(2 * found / (found + kept))
        assert dice[pid, "right", "iliacus"] == 1.0 and dice[pid, "left", "psoas_major"] == 1.0
    agreement = result.agreement.set_index(["structure", "units"])
    voxel_ml = float(np.prod(protocol("ukbb", "small").grid.spacing_mm)) / 1000
    removed = [
        len(range(0, np.count_nonzero(t == LABELS["iliacus_left"]), 3)) for t in truth.values()
    ]
    # Six participant sides: three lose voxels, three do not.
    expected_bias = -sum(removed) * voxel_ml / 6
    assert agreement.loc[("iliacus", "ml"), "bias"] == pytest.approx(expected_bias)
    assert agreement.loc[("psoas_major", "ml"), "bias"] == 0.0
    assert agreement.loc[("iliacus", "ml"), "n"] == 6
    summary = json.loads(json.dumps(result.summary()))  # JSON-able, no NaN
    assert summary["dice"]["psoas_major"]["mean"] == 1.0
    assert summary["volume_agreement"]["iliacus"]["%"]["bias"] < 0
    page = render_model_card({"config": CONFIG, "evaluation": summary})
    bias = summary["volume_agreement"]["iliacus"]["ml"]["bias"]
    assert f"| iliacus | ml | 6 | {bias:.2f} |" in page


def test_the_cli_starts_without_torch():
    """Every command but segment and train runs without torch: the CLI must not import it."""
    code = "import sys, myoflow.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
