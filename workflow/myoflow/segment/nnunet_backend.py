"""The nnU-Net v2 backend: any trained nnU-Net v2 model as the segmentation stage.

Layered like the V-Net's inference: files (:func:`load_nnunet_model` reads the trained
model folder once per shard) -> arrays on our grid (:func:`segment_arrays`) -> nnU-Net's
own preprocessing, sliding window and resampling (``nnUNetPredictor``), whose label
values :func:`map_labels` turns into ours.

Axis conventions. Our stitched channels are nibabel arrays indexed (i, j, k) with a
voxel -> RAS affine. nnU-Net sees an image the way the reader named in its ``plans.json``
(``image_reader_writer``) loads the file: ``SimpleITKIO`` and ``NibabelIO`` give the
file's voxel array transposed to (k, j, i) with the spacing reversed; ``NibabelIOWithReorient``
first reorients to the closest RAS axes. :func:`to_nnunet_layout` reproduces exactly that
from our arrays, and :func:`from_nnunet_layout` undoes it, so the labels land on our grid
and equal what ``nnUNetv2_predict`` writes for the same files (tests/segment/test_nnunet.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from myoflow.core.errors import MyoflowError
from myoflow.core.labels import ALL_LABELS

READERS_AS_FILE = ("SimpleITKIO", "NibabelIO")
"""Readers that give nnU-Net the file's voxel array, transposed (k, j, i)."""
READERS_REORIENTED = ("NibabelIOWithReorient",)
"""Readers that reorient to the closest RAS axes before transposing."""
REGIONS = ("whole", "hips")
"""Values of ``model.region``: the whole stitched volume, or a box around the hips."""
MARGIN_KEYS = ("lateral", "anterior", "posterior", "superior", "inferior")
"""Keys of ``model.hips_margin_mm``: how far the hips box reaches beyond the hip centres."""


class NnunetModelError(MyoflowError, ValueError):
    """An nnU-Net model folder or its myoflow mapping cannot be used as configured."""


@dataclass(frozen=True)
class NnunetSettings:
    """What the config's ``model:`` section says about an nnU-Net v2 model.

    Attributes:
        model_dir: the trained model folder (``plans.json``, ``dataset.json``,
            ``fold_*/{checkpoint}``), as ``nnUNetv2_predict -d ... -c ...`` resolves it.
        folds: folds to ensemble (their softmax outputs are averaged), e.g. ``(0,)`` or
            ``("all",)``.
        checkpoint: file name of each fold's checkpoint.
        channels: our Dixon channel feeding each input channel of ``dataset.json``, in order.
        labels: the model's label value -> our structure (``{muscle}_{side}`` or
            ``{group}_{side}``); values it does not name are dropped.
        region: ``whole`` or ``hips`` (:data:`REGIONS`).
        hips_margin_mm: margins of the hips box (:data:`MARGIN_KEYS`), in mm.
        tile_step_size: sliding-window step as a fraction of the patch (nnU-Net: 0.5).
        mirroring: test-time mirroring (nnU-Net's default; 8 passes per patch in 3D).
    """

    model_dir: Path
    folds: tuple[int | str, ...]
    checkpoint: str
    channels: tuple[str, ...]
    labels: Mapping[int, str]
    region: str = "whole"
    hips_margin_mm: Mapping[str, float] = field(default_factory=dict)
    tile_step_size: float = 0.5
    mirroring: bool = True

    def __post_init__(self) -> None:
        if self.region not in REGIONS:
            raise NnunetModelError(f"model.region must be one of {REGIONS}, got {self.region!r}")
        unknown = sorted(set(self.labels.values()) - set(ALL_LABELS))
        if unknown:
            raise NnunetModelError(
                f"model.labels names structures myoflow does not know: {unknown} "
                f"(known: {sorted(ALL_LABELS)})"
            )
        if self.region == "hips" and set(self.hips_margin_mm) != set(MARGIN_KEYS):
            raise NnunetModelError(f"model.hips_margin_mm needs exactly the keys {MARGIN_KEYS}")

    def checkpoint_paths(self) -> dict[str, Path]:
        """Checkpoint file of each fold, by fold name."""
        return {str(f): self.model_dir / f"fold_{f}" / self.checkpoint for f in self.folds}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; what a participant's provenance records about the settings."""
        return {
            "model_dir": str(self.model_dir),
            "folds": [str(f) for f in self.folds],
            "checkpoint": self.checkpoint,
            "channels": list(self.channels),
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "region": self.region,
            "hips_margin_mm": dict(self.hips_margin_mm) if self.region == "hips" else None,
            "tile_step_size": self.tile_step_size,
            "mirroring": self.mirroring,
        }


def sha256_of(path: str | os.PathLike[str], chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(settings: NnunetSettings) -> str:
    """One sha256 for the model's identity: plans, dataset.json and every fold's checkpoint.

    Raises:
        NnunetModelError: a file is missing.
    """
    files = {"plans.json": settings.model_dir / "plans.json"}
    files["dataset.json"] = settings.model_dir / "dataset.json"
    files |= {f"fold_{fold}": path for fold, path in settings.checkpoint_paths().items()}
    digest = hashlib.sha256()
    for name, path in files.items():
        if not path.is_file():
            raise NnunetModelError(f"nnU-Net model file missing: {path}")
        digest.update(f"{name} {sha256_of(path)}\n".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------ axes and regions


def _reader_orientation(affine: np.ndarray, reader: str) -> np.ndarray:
    """nibabel orientation (ornt) taking our voxel axes to those the reader gives,
    before its (k, j, i) transpose: identity for file-order readers, to RAS otherwise."""
    identity = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    if reader in READERS_AS_FILE:
        return identity
    if reader in READERS_REORIENTED:
        return ornt_transform(io_orientation(affine), identity)
    raise NnunetModelError(
        f"the model's plans.json reads images with {reader!r}; myoflow feeds 3D images as "
        f"{READERS_AS_FILE + READERS_REORIENTED} read them"
    )


def to_nnunet_layout(
    volumes: Sequence[np.ndarray], affine: np.ndarray, reader: str
) -> tuple[np.ndarray, list[float]]:
    """Our channels (each (i, j, k), on one grid) as the reader would give them to nnU-Net.

    Returns:
        The image (channels, k', j', i') float32 and its spacing in mm in that axis order.
    """
    ornt = _reader_orientation(affine, reader)
    shape = volumes[0].shape
    oriented = [apply_orientation(v, ornt) for v in volumes]
    new_affine = affine @ inv_ornt_aff(ornt, shape)
    spacing_mm = np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0))
    image = np.stack([v.transpose(2, 1, 0) for v in oriented]).astype(np.float32, copy=False)
    return image, [float(s) for s in spacing_mm[::-1]]


def _inverse(ornt: np.ndarray) -> np.ndarray:
    """The orientation that undoes ``ornt`` (nibabel's (axis, flip) rows)."""
    inverse = np.zeros_like(ornt)
    for axis, (to_axis, flip) in enumerate(ornt):
        inverse[int(to_axis)] = [axis, flip]
    return inverse


def from_nnunet_layout(
    labels: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], reader: str
) -> np.ndarray:
    """Inverse of :func:`to_nnunet_layout` for one label map: back to our (i, j, k).

    Raises:
        NnunetModelError: nnU-Net returned another shape than the grid's (a model whose
            plans transpose or resample in a way the predictor does not undo).
    """
    ornt = _reader_orientation(affine, reader)
    restored = apply_orientation(labels.transpose(2, 1, 0), _inverse(ornt))
    if restored.shape != tuple(shape):
        raise NnunetModelError(f"nnU-Net returned labels of shape {restored.shape} for {shape}")
    return restored


def hips_box(
    shape: Sequence[int],
    affine: np.ndarray,
    left_ras_mm: np.ndarray,
    right_ras_mm: np.ndarray,
    margin_mm: Mapping[str, float],
) -> tuple[slice, slice, slice] | None:
    """Voxel box (slices of our grid) around both hip centres, clipped to the grid.

    The box spans the two hip centres, widened by ``margin_mm``: ``lateral`` beyond each
    hip (R-L), ``anterior``/``posterior`` (A-P), ``superior``/``inferior`` (S-I); the
    iliopsoas reaches far above the hips, the glutei below them. Its 8 RAS corners are
    mapped to voxels, so an oblique grid gets the voxel box that holds the RAS box.

    Returns:
        None when the box misses the grid entirely.
    """
    hips = np.stack([left_ras_mm, right_ras_mm])
    low = hips.min(axis=0) - [margin_mm["lateral"], margin_mm["posterior"], margin_mm["inferior"]]
    high = hips.max(axis=0) + [margin_mm["lateral"], margin_mm["anterior"], margin_mm["superior"]]
    corners = np.array([[x, y, z, 1.0] for x in (low[0], high[0]) for y in (low[1], high[1])
                        for z in (low[2], high[2])])  # fmt: skip
    voxels = (np.linalg.inv(affine) @ corners.T)[:3].T
    start = np.maximum(np.floor(voxels.min(axis=0)).astype(int), 0)
    stop = np.minimum(np.ceil(voxels.max(axis=0)).astype(int) + 1, np.asarray(shape))
    if np.any(stop <= start):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))  # type: ignore[return-value]


def map_labels(nnunet_labels: np.ndarray, mapping: Mapping[int, str]) -> np.ndarray:
    """The model's label values -> ours (:data:`myoflow.core.labels.ALL_LABELS`), int16;
    values ``mapping`` does not name become background."""
    lookup = np.zeros(max([int(nnunet_labels.max()), *mapping]) + 1, dtype=np.int16)
    for value, name in mapping.items():
        lookup[int(value)] = ALL_LABELS[name]
    return lookup[nnunet_labels.astype(np.int64)]


# ------------------------------------------------------------------ the model


@dataclass
class NnunetModel:
    """A loaded nnU-Net predictor with the settings and identity it was loaded with."""

    predictor: Any  # nnunetv2.inference.predict_from_raw_data.nnUNetPredictor
    settings: NnunetSettings
    weights_sha256: str
    reader: str
    configuration: str
    trainer: str
    dataset_channels: list[str]
    dataset_labels: dict[str, Any]

    @property
    def device(self) -> Any:
        return self.predictor.device

    def describe_device(self) -> str:
        import torch

        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return f"cpu ({torch.get_num_threads()} threads)"

    def provenance(self, segment_version: int) -> dict[str, Any]:
        """What makes a participant's outputs current (compared on rerun)."""
        return {
            "segment_version": segment_version,
            "backend": "nnunetv2",
            "weights_sha256": self.weights_sha256,
            "settings": self.settings.to_dict() | {"model_dir": None},  # moving it is no change
        }


def _check_mapping(settings: NnunetSettings, dataset: Mapping[str, Any]) -> list[str]:
    channel_names = dataset.get("channel_names") or dataset.get("modality") or {}
    names = [channel_names[k] for k in sorted(channel_names, key=int)]
    if len(settings.channels) != len(names):
        raise NnunetModelError(
            f"model.channels gives {len(settings.channels)} channel(s) "
            f"{list(settings.channels)}, the model's dataset.json expects {len(names)}: {names}"
        )
    values = set()
    for value in dataset.get("labels", {}).values():
        values |= set(value) if isinstance(value, list) else {value}
    unknown = sorted(set(settings.labels) - {int(v) for v in values})
    if unknown:
        raise NnunetModelError(
            f"model.labels maps values {unknown} that the model's dataset.json does not "
            f"have (its labels: {dataset.get('labels')})"
        )
    return names


def load_nnunet_model(settings: NnunetSettings, device: Any) -> NnunetModel:
    """Build one ``nnUNetPredictor`` for a whole shard, after checking the mapping.

    Raises:
        NnunetModelError: files missing, a cascade configuration (needs the previous
            stage's output), an unsupported image reader, or a mapping that does not fit
            the model's dataset.json.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    sha256 = weights_sha256(settings)
    dataset = json.loads((settings.model_dir / "dataset.json").read_text())
    plans = json.loads((settings.model_dir / "plans.json").read_text())
    channels = _check_mapping(settings, dataset)
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    _reader_orientation(np.eye(4), reader)  # refuses readers we do not reproduce
    predictor = nnUNetPredictor(
        tile_step_size=settings.tile_step_size,
        use_gaussian=True,
        use_mirroring=settings.mirroring,
        perform_everything_on_device=device.type == "cuda",
        device=device,
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        str(settings.model_dir), list(settings.folds), settings.checkpoint
    )
    if predictor.configuration_manager.previous_stage_name is not None:
        raise NnunetModelError(
            "the model is a cascade stage (it needs the low-resolution stage's labels); "
            "point model.dir at a 3d_fullres or 2d model folder"
        )
    return NnunetModel(
        predictor=predictor,
        settings=settings,
        weights_sha256=sha256,
        reader=reader,
        configuration=predictor.configuration_manager.data_identifier,
        trainer=predictor.trainer_name,
        dataset_channels=channels,
        dataset_labels=dict(dataset.get("labels", {})),
    )


def predict_nnunet_labels(
    predictor: Any, image: np.ndarray, spacing_mm: Sequence[float]
) -> np.ndarray:
    """nnU-Net's label map for one image already in its layout (:func:`to_nnunet_layout`).

    The same steps as ``nnUNetPredictor.predict_from_files``: nnU-Net's preprocessing
    (crop to non-zero, normalisation, resampling to the plans' spacing), its sliding
    window over the loaded folds, and resampling back to the input's shape.
    """
    import torch

    with torch.inference_mode():
        labels = predictor.predict_single_npy_array(image, {"spacing": list(spacing_mm)})
    return np.asarray(labels)


@dataclass(frozen=True)
class NnunetSegmentation:
    """One participant's labels on our grid, the box that was segmented, and timings."""

    labels: np.ndarray  # int16, values of ALL_LABELS, shape of the stitched grid
    box: tuple[slice, slice, slice]
    seconds: dict[str, float]


def segment_arrays(
    model: NnunetModel,
    channels: Mapping[str, np.ndarray],
    affine: np.ndarray,
    box: tuple[slice, slice, slice] | None = None,
) -> NnunetSegmentation:
    """Segment one participant's stitched channels (each (i, j, k) on the grid of ``affine``).

    Args:
        model: the loaded model (:func:`load_nnunet_model`).
        channels: our channel name -> float32 volume; must hold ``model.settings.channels``.
        affine: voxel -> RAS mm of the grid.
        box: voxel slices to segment (:func:`hips_box`); None for the whole volume.
    """
    shape = next(iter(channels.values())).shape
    if box is None:
        box = (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    origin = np.array([s.start for s in box], dtype=float)
    box_affine = affine.copy()
    box_affine[:3, 3] = affine[:3, :3] @ origin + affine[:3, 3]
    started = time.perf_counter()
    volumes = [np.ascontiguousarray(channels[name][box]) for name in model.settings.channels]
    image, spacing_mm = to_nnunet_layout(volumes, box_affine, model.reader)
    predicted = predict_nnunet_labels(model.predictor, image, spacing_mm)
    network_s = time.perf_counter() - started
    ours = map_labels(from_nnunet_layout(predicted, box_affine, volumes[0].shape, model.reader),
                      model.settings.labels)  # fmt: skip
    labels = np.zeros(shape, dtype=np.int16)
    labels[box] = ours
    return NnunetSegmentation(labels, box, {"predict": network_s})
