"""``myoflow convert-series``: one DICOM MR series in a folder -> NIfTI, one file per echo
and image type (magnitude, phase, real, imaginary; Dixon water, fat, in, opp)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from pydicom.dataset import Dataset

from myoflow.core.errors import MyoflowError
from myoflow.ingest.dicom import group_by_series, read_datasets, series_volumes
from myoflow.ingest.image_class import FIELD_MAP, MAGNITUDE
from myoflow.ingest.image_types import SubSeries, split_series

HELP = "convert one DICOM MR series (a folder) to NIfTI with dcm2niix's geometry"

_SUFFIXES = (".nii.gz", ".nii")


def _nifti_path(text: str) -> Path:
    if not text.endswith(_SUFFIXES):
        raise argparse.ArgumentTypeError(f"{text} must end in .nii.gz or .nii")
    return Path(text)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``convert-series`` subcommand."""
    parser = subparsers.add_parser(
        "convert-series",
        help=HELP,
        description=(
            "Convert the single-frame (or enhanced multi-frame) MR series in SERIES_DIR to "
            "NIfTI. Slices are sorted by position along the slice normal and the slice "
            "spacing is measured from their positions, so voxels sit where dcm2niix puts "
            "them; series with missing, duplicate or unevenly spaced slices are refused. "
            "Files that are not DICOM are ignored (noted on stderr). A series that "
            "interleaves echoes gives one file per echo: OUT_e1.nii.gz, OUT_e2.nii.gz, ... "
            "(numbered by EchoNumbers, as dcm2niix does). A series that mixes image types "
            "is split as dcm2niix splits it, by ImageType (and ComplexImageComponent): "
            "phase, real and imaginary images go to OUT_ph, OUT_real and OUT_imaginary, "
            "Dixon maps held in one series to OUT_water, OUT_fat, OUT_in and OUT_opp "
            "(after the echo: OUT_e2_ph)."
        ),
    )
    parser.add_argument("series_dir", type=Path, metavar="SERIES_DIR", help="folder of DICOM")
    parser.add_argument(
        "out", type=_nifti_path, metavar="OUT.nii.gz", help="output NIfTI (.nii.gz or .nii)"
    )
    parser.add_argument(
        "--series-uid",
        default=None,
        metavar="UID",
        help="SeriesInstanceUID to convert when SERIES_DIR holds several series",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "int16"),
        default="int16",
        help="int16 (default, as dcm2niix writes; scaled so the largest |value| is stored "
        "as 30000: error under 1e-4 of the maximum) or float32 (exact, twice the size)",
    )
    parser.set_defaults(func=run)


def echo_path(out: Path, echo: int) -> Path:
    """Return ``out`` with ``_e{echo}`` before the suffix: ``a.nii.gz`` -> ``a_e2.nii.gz``."""
    return _with_tag(out, f"_e{echo}")


PART_TAGS = {
    "phase": "_ph",
    "real": "_real",
    "imaginary": "_imaginary",
    FIELD_MAP: "_fieldmaphz",
    MAGNITUDE: "",
}
"""File name tag of each image-type class (dcm2niix's for phase, real, imaginary and a
field map in Hz);
a Dixon map ``water`` is tagged ``_water`` and so on."""


def part_path(out: Path, key: SubSeries, echo: int | None, several_parts: bool) -> Path:
    """Where one sub-series goes: ``out``, tagged with its echo and, when the series holds
    several image types, its type (``a.nii.gz`` -> ``a_e2_ph.nii.gz``), as dcm2niix names
    them."""
    tag = "" if echo is None else f"_e{echo}"
    if several_parts:
        tag += PART_TAGS.get(key.part, f"_{key.part}")
    return _with_tag(out, tag)


def _with_tag(out: Path, tag: str) -> Path:
    suffix = next(s for s in _SUFFIXES if out.name.endswith(s))
    return out.with_name(f"{out.name[: -len(suffix)]}{tag}{suffix}")


def _describe(uid: str, datasets: list[Dataset]) -> str:
    first = datasets[0]
    number = first.get("SeriesNumber", "?")
    description = first.get("SeriesDescription", "")
    uid = uid or "(no SeriesInstanceUID)"
    return f"  {uid}: series {number} {description!r}, {len(datasets)} files"


def _choose_series(
    series: dict[str, list[Dataset]], uid: str | None, folder: Path
) -> list[Dataset]:
    if not series:
        raise MyoflowError(f"no DICOM files in {folder}")
    listing = "\n".join(_describe(u, ds) for u, ds in series.items())
    if uid is not None:
        if uid not in series:
            raise MyoflowError(f"no series {uid} in {folder}; it holds:\n{listing}")
        return series[uid]
    if len(series) > 1:
        raise MyoflowError(
            f"{folder} holds {len(series)} series; choose one with --series-uid:\n{listing}"
        )
    return next(iter(series.values()))


def run(args: argparse.Namespace) -> int:
    """Convert the series and print one line per written file."""
    datasets = read_datasets(
        [args.series_dir],
        on_skip=lambda path, why: print(
            f"myoflow convert-series: note: ignored {path} ({why})", file=sys.stderr
        ),
    )
    chosen = _choose_series(group_by_series(datasets), args.series_uid, args.series_dir)
    parts = split_series(str(chosen[0].get("SeriesInstanceUID", "")), chosen)
    several_parts = len({key.part for key in parts}) > 1
    # Read every part before writing any, so a refused part leaves no files behind.
    converted = [(key, series_volumes(members, key.part)) for key, members in parts.items()]
    for key, volumes in converted:
        for volume in volumes:
            echo = key.echo if key.echo is not None else volume.echo
            volume = replace(volume, echo=echo)
            path = part_path(args.out, key, echo, several_parts)
            volume.to_nifti(path, dtype=args.dtype)
            shape = " x ".join(str(n) for n in volume.array.shape)
            spacing = " x ".join(f"{s:.4g}" for s in volume.spacing_mm)
            kind = "" if not several_parts else f" {key.part} images"
            print(f"myoflow convert-series:{kind} {shape} voxels of {spacing} mm -> {path}")
    return 0
