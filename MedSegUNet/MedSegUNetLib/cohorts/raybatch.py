"""``medsegunet batch --engine ray``: the same per-case job on Ray actors that hold the model.

Each actor loads the model once (one actor per GPU with ``num_gpus=1``; CPU actors otherwise)
and runs :func:`batch.processCase`, the function the local workers run, so the files and the
summary rows are the same. As a local worker does, an actor holds three cases at a time, on
threads (``max_concurrency``): one is read while another uses the network (a lock lets one case at
a time use it) and a third is written, so a GPU does not wait for DICOM reads. Without ``--ray-address`` a local
Ray is started for the run; with it, the run joins that cluster. Every node must see the input paths and write to the output folder
(a shared file system), and must have MedSegUNet installed. An actor that dies (a node lost, out
of memory) is replaced and its case is tried once more.

Ray is optional: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import contextlib
import io
import threading
from typing import Callable, Sequence

from ..engine.errors import CohortError, MedSegUNetError, firstLine
from ..engine.paths import nativeMessages


class CaseActor:
    """A Ray actor's state: the loaded model, kept between cases."""

    def __init__(self, options, device: str) -> None:
        import warnings

        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        import torch

        if options.threads:
            torch.set_num_threads(options.threads)
        from .casejob import loadCaseModel, warmUp

        self.options = options
        self.loaded = loadCaseModel(options, device)
        self.networkLock = threading.Lock()
        warmUp(self.loaded.card)

    def run(self, case) -> dict:
        from .casejob import processCase

        return processCase(case, self.loaded, self.options, networkLock=self.networkLock)


def importRay():
    try:
        import ray
    except ImportError:
        raise CohortError(
            'The Ray engine needs Ray: install it with pip install -e ".[ray]" (or pip install ray), or use --engine local.'
        ) from None
    return ray


# How long joining a cluster may take to answer at all: Ray itself retries a closed port for minutes.
CONNECT_SECONDS = 10.0


def checkReachable(address: str, timeout: float = CONNECT_SECONDS) -> None:
    """Refuse a ``--ray-address`` (``ray://host:port`` or ``host:port``) whose port does not answer.

    Raises:
        MedSegUNetError: no TCP connection within ``timeout`` seconds (one line).
    """
    import socket
    import urllib.parse

    if address == "auto":
        return
    parsed = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise CohortError(f"--ray-address '{address}' is not host:port or ray://host:port.")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as error:
        raise CohortError(
            f"Cannot join Ray at {address}: nothing answers there within {timeout:g} s ({firstLine(error)}); check the address and that "
            "the cluster runs."
        ) from None


def runRay(cases, todo: Sequence[int], options, address: str | None, workers: int | None, onRow: Callable[[int, dict], None]) -> None:
    """Run cases ``todo`` on Ray actors; ``onRow(index, row)`` as each case ends.

    Args:
        address: a Ray cluster to join (``ray://host:10001`` or ``host:6379``); None starts a local Ray.
        workers: CPU actors when the cluster has no GPU (default: one per 2 CPUs, at least one).
    """
    ray = importRay()
    started = not ray.is_initialized()
    if started and address:
        checkReachable(address)
    if started:
        try:
            # Ray prints notices (token authentication, ...) on stderr, which carries only errors here.
            with contextlib.redirect_stderr(io.StringIO()), nativeMessages():
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as error:  # Ray raises ConnectionError, RuntimeError, ValueError...
            raise CohortError(f"Cannot start or join Ray{f' at {address}' if address else ''} ({firstLine(error)[:160]}).") from None
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if options.device in ("auto", "cuda") else 0
        if options.device == "cuda" and gpus == 0:
            raise CohortError("CUDA was asked for but the Ray cluster has no GPU: use --device cpu or auto.")
        count = workers or (gpus if gpus else max(1, int(resources.get("CPU", 1)) // 2))
        from .casejob import CASES_IN_HAND

        resources = {"num_cpus": 1, "max_concurrency": CASES_IN_HAND, **({"num_gpus": 1} if gpus else {})}
        actorClass = ray.remote(**resources)(CaseActor)
        device = "cuda" if gpus else ("cpu" if options.device == "auto" else options.device)
        _dispatch(ray, actorClass, cases, list(todo), options, device, min(count, len(todo)), onRow)
    finally:
        if started:
            ray.shutdown()


def _dispatch(ray, actorClass, cases, todo: list[int], options, device: str, count: int, onRow) -> None:
    """Up to ``CASES_IN_HAND`` cases in flight per actor; a dead actor is replaced once and each of
    its cases retried once."""
    from ray.exceptions import RayActorError, RayTaskError

    from .casejob import CASES_IN_HAND

    actors = [actorClass.remote(options, device) for _ in range(max(1, count))]
    load = {id(actor): 0 for actor in actors}
    replacements: dict[int, object] = {}
    attempts = {index: 0 for index in todo}
    waiting = list(todo)
    inFlight: dict = {}

    def submit(actor) -> None:
        while waiting and load[id(actor)] < CASES_IN_HAND:
            index = waiting.pop(0)
            inFlight[actor.run.remote(cases[index])] = (index, actor)
            load[id(actor)] += 1

    for actor in actors:
        submit(actor)
    while inFlight:
        ready, _ = ray.wait(list(inFlight), num_returns=1)
        reference = ready[0]
        index, actor = inFlight.pop(reference)
        load[id(actor)] -= 1
        try:
            row = ray.get(reference)
        except RayActorError as error:
            attempts[index] += 1
            if id(actor) not in replacements:  # its other cases fail too: one replacement for all
                replacement = actorClass.remote(options, device)
                replacements[id(actor)] = replacement
                actors.append(replacement)
                load[id(replacement)] = 0
            if attempts[index] > 1:
                onRow(
                    index,
                    {
                        "case": cases[index].id,
                        "status": "failed",
                        "message": f"the Ray actor died twice ({firstLine(error)[:120]})",
                        "seconds": 0.0,
                        "roi_size_mm": None,
                        "volumes_cm3": {},
                        "notes": list(cases[index].notes),
                        "attempts": attempts[index],
                    },
                )
            else:
                waiting.insert(0, index)
            submit(replacements[id(actor)])
            continue
        except RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, MedSegUNetError):  # the actor could not load the model
                raise CohortError(firstLine(cause)) from None
            raise
        row["attempts"] = attempts[index] + 1
        onRow(index, row)
        submit(actor)
    del actors


__all__ = ["CaseActor", "importRay", "checkReachable", "runRay"]
