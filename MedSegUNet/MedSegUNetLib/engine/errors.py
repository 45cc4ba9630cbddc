"""User-facing errors of the MedSegUNet engine.

Every problem a user can fix (a missing file, a card that fails its schema, volumes that do not
overlap, a full disk, ...) is raised as a :class:`MedSegUNetError` with a one-line message that says
what is wrong and what to do. The command line prints that line without a traceback; the Slicer
module shows it in an error dialog; a batch writes it in the case's row.

The class says what kind of thing is wrong (:class:`CardError`, :class:`VolumeError`,
:class:`ModelFileError`, :class:`DownloadError`, ...), so a caller can tell them apart without
reading the text. Where the remedy names a control, the error holds it per surface
(:class:`Remedy`): ``str(error)`` words it for the command line, ``error.forSurface("slicer")`` for
the Slicer panel, ``error.forSurface("batch")`` for a cohort's row.
"""

from __future__ import annotations

import errno
import os


def firstLine(message: object) -> str:
    """The first non-empty line of an exception's text, for one-line messages."""
    text = str(message).strip()
    return text.splitlines()[0] if text else ""


SURFACES = ("cli", "slicer", "batch")


class Remedy(dict):
    """What to do, worded per surface: ``Remedy(cli="use --device cpu", slicer="choose the cpu device")``;
    a surface not given takes the command line's wording."""

    def __init__(self, cli: str, slicer: str | None = None, batch: str | None = None) -> None:
        super().__init__(cli=cli, slicer=slicer or cli, batch=batch or cli)

    def __reduce__(self):  # batch workers and Ray send errors between processes
        return (Remedy, (self["cli"], self["slicer"], self["batch"]))


class MedSegUNetError(Exception):
    """A problem with the user's input, explained in one line.

    Args:
        message: what is wrong (and, without ``remedy``, what to do).
        remedy: what to do when it names a control: the message is ``"{message}: {remedy}."``.
    """

    def __init__(self, message: str = "", remedy: Remedy | None = None) -> None:
        self.problem, self.remedy = message, remedy
        super().__init__(self.forSurface("cli") if remedy is not None else message)

    def __reduce__(self):
        return (type(self), (self.problem, self.remedy) if self.remedy is not None else self.args)

    def forSurface(self, surface: str) -> str:
        """The one-line message as ``surface`` (``cli``, ``slicer`` or ``batch``) says it."""
        if self.remedy is None:
            return str(self)
        return f"{self.problem}: {self.remedy[surface]}."


class CardError(MedSegUNetError):
    """A model card: missing, not JSON, against its schema, or not what the model needs."""


class ModelFileError(MedSegUNetError):
    """A model file: not a model, damaged, unsafe to load, or written by an incompatible torch."""


class VolumeError(MedSegUNetError):
    """An input volume, series or reference segmentation: unreadable, cut short, or not usable."""


class FileError(MedSegUNetError):
    """A file or folder given by path: missing, not a regular file, unreadable."""


class GeometryError(MedSegUNetError):
    """Volumes, series, ROI or grid that do not overlap, or cannot be put on one grid."""


class OutputError(MedSegUNetError):
    """An output: a refused path, one that is an input, or one that could not be written whole."""


class DeviceError(MedSegUNetError):
    """The device asked for is not there (no CUDA GPU, no MPS)."""


class OutOfMemoryError(MedSegUNetError):
    """The network or its arrays did not fit in memory."""


class CatalogError(MedSegUNetError):
    """The model catalog: unreadable, malformed, or without the model asked for."""


class DownloadError(MedSegUNetError):
    """A download or a published model's source: offline, stalled, too large, or a wrong checksum."""


class ModelImportError(MedSegUNetError):
    """An import (ONNX, TorchScript, Auto3DSeg, MONAI bundle) that cannot be done safely and exactly."""


class TrainingError(MedSegUNetError):
    """A training config, data set, checkpoint or export."""


class CohortError(MedSegUNetError):
    """A cohort: its cases, table, output folder or workers."""


class SceneError(MedSegUNetError):
    """The Slicer scene: nodes of another scene or class, transforms, outputs."""


class DependencyError(MedSegUNetError):
    """A Python package the Slicer module needs could not be installed or does not work."""


class UsageError(MedSegUNetError):
    """A command's options that do not fit together."""


# What to do when a run does not fit in memory, as each surface says it (written once).
MEMORY_REMEDY = Remedy(
    cli="use a smaller sw_batch_size or patch_size in the card, a smaller ROI, or --device cpu",
    slicer="use a smaller sw_batch_size or patch_size in the card, a smaller ROI, or the cpu device",
    batch="use a smaller sw_batch_size or patch_size in the card, fewer --workers, or --device cpu",
)


def outOfMemory(where: str) -> OutOfMemoryError:
    """The out-of-memory error of a run ``where`` (e.g. ``"on cuda while running the network"``)."""
    return OutOfMemoryError(f"Out of memory {where}", MEMORY_REMEDY)


def unavailableDevice(problem: str) -> DeviceError:
    """A device that is not there: ``problem``, then what to choose instead, per surface."""
    return DeviceError(problem, Remedy(cli="use --device cpu or auto", slicer="choose the cpu or auto device"))


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


__all__ = [
    "firstLine",
    "Remedy",
    "MedSegUNetError",
    "CardError",
    "ModelFileError",
    "VolumeError",
    "FileError",
    "GeometryError",
    "OutputError",
    "DeviceError",
    "OutOfMemoryError",
    "CatalogError",
    "DownloadError",
    "ModelImportError",
    "TrainingError",
    "CohortError",
    "SceneError",
    "DependencyError",
    "UsageError",
    "MEMORY_REMEDY",
    "outOfMemory",
    "unavailableDevice",
    "ProcessingCancelled",
    "Interrupted",
    "osErrorMessage",
]
