"""The phantom's muscles and organs, placed on a real body and sized to exact targets.

Positions come from the participant's own landmarks (:mod:`myoflow.synth.body_frame`:
the real hip joint centres of the atlas body, scaled to the participant, and the
posterior skin line of the real body outline); the bones are built in
:mod:`myoflow.synth.skeleton`. Distances along the body scale with height
(``k = height / 170 cm``). :data:`LABELS` gives the ground-truth label values.

Painting order is priority: later shapes win where shapes overlap. Target muscles come
last, so neighbours never eat into them and their volumes are set by calibration alone:
psoas major (exact from its CSA profile) > iliacus > gluteus minimus > medius > maximus.
Neighbouring muscles with the same tissue signal (erector spinae, quadratus lumborum,
piriformis, the hip and thigh muscles of the body layer) touch the targets, so only
anatomy, not intensity, separates them.

With a randomised shape (:class:`~myoflow.synth.shape_variation.ShapeVariation`) the
bones are painted over the glutei and iliacus (which are calibrated under them), so
those never replace bone; the psoas, exact from its profile, still comes last. The
standard anatomy keeps its order and output: where the posterior skin lies close to the
hips (atlas body 20: 84-97 mm behind the hip centre in seed 18) its gluteus maximus,
placed from the skin inwards, covers most of the femoral head and neck and its medius
most of the ilium, leaving hardly any femoral-head marrow and the minimus enclosed in
the medius.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from myoflow.core.labels import SIDES
from myoflow.synth import psoas_profile
from myoflow.synth.body_frame import (
    DIAPHRAGM_ABOVE_HIP_MM,
    BodyFrame,
    axis_angle,
    side_x,
    spine_y,
)
from myoflow.synth.geometry import Grid
from myoflow.synth.shape_variation import ShapeVariation
from myoflow.synth.shapes import EllipseStack, paint, stack, subsample_centres
from myoflow.synth.skeleton import iliac_wing, pelvis_and_femur_shapes, spine_shapes

TARGET_MUSCLES = ("gluteus_maximus", "gluteus_medius", "gluteus_minimus", "iliacus", "psoas_major")
"""Target muscles in painting order (last wins)."""


PSOAS_ASPECT = 1.25  # lateral over antero-posterior semi-axis of the psoas cross-section


def psoas(
    frame: BodyFrame,
    side: str,
    csa_max_cm2: float,
    height_cm: float,
    t_max: float = psoas_profile.T_MAX,
    aspect: float = PSOAS_ASPECT,
) -> EllipseStack:
    """Psoas major from the lesser trochanter to T12, its CSA following the shared profile
    (peak at ``t_max`` of its length, lateral over antero-posterior axis ``aspect``)."""
    k, sign = frame.k, (1.0 if side == "left" else -1.0)
    hip = frame.hip(side)
    u_h, y_h, z_h = abs(hip[0] - frame.x_mid), hip[1], hip[2]
    length = float(psoas_profile.psoas_length_mm(height_cm))
    z_ins = z_h - psoas_profile.INSERTION_BELOW_HIP_MM_AT_170CM * k
    t = np.linspace(0.0, 1.0, 161)
    z = z_ins + t * length
    area = csa_max_cm2 * 100.0 * psoas_profile.relative_csa(t, t_max)
    a = np.sqrt(area * aspect / np.pi)
    b = np.sqrt(area / (aspect * np.pi))
    # Path: hugging the vertebral bodies above the pelvis, over the brim, anterior to
    # the femoral head, and back to the lesser trochanter.
    h_ctrl = np.array([z_ins - z_h, -30 * k, 0.0, 60 * k, 132 * k, 220 * k, z_ins - z_h + length])
    h = z - z_h
    a_ctrl = np.interp(h_ctrl, h, a)
    vb_half = np.interp(h_ctrl, [115 * k, 300 * k], [24 * k, 20 * k])
    y_vb = spine_y(frame, h_ctrl)
    u_ctrl = np.array(
        [u_h + 22 * k, u_h - 8 * k, u_h - 15 * k, 62 * k, *(vb_half[4:] + a_ctrl[4:] + 1.0)]
    )
    y_ctrl = np.array(
        [
            y_h + 10 * k,
            y_h - 14 * k,
            y_h - 32 * k,
            y_h - 15 * k,
            y_vb[4] - 5 * k,
            y_vb[5] - 3 * k,
            y_vb[6],
        ]
    )
    from scipy.interpolate import PchipInterpolator

    u = PchipInterpolator(h_ctrl, u_ctrl)(h)
    y = PchipInterpolator(h_ctrl, y_ctrl)(h)
    return EllipseStack(
        f"psoas_major_{side}",
        f"psoas_major_{side}",
        z,
        side_x(frame, sign, u),
        y,
        a,
        b,
        np.zeros_like(z),
    )


def iliacus(frame: BodyFrame, side: str, psoas_shape: EllipseStack) -> EllipseStack:
    """Iliacus lining the iliac fossa, converging onto the psoas towards the hip."""
    k, sign = frame.k, (1.0 if side == "left" else -1.0)
    z_h = frame.hip(side)[2]
    wing = iliac_wing(frame, side)
    h = np.array([150, 120, 90, 60, 35, 10, -15, -35]) * k
    a = np.array([30, 42, 44, 38, 26, 16, 10, 5]) * k
    b = np.array([6, 10, 12, 13, 13, 11, 8, 4]) * k
    n_u, n_y = wing.inner_normal()
    on_wing = h >= 35 * k
    hw = h[on_wing]
    offset = np.interp(hw, wing.h, wing.half_thickness) + b[on_wing] + 1.0
    u = np.empty_like(h)
    y = np.empty_like(h)
    theta = np.zeros_like(h)
    u[on_wing] = np.interp(hw, wing.h, wing.centre_u) + np.interp(hw, wing.h, n_u) * offset
    y[on_wing] = np.interp(hw, wing.h, wing.centre_y) + np.interp(hw, wing.h, n_y) * offset
    theta[on_wing] = axis_angle(
        sign, np.interp(hw, wing.h, wing.dir_u), np.interp(hw, wing.h, wing.dir_y)
    )
    cx_ps, cy_ps, a_ps, _, _ = psoas_shape.at(z_h + h[~on_wing])
    u[~on_wing] = np.abs(cx_ps - frame.x_mid) + a_ps * 0.6 + 10 * k
    y[~on_wing] = cy_ps - 3 * k
    theta[~on_wing] = axis_angle(sign, 1.0, 0.0)
    return stack(
        f"iliacus_{side}",
        f"iliacus_{side}",
        z_h + h,
        side_x(frame, sign, u),
        y,
        a,
        b,
        np.unwrap(theta),
        dense=60,
    )


def gluteals(frame: BodyFrame, side: str) -> list[EllipseStack]:
    """Gluteus maximus, medius and minimus of one side (painting order)."""
    k, sign = frame.k, (1.0 if side == "left" else -1.0)
    hip = frame.hip(side)
    u_h, y_h, z_h = abs(hip[0] - frame.x_mid), hip[1], hip[2]
    wing = iliac_wing(frame, side)
    n_u, n_y = wing.inner_normal()

    def on_outer_surface(h, b, extra):
        """Centres on the wing's outer (postero-lateral) surface, ``extra`` mm further out."""
        t = np.interp(h, wing.h, wing.half_thickness) + b + extra
        return (
            np.interp(h, wing.h, wing.centre_u) - np.interp(h, wing.h, n_u) * t,
            np.interp(h, wing.h, wing.centre_y) - np.interp(h, wing.h, n_y) * t,
            axis_angle(sign, np.interp(h, wing.h, wing.dir_u), np.interp(h, wing.h, wing.dir_y)),
        )

    def muscle(name, h, a, b, extra, low_u, low_y):
        h = np.asarray(h, dtype=float) * k
        a, b, extra = np.asarray(a) * k, np.asarray(b) * k, np.asarray(extra) * k
        upper = h >= 35 * k
        u, y, theta = (np.empty_like(h) for _ in range(3))
        u[upper], y[upper], theta[upper] = on_outer_surface(h[upper], b[upper], extra[upper])
        u[~upper] = u_h + np.asarray(low_u) * k
        y[~upper] = y_h + np.asarray(low_y) * k
        theta[~upper] = axis_angle(sign, 0.3, 1.0)
        return stack(
            f"{name}_{side}",
            f"{name}_{side}",
            z_h + h,
            side_x(frame, sign, u),
            y,
            a,
            b,
            np.unwrap(theta),
            dense=50,
        )

    minimus = muscle(
        "gluteus_minimus",
        [115, 90, 60, 35, 10, -15],
        [22, 32, 36, 30, 20, 10],
        [6, 8, 9, 9, 8, 5],
        [1, 1, 1, 1, 0, 0],
        [42, 45],
        [2, 6],
    )
    b_min = (
        np.interp(
            np.array([165, 140, 110, 70, 35]) * k, minimus.z_mm - z_h, minimus.b_mm, left=0, right=0
        )
        / k
    )
    medius = muscle(
        "gluteus_medius",
        [165, 140, 110, 70, 35, 5, -25],
        [20, 42, 52, 50, 40, 24, 10],
        [6, 12, 16, 17, 15, 12, 6],
        [*(2 * b_min + 2), 0, 0],
        [52, 56],
        [14, 12],
    )
    # Gluteus maximus: posterior, just under the subcutaneous fat of the buttock.
    h = np.array([125, 95, 60, 25, -10, -45, -80, -115]) * k
    u = np.array(
        [40 * k, 55 * k, 72 * k, 88 * k, u_h + 15 * k, u_h + 20 * k, u_h + 25 * k, u_h + 28 * k]
    )
    a = np.array([20, 35, 50, 58, 60, 52, 38, 15]) * k
    b = np.array([10, 18, 24, 28, 28, 24, 18, 8]) * k
    skin = frame.skin_y(side_x(frame, sign, u), z_h + h)
    sat = 1.15 * frame.sat_mm
    y = np.where(np.isfinite(skin), skin - sat - 0.9 * b, y_h + 70 * k)
    theta = axis_angle(sign, np.cos(np.radians(25)), -np.sin(np.radians(25))) * np.ones_like(h)
    maximus = stack(
        f"gluteus_maximus_{side}",
        f"gluteus_maximus_{side}",
        z_h + h,
        side_x(frame, sign, u),
        y,
        a,
        b,
        theta,
        dense=50,
    )
    return [maximus, medius, minimus]


def neighbour_muscles(frame: BodyFrame, side: str, psoas_shape: EllipseStack) -> list[EllipseStack]:
    """Same-signal muscles touching the targets: erector spinae, quadratus lumborum, piriformis."""
    k, sign = frame.k, (1.0 if side == "left" else -1.0)
    hip = frame.hip(side)
    u_h, y_h, zc = abs(hip[0] - frame.x_mid), hip[1], frame.z_hip
    top = frame.grid.axis_mm(2)[-1] + 10 - zc
    h_es = np.linspace(30 * k, top, 30)
    y_es = spine_y(frame, h_es) + 40 * k
    a_es = np.interp(h_es, [30 * k, 200 * k, 450 * k], [18 * k, 24 * k, 16 * k])
    b_es = np.interp(h_es, [30 * k, 200 * k, 450 * k], [14 * k, 20 * k, 13 * k])
    erector = stack(
        f"erector_spinae_{side}", "muscle", zc + h_es, side_x(frame, sign, 30 * k), y_es, a_es, b_es
    )
    h_ql = np.linspace(150 * k, 300 * k, 12)
    cx_ps, cy_ps, a_ps, b_ps, _ = psoas_shape.at(zc + h_ql)
    u_ql = np.abs(cx_ps - frame.x_mid) + 0.7 * a_ps + 14 * k
    ql = stack(
        f"quadratus_lumborum_{side}",
        "muscle",
        zc + h_ql,
        side_x(frame, sign, u_ql),
        cy_ps + b_ps + 8 * k,
        20 * k,
        10 * k,
        axis_angle(sign, 1.0, 0.35),
    )
    piriformis = stack(
        f"piriformis_{side}",
        "muscle",
        zc + np.array([70, 40, 15]) * k,
        side_x(frame, sign, np.array([42 * k, u_h - 5 * k, u_h + 38 * k])),
        y_h + np.array([50, 38, 22]) * k,
        np.array([22, 26, 18]) * k,
        10 * k,
        axis_angle(sign, 1.0, -0.4),
    )
    return [erector, ql, piriformis]


def visceral_shapes(frame: BodyFrame) -> list[EllipseStack]:
    """Pelvic cavity, liver and heart: non-muscle tissue filling the trunk."""
    k, zc = frame.k, frame.z_hip
    u_h = abs(frame.hip_left[0] - frame.x_mid)
    y_h = float((frame.hip_left[1] + frame.hip_right[1]) / 2)
    pelvic = stack(
        "pelvic_cavity",
        "visceral",
        zc + np.array([-30, 40, 110]) * k,
        frame.x_mid,
        y_h + np.array([0, 8, 5]) * k,
        np.array([0.35, 0.5, 0.55]) * u_h,
        np.array([35, 45, 50]) * k,
    )
    diaphragm = DIAPHRAGM_ABOVE_HIP_MM * k
    y_vb = float(spine_y(frame, np.array([diaphragm]))[0])
    liver = stack(
        "liver",
        "liver",
        zc + diaphragm + np.array([-100, -20, 40]) * k,
        frame.x_mid - 55 * k,
        y_vb - np.array([70, 85, 80]) * k,
        np.array([50, 80, 60]) * k,
        np.array([40, 60, 45]) * k,
        dense=10,
    )
    heart = stack(
        "heart",
        "heart",
        zc + diaphragm + np.array([10, 70, 140]) * k,
        frame.x_mid + 20 * k,
        y_vb - 95 * k,
        np.array([45, 60, 40]) * k,
        np.array([40, 50, 35]) * k,
        dense=10,
    )
    return [pelvic, liver, heart]


def calibrate(
    shape: EllipseStack,
    above: list[EllipseStack],
    target_ml: float,
    grid: Grid,
    factor: int,
    interior: np.ndarray | None = None,
    iterations: int = 6,
    tolerance: float = 0.002,
) -> EllipseStack:
    """Scale ``shape``'s cross-sections until its rendered volume, under the shapes painted
    after it (``above``), matches ``target_ml`` on the same supersampled lattice as the
    final rendering.

    The visible share of the shape grows with its scale (a bigger iliacus escapes the
    psoas), so a plain ``sqrt(target / volume)`` update overshoots and oscillates. A secant
    step on log(volume) against log(scale) converges in a few renders.
    """
    log_target = np.log(target_ml)
    scale = float(np.sqrt(target_ml / shape.volume_ml()))
    history: list[tuple[float, float]] = []
    best = (np.inf, scale)
    for _ in range(iterations):
        volume = rendered_volume_ml(shape.scaled(scale), above, grid, factor, interior)
        if volume <= 0:
            scale *= 1.5
            continue
        miss = abs(volume / target_ml - 1.0)
        best = min(best, (miss, scale))
        if miss < tolerance:
            break
        history.append((np.log(scale), np.log(volume)))
        if len(history) >= 2 and history[-1][0] != history[-2][0]:
            (s0, v0), (s1, v1) = history[-2:]
            slope = np.clip((v1 - v0) / (s1 - s0), 1.0, 4.0)  # area ~ scale**2, more if unhidden
        else:
            slope = 2.0
        scale = float(np.exp(history[-1][0] + (log_target - history[-1][1]) / slope))
    return shape.scaled(best[1])


def rendered_volume_ml(
    shape: EllipseStack,
    above: list[EllipseStack],
    grid: Grid,
    factor: int,
    interior: np.ndarray | None = None,
) -> float:
    """Volume (ml) of ``shape`` left visible when ``above`` is painted over it, counting
    only samples in ``interior`` voxels (as :func:`render_chunks` clips them)."""
    xs = subsample_centres(grid, 0, factor)
    ys = subsample_centres(grid, 1, factor)
    zs = subsample_centres(grid, 2, factor)
    reach = float(np.max(np.maximum(shape.a_mm, shape.b_mm)))
    keep_x = (xs >= shape.cx_mm.min() - reach) & (xs <= shape.cx_mm.max() + reach)
    keep_y = (ys >= shape.cy_mm.min() - reach) & (ys <= shape.cy_mm.max() + reach)
    keep_z = (zs >= shape.z_mm[0]) & (zs <= shape.z_mm[-1])
    xs, ys, zs = xs[keep_x], ys[keep_y], zs[keep_z]
    canvas = np.zeros((xs.size, ys.size, zs.size), dtype=np.uint8)
    paint(canvas, 1, shape, xs, ys, zs)
    for other in above:
        paint(canvas, 2, other, xs, ys, zs)
    visible = canvas == 1
    if interior is not None:
        voxel = [np.flatnonzero(keep) // factor for keep in (keep_x, keep_y, keep_z)]
        visible &= interior[np.ix_(*voxel)]
    sample_ml = grid.voxel_volume_ml / factor**3
    return float(np.count_nonzero(visible)) * sample_ml


def varied_psoas(
    frame: BodyFrame, side: str, volume_ml: float, height_cm: float, variation: ShapeVariation
) -> EllipseStack:
    """A psoas major of ``volume_ml`` with ``variation``'s profile, aspect and deformation."""
    unit = psoas(frame, side, 1.0, height_cm, variation.psoas_t_max, variation.psoas_aspect)
    csa = volume_ml / unit.volume_ml()  # the path hugs the spine by the muscle's own size
    shape = psoas(frame, side, csa, height_cm, variation.psoas_t_max, variation.psoas_aspect)
    shape = variation.deform(shape, "psoas_major", side, frame.k)
    return shape.scaled(float(np.sqrt(volume_ml / shape.volume_ml())))


def target_shapes(
    frame: BodyFrame,
    targets: dict,
    height_cm: float,
    grid: Grid,
    factor: int,
    variation: ShapeVariation | None = None,
    bones: Sequence[EllipseStack] = (),
) -> list[EllipseStack]:
    """All target muscles of both sides, sized to ``targets``, in painting order.

    With a ``variation`` the psoas share, the psoas profile and every muscle's shape are
    randomised (:mod:`myoflow.synth.shape_variation`); the iliopsoas and gluteus volumes
    stay the targets'. ``bones`` are shapes painted over the targets bar the psoas
    (randomised shapes only; the standard anatomy paints none over them): the iliacus and
    glutei are calibrated to their volumes under them.
    """
    raw: dict[tuple[str, str], EllipseStack] = {}
    volumes: dict[tuple[str, str], float] = {}
    for side in SIDES:
        side_volumes = {m: targets.get(f"vol_{m}_{side}_ml") for m in TARGET_MUSCLES}
        if variation is None:
            ps = psoas(frame, side, targets[f"psoas_max_csa_{side}_cm2"], height_cm)
        else:
            planned = float(
                psoas_profile.psoas_volume_ml(targets[f"psoas_max_csa_{side}_cm2"], height_cm)
            )
            side_volumes["psoas_major"], side_volumes["iliacus"] = variation.split_iliopsoas(
                planned, targets[f"vol_iliacus_{side}_ml"]
            )
            ps = varied_psoas(frame, side, side_volumes["psoas_major"], height_cm, variation)
        shapes = {"psoas_major": ps, "iliacus": iliacus(frame, side, ps)}
        shapes.update(
            zip(
                ("gluteus_maximus", "gluteus_medius", "gluteus_minimus"),
                gluteals(frame, side),
                strict=True,
            )
        )
        if variation is not None:  # the psoas is deformed already (varied_psoas)
            shapes.update(
                {m: variation.deform(shapes[m], m, side, frame.k) for m in TARGET_MUSCLES[:-1]}
            )
        raw |= {(m, side): shape for m, shape in shapes.items()}
        volumes |= {(m, side): side_volumes[m] for m in TARGET_MUSCLES}
    if variation is None:
        # The standard anatomy sizes each side on its own, as it always has.
        groups = [[(m, side) for m in TARGET_MUSCLES[:-1]] for side in SIDES]
    else:
        # Randomised shapes can grow across the midline: size them in painting order.
        groups = [[(m, side) for m in TARGET_MUSCLES[:-1] for side in SIDES]]
    done = {key: raw[key] for key in raw if key[0] == "psoas_major"}
    for group in groups:
        sides = {side for _, side in group}
        on_top = [*bones, *(done[("psoas_major", side)] for side in SIDES if side in sides)]
        # Calibrate from the highest priority down: each muscle only loses volume to the
        # shapes painted after it, which are final by then.
        for n in reversed(range(len(group))):
            above = [done[key] for key in group[n + 1 :]] + on_top
            done[group[n]] = calibrate(
                raw[group[n]], above, volumes[group[n]], grid, factor, frame.interior
            )
    return [done[(m, side)] for m in TARGET_MUSCLES for side in SIDES]


def build_shapes(
    frame: BodyFrame,
    targets: dict,
    height_cm: float,
    grid: Grid,
    factor: int,
    variation: ShapeVariation | None = None,
) -> list[EllipseStack]:
    """Every shape of the phantom in painting order: targets last, psoas on top; with a
    ``variation`` the bones come after the glutei and iliacus, under the psoas."""
    bones = spine_shapes(frame)
    for side in SIDES:
        bones += pelvis_and_femur_shapes(frame, side)
    on_top = [] if variation is None else bones
    targets_list = target_shapes(frame, targets, height_cm, grid, factor, variation, on_top)
    psoas_by_side = {
        s.name.rsplit("_", 1)[1]: s for s in targets_list if s.name.startswith("psoas")
    }
    shapes = visceral_shapes(frame)
    for side in SIDES:
        shapes += neighbour_muscles(frame, side, psoas_by_side[side])
    if variation is None:
        return shapes + bones + targets_list
    psoas_last = [s for s in targets_list if s.name.startswith("psoas_major")]
    under = [s for s in targets_list if not s.name.startswith("psoas_major")]
    return shapes + under + bones + psoas_last
