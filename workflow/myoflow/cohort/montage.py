"""The cohort's QC montage at full resolution, and a thumbnail whose text stays legible.

The montage stacks participants' overlays (``qc/overlay.png``, 1,500 pixels wide) one
above the other at their own resolution, each under a title bar, as RGB: no resampling
and no 256-colour palette, so the overlay's text and legend colours stay as drawn. The
page shows a thumbnail scaled so that the smallest text (the overlays' panel titles and
legend, :data:`myoflow.measure.overlay.SMALLEST_FONT_PT`) is still
:data:`MIN_TEXT_PX` pixels high, and links the full montage.

:func:`compose` is pure (images in, image out); :func:`write_montage` reads and writes.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from myoflow import __version__
from myoflow.core.io import write_bytes
from myoflow.measure.overlay import FIGURE_WIDTH_IN, SMALLEST_FONT_PT

TITLE_PX = 22
"""Height of the title text above each overlay (pixels)."""
MIN_TEXT_PX = 10.5
"""Smallest text height the thumbnail keeps (pixels)."""


def overlay_text_px(width_px: int) -> float:
    """Pixel height of an overlay's smallest text, from the overlay's width in pixels."""
    dpi = width_px / FIGURE_WIDTH_IN
    return SMALLEST_FONT_PT / 72.0 * dpi


def title_bar(text: str, width_px: int, height_px: int = 2 * TITLE_PX) -> np.ndarray:
    """``text`` drawn left-aligned, :data:`TITLE_PX` high, on a white bar (H, W, 3) uint8."""
    dpi = 100
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    fig.text(0.005, 0.5, text, fontsize=TITLE_PX * 72 / dpi, va="center", ha="left")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def compose(images: Sequence[np.ndarray], titles: Sequence[str]) -> np.ndarray:
    """Overlays (H, W, 3) uint8 stacked under their titles, centred on a white canvas."""
    if len(images) != len(titles) or not images:
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    width = max(im.shape[1] for im in images)
    parts = []
    for image, title in zip(images, titles, strict=True):
        parts.append(title_bar(title, width))
        canvas = np.full((image.shape[0], width, 3), 255, dtype=np.uint8)
        left = (width - image.shape[1]) // 2
        canvas[:, left : left + image.shape[1]] = image[:, :, :3]
        parts.append(canvas)
    return np.concatenate(parts, axis=0)


def smallest_text_px(images: Sequence[np.ndarray]) -> float:
    """The montage's smallest text height in pixels (overlay text or a title)."""
    return min([TITLE_PX, *(overlay_text_px(im.shape[1]) for im in images)])


def thumbnail_scale(text_px: float, min_text_px: float = MIN_TEXT_PX) -> float:
    """The largest reduction keeping text of ``text_px`` at ``min_text_px`` (at most 1)."""
    return float(min(1.0, min_text_px / text_px))


def _png(image: np.ndarray) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"myoflow {__version__}")
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", optimize=True, pnginfo=info)
    return out.getvalue()


def write_montage(
    overlays: Sequence[str | os.PathLike[str]],
    titles: Sequence[str],
    full: str | os.PathLike[str],
    thumbnail: str | os.PathLike[str],
) -> float:
    """Write the full montage and its thumbnail (RGB PNG); return the thumbnail's text px."""
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB")) for p in overlays]
    image = compose(images, titles)
    write_bytes(full, _png(image))
    text_px = smallest_text_px(images)
    scale = thumbnail_scale(text_px)
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    write_bytes(thumbnail, _png(small))
    return text_px * size[0] / image.shape[1]


def thumbnail_name(full: str | os.PathLike[str]) -> Path:
    """``qc_montage.png`` -> ``qc_montage_thumbnail.png`` beside it."""
    path = Path(full)
    return path.with_name(f"{path.stem}_thumbnail{path.suffix}")
