"""Every statistic estimated or marked not estimable (n = k): a cohort of 4 women and 1
man, through gather, analyse, plot and report; the runner's warnings and notes."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_cohort_stage import command, gather, synth_cohort, write_pipeline

from myoflow.cohort.analysis_runner import Runner
from myoflow.cohort.estimable import finite_table
from myoflow.cohort.plots import percentile_plot
from myoflow.cohort.report import ReportInputs, render_report
from myoflow.commands import analyse, plot, report
from myoflow.core.labels import MUSCLES

ROOT = Path(__file__).parents[2]
ID = "participant_id"
DEGENERATE = re.compile(r"\b-?(nan|inf|infinity)\b", re.IGNORECASE)
STATS = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["stats"]


def _visible(page: str) -> str:
    """The page without its embedded images (base64 may hold any letters)."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)


@pytest.fixture(scope="module")
def one_man(tmp_path_factory) -> Path:
    """4 women and 1 man, with per-side fat fractions (0-1, as metrics.json), analysed,
    plotted and reported."""
    folder = tmp_path_factory.mktemp("one_man")
    phenotypes, truth = synth_cohort(folder / "synth", 40, seed=5)
    women = phenotypes.loc[phenotypes["sex"] == "F", ID].iloc[:4]
    man = phenotypes.loc[phenotypes["sex"] == "M", ID].iloc[:1]
    keep = pd.concat([women, man])
    truth = truth[truth[ID].isin(keep)].reset_index(drop=True)
    for muscle in MUSCLES:
        for side, shift in (("left", 0.0), ("right", 0.002)):
            truth[f"ff_{muscle}_{side}"] = truth[f"ff_{muscle}"] + shift
    write_pipeline(folder, phenotypes[phenotypes[ID].isin(keep)], truth)
    assert gather(folder) == 0
    cohort = folder / "cohort"
    manifest = folder / "synth" / "manifest.json"
    assert (
        command(
            analyse,
            f"--participants={cohort / 'participants.tsv'}",
            f"--profiles={cohort / 'csa_profiles.tsv'}",
            f"--exclusions={cohort / 'exclusions.tsv'}",
            f"--stats={json.dumps(STATS)}",
            f"--manifest={manifest}",
            f"--out={cohort / 'tables'}",
        )
        == 0
    )
    assert (
        command(
            plot,
            f"--tables={cohort / 'tables'}",
            f"--participants={cohort / 'participants.tsv'}",
            f"--stats={json.dumps(STATS)}",
            f"--out={cohort / 'figures'}",
        )
        == 0
    )
    assert (
        command(
            report,
            f"--tables={cohort / 'tables'}",
            f"--figures={cohort / 'figures'}",
            f"--config={json.dumps({'stats': STATS})}",
            f"--out={cohort / 'report.html'}",
        )
        == 0
    )
    return cohort


def _tables(cohort: Path) -> dict[str, pd.DataFrame]:
    return {
        p.stem: pd.read_csv(p, sep="\t", dtype={ID: str}, keep_default_na=False)
        for p in sorted((cohort / "tables").glob("*.tsv"))
    }


def test_women_are_analysed_and_the_man_is_not_estimable(one_man):
    tables = _tables(one_man)
    t2 = tables["table2"].set_index("metric")
    assert (t2["n_F"] == 4).all() and (t2["n_M"] == 1).all()
    women = pd.to_numeric(t2["mean_F"])
    assert women.notna().all() and (pd.to_numeric(t2["sd_F"]) > 0).all()
    assert (t2["mean_M"] == "").all() and (t2["diff"] == "").all()
    assert t2["note"].str.startswith("not estimable (n = 1 men").all()
    asym = tables["asymmetry"]
    f, m = asym[asym["sex"] == "F"], asym[asym["sex"] == "M"]
    assert len(f) and pd.to_numeric(f["asym_pct_mean"]).notna().all()
    assert len(m) == len(f) and (m["note"] == "not estimable (n = 1; needs 3)").all()
    assert (m["asym_pct_mean"] == "").all()
    display = tables["table1_display"].set_index("Variable")
    assert display.loc["Age (years)", "Men (n = 1)"] == "not estimable (n = 1; needs 2)"
    assert "±" in display.loc["Age (years)", "Women (n = 4)"]
    # 4 and 1: too few for robust z-scores within either sex, so no flags are counted
    analyses = tables["analyses"].set_index("analysis")
    assert analyses.loc["outliers", "status"] == "skipped"
    assert "women: not estimable (n = 4; needs 5)" in analyses.loc["outliers", "message"]
    assert "men: not estimable (n = 1; needs 5)" in analyses.loc["outliers", "message"]


def test_fat_fraction_is_in_table2_in_percent(one_man):
    t2 = _tables(one_man)["table2"].set_index("metric")
    for muscle in ("psoas_major", "gluteus_minimus"):
        for side in ("left", "right"):
            women = float(t2.loc[f"ff_{muscle}_{side}_pct", "mean_F"])
            assert 1.0 < women < 35.0  # percent, not the stored fraction 0.01-0.35
    page = (one_man / "report.html").read_text()
    assert "Psoas major fat fraction, left (%)" in page
    assert "fat_fraction_age" in set(
        pd.read_csv(one_man / "figures" / "figures.tsv", sep="\t")["name"]
    )


def test_no_nan_or_inf_in_any_table_or_the_page(one_man):
    for path in sorted((one_man / "tables").glob("*.tsv")):
        text = path.read_text()
        assert not DEGENERATE.search(text), (path.name, DEGENERATE.search(text)[0])
    page = _visible((one_man / "report.html").read_text())
    assert not DEGENERATE.search(page)
    assert "not estimable (n = 1" in page


def test_the_papers_sit_beside_the_cohort_and_the_planted_values(one_man):
    papers = _tables(one_man)["papers"]
    volume = papers[papers["quantity"] == "Iliopsoas volume, total (ml)"].set_index("sex")
    assert volume.loc["women", "published"] == "542 ± 72"
    assert volume.loc["men", "cohort"] == "not estimable (n = 1)"
    assert volume.loc["women", "cohort"].endswith("(n = 4)")
    assert volume.loc["men", "planted"] == "815 ± 125"  # the manifest's planted mean and SD
    csa = papers[papers["quantity"].str.startswith("Maximum psoas CSA")].set_index("sex")
    assert csa.loc["men", "published"] == "37.9"


def test_an_analysis_keeps_its_warnings_and_the_report_shows_them_beside_it():
    run = Runner()

    def divides_by_zero() -> dict[str, pd.DataFrame]:
        with np.errstate(divide="warn"):
            slope = np.float64(1.0) / np.float64(0.0)
        warnings.warn("The design matrix is rank-deficient.", UserWarning, stacklevel=1)
        return {"correlations": pd.DataFrame({"x": ["a"], "y": ["b"], "n": [3], "r": [slope]})}

    run("correlations", divides_by_zero)
    result = run.result()
    said = result.analyses.set_index("analysis").loc["correlations", "warnings"]
    assert "divide by zero" in said and "rank-deficient" in said
    table = result.tables["correlations"]
    assert table["r"].isna().all() and table["note"].iloc[0] == "not estimable (n = 3): r"
    page = render_report(ReportInputs(tables=result.tables))
    section = page.split("Pearson correlations by sex", 1)[1].split("<h3>", 1)[0]
    assert "rank-deficient" in section and "divide by zero" in section


def test_finite_table_leaves_explained_rows_alone():
    frame = pd.DataFrame(
        {"n": [5, 1], "se": [np.inf, np.nan], "note": ["", "not estimable (n = 1)"]}
    )
    out = finite_table(frame)
    assert out["se"].isna().all()
    assert out["note"].tolist() == ["not estimable (n = 5): se", "not estimable (n = 1)"]


def test_percentile_curves_leave_a_gap_for_an_empty_band_and_differ_in_style():
    bands = pd.Categorical(["<30", "50-59"], categories=["<30", "30-49", "50-59"], ordered=True)
    table = pd.DataFrame(
        {"metric": "imi_ml_m2", "sex": "F", "age_group": bands, "n": [6, 7]}
        | {"p10": [1.0, 2.0], "p50": [2.0, 3.0], "p90": [3.0, 4.0]}
    )
    fig = percentile_plot(table, "imi_ml_m2")
    ax = fig.axes[0]
    drawn = [line for line in ax.lines if len(line.get_ydata())]
    assert len(drawn) == 3
    for line in drawn:
        assert np.isnan(np.asarray(line.get_ydata(), dtype=float)[1])  # no bridge over 30-49
    assert len({line.get_linestyle() for line in drawn}) == 3
    assert ax.get_xlabel() == "Age group (years)"
