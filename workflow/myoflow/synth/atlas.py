"""Real body outlines and joint landmarks that synthetic participants are built on.

The 40 UK Biobank body masks with hip, knee and shoulder landmarks (MIT licence, see
``resources/atlas/ukbb_body_atlas/LICENSE``) give every synthetic participant a real body
shape and real hip positions. Each atlas body is scaled to the participant: along z by
height, in-plane by weight per height, both about the hip centres so that the hips stay
where the real participant had them in the scanner's field of view.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources as importlib_resources
from pathlib import Path

import numpy as np

from myoflow.synth.geometry import Grid, protocol

N_BODIES = 40

# Population references that map "average participant" onto "average atlas body".
_REF_WEIGHT_PER_HEIGHT = 76.6 / 169.4  # kg/cm, UK Biobank mean weight over mean height
SHOULDER_HIP_PER_HEIGHT = 0.31  # shoulder-to-hip-joint distance as a fraction of height
SCALE_LIMITS_Z = (0.85, 1.2)
SCALE_LIMITS_XY = (0.7, 1.45)


def atlas_root() -> Path:
    """Folder holding the atlas (``resources/atlas/ukbb_body_atlas`` of the repository)."""
    override = Path(__file__).resolve().parents[3] / "resources" / "atlas" / "ukbb_body_atlas"
    if override.is_dir():
        return override
    return Path(str(importlib_resources.files("myoflow"))) / "resources" / "ukbb_body_atlas"


@dataclass(frozen=True)
class AtlasBody:
    """One real body: its mask on the UK Biobank grid (i -> L, j -> P, k -> S) and landmarks."""

    index: int
    mask: np.ndarray  # bool (224, 174, 370)
    grid: Grid
    hip_left_lps_mm: np.ndarray
    hip_right_lps_mm: np.ndarray
    shoulder_z_mm: float
    trunk_area_cm2: float  # mean axial body area between hips and shoulders

    @property
    def hip_centre_lps_mm(self) -> np.ndarray:
        return (self.hip_left_lps_mm + self.hip_right_lps_mm) / 2

    @property
    def height_estimate_cm(self) -> float:
        return (self.shoulder_z_mm - self.hip_centre_lps_mm[2]) / SHOULDER_HIP_PER_HEIGHT / 10


SUMMARY_COLUMNS = (
    "hip_left_x_mm", "hip_left_y_mm", "hip_left_z_mm",
    "hip_right_x_mm", "hip_right_y_mm", "hip_right_z_mm",
    "shoulder_z_mm", "trunk_area_cm2",
)  # fmt: skip


def _read_mask(index: int) -> np.ndarray:
    import nibabel as nib

    if not 0 <= index < N_BODIES:
        raise ValueError(f"atlas body {index} does not exist (0..{N_BODIES - 1})")
    folder = atlas_root() / f"{index + 1:04d}"
    # The atlas is stored LAS (j -> anterior); flipping j gives our i -> L, j -> P, k -> S.
    return np.asarray(nib.load(folder / "mask.body.nii.gz").dataobj)[:, ::-1, :] > 0


def measure_body(index: int) -> dict[str, float]:
    """Landmarks and trunk area of atlas body ``index``, read from its files (slow)."""
    import nibabel as nib

    mask = _read_mask(index)
    folder = atlas_root() / f"{index + 1:04d}"
    joints = np.asarray(nib.load(folder / "bone_joints.nii.gz").dataobj)[:, ::-1, :]
    grid = protocol("ukbb", "full").grid
    ijk = np.nonzero(joints)
    values = joints[ijk]
    positions = grid.affine_lps()[:3, :3] @ np.array(ijk) + grid.affine_lps()[:3, 3:4]

    def landmark(label: int) -> np.ndarray:
        return positions[:, np.flatnonzero(values == label)[0]]

    right, left = sorted([landmark(11), landmark(12)], key=lambda p: p[0])  # +x is the left side
    shoulder_z = (landmark(1)[2] + landmark(2)[2]) / 2
    k_hip = int(round(((left[2] + right[2]) / 2 - grid.origin_lps_mm[2]) / grid.spacing_mm[2]))
    k_shoulder = int(round((shoulder_z - grid.origin_lps_mm[2]) / grid.spacing_mm[2]))
    pixel_cm2 = grid.spacing_mm[0] * grid.spacing_mm[1] / 100
    trunk_area = float(mask[:, :, k_hip:k_shoulder].sum(axis=(0, 1)).mean() * pixel_cm2)
    return dict(zip(SUMMARY_COLUMNS, [*left, *right, shoulder_z, trunk_area], strict=True))


def summary_path() -> Path:
    return atlas_root().parent / "atlas_summary.tsv"


def write_summary() -> None:
    """Regenerate ``atlas_summary.tsv`` (run after changing the atlas)."""
    lines = ["body\t" + "\t".join(SUMMARY_COLUMNS)]
    for index in range(N_BODIES):
        row = measure_body(index)
        lines.append(f"{index}\t" + "\t".join(f"{row[c]:.4f}" for c in SUMMARY_COLUMNS))
    summary_path().write_text("\n".join(lines) + "\n")


@functools.lru_cache(maxsize=1)
def atlas_summary() -> np.ndarray:
    """(40, 8) array of SUMMARY_COLUMNS per body, from the shipped summary table."""
    table = np.loadtxt(summary_path(), delimiter="\t", skiprows=1)
    return table[:, 1:]


@functools.lru_cache(maxsize=8)
def load_body(index: int) -> AtlasBody:
    """Load atlas body ``index`` (0-based, 0..39) in the package's LPS array convention."""
    row = atlas_summary()[index]
    return AtlasBody(
        index=index,
        mask=_read_mask(index),
        grid=protocol("ukbb", "full").grid,
        hip_left_lps_mm=row[0:3].copy(),
        hip_right_lps_mm=row[3:6].copy(),
        shoulder_z_mm=float(row[6]),
        trunk_area_cm2=float(row[7]),
    )


def _mean_trunk_area_cm2() -> float:
    return float(atlas_summary()[:, 7].mean())


@dataclass(frozen=True)
class BodyScaling:
    """How one atlas body maps onto one participant (scales about the hip centre)."""

    scale_z: float  # body length ratio (participant / atlas)
    scale_xy: float  # in-plane girth ratio
    pivot_lps_mm: np.ndarray  # atlas hip centre, kept fixed


def body_scaling(body: AtlasBody, height_cm: float, weight_kg: float) -> BodyScaling:
    """Scales that turn ``body`` into a participant of the given height and weight.

    Length follows height; girth follows weight per height, relative to the atlas mean,
    so the average participant gets the average atlas girth. Both are clipped to keep
    extreme phenotypes anatomically plausible.
    """
    scale_z = float(np.clip(height_cm / body.height_estimate_cm, *SCALE_LIMITS_Z))
    target_area = _mean_trunk_area_cm2() * (weight_kg / height_cm) / _REF_WEIGHT_PER_HEIGHT
    scale_xy = float(np.clip(np.sqrt(target_area / body.trunk_area_cm2), *SCALE_LIMITS_XY))
    return BodyScaling(scale_z, scale_xy, body.hip_centre_lps_mm)


def scaled_landmark(point_lps_mm: np.ndarray, scaling: BodyScaling) -> np.ndarray:
    """Map an atlas landmark (a bone) into the participant.

    Bones do not widen with weight: landmarks scale with body length (height) along every
    axis, not with the girth scale of the body outline.
    """
    offset = np.asarray(point_lps_mm, dtype=float) - scaling.pivot_lps_mm
    return scaling.pivot_lps_mm + offset * scaling.scale_z


def resample_body(body: AtlasBody, scaling: BodyScaling, grid: Grid) -> np.ndarray:
    """The participant's body mask on ``grid`` (bool), by nearest-neighbour lookup.

    The transform is an axis-aligned scaling, so each output axis maps independently to
    atlas indices and one fancy-indexing pass does the lookup. Beyond the atlas body's
    cranio-caudal extent the last slice repeats: a shorter person is still imaged from
    neck to knee, with more of them inside the field of view.
    """
    src = body.grid
    pivot = scaling.pivot_lps_mm
    scales = (scaling.scale_xy, scaling.scale_xy, scaling.scale_z)
    index = []
    for axis in range(3):
        world = grid.axis_mm(axis)
        atlas_world = pivot[axis] + (world - pivot[axis]) / scales[axis]
        idx = np.rint((atlas_world - src.origin_lps_mm[axis]) / src.spacing_mm[axis]).astype(int)
        index.append(idx)
    valid_xy = [(idx >= 0) & (idx < src.shape[a]) for a, idx in enumerate(index[:2])]
    occupied = np.flatnonzero(body.mask.any(axis=(0, 1)))
    index[2] = np.clip(index[2], occupied[0], occupied[-1])
    index[0] = np.clip(index[0], 0, src.shape[0] - 1)
    index[1] = np.clip(index[1], 0, src.shape[1] - 1)
    mask = body.mask[np.ix_(index[0], index[1], index[2])]
    mask &= valid_xy[0][:, None, None] & valid_xy[1][None, :, None]
    return mask
