"""QC: fat-water swap detection on planted swaps, participant flags, cohort outliers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from myoflow import qc
from myoflow.synth import phenotypes
from myoflow.synth.geometry import protocol
from myoflow.synth.render import render_participant
from myoflow.synth.rng import participant_rng
from myoflow.synth.signal import Artefacts, bias_field, stitched_channels

# ---------------------------------------------------------------- a toy body


def toy_channels(swap_region: np.ndarray | None = None, seed: int = 0):
    """Two stations of a cylinder body: 1000-bright fat (ff 0.93) around 620 muscle (ff 0.1),
    with noise; ``swap_region`` trades water and fat where True."""
    rng = np.random.default_rng(seed)
    shape = (40, 36, 30)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot(i - 19.5, j - 17.5)
    body = np.repeat((r < 15)[:, :, None], shape[2], axis=2)
    muscle = np.repeat((r < 11)[:, :, None], shape[2], axis=2)
    water = np.where(muscle, 558.0, np.where(body, 70.0, 0.0))
    fat = np.where(muscle, 62.0, np.where(body, 930.0, 0.0))
    if swap_region is not None:
        water, fat = np.where(swap_region, fat, water), np.where(swap_region, water, fat)
    noisy = [np.abs(x + rng.normal(0, 15, shape)) for x in (water, fat)]
    return (*noisy, np.abs(water + fat + rng.normal(0, 15, shape)), np.abs(water - fat))


TOY_STATIONS = [(15, 30), (0, 15)]  # station 1 is the upper one, as scanners number them
TOY_AFFINE = np.diag([-3.0, -3.0, 5.0, 1.0])  # RAS: i -> left, j -> posterior


def test_clean_toy_body_passes_every_station():
    decisions = qc.detect_swaps(*toy_channels(), TOY_STATIONS, TOY_AFFINE)
    assert [d.status for d in decisions] == ["ok", "ok"]
    assert all(d.score < 0.01 for d in decisions)


def test_whole_station_swap_is_found_in_its_station_only():
    region = np.zeros((40, 36, 30), dtype=bool)
    region[:, :, 0:15] = True
    decisions = qc.detect_swaps(*toy_channels(region), TOY_STATIONS, TOY_AFFINE)
    assert [d.status for d in decisions] == ["ok", "swap"]
    assert decisions[1].score > 0.9 and decisions[1].swapped
    assert "whole station" in decisions[1].reason


def test_partial_swap_is_located():
    # A block on the patient's right (low i: i runs to the left) and anterior (low j).
    region = np.zeros((40, 36, 30), dtype=bool)
    region[4:16, 3:15, 18:27] = True
    decisions = qc.detect_swaps(*toy_channels(region), TOY_STATIONS, TOY_AFFINE)
    assert decisions[1].status == "ok"
    assert decisions[0].status == "partial_swap"
    assert decisions[0].region == "right anterior"
    assert decisions[0].region_ml > 5.0
    flipped = np.zeros_like(region)
    flipped[24:36, 21:33, 18:27] = True
    assert qc.detect_swaps(*toy_channels(flipped), TOY_STATIONS, TOY_AFFINE)[0].region == (
        "left posterior"
    )


def test_missing_channel_or_no_tissue_is_undetermined_not_ok():
    water, fat, in_phase, opposed = toy_channels()
    decisions = qc.detect_swaps(water, None, in_phase, opposed, TOY_STATIONS, TOY_AFFINE)
    assert {d.status for d in decisions} == {"undetermined"}
    assert "fat" in decisions[0].reason
    air = np.abs(np.random.default_rng(1).normal(0, 15, water.shape))
    decisions = qc.detect_swaps(air, air, air, air * 0.1, TOY_STATIONS, TOY_AFFINE)
    assert {d.status for d in decisions} == {"undetermined"}
    flags = qc.participant_flags(swaps=decisions)
    assert [f["severity"] for f in flags] == ["warn", "warn"]


def test_a_body_without_fat_is_judged_on_an_assumed_fat_level():
    body = toy_channels()[2] > 300
    water, fat = np.where(body, 558.0, 0.0), np.where(body, 62.0, 0.0)
    clean = qc.detect_swaps(water, fat, water + fat, water - fat, TOY_STATIONS, TOY_AFFINE)
    assert [d.status for d in clean] == ["ok", "ok"]
    assert "assumed" in clean[0].reason
    lower = np.zeros_like(body)
    lower[:, :, :15] = True
    w, f = np.where(lower, fat, water), np.where(lower, water, fat)
    swapped = qc.detect_swaps(w, f, w + f, np.abs(w - f), TOY_STATIONS, TOY_AFFINE)
    assert [d.status for d in swapped] == ["ok", "swap"]


def test_own_slices_leave_out_overlaps():
    own = qc.own_slices([(10, 20), (0, 12), (18, 25)], 25)
    assert own[0].tolist() == list(range(12, 18))
    assert own[1].tolist() == list(range(0, 10))
    assert own[2].tolist() == list(range(20, 25))


# ---------------------------------------------------------------- synthetic participants

N_PHANTOMS = 3


@pytest.fixture(scope="module")
def swap_cases():
    """Twelve participants: 3 small phantoms rendered once, each acquired 4 times (new bias
    and noise) clean, clean, with a whole-station swap and with a partial swap."""
    proto = protocol("ukbb", "small")
    table = phenotypes.sample_cohort(9, N_PHANTOMS, "ukbb")
    cases = []
    for index, row in enumerate(table.to_dict("records"), start=1):
        phantom = render_participant(row, proto.grid, participant_rng(9, index, "texture"))
        rng = np.random.default_rng(index)
        draws = [
            Artefacts(),
            Artefacts(),
            Artefacts(swap_station=int(rng.integers(1, 7))),
            Artefacts(
                partial_swap_station=int(rng.integers(1, 7)),
                partial_swap_centre=tuple(float(v) for v in rng.uniform(0.25, 0.75, 3)),
                partial_swap_radii=tuple(float(v) for v in rng.uniform(0.2, 0.45, 3)),
            ),
        ]
        for artefacts in draws:
            bias = bias_field(proto.grid.shape, rng)
            channels = stitched_channels(
                phantom.water * bias, phantom.fat * bias, proto.stations, artefacts, rng
            )
            cases.append((artefacts, channels))
    return proto, cases


def test_planted_swaps_are_found_with_their_station(swap_cases):
    proto, cases = swap_cases
    stations = [(s.start, s.stop) for s in proto.stations]
    true_pos = false_pos = positives = negatives = 0
    for artefacts, ch in cases:
        decisions = qc.detect_swaps(
            ch["water"], ch["fat"], ch["in"], ch["opp"], stations, proto.grid.affine_ras()
        )
        found = {d.station for d in decisions if d.swapped}
        if artefacts.swapped_stations():
            positives += 1
            true_pos += found == artefacts.swapped_stations()
        else:
            negatives += 1
            false_pos += bool(found)
        if artefacts.swap_station:
            assert decisions[artefacts.swap_station - 1].status == "swap"
        assert all(d.status != "undetermined" for d in decisions)
    assert (positives, negatives) == (2 * N_PHANTOMS, 2 * N_PHANTOMS)
    assert true_pos == positives  # sensitivity 1 on these 6 (bench/qc_metrics.py: 400)
    assert false_pos == 0  # specificity 1 on these 6 (bench/qc_metrics.py: 200)


# ---------------------------------------------------------------- participant flags


def clean_record() -> dict:
    from myoflow.synth.anatomy import LABELS

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
    swapped = qc.SwapDecision(
        3, 0, 10, "partial_swap", 0.2, 40.0, "left anterior", "region swapped"
    )
    failing = qc.participant_flags(clean_record(), swaps=[swapped]) + warn
    status, reasons = qc.qc_status(failing, keep_warnings=True)
    assert status == "fail" and reasons == ["fat_water_swap_station_3: region swapped"]


def test_flags_json_is_written(tmp_path):
    import json

    swapped = qc.SwapDecision(2, 5, 9, "swap", 0.97, 900.0, "right anterior", "whole station")
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
