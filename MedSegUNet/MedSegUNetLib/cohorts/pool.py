"""The local engine: worker processes that keep the model, each with its own task queue and results pipe.

The parent always knows which cases a worker holds and which it has begun: a dead worker is replaced,
its begun cases are tried once more, the others handed out again without an attempt charged. Workers
end with their driver (parent-death signal and a parent watch).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import signal
import sys
import threading
import time
from typing import Callable, Sequence

from ..engine.errors import CohortError, MedSegUNetError, firstLine
from .casejob import CASES_IN_HAND, BatchOptions, failedRow, finishCase, inferCase, prepareCase, sweepStaging, warmUp
from .cases import CaseSpec


class ResultSender:
    """A worker's end of its own results pipe, shared by its threads (a lock of this process only)."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.lock = threading.Lock()

    def put(self, message) -> None:
        with self.lock:
            self.connection.send(message)


def spareTheExitCollection() -> None:
    """Leave the objects alive now out of the garbage collections of the interpreter's shutdown.

    For a process that ends here (the console script after its outputs are written, a batch
    worker): with torch imported, those collections walk its hundreds of thousands of objects,
    0.6–0.8 s on every exit. Frozen objects are still released by reference counting, and
    ``atexit`` handlers still run (a Ray driver's shutdown, temporary folders).
    """
    import gc

    gc.freeze()


def _workerMain(workerId: int, cases: list[CaseSpec], options: BatchOptions, device: str, tasks, connection) -> None:
    """A worker process: load the model once, then take cases until told to stop.

    The next case is read and prepared on one thread, and the previous case's statistics and files
    are written on another, while the network runs on the current one. Messages go to the parent
    through this worker's own pipe (``connection``).
    """
    from concurrent.futures import ThreadPoolExecutor

    results = ResultSender(connection)
    _becomeAWorker()
    import torch

    from .casejob import loadCaseModel, withWorkerNotes

    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        loaded = loadCaseModel(options, device)
    except MedSegUNetError as error:
        results.put(("fatal", workerId, firstLine(error)))
        return
    warmUp(loaded.card)
    card = loaded.card

    def prepare(index: int):
        return prepareCase(cases[index], card, options)

    pending: list = []
    stopping = False
    finishing = None
    # Reads run ahead on one thread, statistics and writes behind on another: the network (this
    # thread) goes from case to case without waiting for the disk.
    with (
        ThreadPoolExecutor(max_workers=1, initializer=_yieldToTheNetwork) as pool,
        ThreadPoolExecutor(max_workers=1, initializer=_yieldToTheNetwork) as writer,
    ):
        while True:
            if not pending:
                if stopping:
                    break
                index = tasks.get()
                if index is None:
                    break
                results.put(("begun", workerId, index))
                pending.append((index, pool.submit(prepare, index)))
            if len(pending) < 2 and not stopping:
                try:
                    following = tasks.get(timeout=0.01)
                except queue.Empty:
                    following = -1
                if following is None:
                    stopping = True
                elif following >= 0:
                    results.put(("begun", workerId, following))
                    pending.append((following, pool.submit(prepare, following)))
            index, future = pending.pop(0)
            try:
                prepared = future.result()
            except Exception as error:  # noqa: BLE001 - the row says what it was
                results.put(("done", workerId, index, failedRow(cases[index], error, time.perf_counter())))
                continue
            started = time.perf_counter()
            try:
                images, result = inferCase(prepared, loaded)
            except Exception as error:  # noqa: BLE001 - the row says what it was
                results.put(("done", workerId, index, failedRow(cases[index], error, started)))
                continue
            result.timings["network_thread"] = time.perf_counter() - started
            if finishing is not None:
                finishing.result()  # one case's files in flight at a time
            finishing = writer.submit(
                _finishAndReport, workerId, index, withWorkerNotes(cases[index], loaded), images, result, card, options, started, results
            )
        if finishing is not None:
            finishing.result()


def _becomeAWorker() -> None:
    """What a worker process sets first: the parent decides on Ctrl-C (it reaches the whole
    process group), the worker ends with the parent, library notices stay out of the run's lines,
    and the exit skips the interpreter's final collections (a spawned worker goes through the
    whole shutdown)."""
    import atexit
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exitWithParent()
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.simplefilter("ignore", category)
    atexit.register(spareTheExitCollection)


def exitWithParent() -> None:
    """End this worker process when the batch's driver dies (even by SIGKILL): no orphan keeps a GPU.

    Linux: the kernel's parent-death signal; elsewhere, and as a second guard, a thread that sees
    the parent PID change (a worker's parent is the driver itself, never a launcher).
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the driver died before the signal was set
            os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="medsegunet-parent-watch").start()


def _yieldToTheNetwork() -> None:
    """Lower this thread's CPU priority by 10 (Linux: a thread's nice value), so that on a CPU-only
    machine the reading and writing threads take the cores the network leaves idle rather than
    slowing it down."""
    if hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        try:
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, min(os.getpriority(os.PRIO_PROCESS, thread) + 10, 19))
        except OSError:  # not allowed here: the thread keeps the normal priority
            pass


def _finishAndReport(
    workerId: int, index: int, case: CaseSpec, images, result, card: dict, options: BatchOptions, started: float, results
) -> None:
    results.put(("done", workerId, index, finishCase(case, images, result, card, options, started)))


def _deathMessage(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.Signals._value2member_map_ else str(-exitcode)
        why = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"the worker process was killed by {name}{why}"
    return f"the worker process ended with status {exitcode}"


def gpuCount() -> int:
    """GPUs visible to this machine, without importing torch in this process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    executable = shutil.which("nvidia-smi")
    if not executable:
        return 0
    import subprocess

    try:
        done = subprocess.run([executable, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in done.stdout.splitlines() if line.startswith("GPU "))


# What a CPU worker may need when the run chooses how many to start: the model, a case's arrays
# and the network's activations (deepbet's 256³ grids peak at 1.2 GB a worker).
CPU_WORKER_MEMORY = 4 * 1024**3


def cpuWorkerCount(cases: int) -> int:
    """Workers of a CPU run without ``--workers``: two where there are the cases, the cores and the
    memory (:data:`CPU_WORKER_MEMORY` each) for them, else one.

    Two networks on one thread each get more from two cores than one network on both (its threads
    scale about 1.6× there), and each case's reading, resampling and writing then runs beside the
    other's network: a folder of deepbet cases on 2 cores goes 14 % faster.
    """
    from ..engine.inference import availableMemory

    memory = availableMemory("cpu")
    affordable = 2 if memory is None else int(memory // CPU_WORKER_MEMORY)
    return max(1, min(2, os.cpu_count() or 1, cases, affordable))


def workerDevices(device: str, workers: int | None, cases: int = 1) -> list[str]:
    """The device of each worker: one per GPU by default (``cuda:k``), else CPU workers
    (:func:`cpuWorkerCount` of the run's ``cases``), or one on another device."""
    gpus = gpuCount() if device in ("auto", "cuda") else 0
    if device == "cuda" and gpus == 0:
        raise CohortError("CUDA was asked for but no NVIDIA GPU is visible: use --device cpu or auto.")
    if gpus and device in ("auto", "cuda"):
        return [f"cuda:{index % gpus}" for index in range(workers or gpus)]
    count = workers or (cpuWorkerCount(cases) if device in ("auto", "cpu") else 1)
    return ["cpu" if device == "auto" else device] * count


# A case lost this many times with a dead worker without having begun (its "begun" message may
# not have left a worker killed at once) is then counted as an attempt, so a run always ends.
FREE_LOSSES = 2


def lostCases(lost: set[int], begun: set[int], freeLosses: dict[int, int]) -> tuple[list[int], list[int]]:
    """Of a dead worker's unfinished cases, those to hand out again as they were and those that
    count an attempt.

    Args:
        lost: the cases the worker held and had not finished.
        begun: the cases it said it had begun (read or segmented).
        freeLosses: per case, how often it was lost without having begun (updated).

    Returns:
        (cases to hand out again without an attempt: still waiting in the worker's queue, they
        cannot have killed it; cases that count an attempt), each sorted.
    """
    again, suspects = [], []
    for index in sorted(lost):
        if index not in begun:
            freeLosses[index] = freeLosses.get(index, 0) + 1
            if freeLosses[index] <= FREE_LOSSES:
                again.append(index)
                continue
        suspects.append(index)
    return again, suspects


def runLocal(
    cases: list[CaseSpec],
    todo: Sequence[int],
    options: BatchOptions,
    devices: Sequence[str],
    onRow: Callable[[int, dict], None],
    onBegun: Callable[[int, int], None] | None = None,
    onWarning: Callable[[str], None] | None = None,
) -> None:
    """Run cases ``todo`` on worker processes; ``onRow(index, row)`` as each case ends,
    ``onBegun(index, workerNumber)`` (1…N) when a worker says it has begun a case (read or segmented), and
    ``onWarning(text)`` when a dead worker is replaced.

    Each worker has its own task queue and the parent hands it cases, so the parent always knows
    which cases a worker holds, and the worker says when it begins one: a dead worker is replaced,
    the cases it had begun (read or segmented) are tried once more, and those still waiting in its
    queue are handed out again without counting an attempt (they cannot have killed it).
    """
    pool = LocalPool(cases, todo, options, onRow, onBegun, onWarning)
    for device in devices[: max(1, min(len(devices), len(todo)))]:
        pool.start(device)
    pool.handOut()
    try:
        while pool.remaining:
            messages = pool.receive()
            for message in messages:
                pool.handle(message)
            if not messages:
                pool.replaceDead()
    finally:
        pool.close()


class LocalPool:
    """The parent's book of worker processes: who holds which case, who began which, attempts."""

    def __init__(self, cases, todo, options, onRow, onBegun, onWarning) -> None:
        self.cases, self.options = cases, options
        self.onRow, self.onBegun, self.onWarning = onRow, onBegun, onWarning
        self.context = multiprocessing.get_context("spawn")
        self.attempts = {index: 0 for index in todo}
        self.pending = list(todo)
        self.remaining = set(todo)
        self.workers: dict[int, tuple] = {}  # id → (process, device, task queue)
        # One results pipe per worker: a shared Queue has one cross-process write lock, and a
        # worker killed while holding it would silence every other worker for ever.
        self.receivers: dict[int, object] = {}
        self.held: dict[int, set[int]] = {}
        self.begun: dict[int, set[int]] = {}
        self.freeLosses: dict[int, int] = {}
        # The number a log line gives each worker: 1…N, a replacement taking its predecessor's.
        self.numbers: dict[int, int] = {}
        self.nextId = 0

    def start(self, device: str, number: int | None = None) -> None:
        tasks = self.context.Queue()
        receiver, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_workerMain, args=(self.nextId, self.cases, self.options, device, tasks, sender), daemon=True)
        process.start()
        sender.close()  # the worker holds the only write end
        self.workers[self.nextId] = (process, device, tasks)
        self.receivers[self.nextId] = receiver
        self.held[self.nextId], self.begun[self.nextId] = set(), set()
        self.numbers[self.nextId] = number if number is not None else len(self.numbers) + 1
        self.nextId += 1

    def handOut(self) -> None:
        """Waiting cases to the workers, one at a time to whichever holds the fewest (up to
        ``CASES_IN_HAND`` each): a run of two cases on two workers runs one on each."""
        while self.pending and self.workers:
            workerId = min(self.workers, key=lambda candidate: len(self.held[candidate]))
            if len(self.held[workerId]) >= CASES_IN_HAND:
                return
            index = self.pending.pop(0)
            self.held[workerId].add(index)
            self.workers[workerId][2].put(index)

    def receive(self, timeout: float = 0.5) -> list:
        """The messages the workers sent (waits up to ``timeout`` for the first)."""
        from multiprocessing.connection import wait

        messages = []
        for receiver in wait(list(self.receivers.values()), timeout=timeout):
            try:
                messages.append(receiver.recv())
            except (EOFError, OSError):  # the worker is gone; replaceDead() sees to it
                self.receivers.pop(next(key for key, value in self.receivers.items() if value is receiver)).close()
        return messages

    def handle(self, message: tuple) -> None:
        kind, workerId = message[0], message[1]
        if kind == "begun":
            self.begun.get(workerId, set()).add(message[2])
            if self.onBegun is not None and workerId in self.workers:
                self.onBegun(message[2], self.numbers[workerId])
        elif kind == "done":
            index, row = message[2], message[3]
            self.held.get(workerId, set()).discard(index)
            self.begun.get(workerId, set()).discard(index)
            if index in self.remaining:
                self.remaining.discard(index)
                row["attempts"] = self.attempts[index] + 1
                self.onRow(index, row)
            self.handOut()
        elif kind == "fatal":
            raise CohortError(message[2])

    def replaceDead(self) -> None:
        """Every dead worker: its begun cases charged and retried (failed the second time), the
        rest handed out again; a new worker takes its place while cases remain."""
        for workerId, (process, device, tasks) in list(self.workers.items()):
            if process.is_alive():
                continue
            again, suspects = lostCases(self.held.pop(workerId) & self.remaining, self.begun.pop(workerId), self.freeLosses)
            del self.workers[workerId]
            if workerId in self.receivers:
                self.receivers.pop(workerId).close()
            tasks.cancel_join_thread()
            tasks.close()
            why = _deathMessage(process.exitcode)
            if self.onWarning is not None:
                retried = [self.cases[index].id for index in suspects if self.attempts[index] < 1]
                self.onWarning(
                    f"{why} (worker {self.numbers[workerId]}, PID {process.pid}); a new one takes its place"
                    + (f", and its case(s) {', '.join(retried)} are tried once more" if retried else "")
                )
            for index in reversed(again):
                self.pending.insert(0, index)
            for index in suspects:
                self.charge(index, why)
            if self.remaining:
                self.start(device, self.numbers[workerId])
                self.handOut()

    def charge(self, index: int, why: str) -> None:
        """A case a dead worker had begun: tried once more, or failed after its second death."""
        self.attempts[index] += 1
        if self.attempts[index] <= 1:
            self.pending.insert(0, index)
            return
        self.remaining.discard(index)
        self.onRow(
            index,
            {
                "case": self.cases[index].id,
                "status": "failed",
                "message": f"{why}, twice",
                "seconds": 0.0,
                "roi_size_mm": None,
                "volumes_cm3": {},
                "notes": list(self.cases[index].notes),
                "attempts": self.attempts[index],
            },
        )

    def close(self) -> None:
        """Stop the workers (a None task each, then terminate what lingers) and sweep staging folders."""
        for _, _, tasks in self.workers.values():
            tasks.put(None)
        deadline = time.monotonic() + 5
        for process, _, tasks in self.workers.values():
            process.join(timeout=max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            tasks.cancel_join_thread()
            tasks.close()
        for receiver in self.receivers.values():
            receiver.close()
        sweepStaging(self.options.outputDir)


__all__ = [
    "ResultSender",
    "spareTheExitCollection",
    "exitWithParent",
    "gpuCount",
    "cpuWorkerCount",
    "workerDevices",
    "lostCases",
    "runLocal",
    "LocalPool",
]
