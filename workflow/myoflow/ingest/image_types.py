"""Which part of a DICOM series each image is: its echo and its image type.

A series may hold several echoes, and magnitude, phase, real or imaginary images, a field
map, or the Dixon maps water, fat, in-phase and opposed-phase (a Philips mDIXON series can hold all
four). :func:`split_series` splits a series into :class:`SubSeries` as dcm2niix does, so
that every part is read as its own volume (:func:`myoflow.ingest.dicom.series_volumes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from pydicom.dataset import Dataset

from myoflow.ingest.dicom import group_by_series
from myoflow.ingest.dicom_frames import first_int, frame_classes


class SubSeries(NamedTuple):
    """The key of a sub-series: the images of one series with one echo and image type.

    Attributes:
        uid: SeriesInstanceUID.
        echo: echo number when the series holds several echoes (EchoNumbers, else the
            rank of EchoTime), else None.
        part: image class (:func:`myoflow.ingest.image_class.class_of`): ``magnitude``,
            ``phase``, ``real``, ``imaginary``, ``fieldmap``, or a Dixon map ``water``,
            ``fat``, ``in``, ``opp``.
    """

    uid: str
    echo: int | None
    part: str

    def __str__(self) -> str:
        echo = "" if self.echo is None else f" echo {self.echo}"
        return f"{self.uid}{echo} {self.part}"


def split_series(uid: str, datasets: Sequence[Dataset]) -> dict[SubSeries, list[Dataset]]:
    """Split one series by echo and image-type class, as dcm2niix does.

    A series that interleaves echoes (EchoNumbers, else EchoTime) gives one sub-series
    per echo; one that mixes magnitude and phase (or real, imaginary, a field map, or the
    Dixon maps water, fat, in-phase, opposed-phase) one per class, told apart file by
    file (ImageType) and, in enhanced multi-frame files, frame by frame (FrameType).
    Sub-series come in order of first appearance; a series with one echo and one class
    gives one sub-series.
    """
    echoes = _echo_of(datasets)
    groups: dict[SubSeries, list[Dataset]] = {}
    for ds, echo in zip(datasets, echoes, strict=True):
        # An enhanced file whose frames are of several classes joins each class's
        # sub-series; reading one (series_volumes(..., part=)) takes only its frames.
        for part in dict.fromkeys(frame_classes(ds)):
            groups.setdefault(SubSeries(uid, echo, part), []).append(ds)
    return groups


def group_by_subseries(datasets: Iterable[Dataset]) -> dict[SubSeries, list[Dataset]]:
    """:func:`group_by_series`, then :func:`split_series` of each series."""
    groups: dict[SubSeries, list[Dataset]] = {}
    for uid, members in group_by_series(datasets).items():
        groups.update(split_series(uid, members))
    return groups


def _echo_of(datasets: Sequence[Dataset]) -> list[int | None]:
    """Each dataset's echo, or None for all when the series holds one echo.

    Echoes are told apart as :func:`series_volumes` does: by EchoNumbers when every
    file has one, else by the rank of EchoTime (rounded to 1 us).
    """
    numbers = [first_int(ds.get("EchoNumbers")) for ds in datasets]
    if None not in numbers and len(set(numbers)) > 1:
        return numbers  # type: ignore[return-value]
    times = [_echo_time(ds) for ds in datasets]
    if None not in times and len(set(times)) > 1:
        rank = {time: n for n, time in enumerate(sorted(set(times)), 1)}  # type: ignore[type-var]
        return [rank[t] for t in times]
    return [None] * len(datasets)


def _echo_time(ds: Dataset) -> float | None:
    try:
        return round(float(ds.get("EchoTime")), 3)
    except (TypeError, ValueError):
        return None
