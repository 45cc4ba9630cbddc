"""User-facing errors of the MedSegUNet engine.

Every problem a user can fix (a missing file, a card that fails its schema, volumes that do not
overlap, a full disk, ...) is raised as :class:`MedSegUNetError` with a one-line message that says
what is wrong and what to do. The command line prints that line without a traceback; the Slicer
module shows it in an error dialog.
"""

from __future__ import annotations

import errno
import os


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


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; raised from the signal handler so that ``finally`` blocks clean up.

    A ``BaseException`` like ``KeyboardInterrupt``, so that ``except Exception`` does not swallow it.
    """

    def __init__(self, signalNumber: int) -> None:
        super().__init__(signalNumber)
        self.signalNumber = signalNumber


# What to do about the operating-system errors a user can meet while writing or reading files.
_OS_ERROR_ADVICE = {
    errno.ENOSPC: "the disk is full: free space or write to another folder",
    errno.EDQUOT: "the disk quota is exceeded: free space or write to another folder",
    errno.EFBIG: "the file-size limit was reached: raise the limit (ulimit -f) or write a smaller output",
    errno.EROFS: "the file system is read-only: write to another folder",
    errno.EACCES: "permission denied: choose a folder you can write to, or fix its permissions",
    errno.EPERM: "the operation is not permitted: choose another folder, or fix its permissions",
    errno.EISDIR: "it is a folder: give a file name",
    errno.ENOTDIR: "a part of the path is not a folder: check the path",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.EIO: "an input/output error occurred: check the disk",
}


def osErrorMessage(error: OSError, action: str, path: str | os.PathLike) -> str:
    """One line for an ``OSError`` met while ``action``-ing ``path`` (e.g. "write", "read")."""
    advice = _OS_ERROR_ADVICE.get(error.errno or -1)
    if error.errno in (errno.EACCES, errno.EPERM) and action in ("read", "use", "open"):
        advice = "permission denied: make it readable to you (chmod), or copy it somewhere you can read"
    if advice is None:
        advice = (error.strerror or type(error).__name__).rstrip(".").lower()
    return f"Cannot {action} '{os.fspath(path)}': {advice}."
