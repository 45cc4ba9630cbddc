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
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from ..engine import geometry, modelcard, pipeline, statistics
from ..engine.errors import MedSegUNetError, ProcessingCancelled
from ..engine.volumes import checkScalarVolume

ProgressCallback = Callable[[float, str], None]

BINARY_LABELMAP = "Binary labelmap"
# Set on every output node: the reference volume it was made from. Outputs of another reference
# (another patient) are not reused; a run on them makes new nodes named after the new reference.
REFERENCE_ATTRIBUTE = "MedSegUNet.ReferenceVolumeID"
# The model a segmentation node was made with: the algorithm a DICOM SEG export names.
MODEL_NAME_ATTRIBUTE = "MedSegUNet.ModelName"
MODEL_VERSION_ATTRIBUTE = "MedSegUNet.ModelVersion"
# Slicer's DICOM loader: the SOP Instance UIDs of a loaded volume's slices, in K order.
DICOM_INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
# How DICOM files are named on disk (often with no suffix at all).
DICOM_FILE_SUFFIXES = ("", ".dcm", ".ima")
# An orthonormality tolerance for directions built from world matrices: DICOM geometry carries
# rounding around 1e-6, while a real shear is orders of magnitude larger.
SHEAR_TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------
# MRML <-> SimpleITK helpers (main thread only)
# ---------------------------------------------------------------------------------------------


def _vtkMatrixToArray(matrix) -> np.ndarray:
    from slicer.util import arrayFromVTKMatrix

    return arrayFromVTKMatrix(matrix)


def _arrayToVTKMatrix(array: np.ndarray):
    from slicer.util import vtkMatrixFromArray

    return vtkMatrixFromArray(np.asarray(array, dtype=float))


def parentToWorld(node) -> np.ndarray:
    """The 4×4 matrix from a transformable node's coordinates to world RAS.

    Raises:
        MedSegUNetError: the node sits under a non-linear (warping) transform.
    """
    import vtk

    transformNode = node.GetParentTransformNode()
    if transformNode is None:
        return np.eye(4)
    if not transformNode.IsTransformToWorldLinear():
        raise MedSegUNetError(
            f"'{node.GetName()}' is under the non-linear transform '{transformNode.GetName()}': harden that transform "
            "on a copy of the volume (Data module) or use a linear transform."
        )
    matrix = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(matrix)
    return _vtkMatrixToArray(matrix)


def localIJKToRAS(volumeNode) -> np.ndarray:
    """The volume's own IJK-to-RAS matrix (node coordinates, before parent transforms), 4×4 mm."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return _vtkMatrixToArray(matrix)


def worldIJKToRAS(volumeNode) -> np.ndarray:
    """IJK to world RAS, 4×4 mm: the node's IJK-to-RAS composed with its parent linear transforms.

    Raises:
        MedSegUNetError: non-linear parent transform, or a transform that shears the voxel axes.
    """
    ijkToRAS = parentToWorld(volumeNode) @ localIJKToRAS(volumeNode)
    axes = ijkToRAS[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise MedSegUNetError(f"Volume '{volumeNode.GetName()}' has a zero spacing or a degenerate transform: fix its geometry.")
    unit = axes / spacing
    if not np.allclose(unit.T @ unit, np.eye(3), atol=SHEAR_TOLERANCE):
        raise MedSegUNetError(
            f"The transform of '{volumeNode.GetName()}' shears its voxel axes: use a rigid or scaling transform, "
            "or resample the volume first (Resample Scalar/Vector/DWI Volume)."
        )
    return ijkToRAS


def imageFromVolumeNode(volumeNode, pixelType: int | None = None) -> sitk.Image:
    """A copy of a scalar volume node as a ``SimpleITK.Image`` in world geometry (LPS).

    Args:
        volumeNode: a ``vtkMRMLScalarVolumeNode`` (or labelmap), possibly under linear transforms.
        pixelType: cast to this SimpleITK pixel type (None keeps the node's).

    Returns:
        the image; its array (K, J, I) equals ``slicer.util.arrayFromVolume(volumeNode)``.

    Raises:
        MedSegUNetError: no image data, not scalar, non-linear transform.
    """
    import slicer

    name = volumeNode.GetName()
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetNumberOfPoints() == 0:
        raise MedSegUNetError(f"Volume '{name}' has no voxels: load the image data first.")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise MedSegUNetError(
            f"Volume '{name}' has {imageData.GetNumberOfScalarComponents()} components per voxel; a scalar volume is needed (extract one component first)."
        )
    array = slicer.util.arrayFromVolume(volumeNode)  # K, J, I view of the node's voxels
    image = sitk.GetImageFromArray(np.array(array, copy=True))
    geometry.setImageGeometryFromIJKToLPS(image, geometry.LPS_TO_RAS @ worldIJKToRAS(volumeNode))
    if pixelType is not None and image.GetPixelID() != pixelType:
        image = sitk.Cast(image, pixelType)
    return image


def addVolumeFromImage(scene, image: sitk.Image, name: str, labelmap: bool = False):
    """Add a ``SimpleITK.Image`` (LPS) to a scene as a scalar (or labelmap) volume node (RAS).

    Used by the self-test and the console examples; the engine's images carry full geometry.

    Returns:
        the new volume node, with display nodes.
    """
    import slicer

    node = slicer.vtkMRMLLabelMapVolumeNode() if labelmap else slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    node.SetIJKToRASMatrix(_arrayToVTKMatrix(geometry.ijkToRASFromImage(image)))
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node


def _orientedImageToArray(orientedImage) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (K, J, I copy) and index-to-node-RAS matrix (extent start folded into the origin)."""
    from vtk.util import numpy_support

    extent = orientedImage.GetExtent()
    dims = [extent[2 * axis + 1] - extent[2 * axis] + 1 for axis in range(3)]
    scalars = orientedImage.GetPointData().GetScalars()
    if min(dims) <= 0 or scalars is None:
        return np.zeros((0, 0, 0), dtype=np.uint8), np.eye(4)
    array = numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0]).copy()
    imageToNode = _vtkMatrixToArray(_orientedImageToWorldMatrix(orientedImage))
    shift = np.eye(4)
    shift[:3, 3] = [extent[0], extent[2], extent[4]]
    return array, imageToNode @ shift


def _orientedImageToWorldMatrix(orientedImage):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    orientedImage.GetImageToWorldMatrix(matrix)
    return matrix


def ensureSegmentationConverterRules() -> None:
    """Register Slicer's labelmap/surface conversion rules when nothing did.

    The Slicer application registers them when its Segmentations module starts; the ``slicer-core``
    package does not, and without them a ``vtkSegmentation`` cannot create or copy segments.
    """
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = factory.GetConverterRules()
    if rules is not None and len(rules) > 0:
        return
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def segmentMasks(node, frameFromWorld: np.ndarray | None = None):
    """Each segment of a segmentation node as a 0/1 mask on its own grid (LPS), in segment order.

    Args:
        frameFromWorld: a RAS matrix taking world coordinates to the frame the masks are wanted
            in (a transformed volume's own frame); None keeps world coordinates.

    Yields:
        ``(segment, mask)``; ``mask`` is None for a segment with nothing painted.

    Raises:
        MedSegUNetError: the segmentation cannot be converted to binary labelmaps.
    """
    import slicer

    ensureSegmentationConverterRules()
    nodeToFrame = (np.eye(4) if frameFromWorld is None else frameFromWorld) @ parentToWorld(node)
    segmentation = node.GetSegmentation()
    if not segmentation.ContainsRepresentation(BINARY_LABELMAP):
        # Convert a copy, so the user's node keeps its representations.
        copy = slicer.vtkSegmentation()
        copy.DeepCopy(segmentation)
        if not copy.CreateRepresentation(BINARY_LABELMAP):
            raise MedSegUNetError(f"Segmentation '{node.GetName()}' cannot be converted to a binary labelmap.")
        segmentation = copy
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        representation = segment.GetRepresentation(BINARY_LABELMAP)
        array, ijkToNode = _orientedImageToArray(representation) if representation is not None else (np.zeros((0, 0, 0)), None)
        if array.size == 0:
            yield segment, None
            continue
        mask = sitk.GetImageFromArray((array == segment.GetLabelValue()).astype(np.uint8))
        geometry.setImageGeometryFromIJKToLPS(mask, geometry.LPS_TO_RAS @ nodeToFrame @ ijkToNode)
        yield segment, mask


def referencePartsFromNode(node, labels: Sequence[dict]) -> list[tuple[sitk.Image, int | None]]:
    """A reference segmentation node or labelmap volume node as images on their own grids (LPS).

    Segments are matched to the card's labels by name (case-insensitive), then by label value.

    Returns:
        ``(image, value)`` pairs: for a segmentation, a 0/1 mask per matched segment with the card
        value to paint; for a labelmap volume, the labelmap itself with ``None`` (values kept).

    Raises:
        MedSegUNetError: an unsupported node, or no segment matching the card's labels.
    """
    if node.IsA("vtkMRMLLabelMapVolumeNode") or node.IsA("vtkMRMLScalarVolumeNode"):
        return [(imageFromVolumeNode(node, sitk.sitkUInt16), None)]
    if not node.IsA("vtkMRMLSegmentationNode"):
        raise MedSegUNetError(f"Reference '{node.GetName()}' is a {node.GetClassName()}: choose a segmentation or a labelmap volume.")
    parts = []
    for segment, mask in segmentMasks(node):
        value = statistics.cardValueOfSegment(segment.GetName(), segment.GetLabelValue(), labels)
        if value is not None and mask is not None:
            parts.append((mask, value))
    if not parts and node.GetSegmentation().GetNumberOfSegments():
        names = ", ".join(label["name"] for label in labels)
        raise MedSegUNetError(
            f"No segment of reference '{node.GetName()}' matches the model's labels ({names}): rename the segments to these names."
        )
    return parts


def roiBoxFromMarkupsNode(roiNode) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Markups ROI as an oriented box in world RAS.

    Returns:
        (centerRAS 3, axesRAS 3×3 with unit columns, radiusMM 3), including parent transforms.

    Raises:
        MedSegUNetError: non-linear transform, or an empty box.
    """
    parentToWorld(roiNode)  # refuses non-linear parents
    objectToWorld = _vtkMatrixToArray(roiNode.GetObjectToWorldMatrix())
    radius = np.zeros(3)
    roiNode.GetRadiusXYZ(radius)
    columns = objectToWorld[:3, :3]
    scale = np.linalg.norm(columns, axis=0)
    if np.any(radius <= 0) or np.any(scale <= 0):
        raise MedSegUNetError(f"ROI '{roiNode.GetName()}' is empty: give it a size in every direction.")
    return objectToWorld[:3, 3].copy(), columns / scale, radius * scale


# ---------------------------------------------------------------------------------------------
# The thread-safe job
# ---------------------------------------------------------------------------------------------


@dataclass
class SegmentationJob:
    """One run's inputs as images and arrays, and its results; :meth:`run` touches no MRML.

    The ``targets`` dict holds the nodes that :meth:`SegmentationLogic.finish` writes to; ``run``
    never reads it.
    """

    modelPath: str
    device: str
    card: dict
    images: list
    names: list
    inputNames: list
    roiImages: list = field(default_factory=list)
    roiNames: list = field(default_factory=list)
    roiBox: tuple | None = None
    useROI: bool = True
    marginMM: float = 0.0
    referenceParts: list | None = None
    contextMM: float | None = None
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
                self.modelPath, self.device, self.card, self.images, self.names, self.inputNames, self.roiImages, self.roiNames,
                self.roiBox, self.useROI, self.marginMM, self.referenceParts, self.progress, self.contextMM,
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


# ---------------------------------------------------------------------------------------------
# The logic
# ---------------------------------------------------------------------------------------------


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
        self,
        inputVolumes: Sequence,
        modelPath: str | os.PathLike,
        roiVolumes: Sequence = (),
        roiNode=None,
        outputSegmentation=None,
        outputTable=None,
        referenceSegmentation=None,
        device: str = "auto",
        progressCallback: ProgressCallback | None = None,
        cancelEvent: threading.Event | None = None,
        outputROI=None,
        outputOverlapTable=None,
        useROI: bool = True,
        marginMM: float | None = None,
        contextMM: float | None = None,
    ) -> SegmentationLogicResult:
        """Segment, in one call on the calling thread (console and batch use).

        Args:
            inputVolumes: scalar volume nodes in the card's input order; the first is the reference.
            modelPath: TorchScript model file with its card.
            roiVolumes: extra volume nodes whose extents limit the ROI.
            roiNode: optional ``vtkMRMLMarkupsROINode`` that limits the ROI further.
            outputSegmentation: segmentation node to replace the segments of (None: a new node).
            outputTable: table node for the statistics (None: a new node).
            referenceSegmentation: segmentation or labelmap volume node to compare with.
            device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
            progressCallback: ``(fraction, message)``.
            cancelEvent: set it to cancel; the scene is then left as it was.
            outputROI: markups ROI node to show the ROI in (None: a new node).
            outputOverlapTable: table node for the overlap metrics (None: a new node).
            useROI: False segments the whole reference volume.
            marginMM: margin around the ROI (None: the card's ``roi.margin_mm``, else 0).
            contextMM: the network sees the ROI grown by this much; labels stay inside the ROI
                (None: the card's ``roi.context_mm``, else 0).

        Returns:
            the nodes written and the run's timings, ROI and statistics.

        Raises:
            MedSegUNetError: bad inputs; ProcessingCancelled: cancelled. The scene is unchanged.
        """
        job = self.prepare(
            inputVolumes,
            modelPath,
            roiVolumes=roiVolumes,
            roiNode=roiNode,
            outputSegmentation=outputSegmentation,
            outputTable=outputTable,
            referenceSegmentation=referenceSegmentation,
            device=device,
            progressCallback=progressCallback,
            cancelEvent=cancelEvent,
            outputROI=outputROI,
            outputOverlapTable=outputOverlapTable,
            useROI=useROI,
            marginMM=marginMM,
            contextMM=contextMM,
        )
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
        device: str = "auto",
        progressCallback: ProgressCallback | None = None,
        cancelEvent: threading.Event | None = None,
        outputROI=None,
        outputOverlapTable=None,
        useROI: bool = True,
        marginMM: float | None = None,
        contextMM: float | None = None,
    ) -> SegmentationJob:
        """Read the nodes and validate (main thread); the scene is not modified.

        Returns:
            a job whose :meth:`SegmentationJob.run` may run on a worker thread.

        Raises:
            MedSegUNetError: no inputs, wrong count for the card, unreadable model card,
                non-linear transforms, non-scalar volumes, nodes of another scene.
        """
        progress = pipeline.ProgressReporter(progressCallback, cancelEvent)
        progress.checkCancel()
        inputVolumes = [node for node in (inputVolumes or []) if node is not None]
        if not inputVolumes:
            raise MedSegUNetError("No input volume: select the model's input volumes.")
        card = modelcard.readCard(modelPath)
        if len(inputVolumes) != len(card["inputs"]):
            expected = ", ".join(i["name"] for i in card["inputs"])
            raise MedSegUNetError(
                f"Model '{card['name']}' takes {len(card['inputs'])} input volume(s) ({expected}) but {len(inputVolumes)} were given: select them in that order."
            )
        for node in [*inputVolumes, *roiVolumes]:
            self._checkNode(node, "vtkMRMLScalarVolumeNode", "volume")
        if any(node.IsA("vtkMRMLLabelMapVolumeNode") for node in inputVolumes):
            raise MedSegUNetError("An input is a labelmap volume: select the scanner images as inputs.")
        for node, kind in ((roiNode, "vtkMRMLMarkupsROINode"), (outputSegmentation, "vtkMRMLSegmentationNode"),
                           (outputTable, "vtkMRMLTableNode"), (outputROI, "vtkMRMLMarkupsROINode"),
                           (outputOverlapTable, "vtkMRMLTableNode")):
            if node is not None:
                self._checkNode(node, kind, kind.replace("vtkMRML", "").replace("Node", " node"))
        if referenceSegmentation is not None:
            self._checkNode(referenceSegmentation, "vtkMRMLNode", "reference")

        images, names = [], []
        for node in inputVolumes:
            image = imageFromVolumeNode(node)
            checkScalarVolume(image, node.GetName())
            images.append(image)
            names.append(node.GetName())
        inputIDs = {node.GetID() for node in inputVolumes}
        roiVolumes = [node for node in roiVolumes if node is not None and node.GetID() not in inputIDs]
        series = (card.get("roi") or {}).get("from_series") or []
        if series and useROI and not roiVolumes:
            names = " and ".join(f"the {name} series" for name in series)
            raise MedSegUNetError(
                f"This model was trained on the region covered by {names}: check them in the list of volumes that limit the ROI, "
                "or turn the overlap ROI off to segment the whole volume."
            )
        roiImages = [imageFromVolumeNode(node) for node in roiVolumes]
        roiBox = roiBoxFromMarkupsNode(roiNode) if roiNode is not None else None
        referenceParts = referencePartsFromNode(referenceSegmentation, card["labels"]) if referenceSegmentation is not None else None
        reference = inputVolumes[0]

        def ownOutput(node):
            made = node.GetAttribute(REFERENCE_ATTRIBUTE) if node is not None else None
            return None if node is None or (made is not None and made != reference.GetID()) else node

        outputSegmentation, outputTable, outputROI, outputOverlapTable = (ownOutput(n) for n in (outputSegmentation, outputTable, outputROI, outputOverlapTable))
        if marginMM is None:
            marginMM = float(card.get("roi", {}).get("margin_mm", 0.0))
        if marginMM < 0:
            raise MedSegUNetError("The ROI margin must be zero or positive (mm).")
        return SegmentationJob(
            modelPath=os.fspath(modelPath),
            device=device,
            card=card,
            images=images,
            names=names,
            inputNames=[i["name"] for i in card["inputs"]],
            roiImages=roiImages,
            roiNames=[node.GetName() for node in roiVolumes],
            roiBox=roiBox,
            useROI=useROI,
            marginMM=float(marginMM),
            referenceParts=referenceParts,
            contextMM=contextMM,
            progress=progress,
            worker=self.worker,
            targets={
                "reference": reference,
                "referenceIJKToRAS": localIJKToRAS(reference),
                "referenceTransformID": reference.GetTransformNodeID(),
                "segmentation": outputSegmentation,
                "table": outputTable,
                "roi": outputROI,
                "overlapTable": outputOverlapTable,
                "withReference": referenceSegmentation is not None,
            },
        )

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
            nodes = self._write(job, created, restore)
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
        )

    # -- writing ------------------------------------------------------------------------------

    def _write(self, job: SegmentationJob, created: list, restore: list) -> dict:
        targets = job.targets
        reference = targets["reference"]
        baseName = reference.GetName()
        nodes = {}
        nodes["segmentation"] = self._writeSegmentation(job, created, restore)
        nodes["table"] = self._writeTable(
            targets["table"],
            f"{baseName} statistics",
            statistics.statisticsColumns(job.inputNames, targets["withReference"]),
            statistics.statisticsRows(job.report["segments"], job.inputNames, targets["withReference"]),
            created,
            restore,
        )
        # No ROI box to show when the whole volume was segmented.
        nodes["roi"] = self._writeROI(job, f"{baseName} ROI", created, restore) if job.useROI or job.roiBox is not None else None
        if targets["withReference"]:
            nodes["overlapTable"] = self._writeOverlapTable(job, f"{baseName} overlap", created, restore)
        outputs = [node for node in nodes.values() if node is not None]
        for node in outputs:
            self._setAttribute(node, REFERENCE_ATTRIBUTE, reference.GetID(), restore)
        self._setAttribute(nodes["segmentation"], MODEL_NAME_ATTRIBUTE, job.card["name"], restore)
        self._setAttribute(nodes["segmentation"], MODEL_VERSION_ATTRIBUTE, str(job.card.get("version") or ""), restore)
        self._placeInStudy(reference, outputs, restore)
        return nodes

    @staticmethod
    def _setAttribute(node, name: str, value: str, restore: list) -> None:
        old = node.GetAttribute(name)
        node.SetAttribute(name, value)
        restore.append(lambda: node.SetAttribute(name, old) if old is not None else node.RemoveAttribute(name))

    def _placeInStudy(self, reference, nodes: Sequence, restore: list) -> None:
        """Put the outputs beside the reference volume in the subject hierarchy (its study)."""
        import slicer

        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        if shNode is None:
            return
        referenceItem = shNode.GetItemByDataNode(reference)
        parent = shNode.GetItemParent(referenceItem) if referenceItem else 0
        if not parent or parent == shNode.GetSceneItemID():
            return
        for node in nodes:
            item = shNode.GetItemByDataNode(node)
            if not item:
                shNode.CreateItem(parent, node)
                continue
            old = shNode.GetItemParent(item)
            if old != parent:
                shNode.SetItemParent(item, parent)
                restore.append(lambda item=item, old=old: shNode.SetItemParent(item, old))

    def _newNode(self, className: str, name: str, created: list):
        import slicer

        node = getattr(slicer, className)()
        node.SetName(self.scene.GenerateUniqueName(name))
        self.scene.AddNode(node)
        created.append(node)
        if hasattr(node, "CreateDefaultDisplayNodes"):
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            if display is not None and display not in created:
                created.append(display)
        return node

    def _setTransform(self, node, transformID: str | None, restore: list) -> None:
        old = node.GetTransformNodeID()
        if old != transformID:
            node.SetAndObserveTransformNodeID(transformID)
            restore.append(lambda: node.SetAndObserveTransformNodeID(old))

    def buildSegmentation(self, job: SegmentationJob):
        """A ``vtkSegmentation`` (off-scene) with one segment per card label.

        Softmax labels share one labelmap: the engine's label map cropped to the ROI, in the
        reference volume's node coordinates (its world geometry equals the engine's reference
        grid). Sigmoid regions, which may overlap, get one labelmap layer each.
        """
        import slicer
        import vtk
        from vtk.util import numpy_support

        ensureSegmentationConverterRules()
        roi = job.result.roi
        low, high = roi.ijkMin, roi.ijkMax

        def orientedImage(labels: np.ndarray):
            """A labelmap (K, J, I on the ROI) in the reference volume's node coordinates."""
            image = slicer.vtkOrientedImageData()
            image.SetExtent(int(low[0]), int(high[0]), int(low[1]), int(high[1]), int(low[2]), int(high[2]))
            image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(labels, dtype=np.uint8).ravel()
            image.SetImageToWorldMatrix(_arrayToVTKMatrix(job.targets["referenceIJKToRAS"]))
            return image

        if job.result.regions is None:
            shared = orientedImage(sitk.GetArrayViewFromImage(job.result.labelmap)[roi.slices()])
            images = [shared] * len(job.card["labels"])
        else:
            # Sigmoid regions may overlap (whole tumour ⊃ tumour core): one labelmap layer each.
            images = [
                orientedImage(region[roi.slices()].astype(np.uint8) * int(label["value"]))
                for label, region in zip(job.card["labels"], job.result.regions)
            ]
        segmentation = slicer.vtkSegmentation()
        if hasattr(segmentation, "SetSourceRepresentationName"):
            segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
        else:  # Slicer < 5.4
            segmentation.SetMasterRepresentationName(BINARY_LABELMAP)
        for label, image in zip(job.card["labels"], images):
            value = int(label["value"])
            segment = slicer.vtkSegment()
            segment.SetName(label["name"])
            segment.SetColor(*[float(c) for c in label["color"]])
            segment.SetLabelValue(value)
            entry = modelcard.terminologyEntry(label)
            if entry is not None:
                segment.SetTag(_terminologyTagName(segment), entry)
            segment.AddRepresentation(BINARY_LABELMAP, image)
            segmentation.AddSegment(segment, f"Segment_{value}")
        return segmentation

    def _writeSegmentation(self, job: SegmentationJob, created: list, restore: list):
        import slicer

        targets = job.targets
        newSegmentation = self.buildSegmentation(job)
        node = targets["segmentation"]
        if node is None:
            node = self._newNode("vtkMRMLSegmentationNode", f"{targets['reference'].GetName()} {job.card['name']}", created)
        else:
            old = slicer.vtkSegmentation()
            old.DeepCopy(node.GetSegmentation())
            oldGeometry = node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()) if hasattr(node, "GetReferenceImageGeometryReferenceRole") else None

            def undo(node=node, old=old, oldGeometry=oldGeometry):
                node.GetSegmentation().DeepCopy(old)
                if oldGeometry is not None:
                    node.SetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole(), oldGeometry)

            restore.append(undo)
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
                created.append(node.GetDisplayNode())
        # The labelmap is in the reference's node coordinates, so the node sits under the same
        # transform as the reference and moves with it.
        self._setTransform(node, targets["referenceTransformID"], restore)
        node.SetReferenceImageGeometryParameterFromVolumeNode(targets["reference"])
        node.GetSegmentation().DeepCopy(newSegmentation)
        return node

    @staticmethod
    def _tableArray(title: str, values: Sequence):
        import vtk

        present = [v for v in values if v is not None]
        if any(isinstance(v, str) for v in present):
            array = vtk.vtkStringArray()
            for v in values:
                array.InsertNextValue("" if v is None else str(v))
        elif present and len(present) == len(values) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
            array = vtk.vtkIntArray()
            for v in values:
                array.InsertNextValue(int(v))
        else:
            array = vtk.vtkDoubleArray()
            for v in values:
                array.InsertNextValue(float("nan") if v is None else float(v))
        array.SetName(title)
        return array

    def _writeTable(self, node, name: str, columns: Sequence[str], rows: Sequence[Sequence], created: list, restore: list):
        import vtk

        table = vtk.vtkTable()
        for index, title in enumerate(columns):
            table.AddColumn(self._tableArray(title, [row[index] for row in rows]))
        if node is None:
            node = self._newNode("vtkMRMLTableNode", name, created)
        else:
            oldTable = node.GetTable()
            oldLocked = node.GetLocked()
            restore.append(lambda: (node.SetAndObserveTable(oldTable), node.SetLocked(oldLocked)))
        node.SetAndObserveTable(table)
        if hasattr(node, "SetUseColumnTitleAsColumnHeader"):
            node.SetUseColumnTitleAsColumnHeader(True)
        node.SetLocked(True)
        return node

    def _writeROI(self, job: SegmentationJob, name: str, created: list, restore: list):
        """Show the ROI box as a markups ROI, oriented with the reference volume's axes."""
        roi = job.result.roi
        targets = job.targets
        ijkToRAS = targets["referenceIJKToRAS"]  # node coordinates; the ROI node shares the reference's transform
        axes = ijkToRAS[:3, :3]
        spacing = np.linalg.norm(axes, axis=0)
        rotation = axes / spacing
        if np.linalg.det(rotation) < 0:
            # A left-handed grid: flip one box axis (the box is symmetric) so the ROI gets a rotation.
            rotation[:, 2] = -rotation[:, 2]
        objectToNode = np.eye(4)
        objectToNode[:3, :3] = rotation
        objectToNode[:3, 3] = (ijkToRAS @ np.append((roi.ijkMin + roi.ijkMax) / 2.0, 1.0))[:3]
        radius = (roi.ijkMax - roi.ijkMin + 1) * spacing / 2.0
        node = targets["roi"]
        if node is None:
            node = self._newNode("vtkMRMLMarkupsROINode", name, created)
        else:
            oldMatrix = _vtkMatrixToArray(node.GetObjectToNodeMatrix())
            oldRadius = np.zeros(3)
            node.GetRadiusXYZ(oldRadius)
            oldLocked = node.GetLocked()

            def undo(node=node, oldMatrix=oldMatrix, oldRadius=oldRadius, oldLocked=oldLocked):
                node.GetObjectToNodeMatrix().DeepCopy(_arrayToVTKMatrix(oldMatrix))
                node.SetRadiusXYZ(*oldRadius)
                node.SetLocked(oldLocked)

            restore.append(undo)
        self._setTransform(node, targets["referenceTransformID"], restore)
        node.GetObjectToNodeMatrix().DeepCopy(_arrayToVTKMatrix(objectToNode))
        node.SetRadiusXYZ(*[float(r) for r in radius])
        # It reports where the model ran; editing it would suggest it changes the result.
        node.SetLocked(True)
        return node

    def _writeOverlapTable(self, job: SegmentationJob, name: str, created: list, restore: list):
        titles = [title for _, title in statistics.OVERLAP_KEYS]
        keys = [key for key, _ in statistics.OVERLAP_KEYS]
        rows = [[s["name"], s["value"], *[s.get(key) for key in keys]] for s in job.report["segments"]]
        meanRow = ["Mean", None]
        for key in keys:
            values = [s.get(key) for s in job.report["segments"] if s.get(key) is not None]
            meanRow.append(float(np.mean(values)) if values else None)
        rows.append(meanRow)
        return self._writeTable(job.targets["overlapTable"], name, ["Segment", "Label value", *titles], rows, created, restore)

    # -- checks -------------------------------------------------------------------------------

    def exportDicomSegmentation(self, segmentationNode, referenceVolumeNode, path: str, fileForInstance: Callable[[str], str] | None = None) -> str:
        """Write a segmentation node as a DICOM SEG of the DICOM series its reference volume was loaded from.

        The node's segments as they are now (edits included) become the SEG's segments, in order,
        with their names, colours and terminology; overlapping segments stay overlapping. The
        algorithm is the model the node was made with (its ``MedSegUNet.ModelName`` attribute),
        else the node's name. Each segment is resampled (nearest neighbour) onto the series' grid
        as its files give it (LPS; K along the slice normal), through the nodes' transforms, so
        frame k references source image k. Written to a temporary name, read back, then renamed.

        Args:
            referenceVolumeNode: the volume the segmentation was made on; None takes the one its
                ``MedSegUNet.ReferenceVolumeID`` attribute records (so a selector changed after
                segmenting cannot make the SEG reference another series).
            fileForInstance: a SOP Instance UID's file (``slicer.dicomDatabase.fileForInstance``),
                for a volume loaded by the DICOM module; without it, the volume's storage node files.

        Returns:
            ``path``.

        Raises:
            MedSegUNetError: the volume did not come from DICOM, its files are gone, it was
                moved, cropped or resampled since loading, or the file cannot be written.
        """
        from ..engine import dicomseg, volumes

        self._checkNode(segmentationNode, "vtkMRMLSegmentationNode", "Segmentation")
        if referenceVolumeNode is None:
            recorded = segmentationNode.GetAttribute(REFERENCE_ATTRIBUTE)
            referenceVolumeNode = self.scene.GetNodeByID(recorded) if recorded else None
            if referenceVolumeNode is None:
                raise MedSegUNetError(f"Segmentation '{segmentationNode.GetName()}' does not record the volume it was made on: give the reference volume.")
        self._checkNode(referenceVolumeNode, "vtkMRMLScalarVolumeNode", "Reference volume")
        name = referenceVolumeNode.GetName()
        series = volumes.dicomSeriesFromFiles(dicomFilesOfVolume(referenceVolumeNode, fileForInstance), name)
        grid = volumes.readDicomSeries(series, name)
        if not sameVoxelLattice(grid, localIJKToRAS(referenceVolumeNode), referenceVolumeNode.GetImageData().GetDimensions()):
            raise MedSegUNetError(
                f"'{name}' no longer has the geometry of its DICOM files (moved, cropped or resampled since loading): a DICOM SEG would be misplaced; segment the series as loaded."
            )
        frameFromWorld = np.linalg.inv(parentToWorld(referenceVolumeNode))
        labels, masks = [], []
        for number, (segment, mask) in enumerate(segmentMasks(segmentationNode, frameFromWorld), start=1):
            label = {"value": number, "name": segment.GetName() or f"Segment {number}", "color": [float(c) for c in segment.GetColor()]}
            terminology = modelcard.terminologyFromEntry(_segmentTag(segment, _terminologyTagName(segment)))
            if terminology is not None:
                label["terminology"] = terminology
            labels.append(label)
            onGrid = sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8) if mask is not None else None
            masks.append(sitk.GetArrayFromImage(onGrid) if onGrid is not None else np.zeros(grid.GetSize()[::-1], np.uint8))
        if not labels:
            raise MedSegUNetError(f"Segmentation '{segmentationNode.GetName()}' has no segments: there is nothing to export.")
        card = {
            "name": segmentationNode.GetAttribute(MODEL_NAME_ATTRIBUTE) or segmentationNode.GetName() or "Segmentation",
            "version": segmentationNode.GetAttribute(MODEL_VERSION_ATTRIBUTE) or "", "labels": labels,
        }
        with volumes.StagedOutputs() as outputs:
            dicomseg.stageDicomSegmentation(outputs, series, grid, card, path, regions=np.stack(masks))
        return path

    def _checkNode(self, node, className: str, what: str) -> None:
        if not node.IsA(className):
            raise MedSegUNetError(f"'{node.GetName()}' is a {node.GetClassName()}, not a {what}: choose another node.")
        if node.GetScene() is not self.scene and node.GetScene() != self.scene:
            raise MedSegUNetError(f"'{node.GetName()}' is not in this scene: choose a node of the current scene.")


# ---------------------------------------------------------------------------------------------
# Widget helpers without Qt (pre-filling selectors, devices)
# ---------------------------------------------------------------------------------------------


def _terminologyTagName(segment) -> str:
    return segment.GetTerminologyEntryTagName() if hasattr(segment, "GetTerminologyEntryTagName") else "TerminologyEntry"


def _segmentTag(segment, name: str) -> str | None:
    """A segment tag's value (the wrapped ``GetTag`` returns it through an out-argument)."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def dicomFilesOfVolume(volumeNode, fileForInstance: Callable[[str], str] | None = None) -> list[str]:
    """The DICOM files a volume node was loaded from.

    Slicer's DICOM module stores the slices' SOP Instance UIDs in the node's ``DICOM.instanceUIDs``
    attribute and the files in its database (``fileForInstance``); a series added as files keeps
    them in its storage node (one archetype file stands for its folder's series).

    Raises:
        MedSegUNetError: the volume was not loaded from DICOM, or its files are not known.
    """
    from ..engine import volumes

    name = volumeNode.GetName()
    uids = (volumeNode.GetAttribute(DICOM_INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if uids and fileForInstance is not None:
        files = [fileForInstance(uid) for uid in uids]
        missing = sum(1 for path in files if not path)
        if missing:
            raise MedSegUNetError(f"{missing} of the {len(uids)} DICOM files of '{name}' are not in the DICOM database: import the series again.")
        return files
    storage = volumeNode.GetStorageNode()
    files = [storage.GetNthFileName(index) for index in range(storage.GetNumberOfFileNames())] if storage is not None else []
    if storage is not None and storage.GetFileName() and storage.GetFileName() not in files:
        files.insert(0, storage.GetFileName())
    dicomNamed = all(volumes.pathSuffix(path) in DICOM_FILE_SUFFIXES for path in files)
    if len(files) == 1 and dicomNamed and os.path.isfile(files[0]):
        archetype = os.path.realpath(files[0])
        for candidate in volumes.findDicomSeries(os.path.dirname(archetype)):
            if archetype in {os.path.realpath(path) for path in candidate.files}:
                return list(candidate.files)
    if len(files) > 1 and dicomNamed:
        return files
    raise MedSegUNetError(
        f"'{name}' was not loaded from DICOM: a DICOM SEG references the images it was made on; load the series with the DICOM module, or save a .seg.nrrd."
    )


def sameVoxelLattice(image: sitk.Image, ijkToRAS: np.ndarray, dimensions: Sequence[int], tolerance: float = 0.01) -> bool:
    """Whether a volume node's voxels (IJK→RAS, dimensions IJK) are the image's (LPS): the same
    size and the same box, up to the order of the axes' directions (Slicer reverses the slices of
    a left-handed series)."""
    if tuple(int(d) for d in dimensions) != tuple(image.GetSize()):
        return False
    ours = geometry.fullROI(geometry.VolumeGeometry.fromImage(image)).cornersRAS()
    theirs = geometry.fullROI(geometry.VolumeGeometry.fromIJKToRAS(ijkToRAS, dimensions)).cornersRAS()
    return geometry.sameCorners(ours, theirs, tolerance)


def seriesCandidates(volumeNodes: Sequence) -> list:
    """Scalar volume nodes as :class:`seriesmatch.SeriesCandidate` (name words, plane from world IJK-to-RAS).

    Nodes without image data or under a non-linear transform are left out; never raises.
    """
    from ..cohorts.seriesmatch import SeriesCandidate, planeOfDirection, words

    candidates = []
    for node in volumeNodes:
        try:
            if node.IsA("vtkMRMLLabelMapVolumeNode") or not node.IsA("vtkMRMLScalarVolumeNode") or node.GetImageData() is None:
                continue
            ijkToLPS = geometry.LPS_TO_RAS @ worldIJKToRAS(node)
            axes = ijkToLPS[:3, :3] / np.linalg.norm(ijkToLPS[:3, :3], axis=0)
            candidates.append(SeriesCandidate(node.GetID(), node.GetName(), words(node.GetName()), planeOfDirection(axes.ravel())))
        except (MedSegUNetError, ValueError, ZeroDivisionError):
            continue
    return candidates


def suggestInputVolumes(card: dict, volumeNodes: Sequence) -> list:
    """Pre-fill one volume per card input, with the series matcher ``medsegunet batch`` uses.

    An input's ``match`` words (or its name's) are scored against the volume names (whole words
    count twice, parts of words once; a plane word requires that plane), each volume used once.

    Returns:
        one node (or None) per card input, in card order.
    """
    from ..cohorts.seriesmatch import suggestSeries

    byID = {node.GetID(): node for node in volumeNodes}
    inputs, _ = suggestSeries(card, seriesCandidates(volumeNodes))
    return [byID[candidate.path] if candidate is not None else None for candidate in inputs]


def suggestROIVolumes(reference, candidates: Sequence, card: dict | None = None) -> list:
    """The extra series to pre-check for limiting the ROI: other series of the reference's study.

    A candidate is chosen when it overlaps the reference and either shares the reference's
    subject-hierarchy study (DICOM loads) or the series matcher (:mod:`seriesmatch`, as
    ``medsegunet batch``) picks it for one of the card's ``roi.from_series`` entries.

    Returns:
        the chosen nodes, in candidate order; empty for a reference without image data or under a
        non-linear transform (never raises: it only pre-fills a list).
    """
    from ..cohorts.seriesmatch import suggestSeries

    if reference is None or reference.GetImageData() is None:
        return []
    scene = reference.GetScene()
    shNode = scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") if scene is not None else None
    study = None
    if shNode is not None:
        item = shNode.GetItemByDataNode(reference)
        parent = shNode.GetItemParent(item) if item else 0
        study = parent if parent and parent != shNode.GetSceneItemID() else None
    try:
        referenceGeometry = geometry.VolumeGeometry.fromIJKToRAS(worldIJKToRAS(reference), reference.GetImageData().GetDimensions(), reference.GetName())
    except MedSegUNetError:  # e.g. a reference under a non-linear transform
        return []
    overlapping = []
    for node in candidates:
        if node is reference or not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetImageData() is None:
            continue
        try:
            candidate = geometry.VolumeGeometry.fromIJKToRAS(worldIJKToRAS(node), node.GetImageData().GetDimensions(), node.GetName())
            geometry.computeROI(referenceGeometry, [candidate])
        except MedSegUNetError:
            continue
        overlapping.append(node)
    named = set()
    if card:
        # Only series that overlap the reference compete for the card's ROI series.
        _, roi = suggestSeries({**card, "inputs": []}, seriesCandidates(overlapping))
        named = {candidate.path for candidate in roi}
    chosen = []
    for node in overlapping:
        sameStudy = study is not None and shNode.GetItemParent(shNode.GetItemByDataNode(node)) == study
        if sameStudy or node.GetID() in named:
            chosen.append(node)
    return chosen


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


__all__ = [
    "SegmentationLogic",
    "SegmentationJob",
    "SegmentationLogicResult",
    "ProcessingCancelled",
    "MedSegUNetError",
    "addVolumeFromImage",
    "imageFromVolumeNode",
    "worldIJKToRAS",
    "timingsText",
    "suggestInputVolumes",
    "suggestROIVolumes",
    "availableDevices",
]
