"""Tests for the synthetic DICOM writer: values, headers, geometry in three readers,
reproducible bytes and deterministic zips."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_helpers import TEST_PATIENT, dcm2niix_binary
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from myoflow.synth.dicom_writer import SeriesInfo, write_series, zip_directory
from myoflow.synth.scanner_tags import channel_tags, scanner_tags

# Odd, unequal sizes and spacings so that any swap of i/j, rows/columns or PixelSpacing
# order changes shapes or positions.
SHAPE = (17, 13, 9)
SPACING = (1.7, 2.3, 3.1)
ORIGIN = (-20.5, 13.25, -101.0)

PATIENT = TEST_PATIENT
SERIES = SeriesInfo(protocol="ukbb", channel="water", station=1, series_number=7, uid_seed="s1")


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Right-handed rotation from angles in degrees about x, y, z."""
    cx, cy, cz = np.cos(np.radians([ax, ay, az]))
    sx, sy, sz = np.sin(np.radians([ax, ay, az]))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


# Columns are the LPS unit vectors of the i, j, k axes.
GEOMETRIES = {
    "axial_head_first": np.eye(3),
    "axial_feet_right_handed": np.diag([1.0, -1.0, -1.0]),
    "axial_feet_left_handed": np.diag([1.0, 1.0, -1.0]),
    # i -> L, j -> inferior (S reversed), k -> P.
    "coronal": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
    "oblique": _rotation(-15.0, 10.0, 20.0),
}


def _volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    volume = rng.uniform(0.0, 2500.0, SHAPE).astype(np.float32)
    volume[0, 0, :] = 0.0  # background voxels must survive as exact zeros
    return volume


def _write(out_dir: Path, direction: np.ndarray, series: SeriesInfo = SERIES) -> list[Path]:
    return write_series(
        _volume(),
        origin_lps_mm=ORIGIN,
        spacing_mm=SPACING,
        direction=direction,
        out_dir=out_dir,
        series=series,
        patient=PATIENT,
    )


def _affine_lps(direction: np.ndarray, origin=ORIGIN, spacing=SPACING) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _slope(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).RescaleSlope)


def _assert_same_grid(affine_lps: np.ndarray, data: np.ndarray, ours: np.ndarray, step: float):
    """Every voxel of (affine_lps, data) must sit on one of our voxel centres (0.01 mm),
    cover our grid exactly once and carry our value to within half a quantisation step."""
    assert data.size == _volume().size
    index = np.indices(data.shape).reshape(3, -1)
    world = affine_lps @ np.vstack([index, np.ones(index.shape[1])])
    our_index = np.linalg.solve(ours, world)[:3]
    nearest = np.rint(our_index)
    offset_mm = np.linalg.norm(ours[:3, :3] @ (our_index - nearest), axis=0)
    assert offset_mm.max() < 0.01
    nearest = nearest.astype(int)
    assert np.all(nearest >= 0) and np.all(nearest < np.array(SHAPE)[:, None])
    assert np.unique(np.ravel_multi_index(nearest, SHAPE)).size == data.size
    expected = _volume()[nearest[0], nearest[1], nearest[2]]
    np.testing.assert_allclose(data.reshape(-1), expected, rtol=0, atol=step / 2 + 1e-3)


@pytest.fixture(scope="module", params=list(GEOMETRIES))
def written(request, tmp_path_factory) -> tuple[str, list[Path]]:
    out = tmp_path_factory.mktemp(request.param)
    return request.param, _write(out / "series", GEOMETRIES[request.param])


# --- pydicom ---------------------------------------------------------------------------


def test_pydicom_values_and_geometry(written):
    name, paths = written
    direction = GEOMETRIES[name]
    volume = _volume()
    assert [p.name for p in paths] == [f"IM_{k + 1:04d}.dcm" for k in range(SHAPE[2])]
    normal = np.cross(direction[:, 0], direction[:, 1])
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array
        assert raw.shape == (SHAPE[1], SHAPE[0])  # (Rows, Columns) = (ny, nx)
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        expected = volume[:, :, k].T  # pixel (row r, col c) = volume[c, r, k]
        np.testing.assert_allclose(raw * slope + intercept, expected, rtol=0, atol=slope / 2)
        position = np.array(ORIGIN) + direction[:, 2] * k * SPACING[2]
        np.testing.assert_allclose(np.array(ds.ImagePositionPatient, float), position, atol=1e-4)
        np.testing.assert_allclose(
            np.array(ds.ImageOrientationPatient, float),
            np.concatenate([direction[:, 0], direction[:, 1]]),
            atol=1e-6,
        )
        np.testing.assert_allclose(np.array(ds.PixelSpacing, float), [SPACING[1], SPACING[0]])
        assert float(ds.SliceLocation) == pytest.approx(normal @ position, abs=1e-4)
        assert ds.InstanceNumber == k + 1


def test_stored_values_need_rescale(tmp_path):
    paths = _write(tmp_path, np.eye(3))
    ds = pydicom.dcmread(paths[0])
    raw = np.stack([pydicom.dcmread(p).pixel_array for p in paths], axis=-1)
    assert ds.RescaleType == "US"
    assert float(ds.RescaleSlope) != 1.0
    assert raw.dtype == np.uint16
    assert 3500 <= raw.max() <= 4095  # most of the 12-bit range is used
    # Without the rescale the values are visibly wrong.
    assert np.abs(raw.transpose(1, 0, 2) - _volume()).max() > 100
    assert raw.min() == 0 and np.all(raw.transpose(1, 0, 2)[_volume() == 0] == 0)


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        (
            SERIES,
            {
                "SeriesDescription": "Dixon_BH_17s_W",
                "ImageType": ["DERIVED", "PRIMARY", "DIXON", "WATER"],
                "ManufacturerModelName": "Aera",
                "MagneticFieldStrength": 1.5,
                "EchoTime": 4.77,
                "BodyPartExamined": "NECK",
            },
        ),
        (
            SeriesInfo(protocol="nako", channel="opp", station=5, series_number=3, uid_seed="n"),
            {
                "SeriesDescription": "T1_VIBE_DIXON_tra_opp",
                "ImageType": ["ORIGINAL", "PRIMARY", "DIXON", "OPPOSED_PHASE"],
                "ManufacturerModelName": "MAGNETOM Skyra",
                "MagneticFieldStrength": 3.0,
                "EchoTime": 1.23,
                "BodyPartExamined": "THIGH",
            },
        ),
    ],
)
def test_required_tags(tmp_path, series, expected):
    paths = _write(tmp_path, np.eye(3), series)
    ds = pydicom.dcmread(paths[2])
    for keyword, value in expected.items():
        actual = ds.data_element(keyword).value
        if isinstance(value, float):
            assert float(actual) == pytest.approx(value), keyword
        elif isinstance(value, list):
            assert list(actual) == value, keyword
        else:
            assert actual == value, keyword
    meta = ds.file_meta
    assert meta.MediaStorageSOPClassUID == MRImageStorage == ds.SOPClassUID
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.ImplementationVersionName == "MYOFLOW_SYNTH"
    assert meta.ImplementationClassUID.is_valid
    fixed = {
        "Modality": "MR",
        "Manufacturer": "SIEMENS",
        "MRAcquisitionType": "3D",
        "PatientPosition": "HFS",
        "PatientName": "Testperson^Erika",
        "PatientID": "SYN0001234",
        "PatientBirthDate": "19620715",
        "PatientSex": "F",
        "PatientAge": "057Y",
        "InstitutionName": "Synthetic Imaging Centre",
        "ReferringPhysicianName": "",
        "StudyDate": "20190312",
        "SeriesDate": "20190312",
        "AcquisitionDate": "20190312",
        "ContentDate": "20190312",
        "StudyTime": "091500.000000",
        "SeriesNumber": series.series_number,
        "InstanceNumber": 3,
        "AcquisitionNumber": 1,
        "Rows": SHAPE[1],
        "Columns": SHAPE[0],
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16,
        "BitsStored": 12,
        "HighBit": 11,
        "PixelRepresentation": 0,
        "RescaleIntercept": 0,
    }
    for keyword, value in fixed.items():
        assert ds.data_element(keyword).value == value, keyword
    assert float(ds.PatientWeight) == pytest.approx(68.4)
    assert float(ds.PatientSize) == pytest.approx(1.69)
    assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == pytest.approx(3.1)
    assert ds.SeriesTime > ds.AcquisitionTime > ds.StudyTime
    present = ("RepetitionTime", "FlipAngle", "SequenceName", "ScanningSequence",
               "SequenceVariant", "StudyID", "AccessionNumber", "FrameOfReferenceUID",
               "WindowCenter", "WindowWidth")  # fmt: skip
    for keyword in present:
        assert keyword in ds and ds.data_element(keyword).value not in ("", None), keyword
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert ds.data_element(keyword).value.is_valid, keyword
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in paths}) == len(paths)


def test_channel_and_scanner_tags():
    assert channel_tags("ukbb", "fat", 3)["SeriesDescription"] == "Dixon_BH_17s_F"
    assert channel_tags("ukbb", "in", 4)["SeriesDescription"] == "Dixon_noBH_in"
    assert channel_tags("ukbb", "opp", 6)["SeriesDescription"] == "Dixon_noBH_opp"
    assert channel_tags("nako", "water", 1)["SeriesDescription"] == "T1_VIBE_DIXON_tra_W"
    assert channel_tags("ukbb", "opp", 1)["EchoTime"] == "2.39"
    assert channel_tags("ukbb", "in", 1)["EchoTime"] == "4.77"
    assert channel_tags("ukbb", "fat", 1)["EchoTime"] == "4.77"
    assert channel_tags("nako", "in", 1)["EchoTime"] == "2.46"
    assert channel_tags("ukbb", "in", 1)["ImageType"][-1] == "IN_PHASE"
    assert channel_tags("ukbb", "fat", 1)["ImageType"] == ["DERIVED", "PRIMARY", "DIXON", "FAT"]
    assert scanner_tags("ukbb")["MagneticFieldStrength"] == "1.5"
    assert scanner_tags("nako")["ManufacturerModelName"] == "MAGNETOM Skyra"
    assert scanner_tags("nako")["MagneticFieldStrength"] == "3"
    with pytest.raises(ValueError, match="channel"):
        channel_tags("ukbb", "t2star", 1)
    with pytest.raises(ValueError, match="protocol"):
        scanner_tags("hcp")


def test_rejects_bad_input(tmp_path):
    kwargs = dict(
        origin_lps_mm=ORIGIN, spacing_mm=SPACING, out_dir=tmp_path, series=SERIES, patient=PATIENT
    )
    with pytest.raises(ValueError, match="non-negative"):
        write_series(-_volume(), direction=np.eye(3), **kwargs)
    with pytest.raises(ValueError, match="orthonormal"):
        write_series(_volume(), direction=np.diag([1.0, 2.0, 1.0]), **kwargs)
    assert not list(tmp_path.iterdir())


# --- SimpleITK / GDCM ------------------------------------------------------------------


def _expected_itk_geometry(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """GDCM sorts slices along the image normal (row x column). For a left-handed
    direction the normal is -k, so ITK's slice 0 is our last slice and its third axis -k;
    the voxels sit at the same places in the patient."""
    if np.linalg.det(direction) > 0:
        return np.array(ORIGIN), direction, False
    origin = np.array(ORIGIN) + direction[:, 2] * (SHAPE[2] - 1) * SPACING[2]
    return origin, direction @ np.diag([1.0, 1.0, -1.0]), True


def test_simpleitk_geometry(written):
    name, paths = written
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(paths[0].parent))
    assert len(names) == SHAPE[2]
    reader.SetFileNames(names)
    image = reader.Execute()
    origin, direction, reversed_k = _expected_itk_geometry(GEOMETRIES[name])
    assert image.GetSize() == SHAPE
    np.testing.assert_allclose(image.GetOrigin(), origin, atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-4)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), direction, atol=1e-6)
    array = sitk.GetArrayFromImage(image).astype(float).transpose(2, 1, 0)  # -> (x, y, z)
    if reversed_k:
        array = array[:, :, ::-1]
    step = _slope(paths[0])
    np.testing.assert_allclose(array, _volume(), rtol=0, atol=step / 2 + 1e-3)


# --- dcm2niix --------------------------------------------------------------------------


@pytest.mark.skipif(dcm2niix_binary() is None, reason="dcm2niix binary not installed")
def test_dcm2niix_geometry(written, tmp_path):
    name, paths = written
    result = subprocess.run(
        [dcm2niix_binary(), "-z", "n", "-f", "out", "-o", str(tmp_path), str(paths[0].parent)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout and "Error" not in result.stdout, result.stdout
    # dcm2niix appends echo suffixes (out_e2.nii for EchoNumbers 2), so glob.
    (nifti,) = tmp_path.glob("out*.nii")
    image = nib.load(nifti)
    # dcm2niix chooses its own voxel order (it flips rows, may reverse or permute axes);
    # compare through the affines instead of assuming one.
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    _assert_same_grid(
        affine_lps, image.get_fdata(), _affine_lps(GEOMETRIES[name]), _slope(paths[0])
    )
    sidecar = json.loads(nifti.with_suffix(".json").read_text())
    assert sidecar["Manufacturer"].upper() == "SIEMENS"
    assert sidecar["MagneticFieldStrength"] == pytest.approx(1.5)
    assert sidecar["EchoTime"] == pytest.approx(0.00477)
    assert sidecar["ImageType"][-1] == "WATER"


# --- determinism -------------------------------------------------------------------------


def test_identical_inputs_give_identical_bytes(tmp_path):
    first = _write(tmp_path / "a", GEOMETRIES["oblique"])
    second = _write(tmp_path / "b", GEOMETRIES["oblique"])
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    # The spliced per-slice encoding equals pydicom's own full encoding.
    buffer = BytesIO()
    pydicom.dcmread(first[4]).save_as(buffer, enforce_file_format=True)
    assert buffer.getvalue() == first[4].read_bytes()


def test_uids_follow_seed_and_patient(tmp_path):
    base = pydicom.dcmread(_write(tmp_path / "a", np.eye(3))[0])
    reseeded = SeriesInfo("ukbb", "water", 1, 7, uid_seed="s2")
    other_seed = pydicom.dcmread(_write(tmp_path / "b", np.eye(3), reseeded)[0])
    fat = SeriesInfo("ukbb", "fat", 2, 8, uid_seed="s1")
    other_series = pydicom.dcmread(_write(tmp_path / "c", np.eye(3), fat)[0])
    assert other_seed.SeriesInstanceUID != base.SeriesInstanceUID
    assert other_seed.SOPInstanceUID != base.SOPInstanceUID
    assert other_series.SeriesInstanceUID != base.SeriesInstanceUID
    # One study and one frame of reference per patient visit.
    for ds in (other_seed, other_series):
        assert ds.StudyInstanceUID == base.StudyInstanceUID
        assert ds.FrameOfReferenceUID == base.FrameOfReferenceUID
    assert other_series.SeriesTime != base.SeriesTime


# --- zip -------------------------------------------------------------------------------


def test_zip_directory_is_deterministic_and_readable(tmp_path):
    src = tmp_path / "participant"
    paths = _write(src / "station1_water", np.eye(3))
    first, second = tmp_path / "one.zip", tmp_path / "two.zip"
    zip_directory(src, first)
    os.utime(paths[3], (1_000_000_000, 1_000_000_000))  # mtimes must not matter
    zip_directory(src, second)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        names = archive.namelist()
        assert names == sorted(names) == [f"station1_water/{p.name}" for p in paths]
        infos = archive.infolist()
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.compress_type for i in infos} == {zipfile.ZIP_DEFLATED}
        ds = pydicom.dcmread(BytesIO(archive.read(names[3])))
    assert ds.InstanceNumber == 4
    assert ds.PixelData == pydicom.dcmread(paths[3]).PixelData
    assert not list(tmp_path.glob(".one.zip*"))  # no temporary left behind
    with pytest.raises(ValueError, match="inside"):
        zip_directory(src, src / "self.zip")
