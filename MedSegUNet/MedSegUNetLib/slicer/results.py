"""A finished job's results as MRML nodes: the segmentation (named, coloured segments with their
terminology), the statistics and overlap tables, and the ROI box, placed in the reference's study and
under its transform.

Nodes are created or reused here only; every change is recorded (``created``, ``restore``) so that a
failure while writing leaves the scene as it was. An output node the user removed while the network
ran is replaced by a new one (never written as a node outside the scene). A segmentation chosen as
output keeps the segments it already has: only the segments this model wrote there before are
replaced, the user's own are left as they are. Label arrays are K, J, I on the reference grid
(LPS, as SimpleITK gives them); the nodes are in RAS.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..engine import statistics, terminology
from ..engine.errors import SceneError
from .dicomexport import _segmentTag, _terminologyTagName
from .job import SegmentationJob
from .nodes import (
    BINARY_LABELMAP,
    MODEL_NAME_ATTRIBUTE,
    MODEL_VERSION_ATTRIBUTE,
    REFERENCE_ATTRIBUTE,
    _arrayToVTKMatrix,
    _vtkMatrixToArray,
    ensureSegmentationConverterRules,
)

# The tag a segment written by MedSegUNet carries: the model's name (a re-run of that model replaces
# these segments and no other).
SEGMENT_MODEL_TAG = "MedSegUNet.ModelName"


class ResultWriter:
    """Writes a job's results into ``scene`` (main thread)."""

    def __init__(self, scene) -> None:
        self.scene = scene

    def write(self, job: SegmentationJob, created: list, restore: list) -> dict:
        """The segmentation, statistics table, ROI box and overlap table of a finished job, as nodes."""
        targets = job.targets
        reference = targets["reference"]
        if not self.scene.IsNodePresent(reference):
            raise SceneError(f"The volume '{reference.GetName()}' was removed while it was being segmented: nothing was written.")
        for key in ("segmentation", "table", "roi", "overlapTable"):
            if targets[key] is not None and not self.scene.IsNodePresent(targets[key]):
                targets[key] = None  # removed during the run: a new node is made, never an orphan written
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
        nodes["roi"] = (
            self._writeROI(job, f"{baseName} ROI", created, restore) if job.request.useROI or job.request.roiBox is not None else None
        )
        if targets["withReference"]:
            nodes["overlapTable"] = self._writeOverlapTable(job, f"{baseName} overlap", created, restore)
        outputs = [node for node in nodes.values() if node is not None]
        for node in outputs:
            self._setAttribute(node, REFERENCE_ATTRIBUTE, reference.GetID(), restore)
        self._setAttribute(nodes["segmentation"], MODEL_NAME_ATTRIBUTE, job.card.name, restore)
        self._setAttribute(nodes["segmentation"], MODEL_VERSION_ATTRIBUTE, str(job.card.version or ""), restore)
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

    def _setTransform(self, node, reference, restore: list) -> None:
        """Put ``node`` under the reference's parent transform as it is now (the outputs are in the
        reference's node coordinates, so they move with it, whatever happened during the run)."""
        transformID = reference.GetTransformNodeID()
        old = node.GetTransformNodeID()
        if old != transformID:
            node.SetAndObserveTransformNodeID(transformID)
            restore.append(lambda: node.SetAndObserveTransformNodeID(old))

    def buildSegments(self, job: SegmentationJob) -> list:
        """``(segment ID wanted, vtkSegment)`` per card label, off-scene, tagged with the model.

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
        segments = []
        for label, image in zip(job.card["labels"], images):
            value = int(label["value"])
            segment = slicer.vtkSegment()
            segment.SetName(label["name"])
            segment.SetColor(*[float(c) for c in label["color"]])
            segment.SetLabelValue(value)
            segment.SetTag(SEGMENT_MODEL_TAG, job.card.name)
            entry = terminology.terminologyEntry(label)
            if entry is not None:
                segment.SetTag(_terminologyTagName(segment), entry)
            segment.AddRepresentation(BINARY_LABELMAP, image)
            segments.append((f"Segment_{value}", segment))
        return segments

    def _writeSegmentation(self, job: SegmentationJob, created: list, restore: list):
        """The model's segments into the output segmentation, beside what it already holds."""
        import slicer

        targets = job.targets
        reference = targets["reference"]
        segments = self.buildSegments(job)
        node = targets["segmentation"]
        if node is None:
            node = self._newNode("vtkMRMLSegmentationNode", f"{reference.GetName()} {job.card.name}", created)
        else:
            old = slicer.vtkSegmentation()
            old.DeepCopy(node.GetSegmentation())
            oldGeometry = (
                node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole())
                if hasattr(node, "GetReferenceImageGeometryReferenceRole")
                else None
            )

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
        self._setTransform(node, reference, restore)
        segmentation = node.GetSegmentation()
        if segmentation.GetNumberOfSegments() == 0:
            if hasattr(segmentation, "SetSourceRepresentationName"):
                segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
            else:  # Slicer < 5.4
                segmentation.SetMasterRepresentationName(BINARY_LABELMAP)
        for index in reversed(range(segmentation.GetNumberOfSegments())):
            if _segmentTag(segmentation.GetNthSegment(index), SEGMENT_MODEL_TAG) == job.card.name:
                segmentation.RemoveSegment(segmentation.GetNthSegmentID(index))
        for wanted, segment in segments:
            segmentID = wanted if segmentation.GetSegment(wanted) is None else segmentation.GenerateUniqueSegmentID(wanted)
            segmentation.AddSegment(segment, segmentID)
        # After the segments: Segment Editor works on the reference's whole grid, not the ROI's extent.
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
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
        self._setTransform(node, targets["reference"], restore)
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


__all__ = ["ResultWriter"]
