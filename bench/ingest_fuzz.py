"""Fuzz the ingestion: deliveries perturbed from synthetic ones, through inventory and conversion.

Each delivery is a copy of a small synthetic participant (``myoflow synth --size small``,
UK Biobank 6 stations or NAKO 4 positions) with one to three perturbations drawn by a
seeded generator:

=====================  =====================================================  ==========
perturbation           what it does                                           valid
=====================  =====================================================  ==========
``shuffled_names``     every file renamed at random, all in one folder        yes
``shuffled_instances`` InstanceNumber permuted within each series             yes
``feet_first``         InstanceNumber counted from the feet                   yes
``position_noise``     +-1e-6 mm of noise on every ImagePositionPatient       yes
``rescale``            a per-series RescaleSlope (stored values scaled back)  yes
``philips_naming``     Philips mDIXON descriptions and ImageType              yes
``ge_naming``          GE LAVA-Flex descriptions and ImageType                yes
``one_series``         each station's four channels in one series             yes
``missing_optional``   optional tags removed (SliceLocation, BodyPart, ...)   yes
``enhanced``           each series packed into one enhanced multi-frame file  yes
                       (frames in random order; after ``one_series``, the
                       four channels' frames in one file, told apart by
                       FrameType, under the description they share)
``station_spacing``    one station re-spaced to 3, 4.5 or 6 mm slices,        if the
                       its centre kept (pixels unchanged)                     stations
                                                                              still touch
=====================  =====================================================  ==========

Deliveries go through :func:`myoflow.ingest.inventory.inventory_shard` and
:func:`myoflow.ingest.convert.convert_shard` in shards of ``--shard-size`` (a shard job
fails if either raises). Printed: deliveries, converted, excluded by reason, crashes
(``internal_error`` exclusions), failed shard jobs, and the valid deliveries that were not
converted, with their perturbations and reasons. Base participants and deliveries live
under ``--work`` (default ``data/fuzz``; deliveries are made anew unless ``--reuse``).

With the default settings a delivery renamed to Philips or GE naming matches no protocol
and is excluded as ``unknown_protocol``: nothing would check its station count.
``--site-protocols`` recognises the protocols by ProtocolName too, as a site with such
exports would configure them.

Run: ``.venv/bin/python bench/ingest_fuzz.py --deliveries 300`` (about 40 minutes on 2
cores), then ``... --reuse --site-protocols`` on the same deliveries.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from myoflow.core.shard_runner import INTERNAL_ERROR
from myoflow.ingest.convert import convert_shard
from myoflow.ingest.inventory import inventory_shard
from myoflow.ingest.series_rules import DEFAULT_PROTOCOLS, ProtocolRule
from myoflow.ingest.settings import IngestSettings
from myoflow.synth.cohort import CohortSpec, generate_cohort
from myoflow.synth.enhanced import pack_enhanced
from myoflow.synth.signal import ArtefactRates

BASES = {"ukbb": 3, "nako": 2}
"""Base participants per protocol (small size, no artefacts)."""

# Vendor naming of each channel: (SeriesDescription, ImageType) as the issue found them.
PHILIPS = {
    "water": ("mDIXON W", ["DERIVED", "PRIMARY", "W", "W", "DERIVED"]),
    "fat": ("mDIXON F", ["DERIVED", "PRIMARY", "F", "F", "DERIVED"]),
    "in": ("mDIXON IP", ["DERIVED", "PRIMARY", "IP", "IP", "DERIVED"]),
    "opp": ("mDIXON OP", ["DERIVED", "PRIMARY", "OP", "OP", "DERIVED"]),
}
GE = {
    "water": ("WATER: AX LAVA-FLEX", ["DERIVED", "PRIMARY", "DIXON", "WATER"]),
    "fat": ("FAT: AX LAVA-FLEX", ["DERIVED", "PRIMARY", "DIXON", "FAT"]),
    "in": ("InPhase: AX LAVA-FLEX", ["ORIGINAL", "PRIMARY", "DIXON", "IN_PHASE"]),
    "opp": ("OutPhase: AX LAVA-FLEX", ["ORIGINAL", "PRIMARY", "DIXON", "OUT_PHASE"]),
}
CHANNEL_OF_TYPE = {"WATER": "water", "FAT": "fat", "IN_PHASE": "in", "OPPOSED_PHASE": "opp"}
SITE_SETTINGS = IngestSettings(
    protocols=(
        *DEFAULT_PROTOCOLS,
        ProtocolRule(name="ukbb_site", protocol_name="^Dixon_(BH_17s|noBH)$", stations=6),
        ProtocolRule(name="nako_site", protocol_name="^T1_VIBE_DIXON_tra$", stations=4),
    )
)
"""Settings a site whose exports use other vendors' series naming would give: protocols
recognised by ProtocolName (which renaming leaves alone), with their station counts.
Without them a renamed delivery matches no protocol and is excluded as unknown_protocol,
as it should be: nothing would check its station count."""
OPTIONAL_TAGS = ("SliceLocation", "BodyPartExamined", "AcquisitionTime", "SpacingBetweenSlices")


def base_participants(work: Path) -> list[Path]:
    """The synthetic participants every delivery starts from (made once)."""
    folders = []
    for protocol, count in BASES.items():
        out = work / "base" / protocol
        if not (out / "truth.tsv").is_file():
            shutil.rmtree(out, ignore_errors=True)
            spec = CohortSpec(
                out=out,
                participants=count,
                protocol=protocol,
                seed=7001,
                size="small",
                rates=ArtefactRates.none(),
            )
            generate_cohort(spec)
        folders += sorted(p for p in (out / "dicom").iterdir() if p.is_dir())
    return folders


def slices(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm"))


def rewrite(folder: Path, change: Callable[[pydicom.Dataset, Path], None]) -> None:
    """Apply ``change`` to every file of a delivery, in place."""
    for path in slices(folder):
        dataset = pydicom.dcmread(path)
        change(dataset, path)
        dataset.save_as(path, enforce_file_format=True)


def channel_of(dataset: pydicom.Dataset) -> str:
    return CHANNEL_OF_TYPE[list(dataset.ImageType)[-1]]


def ds_text(value: float) -> str:
    """A DS value of at most 16 characters."""
    for digits in range(12, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(value)


def by_series(folder: Path) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = collections.defaultdict(list)
    for path in slices(folder):
        uid = pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID
        groups[uid].append(path)
    return groups


def shuffled_names(folder: Path, rng: np.random.Generator) -> None:
    files = slices(folder)
    names = rng.permutation(len(files))
    staging = folder / "_staging"
    staging.mkdir()
    for path, number in zip(files, names, strict=True):
        path.rename(staging / f"IM{number:06x}")
    for sub in [p for p in folder.iterdir() if p.is_dir() and p != staging]:
        shutil.rmtree(sub)
    for path in staging.iterdir():
        path.rename(folder / f"{path.name}.dcm")
    staging.rmdir()


def shuffled_instances(folder: Path, rng: np.random.Generator) -> None:
    for paths in by_series(folder).values():
        numbers = rng.permutation(len(paths)) + 1
        for path, number in zip(paths, numbers, strict=True):
            dataset = pydicom.dcmread(path)
            dataset.InstanceNumber = int(number)
            dataset.save_as(path, enforce_file_format=True)


def feet_first(folder: Path, rng: np.random.Generator) -> None:
    for paths in by_series(folder).values():
        datasets = [(pydicom.dcmread(p), p) for p in paths]
        datasets.sort(key=lambda item: float(item[0].ImagePositionPatient[2]))
        for number, (dataset, path) in enumerate(datasets, start=1):  # lowest z first
            dataset.InstanceNumber = number
            dataset.save_as(path, enforce_file_format=True)


def position_noise(folder: Path, rng: np.random.Generator) -> None:
    def change(dataset: pydicom.Dataset, path: Path) -> None:
        noisy = [float(v) + rng.uniform(-1e-6, 1e-6) for v in dataset.ImagePositionPatient]
        dataset.ImagePositionPatient = [ds_text(v) for v in noisy]

    rewrite(folder, change)


def rescale(folder: Path, rng: np.random.Generator) -> None:
    for paths in by_series(folder).values():
        factor = float(rng.choice([0.5, 2.0, 3.0, 4.0]))
        for path in paths:
            dataset = pydicom.dcmread(path)
            stored = dataset.pixel_array.astype(np.float64)
            slope = float(getattr(dataset, "RescaleSlope", 1.0))
            scaled = np.rint(stored / factor).clip(0, np.iinfo(np.uint16).max)
            dataset.PixelData = scaled.astype(dataset.pixel_array.dtype).tobytes()
            dataset.RescaleSlope = ds_text(slope * factor)
            dataset.save_as(path, enforce_file_format=True)


def vendor_naming(names: dict[str, tuple[str, list[str]]], manufacturer: str):
    def perturb(folder: Path, rng: np.random.Generator) -> None:
        def change(dataset: pydicom.Dataset, path: Path) -> None:
            description, image_type = names[channel_of(dataset)]
            dataset.SeriesDescription = description
            dataset.ImageType = image_type
            dataset.Manufacturer = manufacturer

        rewrite(folder, change)

    return perturb


def one_series(folder: Path, rng: np.random.Generator) -> None:
    """Each station's four channel series share one SeriesInstanceUID and number."""
    stations: dict[str, str] = {}

    def change(dataset: pydicom.Dataset, path: Path) -> None:
        number = int(dataset.SeriesNumber)
        station = str((number - 1) // 4)  # the writer numbers series (station - 1) * 4 + c + 1
        uid = stations.setdefault(station, pydicom.uid.generate_uid())
        dataset.SeriesInstanceUID = uid
        dataset.SeriesNumber = int(station) + 1

    rewrite(folder, change)


def enhanced(folder: Path, rng: np.random.Generator) -> None:
    """Each series becomes one enhanced MR file, its frames in random order."""
    for uid, paths in by_series(folder).items():
        datasets = [pydicom.dcmread(p) for p in paths]
        order = [int(i) for i in rng.permutation(len(datasets))]
        frame_types = [list(datasets[i].ImageType) for i in order]
        mixed = len({tuple(t) for t in frame_types}) > 1
        packed = pack_enhanced(datasets, order=order, frame_types=frame_types if mixed else None)
        if mixed:  # one file has one SeriesDescription: what the channels' names share
            packed.SeriesDescription = os.path.commonprefix(
                [str(d.SeriesDescription) for d in datasets]
            )
        for path in paths:
            path.unlink()
        packed.save_as(paths[0].parent / f"{uid}.dcm", enforce_file_format=True)


def missing_optional(folder: Path, rng: np.random.Generator) -> None:
    chosen = [t for t in OPTIONAL_TAGS if rng.random() < 0.75] or [OPTIONAL_TAGS[0]]

    def change(dataset: pydicom.Dataset, path: Path) -> None:
        for keyword in chosen:
            if keyword in dataset:
                delattr(dataset, keyword)

    rewrite(folder, change)


def station_spacing(folder: Path, rng: np.random.Generator) -> bool:
    """Re-space one station's slices; return whether the stations still touch along z."""
    series = by_series(folder)
    headers = {uid: pydicom.dcmread(p[0], stop_before_pixels=True) for uid, p in series.items()}
    station_numbers = sorted({(int(h.SeriesNumber) - 1) // 4 for h in headers.values()})
    station = int(rng.choice(station_numbers))
    spacing = float(rng.choice([3.0, 4.5, 6.0]))
    ranges = {}
    for paths in series.values():
        datasets = [pydicom.dcmread(p) for p in paths]
        zs = [float(d.ImagePositionPatient[2]) for d in datasets]
        number = (int(datasets[0].SeriesNumber) - 1) // 4
        if number == station:
            centre, order = (min(zs) + max(zs)) / 2, np.argsort(zs)
            first = centre - spacing * (len(zs) - 1) / 2
            for rank, index in enumerate(order):
                dataset = datasets[index]
                position = [float(v) for v in dataset.ImagePositionPatient]
                position[2] = first + rank * spacing
                dataset.ImagePositionPatient = [ds_text(v) for v in position]
                dataset.SliceThickness = ds_text(spacing)
                if "SliceLocation" in dataset:
                    dataset.SliceLocation = ds_text(position[2])
                dataset.save_as(paths[index], enforce_file_format=True)
            zs = [first, first + spacing * (len(zs) - 1)]
        half = (spacing if number == station else float(datasets[0].SliceThickness)) / 2
        ranges[number] = (min(zs) - half, max(zs) + half)
    bounds = [ranges[n] for n in sorted(ranges, key=lambda n: ranges[n][0])]
    return all(
        low <= high_before + 1e-3
        for (_, high_before), (low, _) in zip(bounds, bounds[1:], strict=False)
    )


PERTURBATIONS: dict[str, Callable[[Path, np.random.Generator], object]] = {
    "shuffled_names": shuffled_names,
    "shuffled_instances": shuffled_instances,
    "feet_first": feet_first,
    "position_noise": position_noise,
    "rescale": rescale,
    "philips_naming": vendor_naming(PHILIPS, "Philips Medical Systems"),
    "ge_naming": vendor_naming(GE, "GE MEDICAL SYSTEMS"),
    "one_series": one_series,
    "missing_optional": missing_optional,
    "station_spacing": station_spacing,
    "enhanced": enhanced,
}
ORDER = [
    "station_spacing",  # needs the writer's series numbers, before one_series merges them
    "position_noise",
    "rescale",
    "feet_first",
    "shuffled_instances",
    "missing_optional",
    "philips_naming",  # needs the writer's ImageType, so one vendor at a time
    "ge_naming",
    "one_series",
    "enhanced",  # after the others that edit single-frame headers
    "shuffled_names",  # last: the others rewrite files in place
]
"""The order perturbations are applied in."""


def make_delivery(base: Path, out: Path, rng: np.random.Generator) -> tuple[list[str], bool]:
    """Copy ``base`` to ``out`` and perturb it; return the perturbations and validity."""
    shutil.copytree(base, out)
    count = int(rng.integers(1, 4))
    chosen = sorted(rng.choice(len(ORDER), size=count, replace=False))
    names = [ORDER[i] for i in chosen]
    if "philips_naming" in names and "ge_naming" in names:
        names.remove("ge_naming")
    valid = True
    for name in names:
        result = PERTURBATIONS[name](out, rng)
        if name == "station_spacing":
            valid = bool(result)
    return names, valid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shard-size", type=int, default=25)
    parser.add_argument("--work", type=Path, default=Path("data/fuzz"))
    parser.add_argument(
        "--site-protocols",
        action="store_true",
        help="recognise the protocols by ProtocolName too (SITE_SETTINGS), as a site with "
        "Philips or GE naming would configure them",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="ingest the deliveries of an earlier run of this seed again (its results.tsv) "
        "instead of making them anew",
    )
    args = parser.parse_args(argv)
    settings = SITE_SETTINGS if args.site_protocols else IngestSettings()
    started = time.perf_counter()
    bases = base_participants(args.work)
    runs = args.work / f"run-seed{args.seed}"
    if args.reuse:
        earlier = pd.read_csv(runs / "results.tsv", sep="\t", dtype={"participant_id": str})
        rows = earlier[["participant_id", "dicom_path", "base", "perturbations", "valid"]]
        rows = rows.head(args.deliveries).to_dict("records")
    else:
        shutil.rmtree(runs, ignore_errors=True)
        rng = np.random.default_rng(args.seed)
        rows = []
        for index in range(args.deliveries):
            base = bases[int(rng.integers(len(bases)))]
            pid = f"fuzz{index:04d}"
            names, valid = make_delivery(base, runs / "dicom" / pid, rng)
            rows.append({"participant_id": pid, "dicom_path": runs / "dicom" / pid,
                         "base": base.name, "perturbations": " ".join(names),
                         "valid": valid})  # fmt: skip
    made = time.perf_counter()
    deliveries = pd.DataFrame(rows)
    deliveries["shard"] = [f"f-{i // args.shard_size:04d}" for i in range(len(deliveries))]
    tables, failed_shards = [], []
    for shard, members in deliveries.groupby("shard", sort=True):
        try:
            inventory = inventory_shard(members, runs / "participants", log=lambda line: None)
            tables.append(
                convert_shard(
                    members, runs / "participants", inventory, settings, log=lambda _: None
                )
            )
        except Exception as err:  # noqa: BLE001 - a failed shard job is what we count
            failed_shards.append(f"{shard}: {type(err).__name__}: {err}")
    converted = pd.concat(tables) if tables else pd.DataFrame(columns=["participant_id"])
    result = deliveries.merge(converted, on=["participant_id", "shard"], how="left")
    result.to_csv(runs / "results.tsv", sep="\t", index=False)

    excluded = result[result["status"] == "excluded"]
    print(f"deliveries: {len(result)} from {len(bases)} base participants (seed {args.seed})")
    protocols = "by ProtocolName too (--site-protocols)" if args.site_protocols else "defaults"
    print(f"protocols: {protocols}")
    print(f"converted: {int((result['status'] == 'ok').sum())}")
    print(f"excluded: {len(excluded)}")
    for (stage, reason), count in excluded.groupby(["stage", "reason"]).size().items():
        print(f"  {stage} {reason}: {count}")
    crashes = int((excluded["reason"] == INTERNAL_ERROR).sum())
    print(f"crashes (internal_error): {crashes}")
    print(f"shard jobs failed: {len(failed_shards)} of {result['shard'].nunique()}")
    for line in failed_shards:
        print(f"  {line}")
    unaccounted = int(result["status"].isna().sum())
    print(f"without a row (lost): {unaccounted}")
    missed = result[result["valid"] & (result["status"] != "ok")]
    print(f"valid deliveries not converted: {len(missed)} of {int(result['valid'].sum())}")
    for row in missed.itertuples():
        print(f"  {row.participant_id} [{row.perturbations}]: {row.reason}")
    for name in ORDER:
        with_it = result[result["perturbations"].str.split().map(lambda n, k=name: k in n)]
        ok = int((with_it["status"] == "ok").sum())
        print(f"  {name:20s} {len(with_it):4d} deliveries, {ok:4d} converted")
    print(
        f"seconds: making deliveries {made - started:.0f}, "
        f"ingesting {time.perf_counter() - made:.0f} ({args.deliveries} deliveries)"
    )
    return 1 if crashes or failed_shards or unaccounted else 0


if __name__ == "__main__":
    sys.exit(main())
