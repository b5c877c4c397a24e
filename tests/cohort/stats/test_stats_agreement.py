"""Bland-Altman on constructed differences with a known bias and SD; Dice summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from myoflow.cohort.stats._common import StatsInputError
from myoflow.cohort.stats.agreement import bland_altman, dice_summary, limits_of_agreement


def _constructed(n: int = 40, bias: float = 2.0, sd: float = 3.0) -> pd.DataFrame:
    """Manual values for n participants (plus 10 without), method = manual + exact d."""
    rng = np.random.default_rng(8)
    z = rng.standard_normal(n)
    d = bias + sd * (z - z.mean()) / z.std(ddof=1)  # mean exactly bias, SD exactly sd
    manual = rng.uniform(400, 900, n)
    frame = pd.DataFrame(
        {"participant_id": [f"P{i:02d}" for i in range(n)], "manual": manual, "auto": manual + d}
    )
    extra = pd.DataFrame(
        {"participant_id": [f"Q{i}" for i in range(10)], "manual": np.nan, "auto": 500.0}
    )
    return pd.concat([frame, extra], ignore_index=True)


def test_known_bias_and_limits():
    result = bland_altman(_constructed(), {"volume": ("auto", "manual")})
    row = result.summary.iloc[0]
    n, t, z = 40, stats.t.ppf(0.975, 39), stats.norm.ppf(0.975)
    assert row["n"] == n  # the 10 participants without manual values are left out
    assert row["bias"] == pytest.approx(2.0, abs=1e-12)
    assert row["sd"] == pytest.approx(3.0, abs=1e-12)
    assert (row["loa_low"], row["loa_high"]) == pytest.approx((2 - z * 3, 2 + z * 3), abs=1e-12)
    assert row["bias_ci_high"] - row["bias"] == pytest.approx(t * 3 / np.sqrt(n))
    se_loa = 3 * np.sqrt(1 / n + z**2 / (2 * (n - 1)))
    assert row["loa_high_ci_low"] == pytest.approx(2 + z * 3 - t * se_loa)
    assert row["loa_low_ci_high"] == pytest.approx(2 - z * 3 + t * se_loa)
    points = result.points
    assert len(points) == n and points["participant_id"].iloc[0] == "P00"
    assert points["difference"].mean() == pytest.approx(2.0)


def test_relative_differences_and_groups():
    frame = pd.DataFrame(
        {"a": [110.0, 220.0, 330.0, 105.0], "b": [100.0, 200.0, 300.0, 105.0], "g": list("xxxy")}
    )
    result = bland_altman(frame.head(3), {"v": ("a", "b")}, relative=True)
    assert result.summary["bias"].iloc[0] == pytest.approx(100 * 10 / 105)
    assert result.relative
    with pytest.raises(StatsInputError, match="3\\+ paired values"):
        bland_altman(frame, {"v": ("a", "b")}, by="g")


def test_limits_at_another_level():
    d = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    result = limits_of_agreement(d, level=0.9)
    assert result["loa_high"] == pytest.approx(3 + stats.norm.ppf(0.95) * d.std(ddof=1))


def test_dice_summary_per_structure():
    frame = pd.DataFrame(
        {
            "structure": ["psoas"] * 4 + ["iliacus"] * 3,
            "dice": [0.9, 0.8, 0.95, np.nan, 0.7, 0.75, 0.8],
        }
    )
    table = dice_summary(frame).set_index("structure")
    assert table.loc["psoas", "n"] == 3
    assert table.loc["psoas", "median"] == pytest.approx(0.9)
    assert table.loc["iliacus", "mean"] == pytest.approx(0.75)
    assert table.loc["iliacus", "p25"] == pytest.approx(np.percentile([0.7, 0.75, 0.8], 25))
    assert list(table.index) == ["iliacus", "psoas"]
