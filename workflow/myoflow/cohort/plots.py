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
from myoflow.cohort.names import label
from myoflow.cohort.stats.agreement import BlandAltman
from myoflow.cohort.stats.gam import GamResult
from myoflow.cohort.stats.regress import RegressionResult
from myoflow.core.io import atomic_path

SEX_COLOURS = {"F": "#c2185b", "M": "#1565c0"}
SEX_NAMES = {"F": "women", "M": "men"}
SOFTWARE = f"myoflow {__version__}"
FORMATS = ("png", "pdf")

PERCENTILE_STYLES = {"p10": "--", "p50": "-", "p90": ":"}
"""Line style per percentile: the outer two differ from each other and from the median."""


def _label(column: str) -> str:
    return label(column)


def _axes(ax: Axes | None, size: tuple[float, float] = (5.0, 4.0)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _points(ax: Axes, x, y, colour: str, marker: str = "o") -> None:
    """Data points under the lines, rasterised in vector output.

    A few points are drawn large and nearly opaque; thousands small and faint, so that
    density still shows (alpha 0.85 at n <= 50 down to 0.08 at n = 100,000).
    """
    n = max(len(x), 1)
    alpha = float(np.clip(0.85 * (50.0 / n) ** 0.35, 0.08, 0.85))
    size = float(np.clip(6.0 * (50.0 / n) ** 0.2, 1.5, 6.0))
    ax.plot(
        x,
        y,
        marker,
        ls="none",
        ms=size,
        alpha=alpha,
        color=colour,
        mec="none",
        rasterized=True,
        zorder=1,
    )


def _line(ax: Axes, x, y, colour: str, **kwargs) -> None:
    """A result's line, on top of the points with a white edge so it shows through them."""
    halo = [patheffects.withStroke(linewidth=3.5, foreground="white")]
    ax.plot(x, y, color=colour, lw=1.8, zorder=3, path_effects=halo, **kwargs)


def _colour(group: object, index: int) -> str:
    return SEX_COLOURS.get(str(group), f"C{index}")


def _name(group: object) -> str:
    return SEX_NAMES.get(str(group), str(group))


def bland_altman_grid(result: BlandAltman) -> Figure:
    """Every measure's Bland-Altman plot in one grid: a row per measure, the difference in
    its unit (left) and in % of the pair mean (right), when the summary has both
    (``unit`` column, as :func:`myoflow.cohort.analysis` writes it)."""
    summary = result.summary
    units = list(dict.fromkeys(summary["unit"])) if "unit" in summary else [""]
    measures = list(dict.fromkeys(summary["measure"]))
    kinds = ["absolute", "%"] if "%" in units else ["absolute"]
    per_row = 2  # two measures side by side, each in its unit and in %
    nrows = -(-len(measures) // per_row)
    ncols = per_row * len(kinds)
    fig = Figure(figsize=(3.3 * ncols, 2.4 * nrows + 0.3), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel()[len(measures) * len(kinds) :]:
        ax.set_axis_off()
    for number, measure in enumerate(measures):
        for col, kind in enumerate(kinds):
            ax = axes[number // per_row, (number % per_row) * len(kinds) + col]
            if "unit" in summary:
                pick = summary["unit"] == "%" if kind == "%" else summary["unit"] != "%"
                points = result.points
                pick_points = points["unit"] == "%" if kind == "%" else points["unit"] != "%"
                part = BlandAltman(
                    summary=summary[pick],
                    points=points[pick_points],
                    level=result.level,
                    relative=kind == "%",
                )
            else:
                part = result
            bland_altman_plot(part, measure, ax=ax, compact=True)
    return fig


def bland_altman_plot(
    result: BlandAltman,
    measure: str | None = None,
    *,
    ax: Axes | None = None,
    compact: bool = False,
) -> Figure:
    """Differences against means, with the bias and limits of agreement and their CIs."""
    summary, points = result.summary, result.points
    measure = measure if measure is not None else str(summary["measure"].iloc[0])
    match = summary[summary["measure"] == measure]
    fig, ax = _axes(ax)
    if match.empty:
        ax.set_axis_off()
        return fig
    row = match.iloc[0]
    pts = points[points["measure"] == measure]
    _points(ax, pts["mean"], pts["difference"], "0.2")
    for name, colour, style in (
        ("bias", "k", "-"),
        ("loa_low", "C3", "--"),
        ("loa_high", "C3", "--"),
    ):
        low, high = (
            (row["bias_ci_low"], row["bias_ci_high"])
            if name == "bias"
            else (row[f"{name}_ci_low"], row[f"{name}_ci_high"])
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
    unit = "%" if result.relative else str(row.get("unit", "") or "")
    name = label(measure)
    base = name.rsplit(" (", 1)[0]
    ax.set_xlabel(
        f"Mean of automatic and manual ({name.rsplit(' (', 1)[-1].rstrip(')')})"
        if "(" in name
        else "Mean of automatic and manual",
        fontsize=8 if compact else 10,
    )
    ax.set_ylabel(
        f"Automatic - manual ({unit})" if unit else "Automatic - manual",
        fontsize=8 if compact else 10,
    )
    ax.set_title(
        f"{base}: bias {row['bias']:.2f} {unit}, n = {int(row['n'])}", fontsize=8 if compact else 10
    )
    if compact:
        ax.tick_params(labelsize=7)
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
        rows = data[data[by] == group][[x, y]].apply(pd.to_numeric, errors="coerce").dropna()
        colour = _colour(group, i)
        text = f"{_name(group)} (n = {len(rows)})"
        if correlations is not None:
            text += ": " + correlation_text(correlations, x, y, {by: group})
        _points(ax, rows[x], rows[y], colour)
        if regression is not None and len(regression.predictions):
            line = regression.predictions[regression.predictions[by] == group]
            ax.fill_between(
                line[x], line["ci_low"], line["ci_high"], color=colour, alpha=0.3, lw=0, zorder=2
            )
            _line(ax, line[x], line["fit"], colour)
        ax.plot([], [], "o", color=colour, label=text)
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.legend(
        fontsize=8, frameon=False, title="Pearson r [CI]" if correlations is not None else None
    )
    return fig


def correlation_text(
    correlations: pd.DataFrame, x: str, y: str, where: Mapping[str, object]
) -> str:
    """ "r = 0.49 [0.41, 0.56]" from a correlations table, or its note, for a legend."""
    match = correlations
    for column, value in where.items():
        if column in match.columns:
            match = match[match[column] == value]
    pair = match[(match["x"] == x) & (match["y"] == y)]
    if pair.empty:
        pair = match[(match["x"] == y) & (match["y"] == x)]
    if pair.empty:
        return "r not estimable (see Analyses not run)"
    r = pair.iloc[0]
    if pd.isna(r.get("r")):
        return str(r.get("note") or "r not estimable")
    return f"r = {r['r']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"


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
    """Percentile curves of ``metric`` across age groups (or BMI classes), one set per sex.

    Every group of the axis has a place, so a band without data (or not estimable)
    leaves a gap in the line rather than being bridged; each percentile has its own line
    style (:data:`PERCENTILE_STYLES`), each sex its colour.
    """
    rows = table[table["metric"] == metric]
    fig, ax = _axes(ax)
    if isinstance(rows[x].dtype, pd.CategoricalDtype):
        categories = [str(c) for c in rows[x].cat.categories]
    else:
        categories = list(pd.unique(rows[x].astype(str)))
    position = {c: i for i, c in enumerate(categories)}
    for i, (group, part) in enumerate(rows.groupby(by, sort=True)):
        values = {column: np.full(len(categories), np.nan) for column in percentiles}
        where = part[x].astype(str).map(position).to_numpy()
        for column in percentiles:
            values[column][where] = pd.to_numeric(part[column], errors="coerce").to_numpy()
        for column in percentiles:
            ax.plot(
                np.arange(len(categories)),
                values[column],
                PERCENTILE_STYLES.get(column, "-"),
                marker="o",
                ms=3.5,
                lw=1.4,
                color=_colour(group, i),
            )
        n = int(pd.to_numeric(part["n"], errors="coerce").sum())
        ax.plot([], [], "-", color=_colour(group, i), label=f"{_name(group)} (n = {n})")
    for column in percentiles:
        ax.plot([], [], PERCENTILE_STYLES.get(column, "-"), color="0.3", label=column.upper())
    ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 5 else 0)
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(metric))
    ax.legend(fontsize=7, frameon=False, ncol=2)
    return fig


def fat_fraction_plot(
    data: pd.DataFrame, columns: Sequence[str], *, x: str = "age", by: str = "sex"
) -> Figure:
    """Fat fraction (%) of each muscle against ``x`` by sex: one panel per muscle, left
    and right as circles and triangles, n per sex and side in the legend."""
    muscles = list(dict.fromkeys(c.rsplit("_", 2)[0] for c in columns))
    ncols = min(len(muscles), 3)
    nrows = -(-len(muscles) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.5 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(muscles) :]:
        ax.set_axis_off()
    for ax, muscle in zip(axes, muscles, strict=False):
        for i, group in enumerate(sorted(data[by].dropna().unique())):
            for side, marker in (("left", "o"), ("right", "^")):
                column = f"{muscle}_{side}_pct"
                if column not in data.columns:
                    continue
                rows = data[data[by] == group][[x, column]].apply(pd.to_numeric, errors="coerce")
                rows = rows.dropna()
                _points(ax, rows[x], rows[column], _colour(group, i), marker)
                ax.plot(
                    [],
                    [],
                    marker,
                    ls="none",
                    color=_colour(group, i),
                    label=f"{_name(group)}, {side} (n = {len(rows)})",
                )
        ax.set_title(
            label(f"{muscle}_pct").replace(" fat fraction, both sides (%)", ""), fontsize=10
        )
        ax.set_xlabel(_label(x))
        ax.set_ylabel("Fat fraction (%)")
        ax.legend(fontsize=7, frameon=False)
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
