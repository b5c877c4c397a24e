"""The cohort figures, drawn from the analysis tables: nothing is fitted or averaged here.

:func:`cohort_figures` rebuilds the results objects :mod:`myoflow.cohort.plots` draws
(regression lines, GAM curves, Bland-Altman limits) from the tables
:func:`myoflow.cohort.analysis.run_analysis` wrote, and takes the participants' own values only
for the scatter points. Each figure comes with a caption; :func:`write_figures` writes
PNG and PDF (:func:`myoflow.cohort.plots.save_figure`) and ``figures.tsv`` (name, file,
caption, in order), which the report reads.

The QC montage shows the overlays (``qc/overlay.png``) of the participants with the
smallest, median and largest iliopsoas volume and the largest asymmetry, as the UK
Biobank iliopsoas paper's Figure 3; participants without an overlay are left out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from myoflow.cohort import plots as figures
from myoflow.cohort.analysis import AnalysisSettings
from myoflow.cohort.analysis_by_sex import fat_fraction_columns
from myoflow.cohort.montage import thumbnail_name, write_montage
from myoflow.cohort.names import label, readable_formula
from myoflow.cohort.stats.agreement import BlandAltman
from myoflow.cohort.stats.gam import GamResult
from myoflow.cohort.stats.groups import interval_labels
from myoflow.cohort.stats.regress import RegressionResult
from myoflow.core.io import write_tsv

ID = "participant_id"
VOLUME = "vol_iliopsoas_total_ml"
ASYMMETRY = "iliopsoas_asymmetry_pct"
POINT_COLUMNS = (
    ID,
    "sex",
    "age",
    "bmi",
    "height_cm",
    VOLUME,
    "imi_ml_m2",
    ASYMMETRY,
    *(
        f"ff_{m}_{s}"
        for m in ("psoas_major", "iliacus", "gluteus_maximus", "gluteus_medius", "gluteus_minimus")
        for s in ("left", "right")
    ),
)
"""Participant columns the scatter plots, the fat fraction figure and the montage need
(plus the GAM metrics); fat fractions as stored (0-1), turned into % before drawing."""

MONTAGE = "qc_montage"


@dataclass(frozen=True)
class CohortFigure:
    """One figure to write: file stem, the figure and what it shows."""

    name: str
    figure: Figure
    caption: str


def _norm(formula: str) -> str:
    return "".join(str(formula).split())


def regression_for(tables: Mapping[str, pd.DataFrame], formula: str) -> RegressionResult | None:
    """The regression of ``formula`` as a results object, from the regression tables."""
    models = tables.get("regression_models")
    if models is None:
        return None
    match = models[models["formula"].map(_norm) == _norm(formula)]
    if match.empty:
        return None
    name = match["regression"].iloc[0]

    def rows(table: str) -> pd.DataFrame:
        frame = tables.get(table, pd.DataFrame(columns=["regression"]))
        return frame[frame["regression"] == name].reset_index(drop=True)

    return RegressionResult(
        formula=formula,
        coefficients=rows("regression_coefficients"),
        models=rows("regression_models"),
        predictions=rows("regression_predictions"),
        level=np.nan,
    )


def gam_result(tables: Mapping[str, pd.DataFrame], x: str, level: float) -> GamResult | None:
    """The GAM curves and summary as a results object (no fitted models)."""
    if "gam_curves" not in tables:
        return None
    return GamResult(curves=tables["gam_curves"], summary=tables["gam_summary"], level=level, x=x)


def bland_altman_result(tables: Mapping[str, pd.DataFrame], level: float) -> BlandAltman | None:
    """The Bland-Altman summary and points as a results object."""
    if "bland_altman" not in tables:
        return None
    return BlandAltman(
        summary=tables["bland_altman"],
        points=tables["bland_altman_points"],
        level=level,
        relative=False,
    )


def _ordered(table: pd.DataFrame, column: str, labels: Sequence[str]) -> pd.DataFrame:
    """``column`` as an ordered categorical of ``labels`` (TSV loses the order)."""
    out = table.copy()
    out[column] = pd.Categorical(out[column].astype(str), categories=list(labels), ordered=True)
    return out


def _panels(count: int, size: tuple[float, float], columns: int = 3) -> tuple[Figure, list]:
    columns = min(count, columns)
    rows = -(-count // columns)
    fig = Figure(figsize=(size[0] * columns, size[1] * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel().tolist()
    for ax in axes[count:]:
        ax.set_axis_off()
    return fig, axes[:count]


def cohort_figures(
    tables: Mapping[str, pd.DataFrame],
    points: pd.DataFrame,
    settings: AnalysisSettings | None = None,
) -> list[CohortFigure]:
    """Every figure the tables support, with captions, in report order.

    Args:
        tables: the analysis tables by name (:func:`myoflow.cohort.analysis_tables.read_tables`).
        points: participants' values for scatter plots (:data:`POINT_COLUMNS`).
        settings: the analysis settings (group labels and order, level, GAM covariate);
            default the shipped ones.
    """
    settings = settings if settings is not None else AnalysisSettings()
    out: list[CohortFigure] = []
    level = settings.level
    pct = f"{level:.0%}"
    # absent when no sex had the pairs for it: the legends then say r is not estimable
    correlations = tables.get("correlations", pd.DataFrame(columns=["x", "y", "sex", "r"]))
    for name, x, y, formula in (
        ("volume_height", "height_cm", VOLUME, f"{VOLUME} ~ height_cm"),
        ("imi_bmi", "bmi", "imi_ml_m2", "imi_ml_m2 ~ bmi"),
    ):
        if not {x, y, "sex"} <= set(points.columns) or points[[x, y, "sex"]].dropna().empty:
            continue  # e.g. no phenotype table: height, BMI and sex are empty
        fit = regression_for(tables, formula)
        fig = figures.scatter_fit_plot(
            points, x, y, regression=fit, correlations=correlations, by="sex"
        )
        line = (
            f" with the OLS line ({readable_formula(formula)}) and its {pct} confidence band"
            if fit is not None and len(fit.predictions)
            else ""
        )
        out.append(
            CohortFigure(
                name,
                fig,
                f"{label(y)} against {label(x)} by sex{line}; legend: n and Pearson r "
                f"[{pct} CI] per sex (UK Biobank iliopsoas study).",
            )
        )
    curves = gam_result(tables, settings.gam_x, level)
    if curves is not None:
        for metric in curves.curves["metric"].drop_duplicates():
            data = points if {metric, settings.gam_x} <= set(points.columns) else None
            out.append(
                CohortFigure(
                    f"gam_{metric}",
                    figures.gam_plot(curves, metric, data=data),
                    f"{label(metric)} against {label(settings.gam_x)} by sex: "
                    f"GAM with a cubic regression spline (k = {settings.gam_k}, "
                    f"{settings.gam_method}) and its {pct} pointwise confidence band "
                    "(UK Biobank iliopsoas study).",
                )
            )
    age_labels = settings.age_labels or interval_labels(settings.age_edges)
    for name, group, labels, what in (
        ("percentiles_age", "age_group", age_labels, "age group"),
        ("percentiles_bmi", "bmi_class", settings.bmi_labels, "WHO BMI class"),
    ):
        if name not in tables:
            continue
        table = _ordered(tables[name], group, labels)
        metrics = list(table["metric"].drop_duplicates())
        fig, axes = _panels(len(metrics), (4.5, 3.6))
        for metric, ax in zip(metrics, axes, strict=True):
            figures.percentile_plot(table, metric, x=group, percentiles=_qs(table), ax=ax)
            ax.set_title(label(metric).rsplit(" (", 1)[0], fontsize=9)
            ax.set_ylabel(label(metric), fontsize=8)
        out.append(
            CohortFigure(
                name,
                fig,
                f"Percentiles ({', '.join(q.upper() for q in _qs(table))}: dashed, solid, "
                f"dotted) by {what} and sex (NAKO-style normative values; linear "
                f"interpolation). Groups with fewer than {settings.minimum.percentiles} "
                "participants are not estimable and leave a gap; n in the legend is the "
                "participants with a value.",
            )
        )
    fat = [c for c in fat_fraction_columns(points)]
    if fat and {"sex", "age"} <= set(points.columns) and points[["sex", "age"]].notna().any().all():
        out.append(
            CohortFigure(
                "fat_fraction_age",
                figures.fat_fraction_plot(points, fat),
                "Fat fraction (%, mean fat / (water + fat) in the eroded muscle) of each "
                "muscle against age by sex; circles left, triangles right; n per sex and "
                "side in the legend.",
            )
        )
    for name, group, labels, what in (
        ("csa_profiles_age", "age_group", age_labels, "age group"),
        ("csa_profiles_bmi", "bmi_class", settings.bmi_labels, "WHO BMI class"),
    ):
        if name not in tables:
            continue
        table = _ordered(tables[name], group, labels)
        panels = [
            (sex, side) for sex in sorted(table["sex"].unique()) for side in ("left", "right")
        ]
        fig, axes = _panels(len(panels), (3.6, 4.5), columns=2)
        for (sex, side), ax in zip(panels, axes, strict=True):
            # every panel keeps its legend: colours follow the groups a panel has
            figures.profile_plot(table, group=group, side=side, where={"sex": sex}, ax=ax)
            ax.set_title(f"{figures.SEX_NAMES.get(sex, sex)}, {side}", fontsize=10)
        out.append(
            CohortFigure(
                name,
                fig,
                f"Psoas major cross-sectional area along the muscle (0: inferior end, 1: "
                f"superior end) by {what}, per sex and side: median, shaded 10th-90th "
                "percentile.",
            )
        )
    if "csa_profiles_overall" in tables:  # no phenotypes: all participants together
        table = tables["csa_profiles_overall"].assign(group="all")
        fig, axes = _panels(2, (3.6, 4.5), columns=2)
        for side, ax in zip(("left", "right"), axes, strict=True):
            figures.profile_plot(table, group="group", side=side, ax=ax)
            ax.set_title(side, fontsize=10)
        out.append(
            CohortFigure(
                "csa_profiles_overall",
                fig,
                "Psoas major cross-sectional area along the muscle (0: inferior end, 1: "
                "superior end), all participants (no phenotypes), per side: median, shaded "
                "10th-90th percentile.",
            )
        )
    ba = bland_altman_result(tables, level)
    if ba is not None:
        relative = "unit" in ba.summary and (ba.summary["unit"] == "%").any()
        out.append(
            CohortFigure(
                "bland_altman",
                figures.bland_altman_grid(ba),
                "Bland-Altman plots, automatic minus manual against their mean, one row per "
                "measure"
                + (
                    ", in the measure's unit (left) and in % of the mean (right)"
                    if relative
                    else ""
                )
                + f": bias (solid), {pct} limits of agreement (dashed), shaded their {pct} "
                "confidence intervals.",
            )
        )
    return out


def _qs(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("p") and c[1:].replace(".", "").isdigit()]


def montage_participants(points: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, participant_id): smallest, median and largest volume, most asymmetric.

    Raises:
        KeyError: ``points`` lacks the volume or asymmetry column.
    """
    volume = pd.to_numeric(points[VOLUME], errors="coerce")
    valid = points[volume.notna()]
    volume = volume[volume.notna()]
    if valid.empty:
        return []
    median = (volume - volume.median()).abs().idxmin()
    chosen = [
        ("smallest", volume.idxmin()),
        ("median", median),
        ("largest", volume.idxmax()),
    ]
    asymmetry = pd.to_numeric(valid.get(ASYMMETRY), errors="coerce").abs()
    if asymmetry is not None and asymmetry.notna().any():
        chosen.append(("most asymmetric", asymmetry.idxmax()))
    return [(label, str(valid.at[row, ID])) for label, row in chosen]


def write_figures(
    folder: str | os.PathLike[str],
    drawn: Sequence[CohortFigure],
    points: pd.DataFrame | None = None,
    participants_dir: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Write every figure (PNG, PDF), the QC montage if overlays exist, and ``figures.tsv``.

    Files of an earlier run that this one did not write are removed. Returns the
    ``figures.tsv`` table: name, file, caption.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rows, written = [], set()
    for item in drawn:
        written.update(figures.save_figure(item.figure, out / item.name))
        rows.append(
            {"name": item.name, "file": f"{item.name}.png", "caption": item.caption, "full": ""}
        )
    if points is not None and participants_dir is not None and VOLUME in points.columns:
        row = _write_montage(out / f"{MONTAGE}.png", points, Path(participants_dir))
        if row is not None:
            rows.append(row)
            written.update({out / row["full"], out / row["file"]})
    index = pd.DataFrame(rows, columns=["name", "file", "caption", "full", "text_px"])
    write_tsv(out / "figures.tsv", index)
    written.add(out / "figures.tsv")
    for stale in set(out.glob("*")) - written:
        if stale.is_file() and stale.suffix in (".png", ".pdf", ".tsv"):
            stale.unlink()
    return index


def _write_montage(path: Path, points: pd.DataFrame, participants_dir: Path) -> dict | None:
    overlays, titles, labels_shown, seen = [], [], [], set()
    for what, participant in montage_participants(points):
        overlay = participants_dir / participant / "qc" / "overlay.png"
        if participant in seen or not overlay.is_file():
            continue
        seen.add(participant)
        row = points.loc[points[ID] == participant].iloc[0]
        text = f"{what}: {participant}, iliopsoas {float(row[VOLUME]):.0f} ml"
        if ASYMMETRY in points.columns and not pd.isna(row[ASYMMETRY]):
            text += f", asymmetry {float(row[ASYMMETRY]):+.1f} %"
        overlays.append(overlay)
        titles.append(text)
        labels_shown.append(what)
    if not overlays:
        return None
    thumbnail = thumbnail_name(path)
    text_px = write_montage(overlays, titles, path, thumbnail)
    return {
        "name": MONTAGE,
        "file": thumbnail.name,
        "full": path.name,
        "text_px": round(text_px, 1),
        "caption": "QC montage: segmentation overlays of the participants with the "
        + ", ".join(labels_shown)
        + " iliopsoas volume (asymmetry = 100 (right - left) / mean of the sides). "
        "Full resolution: qc_montage.png.",
    }
