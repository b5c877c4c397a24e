"""Stratified sampling, as the UK Biobank study chose participants for manual annotation.

Draw ``n`` participants so that each stratum (e.g. sex x age band) gets its share of a
target distribution: balanced by sex within each age band, the bands weighted like a
reference population. Counts come from the largest-remainder rule, so they add up to
``n`` exactly; each stratum draws from its own generator seeded by (seed, stratum label),
so a stratum's draw does not depend on the other strata or on the row order of the table.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from myoflow.cohort.stats._common import StatsInputError, require_columns

ID = "participant_id"


class SamplingError(StatsInputError):
    """A stratum has fewer participants than its share of the sample needs."""


@dataclass(frozen=True)
class Sample:
    """The drawn participants and the allocation behind them.

    Attributes:
        table: the sampled rows of the input, sorted by stratum then participant id.
        allocation: strata columns, proportion (target share), available, target, drawn.
    """

    table: pd.DataFrame
    allocation: pd.DataFrame


def balanced_proportions(
    band_weights: Mapping[str, float], sexes: Sequence[str] = ("F", "M")
) -> dict[tuple[str, str], float]:
    """Target shares per (sex, band): bands weighted by ``band_weights``, sexes equal."""
    total = float(sum(band_weights.values()))
    if total <= 0 or any(w < 0 for w in band_weights.values()):
        raise StatsInputError(
            f"band weights must be non-negative with a positive sum: {band_weights}"
        )
    return {(s, b): w / total / len(sexes) for b, w in band_weights.items() for s in sexes}


def reference_proportions(reference: pd.DataFrame, strata: Sequence[str]) -> dict[tuple, float]:
    """Shares of each stratum in a reference population table (one row per person)."""
    require_columns(reference, strata, "reference table")
    counts = reference.groupby(list(strata), observed=True).size()
    return {k if isinstance(k, tuple) else (k,): v / counts.sum() for k, v in counts.items()}


def allocate(proportions: Mapping[tuple, float], n: int) -> dict[tuple, int]:
    """Whole counts per stratum summing to ``n``, by the largest-remainder (Hamilton) rule.

    Ties in the remainder go to the stratum listed first in sorted order.
    """
    keys = sorted(proportions)
    shares = np.array([proportions[k] for k in keys], dtype=float)
    if n < 0 or shares.sum() <= 0 or np.any(shares < 0):
        raise StatsInputError("need n >= 0 and non-negative proportions with a positive sum")
    exact = n * shares / shares.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return dict(zip(keys, counts.tolist(), strict=True))


def stratified_sample(
    df: pd.DataFrame,
    n: int,
    proportions: Mapping[tuple, float],
    *,
    strata: Sequence[str] = ("sex", "age_band"),
    seed: int = 0,
) -> Sample:
    """Draw ``n`` participants with ``proportions`` of them in each stratum, reproducibly.

    Args:
        df: candidates, one row per participant (``participant_id`` and ``strata`` columns).
        n: sample size.
        proportions: stratum key (tuple of ``strata`` values, in order) -> target share;
            normalised to sum to 1. Strata not listed get no one.
        strata: stratum columns.
        seed: the same seed, candidates and targets give the same sample.

    Raises:
        SamplingError: a stratum has fewer candidates than its target count.
    """
    require_columns(df, [ID, *strata])
    proportions = {(k if isinstance(k, tuple) else (k,)): v for k, v in proportions.items()}
    if any(len(k) != len(strata) for k in proportions):
        raise StatsInputError(f"stratum keys must have {len(strata)} values ({list(strata)})")
    targets = allocate(proportions, n)
    labels = [df[s].astype(str).to_numpy() for s in strata]
    groups = pd.DataFrame(dict(enumerate(labels))).groupby(list(range(len(strata)))).indices
    groups = {(k if isinstance(k, tuple) else (k,)): v for k, v in groups.items()}
    chosen, rows = [], []
    for key in sorted(targets):
        label = tuple(str(v) for v in key)
        candidates = df.iloc[groups.get(label, [])].sort_values(ID, kind="stable")
        need = targets[key]
        if len(candidates) < need:
            raise SamplingError(
                f"stratum {dict(zip(strata, key, strict=True))} has {len(candidates)} "
                f"participants; its share needs {need}"
            )
        rng = np.random.default_rng([seed, zlib.crc32("|".join(label).encode())])
        pick = np.sort(rng.choice(len(candidates), size=need, replace=False))
        chosen.append(candidates.iloc[pick])
        rows.append(
            dict(zip(strata, key, strict=True))
            | {"proportion": proportions[key] / sum(proportions.values())}
            | {"available": len(candidates), "target": need, "drawn": len(pick)}
        )
    table = pd.concat(chosen, ignore_index=True) if chosen else df.iloc[:0]
    return Sample(table=table, allocation=pd.DataFrame(rows))
