"""One participant's folder under ``results/participants/``: where each stage's files are,
and reading the stitched Dixon channels that every stage after the conversion starts from.

Stitched channels may be absent on purpose: after the measure stage, a participant keeps
only those config ``keep.stitched`` names (:mod:`myoflow.core.kept_channels`); a stage that
reads them again gets them made again from the DICOM by the ``source`` of its
:class:`ParticipantFiles` (:mod:`myoflow.ingest.regenerate`).

The layout is written down once, here, so that a stage reading another stage's output
cannot disagree with it about a file name::

    {participant}/dixon/{water,fat,in,opp}.nii.gz   conversion (stitched channels)
    {participant}/dixon/acquisition.json            conversion (its completion marker)
    {participant}/dixon/removed.json                measure (channels removed on purpose,
                                                    config keep.stitched; core.kept_channels)
    {participant}/landmarks.json                    landmarks
    {participant}/seg/labels.nii.gz                 segmentation
    {participant}/seg/segmentation.json             segmentation (its completion marker)
    {participant}/metrics.json                      measure
    {participant}/qc/flags.json, qc/overlay.png     measure
    {participant}/qc/preview.nii.gz                 measure (water and fat, downsampled)
    {participant}/exclusion.json                    the earliest stage that excluded it
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from myoflow.core.errors import ParticipantExcluded
from myoflow.core.grid import lps_axes
from myoflow.core.io import load_nifti

CHANNELS = ("water", "fat", "in", "opp")
"""The stitched Dixon channels, in the conversion's order."""


class ChannelSource(Protocol):
    """What can write a participant's stitched channels again after they were removed on
    purpose (:class:`myoflow.ingest.regenerate.DicomChannelSource`)."""

    def restore(self, files: ParticipantFiles, names: Sequence[str]) -> None:
        """Write again those of ``names`` that were removed on purpose, as they were.

        Raises:
            ParticipantExcluded: they cannot be made again as they were.
        """


@dataclass(frozen=True)
class ParticipantFiles:
    """The paths of one participant's files; ``root`` is its folder, ``source`` what
    restores channels removed on purpose (None: they stay missing)."""

    root: Path
    source: ChannelSource | None = field(default=None, compare=False, repr=False)

    def channel(self, name: str) -> Path:
        return self.root / "dixon" / f"{name}.nii.gz"

    @property
    def acquisition(self) -> Path:
        return self.root / "dixon" / "acquisition.json"

    @property
    def removed(self) -> Path:
        return self.root / "dixon" / "removed.json"

    @property
    def landmarks(self) -> Path:
        return self.root / "landmarks.json"

    @property
    def labels(self) -> Path:
        return self.root / "seg" / "labels.nii.gz"

    @property
    def segmentation(self) -> Path:
        return self.root / "seg" / "segmentation.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def flags(self) -> Path:
        return self.root / "qc" / "flags.json"

    @property
    def overlay(self) -> Path:
        return self.root / "qc" / "overlay.png"

    @property
    def preview(self) -> Path:
        return self.root / "qc" / "preview.nii.gz"

    @property
    def exclusion(self) -> Path:
        return self.root / "exclusion.json"


def read_channels(
    files: ParticipantFiles, names: Sequence[str], reason: str
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The named stitched channels as float32 arrays (i, j, k) and their voxel -> RAS affine.

    Args:
        files: the participant's folder.
        names: channels to read (``water``, ``fat``, ``in``, ``opp``), at least one.
        reason: the exclusion reason code of the calling stage, for the error below.

    Channels removed on purpose after an earlier run are first made again by
    ``files.source`` (if any).

    Raises:
        ValueError: ``names`` is empty.
        ParticipantExcluded: ``dixon_not_regenerable`` from ``files.source``; ``reason``,
            when a channel is missing, damaged or not 3-D,
            the channels are not on one grid, or the grid is not in the package's array
            convention (:func:`myoflow.core.grid.lps_axes`).
    """
    # nibabel loads here, not at import: the CLI imports every stage's module.
    from nibabel.filebasedimages import ImageFileError

    if not names:
        raise ValueError("no channel to read")
    if files.source is not None:  # channels removed after an earlier run (keep.stitched)
        files.source.restore(files, names)
    channels: dict[str, np.ndarray] = {}
    affines: dict[str, np.ndarray] = {}
    for name in names:
        try:
            image = load_nifti(files.channel(name))
            data = np.asarray(image.get_fdata(dtype=np.float32))
        except (OSError, EOFError, ValueError, zlib.error, ImageFileError) as err:
            raise ParticipantExcluded(reason, f"dixon/{name}.nii.gz: {err}".rstrip()) from err
        if data.ndim != 3:
            raise ParticipantExcluded(
                reason, f"dixon/{name}.nii.gz has shape {data.shape}, not 3-D"
            )
        channels[name] = data
        affines[name] = np.asarray(image.affine, dtype=float)
    first = names[0]
    for name in names[1:]:
        if channels[name].shape != channels[first].shape or not np.allclose(
            affines[name], affines[first], atol=1e-4
        ):
            raise ParticipantExcluded(
                reason, f"dixon/{name}.nii.gz is not on the grid of dixon/{first}.nii.gz"
            )
    try:
        lps_axes(affines[first])
    except ValueError as err:
        raise ParticipantExcluded(reason, f"dixon/{first}.nii.gz: {err}") from err
    return channels, affines[first]
