"""Fat-water swap detection on planted swaps (toy bodies and synthetic participants)."""

from __future__ import annotations

import numpy as np
import pytest

from myoflow.ingest import stitch
from myoflow.measure import qc, swaps
from myoflow.synth import phenotypes
from myoflow.synth.geometry import protocol
from myoflow.synth.render import render_participant
from myoflow.synth.rng import participant_rng
from myoflow.synth.signal import CHANNELS, Artefacts, bias_field, station_channels, station_grid

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
    decisions = swaps.detect_swaps(*toy_channels(), TOY_STATIONS, TOY_AFFINE)
    assert [d.status for d in decisions] == ["ok", "ok"]
    assert all(d.score < 0.01 for d in decisions)


def test_whole_station_swap_is_found_in_its_station_only():
    region = np.zeros((40, 36, 30), dtype=bool)
    region[:, :, 0:15] = True
    decisions = swaps.detect_swaps(*toy_channels(region), TOY_STATIONS, TOY_AFFINE)
    assert [d.status for d in decisions] == ["ok", "swap"]
    assert decisions[1].score > 0.9 and decisions[1].swapped
    assert "whole station" in decisions[1].reason


def test_partial_swap_is_located():
    # A block on the patient's right (low i: i runs to the left) and anterior (low j).
    region = np.zeros((40, 36, 30), dtype=bool)
    region[4:16, 3:15, 18:27] = True
    decisions = swaps.detect_swaps(*toy_channels(region), TOY_STATIONS, TOY_AFFINE)
    assert decisions[1].status == "ok"
    assert decisions[0].status == "partial_swap"
    assert decisions[0].region == "right anterior"
    assert decisions[0].region_ml > 5.0
    flipped = np.zeros_like(region)
    flipped[24:36, 21:33, 18:27] = True
    assert swaps.detect_swaps(*toy_channels(flipped), TOY_STATIONS, TOY_AFFINE)[0].region == (
        "left posterior"
    )


def test_missing_channel_or_no_tissue_is_undetermined_not_ok():
    water, fat, in_phase, opposed = toy_channels()
    decisions = swaps.detect_swaps(water, None, in_phase, opposed, TOY_STATIONS, TOY_AFFINE)
    assert {d.status for d in decisions} == {"undetermined"}
    assert "fat" in decisions[0].reason
    air = np.abs(np.random.default_rng(1).normal(0, 15, water.shape))
    decisions = swaps.detect_swaps(air, air, air, air * 0.1, TOY_STATIONS, TOY_AFFINE)
    assert {d.status for d in decisions} == {"undetermined"}
    flags = qc.participant_flags(swaps=decisions)
    assert [f["severity"] for f in flags] == ["warn", "warn"]


def test_a_body_without_fat_is_judged_on_an_assumed_fat_level():
    body = toy_channels()[2] > 300
    water, fat = np.where(body, 558.0, 0.0), np.where(body, 62.0, 0.0)
    clean = swaps.detect_swaps(water, fat, water + fat, water - fat, TOY_STATIONS, TOY_AFFINE)
    assert [d.status for d in clean] == ["ok", "ok"]
    assert "assumed" in clean[0].reason
    lower = np.zeros_like(body)
    lower[:, :, :15] = True
    w, f = np.where(lower, fat, water), np.where(lower, water, fat)
    swapped = swaps.detect_swaps(w, f, w + f, np.abs(w - f), TOY_STATIONS, TOY_AFFINE)
    assert [d.status for d in swapped] == ["ok", "swap"]


def test_own_slices_leave_out_overlaps():
    own = swaps.own_slices([(10, 20), (0, 12), (18, 25)], 25)
    assert own[0].tolist() == list(range(12, 18))
    assert own[1].tolist() == list(range(0, 10))
    assert own[2].tolist() == list(range(20, 25))


# ---------------------------------------------------------------- synthetic participants

N_PHANTOMS = 3


def convert_like(phantom, proto, artefacts: Artefacts, rng: np.random.Generator):
    """One acquisition of a phantom as ``myoflow convert`` hands it on: each station's noisy
    channels resampled (trilinear) and blended onto the UK Biobank 2.23 x 2.23 x 3 mm grid,
    so a small participant's 4.46 x 4.46 x 6 mm stations are upsampled twofold.

    Returns:
        (channels by name, each station's (k_start, k_stop) on the grid, the grid).
    """
    bias = bias_field(proto.grid.shape, rng)
    water, fat = phantom.water * bias, phantom.fat * bias
    per_station = [station_channels(water, fat, s, artefacts, rng)[0] for s in proto.stations]
    affines = [station_grid(proto.grid, s).affine_lps() for s in proto.stations]
    shapes = [ch["water"].shape for ch in per_station]
    grid = stitch.common_grid(shapes, affines, stitch.UKBB_SPACING_MM)
    channels = {c: stitch.stitch([ch[c] for ch in per_station], affines, grid) for c in CHANNELS}
    z_ranges = [stitch.z_range_mm(shape, a)[:2] for shape, a in zip(shapes, affines, strict=True)]
    return channels, swaps.station_slices(z_ranges, grid.affine_ras(), grid.shape[2]), grid


@pytest.fixture(scope="module")
def swap_cases():
    """Nine acquisitions and their decisions: 3 small phantoms rendered once, each acquired
    3 times (new bias and noise) clean, with a whole-station swap and with a partial swap,
    and stitched as the pipeline stitches them (small stations upsampled twofold).

    Issue 5: before the partial-volume widths were in mm and dominance was read from water
    and fat too, two of the three clean acquisitions had regions of 14 ml flagged as
    partial swaps (min_region_ml 5); now the largest is 0.3 ml.
    """
    proto = protocol("ukbb", "small")
    table = phenotypes.sample_cohort(2024, N_PHANTOMS, "ukbb", first_index=1)
    cases = []
    for index, row in enumerate(table.to_dict("records"), start=1):
        phantom = render_participant(row, proto.grid, participant_rng(2024, index, "texture"))
        rng = np.random.default_rng(index)
        draws = [
            Artefacts(),
            Artefacts(swap_station=int(rng.integers(1, 7))),
            Artefacts(
                partial_swap_station=int(rng.integers(1, 7)),
                partial_swap_centre=tuple(float(v) for v in rng.uniform(0.25, 0.75, 3)),
                partial_swap_radii=tuple(float(v) for v in rng.uniform(0.2, 0.45, 3)),
            ),
        ]
        for artefacts in draws:
            channels, stations, grid = convert_like(phantom, proto, artefacts, rng)
            decisions = swaps.detect_swaps(
                *(channels[c] for c in CHANNELS), stations, grid.affine_ras()
            )
            cases.append((artefacts, decisions))
    return cases


def test_planted_swaps_are_found_with_their_station(swap_cases):
    true_pos = false_pos = positives = negatives = 0
    for artefacts, decisions in swap_cases:
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
    assert (positives, negatives) == (2 * N_PHANTOMS, N_PHANTOMS)
    assert true_pos == positives  # sensitivity 1 on these 6 (bench/swaps.py: 200 each size)
    assert false_pos == 0  # specificity 1 on these 3 (bench/swaps.py: 200 each size)


def test_partial_volume_of_clean_participants_stays_well_under_a_region(swap_cases):
    # Not just unflagged: the largest contradicting region of a clean acquisition is far
    # from the smallest one flagged, so noise cannot tip it over.
    limit = swaps.SwapSettings().min_region_ml
    clean = [decisions for artefacts, decisions in swap_cases if not artefacts.swapped_stations()]
    assert len(clean) == N_PHANTOMS
    for decisions in clean:
        assert max(d.region_ml for d in decisions) < limit / 2


# ---------------------------------------------------------------- pieces


@pytest.mark.parametrize(
    ("shape", "radii"),
    [
        ((4, 9, 11), (0, 2, 2)),
        ((3, 1, 7), (1, 2, 2)),
        ((5, 6, 2), (2, 1, 3)),
        ((6, 5, 4), (1, 0, 1)),
    ],
)
def test_local_maximum_equals_the_maximum_filter(shape, radii):
    from scipy import ndimage

    values = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    expected = ndimage.maximum_filter(values, size=[2 * r + 1 for r in radii])
    np.testing.assert_array_equal(swaps.local_maximum(values, radii), expected)


def test_mean_index_is_the_mean_of_the_voxel_indices():
    mask = np.random.default_rng(3).random((7, 11, 5)) > 0.8
    assert np.array_equal(swaps.mean_index(mask), np.argwhere(mask).mean(axis=0))


def test_station_slices_from_the_z_ranges_of_the_acquisition_record():
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    affine[2, 3] = -100.0  # slice k lies at z = -100 + 3 k
    # Head first, overlapping by three slices; the last one's centres fall between slices.
    z_ranges = [(-10.0, 50.0), (-58.0, -4.0), (-125.5, -60.5)]
    assert swaps.station_slices(z_ranges, affine, 60) == [(30, 51), (14, 33), (0, 14)]
    flipped = affine.copy()
    flipped[2, 2:] = [-3.0, 77.0]  # k runs down: slice k at z = 77 - 3 k
    assert swaps.station_slices([(-10.0, 50.0)], flipped, 60) == [(9, 30)]
    tilted = affine.copy()
    tilted[2, 0] = 1.0
    with pytest.raises(swaps.SwapError, match="not along z"):
        swaps.station_slices(z_ranges, tilted, 60)


def test_memory_order_of_the_channels_changes_nothing():
    region = np.zeros((40, 36, 30), dtype=bool)
    region[4:16, 3:15, 18:27] = True
    channels = toy_channels(region)
    c_order = swaps.detect_swaps(*channels, TOY_STATIONS, TOY_AFFINE)
    fortran = [np.asfortranarray(a, dtype=np.float32) for a in channels]
    assert swaps.detect_swaps(*fortran, TOY_STATIONS, TOY_AFFINE) == c_order
    assert c_order[0].status == "partial_swap"


@pytest.mark.parametrize(("shape", "iterations"), [((3, 9, 11), 1), ((2, 8, 7), 2), ((2, 1, 6), 2)])
def test_erode_in_plane_equals_the_binary_erosion(shape, iterations):
    from scipy import ndimage

    mask = np.random.default_rng(sum(shape)).random(shape) > 0.1
    cross = np.zeros((1, 3, 3), dtype=bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    expected = ndimage.binary_erosion(mask, structure=cross, iterations=iterations)
    assert expected.any() == (shape[1] > 1)  # a single row erodes away
    np.testing.assert_array_equal(swaps.erode_in_plane(mask, iterations), expected)
