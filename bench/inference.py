"""Benchmark inference: model load, seconds per participant, and GPU throughput.

Run: ``.venv/bin/python bench/inference.py [--participants 3] [--threads 2] [--model DIR]
[--work DIR]``

Full-size synthetic UK Biobank participants (224 x 174 x 370 voxels at 2.232 x 2.232 x
3 mm) are rendered in worker processes (:func:`myoflow.synth.render.render_participant`,
stitched in memory with :func:`myoflow.synth.signal.stitched_channels`) and written as the
conversion and landmarks stages leave them: ``dixon/{water,fat}.nii.gz`` (int16) and
``landmarks.json`` (the generator's true hip centres). Each is then segmented by the
stage's own code (:func:`myoflow.segment.stage.segment_one`: read, crop, infer, uncrop, clean,
write) on the CPU with ``--threads`` torch threads:

- fixed cost: :func:`myoflow.segment.model.card.load_model` (card, sha256 of the weights, build,
  ``torch.load``), best of 3;
- seconds per participant (wall, and CPU seconds of the process) with the model loaded
  once per shard (the stage) against the
  baseline of loading it for every participant, measured one after the other;
- the network alone on one participant's two crops, contiguous against
  ``channels_last_3d`` input (what :func:`predict_probabilities` uses);
- with CUDA: participants per second of the network alone at batch sizes 2 to 32, and
  the stage's seconds per participant.

The model is ``--model`` if given, else ``resources/models/hips-cascade`` if it holds a
model, else the shipped architecture (width 0.5, HIPS_COARSE_CROP, water and fat, the five
muscles) randomly initialised and saved with :func:`save_model`. A random network labels
much of each crop, far more than a trained one, which makes uncrop and clean-up slow; so
the timed runs use an oracle (:class:`OracleNet`) that runs the network for its cost and
answers with the truth's partial-volume training targets on the crop
(:func:`myoflow.segment.model.targets.soft_targets`), as a perfect coarse model would.
Its Dice against the truth checks the whole way back to the stitched grid. One run with
the network's own output is shown as the upper bound. For a cascade (a model with a
full-resolution refiner, :mod:`myoflow.segment.model.refine`) the oracle is a perfect first stage
without the refiner, so its Dice is the ceiling of the coarse grid; the network's run
includes the refiner (column ``refine``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from torch import nn

from myoflow.core.grid import lps_axes
from myoflow.core.io import save_nifti
from myoflow.core.labels import LABELS, MUSCLES
from myoflow.core.volume import Volume
from myoflow.landmarks.record import HipLandmarks, read_landmarks, write_landmarks
from myoflow.segment import stage as seg
from myoflow.segment.crop import HIPS_COARSE_CROP, CropSpec, crop_participant
from myoflow.segment.model.card import load_model, save_model, sha256_file
from myoflow.segment.model.labelling import stitch_labels
from myoflow.segment.model.predict import predict_probabilities
from myoflow.segment.model.refine import coarse_network
from myoflow.segment.model.registry import build_model, parameter_count
from myoflow.segment.model.targets import soft_targets
from myoflow.synth.geometry import protocol
from myoflow.synth.phenotypes import sample_cohort
from myoflow.synth.render import render_participant
from myoflow.synth.rng import participant_rng
from myoflow.synth.signal import Artefacts, stitched_channels

SHIPPED = Path(__file__).resolve().parents[1] / "resources" / "models" / "hips-cascade"
SHARD_SIZE = 25
TRUTH = "truth_labels.nii.gz"


def write_participant(args: tuple[dict, int, Path]) -> str:
    """Render one full-size participant; write its dixon water and fat, and landmarks."""
    row, index, folder = args
    proto = protocol("ukbb", "full")
    phantom = render_participant(row, proto.grid, participant_rng(7, index, "texture"))
    channels = stitched_channels(
        phantom.water, phantom.fat, proto.stations, Artefacts(), participant_rng(7, index, "noise")
    )
    for name in HIPS_COARSE_CROP.channels:
        Volume(channels[name], proto.grid.affine_lps()).to_nifti(
            folder / "dixon" / f"{name}.nii.gz"
        )
    save_nifti(folder / TRUTH, phantom.labels, proto.grid.affine_ras())
    hips = {
        s: np.array([phantom.truth[f"hip_{s}_{a}_mm"] for a in "xyz"]) for s in ("left", "right")
    }
    write_landmarks(
        folder / "landmarks.json",
        folder.name,
        HipLandmarks(hips["left"], hips["right"], 1.0, (22, 22)),
    )
    return folder.name


def random_model(folder: Path) -> Path:
    """The shipped architecture, randomly initialised (seed 0), saved with its card."""
    torch.manual_seed(0)
    config = {
        "architecture": "vnet",
        "in_channels": len(HIPS_COARSE_CROP.channels),
        "labels": list(MUSCLES),
        "width": 0.5,
        "crop": HIPS_COARSE_CROP.to_dict(),
    }
    save_model(folder, build_model(config).state_dict(), config, {"name": "random-width-0.5"})
    return folder


def load_seconds(model_dir: Path, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` seconds: the whole load, and its sha256 check alone."""
    whole, checksum = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        load_model(model_dir, "cpu")
        whole.append(time.perf_counter() - started)
        started = time.perf_counter()
        sha256_file(model_dir / "model.pt")
        checksum.append(time.perf_counter() - started)
    return {"load": min(whole), "sha256": min(checksum)}


class OracleNet(nn.Module):
    """The real network's cost with the truth's answer: runs ``network`` on every batch,
    then returns the partial-volume truth of the crops it was given (found by their
    bytes), so uncrop and clean-up work on masks like a good model's."""

    def __init__(self, network: nn.Module, answers: dict[bytes, np.ndarray]) -> None:
        super().__init__()
        self.network = network
        self.answers = answers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.network(x)
        keys = [_key(x[n].contiguous().cpu().numpy()) for n in range(len(x))]
        return torch.from_numpy(np.stack([self.answers[k] for k in keys])).to(x.device)


def _key(image: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(image, dtype=np.float32).tobytes()).digest()


def truth_answers(participants: list[Path], spec: CropSpec, labels: list[str]) -> dict:
    """Per crop (by its bytes): the truth's label masks resampled linearly onto it."""
    answers = {}
    for folder in participants:
        channels, affine = seg.read_channels(seg.SegmentFiles(folder), spec.channels)
        crops = crop_participant(channels, affine, read_landmarks(folder / "landmarks.json"), spec)
        truth = np.asanyarray(nib.load(folder / TRUTH).dataobj)
        for side, crop in crops.items():
            values = [LABELS[f"{m}_{side}"] for m in labels]
            answers[_key(crop.image)] = soft_targets(truth, affine, crop.geometry, values)
    return answers


def stray_parts(participants: list[Path], spec: CropSpec, answers: dict, labels: list[str]):
    """Before clean-up: every 26-connected part of a label besides its largest, with its
    size against the largest and its gap to it (mm), from the oracle's probabilities."""
    rows = []
    for folder in participants:
        channels, affine = seg.read_channels(seg.SegmentFiles(folder), spec.channels)
        crops = crop_participant(channels, affine, read_landmarks(folder / "landmarks.json"), spec)
        stitched, _ = stitch_labels(
            {side: answers[_key(crop.image)] for side, crop in crops.items()},
            {side: crop.geometry for side, crop in crops.items()},
            labels,
            stitched_shape=channels[spec.channels[0]].shape,
            affine_ras=affine,
        )
        spacing, _ = lps_axes(affine)
        for name, value in LABELS.items():
            parts, count = ndimage.label(stitched == value, structure=np.ones((3, 3, 3)))
            if count < 2:
                continue
            sizes = np.bincount(parts.ravel())
            sizes[0] = 0
            largest = int(np.argmax(sizes))
            gap = ndimage.distance_transform_edt(parts != largest, sampling=spacing)
            for part in range(1, count + 1):
                if part != largest:
                    rows.append(
                        (folder.name, name, sizes[part] / sizes[largest], gap[parts == part].min())
                    )
    return rows


def segment_all(
    participants: list[Path],
    load: Callable[[], seg.Segmenter],
    per_participant_load: bool,
) -> list[dict]:
    """Segment every participant through the stage's code; their seconds by step."""
    segmenter = None if per_participant_load else load()
    out = []
    for folder in participants:
        files = seg.SegmentFiles(folder)
        files.remove_outputs()
        started, cpu_started = time.perf_counter(), time.process_time()
        one = segmenter or load()
        record = seg.segment_one(files, folder.name, one, batch_size=2)
        total = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        if record["status"] != "ok":
            raise SystemExit(f"{folder.name}: {record}")
        written = json.loads(files.segmentation.read_text())
        # total: the stage's steps plus, for the baseline, loading the model
        out.append(written["seconds"] | {"total": total, "cpu": cpu, "dice": _dice(folder)})
    return out


def _dice(folder: Path) -> float:
    """Smallest Dice over the ten labels of the stage's output against the truth."""
    ours = np.asanyarray(nib.load(folder / "seg" / "labels.nii.gz").dataobj)
    truth = np.asanyarray(nib.load(folder / TRUTH).dataobj)
    scores = []
    for value in LABELS.values():
        a, b = ours == value, truth == value
        scores.append(
            2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)
        )
    return min(scores)


def layout_seconds(model: nn.Module, images: np.ndarray, repeats: int = 3) -> dict[str, float]:
    """Median seconds of one forward pass over ``images``, contiguous against
    channels_last_3d input, measured alternately."""
    times: dict[str, list[float]] = {"contiguous": [], "channels_last_3d": []}
    x = torch.from_numpy(images)
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(repeats):
            for name, layout in (
                ("contiguous", torch.contiguous_format),
                ("channels_last_3d", torch.channels_last_3d),
            ):
                started = time.perf_counter()
                model(x.to(memory_format=layout))
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def first_crops(folder: Path, spec: CropSpec) -> np.ndarray:
    """Both crops of one participant, (2, C, X, Y, Z)."""
    channels, affine = seg.read_channels(seg.SegmentFiles(folder), spec.channels)
    crops = crop_participant(channels, affine, read_landmarks(folder / "landmarks.json"), spec)
    return np.stack([crops["left"].image, crops["right"].image])


def gpu_throughput(
    participants: list[Path], model_dir: Path, spec: CropSpec
) -> list[tuple[int, float]]:
    """Participants per second of the network alone (two crops each) by batch size."""
    model = coarse_network(load_model(model_dir, "cuda")[0])
    crops = np.concatenate([first_crops(folder, spec) for folder in participants])
    rows = []
    for batch in (2, 4, 8, 16, 32):
        images = crops[np.arange(max(batch * 4, 64)) % len(crops)]
        predict_probabilities(model, images[:batch], "cuda", batch)  # warm up this shape
        torch.cuda.synchronize()
        started = time.perf_counter()
        predict_probabilities(model, images, "cuda", batch)
        torch.cuda.synchronize()
        rows.append((batch, len(images) / 2 / (time.perf_counter() - started)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--participants", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for the participants (kept; reused)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="myoflow-inference-"))
    rows = sample_cohort(7, args.participants, "ukbb").to_dict("records")
    jobs = [(row, n + 1, work / f"P{n + 1}") for n, row in enumerate(rows)]
    todo = [job for job in jobs if not (job[2] / TRUTH).is_file()]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, min(2, len(todo)))) as pool:
        list(pool.map(write_participant, todo))
    print(
        f"rendered {len(todo)} full-size participants in {time.perf_counter() - started:.0f} s "
        f"(in {work}; {len(jobs) - len(todo)} there already)"
    )
    participants = [job[2] for job in jobs]

    model_dir = args.model or (SHIPPED if (SHIPPED / "model_card.json").is_file() else None)
    model_dir = model_dir or random_model(work / "model")
    model, card = load_model(model_dir, "cpu")
    config = card["config"]
    spec = CropSpec.from_dict(config["crop"])
    print(
        f"model {model_dir.name}: width {config['width']}, "
        f"{parameter_count(model) / 1e6:.2f} M parameters, crop {spec.shape}, "
        f"weights {card['weights_bytes'] / 1e6:.1f} MB; torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.1f}"
    )
    fixed = load_seconds(model_dir)
    answers = truth_answers(participants, spec, list(config["labels"]))
    cpu = torch.device("cpu")

    def network() -> seg.Segmenter:
        return seg.load_segmenter(model_dir, cpu)

    def oracle() -> seg.Segmenter:
        # A cascade's oracle is a perfect first stage alone: the ceiling of the coarse grid.
        loaded = seg.load_segmenter(model_dir, cpu)
        card = loaded.card | {"config": {k: v for k, v in config.items() if k != "refine"}}
        return replace(loaded, model=OracleNet(coarse_network(loaded.model), answers), card=card)

    segment_all(participants[:1], oracle, False)  # warm-up: the first call sets up kernels
    runs = {
        "oracle output, load once": segment_all(participants, oracle, False),
        "oracle output, load each": segment_all(participants, oracle, True),
        "network output, load once": segment_all(participants, network, False),
    }
    steps = ["read", "crop", "infer", "refine", "uncrop", "clean", "write", "total", "cpu"]
    print(
        f"\nCPU, {args.threads} threads, seconds per participant (median of {len(participants)}):"
    )
    print(f"  {'':<26}" + "".join(f"{s:>8}" for s in steps) + "  min Dice")
    for name, rows_ in runs.items():
        values = [statistics.median(r.get(s, 0.0) for r in rows_) for s in steps]
        dice = min(r["dice"] for r in rows_)
        print(f"  {name:<26}" + "".join(f"{v:>8.2f}" for v in values) + f"  {dice:8.3f}")
    once = statistics.median(r["total"] for r in runs["oracle output, load once"])
    each = statistics.median(r["total"] for r in runs["oracle output, load each"])
    print(
        f"\nmodel load (card + sha256 + weights): {fixed['load']:.3f} s "
        f"(sha256 alone {fixed['sha256']:.3f} s)"
    )
    print(
        f"shard of {SHARD_SIZE}: loading once {fixed['load'] + SHARD_SIZE * once:.0f} s, "
        f"loading per participant {SHARD_SIZE * each:.0f} s "
        f"(per participant {each:.2f} s against {once:.2f} s: ratio {each / once:.2f})"
    )
    layout = layout_seconds(coarse_network(model), first_crops(participants[0], spec))
    print(
        f"network alone, one participant (2 crops): contiguous {layout['contiguous']:.2f} s, "
        f"channels_last_3d {layout['channels_last_3d']:.2f} s "
        f"(ratio {layout['contiguous'] / layout['channels_last_3d']:.2f})"
    )
    parts = stray_parts(participants, spec, answers, list(config["labels"]))
    print(
        "oracle before clean-up, parts of a label besides its largest "
        "(participant, label, share of the largest, gap mm):"
    )
    for participant, name, share, gap in parts:
        print(f"  {participant} {name:<22} {share:6.3f} {gap:6.1f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process: {peak_mb:.0f} MB")

    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        print(f"\nCUDA: {torch.cuda.get_device_name(gpu)}")
        for batch, rate in gpu_throughput(participants, model_dir, spec):
            print(f"  network alone, batch {batch:>2}: {rate:8.1f} participants/s")

        def on_gpu() -> seg.Segmenter:
            return seg.load_segmenter(model_dir, gpu)

        segment_all(participants[:1], on_gpu, False)
        timed = segment_all(participants, on_gpu, False)
        print(
            "  stage, seconds per participant: "
            + ", ".join(f"{step} {statistics.median(r[step] for r in timed):.3f}" for step in steps)
        )


if __name__ == "__main__":
    main()
