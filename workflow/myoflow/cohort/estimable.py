"""Which statistics a group's data can support, and a record of those it cannot.

Every statistic of the cohort tables is either estimated or reported as "not estimable
(n = k)" with the reason in the table's ``note`` column, never as ``nan`` or ``inf``:

- :class:`MinimumSizes`: the fewest participants per group each analysis needs (config
  ``stats.min_group_size``). Groups below it get a row with ``n`` and the note; the other
  groups are analysed (a cohort with one man still gets every per-sex analysis of its
  women).
- :func:`per_group`: one row per item (metric, pair, structure) and group, computed where
  the group has enough values, a note where it does not or where the statistic itself
  says it cannot be computed (:class:`~myoflow.cohort.stats.StatsInputError`).
- :func:`warnings_as_notes`: warnings raised while computing one group's statistic
  (statsmodels' rank-deficient design, numpy's divide by zero) are re-raised labelled with
  the group and item, so the analysis runner can put them beside the analysis they concern.
- :func:`finite_table`: the last guard before a table is written: infinite values become
  empty cells, and a row with an empty statistic and no note gets one.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from myoflow.cohort.stats._common import StatsInputError

NOTE = "note"
"""Column of every result table that says why a statistic is empty."""

SEXES = ("F", "M")
"""Sexes every per-sex table has rows for, present in the cohort or not."""

SEX_WORDS = {"F": "women", "M": "men"}


class AnalysisWarning(UserWarning):
    """A warning raised while computing one group's statistic, labelled with the group."""


@dataclass(frozen=True)
class MinimumSizes:
    """Fewest participants (values) per group for each analysis (config ``stats.min_group_size``).

    Attributes:
        describe: mean and SD of a group (Table 1, Table 2, volumes); 2 is the least an SD needs.
        ttest: per group of a Welch t-test (men vs women, right- vs left-handed).
        asymmetry: complete left-right pairs per group (paired t-test, asymmetry index).
        handedness: participants per handedness level within sex (ANOVA).
        correlation: complete pairs per group (Pearson r with a Fisher-z interval needs 4+).
        regression: per group; at least the model's coefficients + 2 in any case.
        gam: per group; at least 2 k (twice the knots) in any case.
        percentiles: per cell of a normative table (sex x age group, sex x BMI class).
        profiles: complete CSA profiles per cell (sex x age group, sex x BMI class).
        agreement: participants with both a manual and an automatic value (Bland-Altman).
    """

    describe: int = 2
    ttest: int = 2
    asymmetry: int = 3
    handedness: int = 3
    correlation: int = 5
    regression: int = 5
    gam: int = 20
    percentiles: int = 5
    profiles: int = 5
    agreement: int = 3

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None) -> MinimumSizes:
        """Sizes from config ``stats.min_group_size`` (missing keys keep the defaults)."""
        block = block or {}
        return cls(**{f.name: int(block.get(f.name, getattr(cls(), f.name))) for f in fields(cls)})


def not_estimable(n: int, minimum: int | None = None, why: str = "") -> str:
    """The note of a statistic a group cannot support: "not estimable (n = 1; needs 5)"."""
    text = f"not estimable (n = {n}" + (f"; needs {minimum}" if minimum is not None else "") + ")"
    return f"{text}: {why}" if why else text


def group_label(key: Mapping[str, object]) -> str:
    """A group's name in words: {"sex": "M"} -> "men"; {} -> "all participants"."""
    if not key:
        return "all participants"
    return ", ".join(
        SEX_WORDS.get(str(v), str(v)) if k == "sex" else str(v) for k, v in key.items()
    )


@contextlib.contextmanager
def warnings_as_notes(where: str) -> Iterator[None]:
    """Re-raise every warning of the block as an :class:`AnalysisWarning` naming ``where``.

    numpy's floating point errors are turned into warnings too (``np.errstate``), so a
    divide by zero inside a fit is reported however numpy is configured.
    """
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="warn"):
        warnings.simplefilter("always")
        yield
    seen: set[str] = set()
    for item in caught:
        if issubclass(item.category, AnalysisWarning):
            text = str(item.message)
        else:
            text = f"{where}: {item.category.__name__}: {str(item.message).splitlines()[0]}"
        if text not in seen:
            seen.add(text)
            warnings.warn(text, AnalysisWarning, stacklevel=3)


def sex_groups(
    table: pd.DataFrame, sex: str = "sex"
) -> list[tuple[dict[str, object], pd.DataFrame]]:
    """``({"sex": s}, rows)`` for women, men (present or not) and any other recorded sex."""
    values = table[sex].dropna().astype(str)
    levels = [*SEXES, *sorted(set(values) - set(SEXES))]
    return [({sex: level}, table[values.reindex(table.index) == level]) for level in levels]


def per_group(
    items: Sequence[Mapping[str, object]],
    groups: Sequence[tuple[Mapping[str, object], pd.DataFrame]],
    minimum: int,
    compute: Callable[[Mapping[str, object], pd.DataFrame], Mapping[str, object]],
    count: Callable[[Mapping[str, object], pd.DataFrame], int],
) -> pd.DataFrame:
    """One row per item and group: ``compute``'s statistics, or ``n`` and a note.

    Args:
        items: what is estimated, as the columns naming it (``{"metric": ...}``,
            ``{"x": ..., "y": ...}``).
        groups: ``(key columns, rows)`` per group (:func:`sex_groups`).
        minimum: fewest values (``count``) a group needs.
        compute: the statistics of one item in one group's rows (a dict of numbers);
            may raise :class:`StatsInputError`, which becomes the note.
        count: the values an item has in a group's rows (e.g. complete pairs).
    """
    rows = []
    for item in items:
        for key, part in groups:
            n = int(count(item, part))
            row: dict[str, object] = {**item, **key}
            if n < minimum:
                rows.append(row | {"n": n, NOTE: not_estimable(n, minimum)})
                continue
            where = f"{group_label(key)}, {', '.join(map(str, item.values()))}"
            try:
                with warnings_as_notes(where):
                    stats = dict(compute(item, part))
            except (StatsInputError, np.linalg.LinAlgError) as err:
                rows.append(row | {"n": n, NOTE: not_estimable(n, why=str(err))})
                continue
            rows.append(row | {"n": n, **stats, NOTE: str(stats.get(NOTE, "") or "")})
    return pd.DataFrame(rows)


def complete(columns: Sequence[str]) -> Callable[[Mapping[str, object], pd.DataFrame], int]:
    """A ``count`` for :func:`per_group`: rows where every item column named is a number.

    ``columns`` are keys of the item (e.g. ``("x", "y")``) whose values are column names.
    """

    def count(item: Mapping[str, object], part: pd.DataFrame) -> int:
        names = [str(item[c]) for c in columns]
        if not set(names) <= set(part.columns):
            return 0
        return int(part[names].apply(pd.to_numeric, errors="coerce").notna().all(axis=1).sum())

    return count


def finite_table(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with infinite numbers as empty cells and a note on every row missing a number.

    A row that already has a note keeps it; one that lost a statistic without a note
    (an infinite standard error, an undefined R²) gets "not estimable (n = k): col, col".
    Tables with no numeric columns are returned unchanged.
    """
    numeric = frame.select_dtypes(include="number")
    if numeric.empty:
        return frame
    out = frame.copy()
    values = numeric.to_numpy(dtype=float, na_value=np.nan)
    infinite = np.isinf(values)
    if infinite.any():
        out[numeric.columns] = numeric.mask(infinite)
    empty = np.isnan(out[numeric.columns].to_numpy(dtype=float, na_value=np.nan))
    if not empty.any():
        return out
    if NOTE not in out.columns:
        out[NOTE] = ""
    notes = out[NOTE].fillna("").astype(str).to_numpy(dtype=object)
    n = out["n"] if "n" in out.columns else None
    for i in np.flatnonzero(empty.any(axis=1) & (notes == "")):
        missing = ", ".join(numeric.columns[empty[i]])
        count = "" if n is None or pd.isna(n.iloc[i]) else f" (n = {int(n.iloc[i])})"
        notes[i] = f"not estimable{count}: {missing}"
    out[NOTE] = notes
    return out
