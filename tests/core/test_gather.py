"""Gathering shard tables into a cohort table."""

from __future__ import annotations

import pytest

from myoflow.core.tables import TableError, concat_tables


def test_tables_are_stacked_in_order_with_text_kept(tmp_path):
    first = tmp_path / "a.tsv"
    first.write_text("participant_id\treason\tvalue\n0042\t\t3.10\n")
    second = tmp_path / "b.tsv"
    second.write_text("participant_id\treason\tvalue\nP7\tdicom_missing\t1e-3\n")
    table = concat_tables([second, first])
    assert table.to_dict("list") == {
        "participant_id": ["P7", "0042"],
        "reason": ["dicom_missing", ""],
        "value": ["1e-3", "3.10"],
    }


def test_tables_with_other_columns_are_refused(tmp_path):
    first = tmp_path / "a.tsv"
    first.write_text("participant_id\tstatus\nP1\tok\n")
    second = tmp_path / "b.tsv"
    second.write_text("participant_id\tstate\nP2\tok\n")
    with pytest.raises(TableError, match=r"b.tsv has columns \['participant_id', 'state'\]"):
        concat_tables([first, second])
    with pytest.raises(TableError, match="no tables"):
        concat_tables([])
