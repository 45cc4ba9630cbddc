"""Outputs that appear whole or not at all: written under their final names in a hidden staging
folder, verified (images read back, text by size), then renamed together with SIGINT and SIGTERM held.
Outputs never overwrite inputs or each other (real paths compared).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from typing import Callable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import MedSegUNetError, OutputError, osErrorMessage
from .filecheck import checkCompleteFile
from .paths import _nativeReason, _realPath, companionPaths, nativeMessages, pathSuffix


def checkOutputPath(path: str | os.PathLike, allowed: Sequence[str] | None = None) -> None:
    """Fail early, before any work, on an output path that cannot be written.

    Raises:
        MedSegUNetError: missing or read-only folder, a folder where the file should go, or an
            unsupported suffix.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"Output folder '{folder}' does not exist: create it first or choose another path.")
    if os.path.isdir(path):
        raise OutputError(f"Output '{path}' is a folder: give a file name inside it.")
    if allowed is not None and pathSuffix(path) not in allowed:
        raise OutputError(f"Output '{path}' must end with one of {', '.join(allowed)}.")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"Cannot write to output folder '{folder}': it is read-only for you; choose another folder.")


def checkDistinctPaths(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, str | os.PathLike | Sequence | None]) -> None:
    """Refuse outputs that would overwrite an input or each other, comparing real paths.

    Args:
        outputs: option → path (None for an output not asked for).
        inputs: option → path or list of paths (volumes, DICOM folders, model, checkpoint, ...);
            an output inside an input folder is refused too, since it would change that input.

    Raises:
        MedSegUNetError: one line naming both options.
    """
    inputPaths: list[tuple[str, str]] = []
    for option, value in inputs.items():
        for item in [value] if isinstance(value, (str, os.PathLike)) else list(value or ()):
            if item:
                inputPaths.append((option, _realPath(item)))
    seen: dict[str, str] = {}
    for option, value in outputs.items():
        if not value:
            continue
        for candidate in [os.fspath(value), *companionPaths(value)]:
            real = _realPath(candidate)
            for inputOption, inputPath in inputPaths:
                if real == inputPath or (os.path.isdir(inputPath) and real.startswith(inputPath.rstrip(os.sep) + os.sep)):
                    where = "is" if real == inputPath else "lies inside"
                    raise OutputError(
                        f"{option} '{os.fspath(value)}' {where} the input given as {inputOption}: writing it would change that input; "
                        "choose another output path."
                    )
            if real in seen and seen[real] != option:
                raise OutputError(f"{option} and {seen[real]} name the same file '{os.fspath(value)}': give each output its own path.")
            seen[real] = option


@contextlib.contextmanager
def signalsDeferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while outputs are renamed, so that a run's outputs appear together."""
    blockable = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held) if blockable else None
    try:
        yield
    finally:
        if blockable:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StagedOutputs:
    """Outputs of one run, written under hidden staging folders and renamed into place together.

    Each output gets its own staging folder beside its destination, holding the file under its
    final name (so that multi-file formats such as ``.mhd`` keep valid references). On success
    every output is verified, then all are renamed with SIGINT/SIGTERM held; on any error or
    interruption every staging folder is removed and no destination is touched.

    Example::

        with StagedOutputs() as outputs:
            writeImageFile(image, outputs.stage("seg.nii.gz", verify=imageVerifier(image)))
            writeTextFile(csvText, outputs.stage("stats.csv"))
    """

    def __init__(self) -> None:
        self._staged: list[tuple[str, str, str, Callable[[str], None] | None]] = []

    def stage(self, path: str | os.PathLike, allowed: Sequence[str] | None = None, verify: Callable[[str], None] | None = None) -> str:
        """The temporary path to write ``path`` to.

        Args:
            verify: called with the temporary path before anything is renamed; raises when the
                written file is not what was meant.
        """
        path = os.fspath(path)
        checkOutputPath(path, allowed)
        folder = os.path.dirname(os.path.abspath(path))
        try:
            staging = tempfile.mkdtemp(prefix=".medsegunet-", dir=folder)
        except OSError as error:
            raise OutputError(osErrorMessage(error, "write", path)) from None
        temporary = os.path.join(staging, os.path.basename(path))
        self._staged.append((path, staging, temporary, verify))
        return temporary

    def commit(self) -> None:
        """Verify every staged output, then rename all into place."""
        for path, _, temporary, verify in self._staged:
            if not os.path.isfile(temporary):
                raise OutputError(f"Output '{path}' was not written: nothing was kept.")
            if verify is not None:
                verify(temporary)
        with signalsDeferred():
            for path, staging, temporary, _ in self._staged:
                folder = os.path.dirname(os.path.abspath(path))
                try:
                    for name in sorted(os.listdir(staging)):
                        if name != os.path.basename(temporary):
                            os.replace(os.path.join(staging, name), os.path.join(folder, name))
                    os.replace(temporary, path)
                except OSError as error:
                    raise OutputError(osErrorMessage(error, "write", path)) from None

    def discard(self) -> None:
        for _, staging, _, _ in self._staged:
            shutil.rmtree(staging, ignore_errors=True)
        self._staged = []

    def __enter__(self) -> "StagedOutputs":
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        try:
            if kind is None:
                self.commit()
            elif issubclass(kind, OSError) and self._staged:
                raise OutputError(osErrorMessage(error, "write", self._staged[-1][0])) from None
        finally:
            self.discard()
        return False


@contextlib.contextmanager
def atomicOutput(path: str | os.PathLike, verify: Callable[[str], None] | None = None) -> Iterator[str]:
    """Yield a temporary path for ``path``; it replaces ``path`` only if the block succeeds.

    The temporary path has the final file name (inside a hidden staging folder), so writers that
    pick a format by suffix, and multi-file formats, work unchanged.
    """
    with StagedOutputs() as outputs:
        yield outputs.stage(path, verify=verify)


def imageVerifier(expected: sitk.Image) -> Callable[[str], None]:
    """A check that a written image file reads back whole, with ``expected``'s size and voxels."""

    def verify(path: str) -> None:
        try:
            checkCompleteFile(path)
            with nativeMessages() as captured:
                try:
                    written = sitk.ReadImage(path)
                except RuntimeError as error:
                    raise OutputError(f"'{os.path.basename(path)}' cannot be read back ({_nativeReason(error, captured)})") from None
        except MedSegUNetError as error:
            raise OutputError(
                noSpaceMessage(path)
                or f"The output '{os.path.basename(path)}' was written incompletely ({str(error).rstrip('.')}); nothing was kept: check "
                "the free disk space."
            ) from None
        if written.GetPixelID() != expected.GetPixelID():
            written = sitk.Cast(written, expected.GetPixelID())
        # Voxel for voxel (an array comparison, many times faster than hashing both images).
        if written.GetSize() != expected.GetSize() or not np.array_equal(
            sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(expected), equal_nan=True
        ):
            raise OutputError(
                f"The output '{os.path.basename(path)}' reads back different from what was written; nothing was kept: check the disk."
            )

    return verify


_WRITE_FAILED = (
    "the disk is full, a file-size limit was reached, or the folder is not writable; nothing was kept: free space, check "
    "'ulimit -f' and the folder's permissions."
)


def writeImageFile(image: sitk.Image, path: str, compress: bool = True) -> None:
    """``sitk.WriteImage`` that raises on a short write (ITK's NIfTI writer only prints it)."""
    with nativeMessages() as captured:
        try:
            sitk.WriteImage(image, path, compress)
        except RuntimeError:
            # ITK does not say why (its message names only the staging path).
            raise OutputError(noSpaceMessage(path) or f"Cannot write '{os.path.basename(path)}': {_WRITE_FAILED}") from None
    short = [line for line in captured if "wrote only" in line.lower()]
    if short:
        raise OutputError(noSpaceMessage(path) or f"Cannot write '{os.path.basename(path)}': only part of it was written; {_WRITE_FAILED}")


# Below this, a write that failed or came out short is taken to have met a full disk.
_NEARLY_FULL_BYTES = 1 << 20


def noSpaceMessage(path: str) -> str | None:
    """ "No space left" for a write that failed where the disk is (nearly) full, else None: ITK's
    writers do not pass ENOSPC on, so the free space is what tells a full disk from other faults."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= _NEARLY_FULL_BYTES:
        return None
    return (
        f"Cannot write '{os.path.basename(path)}': no space left on the disk of '{folder}' ({free // 1024} KiB free); nothing was kept: "
        "free space or write to another folder."
    )


def textVerifier(text: str) -> Callable[[str], None]:
    """A check that a written text file holds all of ``text``."""
    size = len(text.encode("utf-8"))

    def verify(path: str) -> None:
        if os.path.getsize(path) != size:
            raise OutputError(
                noSpaceMessage(path)
                or f"The output '{os.path.basename(path)}' was written incompletely; nothing was kept: check the free disk space."
            )

    return verify


def writeTextFile(text: str, path: str) -> None:
    try:
        with open(path, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
    except OSError as error:
        raise OutputError(osErrorMessage(error, "write", path)) from None


def writeVolume(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write an image atomically (staged, read back, then renamed)."""
    with atomicOutput(path, verify=imageVerifier(image)) as temporary:
        writeImageFile(image, temporary, compress)


def writeText(text: str, path: str | os.PathLike) -> None:
    """Write a text file atomically."""
    with atomicOutput(path, verify=textVerifier(text)) as temporary:
        writeTextFile(text, temporary)


__all__ = [
    "checkOutputPath",
    "checkDistinctPaths",
    "signalsDeferred",
    "StagedOutputs",
    "atomicOutput",
    "imageVerifier",
    "writeImageFile",
    "noSpaceMessage",
    "textVerifier",
    "writeTextFile",
    "writeVolume",
    "writeText",
]
