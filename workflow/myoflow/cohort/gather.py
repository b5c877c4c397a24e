"""The cohort gather: the analysis table and the exclusions, from the shard tables.

Every participant of the sheet ends in exactly one of two files: ``participants.tsv``
(the analysis table: phenotypes, every metric, QC and the cohort-level flags) or
``exclusions.tsv`` (the first stage that left them out, a reason code and what was
found). The stages, in order (:data:`myoflow.cohort.stats.cohort.STAGES`): ingestion (the
``inventory`` and ``convert`` steps), landmarks, segmentation, QC, metrics, phenotype.

Inputs are the per-shard tables, never per-participant files, so a 100,000-participant
gather reads a few thousand files (read as text by :mod:`myoflow.cohort.inputs`):

- the last stage's shard tables (``measure.tsv``; any stage tables may be given): one row
  per participant with ``status`` ok/excluded and the ``stage`` and ``reason`` that
  excluded it, carried forward from earlier steps;
- ``metrics.tsv``: ``participant_id`` and every key of
  :func:`myoflow.measure.metrics.participant_metrics` (profiles as JSON list text);
- ``qc.tsv``: ``participant_id``, ``qc_status`` (pass / warn / fail; warn only where the
  configuration keeps warnings, see :func:`myoflow.measure.qc.qc_status`), ``qc_reason``,
  ``qc_flags``.

Metrics are passed through as the text the measure stage wrote (no float reformatting;
and formatting 100,000 x 136 floats again would cost more than everything else here);
only the columns the gather needs are parsed. The CSA profiles (two thirds of the bytes)
go to ``csa_profiles.tsv`` beside ``participants.tsv``, so readers of the scalar table do
not pay for them. The iliopsoas muscle index is computed
here, where height first meets the volumes (as :func:`myoflow.measure.metrics.volume_summaries`:
total iliopsoas volume / height^2), replacing whatever the metrics table held. Cohort-level
flags are robust z-scores of volumes within sex (:func:`myoflow.measure.qc.robust_outliers`):
flagged, and excluded at the QC stage only when configured.

Without a phenotype table (config ``phenotypes`` null or absent) the gather still files
every participant: the phenotype columns (sex, age, height_cm, weight_kg, bmi) and the
IMI are empty, never zero, nobody is excluded at the phenotype stage, and the outlier
flags are robust z-scores over the whole cohort instead of within sex.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

from myoflow.cohort.inputs import GatherError, ShardTable
from myoflow.cohort.stats import normative
from myoflow.cohort.stats.cohort import (
    BMI_TOLERANCE,
    EXCLUSION_COLUMNS,
    PLAUSIBLE_RANGES,
    REQUIRED_PHENOTYPES,
    STAGES,
    AnalysisCohort,
    build_analysis_table,
    check_accounting,
)
from myoflow.core.io import write_bytes, write_tsv
from myoflow.measure.qc import robust_outliers

ID = "participant_id"
STEP_STAGES: Mapping[str, str] = {
    "inventory": "ingestion",
    "convert": "ingestion",
    "ingestion": "ingestion",
    "landmarks": "landmarks",
    "segment": "segmentation",
    "segmentation": "segmentation",
    "qc": "qc",
    "measure": "metrics",
    "metrics": "metrics",
}
"""Pipeline step named in a shard table's ``stage`` column -> analysis stage."""

GATHER_STEP = "gather"
"""The ``step`` of exclusions decided here (QC, phenotypes, missing rows, outliers)."""

EXCLUSIONS_COLUMNS = (*EXCLUSION_COLUMNS, "step")
QC_KEPT = ("pass", "warn")
"""QC statuses that stay in the analysis (``warn`` exists only when warnings are kept)."""

IMI = "imi_ml_m2"
IMI_VOLUME = "vol_iliopsoas_total_ml"
OUTLIER_COLUMNS = ("vol_iliopsoas_total_ml", "vol_gluteus_total_ml", "psoas_max_csa_total_cm2")
FLAG_COLUMNS = ("outlier_columns", "outlier_max_abs_z")
PHENOTYPE_COLUMNS = ("sex", "age", "height_cm", "weight_kg", "bmi")
"""The phenotype columns of participants.tsv, written empty when no table is configured."""
PROFILE_COLUMNS = tuple(normative.PROFILE_COLUMNS.values())
"""Metric columns that hold CSA profiles: written to csa_profiles.tsv, not participants.tsv."""


@dataclass(frozen=True)
class GatherSettings:
    """What the gather checks and flags (config ``stats``; defaults as shipped).

    Attributes:
        ranges: inclusive plausible limits per phenotype column.
        bmi_tolerance: largest accepted |BMI - weight / height^2| (None: not checked).
        required_phenotypes: phenotype columns that must be present.
        required_metrics: metric columns that must be present (else stage metrics).
        outlier_columns: volumes whose robust z-score within sex is flagged.
        outlier_threshold: |robust z| above this is an outlier (Iglewicz-Hoaglin 3.5).
        exclude_outliers: also exclude outliers (stage qc, reason cohort_outlier).
        outlier_min_n: fewest participants of a sex for its robust z-scores to flag
            anyone (a median and MAD of a handful of values flag nobody reliably).
    """

    ranges: Mapping[str, tuple[float, float]] = field(
        default_factory=lambda: dict(PLAUSIBLE_RANGES)
    )
    bmi_tolerance: float | None = BMI_TOLERANCE
    required_phenotypes: tuple[str, ...] = REQUIRED_PHENOTYPES
    required_metrics: tuple[str, ...] = (IMI_VOLUME,)
    outlier_columns: tuple[str, ...] = OUTLIER_COLUMNS
    outlier_threshold: float = 3.5
    exclude_outliers: bool = False
    outlier_min_n: int = 5

    @classmethod
    def from_config(cls, stats: Mapping[str, Any]) -> GatherSettings:
        """Settings from the config's ``stats`` block (missing keys keep the defaults)."""
        default = cls()
        outliers = stats.get("outliers", {}) or {}
        ranges = stats.get("plausible_ranges")
        return cls(
            ranges={k: (float(v[0]), float(v[1])) for k, v in ranges.items()}
            if ranges is not None
            else default.ranges,
            bmi_tolerance=stats.get("bmi_tolerance", default.bmi_tolerance),
            required_phenotypes=tuple(
                stats.get("required_phenotypes", default.required_phenotypes)
            ),
            required_metrics=tuple(stats.get("required_metrics", default.required_metrics)),
            outlier_columns=tuple(outliers.get("columns", default.outlier_columns)),
            outlier_threshold=float(outliers.get("threshold", default.outlier_threshold)),
            exclude_outliers=bool(outliers.get("exclude", default.exclude_outliers)),
            outlier_min_n=int(outliers.get("min_group_size", default.outlier_min_n)),
        )


# ---------------------------------------------------------------- exclusions and QC


def step_exclusions(steps: pd.DataFrame) -> pd.DataFrame:
    """The earliest exclusion of each participant in stage shard tables.

    Args:
        steps: rows of any stage shard tables (``participant_id``, ``status``, ``stage``,
            ``reason``, optional ``detail``); a participant may appear in several.

    Returns:
        ``participant_id``, ``stage`` (analysis stage), ``reason``, ``detail``, ``step``
        (the pipeline step named in the table), one row per excluded participant.

    Raises:
        GatherError: a status other than ok/excluded, or an unknown stage.
    """
    for column in (ID, "status", "stage", "reason"):
        if column not in steps.columns:
            raise GatherError(f"stage tables lack column {column!r}; they have {list(steps)}")
    status = steps["status"].fillna("").astype(str)
    odd = sorted(set(status) - {"ok", "excluded"})
    if odd:
        raise GatherError(f"stage tables hold status value(s) {odd}; expected ok or excluded")
    out = steps[status == "excluded"]
    step = out["stage"].fillna("").astype(str)
    unknown = sorted(set(step) - set(STEP_STAGES))
    if unknown:
        raise GatherError(
            f"stage tables name unknown stage(s) {unknown} for excluded participants; "
            f"known: {sorted(STEP_STAGES)}"
        )
    detail = out["detail"] if "detail" in out else pd.Series("", index=out.index)
    filed = pd.DataFrame(
        {
            ID: out[ID].astype(str),
            "stage": step.map(STEP_STAGES),
            "reason": out["reason"].fillna("").astype(str),
            "detail": detail.fillna("").astype(str),
            "step": step,
        }
    )
    order = filed["stage"].map({s: i for i, s in enumerate(STAGES)})
    filed = filed.assign(_order=order).sort_values("_order", kind="stable")
    return filed.drop_duplicates(ID).drop(columns="_order").reset_index(drop=True)


def qc_for_analysis(qc: pd.DataFrame) -> pd.DataFrame:
    """The QC table as :func:`build_analysis_table` reads it.

    ``pass`` and ``warn`` (kept warnings) become ``pass``; ``fail`` becomes the reason
    ``qc_fail`` and any other status ``qc_<status>``; the detail is ``qc_reason``.

    Raises:
        GatherError: the table lacks ``participant_id`` or ``qc_status``.
    """
    for column in (ID, "qc_status"):
        if column not in qc.columns:
            raise GatherError(f"QC tables lack column {column!r}; they have {list(qc)}")
    status = qc["qc_status"].fillna("missing").astype(str)
    mapped = np.where(status.isin(QC_KEPT), "pass", "qc_" + status)
    return qc.assign(qc_status=mapped)


# ---------------------------------------------------------------- the gather


@dataclass(frozen=True)
class GatheredCohort:
    """The analysis cohort, its outliers and the metrics text to write beside it.

    Attributes:
        cohort: included participants (phenotypes, parsed metrics, IMI, QC, flags) and
            the exclusions (with ``step``), adding up to the sheet.
        outliers: one row per outlying value (:func:`myoflow.measure.qc.robust_outliers`).
        metrics: the metrics shard tables' text (every column), for ``participants.tsv``.
    """

    cohort: AnalysisCohort
    outliers: pd.DataFrame
    metrics: ShardTable


def gather_cohort(
    sheet: pd.DataFrame,
    phenotypes: pd.DataFrame | None,
    steps: pd.DataFrame,
    metrics: ShardTable,
    qc: pd.DataFrame | None,
    settings: GatherSettings = GatherSettings(),
) -> GatheredCohort:
    """File every sheet participant in the analysis table or the exclusions.

    Args:
        sheet: the participant sheet (``participant_id``).
        phenotypes: one row per participant (sex, age, height_cm, weight_kg, bmi, ...);
            ``None``: no phenotype table is configured. The phenotype columns and the IMI
            are then empty, no one is excluded for lacking phenotypes, and outliers are
            flagged over the whole cohort (there is no sex to group by).
        steps: rows of the stage shard tables (see :func:`step_exclusions`).
        metrics: the metrics shard tables.
        qc: the QC shard tables (``None``: no QC stage, everyone with metrics passes).
        settings: plausible ranges, required columns, outlier flags.

    Raises:
        GatherError: unknown statuses or stages in the stage tables, no iliopsoas volume,
            or phenotype / QC columns that metrics also have.
        StatsInputError: a table repeats a participant or lacks a required column.
        AccountingError: the result does not add up to the sheet (a bug).
    """
    if IMI_VOLUME not in metrics.columns:
        raise GatherError(f"metrics tables lack {IMI_VOLUME}, which the IMI needs")
    required, ranges, bmi_tolerance = (
        settings.required_phenotypes,
        settings.ranges,
        settings.bmi_tolerance,
    )
    if phenotypes is None:  # nothing to check: every phenotype is unknown, not missing
        phenotypes = blank_phenotypes(sheet, settings.required_phenotypes)
        required, ranges, bmi_tolerance = (), {}, None
        outlier_groups = None
    else:
        outlier_groups = "sex"
    for name, table in (("phenotype", phenotypes), ("QC", qc)):
        shared = set(table.columns if table is not None else ()) & set(metrics.columns) - {ID}
        if shared:
            raise GatherError(f"the {name} table and the metrics share columns {sorted(shared)}")
    upstream = step_exclusions(steps)
    needed = [c for c in metrics.columns if c != ID and c in _needed_metrics(settings)]
    parsed = metrics.frame(needed)
    analysed_qc = None if qc is None else qc_for_analysis(qc)
    built = build_analysis_table(
        sheet,
        phenotypes,
        parsed,
        qc=analysed_qc,
        exclusions=upstream,
        required=required,
        ranges=ranges,
        bmi_tolerance=bmi_tolerance,
        required_metrics=settings.required_metrics,
    )
    table = built.table
    if qc is not None:  # show "warn" where warnings were kept, not the analysis' "pass"
        original = qc.set_index(qc[ID].astype(str))["qc_status"]
        table["qc_status"] = table[ID].map(original).to_numpy()
    table[IMI] = table[IMI_VOLUME] / (table["height_cm"] / 100.0) ** 2
    columns = [c for c in settings.outlier_columns if c in table.columns]
    if outlier_groups is None:
        large = table if len(table) >= settings.outlier_min_n else table.iloc[:0]
    else:
        sizes = table.groupby(outlier_groups)[ID].transform("size")
        large = table[sizes >= settings.outlier_min_n]
    outliers = robust_outliers(
        large, columns, by=outlier_groups, threshold=settings.outlier_threshold
    )
    table = _with_flags(table, outliers)
    exclusions = built.exclusions.merge(upstream[[ID, "step"]], on=ID, how="left")
    exclusions["step"] = exclusions["step"].fillna(GATHER_STEP)
    if settings.exclude_outliers and len(outliers):
        table, exclusions = _exclude_outliers(table, exclusions, outliers)
    cohort = AnalysisCohort(
        table=table.reset_index(drop=True),
        exclusions=exclusions[list(EXCLUSIONS_COLUMNS)].reset_index(drop=True),
        n_sheet=built.n_sheet,
    )
    check_accounting(sheet, cohort)
    return GatheredCohort(cohort=cohort, outliers=outliers.drop(columns="row"), metrics=metrics)


def blank_phenotypes(sheet: pd.DataFrame, columns: Sequence[str] = ()) -> pd.DataFrame:
    """A phenotype table of every sheet participant with every value unknown.

    Columns: ``participant_id``, then :data:`PHENOTYPE_COLUMNS` and any further
    ``columns``, all empty (written as empty cells: unknown, never zero).
    """
    ids = sheet[ID].astype(str).reset_index(drop=True)
    names = dict.fromkeys([*PHENOTYPE_COLUMNS, *columns])
    return pd.DataFrame(
        {ID: ids} | {c: pd.Series(np.nan, index=ids.index, dtype=object) for c in names}
    )


def _needed_metrics(settings: GatherSettings) -> set[str]:
    return {IMI_VOLUME, *settings.required_metrics, *settings.outlier_columns}


def _with_flags(table: pd.DataFrame, outliers: pd.DataFrame) -> pd.DataFrame:
    """``outlier_columns`` (names, ``;``-joined) and ``outlier_max_abs_z`` per participant."""
    out = table.copy()
    if len(outliers) == 0:
        out["outlier_columns"] = ""
        out["outlier_max_abs_z"] = np.nan
        return out
    by_row = outliers.assign(abs_z=outliers["z"].abs()).groupby("row", sort=False)
    names = by_row["column"].agg(";".join)
    out["outlier_columns"] = names.reindex(out.index).fillna("").to_numpy()
    out["outlier_max_abs_z"] = by_row["abs_z"].max().reindex(out.index).to_numpy()
    return out


def _exclude_outliers(
    table: pd.DataFrame, exclusions: pd.DataFrame, outliers: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    first = outliers.assign(abs_z=outliers["z"].abs()).sort_values("abs_z", ascending=False)
    first = first.drop_duplicates("participant_id")
    detail = (
        first["column"]
        + " robust z "
        + first["z"].round(1).astype(str)
        + " within "
        + first["group"].astype(str)
    )
    filed = pd.DataFrame(
        {
            ID: first["participant_id"].astype(str).to_numpy(),
            "stage": "qc",
            "reason": "cohort_outlier",
            "detail": detail.to_numpy(),
            "step": GATHER_STEP,
        }
    )
    kept = table[~table[ID].isin(filed[ID])]
    return kept, pd.concat([exclusions, filed], ignore_index=True)


# ---------------------------------------------------------------- files


def write_cohort(
    participants_path: str | os.PathLike[str],
    profiles_path: str | os.PathLike[str],
    gathered: GatheredCohort,
    profile_columns: Sequence[str] = PROFILE_COLUMNS,
) -> None:
    """Write ``participants.tsv`` and ``csa_profiles.tsv`` of the included participants.

    ``participants.tsv``: the phenotype columns, every scalar metric as the measure stage
    wrote it (byte for byte; the IMI recomputed from height in place of the metrics'
    own), then the QC and cohort flag columns. ``csa_profiles.tsv``: ``participant_id``
    and the profile columns (JSON list text, as written), kept apart because they are
    two thirds of the metrics' bytes and only the profile analyses read them.
    """
    table = gathered.cohort.table
    names = list(gathered.metrics.columns[1:])
    profiles = [c for c in profile_columns if c in names]
    scalars = [c for c in names if c not in profiles] + ([] if IMI in names else [IMI])
    parsed = set(names) | {IMI}
    after = [c for c in _tail_columns(table) if c not in parsed]
    before = [c for c in table.columns if c not in parsed and c not in after]
    imi = [b"" if v != v else repr(v).encode() for v in table[IMI].astype(float).tolist()]
    scalar_cells, profile_cells = _metric_cells(
        gathered.metrics, table[ID].astype(str), imi, profiles
    )
    lines = [b"\t".join(parts) for parts in zip(_cells(table[before]), scalar_cells, strict=True)]
    if after:
        lines = [b"\t".join(parts) for parts in zip(lines, _cells(table[after]), strict=True)]
    header = "\t".join([*before, *scalars, *after]).encode()
    _write_lines(participants_path, header, lines)
    ids = [i.encode() for i in table[ID].astype(str).tolist()]
    _write_lines(
        profiles_path,
        "\t".join([ID, *profiles]).encode(),
        [i + b"\t" + cells for i, cells in zip(ids, profile_cells, strict=True)]
        if profiles
        else list(ids),
    )


def _write_lines(path: str | os.PathLike[str], header: bytes, lines: Sequence[bytes]) -> None:
    write_bytes(path, b"\n".join([header, *lines]) + b"\n")


def _tail_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("qc_") or c in FLAG_COLUMNS]


def _cells(frame: pd.DataFrame) -> list[bytes]:
    """Each row of ``frame`` as tab-joined cells, as :func:`myoflow.core.io.write_tsv` writes."""
    text = frame.to_csv(sep="\t", index=False, header=False, lineterminator="\n")
    return text.encode("utf-8").split(b"\n")[:-1]


def _metric_cells(
    metrics: ShardTable, ids: pd.Series, imi: Sequence[bytes], profiles: Sequence[str]
) -> tuple[list[bytes], list[bytes]]:
    """Per participant of ``ids``: (scalar metric cells with ``imi`` in the IMI's place or
    appended, profile cells), each tab-joined, as the metrics table holds them."""
    rows = metrics.rows()
    names = list(metrics.columns[1:])
    imi_at = names.index(IMI) if IMI in names else None
    profile_at = [names.index(c) for c in profiles]
    keep = [i for i in range(len(names)) if i not in profile_at]
    if imi_at is None:
        keep.append(len(names))  # the IMI, appended to each row's cells below
    pick_scalars, pick_profiles = _picker(keep), _picker(profile_at)
    scalar, profile = [], []
    for pid, value in zip([i.encode() for i in ids.tolist()], imi, strict=True):
        cells = rows[pid].split(b"\t")
        if len(cells) != len(names):
            raise GatherError(
                f"participant {pid.decode()} has {len(cells)} metric cells, the header {len(names)}"
            )
        if imi_at is None:
            cells.append(value)
        else:
            cells[imi_at] = value
        scalar.append(b"\t".join(pick_scalars(cells)))
        profile.append(b"\t".join(pick_profiles(cells)))
    return scalar, profile


def _picker(indices: Sequence[int]):
    """A function giving the items at ``indices`` as a tuple (C speed, via itemgetter)."""
    if len(indices) > 1:
        return itemgetter(*indices)
    return lambda items: tuple(items[i] for i in indices)


def write_exclusions(path: str | os.PathLike[str], cohort: AnalysisCohort) -> None:
    """Write ``exclusions.tsv``: participant_id, stage, reason, detail, step."""
    write_tsv(path, cohort.exclusions)
