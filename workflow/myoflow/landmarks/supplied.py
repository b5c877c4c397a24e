"""User-supplied hip landmarks (config ``landmarks.supplied``): a table that replaces
detection for the participants it lists.

A tab-separated file with a header and one row per participant::

    participant_id  hip_left_x_mm  hip_left_y_mm  hip_left_z_mm
                    hip_right_x_mm  hip_right_y_mm  hip_right_z_mm

(one line, seven columns, in any order)

Positions are hip joint (femoral head) centres in LPS mm, DICOM patient coordinates
(+x patient left, +y posterior, +z superior), as ``landmarks.json`` and the synthetic
truth store them. Other columns (a note, who placed them) are allowed and ignored. Every
row must name a participant of the sheet once and give all six numbers; any other row
stops the run with an error naming the file, the line and what is wrong.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from myoflow.core.errors import MyoflowError
from myoflow.landmarks.record import SIDES, HipLandmarks

COORDINATE_COLUMNS = [f"hip_{side}_{axis}_mm" for side in SIDES for axis in "xyz"]
COLUMNS = ["participant_id", *COORDINATE_COLUMNS]
"""Required columns of the supplied-landmarks table."""


class SuppliedLandmarksError(MyoflowError):
    """The supplied-landmarks table cannot be used; the message names the file and row."""


def read_supplied_landmarks(
    path: str | os.PathLike[str], participant_ids: Iterable[str]
) -> dict[str, HipLandmarks]:
    """The supplied landmarks by participant (``source="supplied"``, confidence 1).

    Args:
        path: the table (see the module docstring).
        participant_ids: every participant of the sheet; a row naming another is an error.

    Raises:
        SuppliedLandmarksError: the file is missing or unreadable, lacks a column, or a row
            names an unknown or repeated participant, misses a side or holds a value that
            is not a finite number (the first such row is named).
    """
    known = set(participant_ids)
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise SuppliedLandmarksError(
                    f"supplied landmarks {path}: missing column(s) {', '.join(missing)};"
                    f" expected {' '.join(COLUMNS)} (tab-separated)"
                )
            rows = list(enumerate(reader, start=2))  # line 1 is the header
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SuppliedLandmarksError(f"supplied landmarks {path} cannot be read: {err}") from err
    found: dict[str, HipLandmarks] = {}
    for line, row in rows:
        found_row = _parse_row(row, f"supplied landmarks {path}, line {line}", known, found)
        found[found_row[0]] = found_row[1]
    return found


def _parse_row(
    row: dict[str, str | None], where: str, known: set[str], earlier: dict[str, HipLandmarks]
) -> tuple[str, HipLandmarks]:
    pid = (row.get("participant_id") or "").strip()
    if not pid:
        raise SuppliedLandmarksError(f"{where}: no participant_id")
    if pid not in known:
        raise SuppliedLandmarksError(f"{where}: participant {pid!r} is not in the sheet")
    if pid in earlier:
        raise SuppliedLandmarksError(f"{where}: participant {pid!r} is listed twice")
    values = {}
    for column in COORDINATE_COLUMNS:
        text = (row.get(column) or "").strip()
        if not text:
            side = column.split("_")[1]
            raise SuppliedLandmarksError(f"{where} ({pid}): the {side} hip has no {column}")
        try:
            values[column] = float(text)
        except ValueError:
            values[column] = math.nan
        if not math.isfinite(values[column]):
            raise SuppliedLandmarksError(f"{where} ({pid}): {column} {text!r} is not a number")
    point = {side: np.array([values[f"hip_{side}_{a}_mm"] for a in "xyz"]) for side in SIDES}
    hips = HipLandmarks(point["left"], point["right"], 1.0, (math.nan, math.nan), source="supplied")
    return pid, hips
