"""Benchmark ``myoflow convert`` on one full-size participant, beside dcm2niix.

Run: ``.venv/bin/python bench/convert.py [--protocol ukbb|nako] [--repeats 2]``

Generates one full-size participant without artefacts (UK Biobank: 6 stations x 4
channels = 24 series) in a temporary folder, then measures in the same run:

- our conversion of it, in-process, best of ``--repeats``: reading every file, sorting,
  stitching the four channels onto the default (UK Biobank) grid and writing the
  int16 NIfTI files and acquisition.json, with the time of each step;
- the peak memory (maximum resident set) of one conversion in a fresh process;
- ``dcm2niix -z y`` converting the same participant folder (all 24 series, no
  stitching), best of ``--repeats``, and its peak memory;
- the disk taken by the four stitched channels as int16 (what we write) and as float32;
- the resampling methods stitch.py chose between, on one station.

Targets: our time at most 1.5x dcm2niix's convert-only time (issue 22; 2x in issue 3), peak
under 2 GB.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from myoflow.core.volume import Volume
from myoflow.ingest.convert import CHANNELS, convert_shard
from myoflow.ingest.prepare import prepare_participant
from myoflow.ingest.settings import IngestSettings
from myoflow.synth.cohort import CohortSpec, generate_cohort
from myoflow.synth.signal import ArtefactRates

TARGET_RATIO = 1.5
TARGET_PEAK_GB = 2.0

_CONVERT_ONCE = """
import resource, sys
import pandas as pd
from myoflow.ingest.convert import convert_shard
members = pd.DataFrame({"participant_id": ["P1"], "shard": ["b"], "dicom_path": [sys.argv[1]]})
inventory = pd.DataFrame({"participant_id": ["P1"], "status": ["ok"], "reason": [""]})
convert_shard(members, sys.argv[2], inventory, log=lambda line: None)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def dcm2niix() -> str:
    found = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    if not Path(found).exists():
        sys.exit("dcm2niix not found (pip install dcm2niix)")
    return found


def best_of(repeats: int, run) -> float:
    best = np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def convert_seconds(dicom: Path, work: Path, repeats: int) -> float:
    members = pd.DataFrame({"participant_id": ["P1"], "shard": ["b"], "dicom_path": [dicom]})
    inventory = pd.DataFrame({"participant_id": ["P1"], "status": ["ok"], "reason": [""]})

    def run() -> None:
        shutil.rmtree(work, ignore_errors=True)
        convert_shard(members, work, inventory, log=lambda line: None)

    return best_of(repeats, run)


def step_seconds(dicom: Path, work: Path) -> dict[str, float]:
    """Seconds of each step of one conversion (read and check, stitch, write)."""
    started = time.perf_counter()
    prepared = prepare_participant(dicom)
    steps = {"read, sort, check": time.perf_counter() - started}
    started = time.perf_counter()
    stitched = {c: prepared.stitched(c) for c in CHANNELS}
    steps["stitch 4 channels"] = time.perf_counter() - started
    started = time.perf_counter()
    for channel, array in stitched.items():
        Volume(array, prepared.grid.affine_lps()).to_nifti(work / f"{channel}.nii.gz")
    steps["write 4 int16 NIfTI"] = time.perf_counter() - started
    for channel, array in stitched.items():
        Volume(array, prepared.grid.affine_lps()).to_nifti(
            work / f"{channel}_f32.nii.gz", dtype="float32"
        )
    return steps


def peak_mb(command: list[str]) -> float:
    """Peak resident memory (MB) of a command, from the finished child's rusage."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True,"
        " capture_output=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *command], check=True, capture_output=True, text=True
    )
    return int(result.stdout.split()[-1]) / 1024


def resampling_seconds() -> dict[str, float]:
    """One UK Biobank station onto a shifted 2 x 2.1 x 2.9 mm grid, by each method."""
    import SimpleITK as sitk
    from scipy import ndimage

    from myoflow.ingest.stitch import sample
    from myoflow.synth.geometry import Grid

    rng = np.random.default_rng(0)
    station = np.asfortranarray(rng.random((224, 174, 64), dtype=np.float32) * 1000)
    spacing = np.array([500 / 224, 500 / 224, 3.0])
    affine = np.diag([*spacing, 1.0])
    grid = Grid((224, 174, 70), (2.0, 2.1, 2.9), (0.3, 0.7, -5.0))
    axes = [grid.axis_mm(a) / spacing[a] for a in range(3)]
    index = np.meshgrid(*axes, indexing="ij")
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(grid.shape)
    resampler.SetOutputSpacing(grid.spacing_mm)
    resampler.SetOutputOrigin(grid.origin_lps_mm)
    resampler.SetInterpolator(sitk.sitkLinear)

    def simpleitk(threads: int) -> np.ndarray:
        # Numpy in and out, as stitching needs: the copies are part of the cost.
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        image = sitk.GetImageFromArray(np.ascontiguousarray(station.transpose(2, 1, 0)))
        image.SetSpacing(spacing.tolist())
        return sitk.GetArrayFromImage(resampler.Execute(image)).transpose(2, 1, 0)

    zoom = np.array(grid.spacing_mm) / spacing
    offset = np.array(grid.origin_lps_mm) / spacing
    methods = {
        "separable (ours)": lambda: sample(station, affine, grid, method="separable"),
        "map_coordinates (ours, oblique)": lambda: sample(station, affine, grid, method="general"),
        "scipy map_coordinates, order 1": lambda: ndimage.map_coordinates(station, index, order=1),
        "scipy affine_transform, diagonal": lambda: ndimage.affine_transform(
            station, zoom, offset=offset, output_shape=grid.shape, order=1
        ),
        "SimpleITK ResampleImageFilter, 1 thread": lambda: simpleitk(1),
        "SimpleITK ResampleImageFilter, 2 threads": lambda: simpleitk(2),
    }
    return {name: best_of(3, run) for name, run in methods.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="ukbb", choices=("ukbb", "nako"))
    parser.add_argument("--repeats", type=int, default=2, help="runs per timing (best counts)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = CohortSpec(
            out=root / "cohort",
            participants=1,
            protocol=args.protocol,
            seed=7,
            size="full",
            rates=ArtefactRates.none(),
        )
        generate_cohort(spec)
        (dicom,) = sorted((root / "cohort" / "dicom").iterdir())
        n_series = sum(1 for p in dicom.iterdir() if p.is_dir())
        n_files = sum(1 for p in dicom.rglob("*") if p.is_file())
        ours = convert_seconds(dicom, root / "ours", args.repeats)
        our_peak = peak_mb([sys.executable, "-c", _CONVERT_ONCE, str(dicom), str(root / "peak")])
        (root / "steps").mkdir()
        steps = step_seconds(dicom, root / "steps")
        out = root / "dcm2niix"

        def run_dcm2niix() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            command = [dcm2niix(), "-z", "y", "-f", "%s_%d", "-o", str(out), str(dicom)]
            subprocess.run(command, check=True, capture_output=True)

        theirs = best_of(args.repeats, run_dcm2niix)
        their_size = sum(p.stat().st_size for p in out.glob("*.nii.gz"))
        shutil.rmtree(out)
        out.mkdir()
        their_peak = peak_mb([dcm2niix(), "-z", "y", "-f", "%s_%d", "-o", str(out), str(dicom)])
        sizes = {
            dtype: sum((root / "steps" / f"{c}{suffix}.nii.gz").stat().st_size for c in CHANNELS)
            for dtype, suffix in (("int16", ""), ("float32", "_f32"))
        }
        grid = prepare_participant(dicom, IngestSettings()).grid
    print(
        f"myoflow convert benchmark: one full-size {args.protocol} participant, "
        f"{n_series} series, {n_files} files; stitched grid {grid.shape}"
    )
    rows = [
        ("myoflow convert (stitched)", ours, our_peak, sizes["int16"]),
        (f"dcm2niix -z y ({n_series} series)", theirs, their_peak, their_size),
    ]
    print(f"{'':<34} {'seconds':>8} {'peak MB':>8} {'output MB':>10}")
    for name, seconds, peak, size in rows:
        print(f"{name:<34} {seconds:>8.2f} {peak:>8.0f} {size / 1e6:>10.1f}")
    ratio, peak_gb = ours / theirs, our_peak / 1024
    verdict = {True: "met", False: "MISSED"}
    print(
        f"ratio {ratio:.2f} (target <= {TARGET_RATIO:g}: {verdict[ratio <= TARGET_RATIO]});"
        f" peak {peak_gb:.2f} GB (target < {TARGET_PEAK_GB:.0f} GB:"
        f" {verdict[peak_gb < TARGET_PEAK_GB]})"
    )
    print("steps of one conversion: " + ", ".join(f"{k} {v:.2f} s" for k, v in steps.items()))
    print(
        f"four channels on disk: int16 {sizes['int16'] / 1e6:.1f} MB,"
        f" float32 {sizes['float32'] / 1e6:.1f} MB"
    )
    print("resampling one station (224 x 174 x 64) onto 224 x 174 x 70 points, best of 3:")
    for name, seconds in resampling_seconds().items():
        print(f"  {name:<34} {seconds:.3f} s")


if __name__ == "__main__":
    main()
