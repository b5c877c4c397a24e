"""The papers side by side: this cohort's key results next to the published values.

Two studies set the numbers a reader compares with:

- the UK Biobank iliopsoas study (5,000 participants): total iliopsoas volume by sex, the
  right side about 2 % larger, the iliopsoas muscle index (IMI) against BMI and height,
  and a GAM of IMI on age by sex;
- the NAKO study (27,805 participants): maximum psoas cross-sectional area (left + right)
  and gluteus volume by sex, and normative 10th/50th/90th percentiles by age group.

:func:`papers_table` reads the cohort's numbers from the analysis tables (nothing is
computed again) and, for a synthetic cohort, the planted values from its
``manifest.json`` (``planted_effects``, as ``myoflow synth`` writes it). Where the cohort
cannot estimate a value, the cell says so with n. Published values are quoted as the
papers give them; where a paper gives a figure rather than a number, the row says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

UKBB = "UK Biobank iliopsoas (n = 5,000)"
NAKO = "NAKO (n = 27,805)"
SEX_WORDS = {"F": "women", "M": "men"}


@dataclass(frozen=True)
class Published:
    """One published value: study, what, the analysis-table column, sex, value, spread."""

    source: str
    quantity: str
    metric: str
    sex: str
    value: float | None
    sd: float | None = None
    scale: float = 1.0
    """Factor from the analysis column's unit to the quantity's (ml -> L: 0.001)."""
    text: str = ""
    """The published value as words, where the paper gives no single number."""


PUBLISHED = (
    Published(UKBB, "Iliopsoas volume, total (ml)", "vol_iliopsoas_total_ml", "F", 542, 72),
    Published(UKBB, "Iliopsoas volume, total (ml)", "vol_iliopsoas_total_ml", "M", 815, 125),
    Published(NAKO, "Maximum psoas CSA, left + right (cm²)", "psoas_max_csa_total_cm2", "F", 24.5),
    Published(NAKO, "Maximum psoas CSA, left + right (cm²)", "psoas_max_csa_total_cm2", "M", 37.9),
    Published(NAKO, "Gluteus volume, total (L)", "vol_gluteus_total_ml", "F", 2.39, scale=1e-3),
    Published(NAKO, "Gluteus volume, total (L)", "vol_gluteus_total_ml", "M", 3.38, scale=1e-3),
)
"""Means (± SD where the paper gives one) by sex."""

ASYMMETRY_PUBLISHED = "right about 2 % larger"
IMI_BMI_PUBLISHED = 0.49
COLUMNS = ["source", "quantity", "sex", "published", "cohort", "planted", "note"]


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def _digits(value: float) -> int:
    return 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0


def _mean_sd(mean: float, sd: float | None, scale: float = 1.0) -> str:
    mean *= scale
    d = _digits(mean)
    if sd is None or pd.isna(sd):
        return _fmt(mean, d)
    return f"{_fmt(mean, d)} ± {_fmt(sd * scale, d)}"


def _table2_cell(t2: pd.DataFrame | None, metric: str, sex: str, scale: float) -> str:
    if t2 is None or metric not in set(t2["metric"]):
        return "not analysed"
    row = t2[t2["metric"] == metric].iloc[0]
    n = int(row[f"n_{sex}"])
    mean = row.get(f"mean_{sex}")
    if mean is None or pd.isna(mean):
        return f"not estimable (n = {n})"
    return f"{_mean_sd(float(mean), float(row[f'sd_{sex}']), scale)} (n = {n})"


def _with_ci(value: float, low: float, high: float, digits: int = 2) -> str:
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _row_cell(frame: pd.DataFrame | None, where: Mapping[str, str], value: str, ci=True) -> str:
    """``value`` [ci_low, ci_high] of the row of ``frame`` matching ``where``, or its note."""
    if frame is None:
        return "not analysed"
    match = frame
    for column, wanted in where.items():
        if column not in match.columns:
            return "not analysed"
        match = match[match[column].astype(str) == wanted]
    if match.empty:
        return "not analysed"
    row = match.iloc[0]
    n = f" (n = {int(row['n'])})" if "n" in row and not pd.isna(row["n"]) else ""
    if pd.isna(row.get(value)):
        note = row.get("note")
        return str(note) if isinstance(note, str) and note else f"not estimable{n}"
    low, high = (
        ("ci_low", "ci_high")
        if value in ("r", "estimate")
        else (
            f"{value.rsplit('_', 1)[0]}_ci_low",
            f"{value.rsplit('_', 1)[0]}_ci_high",
        )
    )
    if ci and low in row and not pd.isna(row[low]):
        return _with_ci(float(row[value]), float(row[low]), float(row[high])) + n
    return f"{float(row[value]):.2f}{n}"


def _planted(planted: Mapping[str, Any] | None, sex: str, kind: str, key: str) -> Any:
    if not planted:
        return None
    return ((planted.get("by_sex") or {}).get(sex) or {}).get(kind, {}).get(key)


def papers_table(
    tables: Mapping[str, pd.DataFrame],
    manifest: Mapping[str, Any] | None = None,
    skipped: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per published quantity and sex: published, this cohort, planted (if synthetic).

    Args:
        tables: the analysis tables by name (``table2``, ``asymmetry``, ``correlations``,
            ``regression_coefficients``, ``gam_summary``).
        manifest: a synthetic cohort's ``manifest.json`` (None for a real cohort).
        skipped: analysis -> why it did not run (the ``analyses`` record), for the cells
            of analyses without a table ("women: not estimable (n = 4; needs 5)").
    """
    why_not = dict(skipped or {})
    planted = (manifest or {}).get("planted_effects") if manifest else None
    t2 = tables.get("table2")
    rows = []

    def add(source, quantity, sex, published, cohort, planted_text, note=""):
        rows.append(
            [
                source,
                quantity,
                SEX_WORDS.get(sex, sex),
                published,
                cohort,
                planted_text if planted is not None else "",
                note,
            ]
        )

    def add_published(items: Sequence[Published]) -> None:
        for item in items:
            add(
                item.source,
                item.quantity,
                item.sex,
                _mean_sd(item.value, item.sd),
                _table2_cell(t2, item.metric, item.sex, item.scale),
                _planted_mean(planted, item),
            )

    add_published(PUBLISHED[:2])
    asymmetry = tables.get("asymmetry")
    spread = (planted or {}).get("iliopsoas_asymmetry_pct") or {}
    for sex in ("F", "M"):
        add(
            UKBB,
            "Iliopsoas asymmetry, 100 (right - left) / mean (%) [CI]",
            sex,
            ASYMMETRY_PUBLISHED,
            _row_cell(asymmetry, {"structure": "iliopsoas", "sex": sex}, "asym_pct_mean"),
            _mean_sd(spread["mean"], spread.get("sd")) if "mean" in spread else "",
        )
    correlations = tables.get("correlations")
    for sex in ("F", "M"):
        value = _planted(planted, sex, "r", "imi_ml_m2|bmi")
        add(
            UKBB,
            "Pearson r, IMI with BMI [CI]",
            sex,
            f"{IMI_BMI_PUBLISHED:.2f}",
            _row_cell(correlations, {"x": "imi_ml_m2", "y": "bmi", "sex": sex}, "r")
            if correlations is not None
            else _why(why_not, "correlations", sex),
            "" if value is None else f"{value:.2f}",
        )
    for sex in ("F", "M"):
        value = _planted(planted, sex, "r", "vol_iliopsoas_total_ml|height_cm")
        add(
            UKBB,
            "Pearson r, iliopsoas volume with height [CI]",
            sex,
            "reported (a positive r; see the paper)",
            _row_cell(
                correlations, {"x": "vol_iliopsoas_total_ml", "y": "height_cm", "sex": sex}, "r"
            )
            if correlations is not None
            else _why(why_not, "correlations", sex),
            "" if value is None else f"{value:.2f}",
        )
    rows += _imi_age_rows(tables, planted, why_not)
    add_published(PUBLISHED[2:])
    return pd.DataFrame(rows, columns=COLUMNS)


def _planted_mean(planted: Mapping[str, Any] | None, item: Published) -> str:
    mean = _planted(planted, item.sex, "mean", item.metric)
    if mean is None:
        return ""
    return _mean_sd(float(mean), _planted(planted, item.sex, "sd", item.metric), item.scale)


def _why(skipped: Mapping[str, str], analysis: str, sex: str) -> str:
    """Why ``analysis`` gave nothing for ``sex``: its record's words about that sex."""
    message = skipped.get(analysis)
    if message is None:
        return "not analysed"
    word = SEX_WORDS.get(sex, sex)
    words = "|".join(SEX_WORDS.values())
    found = re.search(rf"(?:^|: |; ){word}: (.*?)(?=; (?:{words}): |$)", message)
    return found[1] if found else message


def _imi_age_rows(
    tables: Mapping[str, pd.DataFrame],
    planted: Mapping[str, Any] | None,
    skipped: Mapping[str, str],
) -> list[list[str]]:
    """IMI on age: the GAM (a figure in the paper) and the hinge slopes before/after 60."""
    rows = []
    summary = tables.get("gam_summary")
    for sex in ("F", "M"):
        cohort = _row_cell(summary, {"metric": "imi_ml_m2", "sex": sex}, "edf", ci=False)
        if summary is None:
            cohort = _why(skipped, "gam", sex)
        elif not cohort.startswith("not"):
            cohort = f"GAM fitted, EDF {cohort} (see the figure)"
        rows.append(
            [
                UKBB,
                "IMI against age (GAM by sex)",
                SEX_WORDS[sex],
                "GAM curve by sex (a figure in the paper)",
                cohort,
                "",
                "",
            ]
        )
    coefficients = tables.get("regression_coefficients")
    terms = {
        "before_60": "np.minimum(age - 60, 0)",
        "after_60": "np.maximum(age - 60, 0)",
    }
    for piece, term in terms.items():
        for sex in ("F", "M"):
            value = _planted(planted, sex, "imi_age_slope", piece)
            cohort = _row_cell(coefficients, {"term": term, "sex": sex}, "estimate")
            if cohort == "not analysed" and coefficients is not None:
                cohort = _model_note(tables.get("regression_models"), term, sex)
            if cohort == "not analysed":
                hinge = next((a for a, m in skipped.items() if term in m), None)
                cohort = _why(skipped, hinge, sex) if hinge else cohort
            rows.append(
                [
                    UKBB,
                    f"IMI change per year, {piece.replace('_', ' ')} (ml/m² per year) [CI]",
                    SEX_WORDS[sex],
                    "see the GAM figure of the paper",
                    cohort,
                    "" if planted is None or value is None else f"{value:.2f}",
                    "",
                ]
            )
    return rows


def _model_note(models: pd.DataFrame | None, term: str, sex: str) -> str:
    """The note of the regression whose formula holds ``term``, for ``sex``."""
    if models is None or "formula" not in models.columns:
        return "not analysed"
    match = models[models["formula"].astype(str).str.contains(term, regex=False)]
    match = match[match["sex"].astype(str) == sex] if "sex" in match.columns else match
    if match.empty:
        return "not analysed"
    note = match.iloc[0].get("note")
    return str(note) if isinstance(note, str) and note else "not analysed"


def nako_percentiles(
    tables: Mapping[str, pd.DataFrame], metric: str = "psoas_max_csa_total_cm2"
) -> pd.DataFrame:
    """The cohort's 10th/50th/90th percentiles of ``metric`` by sex and age group, as text."""
    table = tables.get("percentiles_age")
    if table is None or metric not in set(table["metric"]):
        return pd.DataFrame()
    rows = table[table["metric"] == metric]
    quantiles = [c for c in ("p10", "p50", "p90") if c in rows.columns]
    out = []
    for _, r in rows.iterrows():
        if any(pd.isna(r[q]) for q in quantiles):
            text = str(r.get("note") or f"not estimable (n = {int(r['n'])})")
        else:
            text = " / ".join(f"{float(r[q]):.1f}" for q in quantiles)
        out.append(
            {
                "sex": SEX_WORDS.get(str(r["sex"]), r["sex"]),
                "age_group": r["age_group"],
                "n": int(r["n"]),
                "p10 / p50 / p90": text,
            }
        )
    return pd.DataFrame(out)


def synthetic_cohort(manifest: Mapping[str, Any] | None) -> pd.DataFrame:
    """One row describing a synthetic cohort (protocol, size, voxel size), or no rows."""
    if not manifest:
        return pd.DataFrame()
    spacing = (manifest.get("grid") or {}).get("spacing_mm") or []
    return pd.DataFrame(
        [
            {
                "generator": manifest.get("generator", ""),
                "protocol": manifest.get("protocol", ""),
                "size": manifest.get("size", ""),
                "participants": manifest.get("participants", np.nan),
                "seed": manifest.get("seed", np.nan),
                "spacing_mm": " x ".join(f"{float(v):.3g}" for v in spacing),
            }
        ]
    )
