"""Reading and writing files at the edges of the package.

Every writer here is atomic: it writes a temporary file in the destination folder and
renames it into place, so a job killed mid-write (SIGKILL, full disk, wall-time limit)
never leaves a truncated NIfTI, TSV or JSON where a later stage would trust it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from isal import igzip, isal_zlib


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; outputs should get the permissions
# an ordinary open() would give them, so collaborators and later jobs can read them.
_FILE_MODE = 0o666 & ~_process_umask()


# ISA-L level 2 of 0-3: within 0.2 % of level 3's size at 80 % of its time.
NIFTI_GZIP_LEVEL = 2


class OutputError(OSError):
    """An output could not be written; the message names the path and the cause."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the final suffix (``.nii.gz``) so libraries that infer the
    format from the name still work.
    """
    final = Path(path)
    prefix, suffix = f".{final.name}.", "".join(final.suffixes)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        # A write killed (SIGKILL, node lost) before its rename leaves its temporary; the
        # rerun that rewrites the target removes it. Each target has one writer (one job
        # owns each file), so no other live write can own a temporary of this name.
        for stale in final.parent.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
            stale.unlink(missing_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=prefix, suffix=suffix)
        os.close(fd)
    except OSError as err:
        raise OutputError(f"cannot write {final}: {err.strerror or err}") from err
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, final)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {final}: {err.strerror or err}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (stable bytes for the same content)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def write_tsv(path: str | os.PathLike[str], table: pd.DataFrame) -> None:
    """Write a table as tab-separated text without the index, floats at full precision."""
    write_text(path, table.to_csv(sep="\t", index=False, lineterminator="\n"))


def read_tsv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a TSV written by :func:`write_tsv` (ids stay strings)."""
    return pd.read_csv(path, sep="\t", dtype={"participant_id": str})


def save_nifti(
    path: str | os.PathLike[str],
    array: np.ndarray,
    affine_ras: np.ndarray,
    *,
    descrip: str = "",
    scl_slope: float | None = None,
) -> None:
    """Save ``array`` with a RAS affine as NIfTI-1 atomically.

    The header carries only geometry, data type, scaling and ``descrip`` (which callers
    keep free of identifiers); both sform and qform are set so every reader agrees on
    geometry. With ``scl_slope``, readers see ``array * scl_slope`` (intercept 0); the
    slope is written as given, so nibabel adds no scaling of its own and zero stays zero.
    """
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine_ras, dtype=float))
    image.header.set_data_dtype(np.asarray(array).dtype)
    if scl_slope is not None:
        image.header.set_slope_inter(scl_slope, 0.0)
    image.header.set_sform(affine_ras, code=1)
    image.header.set_qform(affine_ras, code=1)
    image.header["descrip"] = descrip.encode("ascii")[:79]
    image.header.set_xyzt_units("mm", "sec")
    if not os.fspath(path).endswith(".gz"):
        with atomic_path(path) as tmp:
            nib.save(image, tmp)
        return
    # ISA-L's gzip writes a stream every gzip reader accepts, about 20 times faster than
    # zlib's default level at a size within 2 % (bench/convert.py); mtime 0 keeps the bytes
    # reproducible.
    write_bytes(path, igzip.compress(image.to_bytes(), compresslevel=NIFTI_GZIP_LEVEL, mtime=0))


GZIP_MAGIC = b"\x1f\x8b"
NIFTI2_HEADER_BYTES = 540


def load_nifti(path: str | os.PathLike[str]) -> Any:
    """Read a NIfTI-1 or NIfTI-2 file (gzipped or not) whole into memory; return the
    nibabel image, whose data then come from memory (``get_fdata``, ``dataobj``).

    What ``nibabel.load`` returns for these files, in about half the CPU time for a
    gzipped volume: ISA-L inflates the file in one call (about twice as fast as zlib's
    stream, which nibabel reads through in small chunks).

    Raises:
        OSError: the file cannot be read, or is not a gzip stream though it starts as one
            (``gzip.BadGzipFile``).
        EOFError: the gzip stream is truncated.
        nibabel.filebasedimages.ImageFileError: the gzip stream is corrupt, or the bytes
            are not a NIfTI image.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError
    from nibabel.wrapstruct import WrapStructError

    data = Path(path).read_bytes()
    try:
        if data[:2] == GZIP_MAGIC:
            data = igzip.decompress(data)
        sizeof_hdr = int.from_bytes(data[:4], "little")
        nifti2 = NIFTI2_HEADER_BYTES in (sizeof_hdr, int.from_bytes(data[:4], "big"))
        image_class = nib.Nifti2Image if nifti2 else nib.Nifti1Image
        return image_class.from_bytes(data)
    except (isal_zlib.error, HeaderDataError, WrapStructError) as err:
        raise ImageFileError(f"not a readable NIfTI image: {err}") from err


def read_labels(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a label NIfTI; return (integer array, 4x4 RAS affine).

    Raises:
        MetricsError: the stored values are not integers.
    """
    from myoflow.core.label_grid import MetricsError

    image = load_nifti(path)
    data = np.asanyarray(image.dataobj)
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise MetricsError(f"{path}: labels are not integers")
        data = rounded.astype(np.int32)
    return data, np.asarray(image.affine, dtype=float)
