"""The Slicer module's self-test scenario, runnable in Slicer and under pytest with slicer-core.

Three oblique phantom "series" (an axial-like reference tilted 18°, a sagittal-like and a
coronal-like one, as ProstateX-0000's T2 series) hold two nested spheres painted 1 and 2 on the
reference. A known-answer threshold model (:mod:`phantoms`) turns values back into labels, and its
card keeps the reference grid (no spacing, no orientation), so the right answer is known exactly:
the painted voxels inside the ROI, and the ROI equals a brute-force test of every reference voxel
centre against the three series' extents.

Frames: phantoms are built in LPS (SimpleITK); the scene and the ROI node are RAS.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..engine import geometry
from ..models import phantoms

THRESHOLDS = (0.5, 1.5)
LABELS = ((1, "outer", (0.9, 0.6, 0.4)), (2, "inner", (0.2, 0.5, 0.9)))
INPUT_NAME = "T2 axial"


def makeSelfTestData(directory: str | os.PathLike, writeModel: Callable | None = None) -> dict:
    """Build the phantom series and the threshold model.

    Args:
        directory: where the model file is written.
        writeModel: ``(path, thresholds, card) -> path`` that writes the threshold model (default:
            :func:`phantoms.writeThresholdModel` in this process; Slicer asks its worker process,
            since Slicer's process never imports torch).

    Returns:
        ``images`` (name → LPS image; the first is the reference, painted), ``modelPath``,
        ``expectedROI`` (ijkMin, ijkMax by brute force), ``expectedLabels`` (K, J, I uint8 on the
        reference: the painted values inside the ROI) and ``card``.
    """
    tilt = phantoms.rotationMatrix((1.0, 0.2, 0.0), 18.0)
    # Sagittal: rows along P, columns along S, slices along L; coronal: L, S, slices along P.
    sagittalAxes = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=float)
    coronalAxes = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=float)
    center = np.array([4.0, -6.0, 12.0])
    reference = phantoms.makeGrid((48, 40, 14), (1.0, 1.0, 3.0), tilt, center)
    sagittal = phantoms.makeGrid((34, 30, 12), (1.1, 1.1, 3.0), sagittalAxes, center + [-6.0, 2.0, -1.0])
    coronal = phantoms.makeGrid(
        (36, 32, 11), (1.2, 1.2, 3.0), phantoms.rotationMatrix((1, 0, 0), 18.0) @ coronalAxes, center + [-2.0, 1.0, 2.0]
    )
    # The outer sphere reaches beyond the ROI on the sagittal series' side, so cropping matters.
    spheres = [(center + [9.0, 0.0, 0.0], 12.0, 1.0), (center + [6.0, 1.0, 1.0], 5.0, 2.0)]
    painted = phantoms.paintSpheres(reference, spheres)
    images = {
        INPUT_NAME: painted,
        "T2 sagittal": phantoms.paintSpheres(sagittal, spheres),
        "T2 coronal": phantoms.paintSpheres(coronal, spheres),
    }

    # Brute force: every reference voxel centre against every series' extent.
    referenceGeometry = geometry.VolumeGeometry.fromImage(painted, INPUT_NAME)
    others = [geometry.VolumeGeometry.fromImage(image, name) for name, image in images.items() if name != INPUT_NAME]
    size = painted.GetSize()
    ijk = np.stack(np.meshgrid(*(np.arange(s) for s in size), indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    inside = geometry.pointsInsideExtents(ijk, referenceGeometry, others)
    insideIJK = ijk[inside].astype(int)
    expectedROI = (insideIJK.min(axis=0), insideIJK.max(axis=0))

    values = sitk.GetArrayFromImage(painted).astype(np.uint8)  # K, J, I
    expected = np.zeros_like(values)
    low, high = expectedROI
    box = tuple(slice(int(low[d]), int(high[d]) + 1) for d in (2, 1, 0))
    expected[box] = values[box]

    card = phantoms.thresholdCard(LABELS, inputs=(INPUT_NAME,))
    card["name"] = "MedSegUNet self-test threshold model"
    # Words that pick the phantoms by name, as a cohort's series are picked (seriesmatch).
    card["inputs"][0]["match"] = ["t2", "axial"]
    card["roi"] = {"from_series": ["t2 sagittal", "t2 coronal"]}
    writeModel = writeModel or phantoms.writeThresholdModel
    modelPath = writeModel(os.path.join(os.fspath(directory), "selftest-threshold.pt"), THRESHOLDS, card)
    return {"images": images, "modelPath": modelPath, "expectedROI": expectedROI, "expectedLabels": expected, "card": card}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def segmentationLabelArray(scene, segmentationNode, referenceVolumeNode) -> np.ndarray:
    """The segmentation exported by Slicer's own logic onto the reference grid (K, J, I).

    Values are segment indices + 1 in segment order (the card's order). The nodes the export adds
    (labelmap, display, colour table) are removed again.
    """
    import slicer
    import vtk

    before = {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}
    labelmapNode = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmapNode)
    try:
        ids = vtk.vtkStringArray()
        segmentationNode.GetSegmentation().GetSegmentIDs(ids)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentationNode, ids, labelmapNode, referenceVolumeNode
        ):
            raise AssertionError("Slicer could not export the segmentation to a labelmap")
        return np.array(slicer.util.arrayFromVolume(labelmapNode), copy=True)
    finally:
        # The export also adds display and colour table nodes: remove everything it added.
        added = [scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in before:
                scene.RemoveNode(node)


def roiNodeCornersRAS(roiNode) -> np.ndarray:
    """The 8 corners of a markups ROI box in world RAS, 8×3 (same order as ``cornersRAS``)."""
    from .nodes import roiBoxFromMarkupsNode

    center, axes, radius = roiBoxFromMarkupsNode(roiNode)
    signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=float)
    return center + (signs * radius) @ axes.T


def runSelfTestScenario(scene, directory: str | os.PathLike, log: Callable[[str], None] = print, device: str = "cpu", logic=None) -> dict:
    """Segment the phantoms as a user does and check the known answer.

    Args:
        scene: a ``vtkMRMLScene`` (``slicer.mrmlScene`` in Slicer, a new scene under pytest).
        directory: a writable folder for the model file.
        log: receives one line per step.
        logic: what segments, with ``process(...)`` and ``segmentationLogic.worker``: the module's
            logic (``MedSegUNetLogic``: the worker process, through ``PythonSlicer`` in Slicer).
            None: a :class:`SegmentationLogic` with a worker process of this Python.

    Returns:
        measured figures: ``voxelCounts`` {label: count}, ``roi`` (ijkMin, ijkMax), ``timings``,
        ``seconds`` (the whole scenario) and the ``result`` (nodes).

    Raises:
        AssertionError: with what differs from the known answer.
    """
    import time

    from .logic import SegmentationLogic
    from .nodes import addVolumeFromImage

    started = time.perf_counter()
    ownLogic = logic is None
    if ownLogic:
        logic = SegmentationLogic(scene, useWorker=True)
    worker = getattr(logic, "segmentationLogic", logic).worker
    try:
        log("Building oblique phantom series and the threshold model (in the worker process)")

        def writeModel(path: str, thresholds, card: dict) -> str:
            return worker.request({"command": "thresholdModel", "path": path, "thresholds": list(thresholds), "card": card})["path"]

        data = makeSelfTestData(directory, writeModel)
        nodes = {name: addVolumeFromImage(scene, image, name) for name, image in data["images"].items()}
        referenceNode = nodes[INPUT_NAME]
        roiVolumes = [node for name, node in nodes.items() if name != INPUT_NAME]

        log("Segmenting")
        progress = []
        result = logic.process(
            [referenceNode], data["modelPath"], roiVolumes=roiVolumes, device=device, progressCallback=lambda f, m: progress.append((f, m))
        )
        log("Checking the ROI, segments, voxel counts and the statistics table")
        figures = _checkResult(scene, data, result, referenceNode, progress)
    finally:
        if ownLogic:
            logic.close()
    figures["seconds"] = time.perf_counter() - started
    log(
        f"Self-test passed in {figures['seconds']:.1f} s: {figures['voxelCounts']}, ROI "
        f"{figures['roi'][0].tolist()}..{figures['roi'][1].tolist()}"
    )
    return figures


def _checkResult(scene, data: dict, result, referenceNode, progress: list) -> dict:
    """The known-answer checks of :func:`runSelfTestScenario`; raises AssertionError on a difference."""
    _check(progress and progress[-1][0] == 1.0, f"progress did not reach 1.0: {progress[-1:]}")

    low, high = data["expectedROI"]
    _check(
        np.array_equal(result.roi.ijkMin, low) and np.array_equal(result.roi.ijkMax, high),
        f"ROI {result.roi.ijkMin}..{result.roi.ijkMax} differs from brute force {low}..{high}",
    )
    _check(
        geometry.sameCorners(roiNodeCornersRAS(result.roiNode), result.roi.cornersRAS()), "ROI node corners differ from the ROI's corners"
    )

    segmentation = result.segmentationNode.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    _check(names == [name for _, name, _ in LABELS], f"segment names {names}")
    exported = segmentationLabelArray(scene, result.segmentationNode, referenceNode)
    expected = data["expectedLabels"]
    counts = {}
    for index, (value, name, _) in enumerate(LABELS):
        expectedCount = int((expected == value).sum())
        count = int((exported == index + 1).sum())
        counts[name] = count
        _check(expectedCount > 0, f"the phantom has no '{name}' voxels inside the ROI")
        _check(count == expectedCount, f"segment '{name}': {count} voxels, expected {expectedCount}")
        _check(np.array_equal(exported == index + 1, expected == value), f"segment '{name}' voxels are not where the phantom's are")

    table = result.statisticsTableNode
    spacing = np.asarray(data["images"][INPUT_NAME].GetSpacing())
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    countColumn, volumeColumn = columns.index("Number of voxels [voxels]"), columns.index("Volume [mm3]")
    for row, (_, name, _) in enumerate(LABELS):
        _check(table.GetCellText(row, 0) == name, f"table row {row} is '{table.GetCellText(row, 0)}', expected '{name}'")
        _check(int(table.GetCellText(row, countColumn)) == counts[name], f"table voxel count of '{name}'")
        volume = float(table.GetCellText(row, volumeColumn))
        _check(abs(volume - counts[name] * float(np.prod(spacing))) < 1e-3 * max(volume, 1.0), f"table volume of '{name}' is {volume}")
    return {"voxelCounts": counts, "roi": (result.roi.ijkMin, result.roi.ijkMax), "timings": result.timings, "result": result}


__all__ = ["THRESHOLDS", "LABELS", "INPUT_NAME", "makeSelfTestData", "segmentationLabelArray", "roiNodeCornersRAS", "runSelfTestScenario"]
