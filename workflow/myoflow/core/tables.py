"""Gathering per-shard tables into cohort tables."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from myoflow.core.errors import MyoflowError


class TableError(MyoflowError, ValueError):
    """Tables to be gathered are missing or disagree on their columns."""


def concat_tables(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Stack TSV tables with identical columns, in the given order.

    Every cell is kept as the text it was written as (no float or id reformatting), so the
    cohort table holds exactly what the shard tables hold.

    Raises:
        TableError: no paths were given, or a table's columns differ from the first one's.
    """
    if not paths:
        raise TableError("no tables to gather")
    tables = [pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False) for path in paths]
    columns = list(tables[0].columns)
    for path, table in zip(paths, tables, strict=True):
        if list(table.columns) != columns:
            raise TableError(
                f"{path} has columns {list(table.columns)}; expected {columns} as in {paths[0]}"
            )
    return pd.concat(tables, ignore_index=True)
