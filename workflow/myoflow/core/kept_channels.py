"""Which stitched Dixon channels a participant keeps once every stage has read them
(config ``keep.stitched``), and the record of those removed on purpose.

The four stitched channels are ~80 MB of a full-size participant's ~85 MB (docs/storage.md).
After the measure stage, the last stage that reads them, :func:`remove_channels` removes
those not kept. Before unlinking, it writes ``dixon/removed.json``: per removed channel its
sha256 (of the file's bytes), size and modification time, and the provenance of the
conversion that wrote it (from ``dixon/acquisition.json``). That record lets

- the stages' skip logic, which compares modification times, take a removed channel's
  recorded time for the file's (:func:`channel_mtime_ns`): outputs stay current while the
  channels are absent on purpose;
- the conversion's skip logic count a removed channel as present (:func:`channel_kept_or_removed`),
  so a participant is not converted again on every run;
- a channel made again from the DICOM (:mod:`myoflow.ingest.regenerate`) be checked to be
  the very file removed, byte for byte, and take back its old modification time
  (:func:`adopt_regenerated`), so that making it again redoes nothing downstream.

A record whose conversion provenance is not that of ``dixon/acquisition.json`` (the
participant was converted again since) is ignored: its channels count as missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from myoflow.core.errors import ParticipantExcluded
from myoflow.core.io import write_json
from myoflow.core.participant_files import CHANNELS, ParticipantFiles

KEEP_STITCHED = {"none": (), "water_fat": ("water", "fat"), "all": CHANNELS}
"""Values of config ``keep.stitched``: the channels each keeps after the measure stage."""

KEPT_WHEN_EXCLUDED = ("water", "fat")
"""Channels an excluded participant keeps whatever ``keep.stitched`` says: what a person
looks at to see why (and to place its landmarks by hand, config ``landmarks.supplied``)."""

NOT_REGENERABLE = "dixon_not_regenerable"
"""The exclusion reason of a participant whose removed channels cannot be made again."""

NOT_REGENERABLE_MEANING = (
    "a stitched channel removed after an earlier run (config keep.stitched) is needed again "
    "and cannot be made again as it was: the DICOM is gone or no longer converts, the "
    "conversion's settings or version changed, or the new file differs from the removed one"
)


def kept_channels(keep_stitched: str, excluded: bool) -> tuple[str, ...]:
    """The channels a participant keeps under config ``keep.stitched``.

    Raises:
        ValueError: ``keep_stitched`` is not a key of :data:`KEEP_STITCHED`.
    """
    if keep_stitched not in KEEP_STITCHED:
        raise ValueError(
            f"keep.stitched must be one of {list(KEEP_STITCHED)}, got {keep_stitched!r}"
        )
    kept = set(KEEP_STITCHED[keep_stitched]) | (set(KEPT_WHEN_EXCLUDED) if excluded else set())
    return tuple(c for c in CHANNELS if c in kept)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def conversion_provenance(files: ParticipantFiles) -> Any:
    """The provenance of the participant's conversion (None without a readable record)."""
    try:
        return json.loads(files.acquisition.read_text()).get("provenance")
    except (OSError, ValueError, AttributeError):
        return None


def removed_channels(files: ParticipantFiles) -> dict[str, dict[str, Any]]:
    """The channels removed on purpose after the participant's current conversion, by name:
    ``sha256``, ``bytes``, ``mtime_ns``; empty without a record or with a stale one."""
    try:
        record = json.loads(files.removed.read_text())
    except (OSError, ValueError):
        return {}
    conversion = conversion_provenance(files)
    if not isinstance(record, dict) or conversion is None or record.get("conversion") != conversion:
        return {}
    channels = record.get("channels")
    return dict(channels) if isinstance(channels, dict) else {}


def remove_channels(files: ParticipantFiles, keep: Sequence[str]) -> list[str]:
    """Remove the stitched channels not in ``keep``; return those removed.

    The record (``dixon/removed.json``) is written before any file is unlinked, so a run
    stopped in between leaves files that are present (a present file wins over the
    record). Nothing is removed from a participant without a readable conversion record.
    """
    present = [c for c in CHANNELS if c not in keep and files.channel(c).is_file()]
    conversion = conversion_provenance(files)
    if not present or conversion is None:
        return []
    channels = removed_channels(files)
    for name in present:
        path = files.channel(name)
        stat = path.stat()
        channels[name] = {
            "sha256": file_sha256(path),
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
    write_json(files.removed, {"conversion": conversion, "channels": channels})
    for name in present:
        files.channel(name).unlink(missing_ok=True)
    return present


def channel_mtime_ns(files: ParticipantFiles, name: str) -> int:
    """A channel's modification time (ns), or for one removed on purpose the time its file
    had when removed.

    Raises:
        FileNotFoundError: the channel is neither there nor removed on purpose.
    """
    try:
        return files.channel(name).stat().st_mtime_ns
    except FileNotFoundError:
        removed = removed_channels(files).get(name)
        if removed is None:
            raise
        return int(removed["mtime_ns"])


def channel_kept_or_removed(files: ParticipantFiles, name: str) -> bool:
    """Whether a channel is there or was removed on purpose after the current conversion."""
    return files.channel(name).is_file() or name in removed_channels(files)


def missing_removed(files: ParticipantFiles) -> list[str]:
    """Channels removed on purpose and not there now (those a restore must write)."""
    removed = removed_channels(files)
    return [name for name in CHANNELS if name in removed and not files.channel(name).is_file()]


def adopt_regenerated(files: ParticipantFiles, name: str) -> None:
    """Accept a channel just written again at its place if it is the file removed, byte for
    byte, and give it back the removed file's modification time.

    Raises:
        ParticipantExcluded: :data:`NOT_REGENERABLE`, the new file differs (it is removed).
    """
    expected = removed_channels(files)[name]
    path = files.channel(name)
    found = file_sha256(path)
    if found != expected["sha256"]:
        path.unlink(missing_ok=True)
        raise ParticipantExcluded(
            NOT_REGENERABLE,
            f"dixon/{name}.nii.gz made again from the DICOM differs from the one removed "
            f"(sha256 {found[:12]} instead of {expected['sha256'][:12]}): the conversion gives "
            "other bytes here (another numpy, nibabel or zlib?); to convert it again, delete "
            "dixon/acquisition.json and run with --forcerun convert_shard",
        )
    os.utime(path, ns=(expected["mtime_ns"], expected["mtime_ns"]))


def folder_bytes(folder: str | os.PathLike[str]) -> dict[str, int]:
    """Bytes of every file under ``folder``, by path relative to it (for docs/storage.md)."""
    root = Path(folder)
    return {
        str(path.relative_to(root)): path.stat().st_size
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }
