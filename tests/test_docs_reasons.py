"""docs/reliability.md lists every reason a stage can exclude a participant for, with the
meaning the code gives it; a reason added to a stage without its line there fails here."""

from __future__ import annotations

from pathlib import Path

from myoflow.ingest import convert, inventory
from myoflow.ingest.dicom_errors import REASONS as SERIES_REASONS
from myoflow.landmarks import stage as landmarks
from myoflow.measure import stage as measure
from myoflow.segment import stage as segment

DOC = Path(__file__).parents[1] / "docs" / "reliability.md"
STAGES = {
    "inventory": inventory.EXCLUSION_REASONS,
    "convert": convert.EXCLUSION_REASONS,
    "landmarks": landmarks.EXCLUSION_REASONS,
    "segment": segment.EXCLUSION_REASONS,
    "measure": measure.EXCLUSION_REASONS,
    "convert (invalid_series)": SERIES_REASONS,
}


def expected_rows() -> list[str]:
    """The table rows the document must hold, in order: stage, reason, meaning."""
    return [
        f"| {stage} | `{reason}` | {meaning} |"
        for stage, reasons in STAGES.items()
        for reason, meaning in reasons.items()
    ]


def test_every_exclusion_reason_is_documented_with_its_meaning():
    section = DOC.read_text().split("## Every exclusion reason", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]  # no header
    assert rows == expected_rows(), "regenerate with: python tests/test_docs_reasons.py"


if __name__ == "__main__":
    print("\n".join(expected_rows()))
