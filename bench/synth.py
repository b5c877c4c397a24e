"""Benchmark ``myoflow synth``: seconds per participant at full and small size, truth-only scale.

Run: ``.venv/bin/python bench/synth.py [--full 2] [--small 4] [--truth-only 100000]``

Every figure is measured in this run, one core (``--workers 1``). Beside each generator
time it prints a baseline measured in the same run: writing the same participant's
voxels (4 channels of every station) as raw ``.npy`` files, the I/O floor that no DICOM
writer can beat. Targets (issue 2): full under 20 s per participant, small under 2 s,
100,000 truth-only participants under 60 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from myoflow.synth.cohort import CohortSpec, generate_cohort
from myoflow.synth.geometry import protocol
from myoflow.synth.signal import ArtefactRates

TARGET_S = {"full": 20.0, "small": 2.0}


def raw_write_seconds(size: str, repeats: int = 2) -> float:
    """Seconds to write one participant's station voxels as .npy (the I/O floor)."""
    proto = protocol("ukbb", size)
    volume = np.random.default_rng(0).random(proto.grid.shape).astype(np.float32) * 1000
    best = np.inf
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            for station in proto.stations:
                slab = np.ascontiguousarray(volume[:, :, station.start : station.stop]).astype(
                    np.uint16
                )
                for channel in range(4):
                    np.save(Path(tmp) / f"{station.number}_{channel}.npy", slab)
            best = min(best, time.perf_counter() - started)
    return best


def seconds_per_participant(size: str, participants: int, protocol_name: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        # Warm the imports and atlas cache so the figure is the steady per-participant cost.
        generate_cohort(
            CohortSpec(
                out=Path(tmp) / "warm",
                participants=1,
                protocol=protocol_name,
                seed=999,
                size="small",
            )
        )
        started = time.perf_counter()
        generate_cohort(
            CohortSpec(
                out=Path(tmp) / "run",
                participants=participants,
                protocol=protocol_name,
                seed=2,
                size=size,
                rates=ArtefactRates(),
            )
        )
        return (time.perf_counter() - started) / participants


def truth_only_seconds(participants: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        generate_cohort(
            CohortSpec(
                out=Path(tmp), participants=participants, protocol="ukbb", seed=3, truth_only=True
            )
        )
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", type=int, default=2, help="full-size participants to time")
    parser.add_argument("--small", type=int, default=4, help="small participants to time")
    parser.add_argument("--truth-only", type=int, default=100_000, help="truth-only cohort size")
    parser.add_argument("--protocol", default="ukbb", choices=("ukbb", "nako"))
    args = parser.parse_args()
    print(f"myoflow synth benchmark ({args.protocol}, one core)")
    print(
        f"{'size':<6} {'s/participant':>14} {'target s':>9} {'/target':>8}"
        f" {'raw .npy s':>11} {'/raw':>7}"
    )
    for size, n in (("small", args.small), ("full", args.full)):
        if n <= 0:
            continue
        seconds = seconds_per_participant(size, n, args.protocol)
        raw = raw_write_seconds(size)
        print(
            f"{size:<6} {seconds:>14.2f} {TARGET_S[size]:>9.1f} {seconds / TARGET_S[size]:>8.2f}"
            f" {raw:>11.3f} {seconds / raw:>7.1f}"
        )
    if args.truth_only > 0:
        seconds = truth_only_seconds(args.truth_only)
        print(
            f"truth-only: {args.truth_only} participants in {seconds:.1f} s"
            f" (target 60 s, ratio {seconds / 60:.2f})"
        )


if __name__ == "__main__":
    main()
