"""Benchmark what one full-size participant keeps under ``results/participants/{id}/`` for each
value of config ``keep.stitched``, and what making its channels again costs.

Run: ``PYTHONPATH=workflow .venv/bin/python bench/storage.py [--dicom DIR] [--scratch DIR]``

Without ``--dicom``, generates one full-size UK Biobank participant without artefacts
(``myoflow synth --size full``). Then, in-process, runs the per-participant stages on it as
the workflow does (conversion on the default UK Biobank grid, landmark detection, the
shipped segmentation model on the CPU, measure with ``keep.stitched: all``; the
inventory first), and:

- lists the bytes of every file of its folder;
- for each ``keep.stitched`` value, removes the channels that value does not keep from a
  copy of the folder (:func:`myoflow.measure.stage.remove_unkept_channels`, as the
  measure stage does) and sums the bytes left, for a measured participant and for an
  excluded one;
- times making all four channels again from the DICOM
  (:class:`myoflow.ingest.regenerate.DicomChannelSource`, what a rerun that needs them
  does), best of ``--repeats``, and checks they are byte-identical to those removed.

The numbers go to docs/storage.md. Target: at most 15 MB per measured participant with
the default ``keep.stitched: none`` (issue 21).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import pandas as pd

from myoflow.core.kept_channels import KEEP_STITCHED, folder_bytes
from myoflow.core.participant_files import CHANNELS, ParticipantFiles
from myoflow.ingest.convert import convert_shard
from myoflow.ingest.inventory import inventory_shard
from myoflow.ingest.regenerate import DicomChannelSource
from myoflow.ingest.settings import IngestSettings
from myoflow.landmarks.stage import landmarks_shard
from myoflow.measure.qc import QcSettings
from myoflow.measure.stage import measure_shard, remove_unkept_channels
from myoflow.segment.stage import load_segmenter, resolve_device, segment_shard

TARGET_MB = 15.0
MODEL = Path(__file__).resolve().parents[1] / "resources" / "models" / "hips-cascade"
MB = 1e6


def synthesise(out: Path) -> Path:
    """One full-size UK Biobank participant without artefacts; its DICOM folder."""
    myoflow = Path(sys.executable).parent / "myoflow"
    none = "swap=0,partial_swap=0,missing_station=0,missing_channel=0"
    command = [str(myoflow), "synth", "--out", str(out), "--participants", "1"]
    command += ["--size", "full", "--protocol", "ukbb", "--artefacts", none, "--workers", "1"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return next((out / "dicom").iterdir())


def run_stages(dicom: Path, participants: Path) -> pd.DataFrame:
    """Inventory, convert, find landmarks, segment and measure one participant; its
    measure table."""
    members = pd.DataFrame({"participant_id": ["P1"], "shard": ["b"], "dicom_path": [str(dicom)]})
    quiet = print
    settings = IngestSettings()
    inventory = inventory_shard(members, participants, log=quiet)
    convert = convert_shard(members, participants, inventory, settings, log=quiet)
    landmarks = landmarks_shard(members, participants, convert, log=quiet, ingest=settings)
    segmenter = load_segmenter(MODEL, resolve_device("cpu"))
    segment = segment_shard(members, participants, landmarks, segmenter, log=quiet)
    tables = measure_shard(
        members, participants, landmarks, segment, QcSettings(), log=quiet, keep_stitched="all"
    )
    return tables.status


def kept_bytes(folder: Path, scratch: Path, keep: str, status: str) -> int:
    """Bytes left in a copy of ``folder`` once the channels ``keep`` drops are removed."""
    copy = scratch / f"{keep}-{status}" / folder.name
    shutil.copytree(folder, copy)
    table = pd.DataFrame({"participant_id": [folder.name], "status": [status]})
    remove_unkept_channels(table, copy.parent, keep, log=lambda line: None)
    total = sum(folder_bytes(copy).values())
    shutil.rmtree(copy.parent)
    return total


def regeneration_seconds(folder: Path, dicom: Path, scratch: Path, repeats: int) -> float:
    """Best-of seconds to make all four channels again (after removing them) from DICOM."""
    copy = scratch / "regenerate" / folder.name
    shutil.copytree(folder, copy)
    table = pd.DataFrame({"participant_id": [folder.name], "status": ["ok"]})
    files = ParticipantFiles(copy)
    source = DicomChannelSource(dicom, IngestSettings())
    seconds = []
    for _ in range(repeats):
        remove_unkept_channels(table, copy.parent, "none", log=lambda line: None)
        started = time.perf_counter()
        source.restore(files, CHANNELS)  # raises if a file differs from the removed one
        seconds.append(time.perf_counter() - started)
    shutil.rmtree(copy.parent)
    return min(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dicom", type=Path, help="a full-size participant's DICOM folder")
    parser.add_argument("--scratch", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        scratch = Path(tmp)
        dicom = args.dicom or synthesise(scratch / "synth")
        participants = scratch / "participants"
        status = run_stages(dicom, participants)
        print(f"measure: {status.iloc[0]['status']} {status.iloc[0]['reason']}")
        folder = participants / "P1"
        grid = nib.load(folder / "seg" / "labels.nii.gz").shape
        print(f"stitched grid: {' x '.join(map(str, grid))} voxels")
        print("\nbytes per file (keep.stitched: all, measured):")
        for path, size in folder_bytes(folder).items():
            print(f"  {path:32s} {size:>12,d}  {size / MB:7.2f} MB")
        print("\nkept per participant:")
        for keep in KEEP_STITCHED:
            ok = kept_bytes(folder, scratch, keep, "ok")
            excluded = kept_bytes(folder, scratch, keep, "excluded")
            print(
                f"  keep.stitched {keep:9s} measured {ok / MB:6.2f} MB"
                f" (100,000: {ok * 1e5 / 1e12:5.2f} TB); excluded at a later stage"
                f" {excluded / MB:6.2f} MB"
            )
        seconds = regeneration_seconds(folder, dicom, scratch, args.repeats)
        print(
            f"\nmaking the four channels again from DICOM: {seconds:.1f} s (best of {args.repeats})"
        )
        ok_none = kept_bytes(folder, scratch, "none", "ok") / MB
        verdict = "meets" if ok_none <= TARGET_MB else "misses"
        print(f"keep.stitched none: {ok_none:.2f} MB {verdict} the target of {TARGET_MB} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
