"""MRML nodes ↔ SimpleITK images, and which volumes of a scene a model's inputs and ROI series are.

Frames: Slicer nodes are RAS (mm), the engine's images LPS (mm). A node's world geometry is its
IJK-to-RAS composed with its parent linear transforms (nothing is hardened); a non-linear transform
or one that shears the voxel axes is refused. ``arrayFromVolume`` arrays and SimpleITK arrays are
K, J, I; ``vtkOrientedImageData`` scalars are stored in the same order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..engine import geometry, statistics
from ..engine.errors import MedSegUNetError, SceneError

BINARY_LABELMAP = "Binary labelmap"
# Set on every output node: the reference volume it was made from. Outputs of another reference
# (another patient) are not reused; a run on them makes new nodes named after the new reference.
REFERENCE_ATTRIBUTE = "MedSegUNet.ReferenceVolumeID"
# The model a segmentation node was made with: the algorithm a DICOM SEG export names.
MODEL_NAME_ATTRIBUTE = "MedSegUNet.ModelName"
MODEL_VERSION_ATTRIBUTE = "MedSegUNet.ModelVersion"


# An orthonormality tolerance for directions built from world matrices: DICOM geometry carries
# rounding around 1e-6, while a real shear is orders of magnitude larger.
SHEAR_TOLERANCE = 1e-4


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
        raise SceneError(
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
        raise SceneError(f"Volume '{volumeNode.GetName()}' has a zero spacing or a degenerate transform: fix its geometry.")
    unit = axes / spacing
    if not np.allclose(unit.T @ unit, np.eye(3), atol=SHEAR_TOLERANCE):
        raise SceneError(
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
        raise SceneError(f"Volume '{name}' has no voxels: load the image data first.")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise SceneError(
            f"Volume '{name}' has {imageData.GetNumberOfScalarComponents()} components per voxel; a scalar volume is needed (extract one "
            "component first)."
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
            raise SceneError(f"Segmentation '{node.GetName()}' cannot be converted to a binary labelmap.")
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
        raise SceneError(f"Reference '{node.GetName()}' is a {node.GetClassName()}: choose a segmentation or a labelmap volume.")
    parts = []
    for segment, mask in segmentMasks(node):
        value = statistics.cardValueOfSegment(segment.GetName(), segment.GetLabelValue(), labels)
        if value is not None and mask is not None:
            parts.append((mask, value))
    if not parts and node.GetSegmentation().GetNumberOfSegments():
        names = ", ".join(label["name"] for label in labels)
        raise SceneError(
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
        raise SceneError(f"ROI '{roiNode.GetName()}' is empty: give it a size in every direction.")
    return objectToWorld[:3, 3].copy(), columns / scale, radius * scale


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
        referenceGeometry = geometry.VolumeGeometry.fromIJKToRAS(
            worldIJKToRAS(reference), reference.GetImageData().GetDimensions(), reference.GetName()
        )
    except MedSegUNetError:  # e.g. a reference under a non-linear transform
        return []
    overlapping = []
    for node in candidates:
        if (
            node is reference
            or not node.IsA("vtkMRMLScalarVolumeNode")
            or node.IsA("vtkMRMLLabelMapVolumeNode")
            or node.GetImageData() is None
        ):
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


def checkNode(scene, node, className: str, what: str) -> None:
    """Refuse a node of another class, or of another scene, in one line."""
    if not node.IsA(className):
        raise SceneError(f"'{node.GetName()}' is a {node.GetClassName()}, not a {what}: choose another node.")
    if node.GetScene() is not scene and node.GetScene() != scene:
        raise SceneError(f"'{node.GetName()}' is not in this scene: choose a node of the current scene.")


__all__ = [
    "BINARY_LABELMAP",
    "REFERENCE_ATTRIBUTE",
    "MODEL_NAME_ATTRIBUTE",
    "MODEL_VERSION_ATTRIBUTE",
    "parentToWorld",
    "localIJKToRAS",
    "worldIJKToRAS",
    "imageFromVolumeNode",
    "addVolumeFromImage",
    "ensureSegmentationConverterRules",
    "segmentMasks",
    "referencePartsFromNode",
    "roiBoxFromMarkupsNode",
    "seriesCandidates",
    "suggestInputVolumes",
    "suggestROIVolumes",
    "checkNode",
]
