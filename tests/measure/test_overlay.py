"""Overlays and montages: written, small, PNG, outlines drawn, radiological orientation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from myoflow import __version__
from myoflow.core.labels import COLOURS, LABELS
from myoflow.measure import overlay
from myoflow.measure.metrics import participant_metrics
from myoflow.synth import phenotypes
from myoflow.synth.geometry import protocol
from myoflow.synth.render import render_participant
from myoflow.synth.rng import participant_rng


def measured(labels, affine) -> dict:
    """The metrics record the measure stage passes to the overlay."""
    return participant_metrics(labels, affine)


@pytest.fixture(scope="module")
def phantom():
    grid = protocol("ukbb", "small").grid
    row = phenotypes.sample_cohort(4, 1, "ukbb").to_dict("records")[0]
    return grid, render_participant(row, grid, participant_rng(4, 1, "texture"))


def outline_pixels(path) -> int:
    """Pixels within a few grey levels of any muscle outline colour."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    colours = [tuple(int(c[k : k + 2], 16) for k in (1, 3, 5)) for c in COLOURS.values()]
    near = np.zeros(rgb.shape[:2], dtype=bool)
    for colour in colours:
        near |= np.abs(rgb - np.array(colour)).max(axis=2) <= 24
    return int(near.sum())


def test_overlay_is_a_small_png_with_only_our_metadata(phantom, tmp_path):
    grid, ph = phantom
    path = tmp_path / "qc" / "overlay.png"
    size = overlay.participant_overlay(
        path,
        ph.water,
        ph.labels,
        grid.affine_ras(),
        "ukbb000001",
        measured(ph.labels, grid.affine_ras()),
    )
    assert path.stat().st_size == size < overlay.MAX_BYTES
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        width, height = image.size
        assert 1000 <= width <= 2000 and 250 <= height <= 800
        assert image.text == {"Software": f"myoflow {__version__}"}
    assert not list(tmp_path.glob("qc/.*"))  # no temporary file left behind


def test_outlines_are_drawn_where_the_masks_are(phantom, tmp_path):
    grid, ph = phantom
    overlay.participant_overlay(
        tmp_path / "a.png",
        ph.water,
        ph.labels,
        grid.affine_ras(),
        "p",
        measured(ph.labels, grid.affine_ras()),
    )
    empty = np.zeros_like(ph.labels)
    overlay.participant_overlay(
        tmp_path / "b.png",
        ph.water,
        empty,
        grid.affine_ras(),
        "p",
        measured(empty, grid.affine_ras()),
    )
    drawn, legend_only = outline_pixels(tmp_path / "a.png"), outline_pixels(tmp_path / "b.png")
    assert drawn > legend_only + 2000


def test_display_is_radiological(phantom):
    import matplotlib.pyplot as plt

    grid, ph = phantom
    psoas = [LABELS["psoas_major_left"], LABELS["psoas_major_right"]]
    labels = np.where(np.isin(ph.labels, psoas), ph.labels, 0)
    fig = overlay.draw_overlay(
        ph.water, labels, grid.affine_ras(), "p", measured(labels, grid.affine_ras())
    )
    try:
        coronal, axial = fig.axes[1], fig.axes[4]
        # Outlines are drawn in LABELS order: the left psoas first, then the right.
        for ax in (coronal, axial):
            left, right = (_mean_x(c) for c in ax.collections[:2])
            assert right < left  # the patient's right on the viewer's left
            assert not ax.xaxis_inverted()
            assert [t.get_text() for t in ax.texts] == ["R", "L"]
        # Head up in the coronal view: the psoas (above the hips) sits in the upper half.
        rows = np.concatenate([p.vertices[:, 1] for p in coronal.collections[0].get_paths()])
        assert np.median(rows) < coronal.get_images()[0].get_array().shape[0] / 2
    finally:
        plt.close(fig)


def _mean_x(contour) -> float:
    """Mean x (data coordinates: image columns) of a contour's vertices."""
    return float(np.concatenate([p.vertices[:, 0] for p in contour.get_paths()]).mean())


def test_montage_of_overlays_and_arrays(phantom, tmp_path):
    grid, ph = phantom
    affine = grid.affine_ras()
    paths = []
    for n, name in enumerate(("small", "average")):
        paths.append(tmp_path / f"{name}.png")
        labels = ph.labels if n else np.where(ph.labels % 2 == 1, ph.labels, 0)
        overlay.participant_overlay(
            paths[-1], ph.water, labels, affine, name, measured(labels, affine)
        )
    size = overlay.montage(paths, ["small", "average"], tmp_path / "montage.png")
    assert 0 < size < overlay.MAX_BYTES
    with Image.open(tmp_path / "montage.png") as image:
        assert image.size[1] > image.size[0] / 3  # wide overlays stack in one column
    panels = [overlay.coronal_panel(ph.water, ph.labels, affine) for _ in range(3)]
    assert panels[0].ndim == 3 and panels[0].shape[2] == 3
    size = overlay.montage(panels, ["small", "average", "large"], tmp_path / "coronal.png")
    with Image.open(tmp_path / "coronal.png") as image:
        assert image.size[0] > image.size[1]  # tall panels side by side
    with pytest.raises(ValueError, match="titles"):
        overlay.montage(paths, ["one"], tmp_path / "x.png")


def test_a_picture_over_the_size_limit_is_drawn_smaller(phantom, tmp_path):
    grid, ph = phantom
    sizes = []
    for limit in (10**9, 1):
        fig = overlay.draw_overlay(
            ph.water, ph.labels, grid.affine_ras(), "p", measured(ph.labels, grid.affine_ras())
        )
        sizes.append(overlay.save_png(fig, tmp_path / f"{limit}.png", max_bytes=limit))
    assert sizes[1] < sizes[0] / 2
    with Image.open(tmp_path / "1.png") as small, Image.open(tmp_path / f"{10**9}.png") as big:
        assert small.size[0] < big.size[0] / 2


def test_outlines_are_the_lines_contour_draws(phantom):
    """Outlines are built without ax.contour (for speed); they must be its very lines."""
    import matplotlib.pyplot as plt

    grid, ph = phantom
    fig, (ours, theirs) = plt.subplots(1, 2)
    try:
        for value in (LABELS["psoas_major_left"], LABELS["gluteus_maximus_right"]):
            k = int(np.argmax(np.count_nonzero(ph.labels == value, axis=(0, 1))))
            mask = ph.labels[:, :, k] == value
            overlay._outline(ours, mask, "#e6194b")
            theirs.contour(mask.T.astype(np.float32), levels=[0.5], colors=["#e6194b"])
            mine, reference = ours.collections[-1], theirs.collections[-1]
            (path,), (expected,) = mine.get_paths(), reference.get_paths()
            assert len(path.vertices) > 20
            np.testing.assert_array_equal(path.vertices, expected.vertices)
            np.testing.assert_array_equal(path.codes, expected.codes)
            assert mine.get_zorder() == reference.get_zorder()
            np.testing.assert_array_equal(mine.get_edgecolor(), reference.get_edgecolor())
            assert mine.get_antialiased() == reference.get_antialiased()
    finally:
        plt.close(fig)
