"""Muscle metrics on shapes with known answers, synthetic participants and a real CT mask."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from myoflow.core import io
from myoflow.core.labels import LABELS
from myoflow.measure import csa_profile, metrics
from myoflow.synth import phenotypes
from myoflow.synth.cohort import planned_truth
from myoflow.synth.geometry import protocol
from myoflow.synth.render import render_participant
from myoflow.synth.rng import participant_rng
from myoflow.synth.signal import Artefacts

PSOAS_L, PSOAS_R = LABELS["psoas_major_left"], LABELS["psoas_major_right"]
ILIACUS_L, ILIACUS_R = LABELS["iliacus_left"], LABELS["iliacus_right"]


def ras_affine(spacing, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The RAS affine of an (i -> L, j -> P, k -> S) array, as synth.geometry.Grid writes it."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (-origin[0], -origin[1], origin[2])
    return affine


def rotation_x(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def centres_mm(shape, affine) -> np.ndarray:
    """Patient coordinates (3, *shape) of every voxel centre."""
    index = np.indices(shape).reshape(3, -1).astype(float)
    return (affine[:3, :3] @ index + affine[:3, 3:4]).reshape(3, *shape)


# ---------------------------------------------------------------- exact shapes


def test_box_volume_is_exact_on_anisotropic_and_oblique_grids():
    labels = np.zeros((13, 11, 17), dtype=np.uint8)
    labels[2:9, 3:8, 4:13] = PSOAS_L  # 7 x 5 x 9 voxels
    spacing = (0.7, 1.3, 2.9)
    expected = 7 * 5 * 9 * 0.7 * 1.3 * 2.9 / 1000.0
    oblique = np.eye(4)
    oblique[:3, :3] = rotation_x(17.0) @ np.diag(spacing)
    for affine in (ras_affine(spacing, (5.0, -3.0, 100.0)), oblique):
        record = metrics.participant_metrics(labels, affine)
        assert record["vol_psoas_major_left_ml"] == pytest.approx(expected, rel=1e-12)
        assert record["n_voxels_psoas_major_left"] == 315
        assert record["voxel_volume_ml"] == pytest.approx(0.7 * 1.3 * 2.9 / 1000.0)
        assert record["voxel_size_k_mm"] == pytest.approx(2.9)


def test_voxelised_sphere_converges_to_its_volume():
    radius = 20.0
    exact = 4.0 / 3.0 * np.pi * radius**3 / 1000.0
    errors = []
    for spacing in ((4.1, 3.3, 5.3), (2.1, 1.7, 2.9), (0.9, 0.8, 1.3)):
        shape = tuple(int(np.ceil(2 * radius / s)) + 3 for s in spacing)
        affine = ras_affine(spacing)
        x, y, z = centres_mm(shape, affine)
        centre = centres_mm(shape, affine)[:, shape[0] // 2, shape[1] // 2, shape[2] // 2]
        sphere = (x - centre[0] - 0.31) ** 2 + (y - centre[1] + 0.17) ** 2 + (
            z - centre[2] - 0.23
        ) ** 2 <= radius**2
        errors.append(abs(metrics.volume_ml(sphere, affine) / exact - 1.0))
    assert errors[0] < 0.05
    assert errors[-1] < 0.005
    assert errors[-1] < errors[0] / 4


def test_csa_of_a_box_stack_is_exact_per_slice():
    labels = np.zeros((9, 8, 12), dtype=np.uint8)
    labels[1:6, 2:5, 3:10] = PSOAS_R  # 5 x 3 voxels in each of slices 3..9
    labels[1:8, 2:7, 6] = PSOAS_R  # slice 6 is wider: 7 x 5
    spacing = (1.5, 1.25, 4.0)
    record = metrics.participant_metrics(labels, ras_affine(spacing, (0.0, 0.0, -20.0)))
    assert record["csa_axial_grid"] is True
    assert record["psoas_max_csa_right_cm2"] == pytest.approx(35 * 1.5 * 1.25 / 100.0)
    assert record["psoas_max_csa_z_right_mm"] == pytest.approx(-20.0 + 6 * 4.0)
    assert record["psoas_length_right_mm"] == pytest.approx(7 * 4.0)
    # slice 6 is the 4th of 7: its centre sits at 3.5 / 7 of the length
    assert record["psoas_max_csa_z_right_pct"] == pytest.approx(50.0)
    profile = record["psoas_csa_profile_right"]
    assert len(profile) == csa_profile.PROFILE_BINS
    assert profile[0] == pytest.approx(15 * 1.5 * 1.25 / 100.0)
    assert max(profile) <= record["psoas_max_csa_right_cm2"] + 1e-12
    assert record["psoas_max_csa_left_cm2"] is None
    assert record["psoas_max_csa_total_cm2"] is None


def ellipse_stack(shape, affine, centre_xy, semi_axes_at) -> np.ndarray:
    """Voxel centres inside an axial ellipse whose semi-axes depend on z."""
    x, y, z = centres_mm(shape, affine)
    a, b = semi_axes_at(z)
    a, b = np.maximum(a, 1e-9), np.maximum(b, 1e-9)  # zero size: outside
    return ((x - centre_xy[0]) / a) ** 2 + ((y - centre_xy[1]) / b) ** 2 <= 1.0


def bump(z: np.ndarray, z_peak: float = 47.0, half_length: float = 60.0):
    """Semi-axes (mm) of an elliptic stack whose area peaks at ``z_peak`` (15 x 10 mm)."""
    scale = np.sqrt(np.clip(1.0 - ((z - z_peak) / half_length) ** 2, 0.0, None))
    return 15.0 * scale, 10.0 * scale


def test_csa_of_an_ellipse_stack_and_the_height_of_its_peak():
    spacing = (0.6, 0.7, 3.0)
    affine = ras_affine(spacing, (-30.0, -20.0, -20.0))
    shape = (100, 60, 50)
    mask = ellipse_stack(shape, affine, (0.0, 0.0), bump)
    labels = mask.astype(np.uint8) * PSOAS_L
    hip = {"left": (60.0, 0.0, 5.0), "right": (-60.0, 0.0, 5.0)}
    record = metrics.participant_metrics(labels, affine, hips_lps_mm=hip)
    assert record["psoas_max_csa_left_cm2"] == pytest.approx(np.pi * 15 * 10 / 100, rel=0.02)
    # The peak lies between slice centres (47 mm, slices at -20 + 3k); the vertex finds it.
    assert record["psoas_max_csa_z_left_mm"] == pytest.approx(47.0, abs=0.5)
    assert record["psoas_max_csa_z_left_above_hip_mm"] == pytest.approx(42.0, abs=0.5)
    assert record["psoas_length_left_mm"] == pytest.approx(120.0, abs=2 * 3.0)
    assert record["psoas_max_csa_z_left_pct"] == pytest.approx(50.0, abs=2.0)
    profile = np.array(record["psoas_csa_profile_left"])
    expected = np.pi * 150 * (1 - (2 * (np.arange(100) + 0.5) / 100 - 1) ** 2) / 100
    assert np.abs(profile - expected).max() < 0.1 * expected.max()


def test_tilted_grid_measures_csa_on_horizontal_slabs():
    spacing = (0.8, 0.8, 2.0)
    affine = np.eye(4)
    affine[:3, :3] = rotation_x(12.0) @ np.diag(spacing)
    affine[:3, 3] = (-40.0, -40.0, -60.0)
    shape = (100, 110, 70)
    x, y, z = centres_mm(shape, affine)
    cylinder = ((x + 0.3) ** 2 + (y - 5.0) ** 2 <= 12.0**2) & (z > -10) & (z < 50)
    record = metrics.participant_metrics(cylinder.astype(np.uint8) * PSOAS_L, affine)
    assert record["csa_axial_grid"] is False
    assert record["psoas_max_csa_left_cm2"] == pytest.approx(np.pi * 1.44, rel=0.05)
    profile = np.array(record["psoas_csa_profile_left"])
    assert np.median(profile) == pytest.approx(np.pi * 1.44, rel=0.03)


# ---------------------------------------------------------------- fat fraction


def test_in_plane_erosion_keeps_every_slice():
    cube = np.zeros((7, 7, 7), dtype=bool)
    cube[1:6, 1:6, 1:6] = True
    eroded = metrics.erode_in_plane(cube)
    assert np.count_nonzero(eroded) == 3 * 3 * 5
    assert eroded[2:5, 2:5, 1:6].all()


def test_fat_fraction_ignores_the_rim_and_falls_back_when_too_thin():
    shape = (12, 12, 6)
    water = np.full(shape, 50.0)
    fat = np.full(shape, 950.0)  # fat everywhere outside the muscle
    mask = np.zeros(shape, dtype=bool)
    mask[2:10, 2:10, 1:5] = True
    core = metrics.erode_in_plane(mask)
    water[mask], fat[mask] = 450.0, 500.0  # the rim: mixed with fat by partial volume
    water[core], fat[core] = 900.0, 100.0  # the core: fat fraction 0.1
    ff, eroded, n = metrics.fat_fraction(mask, water, fat)
    assert (ff, eroded, n) == (pytest.approx(0.1), True, 6 * 6 * 4)
    # Two voxels thick in-plane: erosion leaves nothing, the whole mask is used.
    thin = np.zeros(shape, dtype=bool)
    thin[4:6, 2:10, 1:5] = True
    ff, eroded, n = metrics.fat_fraction(thin, water, fat)
    assert eroded is False and n == 2 * 8 * 4
    expected = np.mean(fat[thin] / (water[thin] + fat[thin]))
    assert ff == pytest.approx(expected)
    # Asking for more voxels than the core has: the whole mask, rim included, is used.
    ff, eroded, _ = metrics.fat_fraction(mask, water, fat, min_voxels=6 * 6 * 4 + 1)
    assert eroded is False and ff > 0.2


def test_fat_fraction_in_the_record_pools_sides_by_voxels():
    shape = (30, 12, 6)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:7, 2:7, 1:5] = ILIACUS_L  # 3 x 3 x 4 = 36 voxels after erosion
    labels[12:26, 2:7, 1:5] = ILIACUS_R  # 12 x 3 x 4 = 144
    water = np.full(shape, 700.0)
    fat = np.zeros(shape)
    fat[labels == ILIACUS_L] = 700.0 * 0.2 / 0.8  # ff 0.2
    fat[labels == ILIACUS_R] = 700.0 * 0.1 / 0.9  # ff 0.1
    record = metrics.participant_metrics(labels, ras_affine((2.0, 2.0, 3.0)), water, fat)
    assert record["ff_iliacus_left"] == pytest.approx(0.2)
    assert record["ff_iliacus_right"] == pytest.approx(0.1)
    assert record["ff_iliacus"] == pytest.approx((0.2 * 36 + 0.1 * 144) / 180)
    assert record["ff_iliacus_left_eroded"] is True
    assert record["ff_psoas_major_left"] is None and record["ff_psoas_major"] is None


# ---------------------------------------------------------------- record, IMI, mask health


def two_muscle_labels() -> np.ndarray:
    labels = np.zeros((20, 10, 15), dtype=np.uint8)
    labels[2:6, 2:6, 2:12] = PSOAS_L  # 160 voxels
    labels[6:8, 2:6, 2:6] = ILIACUS_L  # 32
    labels[12:16, 2:6, 2:12] = PSOAS_R  # 160
    labels[16:19, 2:6, 2:6] = ILIACUS_R  # 48
    return labels


def test_volume_summaries_and_iliopsoas_muscle_index():
    affine = ras_affine((2.0, 2.5, 4.0))  # 0.02 ml voxels
    record = metrics.participant_metrics(two_muscle_labels(), affine, height_cm=160.0)
    assert record["vol_iliopsoas_left_ml"] == pytest.approx(192 * 0.02)
    assert record["vol_iliopsoas_right_ml"] == pytest.approx(208 * 0.02)
    assert record["vol_iliopsoas_total_ml"] == pytest.approx(400 * 0.02)
    assert record["vol_iliopsoas_mean_ml"] == pytest.approx(200 * 0.02)
    assert record["vol_iliopsoas_right_minus_left_ml"] == pytest.approx(16 * 0.02)
    assert record["iliopsoas_asymmetry_pct"] == pytest.approx(100 * 16 / 200)
    assert record["iliacus_asymmetry_pct"] == pytest.approx(100 * 16 / 40)
    assert record["imi_ml_m2"] == pytest.approx(400 * 0.02 / 1.6**2)
    assert record["gluteus_asymmetry_pct"] is None  # no gluteus: no silent zero
    assert metrics.participant_metrics(two_muscle_labels(), affine)["imi_ml_m2"] is None


def test_keys_are_stable_and_named_as_the_synthetic_truth(tmp_path):
    affine = ras_affine((2.0, 2.0, 3.0))
    full = metrics.participant_metrics(two_muscle_labels(), affine, height_cm=170.0)
    empty = metrics.participant_metrics(np.zeros((5, 5, 5), dtype=np.int16), affine)
    assert list(full) == list(empty) == metrics.metric_keys()
    with_everything = metrics.participant_metrics(
        two_muscle_labels(),
        affine,
        np.ones((20, 10, 15)),
        np.ones((20, 10, 15)),
        height_cm=170.0,
        hips_lps_mm={"left": (1.0, 2.0, 3.0), "right": (-1.0, 2.0, 3.0)},
        crop_boxes=[((0, 20), (0, 10), (0, 15))],
    )
    assert list(with_everything) == metrics.metric_keys()
    # Every truth.tsv column that images can measure has a metric of the same name.
    table = phenotypes.sample_cohort(1, 2, "ukbb")
    truth = planned_truth(table, [Artefacts().record()] * 2)
    not_from_images = ("participant_id", "ff_muscle", "hip_", "artefact")
    measured = [c for c in truth.columns if not c.startswith(not_from_images)]
    assert len(measured) == 30
    assert set(measured) <= set(full)
    assert empty["vol_psoas_major_left_ml"] == 0.0 and empty["n_components_iliacus_left"] == 0
    io.write_json(tmp_path / "metrics.json", dict(full))
    assert json.loads((tmp_path / "metrics.json").read_text()) == full  # None -> null, lists


def test_components_border_and_crop_flags():
    labels = np.zeros((20, 12, 16), dtype=np.uint8)
    labels[3:6, 3:6, 3:6] = PSOAS_L
    labels[6, 6, 6] = PSOAS_L  # touches the first blob at a corner only: one component
    labels[10:13, 3:6, 10:13] = PSOAS_L  # a second component
    labels[0:3, 3:6, 3:6] = ILIACUS_L  # on the volume border (i = 0)
    labels[14:17, 3:6, 3:6] = PSOAS_R
    boxes = [((1, 19), (1, 11), (1, 15)), ((10, 19), (0, 12), (0, 16))]
    record = metrics.participant_metrics(labels, ras_affine((1.0, 1.0, 1.0)), crop_boxes=boxes)
    assert record["n_components_psoas_major_left"] == 2
    assert record["main_component_fraction_psoas_major_left"] == pytest.approx(28 / 55)
    assert record["n_components_psoas_major_right"] == 1
    assert record["main_component_fraction_psoas_major_right"] == 1.0
    assert record["touches_border_iliacus_left"] is True
    assert record["touches_border_psoas_major_left"] is False
    assert record["touches_crop_iliacus_left"] is True  # i = 0 lies outside the boxes
    assert record["touches_crop_psoas_major_left"] is False
    assert record["touches_crop_psoas_major_right"] is False
    # One box only: the right psoas now sits on its face (i = 16 of a box ending at 17).
    tight = [((1, 17), (1, 11), (1, 15))]
    record = metrics.participant_metrics(labels, ras_affine((1.0, 1.0, 1.0)), crop_boxes=tight)
    assert record["touches_crop_psoas_major_right"] is True
    assert record["touches_crop_psoas_major_left"] is False
    assert metrics.participant_metrics(labels, np.eye(4))["touches_crop_psoas_major_left"] is None
    assert metrics.touches_border(labels == PSOAS_R, margin=2) is False
    assert metrics.touches_border(labels == PSOAS_R, margin=3) is True


def test_crop_contact_equals_the_face_of_the_whole_region():
    """Contact with the crop is computed near the labels only; it must equal the rule on
    the whole volume: a voxel of the mask on the face of the boxes' region or outside it."""
    rng = np.random.default_rng(5)
    shape = (23, 17, 19)
    for _ in range(20):
        labels = np.zeros(shape, dtype=np.int16)
        for value in rng.choice(list(LABELS.values()), size=4, replace=False):
            lo = rng.integers(0, np.array(shape) - 2)
            hi = lo + rng.integers(1, 6, size=3)
            labels[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = value
        boxes = []
        for _ in range(2):
            lo = rng.integers(0, 10, size=3)
            boxes.append(tuple((int(a), int(a + rng.integers(5, 17))) for a in lo))
        record = metrics.participant_metrics(labels, np.eye(4), crop_boxes=boxes)
        face = metrics.crop_face(metrics.crop_region(shape, boxes))
        for name, value in LABELS.items():
            mask = labels == value
            expected = bool((face & mask).any()) if mask.any() else False
            assert record[f"touches_crop_{name}"] is expected, name


def test_bad_inputs_raise_errors_that_say_why():
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    with pytest.raises(metrics.MetricsError, match="singular"):
        metrics.participant_metrics(labels, np.zeros((4, 4)))
    with pytest.raises(metrics.MetricsError, match="water has shape"):
        metrics.participant_metrics(labels, np.eye(4), np.zeros((4, 4, 5)), np.zeros((4, 4, 4)))
    with pytest.raises(metrics.MetricsError, match="integer"):
        metrics.participant_metrics(labels.astype(float), np.eye(4))
    with pytest.raises(metrics.MetricsError, match="height"):
        metrics.participant_metrics(labels, np.eye(4), height_cm=0.0)


# ---------------------------------------------------------------- synthetic participants


@pytest.fixture(scope="module")
def participants():
    """Three small synthetic participants: (phenotype row, phantom), rendered once."""
    grid = protocol("ukbb", "small").grid
    table = phenotypes.sample_cohort(5, 3, "ukbb")
    rows = table.to_dict("records")
    return grid, [
        (row, render_participant(row, grid, participant_rng(5, i + 1, "texture")))
        for i, row in enumerate(rows)
    ]


def test_metrics_match_the_synthetic_truth(participants):
    grid, cases = participants
    # Issue 5, given the true mask: volumes within 1 % of truth, the psoas maximum CSA
    # within 2 %, its z within one slice. The true mask holds each label's supersampled
    # volume, slice by slice, rounded to whole voxels (synth.labelmap). Measured on these
    # participants: volumes 0.15 % at worst, max CSA 0.9 %, z 0.19 slices.
    slice_mm = grid.spacing_mm[2]
    for row, phantom in cases:
        truth = phenotypes.add_derived(
            pd.DataFrame([{**phantom.truth, "height_cm": row["height_cm"]}])
        ).iloc[0]
        hips = {"left": phantom.frame.hip_left, "right": phantom.frame.hip_right}
        record = metrics.participant_metrics(
            phantom.labels,
            grid.affine_ras(),
            phantom.water,
            phantom.fat,
            height_cm=row["height_cm"],
            hips_lps_mm=hips,
        )
        for name in LABELS:
            assert record[f"vol_{name}_ml"] == pytest.approx(truth[f"vol_{name}_ml"], rel=0.01)
            n = np.count_nonzero(phantom.labels == LABELS[name])
            assert record[f"vol_{name}_ml"] == pytest.approx(n * grid.voxel_volume_ml)
        for column in ("vol_iliopsoas_total_ml", "imi_ml_m2", "vol_gluteus_total_ml"):
            assert record[column] == pytest.approx(truth[column], rel=0.01)
        for column in ("psoas_max_csa_left_cm2", "psoas_max_csa_right_cm2"):
            assert record[column] == pytest.approx(truth[column], rel=0.02)
        assert record["psoas_max_csa_total_cm2"] == pytest.approx(
            truth["psoas_max_csa_total_cm2"], rel=0.02
        )
        for side in ("left", "right"):
            for column in (f"psoas_max_csa_z_{side}_mm", f"psoas_max_csa_z_{side}_above_hip_mm"):
                assert abs(record[column] - truth[column]) <= slice_mm, column
        # Issue 5 asks for 0.01 on noiseless images; the eroded mask gives 0.0002.
        for muscle in metrics.MUSCLES:
            assert record[f"ff_{muscle}"] == pytest.approx(row[f"ff_{muscle}"], abs=0.002)
            for side in ("left", "right"):
                ff = record[f"ff_{muscle}_{side}"]
                assert ff == pytest.approx(row[f"ff_{muscle}"], abs=0.002)
        # Without erosion, partial volume with neighbours biases it (up to 0.05).
        whole = np.mean(
            (phantom.fat / np.maximum(phantom.water + phantom.fat, 1e-6))[phantom.labels == PSOAS_L]
        )
        assert abs(record["ff_psoas_major_left"] - row["ff_psoas_major"]) < abs(
            whole - row["ff_psoas_major"]
        )


# ---------------------------------------------------------------- a real CT mask

# TotalSegmentator 2.18.0 (Apache-2.0), sdist `pip download --no-deps --no-binary :all:
# totalsegmentator==2.18.0`: tests/reference_files/example_seg_fast/iliopsoas_{left,right}.nii.gz,
# the iliopsoas masks TotalSegmentator --fast made of its real example CT
# (tests/reference_files/example_ct_sm.nii.gz, 3 mm voxels), copied byte for byte into
# tests/measure/data/totalsegmentator/ (see its README for source and licence).
# Its published volumes are in tests/reference_files/example_seg_fast/statistics.json
# (`TotalSegmentator -i example_ct_sm.nii.gz -o example_seg_fast --fast --statistics`):
# iliopsoas_left 12717.0 mm3, iliopsoas_right 10854.0 mm3. The small CT's field of view
# ends inside the muscles (both masks reach slice k = 0), which our border flag must say.
TOTALSEG_SHA256 = {
    "left": "9dc9d8fcc24c47b08399dd6058d3998bb37204ac6873299e262f5667418ffc46",
    "right": "5ddab4f893dce528c17ee232fb077f708e9901508476605c58af02594fa97b1f",
}
TOTALSEG_VOLUME_MM3 = {"left": 12717.0, "right": 10854.0}
TOTALSEG_DIR = Path(__file__).parent / "data" / "totalsegmentator"


@pytest.mark.parametrize("side", ["left", "right"])
def test_real_ct_iliopsoas_mask_has_its_published_volume(side):
    path = TOTALSEG_DIR / f"iliopsoas_{side}.nii.gz"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == TOTALSEG_SHA256[side]
    mask, affine = io.read_labels(path)
    labels = np.where(mask > 0, LABELS[f"psoas_major_{side}"], 0).astype(np.uint8)
    record = metrics.participant_metrics(labels, affine)
    assert record[f"vol_psoas_major_{side}_ml"] * 1000.0 == pytest.approx(
        TOTALSEG_VOLUME_MM3[side], rel=1e-9
    )
    assert record[f"vol_iliopsoas_{side}_ml"] == record[f"vol_psoas_major_{side}_ml"]
    assert record[f"touches_border_psoas_major_{side}"] is True
    assert record[f"n_components_psoas_major_{side}"] == 1
