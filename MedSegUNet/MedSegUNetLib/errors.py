"""User-facing errors of the MedSegUNet engine.

Every problem a user can fix (a missing file, a card that fails its schema, volumes that do not
overlap, ...) is raised as :class:`MedSegUNetError` with a one-line message that says what is wrong
and what to do. The command line prints that line without a traceback; the Slicer module shows it
in an error dialog.
"""

from __future__ import annotations


def firstLine(message: object) -> str:
    """The first non-empty line of an exception's text, for one-line messages."""
    text = str(message).strip()
    return text.splitlines()[0] if text else ""


class MedSegUNetError(Exception):
    """A problem with the user's input, explained in one line."""


class ProcessingCancelled(MedSegUNetError):
    """The user cancelled the run; nothing was written."""

    def __init__(self, message: str = "Processing was cancelled; nothing was written.") -> None:
        super().__init__(message)
