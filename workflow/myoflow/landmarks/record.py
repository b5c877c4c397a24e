"""Hip landmarks: the record of a participant's hip joint centres and its file.

Positions are in LPS mm (DICOM patient coordinates, as the synthetic truth stores them;
RAS on request). Detection lives in :mod:`myoflow.landmarks.hip_detection`; a participant whose
hips cannot be found raises :class:`LandmarkError` (a
:class:`~myoflow.core.errors.ParticipantExcluded`) with a reason of
:data:`EXCLUSION_REASONS`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from myoflow.core.errors import MyoflowError, ParticipantExcluded
from myoflow.core.io import write_json

SIDES = ("left", "right")
EXCLUSION_REASONS = {
    "landmarks_not_found": "no femoral head, or no pair of heads, found",
    "landmarks_implausible": "the femoral heads found are not a plausible pair of hips",
}


class LandmarkError(ParticipantExcluded):
    """The hip landmarks of one participant could not be determined.

    ``reason`` is one of :data:`EXCLUSION_REASONS`; ``detail`` says what was measured.
    """

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in EXCLUSION_REASONS:
            raise ValueError(f"unknown landmark exclusion reason {reason!r}")
        super().__init__(reason, detail)


@dataclass(frozen=True)
class HipLandmarks:
    """Left and right hip joint centres in LPS mm, and how clearly the heads were seen.

    ``confidence`` is the smaller of the two heads' scores (0 to 1; see
    :func:`myoflow.landmarks.hip_detection.head_score` and ``MIN_HEAD_SCORE`` there for what heads
    and other balls of marrow score).
    """

    left_lps_mm: np.ndarray
    right_lps_mm: np.ndarray
    confidence: float
    head_radius_mm: tuple[float, float]  # fitted marrow radius (left, right)

    @property
    def inter_hip_mm(self) -> float:
        return float(np.linalg.norm(self.left_lps_mm - self.right_lps_mm))

    @property
    def left_ras_mm(self) -> np.ndarray:
        return self.left_lps_mm * np.array([-1.0, -1.0, 1.0])

    @property
    def right_ras_mm(self) -> np.ndarray:
        return self.right_lps_mm * np.array([-1.0, -1.0, 1.0])

    def record(self) -> dict[str, float]:
        """Flat values for a table or JSON (LPS mm, named like the synthetic truth)."""
        out: dict[str, float] = {}
        for side, point in (("left", self.left_lps_mm), ("right", self.right_lps_mm)):
            for axis, value in zip("xyz", point, strict=True):
                out[f"hip_{side}_{axis}_mm"] = float(value)
        out["hip_confidence"] = float(self.confidence)
        out["inter_hip_mm"] = self.inter_hip_mm
        return out


# ------------------------------------------------------------------------------- files


def write_landmarks(path: str | os.PathLike[str], participant_id: str, hips: HipLandmarks) -> None:
    """Write ``landmarks.json``: the flat :meth:`HipLandmarks.record` plus head radii."""
    write_json(
        path,
        {"participant_id": participant_id}
        | hips.record()
        | {
            "head_radius_left_mm": float(hips.head_radius_mm[0]),
            "head_radius_right_mm": float(hips.head_radius_mm[1]),
        },
    )


def read_landmarks(path: str | os.PathLike[str]) -> HipLandmarks:
    """Inverse of :func:`write_landmarks`.

    Raises:
        MyoflowError: the file is missing, not JSON or lacks a coordinate.
    """
    try:
        values = json.loads(Path(path).read_text())
        return HipLandmarks(
            left_lps_mm=np.array([float(values[f"hip_left_{a}_mm"]) for a in "xyz"]),
            right_lps_mm=np.array([float(values[f"hip_right_{a}_mm"]) for a in "xyz"]),
            confidence=float(values["hip_confidence"]),
            head_radius_mm=(
                float(values["head_radius_left_mm"]),
                float(values["head_radius_right_mm"]),
            ),
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MyoflowError(f"landmarks file {path} cannot be read: {err}") from err
