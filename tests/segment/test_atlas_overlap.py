"""bench/atlas_overlap.py: held-out Dice split by seen and unseen atlas bodies."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("atlas_overlap", ROOT / "bench" / "atlas_overlap.py")
atlas_overlap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atlas_overlap)


def test_held_out_dice_is_split_by_the_training_bodies(tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    pd.DataFrame(
        {"participant_id": ["T1", "T2", "H1", "H2", "H3"], "atlas_body": [4, 7, 7, 9, 4]}
    ).to_csv(cohort / "targets.tsv", sep="\t", index=False)
    bodies = atlas_overlap.atlas_bodies([cohort])
    dice = pd.DataFrame(
        {
            "participant_id": ["H1", "H2", "H3", "H1"],
            "structure": ["gluteus", "gluteus", "gluteus", "iliacus"],
            "dice": [0.96, 0.90, 0.94, 0.5],
        }
    )
    table = atlas_overlap.overlap_table(dice, bodies, ["T1", "T2"])
    assert table.loc[("gluteus", "seen"), "count"] == 2
    assert table.loc[("gluteus", "seen"), "mean"] == pytest.approx(0.95)
    assert table.loc[("gluteus", "unseen"), "mean"] == pytest.approx(0.90)
    assert "iliacus" not in table.index.get_level_values("structure")
    with pytest.raises(SystemExit, match="H4"):
        atlas_overlap.overlap_table(dice.assign(participant_id="H4"), bodies, ["T1"])
