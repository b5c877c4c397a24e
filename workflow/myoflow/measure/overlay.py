"""Pictures for people: one participant's segmentation over water (``qc/overlay.png``) and
a cohort montage.

The overlay is one row, read left to right: a coronal maximum-intensity projection of
water with every muscle's projected outline (the whole segmentation at a glance), then
a coronal slice through the iliopsoas centroid, sagittal slices through the right and
left iliopsoas centroids, an axial slice at the psoas' largest cross-section and one
through the glutei's centroid. Display is radiological: the patient's right on the
viewer's left, anterior up in axial views, anterior on the left in sagittal views, head
up; every panel is cropped to the segmented region and marked R / L (or A / P).
Outlines take :data:`myoflow.core.labels.COLOURS`, one colour per muscle, both sides
alike (position and the R / L marks tell the sides apart).

PNGs are palette images (256 colours; grey levels and outline colours need no more),
which keeps an overlay of a full-size UK Biobank participant near 120 KB (limit 300 KB);
the only text chunk is ``Software: myoflow <version>``. Files are written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from myoflow import __version__
from myoflow.core.labels import COLOURS, GROUPS, LABELS

MAX_BYTES = 300_000
FIGURE_WIDTH_IN = 15.0
"""Width of an overlay in inches: at 100 dpi, 1,500 pixels."""
SMALLEST_FONT_PT = 9
"""Size of the overlay's smallest text (panel titles, legend), so that a montage can
tell how large that text is in pixels: SMALLEST_FONT_PT / 72 x pixels / FIGURE_WIDTH_IN."""
MARGIN_MM = 25.0  # context around the segmented region in every panel


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _values(names: Sequence[str]) -> list[int]:
    return [v for n, v in LABELS.items() if n.rsplit("_", 1)[0] in names]


def _centroid(labels: np.ndarray, values: Sequence[int], fallback: np.ndarray) -> np.ndarray:
    """Rounded mean voxel index of the voxels holding ``values`` (``fallback`` if none).

    Summed per axis from projections: integer sums, so exactly the mean of the indices.
    """
    mask = np.isin(labels, values)
    count = int(np.count_nonzero(mask))
    if count == 0:
        return fallback
    sums = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        per_index = np.count_nonzero(mask, axis=others)
        sums.append(int(np.dot(np.arange(per_index.size), per_index)))
    return np.rint(np.array(sums) / count).astype(int)


def _bounds(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """First and last index along each axis where ``mask`` holds a voxel (None: empty)."""
    bounds = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others))
        if hit.size == 0:
            return None
        bounds.append((int(hit[0]), int(hit[-1])))
    return bounds


def _crop(labels: np.ndarray, spacing: np.ndarray) -> tuple[slice, slice, slice]:
    """The labelled region plus ``MARGIN_MM`` (the whole volume when nothing is labelled)."""
    bounds = _bounds(labels > 0)
    if bounds is None:
        return (slice(None),) * 3
    pad = np.ceil(MARGIN_MM / spacing).astype(int)
    lo = np.maximum(np.array([b[0] for b in bounds]) - pad, 0)
    hi = np.minimum(np.array([b[1] for b in bounds]) + pad + 1, labels.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _window(water: np.ndarray) -> float:
    """Display maximum: muscle, the brightest tissue in water, stays mid-grey so that
    outlines stand out."""
    tissue = water[water > 0]
    return 1.6 * float(np.percentile(tissue, 99)) if tissue.size else 1.0


def _mark(ax, left: str, right: str) -> None:
    """Orientation letters at the panel's left and right edges."""
    style = {
        "color": "yellow",
        "fontsize": 8,
        "va": "top",
        "transform": ax.transAxes,
        "bbox": {"facecolor": "black", "edgecolor": "none", "pad": 1.0},
    }
    ax.text(0.02, 0.98, left, ha="left", **style)
    ax.text(0.98, 0.98, right, ha="right", **style)


def _outline(ax, mask_2d: np.ndarray, colour: str) -> None:
    """The outline of ``mask_2d`` (indexed screen x, screen y from the top) on ``ax``.

    The lines are those ``ax.contour(mask_2d.T, levels=[0.5], colors=[colour],
    linewidths=0.8)`` draws (same contour generator, paths, style and order), as one
    collection, without the contour set's colour-mapping machinery, which took most of
    an overlay's time.
    """
    import contourpy
    from matplotlib import rcParams
    from matplotlib.collections import Collection
    from matplotlib.path import Path

    z = mask_2d.T.astype(np.float64)
    x, y = np.meshgrid(np.arange(z.shape[1], dtype=float), np.arange(z.shape[0], dtype=float))
    generator = contourpy.contour_generator(
        x,
        y,
        z,
        name=rcParams["contour.algorithm"],
        corner_mask=rcParams["contour.corner_mask"],
        line_type=contourpy.LineType.SeparateCode,
    )
    vertices, codes = generator.create_contour(0.5)
    if not vertices:
        return
    lines = Collection(
        facecolor="none", edgecolor=colour, linewidths=0.8, zorder=2, label="_nolegend_"
    )
    lines.set_paths([Path(np.concatenate(vertices), np.concatenate(codes))])
    ax.add_collection(lines, autolim=False)


def _colour(label_name: str) -> str:
    return COLOURS[label_name.rsplit("_", 1)[0]]


def _show_slice(ax, image_2d: np.ndarray, labels_2d: np.ndarray, aspect: float, vmax: float):
    """``image_2d`` in grey with each label's outline, in :data:`LABELS` order; arrays
    indexed (screen x, screen y from the top), ``aspect`` the y/x pixel size."""
    ax.imshow(image_2d.T, cmap="gray", vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest")
    for name, value in LABELS.items():
        mask = labels_2d == value
        if mask.any():
            _outline(ax, mask, _colour(name))
    ax.set_xticks([])
    ax.set_yticks([])


def _projection(ax, water: np.ndarray, labels: np.ndarray, aspect: float, vmax: float) -> None:
    """Coronal maximum-intensity projection (along j) with each label's projected outline."""
    ax.imshow(
        water.max(axis=1)[:, ::-1].T,
        cmap="gray",
        vmin=0,
        vmax=vmax,
        aspect=aspect,
        interpolation="nearest",
    )
    for name, value in LABELS.items():
        shadow = (labels == value).any(axis=1)[:, ::-1]
        if shadow.any():
            _outline(ax, shadow, _colour(name))
    ax.set_xticks([])
    ax.set_yticks([])


def _title(participant_id: str, record: Mapping[str, Any]) -> str:
    def pair(key: str, digits: int = 0) -> str:
        left, right = record.get(key.format("left")), record.get(key.format("right"))
        if left is None or right is None:
            return "-"
        return f"R {right:.{digits}f} / L {left:.{digits}f}"

    return (
        f"{participant_id}    iliopsoas {pair('vol_iliopsoas_{}_ml')} ml"
        f"    gluteus {pair('vol_gluteus_{}_ml')} ml"
        f"    psoas max CSA {pair('psoas_max_csa_{}_cm2', 1)} cm²"
    )


def draw_overlay(
    water: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    participant_id: str,
    record: Mapping[str, Any],
):
    """The overlay figure (matplotlib ``Figure``); see the module docstring for the layout.

    Args:
        water: water channel (i, j, k), on the grid of ``labels``.
        labels: label volume (values of ``LABELS``).
        affine: 4x4 voxel -> RAS mm matrix (voxel sizes set the panels' aspect).
        participant_id: shown in the title.
        record: the participant's metrics record
            (:func:`myoflow.measure.metrics.participant_metrics`), for the volumes in the
            title and the slice of the psoas' largest CSA; nothing is measured here.
    """
    plt = _pyplot()
    water = np.asarray(water, dtype=np.float32)
    labels = np.asarray(labels)
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    sx, sy, sz = spacing
    box = _crop(labels, spacing)
    w, lab = water[box], labels[box]
    vmax = _window(w)
    middle = np.array(lab.shape) // 2
    ilio = _centroid(lab, _values(GROUPS["iliopsoas"]), middle)
    glut = _centroid(lab, _values(GROUPS["gluteus"]), middle)
    sides = {
        side: _centroid(lab, [LABELS[f"psoas_major_{side}"], LABELS[f"iliacus_{side}"]], ilio)
        for side in ("right", "left")
    }
    k_csa = _psoas_csa_slice(lab, record, affine, box, ilio[2])
    width_coronal = lab.shape[0] * sx / (lab.shape[2] * sz)
    width_sagittal = lab.shape[1] * sy / (lab.shape[2] * sz)
    width_axial = lab.shape[0] * sx / (lab.shape[1] * sy)
    ratios = [width_coronal] * 2 + [width_sagittal] * 2 + [width_axial * 0.8] * 2
    fig, axes = plt.subplots(
        1,
        6,
        figsize=(FIGURE_WIDTH_IN, FIGURE_WIDTH_IN / sum(ratios) + 1.2),
        gridspec_kw={"width_ratios": ratios},
    )
    _projection(axes[0], w, lab, sz / sx, vmax)
    axes[0].set_title("coronal MIP", fontsize=SMALLEST_FONT_PT)
    _mark(axes[0], "R", "L")
    _show_slice(axes[1], w[:, ilio[1], ::-1], lab[:, ilio[1], ::-1], sz / sx, vmax)
    axes[1].set_title("coronal, iliopsoas", fontsize=SMALLEST_FONT_PT)
    _mark(axes[1], "R", "L")
    for ax, side in zip(axes[2:4], ("right", "left"), strict=True):
        i = sides[side][0]
        _show_slice(ax, w[i, :, ::-1], lab[i, :, ::-1], sz / sy, vmax)
        ax.set_title(f"sagittal, {side}", fontsize=SMALLEST_FONT_PT)
        _mark(ax, "A", "P")
    _show_slice(axes[4], w[:, :, k_csa], lab[:, :, k_csa], sy / sx, vmax)
    axes[4].set_title("axial, psoas max CSA", fontsize=SMALLEST_FONT_PT)
    _show_slice(axes[5], w[:, :, glut[2]], lab[:, :, glut[2]], sy / sx, vmax)
    axes[5].set_title("axial, glutei", fontsize=SMALLEST_FONT_PT)
    for ax in axes[4:]:
        _mark(ax, "R", "L")
    handles = [plt.Line2D([], [], color=c, label=n.replace("_", " ")) for n, c in COLOURS.items()]
    fig.legend(
        handles=handles, loc="lower center", ncol=5, frameon=False, fontsize=SMALLEST_FONT_PT
    )
    fig.suptitle(_title(participant_id, record), fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.94), w_pad=0.5)
    return fig


def _psoas_csa_slice(lab, record, affine, box, fallback: int) -> int:
    """k (within the crop) of the psoas' largest cross-section, from the record's z."""
    a = np.asarray(affine, dtype=float)
    zs = [record.get(f"psoas_max_csa_z_{side}_mm") for side in ("left", "right")]
    zs = [z for z in zs if z is not None]
    if not zs or a[2, 2] == 0:
        return int(fallback)
    k = (float(np.mean(zs)) - a[2, 3]) / a[2, 2] - (box[2].start or 0)
    return int(np.clip(round(k), 0, lab.shape[2] - 1))


def save_png(fig, path: str | os.PathLike[str], dpi: int = 100, max_bytes: int = MAX_BYTES) -> int:
    """Save ``fig`` as a 256-colour PNG atomically and close it; return its size in bytes.

    The only metadata is ``Software: myoflow <version>``. A picture over ``max_bytes`` is
    drawn again at a lower resolution (at most three times).
    """
    from myoflow.core.io import atomic_path

    plt = _pyplot()
    try:
        data = _png_bytes(fig, dpi)
        for _ in range(3):
            if len(data) <= max_bytes:
                break
            dpi = int(dpi * 0.75)
            data = _png_bytes(fig, dpi)
    finally:
        plt.close(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def _png_bytes(fig, dpi: int) -> bytes:
    """The figure drawn at ``dpi`` as a 256-colour PNG.

    Takes the pixels straight from the Agg canvas: exactly those ``savefig`` would encode
    as PNG, without encoding and decoding an intermediate PNG.
    """
    from PIL import Image, PngImagePlugin

    if fig.dpi != dpi:
        fig.set_dpi(dpi)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    image = Image.fromarray(rgba[:, :, :3])
    palette = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"myoflow {__version__}")
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True, pnginfo=info)
    return out.getvalue()


def participant_overlay(
    out_png: str | os.PathLike[str],
    water: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    participant_id: str,
    record: Mapping[str, Any],
) -> int:
    """Write ``qc/overlay.png`` (see :func:`draw_overlay`); return its size in bytes."""
    return save_png(draw_overlay(water, labels, affine, participant_id, record), out_png)


def coronal_panel(
    water: np.ndarray, labels: np.ndarray, affine: np.ndarray, mm_per_px: float = 1.2
) -> np.ndarray:
    """The overlay's coronal projection alone as an RGB array (H, W, 3), for a montage.

    Every panel has the same scale (``mm_per_px``), so a montage shows sizes as they are.
    """
    plt = _pyplot()
    labels = np.asarray(labels)
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    box = _crop(labels, spacing)
    w, lab = np.asarray(water, dtype=np.float32)[box], labels[box]
    vmax = _window(w)
    width_mm, height_mm = lab.shape[0] * spacing[0], lab.shape[2] * spacing[2]
    fig, ax = plt.subplots(
        figsize=(width_mm / mm_per_px / 100, height_mm / mm_per_px / 100), dpi=100
    )
    _projection(ax, w, lab, spacing[2] / spacing[0], vmax)
    _mark(ax, "R", "L")
    fig.subplots_adjust(0, 0, 1, 1)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(fig)
    return image


def montage(
    paths_or_arrays: Sequence[str | os.PathLike[str] | np.ndarray],
    titles: Sequence[str],
    out_png: str | os.PathLike[str],
    ncols: int | None = None,
) -> int:
    """Participants side by side (UK Biobank iliopsoas paper, Figure 3: small, average,
    large and asymmetric), each with its title; write ``out_png`` and return its size.

    Items are PNG paths (e.g. overlays) or images as arrays (H, W), (H, W, 3) or
    (H, W, 4). ``ncols`` defaults to one row of up to 4, or one column for wide images.
    """
    if len(paths_or_arrays) != len(titles):
        raise ValueError(f"{len(paths_or_arrays)} images but {len(titles)} titles")
    if not paths_or_arrays:
        raise ValueError("a montage needs at least one image")
    plt = _pyplot()
    images = [_as_image(item) for item in paths_or_arrays]
    wide = all(im.shape[1] > 1.5 * im.shape[0] for im in images)
    ncols = ncols or (1 if wide else min(len(images), 4))
    nrows = -(-len(images) // ncols)
    height, width = max(im.shape[0] for im in images), max(im.shape[1] for im in images)
    scale = min(16.0 / (ncols * width), 20.0 / (nrows * height)) * 80
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(ncols * width * scale / 80 + 0.2, nrows * (height * scale / 80 + 0.5)),
        squeeze=False,
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, title in zip(axes.ravel(), images, titles, strict=False):
        ax.imshow(_pad(image, height, width), interpolation="antialiased")
        ax.set_title(title, fontsize=10)
    fig.tight_layout(pad=0.8)
    return save_png(fig, out_png, dpi=80)


def _as_image(item: str | os.PathLike[str] | np.ndarray) -> np.ndarray:
    """An RGB float image in [0, 1] from a PNG path or an image array."""
    if isinstance(item, np.ndarray):
        if not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (3, 4))):
            raise ValueError(f"an image array is (H, W), (H, W, 3) or (H, W, 4), got {item.shape}")
        image = item
    else:
        import matplotlib.image as mpimg

        image = mpimg.imread(os.fspath(item))
    image = np.asarray(image, dtype=np.float64)
    if np.issubdtype(np.asarray(item).dtype, np.integer) or image.max() > 1.0:
        image = image / 255.0
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.clip(image[:, :, :3], 0.0, 1.0)


def _pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre ``image`` on a white canvas of ``height`` x ``width``."""
    canvas = np.ones((height, width, 3))
    top, left = (height - image.shape[0]) // 2, (width - image.shape[1]) // 2
    canvas[top : top + image.shape[0], left : left + image.shape[1]] = image
    return canvas
