"""Figures draw the numbers of the results they are given (doctored numbers show up as given),
and save_figure writes PNG and PDF atomically with only our name as metadata."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from myoflow.cohort import plots as figures
from myoflow.cohort.stats.agreement import bland_altman
from myoflow.cohort.stats.correlate import correlations
from myoflow.cohort.stats.gam import fit_gam
from myoflow.cohort.stats.normative import percentiles, profile_percentiles, with_strata
from myoflow.cohort.stats.regress import ols
from myoflow.synth.phenotypes import sample_cohort


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return with_strata(sample_cohort(6107, 300, "nako"))


def _lines(ax) -> list:
    return [line for line in ax.get_lines() if len(line.get_xdata())]


def test_bland_altman_draws_the_given_limits(cohort):
    frame = cohort.assign(manual=cohort["vol_iliopsoas_total_ml"] * 0.98)
    result = bland_altman(frame, {"volume": ("vol_iliopsoas_total_ml", "manual")})
    result.summary.loc[0, ["bias", "loa_low", "loa_high"]] = [123.0, -7.0, 456.0]  # doctored
    fig = figures.bland_altman_plot(result)
    ax = fig.axes[0]
    levels = sorted(line.get_ydata()[0] for line in ax.get_lines()[1:])
    assert levels == [-7.0, 123.0, 456.0]
    points = ax.get_lines()[0]
    assert points.get_xdata() == pytest.approx(result.points["mean"].to_numpy())
    assert "bias 123.00" in ax.get_title()


def test_scatter_uses_the_regression_predictions_and_correlations(cohort):
    regression = ols(cohort, "vol_iliopsoas_total_ml ~ height_cm", predict_over="height_cm")
    regression.predictions["fit"] = 1000.0  # doctored: a flat line at 1000
    corr = correlations(cohort, [("vol_iliopsoas_total_ml", "height_cm")])
    corr["r"] = 0.123
    fig = figures.volume_height_plot(cohort, regression, corr)
    ax = fig.axes[0]
    flat = [line for line in _lines(ax) if np.all(line.get_ydata() == 1000.0)]
    assert len(flat) == 2  # one line per sex, exactly the predictions
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    n_women, n_men = (int((cohort["sex"] == s).sum()) for s in ("F", "M"))
    assert labels[0].startswith(f"women (n = {n_women}): r = 0.12 [")
    assert labels[1].startswith(f"men (n = {n_men}): r = 0.12")


def test_gam_plot_draws_curves_on_a_given_axis(cohort):
    result = fit_gam(cohort, "imi_ml_m2", by="sex", method="GCV", grid=np.linspace(20, 70, 11))
    fig = Figure()
    ax = fig.add_subplot()
    assert figures.gam_plot(result, ax=ax) is fig
    drawn = {line.get_label(): line.get_ydata() for line in _lines(ax)}
    women = result.curves[result.curves["sex"] == "F"]["fit"].to_numpy()
    assert drawn["women"] == pytest.approx(women)


def test_percentile_and_profile_plots_follow_the_tables(cohort):
    table = percentiles(cohort, ["psoas_max_csa_total_cm2"])
    fig = figures.percentile_plot(table, "psoas_max_csa_total_cm2")
    men = table[table["sex"] == "M"]
    p90 = [
        line
        for line in _lines(fig.axes[0])
        if line.get_color() == figures.SEX_COLOURS["M"]
        and line.get_linestyle() == figures.PERCENTILE_STYLES["p90"]
    ]
    assert len(p90) == 1
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == [str(c) for c in table["age_group"].cat.categories]
    drawn = dict(zip(ticks, p90[0].get_ydata(), strict=True))
    for group, value in zip(men["age_group"].astype(str), men["p90"], strict=True):
        assert drawn[group] == pytest.approx(value)

    t = (np.arange(100) + 0.5) / 100
    data = cohort.assign(
        psoas_csa_profile_left=list(np.outer(cohort["psoas_max_csa_left_cm2"], np.sin(np.pi * t))),
        psoas_csa_profile_right=list(
            np.outer(cohort["psoas_max_csa_right_cm2"], np.sin(np.pi * t))
        ),
    )
    summary = profile_percentiles(data, by=("sex", "age_group"))
    fig = figures.profile_plot(summary, where={"sex": "F"}, side="right")
    first = _lines(fig.axes[0])[0]
    expected = summary.query("sex == 'F' and side == 'right'")
    expected = expected[expected["age_group"] == expected["age_group"].cat.categories[0]]
    assert first.get_xdata() == pytest.approx(expected["p50"].to_numpy())
    assert first.get_ydata() == pytest.approx(expected["position"].to_numpy())


def test_save_figure_writes_both_formats_with_only_our_name(tmp_path, cohort):
    corr = correlations(cohort, [("imi_ml_m2", "bmi")])
    fig = figures.imi_bmi_plot(cohort, corr)
    written = figures.save_figure(fig, tmp_path / "imi_bmi")
    assert [p.name for p in written] == ["imi_bmi.png", "imi_bmi.pdf"]
    png, pdf = (p.read_bytes() for p in written)
    assert png.startswith(b"\x89PNG") and pdf.startswith(b"%PDF")
    for data in (png, pdf):
        assert b"myoflow" in data
        assert b"matplotlib" not in data.lower()
    assert b"CreationDate" not in pdf and b"Producer" not in pdf
    again = figures.save_figure(fig, tmp_path / "again")
    assert [p.read_bytes() for p in again] == [png, pdf]  # same figure, same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "again.pdf", "again.png", "imi_bmi.pdf", "imi_bmi.png",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unsupported figure format"):
        figures.save_figure(fig, tmp_path / "x", formats=("bmp",))
