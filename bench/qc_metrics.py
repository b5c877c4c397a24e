"""Benchmark QC and metrics: swap detection on planted swaps, metric accuracy, timing.

Run: ``.venv/bin/python bench/qc_metrics.py [--phantoms 200] [--small-swaps 1] [--full 2]``
(timing alone: ``--phantoms 0 --full 0``)

Each synthetic participant (small UK Biobank grid) is rendered once and acquired three
times with its own coil bias and noise: clean, with a whole-station fat-water swap and
with a partial swap, both drawn as ``myoflow synth`` draws them
(:func:`myoflow.synth.signal.sample_artefacts`), plus ``--small-swaps`` acquisitions with
smaller swapped regions (radii 3-20 % of the station box instead of 20-45 %) to chart
detection against the swapped tissue volume. Stations are stitched by averaging their
overlaps (they are slabs of one lattice). A participant counts as positive if any station
is swapped; issue 5 asks for sensitivity >= 0.95 and specificity >= 0.99 on at least 200.

Metric accuracy compares :func:`myoflow.measure.metrics.participant_metrics` on the noiseless
images and the true label mask with ``truth`` (small grid for every participant, full grid
for ``--full`` more); the psoas peak's z also with where the anatomy builds it (truth's
own z is its largest slice, which a flat peak moves by a slice or two). Seconds per
participant are measured in this run beside a baseline: reading the participant's five
NIfTI volumes (water, fat, in, opp, labels). Target (issue 5): metrics + QC + overlay
under 2 s per full-size participant on one core.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from myoflow.core import io
from myoflow.core.io import save_nifti
from myoflow.core.labels import LABELS
from myoflow.core.volume import int16_scaled
from myoflow.measure import metrics, overlay, qc, swaps
from myoflow.synth import phenotypes, psoas_profile
from myoflow.synth.geometry import protocol
from myoflow.synth.render import render_participant
from myoflow.synth.rng import participant_rng
from myoflow.synth.signal import (
    ArtefactRates,
    Artefacts,
    bias_field,
    sample_artefacts,
    stitched_channels,
    swap_region,
)

CHANNELS = ("water", "fat", "in", "opp")
ONLY_SWAP = ArtefactRates(swap=1, partial_swap=0, missing_station=0, missing_channel=0)
ONLY_PARTIAL = ArtefactRates(swap=0, partial_swap=1, missing_station=0, missing_channel=0)
ML_BINS = [0, 25, 50, 100, 200, 400, 800, np.inf]
PEAK_ABOVE_HIP_MM_AT_170CM = (
    psoas_profile.T_MAX * psoas_profile.PSOAS_LENGTH_MM_AT_170CM
    - psoas_profile.INSERTION_BELOW_HIP_MM_AT_170CM
)  # where the anatomy puts the psoas' largest cross-section


def swapped_tissue_ml(phantom, proto, artefacts: Artefacts) -> float:
    """Tissue volume (ml) inside a partial swap's region (0 for none, all for a whole swap)."""
    tissue = (phantom.water + phantom.fat) > 200.0
    number = artefacts.partial_swap_station or artefacts.swap_station
    if not number:
        return 0.0
    station = proto.stations[number - 1]
    slab = tissue[:, :, station.start : station.stop]
    if artefacts.partial_swap_station:
        region = swap_region(
            slab.shape, artefacts.partial_swap_centre, artefacts.partial_swap_radii
        )
        slab = slab & region
    return float(slab.sum()) * proto.grid.voxel_volume_ml


def metric_errors(record: dict, truth: dict, row: dict) -> dict[str, float]:
    """Relative volume and CSA errors, z errors (mm) and fat fraction errors vs truth."""
    full_truth = phenotypes.add_derived(
        pd.DataFrame([{**truth, "height_cm": row["height_cm"]}])
    ).iloc[0]
    errors = {}
    for name in (*LABELS, "iliopsoas_total", "gluteus_total"):
        key = f"vol_{name}_ml"
        errors[key] = record[key] / full_truth[key] - 1.0
    for side in ("left", "right"):
        key = f"psoas_max_csa_{side}_cm2"
        errors[key] = record[key] / truth[key] - 1.0
        key = f"psoas_max_csa_z_{side}_mm"
        errors[key] = record[key] - truth[key]
        built = truth[f"hip_{side}_z_mm"] + PEAK_ABOVE_HIP_MM_AT_170CM * row["height_cm"] / 170
        errors[f"psoas_max_csa_z_{side}_vs_built_peak_mm"] = record[key] - built
    for muscle in metrics.MUSCLES:
        errors[f"ff_{muscle}"] = record[f"ff_{muscle}"] - row[f"ff_{muscle}"]
    return errors


def evaluate_phantom(job: tuple[int, int, str, int]) -> tuple[list[dict], dict[str, float]]:
    """Render one participant, acquire it several ways, detect swaps; measure its metrics."""
    seed, index, size, small_swaps = job
    proto = protocol("ukbb", size)
    row = phenotypes.sample_cohort(seed, 1, "ukbb", first_index=index).to_dict("records")[0]
    phantom = render_participant(row, proto.grid, participant_rng(seed, index, "texture"))
    rng = participant_rng(seed, index, "qc-bench")
    n = len(proto.stations)
    draws = [
        ("clean", Artefacts()),
        ("whole", sample_artefacts(rng, n, ONLY_SWAP)),
        ("partial", sample_artefacts(rng, n, ONLY_PARTIAL)),
    ]
    for _ in range(small_swaps):
        draws.append(
            (
                "small partial",
                Artefacts(
                    partial_swap_station=int(rng.integers(1, n + 1)),
                    partial_swap_centre=tuple(float(v) for v in rng.uniform(0.25, 0.75, 3)),
                    partial_swap_radii=tuple(float(v) for v in rng.uniform(0.03, 0.2, 3)),
                ),
            )
        )
    stations = [(s.start, s.stop) for s in proto.stations]
    results = []
    for kind, artefacts in draws:
        bias = bias_field(proto.grid.shape, rng)
        ch = stitched_channels(
            phantom.water * bias, phantom.fat * bias, proto.stations, artefacts, rng
        )
        decisions = swaps.detect_swaps(
            ch["water"], ch["fat"], ch["in"], ch["opp"], stations, proto.grid.affine_ras()
        )
        found = {d.station for d in decisions if d.swapped}
        results.append(
            {
                "index": index,
                "kind": kind,
                "positive": bool(artefacts.swapped_stations()),
                "detected": bool(found),
                "right_station": found == artefacts.swapped_stations(),
                "undetermined": sum(d.status == "undetermined" for d in decisions),
                "swapped_ml": swapped_tissue_ml(phantom, proto, artefacts),
                "artefacts": artefacts.summary(),
                "decisions": " ".join(
                    f"{d.station}:{d.status}({d.reason})" for d in decisions if d.status != "ok"
                ),
            }
        )
    hips = {"left": phantom.frame.hip_left, "right": phantom.frame.hip_right}
    record = metrics.participant_metrics(
        phantom.labels,
        proto.grid.affine_ras(),
        phantom.water,
        phantom.fat,
        height_cm=row["height_cm"],
        hips_lps_mm=hips,
    )
    return results, metric_errors(record, phantom.truth, row)


def report_detection(table: pd.DataFrame) -> None:
    positives, negatives = table[table["positive"]], table[~table["positive"]]
    main = positives[positives["kind"] != "small partial"]
    tp, fp = int(main["detected"].sum()), int(negatives["detected"].sum())
    print(f"fat-water swaps, {table['index'].nunique()} rendered participants:")
    print(
        f"  sensitivity {tp / len(main):.3f} ({tp}/{len(main)} swapped acquisitions: whole"
        f" {int(main[main['kind'] == 'whole']['detected'].sum())}/"
        f"{int((main['kind'] == 'whole').sum())}, partial"
        f" {int(main[main['kind'] == 'partial']['detected'].sum())}/"
        f"{int((main['kind'] == 'partial').sum())})   target >= 0.95"
    )
    print(
        f"  specificity {1 - fp / len(negatives):.3f} ({len(negatives) - fp}/{len(negatives)}"
        f" clean acquisitions)   target >= 0.99"
    )
    print(
        f"  swapped station named exactly: {int(main['right_station'].sum())}/{len(main)};"
        f" undetermined stations: {int(table['undetermined'].sum())}"
    )
    wrong = table[
        (table["positive"] & ~table["right_station"]) | (~table["positive"] & table["detected"])
    ]
    for _, r in wrong[wrong["kind"] != "small partial"].iterrows():
        print(f"    participant {r['index']}, {r['kind']} ({r['artefacts']}): {r['decisions']}")
    partial = positives[positives["kind"] != "whole"]
    if partial.empty:
        return
    print("  partial swaps, detection by swapped tissue volume (generator's and small regions):")
    bins = pd.cut(partial["swapped_ml"], ML_BINS, right=False)
    for interval, group in partial.groupby(bins, observed=True):
        print(
            f"    {interval.left:>5.0f}-{interval.right:<5.0f} ml: {group['detected'].mean():.2f}"
            f" ({int(group['detected'].sum())}/{len(group)})"
        )


def report_errors(errors: pd.DataFrame, label: str) -> None:
    print(f"metric accuracy vs truth, {label} ({len(errors)} participants; true mask):")
    for column in errors.columns:
        values = errors[column].to_numpy()
        unit = "mm" if "_z_" in column else ("" if column.startswith("ff_") else "%")
        scale = 100.0 if unit == "%" else 1.0
        print(
            f"  {column:32s} mean {scale * values.mean():+8.3f}  max |.| "
            f"{scale * np.abs(values).max():7.3f} {unit}"
        )


def timing(seed: int, size: str, participants: int, repeats: int = 3) -> None:
    """Seconds per participant of metrics, QC and overlay, beside reading the volumes.

    Files are written and read as the stages do: channels as int16 with a slope
    (conversion), labels as int16 (segmentation), read back as float32 and integers
    (Fortran-ordered, as nibabel gives them). Each step runs ``repeats`` times per
    participant; wall and CPU (this process) seconds are medians over all runs, so other
    work on a shared machine shows as wall above CPU.
    """
    import nibabel as nib

    proto = protocol("ukbb", size)
    table = phenotypes.sample_cohort(seed, participants, "ukbb", first_index=900)
    steps = ("read 5 NIfTI volumes (baseline)", "metrics", "qc", "overlay")
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    stations = [(s.start, s.stop) for s in proto.stations]
    affine = proto.grid.affine_ras()

    def timed(name, work):
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        seconds[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        return result

    for index, row in enumerate(table.to_dict("records"), start=900):
        phantom = render_participant(row, proto.grid, participant_rng(seed, index, "texture"))
        rng = participant_rng(seed, index, "qc-bench")
        ch = stitched_channels(phantom.water, phantom.fat, proto.stations, Artefacts(), rng)
        with tempfile.TemporaryDirectory() as tmp:
            for name in CHANNELS:
                stored, slope = int16_scaled(np.asarray(ch[name], dtype=np.float32))
                save_nifti(Path(tmp) / f"{name}.nii.gz", stored, affine, scl_slope=slope)
            save_nifti(Path(tmp) / "labels.nii.gz", phantom.labels.astype(np.int16), affine)
            for _ in range(repeats):
                arrays = timed(
                    steps[0],
                    lambda tmp=tmp: {
                        **{
                            c: nib.load(Path(tmp) / f"{c}.nii.gz").get_fdata(dtype=np.float32)
                            for c in CHANNELS
                        },
                        "labels": io.read_labels(Path(tmp) / "labels.nii.gz")[0],
                    },
                )
                record = timed(
                    "metrics",
                    lambda a=arrays, h=row["height_cm"]: metrics.participant_metrics(
                        a["labels"], affine, a["water"], a["fat"], height_cm=h
                    ),
                )
                timed(
                    "qc",
                    lambda a=arrays, r=record: qc.participant_flags(
                        r, swaps.detect_swaps(*(a[c] for c in CHANNELS), stations, affine)
                    ),
                )
                size_bytes = timed(
                    "overlay",
                    lambda a=arrays, r=record, t=tmp, pid=row["participant_id"]: (
                        overlay.participant_overlay(
                            Path(t) / "overlay.png", a["water"], a["labels"], affine, pid, r
                        )
                    ),
                )
    print(
        f"seconds per participant, {size} grid {proto.grid.shape}, one process "
        f"(median of {participants} x {repeats}):"
    )
    for name, values in seconds.items():
        wall, cpu = np.median(np.array(values), axis=0)
        print(f"  {name:34s} {wall:6.3f} s wall  {cpu:6.3f} s CPU")
    total = np.sum([np.median(np.array(seconds[k]), axis=0) for k in steps[1:]], axis=0)
    print(
        f"  {'metrics + qc + overlay':34s} {total[0]:6.3f} s wall  {total[1]:6.3f} s CPU;"
        f" last overlay {size_bytes} bytes"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantoms", type=int, default=200)
    parser.add_argument("--small-swaps", type=int, default=1, help="small partial swaps each")
    parser.add_argument("--full", type=int, default=2, help="full-size participants for accuracy")
    parser.add_argument("--timing", type=int, default=3, help="participants timed per size")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per participant")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()

    if args.phantoms:
        started = time.perf_counter()
        jobs = [(args.seed, i, "small", args.small_swaps) for i in range(1, args.phantoms + 1)]
        with ProcessPoolExecutor(args.workers) as pool:
            outcomes = list(pool.map(evaluate_phantom, jobs))
        print(f"({time.perf_counter() - started:.0f} s for {args.phantoms} participants)")
        report_detection(pd.DataFrame([r for results, _ in outcomes for r in results]))
        report_errors(pd.DataFrame([e for _, e in outcomes]), "small grid")
    if args.full:
        full_jobs = [(args.seed, 5000 + i, "full", 0) for i in range(args.full)]
        with ProcessPoolExecutor(args.workers) as pool:
            full = list(pool.map(evaluate_phantom, full_jobs))
        report_errors(pd.DataFrame([e for _, e in full]), "full grid")
    for size in ("small", "full"):
        if args.timing:
            timing(args.seed, size, args.timing, args.repeats)


if __name__ == "__main__":
    main()
