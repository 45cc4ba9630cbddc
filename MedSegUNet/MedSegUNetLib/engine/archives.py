"""Zip archives (model files, wheels, bundles) read as untrusted data: bounded before they inflate.

A zip's declared sizes are the author's word: a 1.5 MB archive may declare, or actually inflate
to, 1.5 GiB. Every member is read here by streaming with a running count against a budget fixed
before the first byte (the caller's limit, and the free disk for what is written), and every way
a zip can be broken (not a zip, a member failing its CRC, an encrypted member, an unknown
compression, a truncated file) is one line naming the archive and what to do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import zipfile
from typing import Iterator

from .errors import MedSegUNetError, ModelFileError, OutputError, firstLine, osErrorMessage

_BLOCK = 1 << 20
# Errors zipfile raises for broken archives and members (RuntimeError: an encrypted member;
# NotImplementedError: a compression method it does not know).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, RuntimeError, NotImplementedError, ValueError)


@contextlib.contextmanager
def openArchive(path: str | os.PathLike, what: str) -> Iterator[zipfile.ZipFile]:
    """A zip archive open for reading; any fault of the archive while it is used is one line.

    Args:
        what: the archive as messages name it (e.g. "The bundle zip 'x.zip'").

    Raises:
        MedSegUNetError: unreadable, not a zip, or a member that is broken, encrypted or too large.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except ZIP_ERRORS as error:
        raise ModelFileError(f"{what} is not a readable zip archive ({_zipReason(error)}): download or export it again.") from None
    except OSError as error:
        raise ModelFileError(osErrorMessage(error, "read", path)) from None


def _zipReason(error: BaseException) -> str:
    text = firstLine(error)
    if isinstance(error, RuntimeError) and "encrypted" in text.lower():
        return "an encrypted member"
    if isinstance(error, NotImplementedError):
        return "a compression method that is not supported"
    return text[:120] or type(error).__name__


def readMember(archive: zipfile.ZipFile, member: zipfile.ZipInfo, limit: int, what: str) -> bytes:
    """A member's bytes, refused before it inflates past ``limit`` (declared or actual size).

    Raises:
        MedSegUNetError: a member larger than ``limit``; zip faults propagate to :func:`openArchive`.
    """
    _checkDeclared(member, limit, what)
    chunks, total = [], 0
    with archive.open(member) as stream:
        for block in iter(lambda: stream.read(_BLOCK), b""):
            total += len(block)
            if total > limit:
                raise _tooLarge(member, limit, what)
            chunks.append(block)
    return b"".join(chunks)


def extractMember(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: str, budget: "ExtractionBudget", what: str) -> None:
    """Stream one member into ``target`` (a new file), counting every byte against ``budget``.

    Raises:
        MedSegUNetError: the budget would be passed (the partial file is removed), or the disk fails.
    """
    _checkDeclared(member, budget.left, what)
    try:
        with archive.open(member) as stream, open(target, "xb") as output:
            for block in iter(lambda: stream.read(_BLOCK), b""):
                budget.spend(len(block), member, what)
                output.write(block)
    except OSError as error:
        _remove(target)
        raise OutputError(osErrorMessage(error, "write", target)) from None
    except BaseException:  # a passed budget, a broken member, an interruption: no partial file
        _remove(target)
        raise


class ExtractionBudget:
    """The bytes an extraction may still write: the caller's cap and 90 % of the free disk, fixed before it starts."""

    def __init__(self, folder: str | os.PathLike, cap: int) -> None:
        free = int(shutil.disk_usage(folder).free * 0.9)
        self.left = min(int(cap), free)
        self.reason = "the free disk space" if free < cap else f"the limit of {cap / 2**20:.0f} MiB"

    def spend(self, count: int, member: zipfile.ZipInfo, what: str) -> None:
        self.left -= count
        if self.left < 0:
            raise ModelFileError(
                f"{what}: member '{member.filename[:80]}' inflates past {self.reason}: nothing was kept; the archive is not what it claims "
                "to be."
            )


def _checkDeclared(member: zipfile.ZipInfo, limit: int, what: str) -> None:
    if member.file_size > limit:
        raise _tooLarge(member, limit, what)
    if member.flag_bits & 0x1:
        raise ModelFileError(f"{what}: member '{member.filename[:80]}' is encrypted: it cannot be read; use an unencrypted archive.")


def _tooLarge(member: zipfile.ZipInfo, limit: int, what: str) -> MedSegUNetError:
    return ModelFileError(
        f"{what}: member '{member.filename[:80]}' inflates to more than {limit / 2**20:.1f} MiB, more than it may hold: it is not read; "
        "the archive is not what it claims to be."
    )


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


__all__ = ["openArchive", "readMember", "extractMember", "ExtractionBudget"]
