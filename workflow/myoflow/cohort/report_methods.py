"""The report's words: counts, the model and the methods, written from what ran.

:func:`methods` writes the methods paragraphs from the configuration, the model card, the
software versions and the counts of the analysis tables; nothing here reads files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from myoflow.cohort.analysis import NEEDS_PHENOTYPES, AnalysisSettings
from myoflow.cohort.gather import GatherSettings
from myoflow.cohort.names import label, readable_formula
from myoflow.cohort.stats import describe
from myoflow.cohort.stats.groups import interval_labels
from myoflow.core.labels import ALL_LABELS, LABELS

SEX_WORDS = {"F": "women", "M": "men"}


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


def nnunet_summary(model: Mapping[str, Any]) -> list[str]:
    """Sentences about an nnU-Net v2 segmentation backend from the config's ``model``
    section (docs/backends.md), naming the structures its label mapping does not provide."""
    mapped = {str(name) for name in (model.get("labels") or {}).values()}
    name = Path(str(model.get("dir", ""))).name or "an nnU-Net v2 model"
    folds = ", ".join(str(f) for f in model.get("folds") or [])
    channels = ", ".join(model.get("channels") or [])
    region = (
        "a box around the hip joint centres"
        if model.get("region") == "hips"
        else "the whole stitched volume"
    )
    parts = [
        f"Muscles were segmented by the nnU-Net v2 model {name} (fold(s) {folds}; input "
        f"channels {channels}) on {region}, its labels mapped to "
        + ", ".join(n for n in ALL_LABELS if n in mapped)
        + "."
    ]
    missing = [n for n in LABELS if n not in mapped]
    if missing:
        parts.append(
            "The model does not provide "
            + ", ".join(missing)
            + (
                " (it labels the iliopsoas without a psoas major/iliacus split)."
                if {"iliopsoas_left", "iliopsoas_right"} & mapped
                else "."
            )
        )
    return parts


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
        sexes = ", ".join(f"{n} {SEX_WORDS.get(s, s)}" for s, n in sorted(c["by_sex"].items()))
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
    model = config.get("model", {}) or {}
    backend_words = (
        nnunet_summary(model) if model.get("backend") == "nnunetv2" else model_summary(card)
    )
    paragraphs.append(" ".join(backend_words))
    keep = (config.get("qc", {}) or {}).get("keep_warnings")
    no_phenotypes = without_phenotypes(tables)
    outliers = (
        f"Volumes with a robust z-score (0.6745 (x - median) / MAD, "
        f"{'over the whole cohort' if no_phenotypes else 'within sex'}) beyond "
        f"{gather.outlier_threshold:g} "
        f"({', '.join(label(c) for c in gather.outlier_columns)}) were "
        + ("excluded." if gather.exclude_outliers else "flagged but kept.")
    )
    ranges = ", ".join(f"{label(k)} {lo:g}-{hi:g}" for k, (lo, hi) in gather.ranges.items())
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
            qc
            + ". Phenotypes had to be present "
            + f"({', '.join(map(label, gather.required_phenotypes))}) "
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
    formulas = "; ".join(readable_formula(r.formula) for r in analysis.regressions)
    least = analysis.minimum
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
            f"{', '.join(label(m) for m in analysis.gam_metrics)} were fitted per sex as "
            "generalised additive "
            f"models with a cubic regression spline (mgcv's s(age, bs = 'cr', k = "
            f"{analysis.gam_k}), smoothing by {analysis.gam_method}). Normative percentiles "
            f"({', '.join(f'{q:g}' for q in analysis.percentiles)}; linear interpolation) are "
            f"given by sex and age group ({ages}) and, for "
            f"{', '.join(label(m) for m in analysis.bmi_class_metrics)}, by WHO BMI class "
            f"({', '.join(analysis.bmi_labels)}). All intervals are {level}. "
            "Every statistic needs a least number of participants per group (config "
            f"stats.min_group_size): mean and SD {least.describe}, Welch t-test "
            f"{least.ttest} per sex, asymmetry {least.asymmetry} pairs, correlation "
            f"{least.correlation} pairs, regression {least.regression} (and more than its "
            f"coefficients + 1), GAM {least.gam} (and 2 k), percentiles {least.percentiles} "
            f"per sex and age group, robust z-score flags {analysis.outlier_min_n} per sex; "
            "a smaller group is shown as not estimable (n = k) and the other groups are "
            "analysed."
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
