"""The network in a worker process, so that Slicer's process never imports torch or MONAI.

Slicer's Python keeps the GIL while its Qt event loop idles, so a thread in Slicer's process runs
only in bursts (imports and numpy calls crawl), and a crash or an out-of-memory error in torch
would take Slicer down. The Slicer AI extensions (MONAIAuto3DSeg, TotalSegmentator, SlicerNNUnet)
run their networks in another process for the same reasons; so does MedSegUNet.

Protocol: the parent starts ``python -m MedSegUNetLib.worker`` (Slicer's ``PythonSlicer``, or
``sys.executable``) and writes one JSON request per line on its stdin; the worker answers with
JSON lines on stdout: ``{"progress": f, "message": m}`` while it works, then ``{"result": ...}``
or ``{"error": ..., "kind": ...}``. Volumes travel as uncompressed NRRD files in a temporary
folder, in world geometry (LPS, as ``SimpleITK`` reads them). The worker keeps the loaded model
between requests (a second run with the same model skips the imports and the load), exits when
its stdin closes or its parent dies, and is simply killed to cancel (within a second, at any
stage, imports included; the GPU memory goes with it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

from .errors import MedSegUNetError, ProcessingCancelled, firstLine

# How often the parent looks at the cancel event while it waits for the worker.
POLL_SECONDS = 0.1


class WorkerDied(MedSegUNetError):
    """The worker process ended while it was working (killed, out of memory, a native crash)."""


class WorkerProcess:
    """A warm worker process and the requests sent to it, one at a time.

    Args:
        executable: the Python to run the worker with (Slicer's ``PythonSlicer``; tests:
            ``sys.executable``).
        environment: extra environment variables.
    """

    def __init__(self, executable: str | None = None, environment: dict | None = None) -> None:
        self.executable = executable or sys.executable
        self.environment = environment or {}
        self.process: subprocess.Popen | None = None
        self._buffer = b""
        self._log = None
        self.starts = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the worker if it is not running (imports happen in the worker, not here)."""
        if self.alive:
            return
        self.close()
        environment = dict(os.environ)
        environment.update(self.environment)
        # The worker finds this package even when it is not installed (a Slicer extension folder).
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        environment["PYTHONPATH"] = os.pathsep.join([package, *[p for p in [environment.get("PYTHONPATH")] if p]])
        environment["PYTHONUNBUFFERED"] = "1"
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [self.executable, "-m", "MedSegUNetLib.worker", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=environment,
        )
        if hasattr(os, "set_blocking"):
            os.set_blocking(self.process.stdout.fileno(), False)
        self._buffer = b""
        self.starts += 1

    def close(self) -> None:
        """Stop the worker (it exits on closed stdin; killed if it does not within a second)."""
        process, self.process = self.process, None
        if process is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for stream in (process.stdout,):
                stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """End the worker now (cancel): the next request starts a fresh one."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.close()

    def _lastLogLine(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read().decode("utf-8", "replace").splitlines() if line.strip()]
        return lines[-1][:200] if lines else ""

    def send(self, request: dict) -> None:
        self.start()
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode("utf-8"))
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None

    def _died(self) -> WorkerDied:
        code = self.process.poll() if self.process is not None else None
        last = self._lastLogLine()
        why = f"it was killed by signal {-code}" if code is not None and code < 0 else f"it ended with status {code}"
        if code is not None and code < 0 and -code == 9:
            why += " (out of memory?)"
        self.close()
        return WorkerDied(f"The segmentation worker process stopped ({why}{'; ' + last if last else ''}): nothing was changed; run again, or choose --device cpu or a smaller ROI.")

    def readMessages(self, timeout: float = 0.0) -> list[dict]:
        """The complete JSON lines the worker wrote so far (waits up to ``timeout`` for the first)."""
        import select

        messages: list[dict] = []
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None:
                raise WorkerDied("The segmentation worker process is not running: run again.")
            stdout = self.process.stdout
            ready = True
            if hasattr(select, "select") and os.name != "nt":
                ready = bool(select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))[0])
            if ready:
                try:
                    chunk = os.read(stdout.fileno(), 1 << 16)
                except BlockingIOError:
                    chunk = None
                if chunk == b"" and self.process.poll() is not None:
                    raise self._died()
                if chunk:
                    self._buffer += chunk
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                if line.strip():
                    messages.append(json.loads(line.decode("utf-8")))
            if messages or time.monotonic() >= deadline:
                if not messages and self.process.poll() is not None:
                    raise self._died()
                return messages

    def poll(self, onProgress: Callable[[float, str], None] | None = None, cancelEvent: threading.Event | None = None, timeout: float = 0.0) -> dict | None:
        """Handle what the worker said so far: the answer of the request in flight, or None yet.

        Progress lines go to ``onProgress``; a set cancel event kills the worker at once.

        Raises:
            ProcessingCancelled: the cancel event was set (the worker is killed).
            MedSegUNetError: the worker's one-line error, or the worker died.
        """
        if cancelEvent is not None and cancelEvent.is_set():
            self.kill()
            raise ProcessingCancelled()
        for message in self.readMessages(timeout=timeout):
            if "progress" in message:
                if onProgress is not None:
                    onProgress(float(message["progress"]), str(message.get("message", "")))
            elif "result" in message:
                return message["result"]
            elif "error" in message:
                if message.get("kind") == "cancelled":
                    raise ProcessingCancelled()
                if message.get("kind") == "user":
                    raise MedSegUNetError(message["error"])
                raise MedSegUNetError(f"internal error in the worker: {message['error']}")
        return None

    def request(self, request: dict, onProgress: Callable[[float, str], None] | None = None, cancelEvent: threading.Event | None = None) -> dict:
        """Send a request and wait for its answer, passing progress on and honouring cancel (see :meth:`poll`)."""
        self.send(request)
        while True:
            answer = self.poll(onProgress, cancelEvent, POLL_SECONDS)
            if answer is not None:
                return answer


# ---------------------------------------------------------------------------------------------
# The worker's side
# ---------------------------------------------------------------------------------------------


def _watchParent(parent: int) -> None:
    """Exit when the parent process is gone (its pipes may stay open in a grandchild)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _write(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def handle(request: dict) -> dict:
    """Run one request in this process; used by the worker loop (and by tests directly)."""
    from . import jobfiles

    if request.get("command") == "ping":
        return {"pid": os.getpid()}
    if request.get("command") == "devices":
        try:
            import torch

            cuda = bool(torch.cuda.is_available())
            mps = getattr(torch.backends, "mps", None)
            return {"torch": torch.__version__, "cuda": cuda, "mps": bool(mps is not None and mps.is_available())}
        except Exception as error:  # a half-installed PyTorch fails in many ways
            raise MedSegUNetError(f"PyTorch does not work ({type(error).__name__}: {firstLine(error)}): reinstall it with the PyTorch Utils module.") from None
    if request.get("command") != "segment":
        raise MedSegUNetError(f"Unknown worker command '{request.get('command')}'.")
    return jobfiles.runRequest(request, lambda fraction, message: _write({"progress": fraction, "message": message}))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        threading.Thread(target=_watchParent, args=(int(argv[0]),), daemon=True).start()
    import warnings

    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.simplefilter("ignore", category)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            _write({"result": handle(json.loads(line))})
        except ProcessingCancelled as error:
            _write({"error": firstLine(error), "kind": "cancelled"})
        except MedSegUNetError as error:
            _write({"error": firstLine(error), "kind": "user"})
        except MemoryError:
            _write({"error": "out of memory: use a smaller sw_batch_size or patch_size, a smaller ROI, or the CPU", "kind": "user"})
        except Exception as error:  # reported to the parent, which shows one line
            _write({"error": f"{type(error).__name__}: {firstLine(error)}", "kind": "internal"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
