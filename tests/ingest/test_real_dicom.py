"""Real scanner DICOM series (neurolabusc's dcm_qa_* collection, BSD-2-Clause) read with
myoflow's reader and compared with the dcm2niix NIfTIs committed beside them.

Each series lives in ``data/real_dicom/<repo>/<series>/dicom/`` (files as the source
repository holds them, some gzipped there and here), its dcm2niix reference in
``.../dcm2niix/``; ``data/real_dicom/README.md`` says where each came from and how the
references were made. Both images are reoriented to RAS+ (nibabel's
``as_closest_canonical``) and must have the same shape, affines within 0.01 mm and the
same values: exactly when dcm2niix stored unscaled integers, else within float32
rounding of the rescaled values.

Each series is read as ``myoflow convert-series`` reads it: split by echo and image type
(:func:`myoflow.ingest.image_types.split_series`), every part read as a volume. No
committed series is refused today; the Philips magnitude+phase field map was, as
``duplicate_slices``, until series were split by image type.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from myoflow.core.volume import Volume
from myoflow.ingest.dicom import group_by_series, read_datasets, series_volumes
from myoflow.ingest.image_class import MAGNITUDE
from myoflow.ingest.image_types import split_series

DATA = Path(__file__).parent / "data" / "real_dicom"
TOL_MM = 0.01

M = MAGNITUDE
# series folder (relative to DATA) -> {(our volume's echo, image type): dcm2niix reference}.
MATCHES_DCM2NIIX: dict[str, dict[tuple[int | None, str], str]] = {
    # Siemens XA30 (MAGNETOM Prisma Fit), enhanced multi-frame: one file per echo
    # (33 frames each), magnitude of a two-echo GRE field map.
    "dcm_qa_xa30/8_gre_field_mapping": {(1, M): "ref_e1", (2, M): "ref_e2"},
    # Philips Ingenia Elition X, classic single-frame: 40 slices of a 3D pCASL
    # perfusion image, RescaleSlope 0.1.
    "dcm_qa_philips_enh/1901_3DpCASL_cl": {(None, M): "ref"},
    # The same Philips series exported as one enhanced multi-frame file (40 frames).
    "dcm_qa_philips_enh/1901_3DpCASL_enh_real": {(None, "real"): "ref_real"},
    # GE SIGNA Pioneer 3D T1 MP-RAGE: 4 neighbouring slices (instances 64-67 of 130).
    "dcm_qa_ge/05_3D_Ax_T1_MP_RAGE_R22_slices64-67": {(None, M): "ref"},
    # Canon Galan 3T, oblique (~20 degrees sagittal angulation), signed pixels: the 40
    # slices of the b=0 volume (files 5000_001-040 of a 13-volume DTI series).
    "dcm_qa_canon_61/5000_DTI_PA-SAG_20d_b0": {(None, M): "ref"},
    # Philips Achieva dStream enhanced multi-frame B0 map: ONE file mixing 32 magnitude
    # frames (FrameType ...\M, EffectiveEchoTime 1.52 ms) and 32 field-map frames in Hz
    # (FrameType ...\FIELD_MAP, ComplexImageComponent REAL, EffectiveEchoTime 0), split
    # frame by frame by FrameType; dcm2niix writes them as _e1 and _e2_fieldmaphz.
    "dcm_qa_enh/Philips_801_B0_NS": {(None, M): "ref_e1", (None, "fieldmap"): "ref_e2_fieldmaphz"},
    # Philips Ingenia Elition X classic field map, slices 1-4 of 53: one series with
    # magnitude (ImageType ...\M\FFE) and phase (...\PHASE MAP\P\FFE) images of two
    # echoes at each position, split as dcm2niix splits it into four volumes.
    "dcm_qa_philips_enh/2001_fcMRI_Field_Mapping_cl_slices1-4": {
        (1, M): "ref_e1",
        (1, "phase"): "ref_e1_ph",
        (2, M): "ref_e2",
        (2, "phase"): "ref_e2_ph",
    },
}


def _stage(series: str, tmp_path: Path) -> Path:
    """Copy the series' DICOM files into ``tmp_path``, gunzipping ``*.gz``."""
    source = DATA / series / "dicom"
    folder = tmp_path / "dicom"
    folder.mkdir()
    for path in sorted(source.iterdir()):
        if path.suffix == ".gz":
            (folder / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
        else:
            shutil.copy(path, folder / path.name)
    return folder


def _read(series: str, tmp_path: Path) -> dict[tuple[int | None, str], Volume]:
    """Every part of the series as convert-series reads it: (echo, image type) -> volume."""
    groups = group_by_series(read_datasets([_stage(series, tmp_path)]))
    assert len(groups) == 1, f"{series}: {len(groups)} series"
    ((uid, datasets),) = groups.items()
    volumes = {}
    for key, members in split_series(uid, datasets).items():
        for volume in series_volumes(members, key.part):
            echo = key.echo if key.echo is not None else volume.echo
            volumes[(echo, key.part)] = volume
    return volumes


def _reference(series: str, name: str) -> Path:
    return DATA / series / "dcm2niix" / f"{name}.nii.gz"


def _references(series: str) -> set[str]:
    """The names of the NIfTIs dcm2niix wrote for ``series``."""
    return {p.name.removesuffix(".nii.gz") for p in (DATA / series / "dcm2niix").glob("*.nii.gz")}


def _assert_equal_to_dcm2niix(volume: Volume, reference: Path) -> None:
    image = nib.load(reference)
    slope, inter = image.dataobj.slope, image.dataobj.inter
    # dcm2niix's stored integers, with its scl_slope/scl_inter kept aside.
    stored = nib.Nifti1Image(np.asarray(image.dataobj.get_unscaled()), image.affine)
    theirs = nib.as_closest_canonical(stored)
    ours = nib.as_closest_canonical(nib.Nifti1Image(volume.array, volume.affine_ras()))
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    np.testing.assert_allclose(ours.affine, theirs.affine, rtol=0, atol=TOL_MM)
    our_values = np.asarray(ours.dataobj, dtype=np.float64)
    their_stored = np.asarray(theirs.dataobj)
    if np.issubdtype(their_stored.dtype, np.integer) and slope == 1 and inter == 0:
        np.testing.assert_array_equal(our_values, their_stored)  # the stored values, exactly
        return
    # dcm2niix keeps the integers and writes RescaleSlope/Intercept to scl_slope/scl_inter:
    # apply that same rescale to its integers; ours went through float32.
    # Undoing that rescale on ours must give back dcm2niix's integers exactly.
    np.testing.assert_array_equal(np.rint((our_values - inter) / slope), their_stored)
    their_values = their_stored * float(slope) + float(inter)
    peak = max(np.abs(their_values).max(), 1.0)
    np.testing.assert_allclose(our_values, their_values, rtol=0, atol=1e-6 * peak)


def test_every_committed_series_is_listed():
    folders = {str(p.parent.relative_to(DATA)) for p in DATA.glob("*/*/dicom")}
    assert folders == set(MATCHES_DCM2NIIX)


def test_every_committed_series_has_its_licence_and_provenance():
    for repo in {series.split("/")[0] for series in MATCHES_DCM2NIIX}:
        licence = (DATA / repo / "LICENSE").read_text()
        assert "BSD 2-Clause License" in licence, repo
        assert f"neurolabusc/{repo}" in (DATA / repo / "README.md").read_text(), repo


def test_real_series_come_from_several_manufacturers():
    makers = set()
    for series in MATCHES_DCM2NIIX:
        first = sorted((DATA / series / "dicom").iterdir())[0]
        data = first.read_bytes()
        if first.suffix == ".gz":
            data = gzip.decompress(data)
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
        makers.add(str(ds.Manufacturer).split()[0].upper())
    assert {"SIEMENS", "PHILIPS", "GE", "CANON_MEC"} <= makers, makers


@pytest.mark.parametrize("series", list(MATCHES_DCM2NIIX))
def test_real_series_equals_dcm2niix(series, tmp_path):
    expected = MATCHES_DCM2NIIX[series]
    volumes = _read(series, tmp_path)
    assert sorted(volumes, key=str) == sorted(expected, key=str)
    written = _references(series)
    assert written == set(expected.values())  # every dcm2niix output is compared
    for part, volume in volumes.items():
        _assert_equal_to_dcm2niix(volume, _reference(series, expected[part]))
