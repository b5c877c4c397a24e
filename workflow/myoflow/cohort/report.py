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
from myoflow.cohort.analysis import NEEDS_PHENOTYPES
from myoflow.cohort.analysis_tables import read_tables
from myoflow.cohort.names import header, label, readable_formula
from myoflow.cohort.papers import nako_percentiles
from myoflow.cohort.report_methods import (
    SEX_WORDS,
    _held_out_dice,
    counts,
    methods,
)
from myoflow.cohort.stats import describe
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
body { font-family: sans-serif; max-width: 1300px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
.scroll { overflow-x: auto; max-width: 100%; }
.scroll table { margin-top: .3em; }
.thumb img { max-width: none; }
.warning { color: #8a4b00; font-size: 0.85em; }
code { font-size: 0.9em; }
h1 { border-bottom: 2px solid #1565c0; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .8em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; }
th { background: #eef3fa; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
.counts { font-size: 1.1em; }
.note { color: #8a4b00; }
"""


@dataclass(frozen=True)
class ReportFigure:
    """A figure to embed: name, caption, the PNG's bytes and, for a thumbnail, the
    relative link to the full-resolution file and its smallest text in pixels."""

    name: str
    caption: str
    png: bytes
    link: str = ""
    text_px: float | None = None


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
    if value is None or (isinstance(value, float | np.floating) and not np.isfinite(value)):
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


LABELLED = frozenset(
    {"metric", "variable", "x", "y", "column", "value", "measure", "left", "right"}
)
"""Result-table columns whose cells name analysis-table columns (shown as readable names)."""


def _cell(value: Any, column: str) -> str:
    if column in LABELLED and isinstance(value, str):
        return label(value)
    if column in ("formula", "term") and isinstance(value, str):
        return readable_formula(value)
    if column == "sex" and isinstance(value, str):
        return {"F": "women", "M": "men", describe.ALL: "all"}.get(value, value)
    return _number(value, column)


def html_table(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A DataFrame as an escaped HTML table that scrolls sideways rather than overflowing;
    readable headers and names (:mod:`myoflow.cohort.names`), numbers to 4 digits."""
    if columns is not None:
        frame = frame[[c for c in columns if c in frame.columns]]
    if "note" in frame.columns and (frame["note"].isna() | (frame["note"].astype(str) == "")).all():
        frame = frame.drop(columns="note")
    head = "".join(f"<th>{html.escape(header(str(c)))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = "".join(
            f"<td>{html.escape(_cell(v, c))}</td>" for v, c in zip(row, frame.columns, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _list(items: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


SECTIONS: Sequence[tuple[str, str, Sequence[str] | None]] = (
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
            "note",
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
        ("metric", "sex", "n", "k", "method", "edf", "lambda", "scale", "r2", "note"),
    ),
    ("percentiles_age", "Normative percentiles by sex and age group", None),
    ("percentiles_bmi", "Percentiles by sex and WHO BMI class", None),
    (
        "bland_altman",
        "Bland-Altman agreement with manual annotations (automatic minus manual)",
        (
            "measure",
            "unit",
            "n",
            "mean_method",
            "mean_reference",
            "bias",
            "bias_ci_low",
            "bias_ci_high",
            "loa_low",
            "loa_high",
            "note",
        ),
    ),
    ("dice", "Dice overlap with manual annotations", None),
    ("outlier_counts", "Cohort-level flags (robust z-scores within sex)", None),
)
"""(table, heading, columns shown or None for all), in page order."""


def _warnings_for(table: str, analyses: pd.DataFrame | None) -> str:
    """The warnings of the analyses that made ``table``, as a paragraph (or nothing)."""
    if analyses is None or "warnings" not in analyses.columns:
        return ""
    said = []
    for row in analyses.itertuples():
        if table in str(row.tables).split(",") and isinstance(row.warnings, str) and row.warnings:
            said.append(f"{row.analysis}: {readable_formula(row.warnings)}")
    if not said:
        return ""
    return '<p class="warning">Warnings while computing: ' + html.escape("; ".join(said)) + "</p>"


def synthetic_note(tables: Mapping[str, pd.DataFrame], card: Mapping[str, Any] | None) -> list[str]:
    """For a synthetic cohort: what it is, its resolution, and its Dice beside the card's."""
    synthetic = tables.get("synthetic_cohort")
    if synthetic is None or synthetic.empty:
        return []
    row = synthetic.iloc[0]
    size = str(row.get("size", ""))
    text = (
        f"This is a synthetic cohort ({row.get('generator', 'myoflow synth')}, "
        f"{row.get('protocol', '')} protocol, {_number(row.get('participants'))} participants, "
        f"seed {_number(row.get('seed'))}) with images of {row.get('spacing_mm', '')} mm voxels"
    )
    if size == "small":
        text += (
            ": half the resolution of the full-size images (the demo's --size small, "
            "chosen so that the demo runs in minutes on a CPU). The segmentation model was "
            "evaluated on full-resolution images, so Dice against the synthetic truth here "
            "is expected below the model card's."
        )
    parts = ["<h2>Synthetic cohort</h2>", _p(text + ("" if size == "small" else "."))]
    accuracy = dice_beside_card(tables.get("dice"), card)
    if not accuracy.empty:
        parts += [
            _p(
                "Dice of this cohort's masks against the synthetic truth, beside the model "
                "card's held-out Dice:"
            ),
            html_table(accuracy),
        ]
    return parts


def dice_beside_card(dice: pd.DataFrame | None, card: Mapping[str, Any] | None) -> pd.DataFrame:
    """Per structure: this cohort's mean Dice (both sides pooled) and the card's held-out."""
    if dice is None or dice.empty or "structure" not in dice.columns:
        return pd.DataFrame()
    held_out = _held_out_dice(card or {}) or {}
    rows = []
    for structure, part in dice.groupby("structure", sort=False):
        n = pd.to_numeric(part["n"], errors="coerce")
        mean = float((pd.to_numeric(part["mean"], errors="coerce") * n).sum() / n.sum())
        card_row = held_out.get(structure) or {}
        rows.append(
            {
                "Structure": str(structure).replace("_", " "),
                "This cohort: Dice (mean, both sides)": f"{mean:.3f} (n = {int(n.sum())})",
                "Model card: held-out Dice": (
                    f"{float(card_row['mean']):.3f} (n = {int(card_row.get('n', 0))})"
                    if card_row.get("mean") is not None
                    else "not in the card"
                ),
            }
        )
    return pd.DataFrame(rows)


def render_report(inputs: ReportInputs) -> str:
    """The report page as HTML text (see the module docstring)."""
    tables = inputs.tables
    analyses = tables.get("analyses")
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
        sexes = ", ".join(f"{SEX_WORDS.get(s, s)}: {n}" for s, n in sorted(c["by_sex"].items()))
        parts.append(
            f'<p class="counts"><b>{c["sheet"]}</b> participants on the sheet, '
            f"<b>{c['analysed']}</b> analysed"
            + (f" ({html.escape(sexes)})" if sexes else "")
            + f", <b>{c['excluded']}</b> excluded.</p>"
        )
    parts += synthetic_note(tables, inputs.model_card)
    if "flow" in tables:
        parts += ["<h2>Participant flow</h2>", html_table(tables["flow"])]
        for name, heading in (
            ("exclusion_counts", "Exclusions by stage and reason"),
            ("exclusion_list", "Excluded participants"),
        ):
            if name in tables and len(tables[name]):
                parts += [f"<h3>{heading}</h3>", html_table(tables[name])]
    parts.append("<h2>Methods</h2>")
    parts += [
        _p(text)
        for text in methods(tables, inputs.config, inputs.model_card, inputs.versions or {})
    ]
    parts.append("<h2>Results</h2>")
    if "papers" in tables and len(tables["papers"]):
        parts += [
            '<h3 id="papers">The papers side by side</h3>',
            _p(
                "This cohort's key results beside the published values of the UK Biobank "
                "iliopsoas study and the NAKO study"
                + (
                    " and the values planted in this synthetic cohort"
                    if "synthetic_cohort" in tables
                    else ""
                )
                + ". Cells say 'not estimable (n = k)' where this cohort has too few "
                "participants for the value."
            ),
            html_table(tables["papers"]),
        ]
        nako = nako_percentiles(tables)
        if len(nako):
            parts += [
                _p(
                    "Maximum psoas CSA, left + right (cm²), this cohort's 10th / 50th / 90th "
                    "percentiles by sex and age group (the NAKO study gives these by age "
                    "group in its normative tables):"
                ),
                html_table(nako),
            ]
    for name, heading, columns in SECTIONS:
        if name in tables and len(tables[name]):
            parts += [
                f"<h3>{html.escape(heading)}</h3>",
                html_table(tables[name], columns),
                _warnings_for(name.replace("_display", ""), analyses),
            ]
    if inputs.figures:
        parts.append("<h2>Figures</h2>")
        for number, fig in enumerate(inputs.figures, start=1):
            parts.append(_figure(number, fig))
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
                _list(
                    [
                        f"{r.analysis}: {readable_formula(r.message)}"
                        for r in skipped[~needs].itertuples()
                    ]
                )
            )
    root = str((inputs.config or {}).get("results", "results")).rstrip("/")
    parts.append(
        "<h2>Files</h2>"
        + _p(
            f"Every table above, and the CSA profiles along the muscle, are in "
            f"{root}/cohort/tables as TSV (an empty cell has its reason in the note "
            f"column); per-participant values in {root}/cohort/participants.tsv, exclusions "
            f"in {root}/cohort/exclusions.tsv."
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _figure(number: int, fig: ReportFigure) -> str:
    """One figure; a thumbnail links its full-resolution file and keeps its own size."""
    data = base64.b64encode(fig.png).decode("ascii")
    image = f'<img alt="{html.escape(fig.name)}" src="data:image/png;base64,{data}"'
    if fig.text_px is not None:
        image += f' data-text-px="{fig.text_px:g}"'
    image += ">"
    caption = f"<b>Figure {number}.</b> {html.escape(fig.caption)}"
    if fig.link:
        href = html.escape(fig.link)
        image = f'<div class="scroll thumb"><a href="{href}">{image}</a></div>'
        caption += f' <a href="{href}">Open the full-resolution image.</a>'
    return (
        f'<figure id="{html.escape(fig.name)}">{image}<figcaption>{caption}</figcaption></figure>'
    )


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
    report_dir: str | os.PathLike[str] | None = None,
) -> ReportInputs:
    """The tables, the figures listed in ``figures.tsv``, the card and software versions.

    ``report_dir`` is the folder the page will be written to: thumbnails link their
    full-resolution file relative to it (none without it).
    """
    figures: list[ReportFigure] = []
    if figures_dir is not None and (Path(figures_dir) / "figures.tsv").is_file():
        index = pd.read_csv(Path(figures_dir) / "figures.tsv", sep="\t", dtype=str)
        for row in index.itertuples():
            png = Path(figures_dir) / row.file
            full = getattr(row, "full", None)
            link = ""
            if isinstance(full, str) and full and report_dir is not None:
                link = Path(os.path.relpath(Path(figures_dir) / full, report_dir)).as_posix()
            text_px = pd.to_numeric(getattr(row, "text_px", None), errors="coerce")
            figures.append(
                ReportFigure(
                    row.name,
                    row.caption,
                    png.read_bytes(),
                    link=link,
                    text_px=None if pd.isna(text_px) else float(text_px),
                )
            )
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
