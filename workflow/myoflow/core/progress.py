"""Where a run stands: participants done, excluded and pending per stage, from shard tables.

Every per-participant stage writes one table per shard (``shards/{shard}/{stage}.tsv``)
with one row per participant and ``status`` ``ok`` or ``excluded``; a shard whose table
is not there yet has all its participants pending at that stage. :func:`stage_progress`
counts them (pure: tables in, counts out); :func:`read_progress` reads the tables of a
results folder. ``myoflow status`` prints the counts while a run is under way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

ID = "participant_id"
STAGES = ("inventory", "convert", "landmarks", "segment", "measure")
"""The per-participant stages in run order, named as their shard tables."""

COLUMNS = ["stage", "participants", "done", "excluded", "excluded_here", "pending"]


def stage_progress(
    shards: pd.DataFrame,
    tables: Mapping[str, Mapping[str, pd.DataFrame | None]],
    stages: Sequence[str] = STAGES,
) -> pd.DataFrame:
    """Participants per stage: done (ok), excluded (here or earlier), pending.

    Args:
        shards: the sheet's ``participant_id`` and ``shard`` (as the workflow assigns them).
        tables: stage -> shard -> that shard's table (``participant_id``, ``status``), or
            None where it is not written yet.
        stages: the stages in run order; ``excluded_here`` counts those excluded at a
            stage but not at the one before.

    Returns:
        One row per stage: stage, participants, done, excluded, excluded_here, pending
        (done + excluded + pending = participants).
    """
    everyone = shards[ID].astype(str)
    rows, before = [], set()
    for stage in stages:
        status = pd.Series("pending", index=pd.Index(everyone, name=ID))
        for shard, table in (tables.get(stage) or {}).items():
            if table is None:
                continue
            members = set(shards.loc[shards["shard"] == shard, ID].astype(str))
            known = table[table[ID].astype(str).isin(members)]
            status.loc[known[ID].astype(str).to_numpy()] = known["status"].astype(str).to_numpy()
        excluded = set(status.index[status == "excluded"])
        rows.append(
            {
                "stage": stage,
                "participants": len(status),
                "done": int((status == "ok").sum()),
                "excluded": len(excluded),
                "excluded_here": len(excluded - before),
                "pending": int((~status.isin(["ok", "excluded"])).sum()),
            }
        )
        before = excluded
    return pd.DataFrame(rows, columns=COLUMNS)


def read_progress(
    shards: pd.DataFrame, results: str | os.PathLike[str], stages: Sequence[str] = STAGES
) -> pd.DataFrame:
    """:func:`stage_progress` of the shard tables under ``results/shards``."""
    folder = Path(results) / "shards"
    tables: dict[str, dict[str, pd.DataFrame | None]] = {}
    for stage in stages:
        tables[stage] = {}
        for shard in sorted(set(shards["shard"])):
            path = folder / shard / f"{stage}.tsv"
            tables[stage][shard] = (
                pd.read_csv(path, sep="\t", dtype=str, usecols=[ID, "status"])
                if path.is_file()
                else None
            )
    return stage_progress(shards, tables, stages)
