"""``report.html``: one self-contained page of the cohort's results.

Everything is inside the file: figures as base64 PNG ``data:`` URIs, styles inline, no
scripts, fonts, links or images from elsewhere, so the page opens the same offline, from
an e-mail or an archive in ten years. It holds:

- the counts: participants on the sheet, analysed (by sex), excluded per stage and reason;
- methods written from what ran: the configuration (grid, QC, statistics), the model card
  (architecture, weights checksum, held-out Dice), the software versions and the counts;
- the tables of :mod:`myoflow.cohort.analysis` (long ones, such as the CSA profiles, as figures);
- the figures of :mod:`myoflow.cohort.figures` with their captions;
- the analyses that were skipped and why; without phenotypes (config ``phenotypes`` not
  set) those that need them are listed apart, with the reason
  :data:`myoflow.cohort.analysis.NEEDS_PHENOTYPES`.

:func:`render_report` is pure (inputs in, HTML text out); :func:`read_report_inputs` and
:func:`write_report` are the edges. The page carries no date, so the same results give
the same bytes.
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from myoflow import __version__
from myoflow.cohort.analysis import NEEDS_PHENOTYPES, AnalysisSettings
from myoflow.cohort.analysis_tables import read_tables
from myoflow.cohort.gather import GatherSettings
from myoflow.cohort.stats import describe
from myoflow.cohort.stats.groups import interval_labels
from myoflow.core.io import write_text

PACKAGES = (
    "numpy",
    "scipy",
    "pandas",
    "statsmodels",
    "matplotlib",
    "pydicom",
    "nibabel",
    "torch",
    "snakemake",
)
"""Packages whose versions the methods name (those not installed are left out)."""

STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #1565c0; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .8em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; }
th { background: #eef3fa; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
.counts { font-size: 1.1em; }
.note { color: #8a4b00; }
"""


@dataclass(frozen=True)
class ReportFigure:
    """A figure to embed: name, caption and the PNG's bytes."""

    name: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class ReportInputs:
    """Everything the page shows.

    Attributes:
        tables: the analysis tables by name (:func:`myoflow.cohort.analysis_tables.read_tables`).
        figures: the figures in order.
        config: the workflow configuration as run.
        model_card: the segmentation model's card, or ``None`` if there is none.
        versions: package -> version.
    """

    tables: Mapping[str, pd.DataFrame]
    figures: Sequence[ReportFigure] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    model_card: Mapping[str, Any] | None = None
    versions: Mapping[str, str] = field(default_factory=dict)


def software_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """myoflow, Python and the installed ``packages`` with their versions."""
    out = {"myoflow": __version__, "python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


# ---------------------------------------------------------------- formatting


def _number(value: Any, column: str = "") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if column in ("p", "f_p") or column.endswith("_p"):
            return "<1e-300" if value == 0 else f"{value:.3g}"
        if float(value).is_integer() and abs(value) < 1e9:
            return str(int(value))
        return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.3g}"
    return str(value)


def html_table(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A DataFrame as an escaped HTML table, numbers to 4 significant digits."""
    if columns is not None:
        frame = frame[[c for c in columns if c in frame.columns]]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = "".join(
            f"<td>{html.escape(_number(v, c))}</td>"
            for v, c in zip(row, frame.columns, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _list(items: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


# ---------------------------------------------------------------- content


def counts(tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """Sheet, analysed (by sex) and excluded counts, from the flow and Table 1 tables."""
    flow = tables.get("flow")
    out: dict[str, Any] = {"sheet": None, "analysed": None, "excluded": None, "by_sex": {}}
    if flow is not None and len(flow):
        out["sheet"] = int(flow["n_in"].iloc[0])
        out["analysed"] = int(flow["n_out"].iloc[-1])
        out["excluded"] = out["sheet"] - out["analysed"]
    t1 = tables.get("table1")
    if t1 is not None and len(t1) and "sex" in t1.columns:
        first = t1[t1["level"].fillna("") == ""]
        first = first[first["variable"] == first["variable"].iloc[0]] if len(first) else first
        out["by_sex"] = {
            str(s): int(n)
            for s, n in zip(first["sex"], first["n"], strict=True)
            if str(s) != describe.ALL
        }
    return out


def _held_out_dice(card: Mapping[str, Any]) -> dict[str, Any] | None:
    """The card's held-out Dice per structure, wherever training put it."""
    stack: list[Any] = [card]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            dice = item.get("dice")
            if (
                isinstance(dice, Mapping)
                and dice
                and all(isinstance(v, Mapping) and "mean" in v for v in dice.values())
            ):
                return dict(dice)
            stack.extend(v for v in item.values() if isinstance(v, Mapping))
    return None


def model_summary(card: Mapping[str, Any] | None) -> list[str]:
    """Sentences about the segmentation model from its card (missing keys left out)."""
    if not card:
        return ["No model card was found, so the segmentation model is not described here."]
    config = card.get("config") if isinstance(card.get("config"), Mapping) else {}
    parts = []
    architecture = config.get("architecture")
    if architecture:
        labels = config.get("labels")
        width = config.get("width")
        text = f"Muscles were segmented by a {architecture} network"
        if width is not None:
            text += f" (width x{width})"
        if labels:
            text += f" with output labels {', '.join(map(str, labels))}"
        parts.append(text + ".")
    sha = card.get("weights_sha256")
    if sha:
        parts.append(f"Its weights have sha256 {sha} (checked before use).")
    dice = _held_out_dice(card)
    if dice:
        shown = ", ".join(
            f"{name} {float(v['mean']):.3f}"
            + (f" (n = {int(v['n'])})" if v.get("n") is not None else "")
            for name, v in sorted(dice.items())
            if v.get("mean") is not None
        )
        parts.append(f"Held-out Dice (mean): {shown}.")
    return parts or ["The model card holds no architecture, checksum or held-out Dice."]


def without_phenotypes(tables: Mapping[str, pd.DataFrame]) -> bool:
    """Whether the analysis ran without a phenotype table (its ``analyses`` record says so)."""
    analyses = tables.get("analyses")
    if analyses is None or "message" not in analyses.columns:
        return False
    return bool((analyses["message"].astype(str) == NEEDS_PHENOTYPES).any())


def methods(
    tables: Mapping[str, pd.DataFrame],
    config: Mapping[str, Any],
    card: Mapping[str, Any] | None,
    versions: Mapping[str, str],
) -> list[str]:
    """The methods paragraphs, written from the configuration, model card and counts."""
    stats = config.get("stats", {}) or {}
    analysis = AnalysisSettings.from_config(stats)
    gather = GatherSettings.from_config(stats)
    paragraphs = []
    c = counts(tables)
    if c["sheet"] is not None:
        sexes = ", ".join(f"{n} {s}" for s, n in sorted(c["by_sex"].items()))
        text = (
            f"Of {c['sheet']} participants on the sheet, {c['analysed']} were analysed"
            + (f" ({sexes})" if sexes else "")
            + f" and {c['excluded']} excluded"
        )
        excluded = tables.get("flow")
        stages = [
            f"{int(r.excluded)} at {r.stage}" for r in excluded.itertuples() if r.excluded > 0
        ]
        paragraphs.append(text + (f" ({'; '.join(stages)})." if stages else "."))
    grid = (config.get("ingest", {}) or {}).get("grid", {}).get("spacing_mm")
    protocols = (config.get("ingest", {}) or {}).get("protocols", [])
    if grid is not None:
        spacing = grid if isinstance(grid, str) else " x ".join(f"{float(v):.3g}" for v in grid)
        names = ", ".join(f"{p['name']} ({p['stations']} stations)" for p in protocols)
        paragraphs.append(
            f"The Dixon stations of each participant were stitched onto one grid of {spacing} "
            f"mm voxels" + (f"; protocols: {names}." if names else ".")
        )
    paragraphs.append(" ".join(model_summary(card)))
    keep = (config.get("qc", {}) or {}).get("keep_warnings")
    no_phenotypes = without_phenotypes(tables)
    outliers = (
        f"Volumes with a robust z-score (0.6745 (x - median) / MAD, "
        f"{'over the whole cohort' if no_phenotypes else 'within sex'}) beyond "
        f"{gather.outlier_threshold:g} ({', '.join(gather.outlier_columns)}) were "
        + ("excluded." if gather.exclude_outliers else "flagged but kept.")
    )
    ranges = ", ".join(f"{k} {lo:g}-{hi:g}" for k, (lo, hi) in gather.ranges.items())
    qc = "Participants failing QC were excluded" + (
        "" if keep is None else (" (warnings kept)" if keep else " (warnings excluded too)")
    )
    if no_phenotypes:
        paragraphs.append(
            qc + ". No phenotype table was configured (config phenotypes is not set): sex, "
            "age, height, weight, BMI and the iliopsoas muscle index (IMI, total iliopsoas "
            "volume / height²) are empty, no participant was excluded for phenotypes, and "
            "the analyses that need them were not run (listed at the end). " + outliers
        )
    else:
        paragraphs.append(
            qc + f". Phenotypes had to be present ({', '.join(gather.required_phenotypes)}) "
            f"and plausible ({ranges}"
            + (
                f"; recorded BMI within {gather.bmi_tolerance:g} kg/m² of weight / height²"
                if gather.bmi_tolerance is not None
                else ""
            )
            + "). The iliopsoas muscle index (IMI) is the total iliopsoas volume divided by "
            "height squared (ml/m²). " + outliers
        )
    level = f"{analysis.level:.0%}"
    ages = ", ".join(analysis.age_labels or interval_labels(analysis.age_edges))
    formulas = "; ".join(f"{r.formula}" for r in analysis.regressions)
    if no_phenotypes:
        paragraphs.append(
            "Without phenotypes nothing was compared by sex, age or BMI: the measurements "
            "were summarised over all participants (n, mean, SD, range and percentiles "
            f"{', '.join(f'{q:g}' for q in analysis.percentiles)}); left-right asymmetry "
            "by paired t-test, the asymmetry index 100 (right - left) / mean of the sides "
            "by one-sample t interval; correlations between measurements are Pearson's r "
            f"with Fisher-z confidence intervals. All intervals are {level}."
        )
    else:
        paragraphs.append(
            f"Men and women were compared by Welch's t-test; left-right asymmetry by paired "
            f"t-test, the asymmetry index 100 (right - left) / mean of the sides by one-sample "
            f"t interval; handedness by one-way ANOVA. Correlations are Pearson's r with "
            f"Fisher-z {level} confidence intervals, per sex. Regressions (ordinary least "
            f"squares, per sex): {formulas}. Age trends of "
            f"{', '.join(analysis.gam_metrics)} were fitted per sex as generalised additive "
            f"models with a cubic regression spline (mgcv's s(age, bs = 'cr', k = "
            f"{analysis.gam_k}), smoothing by {analysis.gam_method}). Normative percentiles "
            f"({', '.join(f'{q:g}' for q in analysis.percentiles)}; linear interpolation) are "
            f"given by sex and age group ({ages}) and, for "
            f"{', '.join(analysis.bmi_class_metrics)}, by WHO BMI class "
            f"({', '.join(analysis.bmi_labels)}). All intervals are {level}."
        )
    if "bland_altman" in tables or "dice" in tables:
        paragraphs.append(
            "Agreement with manual annotations: Bland-Altman bias and limits of agreement "
            "(bias +- 1.96 SD, with confidence intervals) and Dice overlap per structure."
        )
    paragraphs.append(
        "Software: " + ", ".join(f"{name} {version}" for name, version in versions.items()) + "."
    )
    return paragraphs


SECTIONS: Sequence[tuple[str, str, Sequence[str] | None]] = (
    ("exclusion_counts", "Exclusions by stage and reason", None),
    ("table1_display", "Table 1: participants by sex", None),
    ("table1_tests", "Table 1: men minus women (Welch)", None),
    ("table2_display", "Table 2: muscle measures by sex (men minus women, Welch)", None),
    ("volumes", "Muscle measures, all participants (no phenotypes: not by sex)", None),
    (
        "asymmetry",
        "Left-right asymmetry (right minus left, paired t-test; asymmetry index %)",
        (
            "structure",
            "sex",
            "n",
            "mean_left",
            "mean_right",
            "diff",
            "ci_low",
            "ci_high",
            "p",
            "asym_pct_mean",
            "asym_pct_ci_low",
            "asym_pct_ci_high",
        ),
    ),
    ("handedness_anova", "Asymmetry index by handedness (one-way ANOVA)", None),
    ("handedness_ttest", "Asymmetry index, right- minus left-handed (Welch)", None),
    ("correlations", "Pearson correlations by sex", None),
    ("regression_coefficients", "Regression coefficients by sex", None),
    ("regression_models", "Regression fits by sex", None),
    (
        "gam_summary",
        "GAM fits by sex",
        ("metric", "sex", "n", "k", "method", "edf", "lambda", "scale", "r2"),
    ),
    ("percentiles_age", "Normative percentiles by sex and age group", None),
    ("percentiles_bmi", "Percentiles by sex and WHO BMI class", None),
    ("bland_altman", "Bland-Altman agreement with manual annotations", None),
    ("dice", "Dice overlap with manual annotations", None),
    ("outlier_counts", "Cohort-level flags (robust z-scores within sex)", None),
)
"""(table, heading, columns shown or None for all), in page order."""


def render_report(inputs: ReportInputs) -> str:
    """The report page as HTML text (see the module docstring)."""
    tables = inputs.tables
    c = counts(tables)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>myoflow cohort report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>myoflow cohort report</h1>",
    ]
    if c["sheet"] is not None:
        sexes = ", ".join(f"{s}: {n}" for s, n in sorted(c["by_sex"].items()))
        parts.append(
            f'<p class="counts"><b>{c["sheet"]}</b> participants on the sheet, '
            f"<b>{c['analysed']}</b> analysed"
            + (f" ({html.escape(sexes)})" if sexes else "")
            + f", <b>{c['excluded']}</b> excluded.</p>"
        )
    if "flow" in tables:
        parts += ["<h2>Participant flow</h2>", html_table(tables["flow"])]
    parts.append("<h2>Methods</h2>")
    parts += [
        _p(text)
        for text in methods(tables, inputs.config, inputs.model_card, inputs.versions or {})
    ]
    parts.append("<h2>Results</h2>")
    for name, heading, columns in SECTIONS:
        if name in tables and len(tables[name]):
            parts += [f"<h3>{html.escape(heading)}</h3>", html_table(tables[name], columns)]
    if inputs.figures:
        parts.append("<h2>Figures</h2>")
        for number, fig in enumerate(inputs.figures, start=1):
            data = base64.b64encode(fig.png).decode("ascii")
            parts.append(
                f'<figure id="{html.escape(fig.name)}"><img alt="{html.escape(fig.name)}" '
                f'src="data:image/png;base64,{data}"><figcaption><b>Figure {number}.</b> '
                f"{html.escape(fig.caption)}</figcaption></figure>"
            )
    analyses = tables.get("analyses")
    if analyses is not None and (analyses["status"] != "ok").any():
        skipped = analyses[analyses["status"] != "ok"]
        needs = skipped["message"].astype(str) == NEEDS_PHENOTYPES
        parts.append("<h2>Analyses not run</h2>")
        if needs.any():
            parts.append(
                '<p class="note">No phenotype table was configured (config phenotypes is not '
                "set), so these analyses, which need sex, age, height or BMI, were not run; "
                "set <code>phenotypes</code> to a phenotype table to run them:</p>"
            )
            parts.append(_list([f"{r.analysis}: {r.message}" for r in skipped[needs].itertuples()]))
        if (~needs).any():
            parts.append('<p class="note">The data could not support these analyses:</p>')
            parts.append(
                _list([f"{r.analysis}: {r.message}" for r in skipped[~needs].itertuples()])
            )
    parts.append(
        "<h2>Files</h2>"
        + _p(
            "Every table above, and the CSA profiles along the muscle, are in "
            "results/cohort/tables as TSV; per-participant values in "
            "results/cohort/participants.tsv, exclusions in results/cohort/exclusions.tsv."
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- files


def read_model_card(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The model card at ``path``, or ``None`` if there is none or it is not a JSON object."""
    if path is None:
        return None
    try:
        card = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def read_report_inputs(
    tables_dir: str | os.PathLike[str],
    figures_dir: str | os.PathLike[str] | None,
    config: Mapping[str, Any],
    model_card: str | os.PathLike[str] | None = None,
) -> ReportInputs:
    """The tables, the figures listed in ``figures.tsv``, the card and software versions."""
    figures: list[ReportFigure] = []
    if figures_dir is not None and (Path(figures_dir) / "figures.tsv").is_file():
        index = pd.read_csv(Path(figures_dir) / "figures.tsv", sep="\t", dtype=str)
        for row in index.itertuples():
            png = Path(figures_dir) / row.file
            figures.append(ReportFigure(row.name, row.caption, png.read_bytes()))
    return ReportInputs(
        tables=read_tables(tables_dir),
        figures=figures,
        config=config,
        model_card=read_model_card(model_card),
        versions=software_versions(),
    )


def write_report(path: str | os.PathLike[str], inputs: ReportInputs) -> None:
    """Write the page atomically."""
    write_text(path, render_report(inputs))
