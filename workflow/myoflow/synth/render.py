"""Render one participant: noiseless water and fat on the stitched grid, labels and truth.

Bones and muscles are rasterised on a supersampled canvas (``factor``**3 samples per
voxel), so tissue fractions at every voxel edge are exact partial volumes and the truth
(volumes, cross-sectional areas) is counted at the canvas's higher resolution. The body
layer fills what no shape covers. The label map holds, per label and slice, the truth's
volume rounded to whole voxels (:mod:`myoflow.synth.labelmap`), so metrics of the true
mask reproduce the truth's volumes and cross-sectional areas.

The height of the psoas' largest cross-section is the built shape's: where its
continuous CSA profile peaks (:func:`psoas_peak_z_mm`), not the largest slice. The
profile is so flat there that sub-voxel differences move the largest slice: that of the
true mask sits up to 2 slices from the peak (20 full-size participants, measured), so a
measurement is judged against where the peak is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from myoflow.core.labels import LABELS
from myoflow.synth import atlas, labelmap
from myoflow.synth.anatomy import build_shapes
from myoflow.synth.appearance import Appearance
from myoflow.synth.body import body_layer, inside_distance_mm, sat_profile_mm
from myoflow.synth.body_frame import BodyFrame, posterior_skin
from myoflow.synth.dixon_signal import COMPONENTS
from myoflow.synth.geometry import Grid
from myoflow.synth.shapes import EllipseStack, block_mean, render_chunks
from myoflow.synth.tissues import water_fat

SUPERSAMPLE = 2


@dataclass(frozen=True)
class Phantom:
    """One participant's noiseless images, labels and measured truth."""

    water: np.ndarray  # float32 (nx, ny, nz)
    fat: np.ndarray
    labels: np.ndarray  # uint8, values of core.labels.LABELS
    truth: dict[str, float]
    frame: BodyFrame
    slice_ml: np.ndarray  # (label value, slice): exact volume counted on the supersamples
    echoes: dict[str, np.ndarray] | None = None  # randomised appearance: in/opp re and im


def body_frame(
    body: atlas.AtlasBody,
    scaling: atlas.BodyScaling,
    mask: np.ndarray,
    depth_mm: np.ndarray,
    grid: Grid,
    height_cm: float,
    sat_mm: float,
) -> BodyFrame:
    """Participant landmarks (atlas hips and shoulders mapped with a skeletal scale) and
    the interior where bones and muscles may lie: under the subcutaneous fat."""
    hip_left = atlas.scaled_landmark(body.hip_left_lps_mm, scaling)
    hip_right = atlas.scaled_landmark(body.hip_right_lps_mm, scaling)
    shoulder_z = (
        scaling.pivot_lps_mm[2] + (body.shoulder_z_mm - scaling.pivot_lps_mm[2]) * scaling.scale_z
    )
    frame = BodyFrame(
        k=height_cm / 170.0,
        hip_left=hip_left,
        hip_right=hip_right,
        shoulder_z_mm=float(shoulder_z),
        sat_mm=sat_mm,
        posterior_skin_y=posterior_skin(mask, grid),
        grid=grid,
        interior=mask,
    )
    sat = sat_profile_mm(frame, grid.axis_mm(2) - frame.z_hip)
    return replace(frame, interior=depth_mm >= sat[None, None, :])


def render_participant(
    participant: Mapping[str, float],
    grid: Grid,
    rng: np.random.Generator,
    appearance: Appearance | None = None,
) -> Phantom:
    """Render ``participant`` (phenotypes + targets, one row of the cohort) on ``grid``.

    With an ``appearance`` (:mod:`myoflow.synth.appearance`) the target muscles take its
    shape variation and every tissue its drawn signal: the phantom's ``water`` and
    ``fat`` are then the Dixon maps and ``echoes`` holds the complex in-phase and
    opposed-phase echoes (:data:`myoflow.synth.dixon_signal.COMPONENTS`).
    """
    body = atlas.load_body(int(participant["atlas_body"]))
    height = float(participant["height_cm"])
    scaling = atlas.body_scaling(body, height, float(participant["weight_kg"]))
    mask = atlas.resample_body(body, scaling, grid)
    depth = inside_distance_mm(mask, grid)
    sat = float(participant["sat_thickness_mm"])
    frame = body_frame(body, scaling, mask, depth, grid, height, sat)
    variation = None if appearance is None else appearance.shape
    shapes = build_shapes(frame, participant, height, grid, SUPERSAMPLE, variation)
    if appearance is None:
        channels = list(body_layer(mask, depth, grid, frame, participant, rng))
        signal = np.array(
            [(0.0, 0.0)] + [water_fat(s.tissue, participant) for s in shapes], dtype=np.float32
        )
    else:

        def components(tissue: str) -> tuple[float, ...]:
            return appearance.components(tissue, participant)

        channels = list(body_layer(mask, depth, grid, frame, participant, rng, components))
        signal = np.array(
            [(0.0,) * len(COMPONENTS)] + [components(shape_tissue(s)) for s in shapes],
            dtype=np.float32,
        )
    label_of_shape = np.zeros(len(shapes) + 1, dtype=np.uint8)
    for n, s in enumerate(shapes, start=1):
        label_of_shape[n] = LABELS.get(s.tissue, 0)
    f = SUPERSAMPLE
    # Randomised shapes can enclose a label in another, which only trading fills; the
    # standard phantom keeps the label maps it has always had.
    trade = appearance is not None
    label_map = labelmap.LabelMapBuilder(grid.shape, max(LABELS.values()) + 1, f, trade)
    for chunk in render_chunks(shapes, grid, f, allowed=frame.interior):
        covered = block_mean((chunk.labels > 0).astype(np.float32), f)
        part = slice(chunk.k0, chunk.k1)
        for c, channel in enumerate(channels):
            channel[:, :, part] = (
                block_mean(signal[chunk.labels, c], f) + (1 - covered) * channel[:, :, part]
            )
        label_map.add(label_of_shape[chunk.labels], chunk.k0)
    labels, sample_counts = label_map.finish()  # samples per label and slice
    truth = measure_truth(sample_counts, grid, f, frame, psoas_peak_z_mm(shapes))
    slice_ml = sample_counts * (grid.voxel_volume_ml / f**3)
    echoes = None if appearance is None else dict(zip(COMPONENTS[2:], channels[2:], strict=True))
    return Phantom(channels[0], channels[1], labels, truth, frame, slice_ml, echoes)


FEMORAL_BONES = ("femoral_head", "femoral_neck", "femur", "greater_trochanter", "lesser_trochanter")


def shape_tissue(shape: EllipseStack) -> str:
    """The tissue whose signal ``shape`` takes: femoral marrow is its own (fattier) tissue."""
    if shape.tissue == "marrow" and shape.name.startswith(FEMORAL_BONES):
        return "marrow_femoral"
    return shape.tissue


def psoas_peak_z_mm(shapes: Sequence[EllipseStack]) -> dict[str, float]:
    """Height (patient z, mm) at which each psoas major's cross-section is largest, per side.

    The shape's semi-axes are interpolated linearly between its nodes and both peak at
    the same node, so the largest node is the continuous maximum (the profile's
    ``T_MAX``, as ``planned_truth`` predicts it).

    Raises:
        ValueError: if ``shapes`` lacks the psoas major of a side.
    """
    peaks = {}
    for shape in shapes:
        if shape.name in ("psoas_major_left", "psoas_major_right"):
            area = shape.a_mm * shape.b_mm
            peaks[shape.name.rsplit("_", 1)[1]] = float(shape.z_mm[int(np.argmax(area))])
    if set(peaks) != {"left", "right"}:
        raise ValueError(f"shapes hold the psoas major of sides {sorted(peaks)}, not both")
    return peaks


def measure_truth(
    sample_counts: np.ndarray,
    grid: Grid,
    factor: int,
    frame: BodyFrame,
    psoas_peak_z: Mapping[str, float],
) -> dict[str, float]:
    """Volumes (ml) and psoas maximum CSA (cm2) from supersample counts; the CSA peak's
    height from ``psoas_peak_z`` (mm, per side, see :func:`psoas_peak_z_mm`)."""
    sample_ml = grid.voxel_volume_ml / factor**3
    sample_area_cm2 = grid.spacing_mm[0] * grid.spacing_mm[1] / factor**2 / 100
    truth: dict[str, float] = {}
    for name, value in LABELS.items():
        truth[f"vol_{name}_ml"] = float(sample_counts[value].sum() * sample_ml)
    for side in ("left", "right"):
        # Each slice holds `factor` sub-planes; its CSA is their mean area.
        csa = sample_counts[LABELS[f"psoas_major_{side}"]] * sample_area_cm2 / factor
        truth[f"psoas_max_csa_{side}_cm2"] = float(csa.max())
        z_peak = float(psoas_peak_z[side])
        truth[f"psoas_max_csa_z_{side}_mm"] = z_peak
        truth[f"psoas_max_csa_z_{side}_above_hip_mm"] = z_peak - float(frame.hip(side)[2])
    for side, hip in (("left", frame.hip_left), ("right", frame.hip_right)):
        for axis, value in zip("xyz", hip, strict=True):
            truth[f"hip_{side}_{axis}_mm"] = float(value)
    return truth
