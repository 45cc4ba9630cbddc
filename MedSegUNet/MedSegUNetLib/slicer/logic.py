"""MRML side of MedSegUNet: volume nodes in, segmentation, statistics table and ROI nodes out.

Runs in the Slicer application (on ``slicer.mrmlScene``) and under pytest with the ``slicer-core``
package (real MRML classes, no Qt), so it never touches ``slicer.mrmlScene``, ``slicer.app`` or Qt.

A run is split in three so that the heavy part can go to a worker thread:

1. :meth:`SegmentationLogic.prepare` (main thread): reads the nodes into ``SimpleITK.Image`` s in
   *world* geometry (the node's IJK-to-RAS composed with its parent linear transforms; the user's
   nodes are never hardened) and validates everything it can. Nothing in the scene changes.
2. :meth:`SegmentationJob.run` (any thread): model loading, ROI, inference and statistics on
   images and arrays only; no MRML call.
3. :meth:`SegmentationLogic.finish` (main thread): writes the results into nodes. Nodes are created
   only here, at the end; if writing fails, created nodes are removed and reused output nodes are
   restored, so a failure or a cancel leaves the scene as it was.

Frames: Slicer nodes are RAS (mm), the engine's images are LPS (mm). ``arrayFromVolume`` arrays and
SimpleITK arrays are K, J, I; ``vtkOrientedImageData`` scalars are stored in the same K, J, I order.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Sequence

from ..engine import modelcard, pipeline
from ..engine.cardview import ModelCard
from ..engine.errors import SceneError, VolumeError
from ..engine.request import ProgressCallback, SegmentationRequest
from ..engine.volumes import checkScalarVolume
from .job import SegmentationJob, SegmentationLogicResult
from .nodes import REFERENCE_ATTRIBUTE, checkNode, imageFromVolumeNode, localIJKToRAS, referencePartsFromNode, roiBoxFromMarkupsNode
from .results import ResultWriter


def _ownOutput(node, reference):
    """The output node to reuse, or None for a new one: a node made for another reference volume is left as it is."""
    made = node.GetAttribute(REFERENCE_ATTRIBUTE) if node is not None else None
    return None if node is None or (made is not None and made != reference.GetID()) else node


class SegmentationLogic:
    """Segments scalar volume nodes of a scene with a MedSegUNet model.

    Args:
        scene: the ``vtkMRMLScene`` to read from and write to (``slicer.mrmlScene`` in Slicer).
        useWorker: run the network (and every torch or MONAI import) in a worker process that is
            kept warm between runs, as the Slicer module does; otherwise in this process.
        workerExecutable: the worker's Python (Slicer's ``PythonSlicer``; default ``sys.executable``).
    """

    def __init__(self, scene, useWorker: bool = False, workerExecutable: str | None = None) -> None:
        if scene is None:
            raise ValueError("SegmentationLogic needs a vtkMRMLScene")
        self.scene = scene
        self.useWorker = useWorker
        self.workerExecutable = workerExecutable
        self._worker = None

    @property
    def worker(self):
        """The warm worker process (started on the first run and kept, with its loaded model)."""
        if not self.useWorker:
            return None
        if self._worker is None:
            from .worker import WorkerProcess

            self._worker = WorkerProcess(self.workerExecutable)
        return self._worker

    def close(self) -> None:
        """Stop the worker process, if any (a later run starts a new one)."""
        if self._worker is not None:
            self._worker.close()

    # -- public API ---------------------------------------------------------------------------

    def process(
        self, inputVolumes: Sequence, modelPath: str | os.PathLike, roiVolumes: Sequence = (), **keywords
    ) -> SegmentationLogicResult:
        """Segment, in one call on the calling thread (console and batch use): :meth:`prepare` with
        the same arguments, the job run, then :meth:`finish`.

        Returns:
            the nodes written and the run's timings, ROI and statistics.

        Raises:
            MedSegUNetError: bad inputs; ProcessingCancelled: cancelled. The scene is unchanged.
        """
        job = self.prepare(inputVolumes, modelPath, roiVolumes, **keywords)
        job.run()
        return self.finish(job)

    def prepare(
        self,
        inputVolumes: Sequence,
        modelPath: str | os.PathLike,
        roiVolumes: Sequence = (),
        roiNode=None,
        outputSegmentation=None,
        outputTable=None,
        referenceSegmentation=None,
        outputROI=None,
        outputOverlapTable=None,
        progressCallback: ProgressCallback | None = None,
        cancelEvent: threading.Event | None = None,
        **options,
    ) -> SegmentationJob:
        """Read the nodes and validate (main thread); the scene is not modified.

        Args:
            inputVolumes: scalar volume nodes in the card's input order; the first is the reference.
            modelPath: the model file with its card.
            roiVolumes: extra volume nodes whose extents limit the ROI.
            roiNode: optional ``vtkMRMLMarkupsROINode`` that limits the ROI further.
            outputSegmentation: segmentation node to write into (its own segments are kept; None: a new node).
            outputTable, outputROI, outputOverlapTable: nodes to reuse (None: new nodes).
            referenceSegmentation: segmentation or labelmap volume node to compare with.
            progressCallback: ``(fraction, message)``; cancelEvent: set it to cancel.
            options: how to run, as :class:`SegmentationRequest` takes them: ``device``, ``useROI``,
                ``marginMM`` and ``contextMM`` (None: the card's ``roi.margin_mm`` / ``context_mm``).

        Returns:
            a job whose :meth:`SegmentationJob.run` may run on a worker thread.

        Raises:
            MedSegUNetError: no inputs, wrong count for the card, unreadable model card,
                non-linear transforms, non-scalar volumes, nodes of another scene.
        """
        progress = pipeline.ProgressReporter(progressCallback, cancelEvent)
        progress.checkCancel()
        inputVolumes = [node for node in (inputVolumes or []) if node is not None]
        card = self._readCard(modelPath, inputVolumes)
        self._checkNodes(
            inputVolumes,
            roiVolumes,
            {
                roiNode: "vtkMRMLMarkupsROINode",
                outputSegmentation: "vtkMRMLSegmentationNode",
                outputTable: "vtkMRMLTableNode",
                outputROI: "vtkMRMLMarkupsROINode",
                outputOverlapTable: "vtkMRMLTableNode",
                referenceSegmentation: "vtkMRMLNode",
            },
        )
        request = SegmentationRequest(
            modelPath=os.fspath(modelPath), roiBox=roiBoxFromMarkupsNode(roiNode) if roiNode is not None else None, **options
        )
        images = [imageFromVolumeNode(node) for node in inputVolumes]
        for image, node in zip(images, inputVolumes):
            checkScalarVolume(image, node.GetName())
        roiVolumes = self._roiSeries(card, inputVolumes, roiVolumes, request.useROI)
        reference = inputVolumes[0]
        outputs = {"segmentation": outputSegmentation, "table": outputTable, "roi": outputROI, "overlapTable": outputOverlapTable}
        return SegmentationJob(
            request=request,
            card=card,
            images=images,
            names=[node.GetName() for node in inputVolumes],
            inputNames=card.inputNames,
            roiImages=[imageFromVolumeNode(node) for node in roiVolumes],
            roiNames=[node.GetName() for node in roiVolumes],
            progress=progress,
            worker=self.worker,
            referenceParts=referencePartsFromNode(referenceSegmentation, card["labels"]) if referenceSegmentation is not None else None,
            targets={
                "reference": reference,
                "referenceIJKToRAS": localIJKToRAS(reference),
                **{key: _ownOutput(node, reference) for key, node in outputs.items()},
                "withReference": referenceSegmentation is not None,
            },
        )

    @staticmethod
    def _readCard(modelPath, inputVolumes: Sequence) -> ModelCard:
        """The model's card, with as many input volumes as it takes."""
        if not inputVolumes:
            raise VolumeError("No input volume: select the model's input volumes.")
        card = modelcard.readCard(modelPath)
        if len(inputVolumes) != len(card.inputs):
            expected = ", ".join(card.inputNames)
            raise VolumeError(
                f"Model '{card.name}' takes {len(card.inputs)} input volume(s) ({expected}) but {len(inputVolumes)} were given: "
                "select them in that order."
            )
        return card

    def _checkNodes(self, inputVolumes: Sequence, roiVolumes: Sequence, others: dict) -> None:
        """Every node of this scene and of the right class; inputs are scanner images, not labelmaps."""
        for node in [*inputVolumes, *roiVolumes]:
            checkNode(self.scene, node, "vtkMRMLScalarVolumeNode", "volume")
        if any(node.IsA("vtkMRMLLabelMapVolumeNode") for node in inputVolumes):
            raise SceneError("An input is a labelmap volume: select the scanner images as inputs.")
        for node, kind in others.items():
            if node is not None:
                checkNode(
                    self.scene, node, kind, "reference" if kind == "vtkMRMLNode" else kind.replace("vtkMRML", "").replace("Node", " node")
                )

    @staticmethod
    def _roiSeries(card: ModelCard, inputVolumes: Sequence, roiVolumes: Sequence, useROI: bool) -> list:
        """The volumes that limit the ROI (inputs aside); refused when the card's ROI needs series and none is given."""
        inputIDs = {node.GetID() for node in inputVolumes}
        roiVolumes = [node for node in roiVolumes if node is not None and node.GetID() not in inputIDs]
        series = card.roi.fromSeries
        if series and useROI and not roiVolumes:
            names = " and ".join(f"the {name} series" for name in series)
            raise VolumeError(
                f"This model was trained on the region covered by {names}: check them in the list of volumes that limit the ROI, "
                "or turn the overlap ROI off to segment the whole volume."
            )
        return roiVolumes

    def finish(self, job: SegmentationJob) -> SegmentationLogicResult:
        """Write a finished job's results into the scene (main thread).

        Raises:
            the job's error, or ProcessingCancelled when cancel was asked meanwhile; the scene is
            then unchanged. An error while writing removes what was created and restores the
            reused nodes before it is raised.
        """
        if not job.done.is_set():
            raise RuntimeError("finish() called before the job ran")
        if job.error is not None:
            raise job.error
        job.progress.stage(pipeline.Stage.WRITING)  # raises ProcessingCancelled if asked meanwhile
        created, restore = [], []
        # Batch the scene's events so views update once, and undo cleanly on failure.
        self.scene.StartState(self.scene.BatchProcessState)
        try:
            nodes = ResultWriter(self.scene).write(job, created, restore)
        except BaseException:
            for node in reversed(created):
                if self.scene.IsNodePresent(node):
                    self.scene.RemoveNode(node)
            for undo in reversed(restore):
                undo()
            raise
        finally:
            self.scene.EndState(self.scene.BatchProcessState)
        timings = dict(job.progress.finish(f"Done in {sum(job.timings.values()):.1f} s"))
        return SegmentationLogicResult(
            segmentationNode=nodes["segmentation"],
            statisticsTableNode=nodes["table"],
            roiNode=nodes["roi"],
            overlapTableNode=nodes.get("overlapTable"),
            timings=timings,
            roi=job.result.roi,
            report=job.report,
            device=job.result.device,
            warnings=list(job.warnings),
        )

    def exportDicomSegmentation(
        self, segmentationNode, referenceVolumeNode, path: str, fileForInstance: Callable[[str], str] | None = None
    ) -> str:
        """See :func:`dicomexport.exportDicomSegmentation` (on this logic's scene)."""
        from .dicomexport import exportDicomSegmentation

        return exportDicomSegmentation(self.scene, segmentationNode, referenceVolumeNode, path, fileForInstance)


__all__ = ["SegmentationLogic"]
