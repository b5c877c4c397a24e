"""Exception types for problems a user can act on.

The command line prints these as ``myoflow: error: <message>`` (exit status 2) instead of
a traceback, so every message names what is wrong and where: the sheet line, the
participant, the file.
"""

from __future__ import annotations


class MyoflowError(Exception):
    """Base class for errors caused by input data or configuration, not by a bug."""


class ParticipantExcluded(MyoflowError):
    """One participant cannot go through a stage; the others go on.

    ``reason`` is a short code from the raising stage's table of reasons (e.g.
    ``myoflow.ingest.inventory.EXCLUSION_REASONS``) and ``detail`` says what was found, for
    ``exclusion.json``. Neither may hold identifiers from the DICOM headers.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
