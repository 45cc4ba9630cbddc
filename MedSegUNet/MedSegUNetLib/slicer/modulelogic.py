"""The Slicer module's logic without Qt: what ``MedSegUNetLogic`` does, testable on slicer-core.

``MedSegUNet.py``'s ``MedSegUNetLogic`` is this class on ``slicer.mrmlScene`` with Slicer's
``PythonSlicer`` as the worker's executable (as SlicerNNUnet keeps its logic in its Lib). The
network always runs in the worker process: Slicer's process never imports torch or MONAI.
"""

from __future__ import annotations

import os
import shutil
import threading
from typing import Callable

from ..engine.errors import DependencyError, ProcessingCancelled
from .dependencies import pythonSlicerExecutable


class WorkerFile:
    """A model file the worker process makes (a catalog pull, an import), polled without blocking (as
    a segmentation job): ``path`` once done, ``error`` once failed; a cancelled one is discarded.

    Args:
        logic: the :class:`ModuleLogic` whose worker is used.
        request: the worker's request.
        progressCallback: ``(fraction, message)`` while the worker works.
        cancelEvent: set it to end the worker at once.
    """

    def __init__(self, logic: "ModuleLogic", request: dict, progressCallback=None, cancelEvent: threading.Event | None = None) -> None:
        from .worker import PendingRequest

        self.path: str | None = None
        self.error: Exception | None = None
        self._request = PendingRequest(logic.segmentationLogic.worker, request, progressCallback, cancelEvent)

    def poll(self, wait: float = 0.0) -> bool:
        """True when done (``path``) or failed (``error``); never blocks longer than ``wait``."""
        if not self._request.poll(wait):
            return False
        if self._request.error is not None:
            self.error = self._request.error
            if isinstance(self.error, ProcessingCancelled):
                self._discard()
        elif self.path is None:
            self.path = str(self._request.answer["path"])
        return True

    def _discard(self) -> None:
        """What a cancelled request left behind."""


class CatalogPull(WorkerFile):
    """A catalog model pulled by the worker process.

    Args:
        logic: the :class:`ModuleLogic` whose worker and cache folder are used.
        name: the catalog name.
        progressCallback: ``(fraction, message)`` while it downloads, imports and verifies.
        cancelEvent: set it to end the worker at once; the partial download is removed.
    """

    def __init__(self, logic: "ModuleLogic", name: str, progressCallback=None, cancelEvent: threading.Event | None = None) -> None:
        from ..models import catalog

        self.name = name
        self.cache = catalog.cacheFolder(logic.cachePath)
        # The launcher's path: a published model's package is fetched by Slicer's Python (PythonSlicer).
        request = {"command": "pull", "name": name, "cache": str(self.cache), "python": logic.workerExecutable}
        super().__init__(logic, request, progressCallback, cancelEvent)

    def _discard(self) -> None:
        from ..models import catalog

        catalog.discardPartialPull(self.name, self.cache)


class ModelImport(WorkerFile):
    """An nnU-Net v2 results folder imported by the worker process into the cache folder's
    ``imported/`` (the panel's "Import nnU-Net model..." action).

    Args:
        logic: the :class:`ModuleLogic` whose worker and cache folder are used.
        folder: the results folder (``dataset.json``, ``plans.json``, ``fold_N/``).
        progressCallback: ``(fraction, message)`` while it reads, builds, verifies and writes.
        cancelEvent: set it to end the worker at once; nothing is left in the cache.
    """

    def __init__(self, logic: "ModuleLogic", folder: str, progressCallback=None, cancelEvent: threading.Event | None = None) -> None:
        from ..models import catalog

        folder = os.path.abspath(os.fspath(folder))
        parent = os.path.basename(os.path.dirname(folder))
        self.name = f"{parent}-{os.path.basename(folder).split('__')[-1]}" if "__" in os.path.basename(folder) else os.path.basename(folder)
        self._output = os.path.join(str(catalog.cacheFolder(logic.cachePath)), "imported", f"{self.name}.pt")
        self._fresh = not os.path.exists(self._output)
        super().__init__(logic, {"command": "importNNUNet", "source": folder, "output": self._output}, progressCallback, cancelEvent)

    def _discard(self) -> None:
        """The staged file of an ended worker, or a file it finished just before the end (when no
        model had that name before)."""
        folder = os.path.dirname(self._output)
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                path = os.path.join(folder, name)
                if name.startswith(".medsegunet-") and os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif self._fresh and path == self._output:
                    os.remove(path)


class ModuleLogic:
    """Segmentation through the warm worker process, dependencies, catalog and the self-test.

    Args:
        scene: the ``vtkMRMLScene`` (``slicer.mrmlScene`` in Slicer).
        requirementsPath: the module's ``Resources/requirements.txt``.
        workerExecutable: the worker's Python (Slicer: ``PythonSlicer``).
        cachePath: where catalog models are downloaded (Slicer's cache folder).
        interactive: ask before installing (False: Slicer without a main window).
        testing: Slicer's testing mode: nothing is installed, ever.
    """

    def __init__(
        self,
        scene,
        requirementsPath: str,
        workerExecutable: str | None = None,
        cachePath: str | None = None,
        interactive: bool = True,
        testing: bool = False,
    ) -> None:
        self.scene = scene
        self.requirementsPath = requirementsPath
        self.workerExecutable = workerExecutable or pythonSlicerExecutable()
        self.cachePath = cachePath
        self.interactive = interactive
        self.testing = testing
        self._segmentationLogic = None

    @property
    def segmentationLogic(self):
        """The MRML logic, with its warm worker process (started on the first run)."""
        from .logic import SegmentationLogic

        if self._segmentationLogic is None:
            self._segmentationLogic = SegmentationLogic(self.scene, useWorker=True, workerExecutable=self.workerExecutable)
        return self._segmentationLogic

    def close(self) -> None:
        """End the worker process and everything it started (the next run starts a new one)."""
        if self._segmentationLogic is not None:
            self._segmentationLogic.close()

    def startPull(
        self, name: str, progressCallback: Callable[[float, str], None] | None = None, cancelEvent: threading.Event | None = None
    ) -> CatalogPull:
        """Send a catalog pull to the worker process and return at once (the panel polls it).

        Downloads, pip and imports (torch, onnx) all happen in the worker: Slicer's process only
        reads the catalog.
        """
        return CatalogPull(self, name, progressCallback, cancelEvent)

    def startImport(
        self, folder: str, progressCallback: Callable[[float, str], None] | None = None, cancelEvent: threading.Event | None = None
    ) -> ModelImport:
        """Send an nnU-Net results folder's import to the worker process and return at once (the
        panel polls it); the model is written into the cache folder's ``imported/``."""
        return ModelImport(self, folder, progressCallback, cancelEvent)

    def importNNUNetModel(
        self, folder: str, progressCallback: Callable[[float, str], None] | None = None, cancelEvent: threading.Event | None = None
    ) -> str:
        """An nnU-Net v2 results folder as a model file, imported and verified by the worker process;
        blocks (console and scripts). Returns the model file's path.

        Raises:
            MedSegUNetError: what the import refuses (one line), ProcessingCancelled.
        """
        job = self.startImport(folder, progressCallback, cancelEvent)
        while not job.poll(wait=0.1):
            pass
        if job.error is not None:
            raise job.error
        return job.path

    def pullCatalogModel(
        self, name: str, progressCallback: Callable[[float, str], None] | None = None, cancelEvent: threading.Event | None = None
    ) -> str:
        """A catalog model's file, downloaded (and imported) once into the cache folder by the
        worker process, SHA256 checked; blocks (console and scripts).

        Raises:
            MedSegUNetError: unknown name, offline, a checksum mismatch, the worker failed.
            ProcessingCancelled: cancelled; nothing was kept in the cache.
        """
        if not self.ensureDependencies(askConfirmation=self.interactive):
            raise DependencyError(
                "Catalog models need PyTorch, MONAI and the module's other dependencies: install them first (Apply in the module offers "
                "to)."
            )
        pull = self.startPull(name, progressCallback, cancelEvent)
        while not pull.poll(wait=0.1):
            pass
        if pull.error is not None:
            raise pull.error
        return pull.path

    def prepare(self, *args, **kwargs):
        """See ``SegmentationLogic.prepare``: reads the nodes on the main thread."""
        return self.segmentationLogic.prepare(*args, **kwargs)

    def finish(self, job):
        """See ``SegmentationLogic.finish``: writes the results on the main thread."""
        return self.segmentationLogic.finish(job)

    def process(self, inputVolumes, modelPath, roiVolumes=(), **kwargs):
        """Segment in one call (console and batch scripts), the network in the worker process.

        Args:
            inputVolumes: scalar volume nodes in the model card's input order.
            modelPath: TorchScript model file.
            roiVolumes: extra series whose extents limit the ROI.
            kwargs: ``roiNode``, ``outputSegmentation``, ``outputTable``, ``referenceSegmentation``,
                ``device``, ``progressCallback``, ``cancelEvent``, ``useROI``, ``marginMM``, ``contextMM``.

        Returns:
            the result with ``segmentationNode``, ``statisticsTableNode``, ``roiNode``,
            ``overlapTableNode`` and ``timings``.

        Raises:
            MedSegUNetError: dependencies missing (and not installed), bad inputs, or the worker failed.
        """
        if not self.ensureDependencies(askConfirmation=self.interactive):
            raise DependencyError(
                "MedSegUNet needs PyTorch, MONAI and its other dependencies: install them first (Apply in the module offers to)."
            )
        return self.segmentationLogic.process(inputVolumes, modelPath, roiVolumes=roiVolumes, **kwargs)

    def exportDicomSegmentation(
        self, segmentationNode, referenceVolumeNode, path: str, fileForInstance: Callable[[str], str] | None = None
    ) -> str:
        """See ``SegmentationLogic.exportDicomSegmentation``; installs highdicom on first use (asking)."""
        from . import dependencies

        if not self.testing and not dependencies.ensureHighdicom(askConfirmation=self.interactive):
            raise DependencyError("DICOM SEG export needs the highdicom package: accept its installation, then export again.")
        return self.segmentationLogic.exportDicomSegmentation(segmentationNode, referenceVolumeNode, path, fileForInstance=fileForInstance)

    def missingModules(self) -> list:
        """What the first Apply must install, read from package metadata (see ``dependencies``)."""
        from . import dependencies

        return dependencies.missingForSlicer()

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install what is missing after one confirmation; False when the user declined.

        In testing mode nothing is installed: False when something is missing.
        """
        from . import dependencies

        if self.testing:
            return not self.missingModules()
        return dependencies.ensureInstalled(self.requirementsPath, askConfirmation, onTorchInstalled=self.close)

    def runSelfTest(self, directory: str | os.PathLike, log: Callable[[str], None] = print, device: str = "cpu") -> dict:
        """The known-answer self-test through :meth:`process` (the user's path: the worker process).

        Returns:
            figures of :func:`selftest.runSelfTestScenario`, with ``seconds``.
        """
        from . import selftest

        return selftest.runSelfTestScenario(self.scene, directory, log=log, device=device, logic=self)


__all__ = ["ModelImport", "CatalogPull", "ModuleLogic"]
