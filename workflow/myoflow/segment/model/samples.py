"""Training samples: per-side image crops and soft targets from stitched Dixon + label maps.

**Training pairs** are listed in a TSV (``training.pairs``), one row per participant:

=================  ==================================================================
participant_id     the participant's id
image_dir          folder with ``water.nii.gz``, ``fat.nii.gz``, ``in.nii.gz``,
                   ``opp.nii.gz`` (e.g. ``results/participants/P1/dixon``)
labels             label NIfTI on the images' grid (or any grid in the same orientation)
landmarks          optional ``landmarks.json`` (:func:`myoflow.landmarks.record.write_landmarks`);
                   empty: the hips are detected
                   (:func:`myoflow.landmarks.hip_detection.detect_hips`)
=================  ==================================================================

Relative paths are relative to the TSV's own folder. Label values are those of
:data:`myoflow.core.labels.LABELS` (0 background, psoas_major_left 1, _right 2,
iliacus 3/4, gluteus_maximus 5/6, gluteus_medius 7/8, gluteus_minimus 9/10; any other
value is background). Manual annotations from MITK or 3D Slicer are used as they are
once exported as a single label map (Slicer: a segmentation exported as a labelmap
volume; MITK: a multilabel segmentation saved as NIfTI) on the Dixon grid with exactly
these values; left and right are the patient's. Muscles an annotator did not draw count
as background, so a model's labels must be annotated in every pair.

**Samples.** Each participant gives two samples, one per side, cut by
:func:`myoflow.segment.crop.crop_side` (the left one mirrored). Model outputs are side-agnostic
muscles (:data:`myoflow.measure.metrics.MUSCLES`): channel ``m`` of side ``s``'s target is the
label ``{m}_{s}`` only; the other side's muscle at the crop's medial edge is background.

**Soft targets** (:mod:`myoflow.segment.model.targets`): each label's binary mask is averaged
over a box the size of a crop voxel and resampled linearly onto the crop grid, so a crop
voxel's target is about the fraction of it inside the muscle.

**Cache.** Prepared samples (float16) are stored as ``{key}.npz`` in a cache folder,
``key`` a hash of the inputs' sha256, the crop spec and the labels, so epochs and reruns
do not crop again, and a changed input is never served from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from myoflow.core.errors import MyoflowError, ParticipantExcluded
from myoflow.core.grid import lps_axes
from myoflow.core.io import atomic_path, read_tsv
from myoflow.landmarks.hip_detection import detect_hips
from myoflow.landmarks.record import HipLandmarks, read_landmarks
from myoflow.segment.crop import SIDES, CropSpec, crop_side
from myoflow.segment.model.card import sha256_file
from myoflow.segment.model.targets import check_labels, side_label_values, soft_targets

IMAGE_CHANNELS = ("water", "fat", "in", "opp")
PAIR_COLUMNS = ("participant_id", "image_dir", "labels", "landmarks")
SAMPLE_FORMAT = 1
"""Bump when preparation changes, so caches made by older code are not used."""


T = TypeVar("T")


class PairsError(MyoflowError):
    """The training pairs table or one of the files it names is unusable."""


@dataclass(frozen=True)
class TrainingPair:
    """One participant's images and labels (absolute or working-directory paths)."""

    participant_id: str
    image_dir: Path
    labels: Path
    landmarks: Path | None = None

    def channel_path(self, channel: str) -> Path:
        return self.image_dir / f"{channel}.nii.gz"

    def input_files(self, channels: Sequence[str]) -> dict[str, Path]:
        """The files a sample with ``channels`` is made from, by role."""
        files = {channel: self.channel_path(channel) for channel in channels}
        files["labels"] = self.labels
        if self.landmarks is not None:
            files["landmarks"] = self.landmarks
        else:  # detection reads water and fat whatever the model's channels
            files |= {c: self.channel_path(c) for c in ("water", "fat")}
        return dict(sorted(files.items()))


@dataclass(frozen=True)
class Sample:
    """One side of one participant: ``image`` (C, X, Y, Z) and ``target`` (L, X, Y, Z).

    Both float16 on the crop grid; ``target`` in [0, 1], one channel per model label.
    """

    participant_id: str
    side: str
    image: np.ndarray
    target: np.ndarray


@dataclass(frozen=True)
class PreparedParticipant:
    """Both sides' samples of a participant, the hips they were cut at, and input hashes."""

    participant_id: str
    samples: tuple[Sample, ...]
    hips: HipLandmarks
    file_sha256: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- pairs


def read_pairs(path: str | os.PathLike[str]) -> list[TrainingPair]:
    """The training pairs of a TSV, paths resolved against the TSV's folder.

    Raises:
        PairsError: the file is missing, lacks a column, has an empty or repeated id.
    """
    path = Path(path)
    try:
        table = read_tsv(path)
    except (OSError, ValueError) as err:
        raise PairsError(f"training pairs {path} cannot be read: {err}") from err
    missing = [c for c in PAIR_COLUMNS[:3] if c not in table.columns]
    if missing:
        raise PairsError(f"training pairs {path} lack the columns {missing}")
    ids = table["participant_id"].fillna("").astype(str).str.strip()
    if (ids == "").any():
        raise PairsError(f"training pairs {path}: an empty participant_id")
    repeated = sorted(set(ids[ids.duplicated()]))
    if repeated:
        raise PairsError(f"training pairs {path}: participant_id repeated: {repeated}")
    base = path.parent

    def resolve(value: object) -> Path | None:
        text = "" if pd.isna(value) else str(value).strip()
        return None if not text else base / text

    pairs = []
    for pid, row in zip(ids, table.to_dict("records"), strict=True):
        image_dir, labels = resolve(row["image_dir"]), resolve(row["labels"])
        if image_dir is None or labels is None:
            raise PairsError(f"training pairs {path}: {pid} lacks image_dir or labels")
        pairs.append(TrainingPair(pid, image_dir, labels, resolve(row.get("landmarks"))))
    return pairs


def pairs_table(pairs: Sequence[TrainingPair], relative_to: str | os.PathLike[str]) -> pd.DataFrame:
    """The TSV rows of ``pairs``, paths written relative to ``relative_to`` (the TSV's folder)."""
    base = Path(relative_to).resolve()

    def rel(path: Path | None) -> str:
        return "" if path is None else os.path.relpath(Path(path).resolve(), base)

    rows = [
        {
            "participant_id": p.participant_id,
            "image_dir": rel(p.image_dir),
            "labels": rel(p.labels),
            "landmarks": rel(p.landmarks),
        }
        for p in pairs
    ]
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS))


def synthetic_pairs(
    synth_dir: str | os.PathLike[str], participants_dir: str | os.PathLike[str]
) -> list[TrainingPair]:
    """Pairs of a ``myoflow synth`` cohort whose Dixon was converted.

    Truth labels are ``synth_dir/truth/{p}/labels.nii.gz``; images
    ``participants_dir/{p}/dixon/{water,fat,in,opp}.nii.gz``, and only participants with
    all four are listed; ``participants_dir/{p}/landmarks.json`` is used where it exists.

    Raises:
        PairsError: the synth folder has no truth labels.
    """
    truth = sorted(Path(synth_dir).glob("truth/*/labels.nii.gz"))
    if not truth:
        raise PairsError(f"no truth/*/labels.nii.gz under {synth_dir}")
    pairs = []
    for labels in truth:
        pid = labels.parent.name
        folder = Path(participants_dir) / pid
        dixon = folder / "dixon"
        if all((dixon / f"{c}.nii.gz").is_file() for c in IMAGE_CHANNELS):
            landmarks = folder / "landmarks.json"
            pairs.append(
                TrainingPair(pid, dixon, labels, landmarks if landmarks.is_file() else None)
            )
    return pairs


def training_data_sha256(file_sha256: Mapping[str, Mapping[str, str]]) -> str:
    """One sha256 for a training set: over participants (sorted) and their files' sha256."""
    canonical = json.dumps(
        {pid: dict(sorted(files.items())) for pid, files in sorted(file_sha256.items())},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def hash_inputs(pair: TrainingPair, channels: Sequence[str]) -> dict[str, str]:
    """sha256 of every file a sample of ``pair`` is made from, by role.

    Raises:
        PairsError: a file is missing.
    """
    hashes = {}
    for role, path in pair.input_files(channels).items():
        try:
            hashes[role] = sha256_file(path)
        except OSError as err:
            raise PairsError(
                f"training pair {pair.participant_id}: {role} file {path} cannot be read: "
                f"{err.strerror or err}"
            ) from err
    return hashes


def sample_key(file_sha256: Mapping[str, str], spec: CropSpec, labels: Sequence[str]) -> str:
    """The cache key of a participant's samples: inputs, crop spec, labels, format."""
    canonical = json.dumps(
        {
            "files": dict(sorted(file_sha256.items())),
            "crop": spec.to_dict(),
            "labels": list(labels),
            "format": SAMPLE_FORMAT,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


# ------------------------------------------------------------------------ preparation


def _read_volume(path: Path, what: str, pid: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        image = nib.load(os.fspath(path))
        return np.asarray(image.get_fdata(dtype=np.float32)), np.asarray(image.affine, float)
    except (OSError, ValueError) as err:
        raise PairsError(f"training pair {pid}: {what} {path} cannot be read: {err}") from err


def read_label_map(path: Path, pid: str) -> tuple[np.ndarray, np.ndarray]:
    """An integer label map (int16) and its RAS affine.

    Raises:
        PairsError: the file cannot be read or holds non-integer values.
    """
    import nibabel as nib

    try:
        image = nib.load(os.fspath(path))
        data = np.asanyarray(image.dataobj)
    except (OSError, ValueError) as err:
        raise PairsError(f"training pair {pid}: labels {path} cannot be read: {err}") from err
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise PairsError(f"training pair {pid}: labels {path} are not integers")
        data = rounded
    return data.astype(np.int16), np.asarray(image.affine, float)


def read_channels(
    pair: TrainingPair, channels: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The named stitched channels of a pair (float32) and their common RAS affine.

    Raises:
        PairsError: a channel is missing, unreadable or on another grid than the first.
    """
    if not channels:
        raise ValueError("read_channels needs at least one channel")
    volumes, affine = {}, np.eye(4)
    for channel in channels:
        data, this = _read_volume(pair.channel_path(channel), channel, pair.participant_id)
        if volumes and (
            data.shape != next(iter(volumes.values())).shape or not np.allclose(this, affine)
        ):
            raise PairsError(
                f"training pair {pair.participant_id}: {channel} is not on the grid of "
                f"{next(iter(volumes))}"
            )
        volumes[channel], affine = data, this
    return volumes, affine


def participant_hips(
    pair: TrainingPair, channels: Mapping[str, np.ndarray], affine_ras: np.ndarray
) -> HipLandmarks:
    """The pair's landmarks file, or hips detected on its water and fat.

    Raises:
        MyoflowError: the landmarks file cannot be read.
        LandmarkError: detection found no plausible pair of hips.
    """
    if pair.landmarks is not None:
        return read_landmarks(pair.landmarks)
    return detect_hips(channels["water"], channels["fat"], affine_ras)


def prepare_participant(
    pair: TrainingPair, spec: CropSpec, labels: Sequence[str]
) -> PreparedParticipant:
    """Cut both sides' image crops and soft targets of one pair (float16).

    Raises:
        PairsError: a file is missing or unreadable, or labels and images disagree in
            orientation.
        LandmarkError: no landmarks file and the hips cannot be detected.
    """
    check_labels(labels)
    needed = list(dict.fromkeys([*spec.channels, *(() if pair.landmarks else ("water", "fat"))]))
    channels, affine = read_channels(pair, needed)
    hips = participant_hips(pair, channels, affine)
    label_map, label_affine = read_label_map(pair.labels, pair.participant_id)
    try:
        lps_axes(label_affine)
    except ValueError as err:
        raise PairsError(f"training pair {pair.participant_id}: labels {err}") from err
    points = {"left": hips.left_lps_mm, "right": hips.right_lps_mm}
    samples = []
    for side in SIDES:
        crop = crop_side(channels, affine, points[side], side, spec)
        target = soft_targets(
            label_map, label_affine, crop.geometry, side_label_values(labels, side)
        )
        samples.append(
            Sample(
                pair.participant_id, side, crop.image.astype(np.float16), target.astype(np.float16)
            )
        )
    return PreparedParticipant(pair.participant_id, tuple(samples), hips)


def _save_prepared(path: Path, prepared: PreparedParticipant) -> None:
    arrays = {}
    for sample in prepared.samples:
        arrays[f"image_{sample.side}"] = sample.image
        arrays[f"target_{sample.side}"] = sample.target
    meta = {
        "participant_id": prepared.participant_id,
        "hips": {
            "left_lps_mm": prepared.hips.left_lps_mm.tolist(),
            "right_lps_mm": prepared.hips.right_lps_mm.tolist(),
            "confidence": prepared.hips.confidence,
            "head_radius_mm": list(prepared.hips.head_radius_mm),
        },
    }
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)


def _load_prepared(path: Path, file_sha256: dict[str, str]) -> PreparedParticipant:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        samples = tuple(
            Sample(meta["participant_id"], s, data[f"image_{s}"], data[f"target_{s}"])
            for s in SIDES
        )
    hips = meta["hips"]
    return PreparedParticipant(
        meta["participant_id"],
        samples,
        HipLandmarks(
            np.array(hips["left_lps_mm"]),
            np.array(hips["right_lps_mm"]),
            float(hips["confidence"]),
            tuple(hips["head_radius_mm"]),  # type: ignore[arg-type]
        ),
        file_sha256,
    )


def load_or_prepare(
    pair: TrainingPair,
    spec: CropSpec,
    labels: Sequence[str],
    cache_dir: str | os.PathLike[str] | None,
) -> PreparedParticipant:
    """The pair's samples from ``cache_dir`` if prepared before from the same inputs,
    else prepared now (and cached when ``cache_dir`` is given).

    Raises:
        PairsError, LandmarkError: see :func:`prepare_participant`.
    """
    hashes = hash_inputs(pair, spec.channels)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{sample_key(hashes, spec, labels)}.npz"
        if path.is_file():
            try:
                return _load_prepared(path, hashes)
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # damaged: prepare it again
    prepared = prepare_participant(pair, spec, labels)
    prepared = PreparedParticipant(prepared.participant_id, prepared.samples, prepared.hips, hashes)
    if path is not None:
        _save_prepared(path, prepared)
    return prepared


def each_pair(
    pairs: Sequence[TrainingPair],
    work: Callable[[TrainingPair], T],
    what: str,
    log: Callable[[str], None] = lambda line: None,
) -> tuple[list[T], dict[str, dict[str, str]]]:
    """``work(pair)`` for every pair; participants it excludes (hips not found) are left out.

    Returns:
        The results in the order of ``pairs``, and the left-out participants as
        ``{participant_id: {"reason": ..., "detail": ...}}``.
    """
    done, excluded = [], {}
    for n, pair in enumerate(pairs, start=1):
        try:
            done.append(work(pair))
        except ParticipantExcluded as err:
            excluded[pair.participant_id] = {"reason": err.reason, "detail": err.detail}
            log(f"{what} [{n}/{len(pairs)}] {pair.participant_id}: left out ({err})")
            continue
        log(f"{what} [{n}/{len(pairs)}] {pair.participant_id}: done")
    return done, excluded


def prepare_pairs(
    pairs: Sequence[TrainingPair],
    spec: CropSpec,
    labels: Sequence[str],
    cache_dir: str | os.PathLike[str] | None,
    log: Callable[[str], None] = lambda line: None,
) -> tuple[list[PreparedParticipant], dict[str, dict[str, str]]]:
    """Prepare every pair; participants whose hips cannot be found are left out
    (:func:`each_pair`).

    Raises:
        PairsError: a file is missing or unreadable (fix the pairs table).
    """
    return each_pair(
        pairs, lambda pair: load_or_prepare(pair, spec, labels, cache_dir), "samples", log
    )
