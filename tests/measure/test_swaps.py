"""Fat-water swap detection on planted swaps (toy bodies and synthetic participants)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from myoflow.ingest import stitch
from myoflow.measure import qc, swap_evidence, swaps
from myoflow.synth import phenotypes
from myoflow.synth.appearance_render import (
    acquisition_protocol,
    cohort_appearance,
    noise_sigma,
    noiseless_channels,
    station_images,
)
from myoflow.synth.geometry import protocol
from myoflow.synth.render import render_participant
from myoflow.synth.rng import participant_rng
from myoflow.synth.signal import (
    CHANNELS,
    ArtefactRates,
    Artefacts,
    bias_field,
    sample_artefacts,
    station_channels,
    station_grid,
)

# ---------------------------------------------------------------- a toy body


def toy_channels(
    swap_region: np.ndarray | None = None,
    seed: int = 0,
    muscle_in_phase: float = 620.0,
    partial_volume: bool = False,
):
    """Two stations of a cylinder body: 1000-bright fat (ff 0.93) around muscle of
    ``muscle_in_phase`` (ff 0.1), with noise; ``swap_region`` trades water and fat where
    True. ``partial_volume`` mixes each voxel with its neighbours (Gaussian, sigma 0.7
    voxel) before the opposed phase's magnitude is taken, as an acquisition does, so
    voxels straddling fat and muscle cancel in the opposed phase."""
    rng = np.random.default_rng(seed)
    shape = (40, 36, 30)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot(i - 19.5, j - 17.5)
    body = np.repeat((r < 15)[:, :, None], shape[2], axis=2)
    muscle = np.repeat((r < 11)[:, :, None], shape[2], axis=2)
    water = np.where(muscle, 0.9 * muscle_in_phase, np.where(body, 70.0, 0.0))
    fat = np.where(muscle, 0.1 * muscle_in_phase, np.where(body, 930.0, 0.0))
    if partial_volume:
        water, fat = (ndimage.gaussian_filter(x, (0.7, 0.7, 0.7)) for x in (water, fat))
    in_phase, opposed = water + fat, np.abs(water - fat)
    if swap_region is not None:
        water, fat = np.where(swap_region, fat, water), np.where(swap_region, water, fat)
    noisy = [np.abs(x + rng.normal(0, 15, shape)) for x in (water, fat, in_phase)]
    return (*noisy, opposed)


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
    assert decisions[0].edge_ml > 5.0
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


def test_a_body_without_fat_labelled_tissue_is_not_called_swapped():
    # A swap trades the labels, so a swapped body shows both; water-labelled tissue only
    # (the outer layer too) is no evidence of one.
    body = toy_channels()[2] > 300
    water, fat = np.where(body, 558.0, 0.0), np.where(body, 62.0, 0.0)
    clean = swaps.detect_swaps(water, fat, water + fat, water - fat, TOY_STATIONS, TOY_AFFINE)
    assert [d.status for d in clean] == ["ok", "ok"]
    assert all(d.score is None for d in clean)


def test_swaps_are_found_whatever_the_scaling(scaled_toy):
    # Per-station gains of x9.7 and x0.13 and a smooth bias from x0.64 to x1.42
    # (the same for all four channels, as a receive coil and a vendor's scaling are)
    # change no decision.
    whole = np.zeros((40, 36, 30), dtype=bool)
    whole[:, :, 0:15] = True
    block = np.zeros_like(whole)
    block[4:16, 3:15, 18:27] = True
    for region, expected in (
        (None, ["ok", "ok"]),
        (whole, ["ok", "swap"]),
        (block, ["partial_swap", "ok"]),
    ):
        channels = toy_channels(region)
        plain = swaps.detect_swaps(*channels, TOY_STATIONS, TOY_AFFINE)
        scaled = swaps.detect_swaps(*scaled_toy(channels), TOY_STATIONS, TOY_AFFINE)
        assert [d.status for d in plain] == [d.status for d in scaled] == expected


@pytest.fixture
def scaled_toy():
    i, j, k = np.meshgrid(*(np.linspace(-1, 1, n) for n in (40, 36, 30)), indexing="ij")
    bias = np.exp(0.2 * i + 0.15 * j * k - 0.1 * k * k)
    gain = np.where(np.arange(30) >= 15, 9.7, 0.13)[None, None, :]
    return lambda channels: [c * bias * gain for c in channels]


def test_fat_and_muscle_of_one_brightness_are_not_a_swap_but_a_swapped_block_is():
    # At low flip angles muscle can be as bright in-phase as fat (docs/appearance.md):
    # 930 against 1000 here. Their border still shows in the opposed phase, where the
    # voxels that straddle it cancel; a swap's border does not.
    kwargs = {"muscle_in_phase": 930.0, "partial_volume": True}
    clean = swaps.detect_swaps(*toy_channels(**kwargs), TOY_STATIONS, TOY_AFFINE)
    assert [d.status for d in clean] == ["ok", "ok"]
    # 0 ml; without the opposed phase's dip test (edge_dip ~0) 2.4 ml per station.
    assert max(d.edge_ml for d in clean) < 0.5
    block = np.zeros((40, 36, 30), dtype=bool)
    block[4:16, 3:15, 18:27] = True
    found = swaps.detect_swaps(*toy_channels(block, **kwargs), TOY_STATIONS, TOY_AFFINE)
    assert [d.status for d in found] == ["partial_swap", "ok"]


def test_hidden_label_edges_mark_a_swap_border_and_not_a_tissue_border():
    # One row of fat-dominant tissue (W 100, F 900; in 1000, opp 800). Past i = 6 either
    # its labels are traded (a swap) or it turns into muscle of the same brightness
    # (W 900, F 100) through a voxel that holds both (W = F = 500: opp 0).
    def row(water, fat, opposed):
        w, f, o = (np.array(v, dtype=float)[None, None, :] for v in (water, fat, opposed))
        in_phase = w + f
        dominant = (np.abs(w - f) > 0.4 * (w + f)) & (o > 0.4 * in_phase)
        edges = swap_evidence.hidden_label_edges(
            np.log(in_phase), np.log(np.maximum(o, 1e-9)), dominant, dominant & (f > w), (1, 1, 2)
        )
        return np.flatnonzero(edges[0, 0])

    fat_then_swap = row([100] * 6 + [900] * 6, [900] * 6 + [100] * 6, [800] * 12)
    assert fat_then_swap.tolist() == [4, 5, 6, 7]
    fat_then_muscle = row(
        [100] * 6 + [500] + [900] * 5, [900] * 6 + [500] + [100] * 5, [800] * 6 + [0] + [800] * 5
    )
    assert fat_then_muscle.size == 0
    darker_muscle = row([100] * 6 + [560] * 6, [900] * 6 + [60] * 6, [800] * 6 + [500] * 6)
    assert darker_muscle.size == 0


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
    return stitched(per_station, proto)


def stitched(per_station: list[dict[str, np.ndarray]], proto):
    """Each station's channels resampled (trilinear) and blended onto the UK Biobank
    2.23 x 2.23 x 3 mm grid, as ``myoflow convert`` does (:func:`convert_like`)."""
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
    partial swaps by the brightness detector of then.
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


def planted_draws(rng: np.random.Generator) -> list[Artefacts]:
    """Clean, a whole-station swap and a partial swap, drawn as ``myoflow synth`` draws
    them."""
    return [
        Artefacts(),
        sample_artefacts(rng, 6, ArtefactRates(1, 0, 0, 0)),
        sample_artefacts(rng, 6, ArtefactRates(0, 1, 0, 0)),
    ]


@pytest.fixture(scope="module")
def randomised_swap_cases():
    """Six acquisitions of 2 small participants of randomised appearance (another
    scanner's contrasts, per-station gains and bias, vendor scaling; docs/appearance.md),
    clean, with a whole-station swap and with a partial swap, stitched as
    :func:`convert_like` stitches. Seed 7, which the settings were not developed on."""
    seed, cases = 7, []
    table = phenotypes.sample_cohort(seed, 2, "ukbb", first_index=1)
    for index, row in enumerate(table.to_dict("records"), start=1):
        appearance = cohort_appearance("randomised", seed, index, row, 6)
        proto = acquisition_protocol("ukbb", "small", appearance)
        phantom = render_participant(
            row, proto.grid, participant_rng(seed, index, "texture"), appearance
        )
        rng = participant_rng(seed, index, "swap-test")
        noiseless, gain = noiseless_channels(phantom, appearance, proto.grid, rng)
        sigma = noise_sigma(appearance, row, gain)
        for artefacts in planted_draws(rng):
            per_station = [
                station_images(noiseless, s, appearance, artefacts, sigma, rng, rng)[0]
                for s in proto.stations
            ]
            channels, stations, grid = stitched(per_station, proto)
            decisions = swaps.detect_swaps(
                *(channels[c] for c in CHANNELS), stations, grid.affine_ras()
            )
            cases.append((artefacts, decisions))
    return cases


def test_planted_swaps_are_found_on_randomised_renders(randomised_swap_cases):
    for artefacts, decisions in randomised_swap_cases:
        found = {d.station for d in decisions if d.swapped}
        assert found == artefacts.swapped_stations(), (artefacts.summary(), decisions)


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
    limit = swaps.SwapSettings().min_edge_ml
    clean = [decisions for artefacts, decisions in swap_cases if not artefacts.swapped_stations()]
    assert len(clean) == N_PHANTOMS
    for decisions in clean:
        assert max(d.edge_ml for d in decisions) < limit / 2


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
