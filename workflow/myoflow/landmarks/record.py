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
SOURCES = ("detected", "supplied")
"""Where a participant's landmarks come from: found in its images, or the user's table."""
EXCLUSION_REASONS = {
    "landmarks_not_found": "no femoral head, or no pair of heads, found",
    "landmarks_implausible": "the femoral heads found are not a plausible pair of hips",
    "landmarks_low_confidence": "the hips found are less certain than config "
    "landmarks.min_confidence asks",
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
    """Left and right hip joint centres in LPS mm, how certain they are and where from.

    ``confidence`` (0 to 1) is the smallest margin of the detection's evidence
    (:func:`myoflow.landmarks.hip_detection.confidence`): 0 where a head would no longer
    have been accepted, 1 for heads as clear as typical ones with no rival pair. Supplied
    landmarks (``source`` ``"supplied"``) have confidence 1 and no head radius (NaN).
    """

    left_lps_mm: np.ndarray
    right_lps_mm: np.ndarray
    confidence: float
    head_radius_mm: tuple[float, float]  # fitted marrow radius (left, right)
    source: str = "detected"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"landmark source {self.source!r} is not one of {SOURCES}")

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
    """Write ``landmarks.json``: the flat :meth:`HipLandmarks.record`, the source and the
    head radii (null when supplied)."""
    radii = [None if np.isnan(r) else float(r) for r in hips.head_radius_mm]
    write_json(
        path,
        {"participant_id": participant_id, "source": hips.source}
        | hips.record()
        | {"head_radius_left_mm": radii[0], "head_radius_right_mm": radii[1]},
    )


def read_landmarks(path: str | os.PathLike[str]) -> HipLandmarks:
    """Inverse of :func:`write_landmarks`.

    Raises:
        MyoflowError: the file is missing, not JSON or lacks a coordinate.
    """
    try:
        values = json.loads(Path(path).read_text())
        radii = [values[f"head_radius_{side}_mm"] for side in SIDES]
        return HipLandmarks(
            left_lps_mm=np.array([float(values[f"hip_left_{a}_mm"]) for a in "xyz"]),
            right_lps_mm=np.array([float(values[f"hip_right_{a}_mm"]) for a in "xyz"]),
            confidence=float(values["hip_confidence"]),
            head_radius_mm=tuple(np.nan if r is None else float(r) for r in radii),  # type: ignore[arg-type]
            source=values.get("source", "detected"),  # files written before sources existed
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MyoflowError(f"landmarks file {path} cannot be read: {err}") from err
