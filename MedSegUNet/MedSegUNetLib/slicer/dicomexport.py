"""A segmentation node as DICOM SEG of the DICOM series its reference volume was loaded from.

The series' files come from Slicer's DICOM database (``DICOM.instanceUIDs``) or the volume's storage
node; the volume must still have the voxel lattice of its files. Segment masks are resampled from the
node's world frame (RAS, through its transforms) onto the series' grid (LPS; K along the slice normal).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from ..engine import geometry
from ..engine.errors import SceneError
from ..engine.terminology import terminologyFromEntry
from .nodes import MODEL_NAME_ATTRIBUTE, MODEL_VERSION_ATTRIBUTE, REFERENCE_ATTRIBUTE, checkNode, localIJKToRAS, parentToWorld, segmentMasks

# Slicer's DICOM loader: the SOP Instance UIDs of a loaded volume's slices, in K order.
DICOM_INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
# How DICOM files are named on disk (often with no suffix at all).
DICOM_FILE_SUFFIXES = ("", ".dcm", ".ima")


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
    from ..engine import paths, volumes

    name = volumeNode.GetName()
    uids = (volumeNode.GetAttribute(DICOM_INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if uids and fileForInstance is not None:
        files = [fileForInstance(uid) for uid in uids]
        missing = sum(1 for path in files if not path)
        if missing:
            raise SceneError(
                f"{missing} of the {len(uids)} DICOM files of '{name}' are not in the DICOM database: import the series again."
            )
        return files
    storage = volumeNode.GetStorageNode()
    files = [storage.GetNthFileName(index) for index in range(storage.GetNumberOfFileNames())] if storage is not None else []
    if storage is not None and storage.GetFileName() and storage.GetFileName() not in files:
        files.insert(0, storage.GetFileName())
    dicomNamed = all(paths.pathSuffix(path) in DICOM_FILE_SUFFIXES for path in files)
    if len(files) == 1 and dicomNamed and os.path.isfile(files[0]):
        archetype = os.path.realpath(files[0])
        for candidate in volumes.findDicomSeries(os.path.dirname(archetype)):
            if archetype in {os.path.realpath(path) for path in candidate.files}:
                return list(candidate.files)
    if len(files) > 1 and dicomNamed:
        return files
    raise SceneError(
        f"'{name}' was not loaded from DICOM: a DICOM SEG references the images it was made on; load the series with the DICOM module, or "
        "save a .seg.nrrd."
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


def exportDicomSegmentation(
    scene, segmentationNode, referenceVolumeNode, path: str, fileForInstance: Callable[[str], str] | None = None
) -> str:
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
    from ..engine import dicomseg, staging, volumes

    checkNode(scene, segmentationNode, "vtkMRMLSegmentationNode", "Segmentation")
    if referenceVolumeNode is None:
        recorded = segmentationNode.GetAttribute(REFERENCE_ATTRIBUTE)
        referenceVolumeNode = scene.GetNodeByID(recorded) if recorded else None
        if referenceVolumeNode is None:
            raise SceneError(
                f"Segmentation '{segmentationNode.GetName()}' does not record the volume it was made on: give the reference volume."
            )
    checkNode(scene, referenceVolumeNode, "vtkMRMLScalarVolumeNode", "Reference volume")
    name = referenceVolumeNode.GetName()
    series = volumes.dicomSeriesFromFiles(dicomFilesOfVolume(referenceVolumeNode, fileForInstance), name)
    grid = volumes.readDicomSeries(series, name)
    if not sameVoxelLattice(grid, localIJKToRAS(referenceVolumeNode), referenceVolumeNode.GetImageData().GetDimensions()):
        raise SceneError(
            f"'{name}' no longer has the geometry of its DICOM files (moved, cropped or resampled since loading): a DICOM SEG would be "
            "misplaced; segment the series as loaded."
        )
    frameFromWorld = np.linalg.inv(parentToWorld(referenceVolumeNode))
    labels, masks = [], []
    for number, (segment, mask) in enumerate(segmentMasks(segmentationNode, frameFromWorld), start=1):
        label = {"value": number, "name": segment.GetName() or f"Segment {number}", "color": [float(c) for c in segment.GetColor()]}
        terminology = terminologyFromEntry(_segmentTag(segment, _terminologyTagName(segment)))
        if terminology is not None:
            label["terminology"] = terminology
        labels.append(label)
        onGrid = sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8) if mask is not None else None
        masks.append(sitk.GetArrayFromImage(onGrid) if onGrid is not None else np.zeros(grid.GetSize()[::-1], np.uint8))
    if not labels:
        raise SceneError(f"Segmentation '{segmentationNode.GetName()}' has no segments: there is nothing to export.")
    card = {
        "name": segmentationNode.GetAttribute(MODEL_NAME_ATTRIBUTE) or segmentationNode.GetName() or "Segmentation",
        "version": segmentationNode.GetAttribute(MODEL_VERSION_ATTRIBUTE) or "",
        "labels": labels,
    }
    with staging.StagedOutputs() as outputs:
        dicomseg.stageDicomSegmentation(outputs, series, grid, card, path, regions=np.stack(masks))
    return path


__all__ = ["DICOM_INSTANCE_UIDS_ATTRIBUTE", "dicomFilesOfVolume", "sameVoxelLattice", "exportDicomSegmentation"]
