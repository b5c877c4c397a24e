"""The analysis runner: each analysis's tables, or why it did not run, and its warnings.

:class:`Runner` calls one analysis at a time (a function returning named tables). An
analysis the data cannot support (:class:`~myoflow.cohort.stats.StatsInputError`) is
recorded as ``skipped`` with the reason; the others still run. Every table passes
:func:`~myoflow.cohort.estimable.finite_table` on its way in, so no ``inf`` or unexplained
empty cell reaches a TSV, and the warnings each analysis raised are kept in the
``warnings`` column of the ``analyses`` table, which the report shows beside its tables.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from myoflow.cohort.estimable import NOTE, AnalysisWarning, finite_table
from myoflow.cohort.stats._common import StatsInputError


@dataclass(frozen=True)
class AnalysisResult:
    """Named tables and the record of which analyses ran.

    Attributes:
        tables: table name -> tidy DataFrame (see :mod:`myoflow.cohort.analysis`).
        analyses: analysis, status (``ok``/``skipped``), tables, message, warnings.
    """

    tables: dict[str, pd.DataFrame]
    analyses: pd.DataFrame


class Runner:
    """Runs analyses, keeping their tables and recording the ones the data cannot support.

    Warnings raised while an analysis runs (a rank-deficient design, a divide by zero)
    are kept with it in the ``warnings`` column of the ``analyses`` table, so the report
    shows them beside its tables; infinite numbers never reach a table
    (:func:`~myoflow.cohort.estimable.finite_table`).
    """

    def __init__(self) -> None:
        self.tables: dict[str, pd.DataFrame] = {}
        self.records: list[dict[str, str]] = []

    def __call__(
        self, name: str, func: Callable[[], Mapping[str, pd.DataFrame]], note: str = ""
    ) -> None:
        with warnings.catch_warnings(record=True) as caught, np.errstate(all="warn"):
            warnings.simplefilter("always")
            try:
                produced = dict(func())
            except (StatsInputError, np.linalg.LinAlgError) as err:
                produced, failure = {}, str(err)
            else:
                failure = None
        said = "; ".join(dict.fromkeys(_warning_text(w) for w in caught))
        for text in dict.fromkeys(_warning_text(w) for w in caught):
            print(f"warning, {name}: {text}")  # the log keeps them too
        if failure is not None:
            self._record(name, "skipped", "", failure, said)
            return
        for table, frame in produced.items():
            frame = finite_table(frame) if table not in UNNOTED_TABLES else frame
            if table in self.tables:  # several analyses feed one table (regressions)
                frame = pd.concat([self.tables[table], frame], ignore_index=True)
            self.tables[table] = frame
        notes = note or _notes_of(produced)
        self._record(name, "ok", ",".join(produced), notes, said)

    def _record(self, name: str, status: str, tables: str, message: str, said: str) -> None:
        self.records.append(
            {
                "analysis": name,
                "status": status,
                "tables": tables,
                "message": message,
                "warnings": said,
            }
        )

    def skip(self, name: str, message: str) -> None:
        """Record ``name`` as not run, and why (e.g. :data:`NEEDS_PHENOTYPES`)."""
        self._record(name, "skipped", "", message, "")

    def skipped(self) -> dict[str, str]:
        """Analysis -> why it did not run, for those recorded as skipped so far."""
        return {r["analysis"]: r["message"] for r in self.records if r["status"] == "skipped"}

    def result(self) -> AnalysisResult:
        """The tables so far, with the record of the analyses as table ``analyses``."""
        columns = ["analysis", "status", "tables", "message", "warnings"]
        analyses = pd.DataFrame(self.records, columns=columns)
        return AnalysisResult(tables=self.tables | {"analyses": analyses}, analyses=analyses)

    def skip_all(self, message: str) -> None:
        """Record that no analysis beyond the flow could run, and why."""
        self._record("all", "skipped", "", message, "")


UNNOTED_TABLES = frozenset(
    {
        "table1_display",
        "table2_display",
        "flow",
        "exclusion_counts",
        "exclusion_list",
        "papers",
        "synthetic_cohort",
    }
)
"""Tables of text or counts, which have no statistics to note."""


def _warning_text(item: warnings.WarningMessage) -> str:
    if issubclass(item.category, AnalysisWarning):
        return str(item.message)
    return f"{item.category.__name__}: {str(item.message).splitlines()[0]}"


def _notes_of(produced: Mapping[str, pd.DataFrame]) -> str:
    """ "some groups not estimable" when a produced table holds notes, else ""."""
    for frame in produced.values():
        if NOTE in frame.columns and (frame[NOTE].fillna("").astype(str) != "").any():
            return "some groups or cells not estimable (see the note column)"
    return ""
