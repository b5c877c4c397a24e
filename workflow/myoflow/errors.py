"""Exception types for problems a user can act on.

The command line prints these as ``myoflow: error: <message>`` (exit status 2) instead of
a traceback, so every message names what is wrong and where: the sheet line, the
participant, the file.
"""

from __future__ import annotations


class MyoflowError(Exception):
    """Base class for errors caused by input data or configuration, not by a bug."""
