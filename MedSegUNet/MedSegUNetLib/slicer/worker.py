"""The network in a worker process, so that Slicer's process never imports torch or MONAI.

Slicer's Python keeps the GIL while its Qt event loop idles, so a thread in Slicer's process runs
only in bursts (imports and numpy calls crawl), and a crash or an out-of-memory error in torch
would take Slicer down. The Slicer AI extensions (MONAIAuto3DSeg, TotalSegmentator, SlicerNNUnet)
run their networks in another process for the same reasons; so does MedSegUNet.

In Slicer the worker is started with ``PythonSlicer``, which is CTKAppLauncher: a launcher that
starts the real interpreter (``python-real``) as its *child*. So the worker's parent is the
launcher, not Slicer, and signalling the launcher alone leaves ``python-real`` running. Hence:

- the worker's life is tied to its stdin, not to a parent PID: the only write end of that pipe is
  held by the process that started it (Slicer), so the worker exits on EOF (Slicer closed it or
  died) or on a ``quit`` line; a thread watches stdin while a job runs, so EOF or a ``cancel``
  line ends it at any stage. (No parent-death signal: on Linux it fires when the *thread* that
  started the process ends, and the warm worker outlives the thread of the run that started it);
- the worker is started as a process group of its own (POSIX: a new session; Windows: a new
  process group without a console window) and cancel and close end the whole group (launcher and
  ``python-real``; on Windows ``taskkill /T /F``), which frees its GPU memory;
- the parent reads the worker's lines on a reader thread into a queue that the caller drains
  without blocking (as Slicer's ``launchConsoleProcess`` and MONAIAuto3DSeg do): the same code
  on every OS, no ``select``.

Protocol: the parent writes one JSON request per line on the worker's stdin, each with an ``id``;
the worker answers with JSON lines carrying that id: ``{"progress": f, "message": m}`` while it
works, then ``{"result": ...}`` or ``{"error": ..., "kind": ...}``. The answers go out on a channel
of their own: before anything is imported the worker moves the pipe it was given as stdout to a
private descriptor and points descriptor 1 (and ``sys.stdout``) at its log, so a line that a
library prints, from Python or from C (a native library), lands in the log. Each answer also
starts with :data:`PROTOCOL_PREFIX`: what reaches the pipe before the worker's own code runs (a
``sitecustomize`` banner, the launcher) goes to the log too, never taken for an answer. Volumes travel as
uncompressed NRRD files in a temporary folder, in world geometry (LPS, as ``SimpleITK`` reads
them). The worker keeps the loaded model between requests (a second run with the same model skips
the imports and the load).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Callable

from ..engine import errors
from ..engine.errors import DependencyError, MedSegUNetError, ProcessingCancelled, firstLine, outOfMemory

# How long a blocking request waits for each message before it looks at the cancel event again.
POLL_SECONDS = 0.1
# How long close() lets the worker end by itself (stdin EOF) before it ends the process tree.
CLOSE_SECONDS = 2.0
# Windows process-creation flags (subprocess has them as constants on Windows only).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
# What CTKAppLauncher (PythonSlicer) prints when its child was killed by a signal; it then exits 1.
LAUNCHER_ABNORMAL_EXIT = "exit abnormally"
# The first message of every request, before any import: the moment a request has begun.
BEGUN_MESSAGE = "Starting the worker"
# What every answer line starts with (a record separator and a name no library prints).
PROTOCOL_PREFIX = b"\x1emedsegunet "


class WorkerDied(MedSegUNetError):
    """The worker process ended while it was working (killed, out of memory, a native crash)."""


def _readLines(stream, into: queue.Queue) -> None:
    """Reader thread: every line of ``stream`` into ``into``, then None at EOF."""
    try:
        for line in iter(stream.readline, b""):
            into.put(line)
    except (OSError, ValueError):  # the stream was closed under us (close/kill)
        pass
    into.put(None)


def endProcessTree(process: subprocess.Popen) -> None:
    """End a worker started by :class:`WorkerProcess` and everything it started (launcher and child).

    POSIX: SIGKILL to its process group (its own session). Windows: ``taskkill /T /F`` ends the tree.
    """
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True, creationflags=CREATE_NO_WINDOW)
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # the whole group is gone already
            pass
    try:
        process.kill()
    except OSError:
        pass
    process.wait()


class WorkerProcess:
    """A warm worker process and the requests sent to it, one at a time.

    Args:
        executable: the Python to run the worker with (Slicer's ``PythonSlicer``, a launcher
            whose child runs Python; default ``sys.executable``).
        environment: extra environment variables.
    """

    def __init__(self, executable: str | None = None, environment: dict | None = None) -> None:
        self.executable = executable or sys.executable
        self.environment = environment or {}
        self.process: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._answers: dict[int, dict] = {}
        self._progressLines: dict[int, list] = {}
        self._ids = itertools.count(1)
        self._log = None
        self._folder: str | None = None
        self.starts = 0
        # The PID of the process that runs Python (``python-real`` under a launcher), once it spoke.
        self.interpreterPid: int | None = None

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
        from ..engine.settings import MODULE_FOLDER  # MedSegUNet/ (or qt-scripted-modules), holding MedSegUNetLib

        environment["PYTHONPATH"] = os.pathsep.join([str(MODULE_FOLDER), *[p for p in [environment.get("PYTHONPATH")] if p]])
        environment["PYTHONUNBUFFERED"] = "1"
        self._log = tempfile.TemporaryFile()
        # An empty working folder of its own: `python -m` puts the working folder first on sys.path,
        # and Slicer's (or a shared temporary folder) could hold a module named like a package.
        self._folder = tempfile.mkdtemp(prefix="medsegunet-worker-")
        options: dict = {"start_new_session": True}
        if os.name == "nt":
            options = {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
        self.process = subprocess.Popen(
            [self.executable, "-m", "MedSegUNetLib.slicer.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=environment,
            cwd=self._folder,
            **options,
        )
        self._lines = queue.Queue()
        self._answers = {}
        self._progressLines = {}
        self.interpreterPid = None
        threading.Thread(target=_readLines, args=(self.process.stdout, self._lines), daemon=True, name="medsegunet-worker-reader").start()
        self.starts += 1

    def close(self) -> None:
        """Stop the worker: stdin closed (it exits by itself), then its process tree ended regardless."""
        process, self.process = self.process, None
        if process is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(timeout=CLOSE_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            # Also when the launcher has ended: its child must not outlive it.
            endProcessTree(process)
            process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def kill(self) -> None:
        """End the worker's whole process tree now (cancel): the next request starts a fresh one."""
        if self.process is not None:
            endProcessTree(self.process)
        self.close()

    def _lastLogLine(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read().decode("utf-8", "replace").splitlines() if line.strip()]
        return lines[-1][:200] if lines else ""

    def send(self, request: dict) -> int:
        """Send a request (starting the worker if needed); returns its id, for :meth:`poll`."""
        self.start()
        requestId = next(self._ids)
        try:
            self.process.stdin.write((json.dumps({**request, "id": requestId}) + "\n").encode("utf-8"))
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None
        return requestId

    def _died(self) -> WorkerDied:
        process = self.process
        code = None
        if process is not None:
            try:  # the reader saw EOF: the process is ending, let it finish so its status is known
                code = process.wait(timeout=CLOSE_SECONDS)
            except subprocess.TimeoutExpired:
                code = None
        last = self._lastLogLine()
        why = f"it was killed by signal {-code}" if code is not None and code < 0 else f"it ended with status {code}"
        if code is not None and code < 0 and -code == 9:
            why += " (out of memory?)"
        if LAUNCHER_ABNORMAL_EXIT in last:  # PythonSlicer's words for a child killed by a signal
            why, last = "it was killed or crashed (out of memory?)", ""
        self.kill()
        return WorkerDied(
            f"The segmentation worker process stopped ({why}{'; ' + last if last else ''}): nothing was changed; run again, or choose the "
            "CPU device or a smaller ROI."
        )

    def readMessages(self, timeout: float = 0.0) -> list[dict]:
        """The JSON lines the worker wrote so far, without blocking (or waiting up to ``timeout`` for the first).

        Raises:
            WorkerDied: the worker's output ended (it exited or was killed).
        """
        if self.process is None:
            raise WorkerDied("The segmentation worker process is not running: run again.")
        messages: list[dict] = []
        wait = timeout
        while True:
            try:
                line = self._lines.get(timeout=wait) if wait > 0 else self._lines.get_nowait()
            except queue.Empty:
                return messages
            if line is None:
                self._lines.put(None)  # EOF stays visible to later calls
                if messages:
                    return messages
                raise self._died()
            wait = 0.0
            if not line.startswith(PROTOCOL_PREFIX):  # printed before the worker's own code ran: its log's
                if self._log is not None and line.strip():
                    self._log.write(line)
                continue
            try:
                messages.append(json.loads(line[len(PROTOCOL_PREFIX) :].decode("utf-8")))
            except ValueError:  # only the worker's own writer uses the prefix
                raise MedSegUNetError(f"internal error: the worker answered a line that is not JSON ({line[:80]!r})") from None

    def poll(
        self,
        requestId: int,
        onProgress: Callable[[float, str], None] | None = None,
        cancelEvent: threading.Event | None = None,
        timeout: float = 0.0,
    ) -> dict | None:
        """Handle what the worker said so far: the answer of request ``requestId``, or None yet.

        Never blocks longer than ``timeout`` (0: not at all). Progress lines go to ``onProgress``;
        answers of other requests are kept for their own poll; a set cancel event ends the
        worker's process tree at once.

        Raises:
            ProcessingCancelled: the cancel event was set (the worker is ended).
            MedSegUNetError: the worker's one-line error, or the worker died.
        """
        if cancelEvent is not None and cancelEvent.is_set():
            self.kill()
            raise ProcessingCancelled()
        if requestId not in self._answers:
            for message in self.readMessages(timeout=timeout):
                if "pid" in message:
                    self.interpreterPid = int(message["pid"])
                if "progress" in message:  # kept for its own request's poll when another request reads it
                    self._progressLines.setdefault(message.get("id"), []).append(
                        (float(message["progress"]), str(message.get("message", "")))
                    )
                else:
                    self._answers[message.get("id")] = message
        for fraction, text in self._progressLines.pop(requestId, []):
            if onProgress is not None:
                onProgress(fraction, text)
        message = self._answers.pop(requestId, None)
        if message is None:
            return None
        if "result" in message:
            return message["result"]
        if message.get("kind") == "cancelled":
            raise ProcessingCancelled()
        if message.get("kind") == "user":  # the engine's class, so that callers can tell errors apart
            kind = getattr(errors, str(message.get("type")), None)
            kind = (
                kind
                if isinstance(kind, type) and issubclass(kind, MedSegUNetError) and kind is not ProcessingCancelled
                else MedSegUNetError
            )
            raise kind(message["error"])
        raise MedSegUNetError(f"internal error in the worker: {message['error']}")

    def request(
        self, request: dict, onProgress: Callable[[float, str], None] | None = None, cancelEvent: threading.Event | None = None
    ) -> dict:
        """Send a request and wait for its answer, passing progress on and honouring cancel (see :meth:`poll`).

        Blocks: for scripts and tests. The Slicer module uses :meth:`send` and :meth:`poll` from a timer.
        """
        requestId = self.send(request)
        while True:
            answer = self.poll(requestId, onProgress, cancelEvent, POLL_SECONDS)
            if answer is not None:
                return answer


class PendingRequest:
    """A request in flight, polled without blocking (the Slicer module's timer drives it).

    Args:
        worker: the :class:`WorkerProcess`.
        request: the request; it is sent at once.
        onProgress: ``(fraction, message)`` for the progress lines of this request.
        cancelEvent: when set, the next poll ends the worker and fails with ``ProcessingCancelled``.
    """

    def __init__(
        self,
        worker: WorkerProcess,
        request: dict,
        onProgress: Callable[[float, str], None] | None = None,
        cancelEvent: threading.Event | None = None,
    ) -> None:
        self.worker = worker
        self.onProgress = onProgress
        self.cancelEvent = cancelEvent
        self.requestId = worker.send(request)
        self.answer: dict | None = None
        self.error: Exception | None = None

    def poll(self, wait: float = 0.0) -> bool:
        """True when answered (``answer``) or failed (``error``); never blocks longer than ``wait``."""
        if self.answer is not None or self.error is not None:
            return True
        try:
            self.answer = self.worker.poll(self.requestId, self.onProgress, self.cancelEvent, wait)
        except MedSegUNetError as error:  # ProcessingCancelled too
            self.error = error
        return self.answer is not None or self.error is not None


# ---------------------------------------------------------------------------------------------
# The worker's side
# ---------------------------------------------------------------------------------------------


def _watchStdin(requests: queue.Queue) -> None:
    """Stdin thread: requests into ``requests``; EOF, ``quit`` or ``cancel`` end the process at once.

    The only write end of stdin is held by the process that started the worker (through the launcher
    too), so EOF means it closed the pipe or died: nothing is left to answer to.
    """
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError:
            _write({"error": "the worker received a line that is not JSON", "kind": "internal"})
            continue
        if not isinstance(request, dict):  # answered, never a crash of this thread (the worker would go deaf)
            _write({"id": None, "error": "the worker received a request that is not a JSON object", "kind": "user"})
            continue
        if request.get("command") in ("quit", "cancel"):
            break
        requests.put(request)
    if _channel is not None:
        _channel.flush()
    os._exit(0)


# The worker's answers: the pipe it was started with as stdout, moved to a descriptor of its own by
# :func:`_openChannel` (None until then: tests call :func:`handle` in their own process).
_channel = None
_channelLock = threading.Lock()


def _openChannel() -> None:
    """Keep the stdout pipe for answers alone; descriptor 1 and ``sys.stdout`` go to stderr (the log)."""
    global _channel
    sys.stdout.flush()
    _channel = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def _write(message: dict) -> None:
    with _channelLock:  # progress comes from the engine's threads too
        stream = _channel or sys.stdout
        stream.write(PROTOCOL_PREFIX.decode("ascii") + json.dumps(message) + "\n")
        stream.flush()


def handle(request: dict, progressCallback: Callable[[float, str], None] | None = None) -> dict:
    """Run one request in this process; used by the worker loop (and by tests directly)."""
    from . import jobfiles

    command = request.get("command")
    if command == "ping":
        return {"pid": os.getpid(), "ppid": os.getppid(), "executable": sys.executable, "cwd": os.getcwd()}
    if command == "devices":
        try:
            import torch

            cuda = bool(torch.cuda.is_available())
            mps = getattr(torch.backends, "mps", None)
            answer = {"torch": torch.__version__, "cuda": cuda, "mps": bool(mps is not None and mps.is_available())}
        except Exception as error:  # a half-installed PyTorch fails in many ways
            raise DependencyError(
                f"PyTorch does not work ({type(error).__name__}: {firstLine(error)}): reinstall it with the PyTorch Utils module."
            ) from None
        from .dependencies import TORCH_MINIMUM, versionTuple

        if versionTuple(answer["torch"]) < versionTuple(TORCH_MINIMUM):
            raise DependencyError(f"PyTorch {answer['torch']} is too old: MedSegUNet needs {TORCH_MINIMUM} or newer; Apply installs it.")
        return answer
    if command == "pull":  # a catalog model: downloads, pip and imports (torch, onnx) happen here, never in Slicer
        from pathlib import Path

        from ..models import catalog

        cache = Path(request["cache"]) if request.get("cache") else None
        path = catalog.pullModel(
            str(request["name"]),
            cache=cache,
            progress=progressCallback,
            python=request.get("python"),
            format=request.get("format", "torchscript"),
        )
        return {"path": str(path)}
    if command == "importNNUNet":  # an nnU-Net results folder: torch and the networks' package are imported here only
        from ..engine.staging import checkOutputPath
        from ..models.nnunetimport import importNNUNet

        output = str(request["output"])
        os.makedirs(os.path.dirname(output), exist_ok=True)
        checkOutputPath(output, (".pt",))
        importNNUNet(str(request["source"]), output, progress=progressCallback)
        return {"path": output}
    if command == "thresholdModel":  # the self-test's known-answer model, made here: Slicer never imports torch
        from ..models import phantoms

        return {"path": phantoms.writeThresholdModel(request["path"], request["thresholds"], request["card"])}
    if command != "segment":
        raise DependencyError(f"Unknown worker command '{command}'.")
    checkSegmentRequest(request)
    return jobfiles.runRequest(request, progressCallback)


def checkSegmentRequest(request: dict) -> None:
    """Refuse a segment message that lacks its folder, volumes or request, naming what is wrong (the
    request's own fields are checked by :meth:`SegmentationRequest.fromDict`).

    Raises:
        MedSegUNetError: the malformed part.
    """
    from ..engine.request import SegmentationRequest

    for part, kind in (("folder", str), ("inputs", list), ("roi", list), ("request", dict)):
        if not isinstance(request.get(part), kind):
            raise MedSegUNetError(
                f"The worker's segment request has no valid '{part}': the module and the worker are out of step; reinstall the extension."
            )
    for item in request["inputs"] + request["roi"]:
        if not isinstance(item, dict) or not isinstance(item.get("file"), str) or not isinstance(item.get("name"), str):
            raise MedSegUNetError(
                "The worker's segment request has a volume without 'file' and 'name': the module and the worker are out of step; reinstall "
                "the extension."
            )
    try:
        SegmentationRequest.fromDict(request["request"])
    except MedSegUNetError as error:
        raise MedSegUNetError(
            f"{firstLine(error).rstrip('.')}: the module and the worker are out of step; reinstall the extension."
        ) from None


def _answer(request: dict) -> dict:
    requestId = request.get("id")

    def progress(fraction: float, message: str) -> None:
        _write({"id": requestId, "progress": fraction, "message": message})

    # The interpreter's own PID: through a launcher, the parent knows only the launcher's.
    _write({"id": requestId, "progress": 0.0, "message": BEGUN_MESSAGE, "pid": os.getpid()})
    try:
        return {"id": requestId, "result": handle(request, progress)}
    except ProcessingCancelled as error:
        return {"id": requestId, "error": firstLine(error), "kind": "cancelled"}
    except MedSegUNetError as error:  # worded for the panel (its controls, not the command line's flags)
        return {"id": requestId, "error": firstLine(error.forSurface("slicer")), "kind": "user", "type": type(error).__name__}
    except MemoryError:
        return {"id": requestId, "error": outOfMemory("in the worker").forSurface("slicer"), "kind": "user", "type": "OutOfMemoryError"}
    except Exception as error:  # reported to the parent, which shows one line
        return {"id": requestId, "error": f"{type(error).__name__}: {firstLine(error)}", "kind": "internal"}


def main(argv: list[str] | None = None) -> int:
    import warnings

    _openChannel()
    import logging

    # The library's notes and warnings go to the worker's log (its stderr), never to the answers.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.simplefilter("ignore", category)
    requests: queue.Queue = queue.Queue()
    threading.Thread(target=_watchStdin, args=(requests,), daemon=True, name="medsegunet-stdin").start()
    while True:
        _write(_answer(requests.get()))
        _releaseMemory()


def _releaseMemory() -> None:
    """Give the GPU memory torch's allocator caches back between runs (the model itself stays loaded)."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "BEGUN_MESSAGE",
    "PROTOCOL_PREFIX",
    "WorkerDied",
    "endProcessTree",
    "WorkerProcess",
    "PendingRequest",
    "handle",
    "checkSegmentRequest",
    "main",
]
