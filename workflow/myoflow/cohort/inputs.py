"""The gather's inputs: the phenotypes and every shard's tables, read as text.

Shard tables of one kind are stacked without parsing (:class:`ShardTable`, from
:func:`read_shard_tables`): a 100,000-participant gather reads a few thousand files, and
the metrics are passed through as the text the measure stage wrote, only the columns
:func:`myoflow.cohort.gather.gather_cohort` needs being parsed. :func:`read_cohort_inputs`
reads everything one gather needs; :class:`GatherError` is what the gather raises when
the tables are missing, disagree on their columns or hold unknown values.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from myoflow.core.errors import MyoflowError
from myoflow.core.io import read_tsv

ID = "participant_id"


class GatherError(MyoflowError):
    """Shard tables are missing, disagree on their columns, or hold unknown values."""


# ---------------------------------------------------------------- shard tables as text


@dataclass(frozen=True)
class ShardTable:
    """The rows of one kind of shard table, all shards stacked, as the text written.

    Attributes:
        columns: the header's column names (``participant_id`` first).
        body: every data row, each ending in a newline, in the order the files were given.
    """

    columns: tuple[str, ...]
    body: bytes

    def frame(self, columns: Sequence[str] | None = None, text: Sequence[str] = ()) -> pd.DataFrame:
        """Parse ``columns`` (default all) in one pass; ``text`` columns stay strings.

        Ids are strings; empty cells are missing values.
        """
        wanted = list(self.columns) if columns is None else [ID, *(c for c in columns if c != ID)]
        missing = [c for c in wanted if c not in self.columns]
        if missing:
            raise GatherError(f"shard tables lack column(s) {missing}; they have {self.columns}")
        header = "\t".join(self.columns).encode() + b"\n"
        dtypes = {c: str for c in (ID, *text) if c in wanted}
        return pd.read_csv(io.BytesIO(header + self.body), sep="\t", usecols=wanted, dtype=dtypes)[
            wanted
        ]

    def rows(self) -> dict[bytes, bytes]:
        """Participant id -> the row's text after the id and its tab (bytes, no newline)."""
        lines = self.body.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        return dict(line.split(b"\t", 1) if b"\t" in line else (line, b"") for line in lines)


def read_shard_tables(paths: Sequence[str | os.PathLike[str]], what: str) -> ShardTable:
    """Stack shard tables of one kind that share a header, without parsing them.

    Args:
        paths: the tables, in shard order.
        what: what they are, for messages (``"measure"``, ``"metrics"``...).

    Raises:
        GatherError: no paths, a table is missing or empty, or headers differ.
    """
    if not paths:
        raise GatherError(f"no {what} shard tables to gather")
    header: bytes | None = None
    bodies = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise GatherError(f"{path} is missing: run the {what} stage of that shard") from None
        head, newline, body = data.partition(b"\n")
        head = head.rstrip(b"\r")
        if not head:
            raise GatherError(f"{path} is empty; expected a {what} table with a header")
        if header is None:
            header = head
        elif head != header:
            raise GatherError(
                f"{path} has columns {head.decode().split(chr(9))}; expected "
                f"{header.decode().split(chr(9))} as in {paths[0]}"
            )
        if body and not body.endswith(b"\n"):
            body += b"\n"
        bodies.append(body.replace(b"\r\n", b"\n") if b"\r" in body else body)
    assert header is not None  # paths is not empty
    columns = tuple(header.decode().split("\t"))
    if columns[0] != ID:
        raise GatherError(f"{paths[0]}: the first column is {columns[0]!r}, not {ID}")
    return ShardTable(columns=columns, body=b"".join(bodies))


def shard_table_paths(
    shards_dir: str | os.PathLike[str], shards: Sequence[str], name: str
) -> list[str]:
    """``{shards_dir}/{shard}/{name}.tsv`` for every shard."""
    root = os.fspath(shards_dir)
    return [os.path.join(root, shard, f"{name}.tsv") for shard in shards]


# ---------------------------------------------------------------- reading one gather's inputs


def read_cohort_inputs(
    sheet: pd.DataFrame,
    phenotypes_path: str | os.PathLike[str] | None,
    shards_dir: str | os.PathLike[str],
    shards: Sequence[str],
    stage_tables: Sequence[str] = ("measure",),
    qc_table: str | None = "qc",
) -> tuple[pd.DataFrame | None, pd.DataFrame, ShardTable, pd.DataFrame | None]:
    """Read the phenotypes and every shard's stage, metrics and QC tables.

    Args:
        phenotypes_path: the phenotype table, or ``None`` when none is configured (the
            gather then runs without phenotypes).

    Returns:
        (phenotypes or None, stage rows, metrics text, QC table or None).

    Raises:
        GatherError: a shard table is missing, empty or has other columns than the rest.
    """
    phenotypes = None if phenotypes_path is None else read_tsv(phenotypes_path)
    steps = pd.concat(
        [
            read_shard_tables(shard_table_paths(shards_dir, shards, name), name).frame(
                None, text=("stage", "reason", "detail", "status", "shard")
            )
            for name in stage_tables
        ],
        ignore_index=True,
    )
    metrics = read_shard_tables(shard_table_paths(shards_dir, shards, "metrics"), "metrics")
    qc = None
    if qc_table is not None:
        qc = read_shard_tables(shard_table_paths(shards_dir, shards, qc_table), qc_table).frame(
            None, text=("qc_status", "qc_reason", "qc_flags")
        )
    return phenotypes, steps, metrics, qc
