"""A picture for people: coronal and axial slices of water and fat with the truth outlined."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from myoflow.core.labels import COLOURS, LABELS
from myoflow.synth.geometry import Grid


def show_slice(ax, image_2d: np.ndarray, labels_2d: np.ndarray, aspect: float, vmax: float) -> None:
    """Show ``image_2d`` (rows first axis = screen x) with each label's outline on top.

    Arrays are indexed (screen x, screen y from the top); ``aspect`` is the y/x pixel size.
    """
    ax.imshow(image_2d.T, cmap="gray", vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest")
    for name, value in LABELS.items():
        mask = labels_2d == value
        if mask.any():
            ax.contour(
                mask.T.astype(np.float32),
                levels=[0.5],
                colors=[COLOURS[name.rsplit("_", 1)[0]]],
                linewidths=0.8,
            )
    ax.set_xticks([])
    ax.set_yticks([])


def render_preview(
    path: str | Path,
    water: np.ndarray,
    fat: np.ndarray,
    labels: np.ndarray,
    grid: Grid,
    title: str,
    hip_lps_mm: np.ndarray,
) -> None:
    """Write a PNG: a coronal slice through the hips and axial slices at L4, hips, buttocks.

    Display is radiological: the patient's right on the viewer's left, anterior up in
    axial views, head up in coronal views.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from myoflow.core.io import atomic_path

    sx, sy, sz = grid.spacing_mm
    nx, ny, nz = grid.shape
    j = int(np.clip(round((hip_lps_mm[1] - grid.origin_lps_mm[1]) / sy), 0, ny - 1))
    k_hip = int(np.clip(round((hip_lps_mm[2] - grid.origin_lps_mm[2]) / sz), 0, nz - 1))
    levels = {"L4": k_hip + round(130 / sz), "hips": k_hip, "buttocks": k_hip - round(45 / sz)}
    vmax = float(
        np.percentile(
            np.concatenate([water[::3, ::3, ::3].ravel(), fat[::3, ::3, ::3].ravel()]), 99.5
        )
    )
    fig, axes = plt.subplots(
        2, 4, figsize=(13, 7.2), gridspec_kw={"width_ratios": [1.0, 1.2, 1.2, 1.2]}
    )
    for row, (name, image) in enumerate((("water", water), ("fat", fat))):
        # i runs to the patient's left = viewer's right; k runs up, so flip it for the screen.
        show_slice(axes[row, 0], image[:, j, ::-1], labels[:, j, ::-1], sz / sx, vmax)
        axes[row, 0].set_title(f"{name}, coronal")
        for col, (level, k) in enumerate(levels.items(), start=1):
            k = int(np.clip(k, 0, nz - 1))
            # j runs anterior -> posterior, i.e. top -> bottom on screen.
            show_slice(axes[row, col], image[:, :, k], labels[:, :, k], sy / sx, vmax)
            axes[row, col].set_title(f"{name}, axial ({level})")
    handles = [plt.Line2D([], [], color=c, label=n.replace("_", " ")) for n, c in COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=5, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png", metadata={"Software": None})
    plt.close(fig)
