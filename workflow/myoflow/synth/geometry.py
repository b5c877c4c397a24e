"""Acquisition geometry of the synthetic protocols: the stitched grid and its stations.

(:class:`~myoflow.core.grid.Grid` is re-exported here for the generator's callers.)

All positions are DICOM patient coordinates (LPS, mm): +x to the patient's left, +y to
posterior, +z to superior (head). Internal arrays are indexed (i, j, k) with i -> +x,
j -> +y, k -> +z, so voxel (i, j, k) sits at ``origin + (i, j, k) * spacing``; the NIfTI
affine (RAS) of such an array is ``diag(-sx, -sy, sz)`` with the origin's x and y negated.

Stations are contiguous, overlapping slabs of the stitched lattice, numbered from the
head down as the scanner acquires them (UK Biobank: 6 stations, NAKO: 4 positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from myoflow.core.grid import Grid


@dataclass(frozen=True)
class Station:
    """One table position: slices ``start .. start + count - 1`` of the stitched grid."""

    number: int
    start: int
    count: int

    @property
    def stop(self) -> int:
        return self.start + self.count


@dataclass(frozen=True)
class Protocol:
    """A scanner protocol: its stitched grid, stations and the scanner it imitates."""

    name: str
    grid: Grid
    stations: tuple[Station, ...]


# The UK Biobank stitched grid as the public atlas stores it (224 x 174 x 370, 2.232 mm
# in-plane, 3 mm slices), re-expressed in LPS with j running anterior -> posterior.
_UKBB_SPACING = (500.0 / 224.0, 500.0 / 224.0, 3.0)
_FOV_ORIGIN_LPS = (-250.0, 191.964 - 173 * _UKBB_SPACING[1], -1041.0)
_FOV_SLICES = 370


def _stations(counts: list[int], total: int) -> tuple[Station, ...]:
    """Stack stations from the head down so that together they cover ``total`` slices.

    Overlaps are spread evenly; station 1 ends at the top slice of the stitched grid.
    """
    overlap_total = sum(counts) - total
    n_joins = len(counts) - 1
    overlaps = [
        overlap_total // n_joins + (1 if j < overlap_total % n_joins else 0) for j in range(n_joins)
    ]
    stations = []
    top = total
    for number, count in enumerate(counts, start=1):
        start = top - count
        stations.append(Station(number, start, count))
        if number <= n_joins:
            top = start + overlaps[number - 1]
    if stations[-1].start != 0:
        raise ValueError(f"station counts {counts} do not tile {total} slices")
    return tuple(stations)


def protocol(name: str, size: str = "full") -> Protocol:
    """Return the acquisition geometry of ``name`` ("ukbb" | "nako") at ``size``.

    ``size="small"`` halves the resolution in every axis over the same field of view: the
    anatomy, stations and artefacts stay the same while a participant renders ~8x faster,
    which is what tests use.
    """
    if name == "ukbb":
        in_plane = (224, 174)
        spacing = _UKBB_SPACING
        counts = [64, 64, 64, 64, 64, 80]  # 6 stations, 6-slice (18 mm) overlaps
    elif name == "nako":
        in_plane = (320, 248)
        spacing = (1.5625, 1.5625, 3.0)
        counts = [100, 100, 100, 94]  # 4 positions, 8-slice (24 mm) overlaps
    else:
        raise ValueError(f"unknown protocol {name!r}; expected 'ukbb' or 'nako'")
    slices = _FOV_SLICES
    if size == "small":
        in_plane = (in_plane[0] // 2, in_plane[1] // 2)
        spacing = (spacing[0] * 2, spacing[1] * 2, spacing[2] * 2)
        counts = [c // 2 for c in counts]
        slices = _FOV_SLICES // 2
    elif size != "full":
        raise ValueError(f"unknown size {size!r}; expected 'full' or 'small'")
    # Every protocol and size shares the field-of-view centre of the UK Biobank grid.
    ref_shape = np.array([224, 174, _FOV_SLICES])
    centre = np.array(_FOV_ORIGIN_LPS) + (ref_shape - 1) / 2 * np.array(_UKBB_SPACING)
    shape = np.array([*in_plane, slices])
    origin = tuple(float(v) for v in centre - (shape - 1) / 2 * np.array(spacing))
    grid = Grid((in_plane[0], in_plane[1], slices), spacing, origin)
    return Protocol(name, grid, _stations(counts, slices))


def resliced(proto: Protocol, slice_mm: float) -> Protocol:
    """``proto`` with slices ``slice_mm`` apart over the same field of view and centre.

    Each station keeps its share of the field of view (its slice count scaled and
    rounded up, so neighbouring stations still overlap), as a protocol with thicker
    slices would cover the body in the same table positions.
    """
    grid = proto.grid
    old_mm = grid.spacing_mm[2]
    nz = int(round(grid.shape[2] * old_mm / slice_mm))
    centre = grid.origin_lps_mm[2] + (grid.shape[2] - 1) / 2 * old_mm
    origin = (grid.origin_lps_mm[0], grid.origin_lps_mm[1], centre - (nz - 1) / 2 * slice_mm)
    counts = [int(np.ceil(s.count * old_mm / slice_mm)) for s in proto.stations]
    new_grid = Grid((grid.shape[0], grid.shape[1], nz), (*grid.spacing_mm[:2], slice_mm), origin)
    return Protocol(proto.name, new_grid, _stations(counts, nz))
