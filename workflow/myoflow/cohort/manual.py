"""Agreement of the workflow's masks with manual annotations of some participants.

The UK Biobank study annotated a stratified sample by hand and reported Dice and
Bland-Altman agreement of the CNN's volumes with those annotations. Here the manual masks
are label maps (NIfTI, with the label values of :data:`myoflow.core.labels.LABELS`, as
exported from MITK or 3D Slicer) listed in a sheet::

    participant_id  labels
    ukbb000017      manual/ukbb000017.nii.gz      (relative to the sheet's folder)

For each listed participant the manual map is put on the stitched grid of the
workflow's ``seg/labels.nii.gz`` (nearest neighbour; the same grid is used as is) and
both are scored by :func:`myoflow.measure.overlap.score_participant`, on the muscles the manual
map holds (an iliopsoas-only annotation scores psoas major, iliacus and iliopsoas).
Results are three tables: Dice per participant, structure and side; the manual volumes
as ``manual_vol_<structure>_<side>_ml`` and ``_total_ml`` columns (the names of the
automatic metrics, prefixed, so that the statistics pair them for Bland-Altman); and a
status per listed participant (``scored``, or ``skipped`` with the reason: not
segmented by the workflow, or a mask that cannot be read).
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from myoflow.core.errors import MyoflowError, ParticipantExcluded
from myoflow.core.io import read_labels
from myoflow.core.label_grid import voxel_geometry
from myoflow.core.labels import LABELS, MUSCLES
from myoflow.core.participant_files import ParticipantFiles
from myoflow.core.sheet import PARTICIPANT_ID_PATTERN
from myoflow.measure.overlap import labels_on_grid, score_participant

SHEET_COLUMNS = ("participant_id", "labels")
DICE_COLUMNS = ["participant_id", "structure", "side", "kind", "dice"]
STATUS_COLUMNS = ["participant_id", "status", "reason", "detail"]
MANUAL_PREFIX = "manual_"

SKIP_REASONS = {
    "not_segmented": "the workflow has no seg/labels.nii.gz for the participant (excluded "
    "before segmentation, or not in the participant sheet)",
    "segmentation_unreadable": "the workflow's seg/labels.nii.gz cannot be read",
    "manual_unreadable": "the manual label map cannot be read or holds no muscle label",
}
"""Why a listed participant is not scored: reason code -> what it means."""


class ManualSheetError(MyoflowError):
    """The sheet of manual masks cannot be read or has an invalid row."""


@dataclass(frozen=True)
class ManualAgreement:
    """Dice rows (DICE_COLUMNS), manual volumes (participant_id, manual_vol_*), status."""

    dice: pd.DataFrame
    volumes: pd.DataFrame
    status: pd.DataFrame


def read_mask_sheet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The sheet of manual masks, with ``labels`` resolved against the sheet's folder.

    Raises:
        ManualSheetError: the file cannot be read, lacks a column, or a row has an
            invalid or repeated participant id or an empty path (named by its line).
    """
    path = Path(path)
    try:
        sheet = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ManualSheetError(f"manual mask sheet {path} cannot be read: {err}") from err
    missing = [c for c in SHEET_COLUMNS if c not in sheet.columns]
    if missing:
        raise ManualSheetError(f"manual mask sheet {path} lacks column(s) {', '.join(missing)}")
    seen: set[str] = set()
    for line, (pid, labels) in enumerate(sheet[list(SHEET_COLUMNS)].itertuples(index=False), 2):
        where = f"manual mask sheet {path}, line {line}"
        if not re.fullmatch(PARTICIPANT_ID_PATTERN, pid):
            raise ManualSheetError(f"{where}: participant_id {pid!r} is not valid")
        if pid in seen:
            raise ManualSheetError(f"{where}: participant_id {pid!r} is listed twice")
        if not labels.strip():
            raise ManualSheetError(f"{where}: participant {pid!r} has an empty labels path")
        seen.add(pid)
    resolved = [str((path.parent / value).resolve()) for value in sheet["labels"]]
    return sheet[list(SHEET_COLUMNS)].assign(labels=resolved)


def annotated_muscles(label_map: np.ndarray) -> list[str]:
    """The muscles (either side) that a label map holds, in :data:`MUSCLES` order."""
    present = set(np.unique(label_map).tolist())
    return [m for m in MUSCLES if {LABELS[f"{m}_left"], LABELS[f"{m}_right"]} & present]


def score_against_manual(
    participant_id: str,
    automatic: np.ndarray,
    affine: np.ndarray,
    manual: np.ndarray,
    manual_affine: np.ndarray,
) -> tuple[list[dict], dict[str, float]]:
    """Dice rows and the manual volume record of one participant.

    ``automatic`` is the workflow's label map on the stitched grid (``affine``); ``manual``
    is put on that grid first. Only the muscles ``manual`` holds are scored.

    Raises:
        ParticipantExcluded: ``manual_unreadable`` when ``manual`` holds no muscle label.
    """
    muscles = annotated_muscles(manual)
    if not muscles:
        raise ParticipantExcluded("manual_unreadable", "the manual label map holds no muscle")
    on_grid = labels_on_grid(manual, manual_affine, automatic.shape, affine)
    dice_rows, volume_rows = score_participant(
        participant_id, automatic, on_grid, muscles, voxel_geometry(affine).voxel_volume_ml
    )
    record: dict[str, float] = {}
    for row in volume_rows:
        side_key = f"{MANUAL_PREFIX}vol_{row['structure']}_{row['side']}_ml"
        total_key = f"{MANUAL_PREFIX}vol_{row['structure']}_total_ml"
        record[side_key] = float(row["truth_ml"])
        record[total_key] = record.get(total_key, 0.0) + float(row["truth_ml"])
    return dice_rows, record


def _label_map(path: Path, reason: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    from nibabel.filebasedimages import ImageFileError

    try:
        data, affine = read_labels(path)
    except (OSError, EOFError, ValueError, zlib.error, ImageFileError) as err:
        raise ParticipantExcluded(reason, f"{what}: {err}".rstrip()) from err
    except MyoflowError as err:  # labels that are not integers
        raise ParticipantExcluded(reason, str(err)) from err
    if data.ndim != 3:
        raise ParticipantExcluded(reason, f"{what} has shape {data.shape}, not 3-D")
    return data, affine


def manual_agreement(
    sheet: pd.DataFrame,
    participants_dir: str | os.PathLike[str],
    log: Callable[[str], None] = print,
) -> ManualAgreement:
    """Score every participant of ``sheet`` (see :func:`read_mask_sheet`).

    A participant that cannot be scored gets a ``skipped`` status row with its reason
    (:data:`SKIP_REASONS`); it never stops the others.
    """
    dice_rows: list[dict] = []
    volume_rows: list[dict] = []
    status_rows: list[dict] = []
    for n, (pid, manual_path) in enumerate(sheet[list(SHEET_COLUMNS)].itertuples(index=False), 1):
        files = ParticipantFiles(Path(participants_dir) / pid)
        try:
            if not files.labels.is_file():
                raise ParticipantExcluded("not_segmented", f"no {files.labels}")
            automatic, affine = _label_map(
                files.labels, "segmentation_unreadable", "seg/labels.nii.gz"
            )
            manual, manual_affine = _label_map(
                Path(manual_path), "manual_unreadable", Path(manual_path).name
            )
            rows, record = score_against_manual(pid, automatic, affine, manual, manual_affine)
        except ParticipantExcluded as err:
            status_rows.append(
                {"participant_id": pid, "status": "skipped", "reason": err.reason}
                | {"detail": err.detail}
            )
            log(f"[{n}/{len(sheet)}] {pid}: skipped, {err.reason}: {err.detail}")
            continue
        dice_rows += rows
        volume_rows.append({"participant_id": pid} | record)
        status_rows.append({"participant_id": pid, "status": "scored", "reason": "", "detail": ""})
        mean = np.nanmean([r["dice"] for r in rows])
        log(f"[{n}/{len(sheet)}] {pid}: mean Dice {mean:.3f} over {len(rows)} structure sides")
    volumes = pd.DataFrame(volume_rows)
    if volumes.empty:
        volumes = pd.DataFrame(columns=["participant_id"])
    return ManualAgreement(
        pd.DataFrame(dice_rows, columns=DICE_COLUMNS),
        volumes,
        pd.DataFrame(status_rows, columns=STATUS_COLUMNS),
    )
