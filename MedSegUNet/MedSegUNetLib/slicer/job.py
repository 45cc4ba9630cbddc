"""One Slicer run between reading the nodes and writing the results: images and arrays only, no MRML.

:meth:`SegmentationJob.run` computes in this process or, with a worker process, sends the job and
polls it (:meth:`SegmentationJob.start`, :meth:`SegmentationJob.poll`: never blocking, for a GUI
timer). Images are LPS (SimpleITK); label arrays K, J, I on the reference grid.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..engine import geometry, pipeline
from ..engine.cardview import ModelCard
from ..engine.errors import MedSegUNetError
from ..engine.request import SegmentationRequest


@dataclass
class SegmentationJob:
    """One run's inputs as images and arrays, and its results; :meth:`run` touches no MRML.

    The ``targets`` dict holds the nodes that :meth:`SegmentationLogic.finish` writes to; ``run``
    never reads it.
    """

    request: SegmentationRequest
    card: ModelCard
    images: list
    names: list
    inputNames: list
    roiImages: list = field(default_factory=list)
    roiNames: list = field(default_factory=list)
    referenceParts: list | None = None
    progress: pipeline.ProgressReporter = field(default_factory=pipeline.ProgressReporter)
    targets: dict = field(default_factory=dict)
    # Filled by run():
    result: pipeline.SegmentationResult | None = None
    report: dict | None = None
    referenceMasks: list | None = None
    warnings: list = field(default_factory=list)
    error: Exception | None = None
    done: threading.Event = field(default_factory=threading.Event)
    # A worker process (:class:`worker.WorkerProcess`) runs the engine's part, when given.
    worker: object | None = None

    @property
    def timings(self) -> dict[str, float]:
        return self.progress.timings

    def run(self) -> bool:
        """Load the model (cached), segment and compute statistics. Safe on a worker thread.

        Returns:
            True on success; otherwise the exception is kept in ``error`` for ``finish`` to raise.
        """
        try:
            self._run()
            return True
        except Exception as error:  # handed to the main thread, which raises it in finish()
            self.error = error
            return False
        finally:
            self.done.set()

    def _run(self) -> None:
        from . import jobfiles

        if self.worker is None:
            self.result, self.report, self.referenceMasks, self.warnings = jobfiles.computeJob(
                self.request,
                self.card,
                self.images,
                self.names,
                self.inputNames,
                self.roiImages,
                self.roiNames,
                self.referenceParts,
                self.progress,
            )
            return
        self.start()
        while not self.poll(wait=0.1):
            pass
        if self.error is not None:
            raise self.error

    # -- with a worker process, driven from a GUI timer ----------------------------------------

    def start(self) -> None:
        """Send the job to the worker process and return at once (see :meth:`poll`).

        The volumes travel as NRRD files in world geometry in a temporary folder.
        """
        import tempfile

        from . import jobfiles

        if self.worker is None:
            raise MedSegUNetError("This job has no worker process: call run() instead.")
        self._folder = tempfile.mkdtemp(prefix="medsegunet-job-")
        try:
            request = jobfiles.writeRequest(self, self._folder)
            self.progress.checkCancel()
            self._requestId = self.worker.send(request)
        except Exception as error:  # kept for finish(), as run() does
            self._end(error)
            raise

    def poll(self, wait: float = 0.0) -> bool:
        """Handle what the worker said (progress, result, error) without blocking; True when done.

        Checks the cancel event: when it is set the worker is killed at once (it restarts on the
        next run) and the job ends as cancelled.
        """
        from . import jobfiles

        if self.done.is_set():
            return True
        try:
            answer = self.worker.poll(self._requestId, self.progress.report, self.progress.cancelEvent, wait)
            if answer is not None:
                self.result = jobfiles.readAnswer(answer, self._folder, self)
                self.report, self.warnings = answer["report"], list(answer["warnings"])
                self.progress.timings.update(answer["timings"])
                self._end(None)
                return True
        except Exception as error:  # kept for finish(), which raises it on the main thread
            self._end(error)
            return True
        return False

    def _end(self, error: Exception | None) -> None:
        import shutil

        self.error = error
        if getattr(self, "_folder", None):
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self.done.set()


@dataclass
class SegmentationLogicResult:
    """What :meth:`SegmentationLogic.process` leaves in the scene, and the run's figures."""

    segmentationNode: object
    statisticsTableNode: object
    roiNode: object
    overlapTableNode: object | None
    timings: dict[str, float]
    roi: geometry.RegionOfInterest
    report: dict
    device: str
    # One line each that the user should read (a reference segmentation with labels the card lacks, ...).
    warnings: list = field(default_factory=list)


def availableDevices(worker=None) -> dict[str, bool]:
    """Which devices PyTorch can use: ``{"auto": True, "cuda": ..., "mps": ..., "cpu": True}``.

    Slicer's process never imports torch: with a worker process (:class:`worker.WorkerProcess`)
    the worker is asked; without one, or when PyTorch is missing or broken, only ``auto`` and
    ``cpu`` are offered (PyTorch is installed or repaired on the first Apply). Never raises.
    """
    from .dependencies import torchDevices, torchStatus

    devices = {"auto": True, "cuda": False, "mps": False, "cpu": True}
    if worker is None or torchStatus() != "ok":
        return devices
    try:
        return torchDevices(worker)
    except MedSegUNetError:
        return devices


def timingsText(timings: dict[str, float]) -> str:
    """``"loading 0.1 s, roi 0.0 s, … (total 3.2 s)"`` for status lines."""
    parts = [f"{name} {seconds:.1f} s" for name, seconds in timings.items()]
    return ", ".join(parts) + f" (total {sum(timings.values()):.1f} s)"


__all__ = ["SegmentationJob", "SegmentationLogicResult", "availableDevices", "timingsText"]
