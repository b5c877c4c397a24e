"""``myoflow convert-series``: one DICOM MR series in a folder -> NIfTI, one file per echo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydicom.dataset import Dataset

from myoflow.core.errors import MyoflowError
from myoflow.ingest.dicom import group_by_series, read_datasets, series_volumes

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
            "(numbered by EchoNumbers, as dcm2niix does)."
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
    suffix = next(s for s in _SUFFIXES if out.name.endswith(s))
    return out.with_name(f"{out.name[: -len(suffix)]}_e{echo}{suffix}")


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
    volumes = series_volumes(chosen)
    for volume in volumes:
        path = args.out if volume.echo is None else echo_path(args.out, volume.echo)
        volume.to_nifti(path, dtype=args.dtype)
        shape = " x ".join(str(n) for n in volume.array.shape)
        spacing = " x ".join(f"{s:.4g}" for s in volume.spacing_mm)
        print(f"myoflow convert-series: {shape} voxels of {spacing} mm -> {path}")
    return 0
