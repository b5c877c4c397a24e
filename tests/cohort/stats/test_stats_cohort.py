"""The analysis table: joins, exclusions by stage and reason, and accounting to the sheet."""

from __future__ import annotations

import pandas as pd
import pytest

from myoflow.cohort.stats._common import StatsInputError
from myoflow.cohort.stats.cohort import (
    STAGES,
    AccountingError,
    AnalysisCohort,
    build_analysis_table,
    check_accounting,
    phenotype_problems,
)
from myoflow.core.io import read_tsv
from myoflow.synth.cohort import CohortSpec, generate_cohort


def _phenotypes(n: int = 8) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "participant_id": [f"P{i}" for i in range(n)],
            "sex": ["F", "M"] * (n // 2),
            "age": [50.0 + i for i in range(n)],
            "height_cm": [160.0 + i for i in range(n)],
            "weight_kg": [70.0] * n,
        }
    ).assign(bmi=lambda d: (d["weight_kg"] / (d["height_cm"] / 100) ** 2).round(2))


def _metrics(ids) -> pd.DataFrame:
    return pd.DataFrame({"participant_id": list(ids), "imi_ml_m2": 200.0})


def test_every_stage_files_its_participants_once_and_counts_add_up():
    phen = _phenotypes(10)
    sheet = phen[["participant_id"]]
    metrics = _metrics(phen["participant_id"][[0, 1, 2, 3, 4, 5, 6, 8, 9]])  # P7 has none
    qc = pd.DataFrame(
        {
            "participant_id": ["P0", "P1", "P2", "P3", "P4", "P5", "P7", "P8"],  # P6, P9 missing
            "qc_status": ["pass", "fail_swap", "pass", "pass", "pass", "pass", "pass", "pass"],
            "qc_reason": ["", "fat-water swap", "", "", "", "", "", ""],
        }
    )
    upstream = pd.DataFrame(
        {
            "participant_id": ["P2", "P2", "P9"],
            "stage": ["landmarks", "ingestion", "ingestion"],
            "reason": ["no_hips", "truncated_series", "missing_station"],
        }
    )
    phen.loc[3, "height_cm"] = 17.5  # implausible (and BMI no longer matches)
    phen.loc[4, "sex"] = None  # missing
    cohort = build_analysis_table(sheet, phen, metrics, qc=qc, exclusions=upstream)

    filed = cohort.exclusions.set_index("participant_id")
    assert filed.loc["P2", ["stage", "reason"]].tolist() == ["ingestion", "truncated_series"]
    assert filed.loc["P9", "stage"] == "ingestion"  # ingestion wins over missing QC
    assert filed.loc["P1", ["stage", "reason", "detail"]].tolist() == [
        "qc",
        "fail_swap",
        "fat-water swap",
    ]
    assert filed.loc["P6", ["stage", "reason"]].tolist() == ["qc", "qc_missing"]
    assert filed.loc["P7", ["stage", "reason"]].tolist() == ["metrics", "metrics_missing"]
    assert filed.loc["P3", ["reason", "detail"]].tolist() == [
        "implausible_phenotype",
        "height_cm 17.5 outside 100-230",
    ]
    assert filed.loc["P4", ["reason", "detail"]].tolist() == ["missing_phenotype", "sex empty"]
    assert sorted(cohort.table["participant_id"]) == ["P0", "P5", "P8"]
    assert {"imi_ml_m2", "qc_status", "height_cm"} <= set(cohort.table.columns)
    check_accounting(sheet, cohort)

    flow = cohort.flow().set_index("stage")
    assert list(flow.index) == list(STAGES)
    assert flow.loc["ingestion", ["n_in", "excluded", "n_out"]].tolist() == [10, 2, 8]
    assert flow.loc["qc", "excluded"] == 2 and flow.loc["phenotype", "n_out"] == 3
    counts = cohort.exclusion_counts()
    assert counts["n"].sum() == 7
    assert counts.iloc[0].tolist() == ["ingestion", "missing_station", 1]


def test_limits_are_configurable_and_bmi_must_match_weight_and_height():
    phen = _phenotypes(4)
    phen.loc[0, "age"] = 130.0
    phen.loc[1, "bmi"] = 35.0
    default = phenotype_problems(phen)
    assert default["participant_id"].tolist() == ["P0", "P1"]
    assert default["detail"].iloc[1].startswith("bmi 35.0 but weight/height^2 27.")
    wider = phenotype_problems(phen, ranges={"age": (0.0, 140.0)}, bmi_tolerance=None)
    assert wider.empty
    stricter = phenotype_problems(phen, ranges={"height_cm": (161.0, 230.0)}, bmi_tolerance=None)
    assert stricter["participant_id"].tolist() == ["P0"]


def test_text_and_unknown_sex_are_implausible():
    phen = _phenotypes(4).astype({"age": object})
    phen.loc[0, "age"] = "unknown"
    phen.loc[1, "sex"] = "X"
    problems = phenotype_problems(phen).set_index("participant_id")
    assert problems.loc["P0", "detail"] == "age unknown"
    assert problems.loc["P1", ["reason", "detail"]].tolist() == ["implausible_phenotype", "sex X"]


def test_synthetic_bad_phenotypes_are_all_excluded(tmp_path):
    spec = CohortSpec(
        out=tmp_path, participants=120, protocol="nako", seed=61, truth_only=True, bad_inputs=0.1
    )
    generate_cohort(spec)
    phen, truth = read_tsv(tmp_path / "phenotypes.tsv"), read_tsv(tmp_path / "truth.tsv")
    bad = read_tsv(tmp_path / "bad_inputs.tsv")
    cohort = build_analysis_table(phen[["participant_id"]], phen, truth)
    check_accounting(phen, cohort)
    assert len(bad) == 12
    assert sorted(cohort.exclusions["participant_id"]) == sorted(bad["participant_id"])
    reasons = cohort.exclusions.set_index("participant_id")["reason"]
    for pid, case in zip(bad["participant_id"], bad["case"], strict=True):
        assert reasons[pid] == {"missing_phenotype": "missing_phenotype"}.get(
            case, "implausible_phenotype"
        )
    assert len(cohort.table) == 108


def test_no_exclusions_gives_an_empty_table_with_the_columns():
    phen = _phenotypes(4)
    cohort = build_analysis_table(phen, phen, _metrics(phen["participant_id"]))
    assert cohort.exclusions.empty
    assert list(cohort.exclusions.columns) == ["participant_id", "stage", "reason", "detail"]
    assert cohort.flow()["n_out"].iloc[-1] == 4
    check_accounting(phen, cohort)


def test_accounting_catches_lost_duplicated_and_double_counted_participants():
    phen = _phenotypes(6)
    good = build_analysis_table(phen, phen, _metrics(phen["participant_id"][:5]))
    check_accounting(phen, good)
    lost = AnalysisCohort(good.table.iloc[1:], good.exclusions, 6)
    with pytest.raises(AccountingError, match=r"1 sheet participant\(s\) are nowhere: \['P0'\]"):
        check_accounting(phen, lost)
    twice = AnalysisCohort(pd.concat([good.table, good.table.iloc[:1]]), good.exclusions, 6)
    with pytest.raises(AccountingError, match=r"analysis table counts \['P0'\] more than once"):
        check_accounting(phen, twice)
    both = AnalysisCohort(
        good.table,
        pd.concat([good.exclusions, good.exclusions.assign(participant_id="P1")]),
        6,
    )
    with pytest.raises(AccountingError, match=r"\['P1'\] are both included and excluded"):
        check_accounting(phen, both)
    stranger = AnalysisCohort(good.table, good.exclusions.assign(participant_id="Q9"), 6)
    with pytest.raises(AccountingError, match="not on the sheet"):
        check_accounting(phen, stranger)


def test_bad_tables_are_refused_with_the_cause():
    phen = _phenotypes(4)
    metrics = _metrics(phen["participant_id"])
    with pytest.raises(StatsInputError, match=r"metrics table lists participant\(s\) more"):
        build_analysis_table(phen, phen, pd.concat([metrics, metrics.iloc[:1]]))
    with pytest.raises(StatsInputError, match="column 'age' is in both"):
        build_analysis_table(phen, phen, metrics.assign(age=1.0))
    with pytest.raises(StatsInputError, match="unknown stage"):
        upstream = pd.DataFrame({"participant_id": ["P0"], "stage": ["ingest"], "reason": ["x"]})
        build_analysis_table(phen, phen, metrics, exclusions=upstream)
    with pytest.raises(StatsInputError, match="QC table lacks column"):
        build_analysis_table(phen, phen, metrics, qc=metrics)
