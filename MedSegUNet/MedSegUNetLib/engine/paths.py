"""Paths of volumes and outputs: suffixes, regular files only (a FIFO would block a read), checksums."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Sequence

from .errors import FileError, osErrorMessage

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
LABELMAP_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".mhd", ".seg.nrrd")


# Data files that a header-only format (.mhd, .nhdr) may name beside it.
_COMPANION_SUFFIXES = {".mhd": (".raw", ".zraw"), ".nhdr": (".raw", ".raw.gz")}


def pathSuffix(path: str | os.PathLike) -> str:
    """The file type suffix, with the double suffixes ``.nii.gz`` and ``.seg.nrrd`` kept whole."""
    name = Path(path).name.lower()
    for double in (".nii.gz", ".seg.nrrd"):
        if name.endswith(double):
            return double
    return Path(name).suffix


@contextlib.contextmanager
def nativeMessages() -> Iterator[list[str]]:
    """Capture what ITK, GDCM and MetaIO print on the process's stderr (file descriptor 2).

    Their C++ code writes warnings and errors straight to the descriptor, which would break the
    command line's one-line errors. The captured lines are appended to the yielded list, so a
    caller can put the relevant one into its own message. Outside the main thread nothing is
    captured (the descriptor is shared by the whole process).
    """
    lines: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield lines
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield lines
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def _nativeReason(error: Exception | None, captured: Sequence[str]) -> str:
    """The most telling line of a native library's complaint, for a one-line message."""
    text = str(error).strip().splitlines() if error is not None else []
    lines = [line.replace("sitk::ERROR:", "").strip() for line in [*captured, *text]]
    candidates = [
        line for line in lines if line and "Reason: No such file" not in line and not line.startswith("Exception thrown in SimpleITK")
    ]
    for line in candidates:
        lowered = line.lower()
        if any(
            word in lowered for word in ("not read completely", "expected", "fread", "wrote only", "error", "cannot", "failed", "unable")
        ):
            return line.strip()[:160]
    return (candidates[-1] if candidates else "unknown reason").strip()[:160]


def checkRegularFile(path: str | os.PathLike, what: str = "Volume") -> os.stat_result:
    """Refuse a path that is missing or is neither a regular file nor a folder (FIFO, device, socket).

    Opening a FIFO blocks until some other process writes to it, so it is refused before any read.

    Raises:
        MedSegUNetError: missing path or special file.
    """
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise FileError(f"{what} '{os.fspath(path)}' does not exist: check the path.") from None
    except OSError as error:
        raise FileError(osErrorMessage(error, "read", path)) from None
    if not (stat.S_ISREG(status.st_mode) or stat.S_ISDIR(status.st_mode)):
        raise FileError(f"{what} '{os.fspath(path)}' is not a regular file or folder (a pipe or device): give a file or a DICOM folder.")
    if not os.access(path, os.R_OK | (os.X_OK if stat.S_ISDIR(status.st_mode) else 0)):
        raise FileError(osErrorMessage(PermissionError(errno.EACCES, "Permission denied"), "read", path))
    return status


def readRegularText(path: str | os.PathLike, what: str, limit: int = 64 * 2**20) -> str:
    """The UTF-8 text of a file that must be a regular file (a manifest, a summary, a record):
    :func:`readRegularBytes`, decoded.

    Raises:
        MedSegUNetError: as :func:`readRegularBytes`, or not UTF-8.
    """
    try:
        return readRegularBytes(path, what, limit).decode("utf-8")
    except UnicodeDecodeError:
        raise FileError(f"{what} '{os.fspath(path)}' is not UTF-8 text.") from None


def readRegularBytes(path: str | os.PathLike, what: str, limit: int = 64 * 2**20) -> bytes:
    """The bytes of a file that must be a regular file, at most ``limit`` of them.

    It is opened without blocking and checked on the open descriptor, so a FIFO or device put
    there (even between a check and the open) is refused instead of blocking the run.

    Raises:
        MedSegUNetError: missing, unreadable (permission denied), not a regular file, or larger than ``limit``.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileError(f"{what} '{os.fspath(path)}' does not exist.") from None
    except OSError as error:
        raise FileError(osErrorMessage(error, "read", path)) from None
    with os.fdopen(descriptor, "rb") as stream:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise FileError(f"{what} '{os.fspath(path)}' is not a regular file (a folder, pipe or device).")
        if status.st_size > limit:
            raise FileError(f"{what} '{os.fspath(path)}' is larger than {limit / 2**20:g} MiB.")
        try:
            return stream.read(limit + 1)
        except OSError as error:
            raise FileError(osErrorMessage(error, "read", path)) from None


def sha256(path: str | os.PathLike) -> str:
    """The SHA256 of a file, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def companionPaths(path: str | os.PathLike) -> list[str]:
    """Data files that a header-only output (``.mhd``) writes beside itself."""
    path = os.fspath(path)
    suffix = pathSuffix(path)
    stem = path[: -len(suffix)] if suffix else path
    return [stem + extra for extra in _COMPANION_SUFFIXES.get(suffix, ())]


def _realPath(path: str | os.PathLike) -> str:
    return os.path.realpath(splitSeriesSelector(os.fspath(path))[0])


def splitSeriesSelector(spec: str) -> tuple[str, str | None]:
    """``FOLDER::SERIES`` on the command line picks a series of a multi-series DICOM folder."""
    if "::" in spec:
        path, series = spec.split("::", 1)
        return path, series
    return spec, None


__all__ = [
    "VOLUME_SUFFIXES",
    "pathSuffix",
    "nativeMessages",
    "checkRegularFile",
    "readRegularText",
    "readRegularBytes",
    "sha256",
    "companionPaths",
    "splitSeriesSelector",
]
