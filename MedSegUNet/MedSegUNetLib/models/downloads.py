"""Downloads that keep nothing unless whole and checked: staged, SHA256-verified, renamed; a total
deadline (``MEDSEGUNET_DOWNLOAD_TIMEOUT``) however slowly bytes come, a minimum rate over a window
(``MEDSEGUNET_DOWNLOAD_MIN_RATE``: bytes per second, and optionally ``/SECONDS``, default 1024/60)
and a size cap (the catalog's ``bytes``); no empty folder left after a failure. The same bounds
hold for a package fetched by pip (:func:`runBoundedDownload`).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

from ..engine import settings
from ..engine.errors import DownloadError, ProcessingCancelled, firstLine
from ..engine.request import ProgressCallback

# The download's bounds come from settings: MEDSEGUNET_DOWNLOAD_TIMEOUT (one hour), MEDSEGUNET_DOWNLOAD_MIN_RATE
# (a link slower than 1 kB/s over a whole minute is a stall, not a download: it is ended rather than
# waited on for an hour) and MEDSEGUNET_DOWNLOAD_MAX_BYTES (4 GiB when an entry gives no size: the
# largest published model is 84 MB; an institution's larger models set another).


def transferText(done: int, total: int, seconds: float) -> str:
    """``12.3 of 80.0 MB, 5.1 MB/s, about 11 s left`` (without the total and time left when the size
    is unknown): what a log line or a bar says of a transfer."""
    rate = done / seconds if seconds > 0 else 0.0
    text = f"{done / 2**20:.1f}" + (f" of {total / 2**20:.1f}" if total else "") + " MB"
    if rate > 0:
        text += f", {rate / 2**20:.1f} MB/s"
        if total and total > done:
            text += f", about {(total - done) / rate:.0f} s left"
    return text


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
    maxBytes: int | None = None,
) -> None:
    """Fetch ``url`` to ``path``: staged, SHA256 checked, then renamed; nothing is kept otherwise.

    Args:
        progress: ``(fraction, message)`` per block (fraction 0 when the size is unknown).
        cancelEvent: checked between blocks; when set, :class:`ProcessingCancelled` is raised.
        log: told once connected (so that an offline user gets only the error line).
        timeout: seconds to connect, and the longest wait for any byte.
        totalSeconds: the most the whole download may take (default :func:`downloadDeadline`): a
            server that trickles bytes is given up on; so is one below :func:`minimumRate`.
        maxBytes: the most bytes the file may have (the catalog's ``bytes``; default
            :func:`downloadCap`): reading stops there, nothing is kept.

    Raises:
        MedSegUNetError: no network, an HTTP error, or a checksum mismatch (one line, with
            ``offlineHint``); ProcessingCancelled.
    """
    import urllib.error
    import urllib.request

    from ..engine.paths import sha256
    from ..engine.staging import atomicOutput

    path = Path(path)

    def verify(temporary: str) -> None:
        actual = sha256(temporary)
        if actual != checksum:
            raise DownloadError(
                f"Downloaded '{path.name}' has SHA256 {actual[:12]}… instead of {checksum[:12]}…: the file was not kept; retry later, or "
                f"{offlineHint}."
            )

    checkFileURL(url)
    created = _missingFolders(path.parent)
    guard = TransferGuard(f"Cannot download {what}", offlineHint, totalSeconds, maxBytes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        from ..engine.errors import osErrorMessage

        raise DownloadError(osErrorMessage(error, "create", path.parent)) from None
    try:
        with atomicOutput(path, verify=verify) as temporary:
            with open(temporary, "wb") as output:
                try:
                    with urllib.request.urlopen(url, timeout=timeout) as response:
                        if log:
                            log(f"Downloading {path.name} into {path.parent} (once)")
                        _copyResponse(response, output, path.name, guard, progress, cancelEvent)
                except (urllib.error.URLError, OSError, TimeoutError, ValueError) as error:
                    reason = getattr(error, "reason", None) or error
                    raise DownloadError(f"Cannot download {what} ({firstLine(reason)}); {offlineHint}.") from None
    except BaseException:
        _removeEmpty(created)
        raise


def _copyResponse(response, output, name: str, guard: "TransferGuard", progress, cancelEvent) -> None:
    """Copy an open HTTP response into ``output`` within ``guard``'s bounds, reporting progress."""
    total = int(response.headers.get("Content-Length") or 0)
    guard.checkSize(total)  # refused on its declared size, before a byte is stored
    done, started = 0, time.monotonic()
    # read1: one network read at a time, so the deadline is checked however slowly bytes come.
    for block in iter(lambda: response.read1(1 << 16), b""):
        if cancelEvent is not None and cancelEvent.is_set():
            raise ProcessingCancelled(f"The download of {name} was cancelled; nothing was kept.")
        done += len(block)
        guard.check(done)
        output.write(block)
        if progress is not None:
            progress(done / total if total else 0.0, f"Downloading {name}: {transferText(done, total, time.monotonic() - started)}")


class TransferGuard:
    """The bounds every transfer keeps: an overall deadline, a minimum rate over a window, a size cap.

    ``check(total)`` is called with the bytes received so far, at least every second (each block
    of a download; each poll of a pip process); it raises when a bound is passed.
    """

    def __init__(self, what: str, hint: str, totalSeconds: float | None = None, maxBytes: int | None = None) -> None:
        self.what, self.hint = what, hint
        self.limit = totalSeconds if totalSeconds is not None else downloadDeadline()
        self.rate, self.window = minimumRate()
        self.maxBytes = int(maxBytes) if maxBytes else downloadCap()
        self.started = time.monotonic()
        self.samples: list[tuple[float, int]] = [(self.started, 0)]

    def checkSize(self, total: int) -> None:
        """Refuse ``total`` bytes (received or declared) above the cap."""
        if total > self.maxBytes:
            raise DownloadError(
                f"{self.what}: it is larger than the {self.maxBytes} bytes it may have; nothing was kept; the server sends another file "
                "than the catalog names."
            )

    def check(self, total: int) -> None:
        self.checkSize(total)
        now = time.monotonic()
        if now - self.started > self.limit:
            raise DownloadError(
                f"{self.what}: it did not finish within {self.limit:g} s ({total} bytes came; {settings.DOWNLOAD_TIMEOUT.name} sets the "
                f"limit); nothing was kept; {self.hint}."
            )
        self.samples.append((now, total))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
            self.samples.pop(0)
        oldest, before = self.samples[0]
        if now - oldest >= self.window and total - before < self.rate * self.window:
            raise DownloadError(
                f"{self.what}: it stalled ({total - before} bytes in the last {self.window:g} s, below {self.rate:g} bytes/s; "
                f"{settings.DOWNLOAD_MIN_RATE.name} sets the minimum); nothing was kept; {self.hint}."
            )


def downloadCap() -> int:
    """The most bytes a download without a declared size may bring: ``MEDSEGUNET_DOWNLOAD_MAX_BYTES``, default 4 GiB."""
    value = settings.DOWNLOAD_MAX_BYTES.text()
    if not value.isdigit() or int(value) <= 0:
        raise DownloadError(f"{settings.DOWNLOAD_MAX_BYTES.name}={value!r} is not a whole number of bytes above 0.")
    return int(value)


def minimumRate() -> tuple[float, float]:
    """``MEDSEGUNET_DOWNLOAD_MIN_RATE`` as (bytes per second, window in seconds): ``1024`` or ``1024/60``; 0 turns it off."""
    value = settings.DOWNLOAD_MIN_RATE.text()
    defaultWindow = float(settings.DOWNLOAD_MIN_RATE.default.partition("/")[2])
    rate, _, window = value.partition("/")
    try:
        parsed = (float(rate), float(window) if window else defaultWindow)
    except ValueError:
        parsed = (-1.0, -1.0)
    if not (0 <= parsed[0] < float("inf") and 0 < parsed[1] < float("inf")):
        raise DownloadError(
            f"{settings.DOWNLOAD_MIN_RATE.name}={value!r} is not BYTES_PER_SECOND or BYTES_PER_SECOND/SECONDS (e.g. 1024/60)."
        )
    return parsed


def checkFileURL(url: str) -> None:
    """A ``file://`` source must be a regular file: reading a FIFO or a device would block or never end."""
    import stat
    import urllib.parse
    import urllib.request

    if not url.lower().startswith("file:"):
        return
    path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
    try:
        status = os.stat(path)
    except OSError:
        return  # urllib says what is missing, in the download's own line
    if not stat.S_ISREG(status.st_mode):
        raise DownloadError(f"'{url}' is not a regular file (a folder, pipe or device): a file:// source must name a file.")


def runBoundedDownload(
    command: list[str], folder: str, guard: TransferGuard, progress: Callable[[int, float], None] | None = None
) -> tuple[int, str]:
    """Run a fetching process (``pip download``) inside ``folder`` under the bounds of every download.

    The process runs with ``folder`` as its working folder and ``TMPDIR`` (nothing it leaves lands
    elsewhere; a relative name it is given resolves there), in a process group of its own, asked by
    the kernel to die with this process (Linux). Its progress is the bytes under ``folder``; it is
    ended with its whole group on any exit of ours: success, a passed bound, an exception or a signal.

    Returns:
        the exit status and standard error text.

    Raises:
        MedSegUNetError: a bound of ``guard`` is passed (the process group is ended first).
    """
    import subprocess
    import tempfile

    temporary = os.path.join(folder, "tmp")
    os.makedirs(temporary, exist_ok=True)
    environment = {**os.environ, "TMPDIR": temporary, "TEMP": temporary, "TMP": temporary}
    with tempfile.TemporaryFile(dir=folder) as errors:
        process = subprocess.Popen(
            command,
            cwd=folder,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
            preexec_fn=_dieWithParent(),
        )
        try:
            started = time.monotonic()
            while process.poll() is None:
                received = _bytesUnder(folder)
                guard.check(received)
                if progress is not None:
                    progress(received, time.monotonic() - started)
                try:
                    process.wait(timeout=0.25)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            _endGroup(process)
        errors.seek(0)
        return process.returncode, errors.read().decode("utf-8", "replace")


def _dieWithParent():
    """What the child runs before exec: ask for SIGKILL when its parent dies (Linux's PR_SET_PDEATHSIG),
    so that a ``kill -9`` of ours ends pip too. The C function is looked up here, in the parent:
    between fork and exec only async-signal-safe work is safe in a process with threads."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    number = int(signal.SIGKILL)
    return lambda: prctl(1, number)  # PR_SET_PDEATHSIG = 1


def _endGroup(process) -> None:
    """End a process started in its own session, and everything it started, then reap it."""
    import signal

    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        elif process.poll() is None:  # Windows: no process groups here; pip starts no children of its own
            process.kill()
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _bytesUnder(folder: str) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def downloadDeadline() -> float:
    """The most seconds one download may take: ``MEDSEGUNET_DOWNLOAD_TIMEOUT``, default one hour."""
    value = settings.DOWNLOAD_TIMEOUT.text()
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (0 < seconds < float("inf")):
        raise DownloadError(f"{settings.DOWNLOAD_TIMEOUT.name}={value!r} is not a number of seconds above 0.")
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


__all__ = [
    "transferText",
    "download",
    "TransferGuard",
    "downloadCap",
    "minimumRate",
    "checkFileURL",
    "runBoundedDownload",
    "downloadDeadline",
]
