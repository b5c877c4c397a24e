"""Benchmark the nnunetv2 segmentation backend: model-load cost per shard, and seconds per
participant with the hips box against the whole stitched volume.

Run: ``.venv/bin/python bench/nnunet_backend.py [--participants 3] [--size small]
[--features 32 64 128 256 320] [--patch 64 96 96] [--threads 2] [--work DIR]``

Synthetic UK Biobank participants (``--size``; whole body, not cropped) are written as
the conversion and landmarks stages leave them (tests/segment/nnunet_helpers.py
``write_participant``), and an untrained nnU-Net v2 model is written in the trainer's
layout (``make_tiny_nnunet_model``: nnU-Net's own network builder and initialisation,
its background bias set so that about 90 % of voxels are background). ``--features`` and
``--patch`` choose the network: the defaults are nnU-Net's default PlainConvUNet widths
(32 ... 320) at the grid's own spacing, so the network's cost is of the order of a real
3d_fullres model's; the test model (4 8 16, patch 32^3 at 12 mm) measures nnU-Net's pre-
and post-processing alone. Then, on the CPU with ``--threads`` torch threads:

- load: :func:`myoflow.segment.nnunet_backend.load_nnunet_model` (sha256 of plans,
  dataset.json and checkpoint; nnU-Net's trainer lookup; ``torch.load``) in a fresh
  process, as a shard job pays it, and again in this process (imports warm);
- per participant and region (``whole``, ``hips`` with the config's default margins):
  :func:`myoflow.segment.nnunet_stage.segment_one` (read, predict, map, write), wall and
  CPU seconds of the process, and the number of voxels nnU-Net was given.

Mirroring is off (``--mirroring`` turns it on: 8 passes per patch).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "segment"))
from nnunet_helpers import make_tiny_nnunet_model, write_participant  # noqa: E402

from myoflow.core.labels import LABELS  # noqa: E402
from myoflow.segment.nnunet_backend import (  # noqa: E402
    NnunetSettings,
    load_nnunet_model,
    to_nnunet_layout,
)
from myoflow.segment.nnunet_stage import segment_one  # noqa: E402
from myoflow.segment.stage import SegmentFiles  # noqa: E402

DEFAULT_MARGINS_MM = {
    "lateral": 100.0,
    "anterior": 100.0,
    "posterior": 150.0,
    "superior": 300.0,
    "inferior": 200.0,
}  # config/config.yaml model.hips_margin_mm

LOAD_IN_FRESH_PROCESS = """
import sys, time, json
started = time.perf_counter()
import torch
from myoflow.segment.nnunet_backend import NnunetSettings, load_nnunet_model
from pathlib import Path
values = json.loads(sys.argv[1]) | {"model_dir": Path(sys.argv[2])}
settings = NnunetSettings(**values)
load_nnunet_model(settings, torch.device("cpu"))
print(time.perf_counter() - started)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=3)
    parser.add_argument("--size", choices=("small", "full"), default="small")
    parser.add_argument("--features", type=int, nargs="+", default=[32, 64, 128, 256, 320])
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 96, 96])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mirroring", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="nnunet_bench_"))
    print(f"work folder {work}; torch {torch.__version__}, {args.threads} threads, CPU")

    folders = []
    for n in range(args.participants):
        folder = work / "participants" / f"P{n}"
        channels = write_participant(folder, seed=10 + n, size=args.size, crop=False)
        folders.append(folder)
    affine = nib.load(folders[0] / "dixon" / "water.nii.gz").affine
    image, spacing = to_nnunet_layout([channels["water"], channels["fat"]], affine, "SimpleITKIO")
    print(f"grid {channels['water'].shape} (i, j, k) at {spacing[::-1]} mm")
    model_dir = make_tiny_nnunet_model(
        work / "model",
        [image],
        [spacing],
        features=args.features,
        patch=args.patch,
        spacing_mm=spacing,
    )
    weights_mb = (model_dir / "fold_0" / "checkpoint_final.pth").stat().st_size / 1e6
    print(f"network features {args.features}, patch {args.patch}; checkpoint {weights_mb:.1f} MB")

    common = dict(
        folds=(0,),
        checkpoint="checkpoint_final.pth",
        channels=("water", "fat"),
        labels={v: k for k, v in LABELS.items()},
        mirroring=args.mirroring,
    )
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_IN_FRESH_PROCESS,
            json.dumps(common | {"labels": {}}),
            str(model_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    print(
        f"model load in a fresh process (imports included): {float(fresh.stdout.split()[-1]):.2f} s"
    )
    for region in ("whole", "hips"):
        settings = NnunetSettings(
            model_dir=model_dir, region=region, hips_margin_mm=DEFAULT_MARGINS_MM, **common
        )
        started = time.perf_counter()
        model = load_nnunet_model(settings, torch.device("cpu"))
        print(f"[{region}] model load, imports warm: {time.perf_counter() - started:.2f} s")
        walls, cpus, voxels = [], [], []
        for folder in folders:
            files = SegmentFiles(folder)
            shutil.rmtree(folder / "seg", ignore_errors=True)
            wall, cpu = time.perf_counter(), time.process_time()
            segment_one(files, folder.name, model)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            box = json.loads(files.segmentation.read_text())["crop_boxes"][0]
            voxels.append(int(np.prod([b - a for a, b in box])))
        print(
            f"[{region}] per participant: wall {np.mean(walls):.2f} s "
            f"(min {min(walls):.2f}, max {max(walls):.2f}), CPU {np.mean(cpus):.2f} s, "
            f"{np.mean(voxels) / 1e6:.2f} M voxels given to nnU-Net"
        )
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
