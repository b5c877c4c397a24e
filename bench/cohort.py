"""Benchmark the cohort statistics and figures at biobank scale: seconds per step.

Run: ``.venv/bin/python bench/cohort.py [--participants 100000] [--protocol ukbb] [--keep DIR]``

A truth-only synthetic cohort (``myoflow synth --truth-only``; its generation is timed but
not part of the total) stands in for the pipeline's outputs: ``truth.tsv`` plays the
metrics table. Two stand-ins are added because no stage produces them yet: 100-bin psoas
CSA profiles per side (the synthetic muscle's own profile shape times each participant's
maximum CSA, with 3 % noise per bin), and manual volumes plus Dice scores for a stratified
sample of 200 participants. The baseline, measured in the same run, is reading the two
TSVs. Target (issue 6): everything after the cohort exists in under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from myoflow import figures
from myoflow.io import read_tsv
from myoflow.stats import (
    agreement,
    cohort,
    correlate,
    describe,
    gam,
    normative,
    regress,
    sampling,
    ttests,
)
from myoflow.stats.groups import UKBB_AGE_EDGES, age_groups
from myoflow.synth.cohort import CohortSpec, generate_cohort
from myoflow.synth.psoas_profile import relative_csa

TARGET_S = 60.0
BINS = 100


class Timer:
    """Collects (step, seconds) and prints each step as it finishes."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []

    def __call__(self, name: str, func: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = func()
        seconds = time.perf_counter() - started
        self.steps.append((name, seconds))
        print(f"  {name:<52s} {seconds:7.2f} s", flush=True)
        return result


def stand_in_profiles(metrics: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    """100 numbered CSA columns per side: profile shape x max CSA x (1 + 3 % noise)."""
    rng = np.random.default_rng(seed)
    shape = relative_csa((np.arange(BINS) + 0.5) / BINS)
    columns = {}
    for side in ("left", "right"):
        csa = metrics[f"psoas_max_csa_{side}_cm2"].to_numpy()[:, None] * shape
        csa *= 1.0 + 0.03 * rng.standard_normal(csa.shape)
        for b in range(BINS):
            columns[f"psoas_csa_profile_{side}_{b:02d}"] = csa[:, b]
    return pd.concat([metrics, pd.DataFrame(columns, index=metrics.index)], axis=1)


def stand_in_annotations(table: pd.DataFrame, seed: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manual volumes (3 % noise, -5 ml bias) and Dice scores for 200 sampled participants."""
    bands = table.assign(age_band=age_groups(table["age"], UKBB_AGE_EDGES).astype(str))
    weights = bands["age_band"].value_counts(normalize=True).to_dict()
    sample = sampling.stratified_sample(
        bands, 200, sampling.balanced_proportions(weights), strata=("sex", "age_band"), seed=seed
    ).table
    rng = np.random.default_rng(seed)
    manual = sample[["participant_id"]].copy()
    volume = sample["vol_iliopsoas_total_ml"].to_numpy()
    manual["manual_vol_iliopsoas_total_ml"] = (
        volume * (1 + 0.03 * rng.standard_normal(len(volume))) - 5
    )
    structures = ("psoas_major_left", "psoas_major_right", "iliacus_left", "iliacus_right")
    dice = pd.DataFrame(
        {
            "participant_id": np.repeat(sample["participant_id"].to_numpy(), len(structures)),
            "structure": np.tile(structures, len(sample)),
            "dice": rng.beta(60, 4, len(sample) * len(structures)),
        }
    )
    return manual, dice


def run(folder: Path, participants: int, protocol: str) -> None:
    timer = Timer()
    print(f"cohort: {participants} participants ({protocol}, truth-only) in {folder}")
    started = time.perf_counter()
    generate_cohort(
        CohortSpec(
            out=folder, participants=participants, protocol=protocol, seed=6, truth_only=True
        )
    )
    print(
        f"  {'setup: myoflow synth --truth-only (not in total)':<52s} "
        f"{time.perf_counter() - started:7.2f} s"
    )

    phenotypes, truth = timer(
        "baseline: read phenotypes.tsv + truth.tsv",
        lambda: (read_tsv(folder / "phenotypes.tsv"), read_tsv(folder / "truth.tsv")),
    )
    metrics = timer("stand-in CSA profiles (2 x 100 columns)", lambda: stand_in_profiles(truth))
    built = timer(
        "analysis table, exclusions, accounting",
        lambda: cohort.build_analysis_table(phenotypes[["participant_id"]], phenotypes, metrics),
    )
    cohort.check_accounting(phenotypes, built)
    table = normative.with_strata(built.table)
    timer("Table 1 (demographics by sex)", lambda: describe.table1(table))
    timer("Table 2 (volumes by sex, Welch t-tests)", lambda: describe.table2(table))
    timer(
        "asymmetry (paired t) and handedness (ANOVA, t)",
        lambda: (
            ttests.asymmetry_tests(table),
            ttests.one_way_anova(table, "iliopsoas_asymmetry_pct", "handedness"),
            ttests.welch_ttests(table, ["iliopsoas_asymmetry_pct"], "handedness", "right", "left"),
        ),
    )
    corr = timer("correlations (Fisher z CIs) by sex", lambda: correlate.correlations(table))
    lines = timer(
        "regressions by sex (formula API, prediction bands)",
        lambda: (
            regress.ols(table, "vol_iliopsoas_total_ml ~ height_cm", predict_over="height_cm"),
            regress.ols(table, "imi_ml_m2 ~ age + bmi"),
        ),
    )[0]
    gams = timer(
        "GAMs on age by sex (IMI, max CSA; REML)",
        lambda: gam.fit_gam(table, ["imi_ml_m2", "psoas_max_csa_total_cm2"], method="REML"),
    )
    pct = timer(
        "percentiles by age group and sex (6 metrics)", lambda: normative.percentiles(table)
    )
    timer("max psoas CSA by WHO BMI class and sex", lambda: normative.by_bmi_class(table))
    profiles = timer(
        "CSA profiles by age group / BMI class and sex",
        lambda: (
            normative.profile_percentiles(table, by=("sex", "age_group")),
            normative.profile_percentiles(table, by=("sex", "bmi_class")),
        ),
    )[0]
    manual, dice = timer(
        "stratified sample of 200 (stand-in manual)", lambda: stand_in_annotations(table)
    )
    annotated = table.merge(manual, on="participant_id", how="left")
    ba = timer(
        "Bland-Altman and Dice tables",
        lambda: (
            agreement.bland_altman(
                annotated,
                {"iliopsoas volume": ("vol_iliopsoas_total_ml", "manual_vol_iliopsoas_total_ml")},
            ),
            agreement.dice_summary(dice),
        ),
    )[0]
    out = folder / "figures"
    timer(
        "figures: 6 x (PNG + PDF), atomic",
        lambda: [
            figures.save_figure(fig, out / name)
            for name, fig in (
                ("bland_altman", figures.bland_altman_plot(ba)),
                ("volume_height", figures.volume_height_plot(table, lines, corr)),
                ("imi_bmi", figures.imi_bmi_plot(table, corr)),
                ("imi_age_gam", figures.gam_plot(gams, "imi_ml_m2", data=table)),
                ("csa_percentiles", figures.percentile_plot(pct, "psoas_max_csa_total_cm2")),
                ("csa_profile", figures.profile_plot(profiles, where={"sex": "F"})),
            )
        ],
    )
    total = sum(seconds for _, seconds in timer.steps)
    baseline = timer.steps[0][1]
    print(f"  {'total (baseline included)':<52s} {total:7.2f} s")
    print(
        f"total {total:.1f} s = {total / baseline:.1f} x the baseline read of "
        f"{baseline:.2f} s; target {TARGET_S:.0f} s: {'met' if total < TARGET_S else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=100_000)
    parser.add_argument("--protocol", default="ukbb", choices=("ukbb", "nako"))
    parser.add_argument("--keep", type=Path, help="write the cohort and figures here")
    args = parser.parse_args()
    if args.keep:
        run(args.keep, args.participants, args.protocol)
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp), args.participants, args.protocol)


if __name__ == "__main__":
    main()
