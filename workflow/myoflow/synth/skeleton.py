"""The phantom's bones: spine, pelvis and femora as cortex with fatty marrow inside.

Shapes are placed in the participant's :class:`~myoflow.synth.body_frame.BodyFrame`.
Every bone is a cortex :data:`CORTEX_MM` thick around marrow (the femoral heads are the
balls of marrow that :mod:`myoflow.landmarks.hip_detection` finds). :func:`iliac_wing` also guides
the iliacus and glutei of :mod:`myoflow.synth.anatomy`, which lie against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from myoflow.synth.body_frame import BodyFrame, axis_angle, side_x, spine_y
from myoflow.synth.shapes import EllipseStack, stack

CORTEX_MM = 3.0


@dataclass(frozen=True)
class Wing:
    """The iliac wing of one side at control heights: centre, direction and thickness."""

    h: np.ndarray
    centre_u: np.ndarray
    centre_y: np.ndarray
    half_length: np.ndarray
    half_thickness: np.ndarray
    dir_u: np.ndarray  # unit vector from the sacro-iliac end to the anterior spine
    dir_y: np.ndarray

    def inner_normal(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit normal into the pelvis (medial and anterior), in (u, y)."""
        return self.dir_y, -self.dir_u


def iliac_wing(frame: BodyFrame, side: str) -> Wing:
    """Axial cross-sections of the ilium from the acetabular roof to the iliac crest."""
    k = frame.k
    hip = frame.hip(side)
    u_h = abs(hip[0] - frame.x_mid)
    y_h = hip[1]
    h = np.array([30, 60, 110, 160, 172]) * k
    post_u = np.array([u_h - 20 * k, 55 * k, 45 * k, 55 * k, u_h])
    post_y = y_h + np.array([25, 45, 50, 45, 30]) * k
    ant_u = np.array([u_h + 22 * k, u_h + 15 * k, u_h + 38 * k, u_h + 48 * k, u_h + 25 * k])
    ant_y = y_h + np.array([-20, -40, -22, 0, 10]) * k
    du, dy = ant_u - post_u, ant_y - post_y
    length = np.hypot(du, dy)
    return Wing(
        h=h,
        centre_u=(post_u + ant_u) / 2,
        centre_y=(post_y + ant_y) / 2,
        half_length=length / 2,
        half_thickness=np.array([16, 9, 7, 6, 4]) * k,
        dir_u=du / length,
        dir_y=dy / length,
    )


def _bone(outer: EllipseStack) -> list[EllipseStack]:
    """Cortex and the fatty marrow inside it (marrow painted over the cortex)."""
    inner = EllipseStack(
        outer.name + "_marrow",
        "marrow",
        outer.z_mm,
        outer.cx_mm,
        outer.cy_mm,
        np.maximum(outer.a_mm - CORTEX_MM, 0.0),
        np.maximum(outer.b_mm - CORTEX_MM, 0.0),
        outer.theta,
    )
    return [outer, inner]


def spine_shapes(frame: BodyFrame) -> list[EllipseStack]:
    """Lumbar/thoracic/cervical column with discs, posterior elements and the sacrum."""
    k, zc = frame.k, frame.z_hip
    top = frame.grid.axis_mm(2)[-1] + 10 - zc
    h = np.linspace(115 * k, top, 40)
    y = spine_y(frame, h)
    a = np.interp(h, [115 * k, 300 * k, 500 * k, 650 * k], [24 * k, 20 * k, 16 * k, 12 * k])
    b = np.interp(h, [115 * k, 300 * k, 500 * k, 650 * k], [18 * k, 16 * k, 14 * k, 9 * k])
    column = stack("vertebrae", "bone", zc + h, frame.x_mid, y, a, b)
    shapes = _bone(column)
    # Intervertebral discs every 37 mm (at 170 cm), starting at L5-S1.
    for n, h_disc in enumerate(np.arange(115 * k, top, 37 * k)):
        y_d = float(spine_y(frame, np.array([h_disc]))[0])
        a_d, b_d = np.interp(h_disc, h, a), np.interp(h_disc, h, b)
        shapes.append(
            stack(
                f"disc_{n}",
                "disc",
                zc + h_disc + np.array([-4.5, 4.5]) * k,
                frame.x_mid,
                y_d,
                a_d,
                b_d,
            )
        )
    shapes.append(
        stack("posterior_elements", "bone", zc + h, frame.x_mid, y + b + 18 * k, 10 * k, 15 * k)
    )
    h_s = np.array([-25, 20, 70, 115]) * k
    y_s = spine_y(frame, h_s)
    sacrum = stack(
        "sacrum",
        "bone",
        zc + h_s,
        frame.x_mid,
        y_s,
        np.array([8, 25, 42, 50]) * k,
        np.array([7, 12, 18, 19]) * k,
        dense=20,
    )
    return [*shapes, *_bone(sacrum)]


def pelvis_and_femur_shapes(frame: BodyFrame, side: str) -> list[EllipseStack]:
    """Ilium, ischium, pubis, femoral head, neck, trochanters and shaft of one side."""
    k, sign = frame.k, (1.0 if side == "left" else -1.0)
    hip = frame.hip(side)
    u_h, y_h, z_h = abs(hip[0] - frame.x_mid), hip[1], hip[2]
    wing = iliac_wing(frame, side)
    theta = axis_angle(sign, wing.dir_u, wing.dir_y)
    shapes = _bone(
        stack(
            f"ilium_{side}",
            "bone",
            z_h + wing.h,
            side_x(frame, sign, wing.centre_u),
            wing.centre_y,
            wing.half_length,
            wing.half_thickness,
            theta,
            dense=30,
        ),
    )
    radius = 24 * k
    h_head = np.linspace(-radius, radius, 25)
    r_head = np.sqrt(np.maximum(radius**2 - h_head**2, 0.0))
    shapes += _bone(
        stack(f"femoral_head_{side}", "bone", z_h + h_head, hip[0], y_h, r_head, r_head),
    )
    neck_h = np.array([5, -10, -30]) * k
    shapes += _bone(
        stack(
            f"femoral_neck_{side}",
            "bone",
            z_h + neck_h,
            side_x(frame, sign, u_h + np.array([12, 28, 42]) * k),
            y_h + 5 * k,
            17 * k,
            14 * k,
            axis_angle(sign, 1.0, 0.15),
        ),
    )
    bottom = frame.grid.axis_mm(2)[0] - 10 - z_h
    shaft_h = np.array([-30 * k, -120 * k, -250 * k, bottom])
    shaft_u = u_h + np.array([44, 38, 25, 8]) * k
    shapes += _bone(
        stack(
            f"femur_{side}",
            "bone",
            z_h + shaft_h,
            side_x(frame, sign, shaft_u),
            y_h + np.array([5, 3, 0, -5]) * k,
            14 * k,
            14 * k,
            dense=20,
        ),
    )
    shapes += _bone(
        stack(
            f"greater_trochanter_{side}",
            "bone",
            z_h + np.array([-38, -15, 8]) * k,
            side_x(frame, sign, u_h + 55 * k),
            y_h + 8 * k,
            np.array([14, 16, 9]) * k,
            np.array([16, 18, 10]) * k,
        ),
    )
    shapes += _bone(
        stack(
            f"lesser_trochanter_{side}",
            "bone",
            z_h + np.array([-70, -58, -46]) * k,
            side_x(frame, sign, u_h + 30 * k),
            y_h + 14 * k,
            np.array([6, 10, 6]) * k,
            np.array([6, 10, 6]) * k,
        ),
    )
    shapes += _bone(
        stack(
            f"ischium_{side}",
            "bone",
            z_h + np.array([-60, -30, -5]) * k,
            side_x(frame, sign, u_h - np.array([15, 8, 5]) * k),
            y_h + np.array([35, 32, 28]) * k,
            14 * k,
            16 * k,
        ),
    )
    pubis_u = (u_h - 25 * k + 10 * k) / 2
    shapes += _bone(
        stack(
            f"pubis_{side}",
            "bone",
            z_h + np.array([-28, -15, -4]) * k,
            side_x(frame, sign, pubis_u),
            y_h - 28 * k,
            (u_h - 35 * k) / 2 + 6 * k,
            9 * k,
            axis_angle(sign, 1.0, 0.2),
        ),
    )
    return shapes
