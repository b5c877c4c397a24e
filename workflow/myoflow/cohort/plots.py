"""Figures of the cohort statistics: each draws a result of :mod:`myoflow.cohort.stats`.

Every plotting function takes a results object or table (and the data points where a
scatter is drawn), an optional matplotlib ``ax``, and returns the figure. Nothing here
fits, averages or tests: lines, bands and limits are the numbers in the results. Figures
are made with ``matplotlib.figure.Figure`` (no pyplot state), and :func:`save_figure`
writes PNG and PDF atomically with only our software name as metadata.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from myoflow import __version__
from myoflow.cohort.stats.agreement import BlandAltman
from myoflow.cohort.stats.gam import GamResult
from myoflow.cohort.stats.regress import RegressionResult
from myoflow.core.io import atomic_path

SEX_COLOURS = {"F": "#c2185b", "M": "#1565c0"}
SEX_NAMES = {"F": "women", "M": "men"}
SOFTWARE = f"myoflow {__version__}"
FORMATS = ("png", "pdf")

LABELS = {
    "vol_iliopsoas_total_ml": "Iliopsoas volume (ml)",
    "imi_ml_m2": "Iliopsoas muscle index (ml/m²)",
    "height_cm": "Height (cm)",
    "bmi": "BMI (kg/m²)",
    "age": "Age (years)",
    "psoas_max_csa_total_cm2": "Maximum psoas CSA, both sides (cm²)",
}


def _label(column: str) -> str:
    return LABELS.get(column, column)


def _axes(ax: Axes | None, size: tuple[float, float] = (5.0, 4.0)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _points(ax: Axes, x, y, colour: str) -> None:
    """Data points under the lines: rasterised in vector output, fainter as n grows."""
    alpha = float(np.clip(300.0 / max(len(x), 1), 0.03, 0.3))
    ax.plot(x, y, ".", ms=2, alpha=alpha, color=colour, rasterized=True, zorder=1)


def _line(ax: Axes, x, y, colour: str, **kwargs) -> None:
    """A result's line, on top of the points with a white edge so it shows through them."""
    halo = [patheffects.withStroke(linewidth=3.5, foreground="white")]
    ax.plot(x, y, color=colour, lw=1.8, zorder=3, path_effects=halo, **kwargs)


def _colour(group: object, index: int) -> str:
    return SEX_COLOURS.get(str(group), f"C{index}")


def _name(group: object) -> str:
    return SEX_NAMES.get(str(group), str(group))


def bland_altman_plot(
    result: BlandAltman, measure: str | None = None, *, ax: Axes | None = None
) -> Figure:
    """Differences against means, with the bias and limits of agreement and their CIs."""
    summary, points = result.summary, result.points
    measure = measure if measure is not None else str(summary["measure"].iloc[0])
    row = summary[summary["measure"] == measure].iloc[0]
    pts = points[points["measure"] == measure]
    fig, ax = _axes(ax)
    ax.plot(pts["mean"], pts["difference"], "o", ms=3, alpha=0.6, color="0.25", rasterized=True)
    for name, colour, style in (
        ("bias", "k", "-"),
        ("loa_low", "C3", "--"),
        ("loa_high", "C3", "--"),
    ):
        low, high = (
            (row["bias_ci_low"], row["bias_ci_high"])
            if name == "bias"
            else (
                row[f"{name}_ci_low"],
                row[f"{name}_ci_high"],
            )
        )
        ax.axhspan(low, high, color=colour, alpha=0.12, lw=0)
        ax.axhline(row[name], color=colour, ls=style, lw=1.2)
        ax.annotate(
            f"{row[name]:.1f}",
            xy=(1.0, row[name]),
            xycoords=("axes fraction", "data"),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    unit = "%" if result.relative else ""
    ax.set_xlabel(f"Mean of method and reference: {measure}")
    ax.set_ylabel(f"Method - reference{' (%)' if unit else ''}")
    ax.set_title(f"{measure}: bias {row['bias']:.2f}{unit}, n = {int(row['n'])}", fontsize=10)
    return fig


def scatter_fit_plot(
    data: pd.DataFrame,
    x: str,
    y: str,
    *,
    regression: RegressionResult | None = None,
    correlations: pd.DataFrame | None = None,
    by: str = "sex",
    ax: Axes | None = None,
) -> Figure:
    """Scatter of ``y`` on ``x`` per group, the fitted lines and bands of ``regression``
    (its ``predictions`` over ``x``), and r [CI] from a :func:`correlations` table."""
    fig, ax = _axes(ax)
    groups = sorted(data[by].dropna().unique())
    for i, group in enumerate(groups):
        rows = data[data[by] == group]
        colour = _colour(group, i)
        label = _name(group)
        if correlations is not None:
            match = correlations[
                (correlations["x"] == x) & (correlations["y"] == y) & (correlations[by] == group)
            ]
            if len(match) == 0:
                match = correlations[
                    (correlations["x"] == y)
                    & (correlations["y"] == x)
                    & (correlations[by] == group)
                ]
            if len(match):
                r = match.iloc[0]
                label += f": r = {r['r']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        _points(ax, rows[x], rows[y], colour)
        if regression is not None and len(regression.predictions):
            line = regression.predictions[regression.predictions[by] == group]
            ax.fill_between(
                line[x], line["ci_low"], line["ci_high"], color=colour, alpha=0.4, lw=0, zorder=2
            )
            _line(ax, line[x], line["fit"], colour)
        ax.plot([], [], "o", color=colour, label=label)
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.legend(fontsize=8, frameon=False)
    return fig


def volume_height_plot(
    data: pd.DataFrame,
    regression: RegressionResult,
    correlations: pd.DataFrame | None = None,
    *,
    volume: str = "vol_iliopsoas_total_ml",
    ax: Axes | None = None,
) -> Figure:
    """Iliopsoas volume against height by sex, with the regression lines of ``regression``."""
    return scatter_fit_plot(
        data, "height_cm", volume, regression=regression, correlations=correlations, ax=ax
    )


def imi_bmi_plot(
    data: pd.DataFrame,
    correlations: pd.DataFrame,
    regression: RegressionResult | None = None,
    *,
    ax: Axes | None = None,
) -> Figure:
    """IMI against BMI by sex, labelled with r and its CI (and lines if given)."""
    return scatter_fit_plot(
        data, "bmi", "imi_ml_m2", regression=regression, correlations=correlations, ax=ax
    )


def gam_plot(
    result: GamResult,
    metric: str | None = None,
    *,
    data: pd.DataFrame | None = None,
    by: str = "sex",
    ax: Axes | None = None,
) -> Figure:
    """GAM curves (e.g. IMI on age) per group with their pointwise bands; data if given."""
    curves = result.curves
    metric = metric if metric is not None else str(curves["metric"].iloc[0])
    curves = curves[curves["metric"] == metric]
    fig, ax = _axes(ax)
    for i, (group, curve) in enumerate(curves.groupby(by, sort=True)):
        colour = _colour(group, i)
        if data is not None:
            rows = data[data[by] == group]
            _points(ax, rows[result.x], rows[metric], colour)
        ax.fill_between(
            curve["x"], curve["ci_low"], curve["ci_high"], color=colour, alpha=0.4, lw=0, zorder=2
        )
        _line(ax, curve["x"], curve["fit"], colour, label=_name(group))
    ax.set_xlabel(_label(result.x))
    ax.set_ylabel(_label(metric))
    ax.legend(fontsize=8, frameon=False, title=f"{result.level:.0%} pointwise band")
    return fig


def percentile_plot(
    table: pd.DataFrame,
    metric: str,
    *,
    x: str = "age_group",
    by: str = "sex",
    percentiles: Sequence[str] = ("p10", "p50", "p90"),
    ax: Axes | None = None,
) -> Figure:
    """Percentile curves of ``metric`` across age groups (or BMI classes), one set per sex."""
    rows = table[table["metric"] == metric]
    fig, ax = _axes(ax)
    categories = list(pd.unique(rows[x].astype(str)))
    if isinstance(rows[x].dtype, pd.CategoricalDtype):
        categories = [str(c) for c in rows[x].cat.categories if c in set(rows[x])]
    position = {c: i for i, c in enumerate(categories)}
    styles = {percentiles[0]: ":", percentiles[-1]: ":"} if len(percentiles) > 1 else {}
    for i, (group, part) in enumerate(rows.groupby(by, sort=True)):
        xs = part[x].astype(str).map(position).to_numpy()
        order = np.argsort(xs)
        for column in percentiles:
            ax.plot(
                xs[order],
                part[column].to_numpy()[order],
                styles.get(column, "-"),
                marker="o",
                ms=3,
                color=_colour(group, i),
                label=f"{_name(group)} {column}",
            )
    ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(_label(metric))
    ax.legend(fontsize=7, frameon=False, ncol=2)
    return fig


def profile_plot(
    table: pd.DataFrame,
    *,
    group: str = "age_group",
    side: str = "left",
    where: Mapping[str, object] | None = None,
    centre: str = "p50",
    band: tuple[str, str] | None = ("p10", "p90"),
    ax: Axes | None = None,
) -> Figure:
    """CSA along the cranio-caudal axis (vertical) per group, from :func:`profile_percentiles`.

    Args:
        table: tidy profile summary (group columns, side, position, percentiles).
        group: column whose levels get one line each.
        side: which side to draw.
        where: further filters, e.g. ``{"sex": "F"}``.
        centre: column drawn as the line; ``band`` columns shaded around it.
    """
    rows = table[table["side"] == side]
    for column, value in (where or {}).items():
        rows = rows[rows[column] == value]
    fig, ax = _axes(ax, (4.0, 5.0))
    for i, (level, part) in enumerate(rows.groupby(group, sort=True, observed=True)):
        part = part.sort_values("position")
        if band is not None:
            ax.fill_betweenx(
                part["position"], part[band[0]], part[band[1]], color=f"C{i}", alpha=0.12, lw=0
            )
        ax.plot(part[centre], part["position"], color=f"C{i}", lw=1.5, label=str(level))
    ax.set_xlabel(f"Psoas CSA, {side} ({centre}; cm²)")
    ax.set_ylabel("Position along the muscle (fraction of length)")
    title = ", ".join(f"{k} {v}" for k, v in (where or {}).items())
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False, title=group.replace("_", " "))
    return fig


def save_figure(
    fig: Figure,
    path: str | os.PathLike[str],
    formats: Sequence[str] = FORMATS,
    *,
    dpi: int = 200,
) -> list[Path]:
    """Write ``fig`` as ``path`` with each suffix in ``formats`` (PNG raster, PDF vector).

    Each file is written atomically (:func:`myoflow.core.io.atomic_path`); the only metadata is
    our software name (no matplotlib version, no creation date), so the bytes depend on
    the figure alone.
    """
    base = Path(path)
    written = []
    for fmt in formats:
        target = base.with_suffix(f".{fmt}")
        if fmt == "png":
            metadata: dict[str, str | None] = {"Software": SOFTWARE}
        elif fmt == "pdf":
            metadata = {"Creator": SOFTWARE, "Producer": None, "CreationDate": None}
        elif fmt == "svg":
            metadata = {"Creator": SOFTWARE, "Date": None, "Format": None, "Type": None}
        else:
            raise ValueError(f"unsupported figure format {fmt!r}; use png, pdf or svg")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)
        written.append(target)
    return written
