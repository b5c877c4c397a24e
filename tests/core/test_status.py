"""`myoflow status`: participants done, excluded and pending per stage, from shard tables."""

from __future__ import annotations

import pandas as pd
import yaml

from myoflow.cli import main
from myoflow.core.progress import stage_progress

ID = "participant_id"


def _sheet(folder, n: int = 5) -> pd.DataFrame:
    sheet = pd.DataFrame(
        {ID: [f"p{i}" for i in range(n)], "dicom": [f"d{i}" for i in range(n)], "release": "r1"}
    )
    sheet.to_csv(folder / "sheet.tsv", sep="\t", index=False)
    return sheet


def _table(folder, shard: str, stage: str, statuses: dict[str, str]) -> None:
    path = folder / "results" / "shards" / shard / f"{stage}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = pd.DataFrame({ID: list(statuses), "shard": shard, "status": list(statuses.values())})
    rows.to_csv(path, sep="\t", index=False)


def test_counts_follow_the_shard_tables_written_so_far(tmp_path, capsys):
    """Shards of 2: r1-0000 (p0, p1), r1-0001 (p2, p3), r1-0002 (p4). Inventory done for
    all; conversion excluded p1 and has not reached r1-0002; landmarks only for r1-0000."""
    _sheet(tmp_path)
    _table(tmp_path, "r1-0000", "inventory", {"p0": "ok", "p1": "ok"})
    _table(tmp_path, "r1-0001", "inventory", {"p2": "ok", "p3": "excluded"})
    _table(tmp_path, "r1-0002", "inventory", {"p4": "ok"})
    _table(tmp_path, "r1-0000", "convert", {"p0": "ok", "p1": "excluded"})
    _table(tmp_path, "r1-0001", "convert", {"p2": "ok", "p3": "excluded"})
    _table(tmp_path, "r1-0000", "landmarks", {"p0": "ok", "p1": "excluded"})
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "participants": str(tmp_path / "sheet.tsv"),
                "results": str(tmp_path / "results"),
                "shards": {"size": 2},
            }
        )
    )
    assert main(["status", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("5 participants on ")
    table = {line.split()[0]: [int(v) for v in line.split()[1:]] for line in lines[2:]}
    # participants, done, excluded, excluded_here, pending
    assert table["inventory"] == [5, 4, 1, 1, 0]
    assert table["convert"] == [5, 2, 2, 1, 1]
    assert table["landmarks"] == [5, 1, 1, 0, 3]
    assert table["segment"] == [5, 0, 0, 0, 5]
    assert table["measure"] == [5, 0, 0, 0, 5]


def test_a_table_row_of_another_shard_is_not_counted():
    shards = pd.DataFrame({ID: ["a", "b"], "shard": ["s0", "s1"]})
    stray = pd.DataFrame({ID: ["a", "b"], "status": ["ok", "ok"]})
    counts = stage_progress(shards, {"inventory": {"s0": stray, "s1": None}}, ["inventory"])
    assert counts.iloc[0][["done", "pending"]].tolist() == [1, 1]
