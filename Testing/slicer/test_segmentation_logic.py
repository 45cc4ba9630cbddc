"""SegmentationLogic on real MRML scenes (slicer-core): geometry, outputs, re-runs, failures, cancel.

Known answers come from threshold models (:mod:`MedSegUNetLib.models.phantoms`) whose cards keep the
reference grid, so the expected label map is the thresholded reference inside the ROI, exactly.
Arrays are K, J, I (``arrayFromVolume`` / SimpleITK); node matrices are RAS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="the slicer-core package is needed for MRML tests")
vtk = pytest.importorskip("vtk")
sitk = pytest.importorskip("SimpleITK")

from conftest import PROSTATE_SERIES, PROSTATEX_0000_ROI, requireSharedData  # noqa: E402
from MedSegUNetLib.engine import geometry  # noqa: E402
from MedSegUNetLib.engine.errors import MedSegUNetError, ProcessingCancelled  # noqa: E402
from MedSegUNetLib.engine.pipeline import Stage  # noqa: E402
from MedSegUNetLib.models import phantoms  # noqa: E402
from MedSegUNetLib.slicer import selftest  # noqa: E402
from MedSegUNetLib.slicer.logic import SegmentationLogic  # noqa: E402  # noqa: E402
from MedSegUNetLib.slicer.nodes import addVolumeFromImage, imageFromVolumeNode, localIJKToRAS, worldIJKToRAS  # noqa: E402

# ---------------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def a_scene():
    return slicer.vtkMRMLScene()


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    """The self-test phantoms (reference first) and their threshold model."""
    return selftest.makeSelfTestData(tmp_path_factory.mktemp("phantoms"))


@pytest.fixture(scope="module")
def a_single_label_model(tmp_path_factory):
    """Threshold model with one label ('outer' ≥ 0.5), input named like the self-test's."""
    card = phantoms.thresholdCard([(1, "whole", (1.0, 0.0, 0.0))], inputs=(selftest.INPUT_NAME,))
    return phantoms.writeThresholdModel(tmp_path_factory.mktemp("single") / "single.pt", [0.5], card)


def addPhantoms(scene, data) -> dict:
    return {name: addVolumeFromImage(scene, image, name) for name, image in data["images"].items()}


def sceneState(scene) -> list:
    """Every node's ID, class and name, plus the content of segmentations, tables and ROIs."""
    state = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        entry = [
            node.GetID(),
            node.GetClassName(),
            node.GetName(),
            node.GetTransformNodeID() if hasattr(node, "GetTransformNodeID") else None,
        ]
        if node.IsA("vtkMRMLSegmentationNode"):
            segmentation = node.GetSegmentation()
            entry.append(
                [
                    (segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i).GetName())
                    for i in range(segmentation.GetNumberOfSegments())
                ]
            )
        if node.IsA("vtkMRMLTableNode"):
            entry.append([[node.GetCellText(r, c) for c in range(node.GetNumberOfColumns())] for r in range(node.GetNumberOfRows())])
        if node.IsA("vtkMRMLMarkupsROINode"):
            radius = np.zeros(3)
            node.GetRadiusXYZ(radius)
            entry.append(radius.round(6).tolist())
        state.append(entry)
    return state


def tableColumn(table, title: str) -> list[float]:
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    column = columns.index(title)
    return [table.GetTable().GetValue(row, column).ToDouble() for row in range(table.GetNumberOfRows())]


def loadDicomSeries(scene, folder, name):
    """A DICOM series read by Slicer's own archetype reader (not the engine's reader)."""
    files = sorted(str(p) for p in folder.iterdir() if p.is_file())
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(files[0])
    for path in files:
        storage.AddFileName(path)
    assert storage.ReadData(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def rigidTransform(axis, degrees, centerRAS, shiftRAS) -> np.ndarray:
    matrix = np.eye(4)
    rotation = phantoms.rotationMatrix(axis, degrees)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = np.asarray(centerRAS) - rotation @ np.asarray(centerRAS) + np.asarray(shiftRAS)
    return matrix


def nonLinearTransform(scene):
    """A thin-plate-spline warp in a transform node of ``scene`` (a non-linear parent)."""
    warp = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point, shift in (
        ((0, 0, 0), (0, 0, 0)),
        ((30, 0, 0), (0, 2, 0)),
        ((0, 30, 0), (1, 0, 0)),
        ((0, 0, 30), (0, 0, 0)),
        ((20, 20, 20), (2, 1, 0)),
    ):
        source.InsertNextPoint(point)
        target.InsertNextPoint(np.add(point, shift).tolist())
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    warp.SetBasisToR()
    transform = slicer.vtkMRMLTransformNode()
    scene.AddNode(transform)
    transform.SetAndObserveTransformToParent(warp)
    return transform


def vtkMatrix(array):
    return slicer.util.vtkMatrixFromArray(np.asarray(array, dtype=float))


# ---------------------------------------------------------------------------------------------
# the self-test scenario (same code as MedSegUNetTest in Slicer)
# ---------------------------------------------------------------------------------------------


SELF_TEST = r"""
import json, sys, tempfile
import slicer
from MedSegUNetLib.slicer.modulelogic import ModuleLogic
# As MedSegUNetLogic in Slicer's testing mode: nothing may be installed.
logic = ModuleLogic(slicer.vtkMRMLScene(), %(requirements)r, workerExecutable=%(launcher)r, interactive=False, testing=True)
with tempfile.TemporaryDirectory() as directory:
    figures = logic.runSelfTest(directory, log=lambda line: print(line, file=sys.stderr))
worker = logic.segmentationLogic.worker
pid = worker.interpreterPid
logic.close()
print(json.dumps({"voxelCounts": figures["voxelCounts"], "roi": [figures["roi"][0].tolist(), figures["roi"][1].tolist()],
                  "timings": sorted(figures["timings"]), "seconds": figures["seconds"], "pid": pid,
                  "heavy": sorted({m.split(".")[0] for m in sys.modules} & {"torch", "monai"})}))
"""


def test_self_test_runs_the_users_path_through_the_launcher(repo_root, python_slicer):
    """MedSegUNetTest's scenario through the module logic, the network in the PythonSlicer worker."""
    requirements = str(repo_root / "MedSegUNet" / "Resources" / "requirements.txt")
    done = subprocess.run(
        [sys.executable, "-c", SELF_TEST % {"requirements": requirements, "launcher": python_slicer}],
        # Not from Testing/: its slicer/ folder would join slicer-core's "slicer" namespace package.
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(repo_root),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    # The outer sphere is cut by the sagittal series' extent; the inner one is whole.
    assert figures["voxelCounts"] == {"outer": 1633, "inner": 178}
    assert figures["roi"] == [[0, 5, 1], [36, 37, 13]]
    assert set(figures["timings"]) >= {"loading", "inference", "statistics", "writing"}
    assert figures["heavy"] == []  # the model was made and run in the worker: Slicer's process stays light
    assert "Self-test passed in" in done.stderr and figures["seconds"] > 0
    assert not os.path.exists(f"/proc/{figures['pid']}")


# ---------------------------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------------------------


def test_image_from_volume_node_keeps_world_geometry_under_linear_transforms(a_scene, phantom_data):
    image = phantom_data["images"][selftest.INPUT_NAME]
    node = addVolumeFromImage(a_scene, image, "reference")
    np.testing.assert_allclose(worldIJKToRAS(node), geometry.ijkToRASFromImage(image), atol=1e-9)
    transform = slicer.vtkMRMLLinearTransformNode()
    a_scene.AddNode(transform)
    matrix = rigidTransform((0.3, 1.0, 0.2), 25.0, (0, 0, 0), (5.0, -3.0, 7.0))
    transform.SetMatrixTransformToParent(vtkMatrix(matrix))
    node.SetAndObserveTransformNodeID(transform.GetID())
    converted = imageFromVolumeNode(node)
    np.testing.assert_allclose(geometry.ijkToRASFromImage(converted), matrix @ geometry.ijkToRASFromImage(image), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(converted), sitk.GetArrayViewFromImage(image))
    # The user's node is not hardened.
    np.testing.assert_allclose(localIJKToRAS(node), geometry.ijkToRASFromImage(image), atol=1e-9)
    assert node.GetTransformNodeID() == transform.GetID()


# ---------------------------------------------------------------------------------------------
# real data: ProstateX-0000, three oblique T2 series
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold, expectedLabelled", [(300.5, None)])
def test_prostatex_roi_labels_table_and_roi_node(a_scene, tmp_path, threshold, expectedLabelled):
    folder = requireSharedData("prostatex", "ProstateX-0000")
    nodes = [loadDicomSeries(a_scene, folder / name, name) for name in PROSTATE_SERIES]
    card = phantoms.thresholdCard([(1, "bright", (1.0, 1.0, 0.0))], inputs=("T2",))
    modelPath = phantoms.writeThresholdModel(tmp_path / "bright.pt", [threshold], card)

    result = SegmentationLogic(a_scene).process(nodes[:1], modelPath, roiVolumes=nodes[1:], device="cpu")

    low, high = (np.array(v) for v in PROSTATEX_0000_ROI)
    assert result.roi.ijkMin.tolist() == low.tolist() and result.roi.ijkMax.tolist() == high.tolist()
    voxels = slicer.util.arrayFromVolume(nodes[0])  # K, J, I
    expected = np.zeros(voxels.shape, dtype=bool)
    box = tuple(slice(int(low[d]), int(high[d]) + 1) for d in (2, 1, 0))
    expected[box] = voxels[box] > threshold
    labels = selftest.segmentationLabelArray(a_scene, result.segmentationNode, nodes[0])
    np.testing.assert_array_equal(labels == 1, expected)

    table = result.statisticsTableNode
    assert table.GetCellText(0, 0) == "bright"
    assert tableColumn(table, "Number of voxels [voxels]") == [float(expected.sum())]
    assert tableColumn(table, "Mean (T2)")[0] == pytest.approx(float(voxels[expected].mean()), rel=1e-6)
    assert tableColumn(table, "Volume [mm3]")[0] == pytest.approx(float(expected.sum()) * 0.5 * 0.5 * 3.0, rel=1e-4)
    assert geometry.sameCorners(selftest.roiNodeCornersRAS(result.roiNode), result.roi.cornersRAS())
    # The ROI box is oriented with the (18°-tilted) reference, not with the world axes.
    referenceAxes = worldIJKToRAS(nodes[0])[:3, :3]
    roiAxes = slicer.util.arrayFromVTKMatrix(result.roiNode.GetObjectToWorldMatrix())[:3, :3]
    cosines = np.abs((referenceAxes / np.linalg.norm(referenceAxes, axis=0)).T @ roiAxes)
    np.testing.assert_allclose(np.sort(cosines.max(axis=1)), 1.0, atol=1e-6)
    # Segment geometry and reference geometry are the reference volume's.
    assert result.segmentationNode.GetNodeReference(result.segmentationNode.GetReferenceImageGeometryReferenceRole()) is nodes[0]


# ---------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------


def test_volume_under_rotated_transform_matches_hardened_equivalent(phantom_data):
    image = phantom_data["images"][selftest.INPUT_NAME]
    centerRAS = geometry.LPS_TO_RAS[:3, :3] @ np.asarray(
        image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    )
    matrix = rigidTransform((0.3, 1.0, 0.2), 12.0, centerRAS, (1.5, -1.0, 2.0))

    transformed = slicer.vtkMRMLScene()
    nodes = addPhantoms(transformed, phantom_data)
    transform = slicer.vtkMRMLLinearTransformNode()
    transformed.AddNode(transform)
    transform.SetMatrixTransformToParent(vtkMatrix(matrix))
    reference = nodes[selftest.INPUT_NAME]
    reference.SetAndObserveTransformNodeID(transform.GetID())
    others = [node for name, node in nodes.items() if name != selftest.INPUT_NAME]
    result = SegmentationLogic(transformed).process([reference], phantom_data["modelPath"], roiVolumes=others, device="cpu")

    hardenedScene = slicer.vtkMRMLScene()
    hardenedNodes = addPhantoms(hardenedScene, phantom_data)
    hardened = hardenedNodes[selftest.INPUT_NAME]
    hardened.SetIJKToRASMatrix(vtkMatrix(matrix @ localIJKToRAS(hardened)))
    hardenedOthers = [node for name, node in hardenedNodes.items() if name != selftest.INPUT_NAME]
    expected = SegmentationLogic(hardenedScene).process([hardened], phantom_data["modelPath"], roiVolumes=hardenedOthers, device="cpu")

    assert result.roi.ijkMin.tolist() == expected.roi.ijkMin.tolist()
    assert result.roi.ijkMax.tolist() == expected.roi.ijkMax.tolist()
    # The transform matters: it moved the reference relative to the other series.
    assert (result.roi.ijkMin.tolist(), result.roi.ijkMax.tolist()) != ([0, 5, 1], [36, 37, 13])
    labels = selftest.segmentationLabelArray(transformed, result.segmentationNode, reference)
    expectedLabels = selftest.segmentationLabelArray(hardenedScene, expected.segmentationNode, hardened)
    assert labels.any()
    np.testing.assert_array_equal(labels, expectedLabels)
    np.testing.assert_allclose(selftest.roiNodeCornersRAS(result.roiNode), selftest.roiNodeCornersRAS(expected.roiNode), atol=1e-6)
    assert geometry.sameCorners(selftest.roiNodeCornersRAS(result.roiNode), result.roi.cornersRAS())
    # Outputs follow the reference's transform; the user's volume was not hardened.
    assert result.segmentationNode.GetTransformNodeID() == transform.GetID()
    assert result.roiNode.GetTransformNodeID() == transform.GetID()
    assert reference.GetTransformNodeID() == transform.GetID()
    np.testing.assert_allclose(localIJKToRAS(reference), geometry.ijkToRASFromImage(image), atol=1e-9)


def test_non_linear_transform_is_refused_and_scene_unchanged(a_scene, phantom_data):
    nodes = addPhantoms(a_scene, phantom_data)
    transform = nonLinearTransform(a_scene)
    nodes["T2 sagittal"].SetAndObserveTransformNodeID(transform.GetID())
    before = sceneState(a_scene)
    with pytest.raises(MedSegUNetError, match="non-linear transform"):
        SegmentationLogic(a_scene).process([nodes[selftest.INPUT_NAME]], phantom_data["modelPath"], roiVolumes=[nodes["T2 sagittal"]])
    assert sceneState(a_scene) == before


# ---------------------------------------------------------------------------------------------
# outputs: re-run, Markups ROI, reference segmentation
# ---------------------------------------------------------------------------------------------


def test_rerun_into_same_nodes_replaces_segments_and_rows(a_scene, phantom_data, a_single_label_model):
    nodes = addPhantoms(a_scene, phantom_data)
    reference = nodes[selftest.INPUT_NAME]
    others = [node for name, node in nodes.items() if name != selftest.INPUT_NAME]
    logic = SegmentationLogic(a_scene)
    first = logic.process([reference], phantom_data["modelPath"], roiVolumes=others, device="cpu")
    count = a_scene.GetNumberOfNodes()
    second = logic.process(
        [reference],
        phantom_data["modelPath"],
        roiVolumes=others,
        device="cpu",
        outputSegmentation=first.segmentationNode,
        outputTable=first.statisticsTableNode,
        outputROI=first.roiNode,
    )
    assert a_scene.GetNumberOfNodes() == count
    assert second.segmentationNode is first.segmentationNode and second.statisticsTableNode is first.statisticsTableNode
    segmentation = second.segmentationNode.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == ["Segment_1", "Segment_2"]
    assert second.statisticsTableNode.GetNumberOfRows() == 2
    # Another model writes its segments beside this model's (never wiping them); its table is its own.
    third = logic.process(
        [reference],
        a_single_label_model,
        roiVolumes=others,
        device="cpu",
        outputSegmentation=first.segmentationNode,
        outputTable=first.statisticsTableNode,
        outputROI=first.roiNode,
    )
    segmentation = third.segmentationNode.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == ["outer", "inner", "whole"]
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == ["Segment_1", "Segment_2", "Segment_1_1"]
    assert tableColumn(third.statisticsTableNode, "Number of voxels [voxels]") == [1633.0 + 178.0]
    assert segmentation.GetNthSegment(2).GetColor() == (1.0, 0.0, 0.0)


def test_a_users_segmentation_keeps_its_segments_and_segment_editor_keeps_the_whole_grid(a_scene, phantom_data):
    nodes = addPhantoms(a_scene, phantom_data)
    reference = nodes[selftest.INPUT_NAME]
    others = [node for name, node in nodes.items() if name != selftest.INPUT_NAME]
    # The user's own segmentation, with a segment painted on the reference (64 voxels), imported as Slicer does.
    painted = np.zeros(sitk.GetArrayFromImage(phantom_data["images"][selftest.INPUT_NAME]).shape, dtype=np.uint8)
    painted[5:9, 10:14, 10:14] = 1
    paintedImage = sitk.GetImageFromArray(painted)
    paintedImage.CopyInformation(phantom_data["images"][selftest.INPUT_NAME])
    labelmap = addVolumeFromImage(a_scene, paintedImage, "my lesion", labelmap=True)
    mine = a_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, mine)
    a_scene.RemoveNode(labelmap)
    logic = SegmentationLogic(a_scene)
    for _ in range(2):  # a re-run replaces the model's segments only
        result = logic.process([reference], phantom_data["modelPath"], roiVolumes=others, device="cpu", outputSegmentation=mine)
        assert result.segmentationNode is mine
        segmentation = mine.GetSegmentation()
        assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == [
            "my lesion",
            "outer",
            "inner",
        ]
        labels = selftest.segmentationLabelArray(a_scene, mine, reference)
        # Exported in segment order (the user's first, painted over by the model's where they overlap).
        assert int((labels == 1).sum()) + int(((labels > 1) & (painted == 1)).sum()) == 64
        assert [int((labels == 2).sum() + ((labels == 1) & (phantom_data["expectedLabels"] == 1)).sum()), int((labels == 3).sum())] == [
            1633,
            178,
        ]
    # Segment Editor works on the reference's whole grid (the ROI's extent would clip the user's edits).
    converter = slicer.vtkSegmentationConverter
    geometry = slicer.vtkOrientedImageData()
    assert converter.DeserializeImageGeometry(
        mine.GetSegmentation().GetConversionParameter(converter.GetReferenceImageGeometryParameterName()), geometry
    )
    assert list(geometry.GetExtent()) == list(reference.GetImageData().GetExtent())


def test_output_nodes_removed_during_a_run_are_made_anew_never_written_as_orphans(a_scene, phantom_data):
    nodes = addPhantoms(a_scene, phantom_data)
    reference = nodes[selftest.INPUT_NAME]
    logic = SegmentationLogic(a_scene)
    others = [node for name, node in nodes.items() if name != selftest.INPUT_NAME]
    first = logic.process([reference], phantom_data["modelPath"], roiVolumes=others, device="cpu")
    job = logic.prepare(
        [reference],
        phantom_data["modelPath"],
        roiVolumes=others,
        device="cpu",
        outputSegmentation=first.segmentationNode,
        outputTable=first.statisticsTableNode,
        outputROI=first.roiNode,
    )
    job.run()
    for node in (first.segmentationNode, first.statisticsTableNode, first.roiNode):
        a_scene.RemoveNode(node)  # while the network ran
    result = logic.finish(job)
    for made, removed in (
        (result.segmentationNode, first.segmentationNode),
        (result.statisticsTableNode, first.statisticsTableNode),
        (result.roiNode, first.roiNode),
    ):
        assert made is not removed and a_scene.IsNodePresent(made) and not a_scene.IsNodePresent(removed)
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(a_scene)
    items = vtk.vtkIdList()
    shNode.GetItemChildren(shNode.GetSceneItemID(), items, True)
    dataNodes = [shNode.GetItemDataNode(items.GetId(i)) for i in range(items.GetNumberOfIds())]
    assert all(node is None or a_scene.IsNodePresent(node) for node in dataNodes)
    # The reference itself removed: one line, nothing written.
    job = logic.prepare([reference], phantom_data["modelPath"], device="cpu", useROI=False)
    job.run()
    a_scene.RemoveNode(reference)
    before = sceneState(a_scene)
    with pytest.raises(MedSegUNetError, match="was removed while it was being segmented: nothing was written"):
        logic.finish(job)
    assert sceneState(a_scene) == before


def test_markups_roi_limits_the_roi(a_scene, phantom_data):
    nodes = addPhantoms(a_scene, phantom_data)
    reference = nodes[selftest.INPUT_NAME]
    others = [node for name, node in nodes.items() if name != selftest.INPUT_NAME]
    box = slicer.vtkMRMLMarkupsROINode()
    a_scene.AddNode(box)
    image = phantom_data["images"][selftest.INPUT_NAME]
    centerRAS = geometry.ijkToRASFromImage(image) @ np.array([20.0, 20.0, 7.0, 1.0])
    objectToNode = np.eye(4)
    objectToNode[:3, :3] = phantoms.rotationMatrix((0, 0, 1), 30.0)
    objectToNode[:3, 3] = centerRAS[:3]
    box.GetObjectToNodeMatrix().DeepCopy(vtkMatrix(objectToNode))
    box.SetRadiusXYZ(10.0, 7.0, 12.0)

    result = SegmentationLogic(a_scene).process([reference], phantom_data["modelPath"], roiVolumes=others, roiNode=box, device="cpu")

    # Brute force: reference voxel centres inside the box AND inside every series' extent (the
    # exact joint intersection, not the intersection of two index ranges).
    size = image.GetSize()
    ijk = np.stack(np.meshgrid(*(np.arange(s) for s in size), indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    ras = (geometry.ijkToRASFromImage(image) @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    local = (ras - objectToNode[:3, 3]) @ objectToNode[:3, :3]
    referenceGeometry = geometry.VolumeGeometry.fromImage(image)
    series = [
        geometry.VolumeGeometry.fromImage(phantom_data["images"][name]) for name in phantom_data["images"] if name != selftest.INPUT_NAME
    ]
    inside = np.all(np.abs(local) <= [10.0, 7.0, 12.0], axis=1) & geometry.pointsInsideExtents(ijk, referenceGeometry, series)
    low, high = ijk[inside].min(axis=0).astype(int), ijk[inside].max(axis=0).astype(int)
    assert result.roi.ijkMin.tolist() == low.tolist() and result.roi.ijkMax.tolist() == high.tolist()
    labels = selftest.segmentationLabelArray(a_scene, result.segmentationNode, reference)
    outside = np.ones(labels.shape, dtype=bool)
    outside[tuple(slice(int(low[d]), int(high[d]) + 1) for d in (2, 1, 0))] = False
    assert labels[~outside].any() and not labels[outside].any()
    assert geometry.sameCorners(selftest.roiNodeCornersRAS(result.roiNode), result.roi.cornersRAS())


def test_reference_segmentation_gives_overlap_table(a_scene, phantom_data):
    nodes = addPhantoms(a_scene, phantom_data)
    reference = nodes[selftest.INPUT_NAME]
    others = [node for name, node in nodes.items() if name != selftest.INPUT_NAME]
    logic = SegmentationLogic(a_scene)
    first = logic.process([reference], phantom_data["modelPath"], roiVolumes=others, device="cpu")
    assert first.overlapTableNode is None

    # The run's own segmentation as reference: perfect overlap for every label.
    same = logic.process(
        [reference], phantom_data["modelPath"], roiVolumes=others, device="cpu", referenceSegmentation=first.segmentationNode
    )
    assert tableColumn(same.overlapTableNode, "Dice")[:2] == [1.0, 1.0]
    assert same.overlapTableNode.GetCellText(2, 0) == "Mean"
    assert tableColumn(same.statisticsTableNode, "Dice") == [1.0, 1.0]

    # A labelmap where the inner sphere is labelled outer: Dice(outer) = 2A / (2A + B).
    merged = phantom_data["expectedLabels"].copy()
    merged[merged == 2] = 1
    labelmapImage = sitk.GetImageFromArray(merged)
    labelmapImage.CopyInformation(phantom_data["images"][selftest.INPUT_NAME])
    labelmapNode = addVolumeFromImage(a_scene, labelmapImage, "merged", labelmap=True)
    merged = logic.process([reference], phantom_data["modelPath"], roiVolumes=others, device="cpu", referenceSegmentation=labelmapNode)
    outer, inner = 1633, 178
    dice = tableColumn(merged.overlapTableNode, "Dice")
    assert dice[0] == pytest.approx(2 * outer / (2 * outer + inner), rel=1e-6)
    assert dice[1] == 0.0


# ---------------------------------------------------------------------------------------------
# failures and cancel leave the scene as it was
# ---------------------------------------------------------------------------------------------


def test_no_overlap_fails_with_scene_unchanged(a_scene, phantom_data):
    nodes = addPhantoms(a_scene, phantom_data)
    far = sitk.Image(phantom_data["images"]["T2 sagittal"])
    far.SetOrigin([v + 500.0 for v in far.GetOrigin()])
    farNode = addVolumeFromImage(a_scene, far, "far away")
    before = sceneState(a_scene)
    with pytest.raises(MedSegUNetError, match="do not overlap"):
        SegmentationLogic(a_scene).process([nodes[selftest.INPUT_NAME]], phantom_data["modelPath"], roiVolumes=[farNode], device="cpu")
    assert sceneState(a_scene) == before


@pytest.mark.parametrize("inputs, message", [(0, "No input volume"), (2, "takes 1 input volume")])
def test_wrong_input_count_fails_with_scene_unchanged(a_scene, phantom_data, inputs, message):
    nodes = list(addPhantoms(a_scene, phantom_data).values())
    before = sceneState(a_scene)
    with pytest.raises(MedSegUNetError, match=message):
        SegmentationLogic(a_scene).process(nodes[:inputs], phantom_data["modelPath"])
    assert sceneState(a_scene) == before


def test_failure_while_writing_removes_created_nodes_and_restores_reused_ones(a_scene, phantom_data, a_single_label_model, monkeypatch):
    nodes = addPhantoms(a_scene, phantom_data)
    reference = nodes[selftest.INPUT_NAME]
    logic = SegmentationLogic(a_scene)
    first = logic.process([reference], phantom_data["modelPath"], device="cpu", useROI=False)
    before = sceneState(a_scene)
    firstLabels = selftest.segmentationLabelArray(a_scene, first.segmentationNode, reference)

    def failingROI(*args, **kwargs):
        raise RuntimeError("disk full")

    # The segmentation and the table are rewritten, then a new ROI node fails.
    from MedSegUNetLib.slicer.results import ResultWriter

    monkeypatch.setattr(ResultWriter, "_writeROI", failingROI)
    with pytest.raises(RuntimeError, match="disk full"):
        logic.process(
            [reference],
            a_single_label_model,
            device="cpu",
            outputSegmentation=first.segmentationNode,
            outputTable=first.statisticsTableNode,
        )
    assert sceneState(a_scene) == before
    np.testing.assert_array_equal(selftest.segmentationLabelArray(a_scene, first.segmentationNode, reference), firstLabels)


@pytest.mark.parametrize("stage", [s for s in Stage if s is not Stage.WRITING], ids=lambda s: s.name)
def test_cancel_at_each_stage_leaves_scene_unchanged(a_scene, phantom_data, stage):
    nodes = addPhantoms(a_scene, phantom_data)
    cancel = threading.Event()

    def progress(fraction, message):
        if message == stage.label:
            cancel.set()

    before = sceneState(a_scene)
    with pytest.raises(ProcessingCancelled):
        SegmentationLogic(a_scene).process(
            [nodes[selftest.INPUT_NAME]],
            phantom_data["modelPath"],
            useROI=False,
            device="cpu",
            progressCallback=progress,
            cancelEvent=cancel,
        )
    assert cancel.is_set()
    assert sceneState(a_scene) == before


def test_worker_thread_run_touches_no_mrml_until_finish(a_scene, phantom_data):
    nodes = addPhantoms(a_scene, phantom_data)
    reference = nodes[selftest.INPUT_NAME]
    others = [node for name, node in nodes.items() if name != selftest.INPUT_NAME]
    logic = SegmentationLogic(a_scene)
    before = sceneState(a_scene)
    job = logic.prepare([reference], phantom_data["modelPath"], roiVolumes=others, device="cpu")
    worker = threading.Thread(target=job.run)
    worker.start()
    worker.join(timeout=120)
    assert job.done.is_set() and job.error is None
    assert sceneState(a_scene) == before
    result = logic.finish(job)
    assert tableColumn(result.statisticsTableNode, "Number of voxels [voxels]") == [1633.0, 178.0]
    assert a_scene.GetNumberOfNodes() > len(before)


# ---------------------------------------------------------------------------------------------
# widget helpers (no Qt)
# ---------------------------------------------------------------------------------------------


def test_input_and_roi_volume_suggestions(a_scene, phantom_data):
    from MedSegUNetLib.slicer.job import availableDevices
    from MedSegUNetLib.slicer.nodes import suggestInputVolumes, suggestROIVolumes

    images = phantom_data["images"]
    nodes = {
        "adc": addVolumeFromImage(a_scene, images["T2 coronal"], "7 ADC map"),
        "cor": addVolumeFromImage(a_scene, images["T2 coronal"], "5-t2tsecor"),
        "tra": addVolumeFromImage(a_scene, images[selftest.INPUT_NAME], "4-t2tsetra"),
        "sag": addVolumeFromImage(a_scene, images["T2 sagittal"], "3-t2tsesag"),
    }
    far = sitk.Image(images["T2 sagittal"])
    far.SetOrigin([v + 500.0 for v in far.GetOrigin()])
    nodes["far"] = addVolumeFromImage(a_scene, far, "9-t2tsesag far")
    card = {
        "inputs": [{"name": "T2 axial", "match": ["t2tsetra", "axial"]}, {"name": "ADC"}],
        "roi": {"from_series": ["t2tsesag", "t2tsecor"]},
    }
    assert suggestInputVolumes(card, list(nodes.values())) == [nodes["tra"], nodes["adc"]]
    assert suggestInputVolumes({"inputs": [{"name": "FLAIR"}]}, list(nodes.values())) == [None]
    # Named like the card's series and overlapping the reference; the far one does not overlap.
    assert suggestROIVolumes(nodes["tra"], list(nodes.values()), card) == [nodes["cor"], nodes["sag"]]
    devices = availableDevices()
    assert devices["cpu"] and devices["auto"] and set(devices) == {"auto", "cuda", "mps", "cpu"}


# ---------------------------------------------------------------------------------------------
# console batch (docs/batch_example.py), non-Qt part
# ---------------------------------------------------------------------------------------------


def test_batch_example_segments_a_folder_of_cases(tmp_path, phantom_data):
    import importlib.util

    from conftest import REPO_ROOT
    from MedSegUNetLib.engine import modelcard

    spec = importlib.util.spec_from_file_location("batch_example", REPO_ROOT / "docs" / "batch_example.py")
    batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch)
    case = tmp_path / "cases" / "case-001"
    case.mkdir(parents=True)
    for name, fileName in ((selftest.INPUT_NAME, "t2-axial.nrrd"), ("T2 sagittal", "t2-sagittal.nrrd"), ("T2 coronal", "t2-coronal.nrrd")):
        sitk.WriteImage(phantom_data["images"][name], str(case / fileName))
    scene = slicer.vtkMRMLScene()
    card = modelcard.readCard(phantom_data["modelPath"])
    result = batch.segmentCase(scene, SegmentationLogic(scene), phantom_data["modelPath"], card, str(case))
    assert result.roi.ijkMin.tolist() == [0, 5, 1] and result.roi.ijkMax.tolist() == [36, 37, 13]
    assert tableColumn(result.statisticsTableNode, "Number of voxels [voxels]") == [1633.0, 178.0]
    # The same matcher and summary as 'medsegunet batch': the same series, the same columns.
    from MedSegUNetLib.cohorts.batch import summaryCSV
    from MedSegUNetLib.cohorts.cases import casesFromSource

    (spec,) = casesFromSource(str(tmp_path / "cases"), card)
    assert spec.inputs == [(str(case / "t2-axial.nrrd"), None)] and spec.roi == [
        str(case / "t2-sagittal.nrrd"),
        str(case / "t2-coronal.nrrd"),
    ]
    row = batch.summaryRow("case-001", result, seconds=1.0)
    lines = summaryCSV([row], card).splitlines()
    assert lines[0].startswith("case,status,message,roi_size_i_mm") and lines[1].startswith("case-001,ok,,")


def test_left_handed_reference_gives_a_proper_roi_box(a_scene, tmp_path):
    # A left-handed grid (negative determinant, as some DICOM series have): the ROI node needs a
    # rotation, so one box axis is flipped; its corners must still be the ROI's.
    direction = phantoms.rotationMatrix((0.2, 1.0, 0.1), 15.0) @ np.diag([1.0, 1.0, -1.0])
    reference = phantoms.makeGrid((24, 20, 10), (1.0, 1.2, 2.5), direction, (3.0, -2.0, 5.0))
    painted = phantoms.paintSpheres(reference, [((3.0, -2.0, 5.0), 7.0, 1.0)])
    other = phantoms.paintSpheres(phantoms.makeGrid((10, 30, 12), (1.5, 1.0, 2.0), np.eye(3), (6.0, -2.0, 5.0)), [])
    card = phantoms.thresholdCard([(1, "ball", (0.0, 1.0, 0.0))], inputs=("image",))
    modelPath = phantoms.writeThresholdModel(tmp_path / "ball.pt", [0.5], card)
    referenceNode = addVolumeFromImage(a_scene, painted, "left-handed")
    otherNode = addVolumeFromImage(a_scene, other, "other")
    result = SegmentationLogic(a_scene).process([referenceNode], modelPath, roiVolumes=[otherNode], device="cpu")
    assert np.linalg.det(worldIJKToRAS(referenceNode)[:3, :3]) < 0
    assert (result.roi.ijkMin > 0).any() or (result.roi.ijkMax < np.array(painted.GetSize()) - 1).any()
    assert geometry.sameCorners(selftest.roiNodeCornersRAS(result.roiNode), result.roi.cornersRAS())
    labels = selftest.segmentationLabelArray(a_scene, result.segmentationNode, referenceNode)
    expected = np.zeros(labels.shape, dtype=bool)
    box = tuple(slice(int(result.roi.ijkMin[d]), int(result.roi.ijkMax[d]) + 1) for d in (2, 1, 0))
    expected[box] = sitk.GetArrayViewFromImage(painted)[box] > 0.5
    assert expected.any()
    np.testing.assert_array_equal(labels == 1, expected)


def test_suggestions_never_raise_on_odd_nodes(a_scene, phantom_data):
    """A reference without image data, or under a non-linear transform, gives no suggestion, not an error."""
    from MedSegUNetLib.slicer.nodes import suggestInputVolumes, suggestROIVolumes

    nodes = addPhantoms(a_scene, phantom_data)
    empty = slicer.vtkMRMLScalarVolumeNode()
    empty.SetName("T2 axial empty")
    a_scene.AddNode(empty)
    card = phantom_data["card"]
    assert suggestROIVolumes(empty, [empty, *nodes.values()], card) == []
    transform = nonLinearTransform(a_scene)
    warped = nodes["T2 sagittal"]
    warped.SetAndObserveTransformNodeID(transform.GetID())
    reference = nodes[selftest.INPUT_NAME]
    assert suggestROIVolumes(warped, list(nodes.values()), card) == []
    # The warped series is simply not offered; the other one still is.
    assert suggestROIVolumes(reference, [empty, *nodes.values()], card) == [nodes["T2 coronal"]]
    assert suggestInputVolumes(card, [empty, *nodes.values()]) == [reference]


def test_tilted_markups_roi_is_the_exact_joint_intersection(a_scene, phantom_data):
    """Box and series both tilted: the ROI is the brute-force joint intersection; the margin grows it."""
    nodes = addPhantoms(a_scene, phantom_data)
    reference = nodes[selftest.INPUT_NAME]
    sagittal = nodes["T2 sagittal"]
    image = phantom_data["images"][selftest.INPUT_NAME]
    box = slicer.vtkMRMLMarkupsROINode()
    a_scene.AddNode(box)
    corner = geometry.ijkToRASFromImage(phantom_data["images"]["T2 sagittal"]) @ np.array([0.0, 0.0, 0.0, 1.0])
    objectToNode = np.eye(4)
    objectToNode[:3, :3] = phantoms.rotationMatrix((1, 1, 1), 35.0)
    objectToNode[:3, 3] = corner[:3]  # centred on the sagittal series' corner: both boundaries cut the ROI
    box.GetObjectToNodeMatrix().DeepCopy(vtkMatrix(objectToNode))
    box.SetRadiusXYZ(14.0, 11.0, 16.0)
    ijk = np.stack(np.meshgrid(*(np.arange(s) for s in image.GetSize()), indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    ras = (geometry.ijkToRASFromImage(image) @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    local = (ras - objectToNode[:3, 3]) @ objectToNode[:3, :3]
    inside = np.all(np.abs(local) <= [14.0, 11.0, 16.0], axis=1) & geometry.pointsInsideExtents(
        ijk, geometry.VolumeGeometry.fromImage(image), [geometry.VolumeGeometry.fromImage(phantom_data["images"]["T2 sagittal"])]
    )
    low, high = ijk[inside].min(axis=0).astype(int), ijk[inside].max(axis=0).astype(int)
    for margin in (0.0, 3.0):
        result = SegmentationLogic(a_scene).process(
            [reference], phantom_data["modelPath"], roiVolumes=[sagittal], roiNode=box, marginMM=margin, device="cpu"
        )
        grow = np.ceil(margin / np.asarray(image.GetSpacing()) - 1e-9).astype(int)
        assert result.roi.ijkMin.tolist() == np.maximum(low - grow, 0).tolist()
        assert result.roi.ijkMax.tolist() == np.minimum(high + grow, np.asarray(image.GetSize()) - 1).tolist()


def test_terminology_reaches_mrml_segments(a_scene, tmp_path, phantom_data):
    """A card label's codes become the vtkSegment's TerminologyEntry tag in the scene."""
    from MedSegUNetLib.engine.terminology import terminologyEntry

    card = json.loads(json.dumps(phantom_data["card"]))
    card["labels"][0]["terminology"] = {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "41216001", "Prostate"]}
    model = phantoms.writeThresholdModel(tmp_path / "coded.pt", selftest.THRESHOLDS, card)
    nodes = addPhantoms(a_scene, phantom_data)
    result = SegmentationLogic(a_scene).process([nodes[selftest.INPUT_NAME]], model, useROI=False, device="cpu")
    segmentation = result.segmentationNode.GetSegmentation()
    first = segmentation.GetNthSegment(0)
    value = vtk.reference("")
    assert first.GetTag("TerminologyEntry", value)
    assert str(value) == terminologyEntry(card["labels"][0])
    assert "~SCT^41216001^Prostate~" in str(value)
    other = vtk.reference("")
    segmentation.GetNthSegment(1).GetTag("TerminologyEntry", other)
    assert "Prostate" not in str(other)  # a label without codes keeps vtkSegment's default entry


def test_outputs_go_into_the_reference_study_and_a_second_patient_gets_new_nodes(a_scene, phantom_data):
    nodes = addPhantoms(a_scene, phantom_data)
    reference = nodes[selftest.INPUT_NAME]
    # slicer-core has no subject hierarchy plugins: make the patient and study items a DICOM load would.
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(a_scene)
    study = shNode.CreateStudyItem(shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient 1"), "MR prostate")
    shNode.CreateItem(study, reference)
    logic = SegmentationLogic(a_scene)
    first = logic.process([reference], phantom_data["modelPath"], roiVolumes=[nodes["T2 sagittal"]], device="cpu")
    for node in (first.segmentationNode, first.statisticsTableNode, first.roiNode):
        assert shNode.GetItemParent(shNode.GetItemByDataNode(node)) == study
        assert node.GetName().startswith(selftest.INPUT_NAME)
    # A second patient: the outputs made for the first are not overwritten (the widget passes them on).
    second = addVolumeFromImage(a_scene, phantom_data["images"][selftest.INPUT_NAME], "Patient 2 T2")
    again = logic.process(
        [second],
        phantom_data["modelPath"],
        outputSegmentation=first.segmentationNode,
        outputTable=first.statisticsTableNode,
        outputROI=first.roiNode,
        useROI=False,
        device="cpu",
    )
    assert again.segmentationNode is not first.segmentationNode and again.statisticsTableNode is not first.statisticsTableNode
    assert again.segmentationNode.GetName().startswith("Patient 2 T2")
    # The whole volume was segmented: no ROI box node.
    assert again.roiNode is None and a_scene.GetNodesByClass("vtkMRMLMarkupsROINode").GetNumberOfItems() == 1
    assert first.segmentationNode.GetSegmentation().GetNumberOfSegments() == len(phantom_data["card"]["labels"])


# ---------------------------------------------------------------------------------------------
# DICOM SEG export
# ---------------------------------------------------------------------------------------------


def segPixels(path, files) -> np.ndarray:
    """A DICOM SEG's segments in the order of the source files (K, J, I, segment), with highdicom."""
    import highdicom as hd
    import pydicom

    segmentation = hd.seg.segread(str(path))
    sources = [pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID for file in files]
    numbers = [int(item.SegmentNumber) for item in segmentation.SegmentSequence]
    return segmentation, segmentation.get_pixels_by_source_instance(source_sop_instance_uids=sources, segment_numbers=numbers)


# [parameters (how the volume was loaded, transform), input (ProstateX-0000 segmented), expected (SEG = scene labels)]
@pytest.mark.parametrize("loadedBy, transformed", [("files", False), ("archetype", False), ("database", True)])
def test_dicom_seg_export_of_the_scene_segmentation(a_scene, tmp_path, loadedBy, transformed):
    pytest.importorskip("highdicom")
    import pydicom

    from MedSegUNetLib.engine.volumes import findDicomSeries, readVolume
    from MedSegUNetLib.slicer.dicomexport import DICOM_INSTANCE_UIDS_ATTRIBUTE

    folder = requireSharedData("prostatex", "ProstateX-0000")
    files = list(findDicomSeries(folder / PROSTATE_SERIES[0])[0].files)
    if loadedBy in ("files", "archetype"):
        reference = loadDicomSeries(a_scene, folder / PROSTATE_SERIES[0], PROSTATE_SERIES[0])
        if loadedBy == "archetype":  # one file named, as "Add data" leaves it: the series is its folder's
            reference.GetStorageNode().ResetFileNameList()
        fileForInstance = None
    else:  # as the DICOM module leaves it: instance UIDs on the node, files in the database
        reference = addVolumeFromImage(a_scene, readVolume(folder / PROSTATE_SERIES[0]), PROSTATE_SERIES[0])
        uids = [pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in files]
        reference.SetAttribute(DICOM_INSTANCE_UIDS_ATTRIBUTE, " ".join(uids))
        fileForInstance = dict(zip(uids, files)).get
    others = [loadDicomSeries(a_scene, folder / name, name) for name in PROSTATE_SERIES[1:]]
    card = phantoms.thresholdCard([(1, "bright", (1.0, 1.0, 0.0)), (2, "brighter", (0.1, 0.4, 1.0))], inputs=("T2",))
    card["labels"][0]["terminology"] = {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "41216001", "Prostate"]}
    card["version"] = "4.5.6"
    model = phantoms.writeThresholdModel(tmp_path / "bright.pt", [300.5, 600.5], card)
    logic = SegmentationLogic(a_scene)
    result = logic.process([reference], model, roiVolumes=others, device="cpu")
    labels = selftest.segmentationLabelArray(a_scene, result.segmentationNode, reference)  # K, J, I
    if transformed:  # both under one rigid transform: the SEG is made in the volume's own (file) frame
        transform = a_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        transform.SetMatrixTransformToParent(vtkMatrix(rigidTransform([0.2, 0.3, 1.0], 25.0, [0.0, 0.0, 0.0], [12.0, -7.0, 30.0])))
        for node in (reference, result.segmentationNode):
            node.SetAndObserveTransformNodeID(transform.GetID())

    # None: the volume the segmentation records it was made on (what the module's button exports against).
    given = None if loadedBy == "archetype" else reference
    path = logic.exportDicomSegmentation(
        result.segmentationNode, given, str(tmp_path / "prostate-seg.dcm"), fileForInstance=fileForInstance
    )

    segmentation, pixels = segPixels(path, files)
    assert [item.SegmentLabel for item in segmentation.SegmentSequence] == ["bright", "brighter"]
    assert segmentation.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "41216001"
    assert segmentation.SegmentSequence[0].SegmentAlgorithmName == card["name"][:64]
    assert segmentation.SegmentSequence[0].algorithm_identification[0].AlgorithmVersion == "4.5.6"
    assert (labels == 1).sum() > 1000 and (labels == 2).sum() > 100
    for number in (1, 2):
        np.testing.assert_array_equal(pixels[..., number - 1].astype(bool), labels == number)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# [parameters (what is wrong), input (a segmented scene), expected (words of the one line)]
@pytest.mark.parametrize(
    "fault, expected",
    [
        ("not-dicom", "was not loaded from DICOM"),
        ("moved", "no longer has the geometry"),
        ("missing-file", "not in the DICOM database"),
        ("no-reference", "does not record the volume it was made on"),
    ],
)
def test_dicom_seg_export_refusals_write_nothing(a_scene, tmp_path, phantom_data, fault, expected):
    pytest.importorskip("highdicom")
    from MedSegUNetLib.slicer.dicomexport import DICOM_INSTANCE_UIDS_ATTRIBUTE

    logic = SegmentationLogic(a_scene)
    fileForInstance = None
    if fault == "not-dicom":
        nodes = addPhantoms(a_scene, phantom_data)
        reference = nodes[selftest.INPUT_NAME]
        segmentationNode = logic.process([reference], phantom_data["modelPath"], device="cpu", useROI=False).segmentationNode
    else:
        folder = requireSharedData("prostatex", "ProstateX-0000")
        reference = loadDicomSeries(a_scene, folder / PROSTATE_SERIES[0], PROSTATE_SERIES[0])
        model = phantoms.writeThresholdModel(
            tmp_path / "bright.pt", [300.5], phantoms.thresholdCard([(1, "bright", (1.0, 1.0, 0.0))], inputs=("T2",))
        )
        segmentationNode = logic.process([reference], model, device="cpu", useROI=False).segmentationNode
        if fault == "moved":
            origin = list(reference.GetOrigin())
            reference.SetOrigin(origin[0] + 5.0, origin[1], origin[2])
        elif fault == "no-reference":
            segmentationNode.RemoveAttribute("MedSegUNet.ReferenceVolumeID")
            reference = None
        else:
            reference.SetAttribute(DICOM_INSTANCE_UIDS_ATTRIBUTE, "1.2.3 4.5.6")
            fileForInstance = {}.get
    with pytest.raises(MedSegUNetError, match=expected):
        logic.exportDicomSegmentation(segmentationNode, reference, str(tmp_path / "out.dcm"), fileForInstance=fileForInstance)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".dcm" or p.name.startswith(".")]


def test_a_card_roi_needs_its_series(a_scene, phantom_data):
    """The self-test card's model was made for the sagittal and coronal series' region: without
    them (and with the overlap ROI on) the logic refuses in one line; the scene is unchanged."""
    nodes = addPhantoms(a_scene, phantom_data)
    before = sceneState(a_scene)
    with pytest.raises(MedSegUNetError) as error:
        SegmentationLogic(a_scene).process([nodes[selftest.INPUT_NAME]], phantom_data["modelPath"], device="cpu")
    assert "t2 sagittal series and the t2 coronal series" in str(error.value) and "\n" not in str(error.value)
    assert sceneState(a_scene) == before
