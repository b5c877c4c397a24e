"""The full-resolution refiner: network, geometry, training, cascade inference, command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_calibrate import save_config, training_workflow
from test_predict import GRID, HIPS, LANDMARKS, ellipsoid, points_lps
from test_train import CONFIG, LABEL_NAMES, cohort, one_thread  # noqa: F401  (fixtures)
from test_workflow import check, snakemake

from myoflow.cli import main
from myoflow.core.io import read_tsv
from myoflow.segment.crop import CropSpec, crop_geometry
from myoflow.segment.model.card import load_model, read_card, save_model
from myoflow.segment.model.labelling import crop_box, stitch_labels
from myoflow.segment.model.predict import side_probabilities
from myoflow.segment.model.refine import (
    Cascade,
    Refiner,
    active_block,
    coarse_network,
    coarse_on_fine,
    coarse_shifts,
    refine_config,
    refine_probabilities,
    refine_spec,
    shifted_spec,
)
from myoflow.segment.model.refine_train import (
    RefineSample,
    RefineSettings,
    draw_patch,
    refine_loss,
    train_refiner,
)
from myoflow.segment.model.registry import (
    ModelConfigError,
    build_model,
    check_config,
    model_channels,
)

FINE = CropSpec(
    name="fine",
    shape=(24, 24, 20),
    spacing_mm=GRID.spacing_mm,
    offset_mm=(0.0, 0.0, 0.0),
    channels=("water", "fat"),
    percentiles=(0.0, 100.0),
)
COARSE = CropSpec(
    name="coarse",
    shape=(16, 16, 16),
    spacing_mm=(4.0, 4.0, 6.0),
    offset_mm=(0.0, 0.0, 0.0),
    channels=("water", "fat"),
    percentiles=(0.0, 100.0),
)


def test_untrained_refiner_returns_the_coarse_probabilities():
    """The last layer starts at zero: refining is the identity until trained."""
    torch.manual_seed(0)
    refiner = Refiner(image_channels=2, labels=3)
    image = torch.rand(2, 2, 9, 10, 11)
    coarse = torch.rand(2, 3, 9, 10, 11) * 0.998 + 0.001
    assert torch.allclose(refiner(image, coarse), coarse, atol=1e-5)
    with pytest.raises(ValueError, match="coarse channels"):
        refiner(image, coarse[:, :2])
    with pytest.raises(ValueError, match="one grid"):
        refiner(image, coarse[..., :5])
    with pytest.raises(ValueError):
        Refiner(2, 3, dilations=(1, 0))


def test_coarse_probabilities_land_on_the_fine_grid_at_the_same_points():
    """A map linear in LPS mm on the coarse crop, resampled onto the fine crop, equals that
    linear map at the fine voxel centres (linear interpolation is exact for it), for both
    sides, the left mirrored, wherever the fine voxel lies inside the coarse crop."""
    affine = GRID.affine_ras()
    for side, hip in HIPS.items():
        coarse = crop_geometry(COARSE, hip, side, affine)
        fine = crop_geometry(FINE, hip, side, affine)

        def linear(geometry):
            index = np.indices(geometry.shape).reshape(3, -1)
            lps = geometry.affine_lps[:3, :3] @ index + geometry.affine_lps[:3, 3:4]
            return (0.3 * lps[0] - 0.2 * lps[1] + 0.1 * lps[2]).reshape(geometry.shape)

        resampled = coarse_on_fine(linear(coarse)[None], coarse, fine)[0]
        index = np.indices(fine.shape).reshape(3, -1)
        to_coarse = np.linalg.inv(coarse.affine_lps) @ fine.affine_lps
        at = to_coarse[:3, :3] @ index + to_coarse[:3, 3:4]
        inside = np.all((at >= 0) & (at <= np.array(coarse.shape)[:, None] - 1), axis=0)
        assert inside.mean() > 0.9
        assert np.allclose(resampled.ravel()[inside], linear(fine).ravel()[inside], atol=1e-3)
    with pytest.raises(ValueError, match="side"):
        coarse_on_fine(
            np.zeros((1, *COARSE.shape)),
            crop_geometry(COARSE, HIPS["left"], "left", affine),
            crop_geometry(FINE, HIPS["right"], "right", affine),
        )


def test_active_block_covers_the_floor_plus_margin_clipped():
    coarse = np.zeros((2, 30, 30, 30), np.float32)
    assert active_block(coarse) is None
    coarse[1, 10:12, 3, 25] = 0.5
    assert active_block(coarse, floor=0.1, margin=4) == (
        slice(6, 16),
        slice(0, 8),
        slice(21, 30),
    )


def test_refined_probabilities_keep_the_coarse_ones_outside_the_block():
    torch.manual_seed(1)
    refiner = Refiner(2, 2).eval()
    torch.nn.init.normal_(refiner.delta.weight, std=0.5)  # a refiner that changes things
    coarse = np.zeros((2, 40, 40, 40), np.float32)
    coarse[0, 15:25, 15:25, 15:25] = 0.9
    image = np.random.default_rng(0).random((2, 40, 40, 40)).astype(np.float32)
    refined = refine_probabilities(refiner, image, coarse)
    block = active_block(coarse)
    outside = np.ones(coarse.shape[1:], bool)
    outside[block] = False
    assert np.array_equal(refined[:, outside], coarse[:, outside])
    assert not np.allclose(refined[(slice(None), *block)], coarse[(slice(None), *block)])


def test_patches_centre_on_disagreement_and_stay_inside():
    shape = (30, 20, 40)
    candidate = np.ravel_multi_index((2, 18, 39), shape)
    sample = RefineSample(
        "P1",
        "left",
        np.arange(2 * np.prod(shape), dtype=np.float32).reshape(2, *shape),  # exact values
        np.zeros((1, *shape), np.float16),
        np.ones((1, *shape), np.float16),
        np.array([candidate]),
    )
    rng = np.random.default_rng(0)
    image, coarse, target = draw_patch(sample, (8, 8, 8), rng, candidate_fraction=1.0)
    assert image.shape == (2, 8, 8, 8) and coarse.shape == target.shape == (1, 8, 8, 8)
    # pushed inside the crop (starts 0, 12, 32), the patch still holds the candidate
    assert image[0, 2, 6, 7] == sample.image[0, 2, 18, 39]
    with pytest.raises(ValueError, match="larger"):
        draw_patch(sample, (8, 30, 8), rng, 1.0)


def test_training_moves_a_blurred_boundary_back_to_the_image_edge():
    """Coarse probabilities are a blurred and shifted copy of a sphere the image shows
    sharply; a few dozen steps of training lower the loss and raise the Dice."""
    rng = np.random.default_rng(0)
    samples = []
    for n in range(4):
        grid = np.indices((32, 32, 32)).astype(np.float32)
        centre = 16 + rng.uniform(-3, 3, 3)
        radius = rng.uniform(6, 9)
        distance = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
        truth = (distance <= radius).astype(np.float32)
        image = np.stack([truth + 0.05 * rng.standard_normal(truth.shape), 1 - truth])
        coarse = 1 / (1 + np.exp((distance - radius + 1.5) / 1.5))  # too small, too soft
        samples.append(
            RefineSample(
                f"P{n}",
                "right",
                image.astype(np.float16),
                coarse[None].astype(np.float16),
                truth[None].astype(np.float16),
                np.flatnonzero(np.abs(coarse - truth) > 0.1),
            )
        )
    torch.manual_seed(0)
    refiner = Refiner(2, 1, features=8, dilations=(1, 2))
    settings = RefineSettings(steps=60, batch_size=2, patch=(16, 16, 16), learning_rate=3e-3)
    record = train_refiner(refiner, samples, settings, log_every=20)
    assert record["steps_done"] == 60 and len(record["losses"]) == 3
    assert record["losses"][-1] < 0.8 * record["losses"][0]

    def dice(probabilities):
        overlap = sum(((p[0] >= 0.5) & (s.target[0] > 0.5)).sum() for p, s in probabilities)
        sizes = sum((p[0] >= 0.5).sum() + (s.target[0] > 0.5).sum() for p, s in probabilities)
        return 2 * overlap / sizes

    before = dice([(s.coarse.astype(np.float32), s) for s in samples])
    after = dice(
        [(refine_probabilities(refiner, s.image.astype(np.float32), s.coarse), s) for s in samples]
    )
    assert after > before + 0.02


def test_refine_loss_is_lowest_for_the_target():
    target = (torch.rand(2, 3, 8, 8, 8) > 0.5).float()
    right = refine_loss((target * 2 - 1) * 8, target)
    wrong = refine_loss(-(target * 2 - 1) * 8, target)
    assert float(right) < 0.01 < 1.0 < float(wrong)


def test_config_with_refine_builds_a_cascade_and_is_checked():
    config = CONFIG | {"refine": refine_config(4, [1, 2], FINE)}
    model = build_model(config)
    assert isinstance(model, Cascade) and coarse_network(model) is model.coarse
    assert refine_spec(config) == FINE and refine_spec(CONFIG) is None
    assert model_channels(config) == ("water", "fat")
    assert model_channels(CONFIG | {"refine": refine_config(crop=CropSpec(channels=("in",)))}) == (
        "water",
        "fat",
        "in",
    )
    with pytest.raises(TypeError, match="two stages"):
        model(torch.zeros(1, 2, 16, 16, 32))
    for bad in (
        {"features": 0},
        {"dilations": []},
        {"dilations": [1, "2"]},
        {"crop": {"shape": [1, 2]}},
        {"kernel": 3},
        [1],
    ):
        with pytest.raises(ModelConfigError, match="refine"):
            check_config(CONFIG | {"refine": bad})


def small_participant() -> dict[str, np.ndarray]:
    points = points_lps(GRID)
    muscle = np.zeros(GRID.shape, bool)
    for hip in HIPS.values():
        muscle |= ellipsoid(points, hip + np.array([0.0, 0.0, 10.0]), (12.0, 10.0, 20.0))
    water = np.where(muscle, 1.0, 0.2).astype(np.float32)
    return {"water": water, "fat": (1.0 - water).astype(np.float32)}


def test_an_untrained_cascade_segments_like_its_coarse_network_inside_the_fine_crop():
    """Identity refiner: the fine crop lies on the stitched grid, so the coarse
    probabilities resampled onto it and then copied back are those resampled directly."""
    torch.manual_seed(3)
    plain = CONFIG | {"crop": COARSE.to_dict(), "labels": LABEL_NAMES[:1], "width": 0.125}
    config = plain | {"refine": refine_config(4, [1], FINE)}
    cascade = build_model(config).eval()
    with torch.no_grad():  # outputs around 0.5, so that some voxels are muscle
        cascade.coarse.output.bias.fill_(0.2)
    channels, affine = small_participant(), GRID.affine_ras()
    fine, fine_geometries, seconds = side_probabilities(
        cascade, config, channels, affine, LANDMARKS
    )
    assert "refine" in seconds and all(g.shape == FINE.shape for g in fine_geometries.values())
    coarse, coarse_geometries, _ = side_probabilities(
        cascade.coarse, plain, channels, affine, LANDMARKS
    )
    names = LABEL_NAMES[:1]
    labels_coarse, best_coarse = stitch_labels(coarse, coarse_geometries, names, GRID.shape, affine)
    labels_fine, best_fine = stitch_labels(fine, fine_geometries, names, GRID.shape, affine)
    crop, interior = np.zeros(GRID.shape, bool), np.zeros(GRID.shape, bool)
    for geometry in fine_geometries.values():
        box = crop_box(geometry, GRID.shape, affine)
        crop[tuple(slice(a, b) for a, b in box)] = True
        interior[tuple(slice(a + 1, b - 1) for a, b in box)] = True  # the rim may differ
    assert labels_coarse[interior].any() and not labels_coarse[interior].all()
    assert np.mean(labels_fine[interior] == labels_coarse[interior]) > 0.999
    both = interior & (labels_fine > 0) & (labels_coarse > 0)
    assert np.allclose(best_fine[both], best_coarse[both], atol=1e-4)
    assert not labels_fine[~crop].any()  # the cascade labels only its fine crop


class FirstChannel(torch.nn.Module):
    """A stand-in first stage whose 'probability' is its input's first channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


def test_shifted_coarse_crops_are_put_back_where_they_were_cut_and_averaged():
    """The first stage is a copy of the (0/1) water image, the refiner the identity: each
    shifted coarse crop, put on the fine grid, must show the muscle where it is, and a
    list of shifts gives the mean of its members."""
    plain = CONFIG | {"crop": COARSE.to_dict(), "labels": LABEL_NAMES[:1]}
    config = plain | {"refine": refine_config(4, [1], FINE)}
    cascade = Cascade(FirstChannel(), Refiner(2, 1, features=4, dilations=(1,))).eval()
    channels, affine = small_participant(), GRID.affine_ras()

    def right_side(shifts):
        shifted = config | {"refine": config["refine"] | {"coarse_shifts_mm": shifts}}
        with torch.no_grad():
            probabilities, geometries, _ = side_probabilities(
                cascade, shifted, channels, affine, LANDMARKS
            )
        return probabilities["right"][0], geometries["right"]

    def centroid_mm(probability, geometry):
        index = np.indices(probability.shape).reshape(3, -1)
        weights = probability.reshape(-1) / probability.sum()
        return (geometry.affine_lps[:3, :3] @ (index @ weights)) + geometry.affine_lps[:3, 3]

    unshifted, geometry = right_side([[0, 0, 0]])
    muscle = HIPS["right"] + np.array([0.0, 0.0, 10.0])
    for shift in ([6, 0, 0], [0, -5, 0], [0, 0, 9]):
        moved, _ = right_side([shift])
        # a crop put back unshifted would move the muscle by the whole shift
        assert np.linalg.norm(centroid_mm(moved, geometry) - muscle) < 1.5
        assert np.linalg.norm(centroid_mm(moved, geometry) - centroid_mm(unshifted, geometry)) < 1.5
    shifts = [[0, 0, 0], [2, 2, 3], [-2, -2, 3]]
    mean = np.mean([right_side([shift])[0] for shift in shifts], axis=0)
    np.testing.assert_allclose(right_side(shifts)[0], mean, atol=2e-4)


def test_coarse_shifts_are_read_and_checked():
    config = CONFIG | {"refine": refine_config(4, [1], FINE)}
    assert coarse_shifts(config) == [(0.0, 0.0, 0.0)] and coarse_shifts(CONFIG) == [(0.0, 0.0, 0.0)]
    with_shifts = config | {
        "refine": config["refine"] | {"coarse_shifts_mm": [[0, 0, 0], [2, -2, 3]]}
    }
    check_config(with_shifts)
    assert coarse_shifts(with_shifts) == [(0.0, 0.0, 0.0), (2.0, -2.0, 3.0)]
    assert shifted_spec(FINE, (2, -2, 3)).offset_mm == (2.0, -2.0, 3.0)
    for bad in ([], [[0, 0]], [[0, 0, True]], [[0, 0, 80]], [[0, 0, float("nan")]], "2 2 3"):
        with pytest.raises(ModelConfigError, match="coarse_shifts_mm"):
            check_config(config | {"refine": config["refine"] | {"coarse_shifts_mm": bad}})


def test_refine_command_trains_evaluates_and_refuses_bad_requests(cohort, tmp_path, capsys):  # noqa: F811
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    save_model(model_dir, build_model(CONFIG).state_dict(), CONFIG, {"evaluation": None})
    pairs = read_tsv(cohort / "pairs.tsv")
    rows = pairs.assign(
        **{c: [str(cohort / p) for p in pairs[c]] for c in ("image_dir", "labels", "landmarks")}
    )
    train, held = tmp_path / "train.tsv", tmp_path / "held.tsv"
    rows.iloc[:2].to_csv(train, sep="\t", index=False)
    rows.iloc[2:].to_csv(held, sep="\t", index=False)
    out = tmp_path / "refined"
    args = ["refine", "--model", str(model_dir), "--pairs", str(train), "--out", str(out)]
    args += ["--held-out-pairs", str(held), "--device", "cpu", "--steps", "3"]
    args += ["--patch", "16", "16", "16", "--features", "4", "--dilations", "1"]
    assert main([*args, "--coarse-shifts-mm", "0", "0", "0", "-2", "2", "3"]) == 0
    model, card = load_model(out)  # verified weights holding both stages
    assert isinstance(model, Cascade)
    assert card["refine_training"]["steps_done"] == 3
    # trained on the first stage averaged over the two crops, and run so
    assert card["config"]["refine"]["coarse_shifts_mm"] == [[0, 0, 0], [-2, 2, 3]]
    assert (
        card["refine_training"]["coarse_weights_sha256"] == read_card(model_dir)["weights_sha256"]
    )
    assert card["refine_training"]["participants"] == 2
    assert card["evaluation"]["participants"] == 1
    assert "thresholds" not in card["config"] and card["config"]["refine"]["features"] == 4
    assert "## Refiner" in (out / "MODEL_CARD.md").read_text()
    # calibrating the cascade can average its first stage over shifted coarse crops
    shifted = tmp_path / "shifted"
    calibrate = ["calibrate", "--model", str(out), "--pairs", str(held), "--device", "cpu"]
    assert (
        main(
            [*calibrate, "--out", str(shifted), "--coarse-shifts-mm", "0", "0", "0", "2", "2", "3"]
        )
        == 0
    )
    _, shifted_card = load_model(shifted)
    assert shifted_card["config"]["refine"]["coarse_shifts_mm"] == [[0, 0, 0], [2, 2, 3]]
    assert (
        "averaged over 2 coarse crops, shifted by (0, 0, 0), (2, 2, 3) mm"
        in (shifted / "MODEL_CARD.md").read_text()
    )
    cascade_free = ["calibrate", "--model", str(model_dir), "--pairs", str(held)]
    for command, bad, why in (
        (calibrate, ["1", "2"], "triples"),
        (calibrate, ["0", "0", "99"], "within"),
        (cascade_free, ["0", "0", "0"], "needs a cascade"),
    ):
        capsys.readouterr()
        assert main([*command, "--out", str(tmp_path / "bad"), "--coarse-shifts-mm", *bad]) != 0
        assert why in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    coarse_state = build_model(CONFIG)
    coarse_state.load_state_dict(torch.load(model_dir / "model.pt", weights_only=True))
    for name, value in coarse_state.state_dict().items():  # the coarse stage is frozen
        assert torch.equal(model.coarse.state_dict()[name], value)
    # training continues from that refiner; a refiner of another shape is refused
    # (on the training ids of a split.json only)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [rows["participant_id"].iloc[1]], "held_out": []}))
    again = [
        *args[:6],
        str(tmp_path / "again"),
        *args[7:],
        "--init-from",
        str(shifted),
    ]  # calibrated with shifts
    assert main([*again, "--seed", "1", "--train-split", str(split)]) == 0
    continued = read_card(tmp_path / "again")["refine_training"]
    assert continued["initialised_from"]["weights_sha256"] == card["weights_sha256"]
    assert continued["participants"] == 1
    # ... also over a retrained first stage, whose sha256 the card then records
    torch.manual_seed(1)
    retrained = tmp_path / "retrained"
    save_model(retrained, build_model(CONFIG).state_dict(), CONFIG, {"evaluation": None})
    over_new = [*again[:2], str(retrained), *again[3:6], str(tmp_path / "over_new"), *again[7:]]
    assert main(over_new) == 0
    record = read_card(tmp_path / "over_new")["refine_training"]
    assert record["coarse_weights_sha256"] == read_card(retrained)["weights_sha256"]
    assert (
        record["initialised_from"]["coarse_weights_sha256"]
        == (read_card(model_dir)["weights_sha256"])
    )
    (tmp_path / "unknown.json").write_text(json.dumps({"train": ["P404"]}))
    refused = [
        [*again, "--features", "5"],
        [*again, "--train-split", str(tmp_path / "unknown.json")],
        ["refine", "--model", str(out), "--pairs", str(train), "--out", str(tmp_path / "x")],
        [*args[:7], "--held-out-pairs", str(train)],  # trains and evaluates on the same ids
        ["refine", "--model", str(model_dir), "--pairs", str(train), "--out", str(model_dir)],
    ]
    for bad in refused:
        assert main(bad) == 2


def test_refine_rule_dry_runs_and_calibrate_follows_it_when_enabled(tmp_path):
    config = training_workflow(tmp_path)
    config["training"]["calibration_pairs"] = "data/calibration.tsv"
    config["training"]["refine"] |= {"steps": 7, "dilations": [1, 3]}
    config["training"]["refine"]["coarse_shifts_mm"] = [[0, 0, 0], [2, -2, 3.5]]
    save_config(tmp_path, config)
    output = check(snakemake("-n", "-p", "refine", "--cores", "1", cwd=tmp_path))
    assert "results/training/model/refined/model_card.json" in output
    assert "--train-split results/training/model/split.json" in output
    assert "--steps 7" in output and "--dilations 1 3" in output
    assert "--coarse-shifts-mm 0 0 0 2 -2 3.5 --seed" in output
    assert "rule train:" in output
    plain = check(snakemake("-n", "-p", "calibrate", "--cores", "1", cwd=tmp_path))
    assert "rule refine:" not in plain
    assert "--model results/training/model --pairs" in plain
    config["training"]["refine"]["enabled"] = True
    save_config(tmp_path, config)
    refined = check(snakemake("-n", "-p", "calibrate", "--cores", "1", cwd=tmp_path))
    assert "rule refine:" in refined
    assert "--model results/training/model/refined --pairs" in refined
