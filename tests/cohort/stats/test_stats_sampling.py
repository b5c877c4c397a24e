"""Stratified sampling: exact stratum counts, reproducible, independent of row order."""

from __future__ import annotations

import pandas as pd
import pytest

from myoflow.cohort.stats.groups import cut
from myoflow.cohort.stats.sampling import (
    SamplingError,
    allocate,
    balanced_proportions,
    reference_proportions,
    stratified_sample,
)
from myoflow.synth.phenotypes import sample_cohort

BANDS = {"44-53": 0.35, "54-63": 0.30, "64-73": 0.25, "74-82": 0.10}


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    df = sample_cohort(6106, 1500, "ukbb")
    df["age_band"] = cut(df["age"], (54.0, 64.0, 74.0), list(BANDS))
    return df


def test_counts_follow_the_targets_exactly(cohort):
    sample = stratified_sample(cohort, 301, balanced_proportions(BANDS), seed=1)
    counts = sample.table.groupby(["sex", "age_band"], observed=True).size()
    assert len(sample.table) == 301
    assert sample.table["participant_id"].is_unique
    exact = {(s, b): 301 * w / 2 for b, w in BANDS.items() for s in ("F", "M")}
    for key, count in counts.items():
        assert abs(count - exact[key]) < 1  # largest remainder: within one of the exact share
    assert counts[("F", "44-53")] == counts[("M", "44-53")]  # balanced by sex (52.675 each)
    allocation = sample.allocation.set_index(["sex", "age_band"])
    assert allocation["drawn"].to_dict() == counts.to_dict()
    assert allocation["proportion"].sum() == pytest.approx(1.0)


def test_same_seed_same_sample_whatever_the_row_order(cohort):
    proportions = balanced_proportions(BANDS)
    first = stratified_sample(cohort, 120, proportions, seed=7).table["participant_id"]
    shuffled = cohort.sample(frac=1.0, random_state=3)
    again = stratified_sample(shuffled, 120, proportions, seed=7).table["participant_id"]
    other = stratified_sample(cohort, 120, proportions, seed=8).table["participant_id"]
    assert list(first) == list(again)
    assert set(first) != set(other)


def test_reference_weights_and_shortfall(cohort):
    reference = pd.DataFrame({"sex": ["F"] * 3 + ["M"], "band": ["a", "a", "b", "a"]})
    assert reference_proportions(reference, ["sex", "band"]) == {
        ("F", "a"): 0.5,
        ("F", "b"): 0.25,
        ("M", "a"): 0.25,
    }
    assert allocate({("a",): 1, ("b",): 1, ("c",): 1}, 10) == {("a",): 4, ("b",): 3, ("c",): 3}
    with pytest.raises(SamplingError, match=r"'age_band': '74-82'\} has \d+ participants"):
        stratified_sample(cohort, 1400, {("F", "74-82"): 1.0}, seed=1)
