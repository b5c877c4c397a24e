"""Quality control of one participant (``qc/flags.json``) and cohort outliers.

Flags (:func:`participant_flags`) come from the fat-water swap decisions
(:mod:`myoflow.measure.swaps`), the landmarks and the metrics record. A flag is a dict with
``name``, ``severity`` ("fail" excludes from statistics, "warn" only if configured, see
:func:`qc_status`), ``value``, ``threshold`` and ``message``. :func:`robust_outliers`
finds outlying values across the cohort.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from myoflow.core.errors import MyoflowError
from myoflow.core.labels import GROUPS, LABELS, MUSCLES
from myoflow.measure.swaps import SwapDecision

ASYMMETRY_GROUPS = (*MUSCLES, *GROUPS)
"""Muscles and groups whose ``{name}_asymmetry_pct`` the metrics record holds."""


class QcError(MyoflowError):
    """QC cannot run on these inputs; the message says why."""


# ---------------------------------------------------------------- participant flags


@dataclass(frozen=True)
class QcSettings:
    """Thresholds and severities of :func:`participant_flags`, and whether warnings pass.

    The configuration's ``qc`` section (:meth:`from_config`) names the fields alike, the
    severities under ``severities`` without their ``severity_`` prefix.
    """

    hip_distance_mm: tuple[float, float] = (120.0, 260.0)  # plausible hip joint centre distance
    hip_height_tolerance_mm: float = 15.0  # largest difference in z between the hips
    min_main_component: float = 0.95  # largest piece's share of a label below this: warn
    asymmetry_pct: float = 20.0  # |right - left| / mean of the sides beyond this: warn
    asymmetry_groups: tuple[str, ...] = ("iliopsoas", "gluteus")
    severity_touches_border: str = "fail"  # a muscle cut by the field of view
    severity_touches_crop: str = "fail"  # a muscle cut by the crop box
    severity_components: str = "warn"
    severity_asymmetry: str = "warn"
    severity_landmarks: str = "fail"
    severity_swap: str = "fail"
    severity_swap_undetermined: str = "warn"
    keep_warnings: bool = True  # flags that only warn leave a participant in (qc_status)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> QcSettings:
        """Settings from the configuration's ``qc`` section; missing keys keep defaults.

        Raises:
            QcError: an unknown key, severity or asymmetry group, or a malformed value.
        """
        values = {key: value for key, value in section.items() if key != "severities"}
        severities = section.get("severities", {})
        if not isinstance(severities, Mapping):
            raise QcError(f"qc.severities must be a mapping, got {severities!r}")
        values |= {f"severity_{name}": value for name, value in severities.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            names = [u.replace("severity_", "severities.") for u in unknown]
            raise QcError(f"unknown qc setting(s): {', '.join(names)}")
        for key in ("hip_distance_mm", "asymmetry_groups"):
            if key in values:
                values[key] = tuple(values[key])
        settings = cls(**values)
        settings.check()
        return settings

    def to_config(self) -> dict[str, Any]:
        """The settings as a configuration ``qc`` section (JSON-compatible)."""
        out: dict[str, Any] = {"severities": {}}
        for f in fields(self):
            value = getattr(self, f.name)
            value = list(value) if isinstance(value, tuple) else value
            if f.name.startswith("severity_"):
                out["severities"][f.name.removeprefix("severity_")] = value
            else:
                out[f.name] = value
        return out

    def check(self) -> None:
        """Raise :class:`QcError` unless every value is usable."""
        for f in fields(self):
            if f.name.startswith("severity_") and getattr(self, f.name) not in ("fail", "warn"):
                raise QcError(
                    f"qc.severities.{f.name.removeprefix('severity_')} must be 'fail' or "
                    f"'warn', got {getattr(self, f.name)!r}"
                )
        low, high = self.hip_distance_mm
        if not 0 <= low < high:
            raise QcError(f"qc.hip_distance_mm must be [low, high], got {self.hip_distance_mm}")
        groups = set(ASYMMETRY_GROUPS)
        if not set(self.asymmetry_groups) <= groups:
            raise QcError(
                f"qc.asymmetry_groups must be among {', '.join(ASYMMETRY_GROUPS)}, "
                f"got {list(self.asymmetry_groups)}"
            )
        if not isinstance(self.keep_warnings, bool):
            raise QcError(f"qc.keep_warnings must be true or false, got {self.keep_warnings!r}")


def flag(name: str, severity: str, value: Any, threshold: Any, message: str) -> dict[str, Any]:
    """One QC flag."""
    if severity not in ("fail", "warn"):
        raise QcError(f"severity must be 'fail' or 'warn', got {severity!r}")
    return {
        "name": name,
        "severity": severity,
        "value": value,
        "threshold": threshold,
        "message": message,
    }


def participant_flags(
    record: Mapping[str, Any] | None = None,
    swaps: Sequence[SwapDecision] = (),
    hips_lps_mm: Mapping[str, Sequence[float]] | None = None,
    settings: QcSettings = QcSettings(),
    labels: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Every QC flag raised for one participant (none: a clean participant).

    Args:
        record: the participant's :func:`myoflow.measure.metrics.participant_metrics` record.
        swaps: :func:`myoflow.measure.swaps.detect_swaps` decisions.
        hips_lps_mm: ``{"left": (x, y, z), "right": (x, y, z)}`` hip joint centres.
        settings: thresholds and severities.
        labels: names (keys of ``LABELS``) of the labels that were segmented, whose masks
            are checked; default all (a model of the iliopsoas alone leaves the glutei
            empty, which is no fault).

    Raises:
        QcError: ``labels`` names an unknown label.
    """
    checked = list(LABELS) if labels is None else list(labels)
    unknown = sorted(set(checked) - set(LABELS))
    if unknown:
        raise QcError(f"unknown label(s) {', '.join(unknown)}; known: {', '.join(LABELS)}")
    flags = [*_swap_flags(swaps, settings)]
    if hips_lps_mm is not None:
        flags += _landmark_flags(hips_lps_mm, settings)
    if record is not None:
        flags += _mask_flags(record, settings, checked)
        flags += _asymmetry_flags(record, settings)
    return flags


def _swap_flags(swaps: Sequence[SwapDecision], s: QcSettings) -> list[dict[str, Any]]:
    out = []
    for d in swaps:
        if d.swapped:
            out.append(
                flag(
                    f"fat_water_swap_station_{d.station}", s.severity_swap, d.score, None, d.reason
                )
            )
        elif d.status == "undetermined":
            out.append(
                flag(
                    f"fat_water_swap_undetermined_station_{d.station}",
                    s.severity_swap_undetermined,
                    None,
                    None,
                    d.reason,
                )
            )
    return out


def _landmark_flags(hips: Mapping[str, Sequence[float]], s: QcSettings) -> list[dict[str, Any]]:
    left, right = (np.asarray(hips[side], dtype=float) for side in ("left", "right"))
    out = []
    distance = float(np.linalg.norm(left - right))
    lo, hi = s.hip_distance_mm
    if not lo <= distance <= hi:
        out.append(
            flag(
                "hip_distance",
                s.severity_landmarks,
                distance,
                [lo, hi],
                f"hip joint centres {distance:.0f} mm apart, outside {lo:.0f}-{hi:.0f} mm",
            )
        )
    dz = float(left[2] - right[2])
    if abs(dz) > s.hip_height_tolerance_mm:
        out.append(
            flag(
                "hip_height_difference",
                s.severity_landmarks,
                dz,
                s.hip_height_tolerance_mm,
                f"left hip {dz:+.0f} mm above the right"
                f" (tolerance {s.hip_height_tolerance_mm:.0f} mm)",
            )
        )
    if distance > 0 and left[0] < right[0]:
        out.append(
            flag(
                "hips_swapped",
                s.severity_landmarks,
                float(left[0] - right[0]),
                0.0,
                "the left hip lies to the right of the right hip (LPS x)",
            )
        )
    return out


def _mask_flags(
    record: Mapping[str, Any], s: QcSettings, labels: Sequence[str]
) -> list[dict[str, Any]]:
    out = []
    for name in labels:
        if record.get(f"touches_border_{name}"):
            out.append(
                flag(
                    f"touches_border_{name}",
                    s.severity_touches_border,
                    True,
                    False,
                    f"{name} reaches the edge of the image: the field of view may cut it",
                )
            )
        if record.get(f"touches_crop_{name}"):
            out.append(
                flag(
                    f"touches_crop_{name}",
                    s.severity_touches_crop,
                    True,
                    False,
                    f"{name} reaches the edge of the crop box: the crop may cut it",
                )
            )
        n = record.get(f"n_components_{name}")
        main = record.get(f"main_component_fraction_{name}")
        if n == 0:
            out.append(flag(f"components_{name}", "fail", 0, 1, f"{name} is empty"))
        elif main is not None and main < s.min_main_component:
            out.append(
                flag(
                    f"components_{name}",
                    s.severity_components,
                    float(main),
                    s.min_main_component,
                    f"{name} is in {n} pieces; the largest holds {100 * main:.0f} % of it"
                    f" (expected at least {100 * s.min_main_component:.0f} %)",
                )
            )
    return out


def _asymmetry_flags(record: Mapping[str, Any], s: QcSettings) -> list[dict[str, Any]]:
    out = []
    for group in s.asymmetry_groups:
        value = record.get(f"{group}_asymmetry_pct")
        if value is not None and abs(value) > s.asymmetry_pct:
            out.append(
                flag(
                    f"asymmetry_{group}",
                    s.severity_asymmetry,
                    float(value),
                    s.asymmetry_pct,
                    f"{group} right - left is {value:+.1f} % of the mean of the sides"
                    f" (bound +-{s.asymmetry_pct:.0f} %)",
                )
            )
    return out


def qc_status(flags: Sequence[Mapping[str, Any]], keep_warnings: bool) -> tuple[str, list[str]]:
    """Overall status and the reasons for it.

    "fail" if any flag fails, or any warns and ``keep_warnings`` is False (warnings then
    exclude from statistics too); "warn" if flags only warn and are kept; else "pass".
    Reasons are ``"name: message"`` of the flags that decided it.
    """
    fails = [f for f in flags if f["severity"] == "fail"]
    warns = [f for f in flags if f["severity"] == "warn"]
    if fails or (warns and not keep_warnings):
        deciding = fails + ([] if keep_warnings else warns)
        return "fail", [f"{f['name']}: {f['message']}" for f in deciding]
    if warns:
        return "warn", [f"{f['name']}: {f['message']}" for f in warns]
    return "pass", []


def write_flags(
    path: str | os.PathLike[str],
    flags: Sequence[Mapping[str, Any]],
    swaps: Sequence[SwapDecision],
    keep_warnings: bool,
    provenance: Mapping[str, Any] | None = None,
) -> None:
    """Write ``qc/flags.json``: status, reasons, flags and the per-station swap decisions
    (and ``provenance``, what produced them, when given)."""
    from myoflow.core.io import write_json

    status, reasons = qc_status(flags, keep_warnings)
    record = {
        "status": status,
        "reasons": reasons,
        "flags": list(flags),
        "swap_stations": [asdict(d) for d in swaps],
    }
    write_json(path, record | ({} if provenance is None else {"provenance": dict(provenance)}))


# ---------------------------------------------------------------- cohort


def robust_outliers(
    df: pd.DataFrame, columns: Sequence[str], by: str | None = "sex", threshold: float = 3.5
) -> pd.DataFrame:
    """Values whose robust z-score within their group exceeds ``threshold``.

    The robust (modified) z-score of Iglewicz and Hoaglin: ``0.6745 (x - median) / MAD``
    with MAD the median absolute deviation from the median, per group of ``by`` (the whole
    table when ``by`` is None); 3.5 is their recommended cut-off. Where a group's MAD is 0
    the scale is 1.253314 x the mean absolute deviation instead (as MAD / 0.6745, it
    estimates the standard deviation of normal data); where that is 0 too, nothing in the
    group is an outlier.

    Returns:
        One row per outlying value: the table's index as ``row``, ``participant_id`` if
        the table has one, ``group``, ``column``, ``value``, ``median``, ``mad`` and ``z``.
    """
    missing = [c for c in [*columns, *([by] if by else [])] if c not in df.columns]
    if missing:
        raise KeyError(f"robust_outliers: no column {', '.join(missing)}")
    groups = df.groupby(by, dropna=False) if by else [("all", df)]
    rows = []
    for group, part in groups:
        for column in columns:
            x = pd.to_numeric(part[column], errors="coerce")
            valid = x.dropna()
            if valid.empty:
                continue
            median = float(valid.median())
            deviation = (valid - median).abs()
            mad = float(deviation.median())
            scale = mad / 0.6745 if mad > 0 else float(deviation.mean()) * 1.253314
            if scale == 0:
                continue
            z = (valid - median) / scale
            for index in z.index[z.abs() > threshold]:
                rows.append(
                    {
                        "row": index,
                        **(
                            {"participant_id": df.at[index, "participant_id"]}
                            if "participant_id" in df.columns
                            else {}
                        ),
                        "group": group[0] if isinstance(group, tuple) else group,
                        "column": column,
                        "value": float(valid[index]),
                        "median": median,
                        "mad": mad,
                        "z": float(z[index]),
                    }
                )
    columns_out = ["row", *(["participant_id"] if "participant_id" in df.columns else [])]
    columns_out += ["group", "column", "value", "median", "mad", "z"]
    return pd.DataFrame(rows, columns=columns_out)
