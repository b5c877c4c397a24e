"""Enhanced (multi-frame) MR files packed from single-frame ones, as scanners export them.

Philips and Siemens XA scanners can export a series as one enhanced MR file whose frames
carry their own position, rescale, echo time and frame type in functional groups; a
Philips mDIXON file can hold the water, fat, in-phase and opposed-phase frames together.
:func:`pack_enhanced` turns single-frame datasets into such a file, for tests and for the
ingestion fuzzing bench.
"""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

# Attributes each frame of an enhanced file carries in its functional groups, not at the top.
_PER_FRAME = {
    "SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "SliceThickness", "RescaleSlope", "RescaleIntercept", "EchoTime",
    "EchoNumbers", "PixelData", "ImageType",
}  # fmt: skip


def pack_enhanced(
    datasets: list[Dataset],
    echo_times: list[float] | None = None,
    order: list[int] | None = None,
    frame_types: list[list[str]] | None = None,
) -> Dataset:
    """Pack single-frame datasets into one enhanced MR dataset, frames in ``order``.

    Everything but the per-frame attributes is copied from the first dataset; each frame
    gets its position and rescale, and its EffectiveEchoTime and FrameType (MR Image Frame
    Type macro) from ``echo_times`` and ``frame_types`` when given (one per frame).
    """
    order = list(range(len(datasets))) if order is None else order
    first = datasets[0]
    ds = Dataset()
    for element in first:
        if element.keyword not in _PER_FRAME:
            ds.add(element)
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(first.get("SOPInstanceUID", ""))])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageType = ["DERIVED", "PRIMARY", "MIXED"] if frame_types else first.get("ImageType")
    ds.NumberOfFrames = len(order)
    shared = Dataset()
    measures, plane = Dataset(), Dataset()
    measures.PixelSpacing = first.PixelSpacing
    if "SliceThickness" in first:
        measures.SliceThickness = first.SliceThickness
    plane.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([plane])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for n, index in enumerate(order):
        source = datasets[index]
        item, position, values = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = source.ImagePositionPatient
        values.RescaleSlope = source.get("RescaleSlope", "1")
        values.RescaleIntercept = source.get("RescaleIntercept", "0")
        item.PlanePositionSequence = Sequence([position])
        item.PixelValueTransformationSequence = Sequence([values])
        if echo_times is not None:
            echo = Dataset()
            echo.EffectiveEchoTime = echo_times[n]
            item.MREchoSequence = Sequence([echo])
        if frame_types is not None:
            frame_type = Dataset()
            frame_type.FrameType = frame_types[n]
            item.MRImageFrameTypeSequence = Sequence([frame_type])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = b"".join(datasets[i].PixelData for i in order)
    return ds
