"""The participant sheet: which participants the workflow processes and where their DICOM is.

The sheet is a tab-separated file with one row per participant and (at least) the
columns ``participant_id``, ``dicom`` and ``release``:

- ``participant_id`` becomes a path component (``results/participants/{participant}/``),
  so it must match :data:`PARTICIPANT_ID_PATTERN`: no separators, no ``..``, no spaces.
- ``dicom`` is the participant's DICOM folder or ``.zip``, relative to the sheet's own
  folder or absolute.
- ``release`` names the data release the participant arrived in; shards are formed within
  a release (see :mod:`myoflow.core.shards`), and it is part of shard names, so it follows
  :data:`RELEASE_PATTERN`.

Further columns (age, sex, site...) are kept and ignored here. The same rules are written
as a JSON schema in ``config/schemas/participants.schema.yaml`` for users; the checks
below are what the workflow and the command line apply, with messages naming the line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from myoflow.core.errors import MyoflowError

PARTICIPANT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
PARTICIPANT_WILDCARD = r"[A-Za-z0-9][A-Za-z0-9_-]*"
"""Wildcard constraint for ``{participant}`` (Snakemake constraints cannot hold braces)."""
RELEASE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
REQUIRED_COLUMNS = ("participant_id", "dicom", "release")


class SheetError(MyoflowError, ValueError):
    """The participant sheet is unreadable or one of its rows is invalid."""


def load_sheet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a participant sheet with every cell as text (ids like ``0042`` stay intact).

    Empty cells become empty strings. The sheet is read but not validated; call
    :func:`validate_sheet` next.

    Raises:
        SheetError: the file is missing or unreadable, or lacks a required column.
    """
    path = Path(path)
    try:
        sheet = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except FileNotFoundError as err:
        raise SheetError(f"participant sheet not found: {path}") from err
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise SheetError(f"cannot read participant sheet {path}: {err}") from err
    except pd.errors.EmptyDataError as err:
        raise SheetError(f"participant sheet {path} is empty") from err
    missing = [column for column in REQUIRED_COLUMNS if column not in sheet.columns]
    if missing:
        raise SheetError(
            f"participant sheet {path} lacks column(s) {', '.join(missing)} "
            f"(has: {', '.join(map(str, sheet.columns))})"
        )
    return sheet.fillna("")


def validate_sheet(sheet: pd.DataFrame, source: str = "participant sheet") -> None:
    """Check every row of a loaded sheet; raise on the first invalid one.

    Rows are named by data row (1 = first participant) and by line in the file
    (the header is line 1), so ``data row 2 (line 3)`` is the second participant.

    Raises:
        SheetError: a required column is missing, the sheet has no rows, a
            ``participant_id`` is invalid or repeated, or a ``dicom`` or ``release``
            cell is empty or (for release) not a valid name.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in sheet.columns]
    if missing:
        raise SheetError(f"{source} lacks column(s) {', '.join(missing)}")
    if sheet.empty:
        raise SheetError(f"{source} has no participants")
    first_row_of: dict[str, int] = {}
    for row, record in enumerate(sheet[list(REQUIRED_COLUMNS)].itertuples(index=False), 1):
        where = f"{source}, data row {row} (line {row + 1})"
        participant_id, dicom, release = (str(value) for value in record)
        if not re.fullmatch(PARTICIPANT_ID_PATTERN, participant_id):
            raise SheetError(
                f"{where}: participant_id {participant_id!r} is not valid; ids must be 1-64 "
                "letters, digits, '_' or '-', starting with a letter or digit"
            )
        if participant_id in first_row_of:
            raise SheetError(
                f"{where}: participant_id {participant_id!r} repeats data row "
                f"{first_row_of[participant_id]}"
            )
        first_row_of[participant_id] = row
        if not dicom.strip():
            raise SheetError(f"{where}: participant {participant_id!r} has an empty dicom path")
        if not release.strip():
            raise SheetError(f"{where}: participant {participant_id!r} has an empty release")
        if not re.fullmatch(RELEASE_PATTERN, release):
            raise SheetError(
                f"{where}: release {release!r} of participant {participant_id!r} is not valid; "
                "releases must be 1-32 letters, digits, '_', '.' or '-', starting with a "
                "letter or digit"
            )


def resolve_dicom_path(sheet_path: str | os.PathLike[str], value: str) -> Path:
    """Return the DICOM folder or zip named by a sheet's ``dicom`` cell.

    Relative values are relative to the folder holding the sheet (so a sheet and its data
    can move together); absolute values are returned unchanged. Nothing is checked on disk.
    """
    dicom = Path(value.strip())
    if dicom.is_absolute():
        return dicom
    return Path(sheet_path).parent / dicom
