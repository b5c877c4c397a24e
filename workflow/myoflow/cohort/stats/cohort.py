"""The analysis table: one row per included participant, and why every other one is out.

``build_analysis_table`` joins the participant sheet, the phenotypes, the per-participant
metrics and QC, and the exclusions recorded by earlier stages. Each participant on the
sheet ends up in exactly one place: the analysis table, or the exclusions table at the
first stage that excluded them (``STAGES`` order). ``check_accounting`` proves it, so the
counts of a flow diagram add up to the sheet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from myoflow.cohort.stats._common import StatsInputError, require_columns
from myoflow.core.errors import MyoflowError

ID = "participant_id"
STAGES = ("ingestion", "landmarks", "segmentation", "qc", "metrics", "phenotype")
"""Stages in the order participants pass them; an exclusion is filed at the first one."""

EXCLUSION_COLUMNS = (ID, "stage", "reason", "detail")

REQUIRED_PHENOTYPES = ("sex", "age", "height_cm", "weight_kg", "bmi")
SEX_CODES = ("F", "M")

PLAUSIBLE_RANGES: Mapping[str, tuple[float, float]] = {
    "height_cm": (100.0, 230.0),
    "weight_kg": (30.0, 300.0),
    "age": (0.0, 120.0),
    "bmi": (10.0, 80.0),
}
"""Inclusive plausible limits of each phenotype; values outside exclude the participant."""

BMI_TOLERANCE = 1.0
"""Largest accepted gap (kg/m2) between the recorded BMI and weight / height^2."""

QC_PASS = "pass"


class AccountingError(MyoflowError):
    """Participants are lost, duplicated or counted twice between the sheet and the tables."""


@dataclass(frozen=True)
class AnalysisCohort:
    """The analysis table, the exclusions and the sheet size they must add up to.

    Attributes:
        table: included participants; ``participant_id``, phenotype, metric and QC columns.
        exclusions: one row per excluded participant: ``participant_id``, ``stage``,
            ``reason`` (a short code) and ``detail`` (what was found).
        n_sheet: participants on the sheet.
    """

    table: pd.DataFrame
    exclusions: pd.DataFrame
    n_sheet: int

    def flow(self) -> pd.DataFrame:
        """Participants entering, excluded at and leaving each stage (a flow diagram)."""
        excluded = self.exclusions["stage"].value_counts()
        stages = list(STAGES) + sorted(set(excluded.index) - set(STAGES))
        rows, remaining = [], self.n_sheet
        for stage in stages:
            out = int(excluded.get(stage, 0))
            rows.append({"stage": stage, "n_in": remaining, "excluded": out})
            remaining -= out
            rows[-1]["n_out"] = remaining
        return pd.DataFrame(rows, columns=["stage", "n_in", "excluded", "n_out"])

    def exclusion_counts(self) -> pd.DataFrame:
        """Excluded participants per stage and reason, in stage order."""
        counts = self.exclusions.groupby(["stage", "reason"], sort=False).size()
        counts = counts.rename("n").reset_index()
        order = {s: i for i, s in enumerate(STAGES)}
        counts["_order"] = counts["stage"].map(order).fillna(len(STAGES))
        counts = counts.sort_values(["_order", "stage", "reason"], kind="stable")
        return counts.drop(columns="_order").reset_index(drop=True)


def _unique_ids(table: pd.DataFrame, what: str) -> pd.DataFrame:
    require_columns(table, [ID], what)
    out = table.copy()
    out[ID] = out[ID].astype(str)
    duplicated = out[ID][out[ID].duplicated()].unique()
    if len(duplicated):
        raise StatsInputError(f"{what} lists participant(s) more than once: {list(duplicated[:5])}")
    return out


def _exclusion_rows(ids: pd.Series, stage: str, reason: str, detail: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {ID: ids.astype(str).to_numpy(), "stage": stage, "reason": reason, "detail": detail},
        columns=list(EXCLUSION_COLUMNS),
    )


def phenotype_problems(
    phenotypes: pd.DataFrame,
    *,
    required: Sequence[str] = REQUIRED_PHENOTYPES,
    ranges: Mapping[str, tuple[float, float]] = PLAUSIBLE_RANGES,
    bmi_tolerance: float | None = BMI_TOLERANCE,
) -> pd.DataFrame:
    """First phenotype problem of each participant that has one (exclusion columns).

    Reasons: ``missing_phenotype`` (a required value empty), ``implausible_phenotype``
    (outside ``ranges``, sex not F/M, or BMI more than ``bmi_tolerance`` from
    weight / height^2; ``None`` skips that check).
    """
    require_columns(phenotypes, [ID, *required, *ranges], "phenotype table")
    reason = pd.Series("", index=phenotypes.index, dtype=object)
    detail = pd.Series("", index=phenotypes.index, dtype=object)

    def flag(mask: pd.Series, why: str, what: Callable[[pd.Series], pd.Series] | str) -> None:
        new = mask & (reason == "")
        if new.any():  # build the detail text only for the rows it describes
            reason[new] = why
            detail[new] = what if isinstance(what, str) else what(new)

    def shown(column: str, suffix: str = "") -> Callable[[pd.Series], pd.Series]:
        return lambda m: f"{column} " + phenotypes.loc[m, column].astype(str) + suffix

    for column in required:
        blank = phenotypes[column].isna() | (phenotypes[column].astype(str).str.strip() == "")
        flag(blank, "missing_phenotype", f"{column} empty")
    if "sex" in phenotypes:
        bad_sex = ~phenotypes["sex"].isin(SEX_CODES) & phenotypes["sex"].notna()
        flag(bad_sex, "implausible_phenotype", shown("sex"))
    for column, (lo, hi) in ranges.items():
        value, raw = pd.to_numeric(phenotypes[column], errors="coerce"), phenotypes[column]
        flag(value.isna() & raw.notna(), "implausible_phenotype", shown(column))
        outside = (value < lo) | (value > hi)
        flag(outside, "implausible_phenotype", shown(column, f" outside {lo:g}-{hi:g}"))
    if bmi_tolerance is not None and {"bmi", "weight_kg", "height_cm"} <= set(phenotypes):
        w, h = (pd.to_numeric(phenotypes[c], errors="coerce") for c in ("weight_kg", "height_cm"))
        implied = w / (h / 100.0) ** 2
        bmi = pd.to_numeric(phenotypes["bmi"], errors="coerce")

        def what(m: pd.Series) -> pd.Series:
            recorded = bmi[m].round(1).astype(str)
            return "bmi " + recorded + " but weight/height^2 " + implied[m].round(1).astype(str)

        flag((bmi - implied).abs() > bmi_tolerance, "implausible_phenotype", what)
    bad = reason != ""
    return pd.DataFrame(
        {ID: phenotypes.loc[bad, ID].astype(str), "stage": "phenotype"}
        | {"reason": reason[bad], "detail": detail[bad]},
        columns=list(EXCLUSION_COLUMNS),
    ).reset_index(drop=True)


def _first_upstream(exclusions: pd.DataFrame | None, sheet_ids: pd.Index) -> pd.DataFrame:
    if exclusions is None or exclusions.empty:
        return pd.DataFrame(columns=list(EXCLUSION_COLUMNS))
    require_columns(exclusions, [ID, "stage", "reason"], "exclusions table")
    upstream = exclusions.copy()
    upstream[ID] = upstream[ID].astype(str)
    if "detail" not in upstream:
        upstream["detail"] = ""
    unknown = sorted(set(upstream["stage"]) - set(STAGES))
    if unknown:
        raise StatsInputError(f"exclusions name unknown stage(s) {unknown}; known: {STAGES}")
    strangers = sorted(set(upstream[ID]) - set(sheet_ids))
    if strangers:
        raise StatsInputError(f"exclusions name participants not on the sheet: {strangers[:5]}")
    upstream["_order"] = upstream["stage"].map({s: i for i, s in enumerate(STAGES)})
    upstream = upstream.sort_values(["_order"], kind="stable").drop_duplicates(ID)
    return upstream[list(EXCLUSION_COLUMNS)]


def build_analysis_table(
    participants: pd.DataFrame,
    phenotypes: pd.DataFrame,
    metrics: pd.DataFrame,
    *,
    qc: pd.DataFrame | None = None,
    exclusions: pd.DataFrame | None = None,
    required: Sequence[str] = REQUIRED_PHENOTYPES,
    ranges: Mapping[str, tuple[float, float]] = PLAUSIBLE_RANGES,
    bmi_tolerance: float | None = BMI_TOLERANCE,
    required_metrics: Sequence[str] = (),
) -> AnalysisCohort:
    """Join sheet, phenotypes, metrics and QC; file every participant left out.

    Args:
        participants: the participant sheet (``participant_id``; other columns ignored).
        phenotypes: one row per participant (``phenotypes.tsv``).
        metrics: one row per participant that reached the metrics stage.
        qc: ``participant_id``, ``qc_status`` (``"pass"`` keeps the participant; any other
            value is the exclusion reason) and optionally ``qc_reason`` (the detail).
            ``None``: no QC stage; everyone with metrics passes.
        exclusions: exclusions recorded upstream (``participant_id``, ``stage``, ``reason``,
            optional ``detail``), e.g. gathered ``exclusion.json`` files; a participant may
            appear at several stages, the first in ``STAGES`` order counts.
        required: phenotype columns that must be present.
        ranges: inclusive plausible limits per phenotype column (configurable).
        bmi_tolerance: largest accepted |BMI - weight/height^2|; ``None`` skips the check.
        required_metrics: metric columns that must be present (else stage "metrics").

    Raises:
        StatsInputError: a table lacks ``participant_id`` or repeats a participant,
            tables share a column name, or exclusions name an unknown stage.
    """
    sheet = _unique_ids(participants, "participant sheet")[[ID]]
    phenotypes = _unique_ids(phenotypes, "phenotype table")
    metrics = _unique_ids(metrics, "metrics table")
    tables = {"phenotypes": phenotypes, "metrics": metrics}
    if qc is not None:
        qc = _unique_ids(qc, "QC table")
        require_columns(qc, ["qc_status"], "QC table")
        tables["qc"] = qc
    _refuse_shared_columns(tables)

    ids = pd.Index(sheet[ID])
    filed = [_first_upstream(exclusions, ids)]
    out = set(filed[0][ID])

    def file(who: pd.Series, stage: str, reason: str, detail: Sequence[str] | str) -> None:
        who = pd.Series(who, dtype=object).reset_index(drop=True)
        why = pd.Series([detail] * len(who) if isinstance(detail, str) else list(detail))
        keep = ~who.isin(out)
        filed.append(_exclusion_rows(who[keep], stage, reason, why[keep].astype(str).tolist()))
        out.update(who[keep])

    everyone = sheet[ID]
    if qc is not None:
        file(everyone[~everyone.isin(qc[ID])], "qc", "qc_missing", "no QC row")
        failed = qc[(qc["qc_status"].astype(str) != QC_PASS) & qc[ID].isin(everyone)]
        for status, rows in failed.groupby("qc_status", sort=True):
            why = rows["qc_reason"].fillna(status).astype(str) if "qc_reason" in rows else status
            file(rows[ID], "qc", str(status), why if isinstance(why, pd.Series) else str(why))
    file(everyone[~everyone.isin(metrics[ID])], "metrics", "metrics_missing", "no metrics row")
    require_columns(metrics, required_metrics, "metrics table")
    for column in required_metrics:
        empty = metrics.loc[pd.to_numeric(metrics[column], errors="coerce").isna(), ID]
        file(everyone[everyone.isin(empty)], "metrics", "metric_missing", f"{column} empty")
    no_row = everyone[~everyone.isin(phenotypes[ID])]
    file(no_row, "phenotype", "phenotype_missing", "no phenotype row")
    problems = phenotype_problems(
        phenotypes[phenotypes[ID].isin(everyone)],
        required=required,
        ranges=ranges,
        bmi_tolerance=bmi_tolerance,
    )
    for reason, rows in problems.groupby("reason", sort=True):
        file(rows[ID], "phenotype", str(reason), rows["detail"])

    filed = [f for f in filed if len(f)]
    if filed:
        excluded = pd.concat(filed, ignore_index=True)
    else:
        excluded = pd.DataFrame(columns=list(EXCLUSION_COLUMNS), dtype=object)
    included = sheet[~sheet[ID].isin(excluded[ID])]
    table = included.merge(phenotypes, on=ID, how="left").merge(metrics, on=ID, how="left")
    if qc is not None:
        table = table.merge(qc, on=ID, how="left")
    for column in ("age", "height_cm", "weight_kg", "bmi"):
        if column in table:
            table[column] = pd.to_numeric(table[column])
    return AnalysisCohort(table=table, exclusions=excluded, n_sheet=len(sheet))


def _refuse_shared_columns(tables: Mapping[str, pd.DataFrame]) -> None:
    seen: dict[str, str] = {}
    for name, table in tables.items():
        for column in table.columns:
            if column != ID and column in seen:
                raise StatsInputError(
                    f"column {column!r} is in both the {seen[column]} and the {name} table"
                )
            seen.setdefault(column, name)


def check_accounting(participants: pd.DataFrame, cohort: AnalysisCohort) -> None:
    """Raise :class:`AccountingError` unless every sheet participant is counted exactly once.

    Every participant must be in the analysis table or the exclusions, never both, never
    twice, and nobody else may appear; so included + excluded = the sheet, per stage too.
    """
    sheet = participants[ID].astype(str)
    included, excluded = cohort.table[ID].astype(str), cohort.exclusions[ID].astype(str)
    problems = []
    for name, ids in (("analysis table", included), ("exclusions", excluded)):
        twice = sorted(ids[ids.duplicated()].unique())
        if twice:
            problems.append(f"{name} counts {twice[:5]} more than once")
    both = sorted(set(included) & set(excluded))
    if both:
        problems.append(f"{both[:5]} are both included and excluded")
    lost = sorted(set(sheet) - set(included) - set(excluded))
    if lost:
        problems.append(f"{len(lost)} sheet participant(s) are nowhere: {lost[:5]}")
    strangers = sorted((set(included) | set(excluded)) - set(sheet))
    if strangers:
        problems.append(f"{len(strangers)} participant(s) are not on the sheet: {strangers[:5]}")
    if len(included) + len(excluded) != len(sheet) or cohort.n_sheet != len(sheet):
        problems.append(
            f"{len(included)} included + {len(excluded)} excluded != {len(sheet)} on the sheet"
            f" (cohort says {cohort.n_sheet})"
        )
    flow = cohort.flow()
    if len(flow) and flow["n_out"].iloc[-1] != len(included):
        problems.append(f"the flow ends at {flow['n_out'].iloc[-1]}, not {len(included)}")
    if problems:
        raise AccountingError("; ".join(problems))
