"""Benchmark fat-water swap detection on planted swaps, stitched as the pipeline stitches.

Run: ``.venv/bin/python bench/swaps.py [--participants 200] [--size small] [--grid ukbb]``

Each synthetic UK Biobank participant is rendered (``--size``: ``small`` is the
4.46 x 4.46 x 6 mm grid the demo and tests use, ``full`` the 2.23 x 2.23 x 3 mm one) and
acquired once with its own coil bias and noise; its stations are resampled and blended
onto one grid by :func:`myoflow.ingest.stitch.stitch`, as ``myoflow convert`` does (``--grid
ukbb``: the 2.23 x 2.23 x 3 mm grid that ``ingest.grid.spacing_mm`` defaults to, so small
stations are upsampled twofold; ``--grid native``: the stations' own lattice, as
bench/qc_metrics.py stitches them). It is judged three ways by
:func:`myoflow.measure.swaps.detect_swaps`: clean, with a whole-station swap and with a partial
swap planted (drawn as ``myoflow synth`` draws them,
:func:`myoflow.synth.signal.sample_artefacts`). ``--baseline`` judges the same
acquisitions with another version of swaps.py, for a before / after table.

A clean acquisition is a false positive if any station is flagged ``swap`` or
``partial_swap``; a swapped one is found if any is (and "named exactly" if the flagged
stations are the swapped one). Issue 5 asks for sensitivity >= 0.95 and specificity
>= 0.99 on at least 200 participants. The clean acquisitions' largest hidden label edges are
summarised by their volume, so a change of settings can be judged by how far it clears them.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

from myoflow.ingest import stitch
from myoflow.measure import swaps
from myoflow.synth import phenotypes
from myoflow.synth.appearance_render import (
    acquisition_protocol,
    cohort_appearance,
    noise_sigma,
    noiseless_channels,
    station_images,
)
from myoflow.synth.geometry import protocol
from myoflow.synth.render import render_participant
from myoflow.synth.rng import participant_rng
from myoflow.synth.signal import (
    ArtefactRates,
    Artefacts,
    bias_field,
    sample_artefacts,
    station_channels,
    station_grid,
    swap_region,
)

ONLY_SWAP = ArtefactRates(swap=1, partial_swap=0, missing_station=0, missing_channel=0)
ONLY_PARTIAL = ArtefactRates(swap=0, partial_swap=1, missing_station=0, missing_channel=0)
GRIDS = {"ukbb": stitch.UKBB_SPACING_MM, "native": None}
MAX_LISTED = 12  # wrongly judged acquisitions the report lists, per detector


@functools.cache
def detectors(baseline: str | None) -> dict:
    """``detect_swaps`` by label: this checkout's, and a baseline's from a file if given
    (e.g. ``git show HEAD:workflow/myoflow/measure/swaps.py > /tmp/swaps_head.py``), so both judge
    the very same acquisitions."""
    found = {"current": swaps.detect_swaps}
    if baseline:
        spec = importlib.util.spec_from_file_location("baseline_swaps", baseline)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        found["baseline"] = module.detect_swaps
    return found


class Acquisitions:
    """One participant's noisy stations, stitched as ``myoflow convert`` stitches them, and
    the same acquisition with swaps planted.

    A swap only trades which reconstructed channel is called water (in-phase and opposed
    phase are untouched), so the swapped acquisitions trade the clean one's noisy water
    and fat in the planted station or region, as :func:`station_channels` trades them
    before its noise, which is drawn alike for both; only water and fat are re-stitched.
    """

    def __init__(self, proto, clean: list[dict[str, np.ndarray]], spacing_mm) -> None:
        self.proto = proto
        self.clean = clean
        self.affines = [station_grid(proto.grid, s).affine_lps() for s in proto.stations]
        shapes = [ch["water"].shape for ch in self.clean]
        self.grid = stitch.common_grid(shapes, self.affines, spacing_mm)
        self.phases = {name: self._stitched(self.clean, name) for name in ("in", "opp")}
        z_ranges = [
            stitch.z_range_mm(shape, a)[:2] for shape, a in zip(shapes, self.affines, strict=True)
        ]
        self.stations = swaps.station_slices(z_ranges, self.grid.affine_ras(), self.grid.shape[2])

    def _stitched(self, per_station: list[dict], name: str) -> np.ndarray:
        return stitch.stitch([ch[name] for ch in per_station], self.affines, self.grid)

    def channels(self, artefacts: Artefacts) -> list[np.ndarray]:
        """water, fat, in, opp on the stitched grid with ``artefacts``' swaps planted."""
        per_station = []
        for station, ch in zip(self.proto.stations, self.clean, strict=True):
            w, f = ch["water"], ch["fat"]
            if artefacts.swap_station == station.number:
                w, f = f, w
            if artefacts.partial_swap_station == station.number:
                region = swap_region(
                    w.shape, artefacts.partial_swap_centre, artefacts.partial_swap_radii
                )
                w, f = np.where(region, f, w), np.where(region, w, f)
            per_station.append({"water": w, "fat": f})
        water, fat = (self._stitched(per_station, name) for name in ("water", "fat"))
        return [water, fat, self.phases["in"], self.phases["opp"]]


def standard_stations(seed: int, index: int, row: dict, size: str, rng: np.random.Generator):
    """The standard appearance: one coil bias, the standard noise, every station alike."""
    proto = protocol("ukbb", size)
    phantom = render_participant(row, proto.grid, participant_rng(seed, index, "texture"))
    bias = bias_field(proto.grid.shape, rng)
    water, fat = phantom.water * bias, phantom.fat * bias
    return proto, [station_channels(water, fat, s, Artefacts(), rng)[0] for s in proto.stations]


def randomised_stations(seed: int, index: int, row: dict, size: str, rng: np.random.Generator):
    """A randomised appearance (docs/appearance.md), drawn as ``myoflow synth --appearance
    randomised`` draws participant ``index``'s: its own sequence and tissue signals, blur,
    whole-body bias, vendor gain, and per station a gain, bias field and noise level."""
    n_stations = len(protocol("ukbb", size).stations)
    appearance = cohort_appearance("randomised", seed, index, row, n_stations)
    proto = acquisition_protocol("ukbb", size, appearance)
    texture = participant_rng(seed, index, "texture")
    phantom = render_participant(row, proto.grid, texture, appearance)
    clean, gain = noiseless_channels(phantom, appearance, proto.grid, rng)
    sigma = noise_sigma(appearance, row, gain)
    stations = [
        station_images(clean, s, appearance, Artefacts(), sigma, rng, rng)[0]
        for s in proto.stations
    ]
    return proto, stations


APPEARANCES = {"standard": standard_stations, "randomised": randomised_stations}


def evaluate(job: tuple[int, int, str, str, str, str | None]) -> list[dict]:
    """Render one participant, acquire it clean / whole swap / partial swap, judge each
    acquisition with every detector."""
    seed, index, size, grid_name, appearance, baseline = job
    row = phenotypes.sample_cohort(seed, 1, "ukbb", first_index=index).to_dict("records")[0]
    rng = participant_rng(seed, index, "swap-bench")
    n = len(protocol("ukbb", size).stations)
    draws = [
        ("clean", Artefacts()),
        ("whole", sample_artefacts(rng, n, ONLY_SWAP)),
        ("partial", sample_artefacts(rng, n, ONLY_PARTIAL)),
    ]
    proto, clean = APPEARANCES[appearance](seed, index, row, size, rng)
    acquired = Acquisitions(proto, clean, GRIDS[grid_name])
    affine = acquired.grid.affine_ras()
    results = []
    for kind, artefacts in draws:
        channels = acquired.channels(artefacts)
        for label, detect in detectors(baseline).items():
            started = time.process_time()
            decisions = detect(*channels, acquired.stations, affine)
            seconds = time.process_time() - started
            results.append(judged(index, kind, artefacts, decisions, label, seconds))
    return results


def judged(index, kind, artefacts: Artefacts, decisions, label: str, seconds: float) -> dict:
    """One row of the table: what was planted, what was flagged."""
    flagged = [d for d in decisions if d.swapped]
    planted = artefacts.swapped_stations()
    return {
        "detector": label,
        "index": index,
        "kind": kind,
        "positive": bool(planted),
        "detected": bool(flagged),
        "named_exactly": {d.station for d in flagged} == planted,
        "undetermined": sum(d.status == "undetermined" for d in decisions),
        "artefacts": artefacts.summary(),
        # Largest hidden label edge outside the planted swap: what a threshold must clear.
        "largest_clean_edge_ml": max(
            (flagged_ml(d) for d in decisions if d.station not in planted), default=0.0
        ),
        "flags": " ".join(f"{d.station}:{d.status}:{flagged_ml(d):.1f}ml" for d in flagged),
        "detect_cpu_s": seconds,
    }


def flagged_ml(decision) -> float:
    """The volume a decision flags on: ``edge_ml``, or ``region_ml`` (the contradicting
    region) for a baseline swaps.py from before issue 18."""
    return getattr(decision, "edge_ml", getattr(decision, "region_ml", 0.0))


def report(table: pd.DataFrame, label: str) -> None:
    """Print sensitivity (whole, partial), specificity and the misses of one detector."""
    clean = table[table["kind"] == "clean"]
    print(f"fat-water swaps, {label} detect_swaps:")
    print(f"  {'acquisitions':14s} {'found':>7s} {'of':>4s} {'rate':>6s}  named exactly")
    for kind in ("whole", "partial"):
        rows = table[table["kind"] == kind]
        found = int(rows["detected"].sum())
        print(
            f"  {kind + ' swap':14s} {found:7d} {len(rows):4d} {found / len(rows):6.3f}"
            f"  {int(rows['named_exactly'].sum())}"
        )
    positives = table[table["positive"]]
    tp = int(positives["detected"].sum())
    fp = int(clean["detected"].sum())
    print(f"  sensitivity {tp / len(positives):.3f} ({tp}/{len(positives)})   target >= 0.95")
    print(
        f"  specificity {1 - fp / len(clean):.3f} ({len(clean) - fp}/{len(clean)} clean"
        f" participants without a flag)   target >= 0.99"
    )
    largest = clean["largest_clean_edge_ml"]
    print(
        f"  clean acquisitions, largest hidden label edge (baseline: contradicting region)"
        f" per participant: median"
        f" {largest.median():.1f} ml, 99th percentile {largest.quantile(0.99):.1f} ml,"
        f" max {largest.max():.1f} ml (min_edge_ml {swaps.SwapSettings().min_edge_ml})"
    )
    print(
        f"  undetermined stations: {int(table['undetermined'].sum())};"
        f" detect_swaps CPU s per acquisition: median {table['detect_cpu_s'].median():.2f}"
    )
    wrong = table[
        (table["positive"] & ~table["named_exactly"]) | (~table["positive"] & table["detected"])
    ]
    for _, r in wrong.head(MAX_LISTED).iterrows():
        print(
            f"    participant {r['index']}, {r['kind']} ({r['artefacts']}): {r['flags'] or 'none'}"
        )
    if len(wrong) > MAX_LISTED:
        print(f"    ... and {len(wrong) - MAX_LISTED} more (--save writes every acquisition)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=200)
    parser.add_argument("--size", choices=("small", "full"), default="small")
    parser.add_argument("--grid", choices=tuple(GRIDS), default="ukbb")
    parser.add_argument("--appearance", choices=tuple(APPEARANCES), default="standard")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--first", type=int, default=1, help="index of the first participant")
    parser.add_argument("--baseline", help="another swaps.py to judge the same acquisitions")
    parser.add_argument("--save", help="write the per-acquisition table to this TSV")
    args = parser.parse_args()

    started = time.perf_counter()
    jobs = [
        (args.seed, i, args.size, args.grid, args.appearance, args.baseline)
        for i in range(args.first, args.first + args.participants)
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        table = pd.DataFrame([r for rows in pool.map(evaluate, jobs) for r in rows])
    seconds = time.perf_counter() - started
    if args.save:
        table.to_csv(args.save, sep="\t", index=False)
    print(
        f"{args.participants} {args.size} participants, {args.appearance} appearance,"
        f" {args.grid} grid, seed {args.seed},"
        f" first {args.first} ({seconds:.0f} s wall)"
    )
    for label, rows in table.groupby("detector", sort=False):
        report(rows, label)


if __name__ == "__main__":
    main()
