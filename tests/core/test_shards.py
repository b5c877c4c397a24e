"""Shard assignment: names, sizes, determinism, and stability when a release is added."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from myoflow.core.shards import SHARD_WILDCARD, ShardError, assign_shards, shard_members


def sheet(ids: list[str], release: str) -> pd.DataFrame:
    return pd.DataFrame(
        {"participant_id": ids, "dicom": [f"d/{i}" for i in ids], "release": release}
    )


def membership(sharded: pd.DataFrame) -> dict[str, list[str]]:
    """Shard name -> sorted participant ids."""
    return {
        shard: sorted(group["participant_id"])
        for shard, group in sharded.groupby("shard", sort=True)
    }


R1 = ["P07", "P03", "P11", "P01", "P05", "P09", "P02"]


def test_chunks_of_size_within_a_release_sorted_by_id():
    assert membership(assign_shards(sheet(R1, "r1"), 3)) == {
        "r1-0000": ["P01", "P02", "P03"],
        "r1-0001": ["P05", "P07", "P09"],
        "r1-0002": ["P11"],
    }


def test_rows_keep_their_order_and_columns():
    sharded = assign_shards(sheet(R1, "r1"), 3)
    assert list(sharded["participant_id"]) == R1
    assert list(sharded.columns) == ["participant_id", "dicom", "release", "shard"]
    assert dict(zip(sharded["participant_id"], sharded["shard"], strict=True))["P07"] == "r1-0001"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 25])
def test_sizes(size):
    sharded = assign_shards(sheet(R1, "r1"), size)
    counts = sharded["shard"].value_counts().sort_index()
    expected = [size] * (len(R1) // size) + ([len(R1) % size] if len(R1) % size else [])
    assert list(counts) == expected
    assert list(counts.index) == [f"r1-{k:04d}" for k in range(len(expected))]


def test_size_one_is_one_participant_per_shard():
    sharded = assign_shards(sheet(R1, "r1"), 1)
    assert sharded["shard"].nunique() == len(R1)
    assert membership(sharded)["r1-0000"] == ["P01"]
    assert membership(sharded)["r1-0006"] == ["P11"]


@pytest.mark.parametrize("size", [1, 2, 3, 25])
def test_adding_a_release_leaves_every_earlier_shard_unchanged(size):
    before = membership(assign_shards(sheet(R1, "r1"), size))
    # r2 brings ids that sort before, between and after r1's, some rows placed first.
    r2 = sheet(["P00", "P04", "P99", "A1", "Z9"], "r2")
    after = membership(assign_shards(pd.concat([r2.iloc[:2], sheet(R1, "r1"), r2.iloc[2:]]), size))
    assert {s: m for s, m in after.items() if s.startswith("r1-")} == before
    new = {s: m for s, m in after.items() if not s.startswith("r1-")}
    assert all(s.startswith("r2-") for s in new)
    assert sorted(sum(new.values(), [])) == ["A1", "P00", "P04", "P99", "Z9"]


def test_deterministic_whatever_the_row_order():
    two_releases = pd.concat([sheet(R1, "r1"), sheet(["Q2", "Q1", "Q3"], "r2")], ignore_index=True)
    reference = assign_shards(two_releases, 2).set_index("participant_id")["shard"]
    for seed in range(5):
        shuffled = two_releases.sample(frac=1, random_state=seed)
        result = assign_shards(shuffled, 2).set_index("participant_id")["shard"]
        pd.testing.assert_series_equal(result.sort_index(), reference.sort_index())


@pytest.mark.parametrize("size", [0, -1, 2.5, "25", True, None])
def test_invalid_sizes_are_refused(size):
    with pytest.raises(ShardError, match="positive integer"):
        assign_shards(sheet(R1, "r1"), size)


def test_shard_members_sorted_and_unknown_shard_refused():
    sharded = assign_shards(sheet(R1, "r1"), 3)
    assert list(shard_members(sharded, "r1-0001")["participant_id"]) == ["P05", "P07", "P09"]
    with pytest.raises(ShardError, match="'r1-0003' has no participants.*3 shards"):
        shard_members(sharded, "r1-0003")


def test_names_match_the_wildcard_constraint():
    releases = ["r1", "2024.1", "ukbb-i2", "NAKO_base"]
    ids = [f"P{i:05d}" for i in range(12)]
    many = pd.concat([sheet(ids, release) for release in releases], ignore_index=True)
    for name in assign_shards(many, 1)["shard"]:
        assert re.fullmatch(SHARD_WILDCARD, name), name
    assert not re.fullmatch(SHARD_WILDCARD, "r1-000")
    assert not re.fullmatch(SHARD_WILDCARD, "../r1-0000")
