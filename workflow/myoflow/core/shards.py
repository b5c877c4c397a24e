"""Participant shards: how per-participant stages are grouped into jobs.

Why shards: Snakemake spends about a millisecond planning each job, and on a cluster
every job starts a fresh Snakemake that re-parses the workflow. With 100,000 participants
and several per-participant stages, one job per participant means minutes of planning
and hundreds of thousands of scheduler submissions. Per-participant stages therefore run
one job per *shard* of participants, while their outputs stay per participant
(``results/participants/{participant}/...``).

Why this assignment: shard membership must not change when a new data release is
appended to the sheet, or every existing shard would be re-run. Shards are therefore
formed within each release: the participants of one release are sorted by id and cut
into consecutive chunks of ``size``, named ``{release}-{k:04d}`` (``r1-0000``,
``r1-0001``, ...). A shard's membership depends only on the rows of its own release and
on ``size``; adding release ``r2`` adds ``r2-*`` shards and leaves every ``r1-*`` shard
exactly as it was. ``size=1`` gives one participant per shard.

What does change membership: changing ``size``, or adding participants to a release
that already has shards (ship late arrivals as a new release instead). See
``docs/sharding.md``.
"""

from __future__ import annotations

import numbers

import pandas as pd

from myoflow.core.errors import MyoflowError

SHARD_WILDCARD = r"[A-Za-z0-9][A-Za-z0-9_.-]*-[0-9][0-9][0-9][0-9]+"
"""Wildcard constraint for ``{shard}``: a release, a dash, at least four digits.

Written without ``{m,n}`` quantifiers: Snakemake wildcard constraints cannot hold braces.
"""


class ShardError(MyoflowError, ValueError):
    """A shard size or shard name that the sheet cannot satisfy."""


def shard_name(release: str, index: int) -> str:
    """Return the name of the ``index``-th (0-based) shard of ``release``."""
    return f"{release}-{index:04d}"


def assign_shards(sheet: pd.DataFrame, size: int) -> pd.DataFrame:
    """Return a copy of ``sheet`` with a ``shard`` column.

    Args:
        sheet: a validated participant sheet (unique ``participant_id``, ``release``).
        size: the most participants per shard (at least 1).

    Returns:
        The sheet in its original row order, with ``shard`` added.

    Raises:
        ShardError: ``size`` is not a positive integer.
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ShardError(f"shard size must be a positive integer, got {size!r}")
    keys = pd.DataFrame(
        {
            "release": sheet["release"].astype(str).to_numpy(),
            "participant_id": sheet["participant_id"].astype(str).to_numpy(),
        }
    ).sort_values(["release", "participant_id"], kind="stable")
    chunk = keys.groupby("release", sort=False).cumcount() // int(size)
    names = pd.Series(
        [shard_name(release, k) for release, k in zip(keys["release"], chunk, strict=True)],
        index=keys.index,
    )
    result = sheet.copy()
    result["shard"] = names.sort_index().to_numpy()
    return result


def shard_members(sheet: pd.DataFrame, shard: str) -> pd.DataFrame:
    """Return the rows of a sheet from :func:`assign_shards` that belong to ``shard``.

    Rows come sorted by ``participant_id``.

    Raises:
        ShardError: no participant belongs to ``shard``.
    """
    members = sheet[sheet["shard"] == shard]
    if members.empty:
        known = sorted(sheet["shard"].unique())
        raise ShardError(
            f"shard {shard!r} has no participants; this sheet and shard size give "
            f"{len(known)} shards ({', '.join(known[:3])}{', ...' if len(known) > 3 else ''})"
        )
    return members.sort_values("participant_id", kind="stable")
