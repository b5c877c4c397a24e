"""The files of the cohort analysis: its inputs, CSA profile text and its output tables.

:func:`read_analysis_cohort` and :func:`read_profiles` read what ``myoflow gather`` wrote
(``participants.tsv``, ``exclusions.tsv``, ``csa_profiles.tsv``); CSA profiles travel as
JSON list text per participant and are turned into numbered columns ``{name}_{i}``
(:func:`profile_matrix_from_text`, :func:`with_profile_columns`). :func:`write_tables`
and :func:`read_tables` write and read the named tables of
:func:`myoflow.cohort.analysis.run_analysis`, one ``{name}.tsv`` each.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from myoflow.cohort.stats import normative
from myoflow.cohort.stats._common import StatsInputError
from myoflow.cohort.stats.cohort import AnalysisCohort
from myoflow.core.io import write_tsv

ID = "participant_id"


# ---------------------------------------------------------------- CSA profiles


def profile_matrix_from_text(cells: pd.Series) -> np.ndarray:
    """JSON list text ("[1.5, 2.25, ...]") per participant as an (n x bins) array.

    Parsed in one pass over the joined text (the metrics table's format); plain Python
    strings throughout, as pandas' string methods cost several times more at 100,000
    rows. Empty or missing cells give NaN rows.

    Raises:
        StatsInputError: profiles of different lengths, or cells that are not numbers.
    """
    texts = ["" if not isinstance(v, str) else v.strip() for v in cells.tolist()]
    present = np.array([t != "" for t in texts], dtype=bool)
    if not present.any():
        return np.full((len(texts), 0), np.nan)
    body = [t.strip("[]") for t in texts if t]
    counts = np.array([b.count(",") for b in body]) + 1
    bins = int(counts[0])
    if np.any(counts != bins):
        raise StatsInputError(f"{cells.name} holds profiles of lengths {sorted(set(counts))}")
    try:
        values = np.array(",".join(body).split(","), dtype=float)
    except ValueError as err:
        raise StatsInputError(f"{cells.name} holds a profile that is not numbers: {err}") from err
    out = np.full((len(texts), bins), np.nan)
    out[present] = values.reshape(-1, bins)
    return out


def with_profile_columns(table: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    """``table`` with each profile text column replaced by numbered columns ``{name}_{i}``.

    :func:`myoflow.cohort.stats.normative.profile_percentiles` reads the numbered form without
    parsing text again. Columns absent from ``table`` are left alone.
    """
    present = [c for c in columns.values() if c in table.columns]
    if not present:
        return table
    parts = [table.drop(columns=present)]
    for column in present:
        matrix = profile_matrix_from_text(table[column])
        names = [f"{column}_{i}" for i in range(matrix.shape[1])]
        parts.append(pd.DataFrame(matrix, columns=names, index=table.index))
    return pd.concat(parts, axis=1)


# ---------------------------------------------------------------- files


def read_analysis_cohort(
    participants: str | os.PathLike[str], exclusions: str | os.PathLike[str]
) -> AnalysisCohort:
    """The gathered cohort from ``participants.tsv`` and ``exclusions.tsv``."""
    text = {c: str for c in (ID, "qc_flags", "qc_reason", "qc_status", "outlier_columns")}
    table = pd.read_csv(participants, sep="\t", dtype=text)
    excluded = pd.read_csv(exclusions, sep="\t", dtype=str, keep_default_na=False)
    return AnalysisCohort(table=table, exclusions=excluded, n_sheet=len(table) + len(excluded))


def read_profiles(
    path: str | os.PathLike[str],
    columns: Sequence[str] = tuple(normative.PROFILE_COLUMNS.values()),
) -> pd.DataFrame:
    """``csa_profiles.tsv`` as ``participant_id`` and numbered columns ``{name}_{i}``.

    The file's JSON list cells are parsed by pandas' C reader in one pass (brackets and
    tabs turned into commas): about 5x faster than parsing the cells one by one, which
    matters at 100,000 x 2 x 100 values. Files with empty cells take the slow path.

    Raises:
        StatsInputError: the file does not start with ``participant_id``, or profiles
            differ in length.
    """
    raw = Path(path).read_bytes()
    head, _, body = raw.partition(b"\n")
    names = head.decode().rstrip("\r").split("\t")
    if names[0] != ID:
        raise StatsInputError(f"{path}: the first column is {names[0]!r}, not {ID}")
    columns = [c for c in columns if c in names]  # absent ones: the analyses say so
    if not columns:
        return pd.read_csv(path, sep="\t", dtype=str, usecols=[ID])
    lines = body.count(b"\n") + (0 if body.endswith(b"\n") or not body else 1)
    if lines == 0 or body.count(b"\t[") != lines * (len(names) - 1):  # empty or odd cells
        text = pd.read_csv(path, sep="\t", dtype=object, keep_default_na=False)
        return with_profile_columns(text[[ID, *columns]], {c: c for c in columns})
    first = body.split(b"\n", 1)[0].split(b"\t")[1:]
    bins = [cell.count(b",") + 1 for cell in first]
    if body.count(b",") != lines * sum(n - 1 for n in bins):  # a shorter row would pad NaN
        raise StatsInputError(f"{path}: profiles of different lengths")
    flat = body.replace(b"[", b"").replace(b"]", b"").replace(b"\t", b",")
    try:
        values = pd.read_csv(io.BytesIO(flat), sep=",", header=None, dtype={0: str})
    except (pd.errors.ParserError, ValueError) as err:
        raise StatsInputError(
            f"{path}: profiles of different lengths or not numbers: {err}"
        ) from err
    if values.shape[1] != 1 + sum(bins):
        raise StatsInputError(f"{path}: profiles of different lengths")
    labels = [f"{name}_{i}" for name, n in zip(names[1:], bins, strict=True) for i in range(n)]
    values.columns = [ID, *labels]
    values[labels] = values[labels].astype(float)  # "3" parses as an integer column
    keep = [f"{c}_{i}" for c in columns for i in range(bins[names.index(c) - 1])]
    return values[[ID, *keep]]


def write_tables(folder: str | os.PathLike[str], tables: Mapping[str, pd.DataFrame]) -> list[Path]:
    """Write each table as ``{folder}/{name}.tsv`` (atomically); return the paths.

    Tables of an earlier run that this run did not produce are removed, so the folder
    holds exactly this analysis.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in tables.items():
        path = out / f"{name}.tsv"
        write_tsv(path, frame)
        written.append(path)
    for stale in set(out.glob("*.tsv")) - set(written):
        stale.unlink()
    return written


def read_tables(folder: str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """Every ``{name}.tsv`` of ``folder`` by name (as :func:`write_tables` wrote them)."""
    return {
        path.stem: pd.read_csv(path, sep="\t", dtype={ID: str})
        for path in sorted(Path(folder).glob("*.tsv"))
    }
