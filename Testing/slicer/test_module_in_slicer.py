"""The module under Slicer's own Python layer, at Slicer 5.6.2, 5.8.1 and main.

Each test runs in a :class:`SlicerSession` (``slicerlayer``): the release's own
``ScriptedLoadableModule.py``, ``util.py``, ``i18n.py`` and ``parameterNodeWrapper``, real MRML
(slicer-core) as ``slicer.mrmlScene``, real Qt (PyQt5, offscreen) with PythonQt's conventions, and
CTK/qMRML/application stand-ins made from their headers. The module is loaded and its widget made
as Slicer does; clicks are real Qt clicks and the worker runs through the real ``PythonSlicer``
launcher. What Slicer's process imports is checked in a process of its own.

Slicer's Python files are not in this repository; without them these tests skip, saying where to
put them (``Testing/slicer/upstream/README.md``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PyQt5.QtWidgets", reason="PyQt5 is needed for the Slicer test layer")
slicerCore = pytest.importorskip("slicer", reason="slicer-core is needed for the Slicer test layer")

from conftest import REPO_ROOT, slowThresholdModel  # noqa: E402
from MedSegUNetLib.models import phantoms  # noqa: E402
from MedSegUNetLib.slicer import selftest  # noqa: E402
from MedSegUNetLib.slicer.nodes import addVolumeFromImage  # noqa: E402  # noqa: E402
from slicerlayer import pythonqt, sources  # noqa: E402
from slicerlayer.session import SlicerSession  # noqa: E402
from slicerlayer.uiloader import UiError  # noqa: E402

RELEASES = list(sources.RELEASES)
UI_FILE = REPO_ROOT / "MedSegUNet" / "Resources" / "UI" / "MedSegUNet.ui"


def slicerPythonOrSkip(release: str) -> Path:
    folder = sources.slicerPython(release)
    if folder is None:
        pytest.skip(sources.MISSING.format(release=release))
    return folder


@pytest.fixture(params=RELEASES)
def a_slicer(request, tmp_path, python_slicer):
    """A Slicer application of one release with MedSegUNet loaded and its widget set up, not entered."""
    folder = slicerPythonOrSkip(request.param)
    with SlicerSession(request.param, folder, tmp_path / "slicer", launcher=python_slicer) as session:
        session.loadModule()
        session.createWidget()
        yield session
        assert pythonqt.slotErrors == [], "a slot raised:\n" + "\n".join(trace for _, trace in pythonqt.slotErrors)


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    return selftest.makeSelfTestData(tmp_path_factory.mktemp("phantoms"))


def controllerOf(session):
    return session.widget.controller


def addPhantoms(session, data) -> dict:
    return {name: addVolumeFromImage(session.scene, image, name) for name, image in data["images"].items()}


def chooseModel(session, path: str) -> None:
    controllerOf(session).ui.modelPathLineEdit.currentPath = str(path)


def runApply(session, timeout: float = 120.0) -> None:
    """Click Apply and run Slicer's event loop until the run ended."""
    controller = controllerOf(session)
    assert controller.ui.applyButton.enabled, controller.ui.applyButton.toolTip
    controller.ui.applyButton.click()
    assert controller._job is not None or pythonqt.slotErrors, "Apply started nothing"
    session.processEvents(until=lambda: controller._job is None, timeout=timeout)


def labelCounts(session, segmentationNode, reference) -> dict:
    labels = selftest.segmentationLabelArray(session.scene, segmentationNode, reference)
    segmentation = segmentationNode.GetSegmentation()
    return {segmentation.GetNthSegment(i).GetName(): int((labels == i + 1).sum()) for i in range(segmentation.GetNumberOfSegments())}


def referenceGeometryExtent(segmentationNode) -> list:
    """The extent of the grid Segment Editor edits a segmentation on (its reference image geometry)."""
    converter = slicerCore.vtkSegmentationConverter
    text = segmentationNode.GetSegmentation().GetConversionParameter(converter.GetReferenceImageGeometryParameterName())
    image = slicerCore.vtkOrientedImageData()
    assert converter.DeserializeImageGeometry(text, image)
    return list(image.GetExtent())


def orphanSubjectHierarchyItems(scene) -> list:
    """Subject hierarchy items whose data node is not in the scene."""
    import vtk

    shNode = slicerCore.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    items = vtk.vtkIdList()
    shNode.GetItemChildren(shNode.GetSceneItemID(), items, True)
    orphans = []
    for index in range(items.GetNumberOfIds()):
        node = shNode.GetItemDataNode(items.GetId(index))
        if node is not None and not scene.IsNodePresent(node):
            orphans.append(node.GetName())
    return orphans


# -- construction ------------------------------------------------------------------------------------


def test_the_module_constructs_and_enters_as_slicer_does(a_slicer):
    import slicer

    parent = a_slicer.moduleParent
    assert parent.title == "MedSegUNet" and list(parent.categories) == ["Segmentation"]
    assert list(parent.dependencies) == ["Markups", "Segmentations", "SubjectHierarchy", "Tables"]
    assert "README" in parent.helpText and "3D Slicer" in parent.acknowledgementText
    assert "MedSegUNet" in slicer.selfTests
    logic = slicer.util.getModuleLogic("MedSegUNet")
    assert type(logic).__name__ == "MedSegUNetLogic" and logic.scene is a_slicer.scene and logic.cachePath == str(a_slicer.cachePath)
    assert logic.getParameterNode().parameterNode.GetAttribute("ModuleName") == "MedSegUNet"
    a_slicer.enter()
    controller = controllerOf(a_slicer)
    assert controller.ui.applyButton.text == "Apply" and not controller.ui.applyButton.enabled
    # Opening the module starts no worker (no torch import, no process) before anything is run.
    assert logic.segmentationLogic._worker is None or not logic.segmentationLogic._worker.alive
    assert [controller.ui.deviceComboBox.itemText(i) for i in range(controller.ui.deviceComboBox.count)] == ["auto", "cuda", "mps", "cpu"]
    a_slicer.exit()
    a_slicer.enter()
    a_slicer.exit()


def test_the_logic_with_the_bases_of_the_old_order_cannot_be_constructed(a_slicer):
    # What the panel died of: ScriptedLoadableModuleLogic.__init__ calls super().__init__() with no
    # arguments, which with ModuleLogic second in the bases reaches ModuleLogic.__init__(scene, ...).
    import slicer

    from MedSegUNetLib.slicer.modulelogic import ModuleLogic

    class OldOrder(slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic, ModuleLogic):
        def __init__(self):
            slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic.__init__(self)

    with pytest.raises(TypeError, match="missing 2 required positional arguments"):
        OldOrder()
    assert type(a_slicer.moduleFile.MedSegUNetLogic()).__mro__[1].__name__ == "ModuleLogic"


def test_the_ui_file_loads_with_names_the_real_classes_have(a_slicer, tmp_path):
    import slicer

    widget = slicer.util.loadUI(str(UI_FILE))
    assert widget.name == "MedSegUNet" and type(widget).__name__ == "qMRMLWidget"
    ui = slicer.util.childWidgetVariables(widget)
    for name, cls in (
        ("modelPathLineEdit", "ctkPathLineEdit"),
        ("outputSegmentationSelector", "qMRMLNodeComboBox"),
        ("modelCollapsibleButton", "ctkCollapsibleButton"),
    ):
        assert type(getattr(ui, name)).__name__ == cls
    assert list(ui.outputSegmentationSelector.nodeTypes) == ["vtkMRMLSegmentationNode"]
    assert ui.marginSpinBox.maximum == 1000.0 and ui.contextSpinBox.maximum == 1000.0
    # The check can fail: a property the class lacks, and a widget class no Slicer has.
    text = UI_FILE.read_text(encoding="utf-8")
    for wrong in (
        text.replace('<property name="noneEnabled">', '<property name="noneAllowed">', 1),
        text.replace('class="ctkPathLineEdit"', 'class="ctkPathEdit"', 1),
    ):
        bad = tmp_path / "bad.ui"
        bad.write_text(wrong, encoding="utf-8")
        with pytest.raises(UiError):
            slicer.util.loadUI(str(bad))


def test_the_parameter_node_round_trip(a_slicer, tmp_path, phantom_data):
    import slicer

    a_slicer.enter()
    controller = controllerOf(a_slicer)
    chooseModel(a_slicer, phantom_data["modelPath"])
    parameters = controller._parameterNode
    assert parameters.modelPath == phantom_data["modelPath"]
    controller.ui.marginSpinBox.value = 4.5
    controller.ui.useROICheckBox.checked = False
    controller.ui.deviceComboBox.currentIndex = 3
    assert (parameters.marginMM, parameters.useROI, parameters.device) == (4.5, False, "cpu")
    parameters.contextMM = 12.0
    assert controller.ui.contextSpinBox.value == 12.0
    # Saved with the scene and read back: the same values in a new scene.
    a_slicer.scene.SetSaveToXMLString(1)
    a_slicer.scene.Commit()
    xml = a_slicer.scene.GetSceneXMLString()
    restored = slicer.vtkMRMLScene()
    restored.SetLoadFromXMLString(1)
    restored.SetSceneXMLString(xml)
    restored.Import()
    node = restored.GetSingletonNode("MedSegUNet", "vtkMRMLScriptedModuleNode")
    assert (node.GetParameter("modelPath"), node.GetParameter("marginMM"), node.GetParameter("useROI"), node.GetParameter("device")) == (
        phantom_data["modelPath"],
        "4.5",
        "False",
        "cpu",
    )


def test_a_card_beyond_the_old_panel_maxima_sets_margin_and_context(a_slicer, tmp_path):
    card = phantoms.thresholdCard([(1, "bright", (1.0, 0.0, 0.0))], inputs=("T2",))
    card["roi"] = {"margin_mm": 150.0, "context_mm": 250.0}
    model = phantoms.writeThresholdModel(tmp_path / "wide.pt", [0.5], card)
    a_slicer.enter()
    chooseModel(a_slicer, model)
    controller = controllerOf(a_slicer)
    assert (controller._parameterNode.marginMM, controller._parameterNode.contextMM) == (150.0, 250.0)
    assert (controller.ui.marginSpinBox.value, controller.ui.contextSpinBox.value) == (150.0, 250.0)


# -- runs ------------------------------------------------------------------------------------------------


def test_apply_segments_the_phantom_through_the_worker_and_rerun_keeps_the_view(a_slicer, phantom_data):
    nodes = addPhantoms(a_slicer, phantom_data)
    a_slicer.enter()
    controller = controllerOf(a_slicer)
    chooseModel(a_slicer, phantom_data["modelPath"])
    # The card's words pick the axial phantom as input and the other two as ROI series.
    assert controller.inputVolumes() == [nodes[selftest.INPUT_NAME]]
    assert sorted(node.GetName() for node in controller.roiVolumes()) == ["T2 coronal", "T2 sagittal"]
    controller.ui.deviceComboBox.currentIndex = 3  # cpu
    runApply(a_slicer)
    parameters = controller._parameterNode
    segmentation = parameters.outputSegmentation
    assert segmentation is not None and controller.ui.statusLabel.text.startswith("Done on cpu")
    assert labelCounts(a_slicer, segmentation, nodes[selftest.INPUT_NAME]) == {"outer": 1633, "inner": 178}
    assert a_slicer.layoutNode.GetViewArrangement() == slicerCore.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView
    # The worker is warm: its devices were asked; Slicer's own process has the network nowhere.
    logic = controller.logic
    assert logic.segmentationLogic.worker.alive
    # Segment Editor's geometry is the reference's whole grid, not the ROI's extent.
    reference = nodes[selftest.INPUT_NAME]
    assert referenceGeometryExtent(segmentation) == list(reference.GetImageData().GetExtent())
    # A re-run keeps the user's zoom: the views are fitted when they change volume only.
    red = a_slicer.sliceLogics["Red"].GetSliceNode()
    red.SetFieldOfView(33.0, 22.0, 1.0)
    runApply(a_slicer)
    assert red.GetFieldOfView()[:2] == (33.0, 22.0)
    assert labelCounts(a_slicer, parameters.outputSegmentation, reference) == {"outer": 1633, "inner": 178}


def test_cancel_and_closing_the_scene_during_a_run_leave_the_scene_as_it_was(a_slicer, tmp_path, phantom_data):
    addPhantoms(a_slicer, phantom_data)
    slow = slowThresholdModel(tmp_path / "slow.pt", phantom_data["card"], selftest.THRESHOLDS, repeats=8000)
    a_slicer.enter()
    controller = controllerOf(a_slicer)
    chooseModel(a_slicer, slow)
    before = a_slicer.scene.GetNumberOfNodes()
    controller.ui.applyButton.click()
    # The moment comes from the worker: its inference has begun.
    a_slicer.processEvents(until=lambda: controller._progress[1] == "Running the network")
    controller.ui.applyButton.click()  # Cancel
    a_slicer.processEvents(until=lambda: controller._job is None)
    assert controller.ui.statusLabel.text == "Cancelled; nothing was changed." and a_slicer.scene.GetNumberOfNodes() == before
    assert controller.ui.applyButton.text == "Apply" and controller.ui.applyButton.enabled
    # Closing the scene in the middle of a run cancels it; nothing is written into the new scene.
    controller.ui.applyButton.click()
    a_slicer.processEvents(until=lambda: controller._progress[1] == "Running the network")
    a_slicer.scene.Clear(0)
    a_slicer.processEvents(until=lambda: controller._job is None)
    assert a_slicer.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    assert controller.ui.statusLabel.text == "Cancelled; nothing was changed."


def test_output_nodes_removed_during_a_run_are_made_anew_and_the_users_segments_stay(a_slicer, tmp_path, phantom_data):
    nodes = addPhantoms(a_slicer, phantom_data)
    a_slicer.enter()
    controller = controllerOf(a_slicer)
    chooseModel(a_slicer, phantom_data["modelPath"])
    runApply(a_slicer)
    parameters = controller._parameterNode
    first, table = parameters.outputSegmentation, parameters.outputTable
    # The user's own segment in the output node stays through re-runs.
    first.GetSegmentation().AddEmptySegment("my lesion", "my lesion")
    runApply(a_slicer)
    segmentation = parameters.outputSegmentation.GetSegmentation()
    assert sorted(segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())) == [
        "inner",
        "my lesion",
        "outer",
    ]
    # Now remove the output nodes while the network runs.
    slow = slowThresholdModel(tmp_path / "slow.pt", phantom_data["card"], selftest.THRESHOLDS, repeats=8000)
    chooseModel(a_slicer, slow)
    controller.ui.applyButton.click()
    a_slicer.processEvents(until=lambda: controller._progress[1] == "Running the network")
    a_slicer.scene.RemoveNode(first)
    a_slicer.scene.RemoveNode(table)
    a_slicer.processEvents(until=lambda: controller._job is None)
    made = parameters.outputSegmentation
    assert made is not None and made is not first and a_slicer.scene.IsNodePresent(made) and not a_slicer.scene.IsNodePresent(first)
    assert a_slicer.scene.IsNodePresent(parameters.outputTable) and parameters.outputTable is not table
    assert labelCounts(a_slicer, made, nodes[selftest.INPUT_NAME]) == {"outer": 1633, "inner": 178}
    assert orphanSubjectHierarchyItems(a_slicer.scene) == []


def test_the_panel_shows_the_reference_comparison_warnings(a_slicer, tmp_path, phantom_data):
    import SimpleITK as sitk

    addPhantoms(a_slicer, phantom_data)
    reference = phantom_data["images"][selftest.INPUT_NAME]
    labels = np.rint(sitk.GetArrayFromImage(reference)).astype(np.uint8)  # the painted values 1 and 2: the card's
    labels[0, :3, :3] = 7  # and a value the card does not have
    labelImage = sitk.GetImageFromArray(labels)
    labelImage.CopyInformation(reference)
    labelNode = addVolumeFromImage(a_slicer.scene, labelImage, "manual", labelmap=True)
    a_slicer.enter()
    controller = controllerOf(a_slicer)
    chooseModel(a_slicer, phantom_data["modelPath"])
    controller._parameterNode.referenceSegmentation = labelNode
    runApply(a_slicer)
    status = controller.ui.statusLabel.text
    assert status.startswith("Done on") and "\nWarning: " in status and "7" in status.split("Warning: ", 1)[1], status
    assert controller._parameterNode.outputOverlapTable is not None


def test_renamed_volumes_are_renamed_in_the_roi_list_and_the_card_is_read_once(a_slicer, phantom_data, monkeypatch):
    from MedSegUNetLib.engine import modelcard

    nodes = addPhantoms(a_slicer, phantom_data)
    reads = []
    original = modelcard.readCard
    monkeypatch.setattr(modelcard, "readCard", lambda path, *a, **k: reads.append(path) or original(path, *a, **k))
    a_slicer.enter()
    controller = controllerOf(a_slicer)
    chooseModel(a_slicer, phantom_data["modelPath"])
    assert len(reads) == 1
    # Switching to a parameter node that names the same model does not read its card again.
    controller.setParameterNode(controller.logic.getParameterNode())
    assert len(reads) == 1
    nodes["T2 sagittal"].SetName("T2 sagittal renamed")
    a_slicer.processEvents(until=lambda: "T2 sagittal renamed" in [item.text() for item in controller._roiItems()], timeout=10)


def test_apply_does_nothing_while_an_installation_runs(a_slicer, phantom_data):
    addPhantoms(a_slicer, phantom_data)
    a_slicer.enter()
    controller = controllerOf(a_slicer)
    chooseModel(a_slicer, phantom_data["modelPath"])
    controller._installing = True  # as _ensureDependencies sets it while pip's output goes through the event loop
    controller._checkCanApply()
    controller.onApplyButton()
    assert controller._job is None
    controller._installing = False


# -- catalog, reload, self-test -----------------------------------------------------------------------


def test_a_catalog_model_is_pulled_in_the_worker_with_progress_and_cancel(a_slicer, a_stalling_server, tmp_path, monkeypatch):
    url, handler = a_stalling_server
    model = REPO_ROOT / "MedSegUNet" / "Resources" / "Models" / "prostate-zones" / "prostate-zones.pt"
    handler.body = model.read_bytes()
    catalog = {
        "schema": "medsegunet.catalog/1",
        "models": [
            {
                "name": "zones-mirror",
                "url": url + "zones.pt",
                "sha256": hashlib.sha256(handler.body).hexdigest(),
                "bytes": len(handler.body),
                "description": "the zoo's zones model on a mirror",
            }
        ],
    }
    (tmp_path / "catalog.json").write_text(json.dumps(catalog))
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(tmp_path / "catalog.json"))
    a_slicer.enter()
    controller = controllerOf(a_slicer)
    controller._populateCatalog()
    combo = controller.ui.catalogComboBox
    # The list: the prompt, the nnU-Net import, then the catalog's models.
    assert combo.count == 3 and combo.itemText(1) == "Import nnU-Net model..." and "download on first use" in combo.itemText(2)
    cache = a_slicer.cachePath / "medsegunet" / "models" / "zones-mirror"
    # Cancelled while half of the file has come: nothing stays in the cache.
    combo.activated[int].emit(2)
    assert controller._job is not None and controller.ui.applyButton.text == "Cancel"
    a_slicer.processEvents(until=lambda: controller._progress[0] > 0)
    controller.ui.applyButton.click()
    a_slicer.processEvents(until=lambda: controller._job is None)
    assert controller.ui.statusLabel.text == "Cancelled; nothing was changed." and not cache.exists()
    # Pulled whole: the panel selects the cached file, checked, and the list says it is downloaded.
    handler.release.set()
    combo.activated[int].emit(2)
    a_slicer.processEvents(until=lambda: controller._job is None)
    cached = Path(controller.ui.modelPathLineEdit.currentPath)
    assert cached.is_file() and cache in cached.parents and cached.read_bytes() == handler.body
    assert "downloaded" in combo.itemText(2) and controller._card["name"].startswith("Prostate")


def test_an_nnunet_folder_is_imported_from_the_catalog_list(a_slicer, tmp_path, monkeypatch):
    pytest.importorskip("dynamic_network_architectures", reason="the [nnunet] extra is needed")
    import qt

    folder = next((REPO_ROOT / "Testing" / "data" / "nnunet" / "aniso3d" / "results").glob("*/*__*__*"))
    asked = []
    monkeypatch.setattr(qt.QFileDialog, "getExistingDirectory", lambda *args: asked.append(args) or str(folder), raising=False)
    a_slicer.enter()
    controller = controllerOf(a_slicer)
    controller._populateCatalog()
    controller.ui.catalogComboBox.activated[int].emit(1)
    assert asked and controller._job is not None and controller.ui.applyButton.text == "Cancel"
    a_slicer.processEvents(until=lambda: controller._job is None)
    imported = Path(controller.ui.modelPathLineEdit.currentPath)
    assert imported == a_slicer.cachePath / "medsegunet" / "imported" / "Dataset901_aniso3d-3d_fullres.pt"
    assert controller._card["nnunet"]["folds"] == 2 and "nnU-Net pipeline" in controller.ui.modelSummaryLabel.text


def test_reload_makes_a_new_widget_and_ends_the_worker(a_slicer, phantom_data):
    import slicer

    addPhantoms(a_slicer, phantom_data)
    a_slicer.enter()
    old = a_slicer.widget
    chooseModel(a_slicer, phantom_data["modelPath"])
    runApply(a_slicer)
    worker = old.logic.segmentationLogic.worker
    assert worker.alive
    old.onReload()
    assert not worker.alive
    assert a_slicer.widget is not old and slicer.modules.MedSegUNetWidget is a_slicer.widget
    assert controllerOf(a_slicer).ui.applyButton.text == "Apply"


def test_the_self_test_passes(a_slicer):
    import slicer

    slicer.selfTests["MedSegUNet"](msec=1)


# -- what Slicer's process imports ---------------------------------------------------------------------

LIGHT_SLICER = r"""
import json, sys, pathlib, time
sys.path.insert(0, %(layer)r)
from slicerlayer.session import SlicerSession
from slicerlayer import pythonqt
from MedSegUNetLib.slicer import selftest
from MedSegUNetLib.slicer.nodes import addVolumeFromImage
import SimpleITK as sitk
with SlicerSession(%(release)r, pathlib.Path(%(python)r), pathlib.Path(%(work)r), launcher=%(launcher)r) as session:
    session.loadModule(); session.createWidget(); session.enter()
    controller = session.widget.controller
    for name, path in %(images)r.items():
        addVolumeFromImage(session.scene, sitk.ReadImage(path), name)
    controller._populateCatalog()
    combo = controller.ui.catalogComboBox
    combo.activated[int].emit([combo.itemData(i) for i in range(combo.count)].index("prostate-zones"))
    session.processEvents(until=lambda: controller._job is None)
    zones = controller.ui.modelPathLineEdit.currentPath
    controller.ui.modelPathLineEdit.currentPath = %(model)r
    controller.ui.applyButton.click()
    session.processEvents(until=lambda: controller._job is None)
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "monai", "onnx", "onnxruntime"})
    errors = [e for _, e in pythonqt.slotErrors]
    print(json.dumps({"heavy": heavy, "zones": zones, "status": controller.ui.statusLabel.text, "errors": errors}))
"""


@pytest.mark.parametrize("release", RELEASES)
def test_slicers_process_never_imports_torch_monai_or_onnx(release, tmp_path, python_slicer, phantom_data):
    folder = slicerPythonOrSkip(release)
    images = {}
    for name, image in phantom_data["images"].items():
        import SimpleITK as sitk

        images[name] = str(tmp_path / f"{name}.nrrd")
        sitk.WriteImage(image, images[name])
    script = LIGHT_SLICER % {
        "layer": str(Path(__file__).parent),
        "release": release,
        "python": str(folder),
        "work": str(tmp_path / "slicer"),
        "launcher": python_slicer,
        "images": images,
        "model": phantom_data["modelPath"],
    }
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["errors"] == [] and report["status"].startswith("Done on")
    assert report["zones"].endswith("Resources/Models/prostate-zones/prostate-zones.pt")
    assert report["heavy"] == []


# -- the layer itself -----------------------------------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_the_stand_ins_declare_only_what_the_headers_have(release):
    # Runs without Slicer's Python files: the stand-ins come from the headers' record alone.
    from slicerlayer import standins

    pythonqt.install()
    classes = standins.standInClasses(release)
    assert standins.undeclaredBehaviour(standins.loadAPI(release)) == []
    combo = classes["qMRMLNodeComboBox"]()
    assert combo.noneEnabled is False and combo.addEnabled is True and list(combo.nodeTypes) == []
    combo.noneEnabled = True
    assert combo.noneEnabled is True
    with pytest.raises(AttributeError):
        combo.nodes()  # a public method of the C++ class, but neither a slot nor Q_INVOKABLE: PythonQt has no such name
    with pytest.raises(AttributeError):
        combo.noneAllowed = True  # a C++ object takes no new attributes
    with pytest.raises(NotImplementedError, match="qMRMLNodeComboBox.addNode is declared in Libs/MRML/Widgets/qMRMLNodeComboBox.h"):
        combo.addNode()
    received = []
    combo.connect("currentNodeChanged(bool)", received.append)
    with pytest.raises(AttributeError, match="has no signal 'currentNodeChanged\\(int\\)'"):
        combo.connect("currentNodeChanged(int)", received.append)
    scene = slicerCore.vtkMRMLScene()
    combo.nodeTypes = ["vtkMRMLScalarVolumeNode"]
    combo.setMRMLScene(scene)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    combo.setCurrentNode(volume)
    scene.RemoveNode(volume)
    assert received == [True, False] and combo.currentNode() is None
