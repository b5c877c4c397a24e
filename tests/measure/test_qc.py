"""QC: participant flags, their status and settings, cohort outliers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from myoflow.measure import qc, swaps

# ---------------------------------------------------------------- participant flags


def clean_record() -> dict:
    from myoflow.core.labels import LABELS

    record = {"iliopsoas_asymmetry_pct": 2.0, "gluteus_asymmetry_pct": -1.0}
    for name in LABELS:
        record |= {
            f"n_components_{name}": 1,
            f"main_component_fraction_{name}": 1.0,
            f"touches_border_{name}": False,
            f"touches_crop_{name}": False,
        }
    return record


HIPS = {"left": (85.0, 30.0, -600.0), "right": (-85.0, 32.0, -603.0)}


def test_a_clean_participant_raises_no_flag_and_passes():
    flags = qc.participant_flags(clean_record(), hips_lps_mm=HIPS)
    assert flags == []
    assert qc.qc_status(flags, keep_warnings=False) == ("pass", [])


def test_each_problem_raises_its_flag_with_severity():
    record = clean_record() | {
        "touches_crop_iliacus_left": True,
        "n_components_gluteus_medius_right": 3,
        "main_component_fraction_gluteus_medius_right": 0.8,
        "n_components_gluteus_minimus_left": 4,  # a few stray voxels: no flag
        "main_component_fraction_gluteus_minimus_left": 0.995,
        "n_components_psoas_major_left": 0,
        "main_component_fraction_psoas_major_left": None,
        "iliopsoas_asymmetry_pct": -31.0,
    }
    hips = {"left": (150.0, 30.0, -600.0), "right": (-150.0, 30.0, -630.0)}
    flags = {f["name"]: f for f in qc.participant_flags(record, hips_lps_mm=hips)}
    assert flags["touches_crop_iliacus_left"]["severity"] == "fail"
    assert flags["components_gluteus_medius_right"]["severity"] == "warn"
    assert flags["components_gluteus_medius_right"]["value"] == 0.8
    assert "3 pieces" in flags["components_gluteus_medius_right"]["message"]
    assert "components_gluteus_minimus_left" not in flags
    assert flags["components_psoas_major_left"]["severity"] == "fail"
    assert flags["asymmetry_iliopsoas"]["value"] == -31.0
    assert flags["asymmetry_iliopsoas"]["severity"] == "warn"
    assert flags["hip_distance"]["value"] == pytest.approx(np.hypot(300.0, 30.0))
    assert flags["hip_height_difference"]["value"] == pytest.approx(30.0)
    assert "asymmetry_gluteus" not in flags
    for f in flags.values():
        assert set(f) == {"name", "severity", "value", "threshold", "message"}


def test_only_segmented_labels_can_be_flagged_empty():
    """A model of the iliopsoas alone leaves the glutei empty: that is no fault."""
    record = clean_record()
    for name in ("gluteus_maximus_left", "gluteus_medius_right", "psoas_major_right"):
        record |= {f"n_components_{name}": 0, f"main_component_fraction_{name}": None}
    iliopsoas = [f"{m}_{s}" for m in ("psoas_major", "iliacus") for s in ("left", "right")]
    flags = qc.participant_flags(record, labels=iliopsoas)
    assert [f["name"] for f in flags] == ["components_psoas_major_right"]
    everything = {f["name"] for f in qc.participant_flags(record)}
    assert "components_gluteus_maximus_left" in everything and len(everything) == 3
    with pytest.raises(qc.QcError, match="unknown label"):
        qc.participant_flags(record, labels=["psoas"])


def test_status_keeps_or_excludes_warnings_as_configured():
    warn = qc.participant_flags(clean_record() | {"gluteus_asymmetry_pct": 40.0})
    assert qc.qc_status(warn, keep_warnings=True)[0] == "warn"
    status, reasons = qc.qc_status(warn, keep_warnings=False)
    assert status == "fail" and reasons[0].startswith("asymmetry_gluteus:")
    looser = qc.QcSettings(asymmetry_pct=50.0)
    assert (
        qc.participant_flags(clean_record() | {"gluteus_asymmetry_pct": 40.0}, settings=looser)
        == []
    )
    swapped = swaps.SwapDecision(
        3, 0, 10, "partial_swap", 0.2, 40.0, "left anterior", "region swapped"
    )
    failing = qc.participant_flags(clean_record(), swaps=[swapped]) + warn
    status, reasons = qc.qc_status(failing, keep_warnings=True)
    assert status == "fail" and reasons == ["fat_water_swap_station_3: region swapped"]


def test_flags_json_is_written(tmp_path):
    import json

    swapped = swaps.SwapDecision(2, 5, 9, "swap", 0.97, 900.0, "right anterior", "whole station")
    flags = qc.participant_flags(clean_record(), swaps=[swapped])
    qc.write_flags(tmp_path / "qc" / "flags.json", flags, [swapped], keep_warnings=True)
    written = json.loads((tmp_path / "qc" / "flags.json").read_text())
    assert written["status"] == "fail"
    assert written["swap_stations"][0]["status"] == "swap"
    assert written["flags"][0]["name"] == "fat_water_swap_station_2"


# ---------------------------------------------------------------- cohort outliers


def test_robust_outliers_by_sex_match_scipy_mad():
    normal = stats.norm.ppf((np.arange(30) + 0.5) / 30)  # a sample with no outlier
    table = pd.DataFrame(
        {
            "participant_id": [f"p{i}" for i in range(60)],
            "sex": ["F"] * 30 + ["M"] * 30,
            "vol_iliopsoas_total_ml": np.r_[540 + 70 * normal, 815 + 120 * normal[::-1]],
        }
    )
    table.loc[4, "vol_iliopsoas_total_ml"] = 1100.0  # ordinary for a man, not for a woman
    table.loc[40, "vol_iliopsoas_total_ml"] = 200.0
    out = qc.robust_outliers(table, ["vol_iliopsoas_total_ml"], by="sex")
    assert out["participant_id"].tolist() == ["p4", "p40"]
    assert out["group"].tolist() == ["F", "M"]
    women = table.loc[table["sex"] == "F", "vol_iliopsoas_total_ml"]
    # reference: scipy.stats.median_abs_deviation(x, scale="normal") = MAD / 0.6745
    z = (1100.0 - women.median()) / stats.median_abs_deviation(women, scale="normal")
    assert out["z"].iloc[0] == pytest.approx(z, rel=1e-3)
    pooled = qc.robust_outliers(table, ["vol_iliopsoas_total_ml"], by=None)
    assert "p4" not in pooled["participant_id"].tolist()  # the pooled spread hides it


def test_robust_outliers_with_zero_mad_fall_back_to_mean_deviation():
    table = pd.DataFrame({"sex": ["F"] * 7, "x": [5.0, 5.0, 5.0, 5.0, 5.0, 5.1, 9.0]})
    out = qc.robust_outliers(table, ["x"])
    assert out["row"].tolist() == [6]
    assert qc.robust_outliers(pd.DataFrame({"sex": ["M"] * 3, "x": [1.0] * 3}), ["x"]).empty
    with pytest.raises(KeyError, match="height"):
        qc.robust_outliers(table, ["height"])


# ---------------------------------------------------------------- settings


def test_settings_from_the_shipped_config_are_the_defaults():
    import yaml
    from test_workflow import ROOT

    section = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["qc"]
    assert qc.QcSettings.from_config(section) == qc.QcSettings()
    assert qc.QcSettings().to_config() == section
    assert qc.QcSettings.from_config({}) == qc.QcSettings()


def test_settings_map_config_keys_and_refuse_unknown_ones():
    settings = qc.QcSettings.from_config(
        {
            "keep_warnings": False,
            "asymmetry_pct": 35,
            "hip_distance_mm": [100, 280],
            "severities": {"asymmetry": "fail", "swap_undetermined": "fail"},
        }
    )
    assert settings.keep_warnings is False and settings.asymmetry_pct == 35
    assert settings.hip_distance_mm == (100, 280)
    assert (settings.severity_asymmetry, settings.severity_swap_undetermined) == ("fail", "fail")
    assert settings.severity_swap == "fail"  # unnamed keep their defaults
    assert qc.QcSettings.from_config(settings.to_config()) == settings
    with pytest.raises(qc.QcError, match="unknown qc setting.*severities.tilt"):
        qc.QcSettings.from_config({"severities": {"tilt": "warn"}})
    with pytest.raises(qc.QcError, match="asymmetry_pc$"):
        qc.QcSettings.from_config({"asymmetry_pc": 20})
    with pytest.raises(qc.QcError, match="'fail' or 'warn', got 'ignore'"):
        qc.QcSettings.from_config({"severities": {"swap": "ignore"}})
    with pytest.raises(qc.QcError, match="asymmetry_groups"):
        qc.QcSettings.from_config({"asymmetry_groups": ["biceps"]})
