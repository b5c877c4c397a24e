"""A tiny nnU-Net v2 model for tests: plans, dataset.json and a fold checkpoint laid out as
nnU-Net's trainer writes them, with a network built and initialised by nnU-Net's own code.

Used by tests/segment/test_nnunet.py (the backend against nnU-Net's predictor) and by the
workflow test of the nnunetv2 backend. The weights are untrained (training even a few
iterations costs about a second each on a shared 2-core CI machine, and the tests compare
predictors, not accuracy); the background bias is set so that most voxels are background
and the rest scatter over all ten labels, so later stages see every structure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from myoflow.core.labels import LABELS

CONFIGURATION = "3d_fullres"
TARGET_SPACING_MM = [12.0, 12.0, 12.0]  # nnU-Net's axis order (k, j, i); coarse = fast
PATCH = [32, 32, 32]


def tiny_plans(
    reader: str = "SimpleITKIO",
    features: Sequence[int] = (4, 8, 16),
    patch: Sequence[int] = PATCH,
    spacing_mm: Sequence[float] = TARGET_SPACING_MM,
) -> dict:
    """plans.json of a PlainConvUNet, as nnU-Net's planner writes it (nnunetv2 2.8.1 keys):
    by default 3 stages of 4-8-16 features at 12 mm (tests); bench/nnunet_backend.py asks
    for nnU-Net's default widths (32 ... 320)."""
    n_stages = len(features)
    return {
        "dataset_name": "Dataset990_MyoflowTiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [6.0, 4.46, 4.46],
        "original_median_shape_after_transp": [185, 87, 112],
        "image_reader_writer": reader,
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            CONFIGURATION: {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(patch),
                "median_image_size_in_voxels": [92, 32, 42],
                "spacing": list(spacing_mm),
                "normalization_schemes": ["ZScoreNormalization", "ZScoreNormalization"],
                "use_mask_for_norm": [False, False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {
                    "is_seg": False,
                    "order": 3,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_seg_kwargs": {
                    "is_seg": True,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "architecture": {
                    "network_class_name": (
                        "dynamic_network_architectures.architectures.unet.PlainConvUNet"
                    ),
                    "arch_kwargs": {
                        "n_stages": n_stages,
                        "features_per_stage": list(features),
                        "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * n_stages,
                        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1),
                        "n_conv_per_stage": [1] * n_stages,
                        "n_conv_per_stage_decoder": [1] * (n_stages - 1),
                        "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        # Only CTNormalization reads these; the z-score needs none but nnU-Net looks them up.
        "foreground_intensity_properties_per_channel": {
            str(c): {
                "mean": 0.0,
                "median": 0.0,
                "std": 1.0,
                "min": 0.0,
                "max": 1.0,
                "percentile_99_5": 1.0,
                "percentile_00_5": 0.0,
            }
            for c in range(2)
        },
    }


def tiny_dataset(channels: Sequence[str] = ("water", "fat")) -> dict:
    """dataset.json: our ten structures with our label values."""
    return {
        "channel_names": {str(i): name for i, name in enumerate(channels)},
        "labels": {"background": 0} | dict(LABELS),
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }


def make_tiny_nnunet_model(
    folder: Path,
    images: Sequence[np.ndarray],
    spacings_mm: Sequence[Sequence[float]],
    background_fraction: float = 0.9,
    seed: int = 0,
    reader: str = "SimpleITKIO",
    **plans: Any,
) -> Path:
    """Write a trained-model folder (plans.json, dataset.json, fold_0/checkpoint_final.pth).

    Args:
        folder: the model folder to create.
        images: per training case, (channels, k, j, i) float32 as nnU-Net's reader gives it.
        spacings_mm: per case, spacing in (k, j, i) order.
        background_fraction: the share of voxels the untrained network calls background
            (its background bias is set so), the rest scattered over the ten labels.
        plans: ``features``, ``patch``, ``spacing_mm`` of :func:`tiny_plans`.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.network_initialization import InitWeights_He
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans, dataset = tiny_plans(reader, **plans), tiny_dataset()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    manager = PlansManager(plans)
    configuration = manager.get_configuration(CONFIGURATION)
    torch.manual_seed(seed)
    network = nnUNetTrainer.build_network_architecture(
        manager, configuration, len(dataset["channel_names"]), len(dataset["labels"]), False
    )
    network.apply(InitWeights_He(1e-2))  # as nnUNetTrainer.initialize does
    _save_checkpoint(folder, network, plans, dataset)
    # Exact: a shift of the final layer's bias shifts the logits nnU-Net's sliding window
    # averages and resamples by the same amount, so the predictor's own output tells how
    # far to move each label.
    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
    log_probabilities = []
    for image, spacing in zip(images, spacings_mm, strict=True):
        _, probabilities = predictor.predict_single_npy_array(
            image, {"spacing": list(spacing)}, None, None, True
        )
        flat = torch.from_numpy(np.asarray(probabilities, dtype=np.float32)).flatten(1)
        log_probabilities.append(flat[:, :: max(flat.shape[1] // 200_000, 1)].clamp(1e-12).log())
    shift = _balancing_shift(torch.cat(log_probabilities, dim=1), background_fraction)
    final = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    with torch.no_grad():
        final.bias += shift
    _save_checkpoint(folder, network, plans, dataset)
    return folder


def _save_checkpoint(folder: Path, network: torch.nn.Module, plans: dict, dataset: dict) -> None:
    """fold_0/checkpoint_final.pth with the keys nnUNetTrainer.save_checkpoint writes."""
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": {},
        "_best_ema": None,
        "current_epoch": 0,
        "init_args": {
            "plans": plans,
            "configuration": CONFIGURATION,
            "fold": 0,
            "dataset_json": dataset,
            "device": "cpu",
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    (folder / "fold_0").mkdir(exist_ok=True)
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")


def _balancing_shift(logits: torch.Tensor, background_fraction: float) -> torch.Tensor:
    """Per-label logit shifts after which background wins ``background_fraction`` of the
    voxels and each foreground label about an equal share of the rest.

    Args:
        logits: (labels, voxels), background first.
    """
    n_labels = len(logits)
    wanted = torch.full((n_labels,), (1 - background_fraction) / (n_labels - 1))
    wanted[0] = background_fraction
    shift = torch.zeros(n_labels)
    step = 0.05 * float(logits.std())
    for _ in range(400):  # raise the labels that win too rarely, lower the others
        winners = (logits + shift[:, None]).argmax(dim=0)
        share = torch.bincount(winners, minlength=n_labels) / winners.numel()
        shift += step * torch.log((wanted + 1e-4) / (share + 1e-4)).clamp(-1, 1)
    return shift


def write_participant(
    folder: Path, seed: int = 3, size: str = "small", crop: bool = True
) -> dict[str, np.ndarray]:
    """One small synthetic participant as the conversion and landmarks stages leave it
    (dixon/{water,fat,in,opp}.nii.gz, int16 as convert writes them; landmarks.json from
    the true hip centres); returns the stitched channels. ``crop``: only the slices from
    25 cm below to 35 cm above the hips (the small grid's whole body costs the tests twice
    the time)."""
    from myoflow.core.volume import Volume
    from myoflow.landmarks.record import HipLandmarks, write_landmarks
    from myoflow.synth.geometry import protocol
    from myoflow.synth.phenotypes import sample_cohort
    from myoflow.synth.render import render_participant
    from myoflow.synth.rng import participant_rng
    from myoflow.synth.signal import Artefacts, stitched_channels

    ukbb = protocol("ukbb", size)
    row = sample_cohort(seed, 1, "ukbb").to_dict("records")[0]
    phantom = render_participant(row, ukbb.grid, participant_rng(seed, 1, "texture"))
    channels = stitched_channels(
        phantom.water, phantom.fat, ukbb.stations, Artefacts(), np.random.default_rng(seed)
    )
    affine = ukbb.grid.affine_lps()  # the origin moves with the first slice kept
    hip_z_mm = (phantom.truth["hip_left_z_mm"] + phantom.truth["hip_right_z_mm"]) / 2
    k_hip = (hip_z_mm - affine[2, 3]) / affine[2, 2]
    first, last = int(max(k_hip - 250 / affine[2, 2], 0)), int(k_hip + 350 / affine[2, 2])
    if not crop:
        first, last = 0, phantom.water.shape[2]
    affine[:3, 3] += affine[:3, 2] * first
    channels = {name: volume[:, :, first:last] for name, volume in channels.items()}
    for name, volume in channels.items():
        Volume(volume, affine).to_nifti(folder / "dixon" / f"{name}.nii.gz")
    hips = {
        s: np.array([phantom.truth[f"hip_{s}_{a}_mm"] for a in "xyz"]) for s in ("left", "right")
    }
    write_landmarks(
        folder / "landmarks.json", "P", HipLandmarks(hips["left"], hips["right"], 1.0, (22, 22))
    )
    return channels
