"""Where a phantom's skeleton sits on its real atlas body: the frame shapes are placed in.

:class:`BodyFrame` holds the participant's own landmarks: the real hip joint centres of
the atlas body (scaled to the participant) and the posterior skin line of the real body
outline (:func:`posterior_skin`), which gives the spine its lordosis (:func:`spine_y`)
and keeps the gluteus maximus under the skin. Distances along the body scale with height
(``k = height / 170 cm``). Shapes are laid out in lateral offsets ``u`` from the midline
on one side (:func:`side_x`) and angles of axes given as (lateral, posterior) steps
(:func:`axis_angle`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from myoflow.synth.geometry import Grid

DIAPHRAGM_ABOVE_HIP_MM = 360.0  # at 170 cm


@dataclass(frozen=True)
class BodyFrame:
    """Where the participant's skeleton sits: hips, midline and skin measurements."""

    k: float  # skeletal scale, height / 170 cm
    hip_left: np.ndarray  # LPS mm
    hip_right: np.ndarray
    shoulder_z_mm: float
    sat_mm: float
    posterior_skin_y: np.ndarray  # (nx, nz) LPS y of the posterior body edge, NaN where none
    grid: Grid
    interior: np.ndarray  # bool grid: inside the body, under the subcutaneous fat

    @property
    def x_mid(self) -> float:
        return float((self.hip_left[0] + self.hip_right[0]) / 2)

    @property
    def z_hip(self) -> float:
        return float((self.hip_left[2] + self.hip_right[2]) / 2)

    def hip(self, side: str) -> np.ndarray:
        return self.hip_left if side == "left" else self.hip_right

    def skin_y(self, x_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
        """Posterior skin y (mm) at columns x and heights z, smoothed along z."""
        g = self.grid
        i = np.clip(
            np.rint((np.asarray(x_mm) - g.origin_lps_mm[0]) / g.spacing_mm[0]).astype(int),
            0,
            g.shape[0] - 1,
        )
        z_axis = g.axis_mm(2)
        y = np.empty(np.broadcast(i, np.asarray(z_mm)).shape)
        for n, (ii, zz) in enumerate(np.broadcast(i, np.asarray(z_mm))):
            near = np.abs(z_axis - zz) <= 15.0  # median over +-15 mm tames atlas jaggedness
            y.flat[n] = np.nanmedian(self.posterior_skin_y[ii, near]) if near.any() else np.nan
        return y


def posterior_skin(body: np.ndarray, grid: Grid) -> np.ndarray:
    """LPS y (mm) of the most posterior body voxel edge per (x column, slice); NaN if none."""
    ny = body.shape[1]
    any_body = body.any(axis=1)
    last = ny - 1 - np.argmax(body[:, ::-1, :], axis=1)
    y = grid.origin_lps_mm[1] + (last + 0.5) * grid.spacing_mm[1]
    return np.where(any_body, y, np.nan)


def side_x(frame: BodyFrame, sign: float, u: np.ndarray | float) -> np.ndarray:
    """World x of a lateral offset ``u`` from the midline on one side (+1 left, -1 right)."""
    return frame.x_mid + sign * np.asarray(u, dtype=float)


def axis_angle(sign: float, du: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """World rotation of an axis pointing (du lateral, dy posterior)."""
    return np.arctan2(dy, sign * du)


def spine_y(frame: BodyFrame, h: np.ndarray) -> np.ndarray:
    """LPS y (mm) of the vertebral body centre at heights ``h`` above the hips.

    The spine follows the real posterior skin line at a depth of subcutaneous fat plus
    the back muscles and posterior elements, which reproduces each body's lordosis.
    """
    k = frame.k
    sat_back = 0.6 * frame.sat_mm
    depth = np.interp(
        h, [-40 * k, 60 * k, 130 * k], [sat_back + 22 * k, sat_back + 30 * k, sat_back + 65 * k]
    )
    y_skin = frame.skin_y(np.full(np.shape(h), frame.x_mid), frame.z_hip + h)
    fallback = frame.hip_left[1] + 40 * k
    return np.where(np.isfinite(y_skin), y_skin - depth, fallback)
