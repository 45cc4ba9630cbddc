"""Downloads that keep nothing unless whole and checked: staged, SHA256-verified, renamed; a total
deadline (``MEDSEGUNET_DOWNLOAD_TIMEOUT``) however slowly bytes come; no empty folder left after a failure.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

from ..engine.errors import MedSegUNetError, ProcessingCancelled, firstLine

ProgressCallback = Callable[[float, str], None]


DOWNLOAD_DEADLINE_VARIABLE = "MEDSEGUNET_DOWNLOAD_TIMEOUT"
DEFAULT_DOWNLOAD_SECONDS = 3600.0


def download(
    url: str,
    path: str | os.PathLike,
    checksum: str,
    what: str = "the file",
    offlineHint: str = "check the network and retry",
    progress: ProgressCallback | None = None,
    cancelEvent: threading.Event | None = None,
    log: Callable[[str], None] | None = None,
    timeout: float = 30.0,
    totalSeconds: float | None = None,
) -> None:
    """Fetch ``url`` to ``path``: staged, SHA256 checked, then renamed; nothing is kept otherwise.

    Args:
        progress: ``(fraction, message)`` per block (fraction 0 when the size is unknown).
        cancelEvent: checked between blocks; when set, :class:`ProcessingCancelled` is raised.
        log: told once connected (so that an offline user gets only the error line).
        timeout: seconds to connect, and the longest wait for any byte.
        totalSeconds: the most the whole download may take (default :func:`downloadDeadline`): a
            server that trickles bytes is given up on.

    Raises:
        MedSegUNetError: no network, an HTTP error, or a checksum mismatch (one line, with
            ``offlineHint``); ProcessingCancelled.
    """
    import urllib.error
    import urllib.request

    from ..engine.volumes import atomicOutput, sha256

    path = Path(path)

    def verify(temporary: str) -> None:
        actual = sha256(temporary)
        if actual != checksum:
            raise MedSegUNetError(
                f"Downloaded '{path.name}' has SHA256 {actual[:12]}… instead of {checksum[:12]}…: the file was not kept; retry later, or {offlineHint}."
            )

    created = _missingFolders(path.parent)
    limit = totalSeconds if totalSeconds is not None else downloadDeadline()
    deadline = time.monotonic() + limit
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        from ..engine.errors import osErrorMessage

        raise MedSegUNetError(osErrorMessage(error, "create", path.parent)) from None
    try:
        with atomicOutput(path, verify=verify) as temporary:
            with open(temporary, "wb") as output:
                try:
                    with urllib.request.urlopen(url, timeout=timeout) as response:
                        if log:
                            log(f"Downloading {path.name} into {path.parent} (once)")
                        total = int(response.headers.get("Content-Length") or 0)
                        done = 0
                        # read1: one network read at a time, so the deadline is checked however slowly bytes come.
                        for block in iter(lambda: response.read1(1 << 16), b""):
                            if cancelEvent is not None and cancelEvent.is_set():
                                raise ProcessingCancelled(f"The download of {path.name} was cancelled; nothing was kept.")
                            if time.monotonic() > deadline:
                                raise MedSegUNetError(
                                    f"Cannot download {what}: it did not finish within {limit:g} s ({done} bytes came; {DOWNLOAD_DEADLINE_VARIABLE} sets the limit); "
                                    f"nothing was kept; {offlineHint}."
                                )
                            output.write(block)
                            done += len(block)
                            if progress is not None:
                                progress(done / total if total else 0.0, f"Downloading {path.name}: {done / 2**20:.1f} MB")
                except (urllib.error.URLError, OSError, TimeoutError, ValueError) as error:
                    reason = getattr(error, "reason", None) or error
                    raise MedSegUNetError(f"Cannot download {what} ({firstLine(reason)}); {offlineHint}.") from None
    except BaseException:
        _removeEmpty(created)
        raise


def downloadDeadline() -> float:
    """The most seconds one download may take: ``MEDSEGUNET_DOWNLOAD_TIMEOUT``, default one hour."""
    value = os.environ.get(DOWNLOAD_DEADLINE_VARIABLE, "")
    try:
        seconds = float(value) if value else DEFAULT_DOWNLOAD_SECONDS
    except ValueError:
        seconds = -1.0
    if not (0 < seconds < float("inf")):
        raise MedSegUNetError(f"{DOWNLOAD_DEADLINE_VARIABLE}={value!r} is not a number of seconds above 0.")
    return seconds


def _missingFolders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first (a failed download removes them)."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _removeEmpty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another download), or gone
            break
