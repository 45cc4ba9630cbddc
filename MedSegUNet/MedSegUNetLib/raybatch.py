"""``medsegunet batch --engine ray``: the same per-case job on Ray actors that hold the model.

Each actor loads the model once (one actor per GPU with ``num_gpus=1``; CPU actors otherwise)
and runs :func:`batch.processCase`, the function the local workers run, so the files and the
summary rows are the same. Without ``--ray-address`` a local Ray is started for the run; with it,
the run joins that cluster. Every node must see the input paths and write to the output folder
(a shared file system), and must have MedSegUNet installed. An actor that dies (a node lost, out
of memory) is replaced and its case is tried once more.

Ray is optional: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import contextlib
import io
from typing import Callable, Sequence

from .errors import MedSegUNetError, firstLine
from .volumes import nativeMessages


class CaseActor:
    """A Ray actor's state: the loaded model, kept between cases."""

    def __init__(self, options, device: str) -> None:
        import warnings

        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        import torch

        from .modelcard import loadModel

        if options.threads:
            torch.set_num_threads(options.threads)
        from .batch import warmUp

        self.options = options
        self.loaded = loadModel(options.modelPath, device)
        warmUp()

    def run(self, case) -> dict:
        from .batch import processCase

        return processCase(case, self.loaded, self.options)


def importRay():
    try:
        import ray
    except ImportError:
        raise MedSegUNetError("The Ray engine needs Ray: install it with pip install -e \".[ray]\" (or pip install ray), or use --engine local.") from None
    return ray


def runRay(cases, todo: Sequence[int], options, address: str | None, workers: int | None, onRow: Callable[[int, dict], None]) -> None:
    """Run cases ``todo`` on Ray actors; ``onRow(index, row)`` as each case ends.

    Args:
        address: a Ray cluster to join (``ray://host:10001`` or ``host:6379``); None starts a local Ray.
        workers: CPU actors when the cluster has no GPU (default: one per 2 CPUs, at least one).
    """
    ray = importRay()
    started = not ray.is_initialized()
    if started:
        try:
            # Ray prints notices (token authentication, ...) on stderr, which carries only errors here.
            with contextlib.redirect_stderr(io.StringIO()), nativeMessages():
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as error:  # Ray raises ConnectionError, RuntimeError, ValueError...
            raise MedSegUNetError(f"Cannot start or join Ray{f' at {address}' if address else ''} ({firstLine(error)[:160]}).") from None
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if options.device in ("auto", "cuda") else 0
        if options.device == "cuda" and gpus == 0:
            raise MedSegUNetError("CUDA was asked for but the Ray cluster has no GPU: use --device cpu or auto.")
        count = workers or (gpus if gpus else max(1, int(resources.get("CPU", 1)) // 2))
        actorClass = ray.remote(num_gpus=1, num_cpus=1)(CaseActor) if gpus else ray.remote(num_cpus=1)(CaseActor)
        device = "cuda" if gpus else ("cpu" if options.device == "auto" else options.device)
        _dispatch(ray, actorClass, cases, list(todo), options, device, min(count, len(todo)), onRow)
    finally:
        if started:
            ray.shutdown()


def _dispatch(ray, actorClass, cases, todo: list[int], options, device: str, count: int, onRow) -> None:
    """One case in flight per actor; a dead actor is replaced and its case retried once."""
    from ray.exceptions import RayActorError, RayTaskError

    actors = [actorClass.remote(options, device) for _ in range(max(1, count))]
    attempts = {index: 0 for index in todo}
    waiting = list(todo)
    inFlight: dict = {}

    def submit(actor) -> None:
        if waiting:
            index = waiting.pop(0)
            inFlight[actor.run.remote(cases[index])] = (index, actor)

    for actor in actors:
        submit(actor)
    while inFlight:
        ready, _ = ray.wait(list(inFlight), num_returns=1)
        reference = ready[0]
        index, actor = inFlight.pop(reference)
        try:
            row = ray.get(reference)
        except RayActorError as error:
            attempts[index] += 1
            actor = actorClass.remote(options, device)
            if attempts[index] > 1:
                onRow(index, {"case": cases[index].id, "status": "failed", "message": f"the Ray actor died twice ({firstLine(error)[:120]})",
                              "seconds": 0.0, "roi_size_mm": None, "volumes_cm3": {}, "notes": list(cases[index].notes), "attempts": attempts[index]})
            else:
                waiting.insert(0, index)
            submit(actor)
            continue
        except RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, MedSegUNetError):  # the actor could not load the model
                raise MedSegUNetError(firstLine(cause)) from None
            raise
        row["attempts"] = attempts[index] + 1
        onRow(index, row)
        submit(actor)
    del actors
