"""Shared helpers of the statistics modules: grouping, column checks, the error type."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import pandas as pd

from myoflow.core.errors import MyoflowError

By = str | Sequence[str] | None
"""Grouping columns: one name, several, or ``None`` for the whole table."""


class StatsInputError(MyoflowError, ValueError):
    """A statistics input cannot be analysed: a missing column, too few values, bad options."""


def group_columns(by: By) -> list[str]:
    """``by`` as a list of column names (empty for ``None``)."""
    if by is None:
        return []
    if isinstance(by, str):
        return [by]
    return list(by)


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str = "table") -> None:
    """Raise :class:`StatsInputError` naming every column of ``columns`` missing from ``df``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise StatsInputError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}")


def split(df: pd.DataFrame, by: By) -> Iterator[tuple[dict[str, object], pd.DataFrame]]:
    """Yield ``({column: value}, rows)`` per group of ``by`` in sorted order (one for ``None``)."""
    columns = group_columns(by)
    require_columns(df, columns)
    if not columns:
        yield {}, df
        return
    for key, rows in df.groupby(columns, sort=True, observed=True):
        yield dict(zip(columns, key, strict=True)), rows


def finite_pairs(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows of ``df[[x, y]]`` where both are present (numbers, not NaN)."""
    return df[[x, y]].apply(pd.to_numeric, errors="coerce").dropna()
