"""Making a participant's stitched channels again from its DICOM, after they were removed on
purpose (config ``keep.stitched``, :mod:`myoflow.core.kept_channels`).

A stage that reads channels (landmarks, segmentation, measure) builds its
:class:`~myoflow.core.participant_files.ParticipantFiles` with a :class:`DicomChannelSource`;
:func:`myoflow.core.participant_files.read_channels` asks it to restore what it is about to
read. The source converts the DICOM again only when a channel to be read was removed on
purpose, and then writes back every removed channel (one conversion serves every stage of
the run; the measure stage removes them again), after checking that this is the same
conversion:

- ``dixon/acquisition.json`` was written by the conversion these settings, this
  :data:`~myoflow.ingest.convert.CONVERT_VERSION`, pydicom version and DICOM path give
  (:func:`myoflow.ingest.convert.provenance`);
- the DICOM folder or zip still exists and still converts;
- each new file is the removed one, byte for byte
  (:func:`myoflow.core.kept_channels.adopt_regenerated`), and takes back its old
  modification time, so that no stage's outputs become stale because of it.

Anything else excludes the participant with reason
:data:`~myoflow.core.kept_channels.NOT_REGENERABLE` and a detail that says which check failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from myoflow.core.errors import ParticipantExcluded
from myoflow.core.kept_channels import (
    NOT_REGENERABLE,
    adopt_regenerated,
    conversion_provenance,
    missing_removed,
)
from myoflow.core.participant_files import ParticipantFiles
from myoflow.core.volume import Volume
from myoflow.ingest.settings import IngestSettings


@dataclass(frozen=True)
class DicomChannelSource:
    """Restores removed channels from the participant's DICOM folder or zip.

    Attributes:
        dicom_path: the participant's DICOM (resolved, as the sheet gives it).
        settings: the ingest settings the conversion ran with (config ``ingest``).
    """

    dicom_path: Path
    settings: IngestSettings

    def restore(self, files: ParticipantFiles, names: Sequence[str]) -> None:
        """Write again every removed channel if one of ``names`` was removed on purpose.

        Raises:
            ParticipantExcluded: :data:`~myoflow.core.kept_channels.NOT_REGENERABLE`.
        """
        missing = missing_removed(files)
        if not set(missing) & set(names):
            return
        # Loaded here: the stages import this module, pydicom is needed only to convert.
        from myoflow.ingest.convert import provenance
        from myoflow.ingest.prepare import STORAGE_DTYPE, prepare_participant

        what = f"dixon/{', '.join(missing)} removed after an earlier run (keep.stitched)"
        expected = provenance(self.dicom_path, self.settings)
        if conversion_provenance(files) != expected:
            raise ParticipantExcluded(
                NOT_REGENERABLE,
                f"{what}: dixon/acquisition.json was written by another conversion (ingest "
                "settings, myoflow or pydicom version, or DICOM path); run its conversion again",
            )
        if not self.dicom_path.exists():
            raise ParticipantExcluded(
                NOT_REGENERABLE, f"{what}: its DICOM {self.dicom_path} no longer exists"
            )
        try:
            prepared = prepare_participant(self.dicom_path, self.settings)
        except ParticipantExcluded as err:
            raise ParticipantExcluded(
                NOT_REGENERABLE,
                f"{what}: its DICOM no longer converts ({err.reason}: {err.detail})",
            ) from err
        affine = prepared.grid.affine_lps()
        for name in missing:
            Volume(prepared.stitched(name), affine).to_nifti(
                files.channel(name), dtype=STORAGE_DTYPE
            )
            adopt_regenerated(files, name)


def channel_source(member: Any, settings: IngestSettings | None) -> DicomChannelSource | None:
    """The source of a shard member's channels: its ``dicom_path`` and the ingest settings;
    None without settings or a DICOM path (removed channels then stay missing)."""
    dicom_path = getattr(member, "dicom_path", None)
    if settings is None or dicom_path is None:
        return None
    return DicomChannelSource(Path(dicom_path), settings)
