"""MedSegUNet: U-Net segmentation of MRI in 3D Slicer, limited to the region all series cover.

This file is the thin Qt/Slicer layer. The MRML work is in ``MedSegUNetLib/SegmentationLogic.py``
(tested with slicer-core), the processing in the ``MedSegUNetLib`` engine (shared with the
``medsegunet`` command), and the self-test scenario in ``MedSegUNetLib/selftest.py``.
"""

import logging
import os
import sys
import threading
import time
from typing import Annotated, Optional, Union

import qt
import vtk

import slicer
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

README_URL = "https://github.com/medsegunet/MedSegUNet#readme"
SAMPLE_DATA_URL = "https://github.com/lassoan/SlicerMONAIAuto3DSeg/releases/download/TestingData/"
# SHA256 sums as published with the TestingData release of SlicerMONAIAuto3DSeg.
SAMPLE_DATA_FILES = (
    ("3940564b147b7bcda52b6b305be3d39f7c9fb901b81caa9863c72ef6ff113dfb", "ProstateX-0000-t2-tse-tra.nrrd"),
    ("774a3891a506f534b5d60ab9831587803e18da0f2daa343997d09221942bf329", "ProstateX-0000-t2-tse-sag.nrrd"),
    ("628b928f818350acdb95952daa107d089a6c9101cf74d51fb129ab9b5d490e59", "ProstateX-0000-t2-tse-cor.nrrd"),
)
DEVICES = ("auto", "cuda", "mps", "cpu")
INPUT_REFERENCE_ROLE = "InputVolume"
ROI_VOLUME_REFERENCE_ROLE = "ROIVolume"


#
# MedSegUNet
#


class MedSegUNet(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSegUNet")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSegUNet developers"]
        self.parent.helpText = _(
            "Segments MRI volumes with TorchScript MONAI U-Nets described by a model card, inside the "
            "region covered by all series of the study (for example axial, sagittal and coronal T2). "
            f'See the <a href="{README_URL}">README</a> for models, console batch use and the command line tool.'
        )
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer, MONAI, PyTorch and SimpleITK. Sample data: ProstateX-0000 from the PROSTATEx "
            "collection of The Cancer Imaging Archive (CC BY 3.0), as published with SlicerMONAIAuto3DSeg."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add the ProstateX-0000 T2 axial, sagittal and coronal series to the Sample Data module."""
    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MedSegUNet",
        sampleName="ProstateX-0000 T2",
        thumbnailFileName=os.path.join(iconsPath, "MedSegUNet.png"),
        uris=[SAMPLE_DATA_URL + fileName for _, fileName in SAMPLE_DATA_FILES],
        fileNames=[fileName for _, fileName in SAMPLE_DATA_FILES],
        nodeNames=[fileName.split(".")[0] for _, fileName in SAMPLE_DATA_FILES],
        checksums=[f"SHA256:{checksum}" for checksum, _ in SAMPLE_DATA_FILES],
    )


#
# MedSegUNetParameterNode
#


@parameterNodeWrapper
class MedSegUNetParameterNode:
    """The module's settings, saved with the scene.

    Input volumes and the extra ROI series are node references of the underlying node (roles
    ``InputVolume0``, ``InputVolume1``, ... and ``ROIVolume``), since their number depends on the model.
    """

    modelPath: str = ""
    device: str = "auto"
    useROI: bool = True
    marginMM: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    show3D: bool = False
    roiNode: vtkMRMLMarkupsROINode
    outputSegmentation: vtkMRMLSegmentationNode
    outputTable: vtkMRMLTableNode
    # The None member is required: Slicer's UnionSerializer cannot write None (the default) otherwise.
    referenceSegmentation: Optional[Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]]
    outputROI: vtkMRMLMarkupsROINode
    outputOverlapTable: vtkMRMLTableNode


#
# MedSegUNetWidget
#


class MedSegUNetWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The GUI: model, inputs, ROI, device, outputs; inference on a worker thread."""

    POLL_INTERVAL_MS = 100

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._card = None
        self._inputSelectors = []
        self._job = None
        self._tableShown = False
        self._cancelEvent = None
        self._progress = (0.0, "")
        self._startTime = 0.0
        self._pollTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSegUNet.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSegUNetLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollWorker)
        # One member timer coalesces a burst of scene events (loading a study) into one refresh;
        # qt.QTimer.singleShot would make (and never delete) a timer per event.
        self._sceneChangeTimer = qt.QTimer()
        self._sceneChangeTimer.setSingleShot(True)
        self._sceneChangeTimer.setInterval(0)
        self._sceneChangeTimer.connect("timeout()", self._updateROIVolumeList)

        self.ui.modelPathLineEdit.nameFilters = ["TorchScript model (*.pt *.pth *.ts)", "All files (*)"]
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self._populateCatalog()
        self.ui.catalogComboBox.connect("activated(int)", self.onCatalogModelChosen)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.roiVolumesListWidget.connect("itemChanged(QListWidgetItem*)", self.onROIVolumesChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showTableButton.connect("clicked(bool)", self.onShowTable)
        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.hide()
        self._populateDevices()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._cancelEvent is not None:
            self._cancelEvent.set()
            if self._job is not None:
                self._job.poll()  # sees the cancel: ends the worker process
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if getattr(self, "_sceneChangeTimer", None) is not None:
            self._sceneChangeTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        # Node events only matter while the module is shown.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onSceneNodesChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onSceneNodesChanged)
        self._updateROIVolumeList()

    def exit(self) -> None:
        self.removeObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onSceneNodesChanged)
        self.removeObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onSceneNodesChanged)
        self._sceneChangeTimer.stop()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self._cancelEvent is not None:
            self._cancelEvent.set()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node -----------------------------------------------------------------------

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[MedSegUNetParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            if self._parameterNode.modelPath:
                self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelPath
            else:  # a new scene starts from the last model used (the path edit's history)
                self._parameterNode.modelPath = self.ui.modelPathLineEdit.currentPath
            index = self.ui.deviceComboBox.findData(self._parameterNode.device)
            self.ui.deviceComboBox.currentIndex = max(index, 0)
            self._loadCard(self._parameterNode.modelPath)
            self._checkCanApply()

    # -- model and inputs ---------------------------------------------------------------------

    def _populateCatalog(self) -> None:
        """The catalog's models beside the local file (MEDSEGUNET_CATALOG may name a mirror)."""
        from MedSegUNetLib import catalog
        from MedSegUNetLib.errors import MedSegUNetError

        combo = self.ui.catalogComboBox
        combo.clear()
        combo.addItem(_("Choose a model to download..."), "")
        try:
            entries = catalog.loadCatalog()["models"]
        except MedSegUNetError as error:
            combo.setToolTip(str(error))
            return
        for entry in entries:
            combo.addItem(f"{entry['name']}: {entry.get('description', '')}", entry["name"])

    def onCatalogModelChosen(self, index: int) -> None:
        name = self.ui.catalogComboBox.itemData(index)
        if not name:
            return
        with slicer.util.tryWithErrorDisplay(_("The model could not be downloaded."), waitCursor=True):
            self.ui.statusLabel.text = _("Downloading {name}...").format(name=name)
            slicer.app.processEvents()
            path = self.logic.pullCatalogModel(name)
            self.ui.modelPathLineEdit.currentPath = path
            self.ui.statusLabel.text = _("Model {name} is in {path}").format(name=name, path=path)
        self.ui.catalogComboBox.setCurrentIndex(0)

    def onModelPathChanged(self, path: str) -> None:
        if self._parameterNode:
            self._parameterNode.modelPath = path
        self._loadCard(path)

    def _loadCard(self, path: str) -> None:
        """Read the card (not the weights), summarise it and rebuild one selector per input."""
        self._card = None
        summary = _("Select a MedSegUNet TorchScript model (.pt) with its card.")
        if path:
            try:
                from MedSegUNetLib import modelcard
                from MedSegUNetLib.errors import MedSegUNetError

                self._card = modelcard.readCard(path)
                summary = modelcard.cardSummary(self._card)
            except ImportError:
                summary = _("Dependencies are missing; they are installed on the first Apply.")
            except MedSegUNetError as error:
                summary = str(error)
        self.ui.modelSummaryLabel.text = summary
        self._rebuildInputSelectors()
        self._checkCanApply()

    def _rebuildInputSelectors(self) -> None:
        layout = self.ui.inputSelectorsWidget.layout()
        for label, selector in self._inputSelectors:
            layout.removeWidget(label)
            layout.removeWidget(selector)
            label.deleteLater()
            selector.deleteLater()
        self._inputSelectors = []
        if self._card is None:
            return
        from MedSegUNetLib.SegmentationLogic import suggestInputVolumes

        volumes = [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if not node.IsA("vtkMRMLLabelMapVolumeNode")]
        saved = self._savedInputs()
        suggested = suggestInputVolumes(self._card, volumes)
        for index, spec in enumerate(self._card["inputs"]):
            label = qt.QLabel(spec["name"] + ":")
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.hideChildNodeTypes = ["vtkMRMLLabelMapVolumeNode"]
            selector.noneEnabled = True
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.setMRMLScene(slicer.mrmlScene)
            selector.setToolTip(spec.get("description", _("Volume used as the model input '{name}'").format(name=spec["name"])))
            node = saved[index] if index < len(saved) and saved[index] is not None else suggested[index]
            selector.setCurrentNode(node)
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumesChanged)
            layout.addRow(label, selector)
            self._inputSelectors.append((label, selector))
        self.onInputVolumesChanged()

    def _savedInputs(self) -> list:
        if not self._parameterNode:
            return []
        node = self._parameterNode.parameterNode
        count = len(self._card["inputs"]) if self._card else 0
        return [node.GetNodeReference(f"{INPUT_REFERENCE_ROLE}{index}") for index in range(count)]

    def inputVolumes(self) -> list:
        return [selector.currentNode() for _, selector in self._inputSelectors]

    def onInputVolumesChanged(self, node=None) -> None:
        if self._parameterNode:
            # One role per input position, so an empty selector keeps the others in place.
            raw = self._parameterNode.parameterNode
            for index, volume in enumerate(self.inputVolumes()):
                raw.SetNodeReferenceID(f"{INPUT_REFERENCE_ROLE}{index}", volume.GetID() if volume else None)
        self._updateROIVolumeList()
        self._checkCanApply()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onSceneNodesChanged(self, caller=None, event=None, node=None) -> None:
        # Only scalar volumes change the lists; scene events come in bursts: refresh once after.
        if node is None or node.IsA("vtkMRMLScalarVolumeNode"):
            self._sceneChangeTimer.start()

    def _updateROIVolumeList(self) -> None:
        """List every other scalar volume, checked when it limits the ROI (pre-checked: same study)."""
        if not hasattr(self, "ui") or self._job is not None:
            return
        inputs = [node for node in self.inputVolumes() if node is not None]
        inputIDs = {node.GetID() for node in inputs}
        candidates = [
            node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if not node.IsA("vtkMRMLLabelMapVolumeNode") and node.GetID() not in inputIDs
        ]
        raw = self._parameterNode.parameterNode if self._parameterNode else None
        if raw is not None and raw.GetAttribute("ROIVolumesEdited"):
            # The user's choice wins over the suggestion once they have edited the list.
            checked = {raw.GetNthNodeReferenceID(ROI_VOLUME_REFERENCE_ROLE, i) for i in range(raw.GetNumberOfNodeReferences(ROI_VOLUME_REFERENCE_ROLE))}
        elif inputs and self._card is not None:
            from MedSegUNetLib.SegmentationLogic import suggestROIVolumes

            checked = {node.GetID() for node in suggestROIVolumes(inputs[0], candidates, self._card)}
        else:
            checked = set()
        listWidget = self.ui.roiVolumesListWidget
        wasBlocked = listWidget.blockSignals(True)
        listWidget.clear()
        for node in candidates:
            item = qt.QListWidgetItem(node.GetName())
            item.setData(qt.Qt.UserRole, node.GetID())
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if node.GetID() in checked else qt.Qt.Unchecked)
            listWidget.addItem(item)
        listWidget.blockSignals(wasBlocked)

    def onROIVolumesChanged(self, item=None) -> None:
        if not self._parameterNode:
            return
        raw = self._parameterNode.parameterNode
        raw.RemoveNodeReferenceIDs(ROI_VOLUME_REFERENCE_ROLE)
        for node in self.roiVolumes():
            raw.AddNodeReferenceID(ROI_VOLUME_REFERENCE_ROLE, node.GetID())
        raw.SetAttribute("ROIVolumesEdited", "1")

    def roiVolumes(self) -> list:
        listWidget = self.ui.roiVolumesListWidget
        nodes = []
        for row in range(listWidget.count):
            item = listWidget.item(row)
            if item.checkState() == qt.Qt.Checked:
                node = slicer.mrmlScene.GetNodeByID(item.data(qt.Qt.UserRole))
                if node is not None:
                    nodes.append(node)
        return nodes

    # -- device -------------------------------------------------------------------------------

    def _populateDevices(self, askWorker: bool = False) -> None:
        """Fill the device list; ``askWorker`` asks the worker process which GPUs PyTorch sees
        (Slicer's process never imports torch), after an install or a first run."""
        from MedSegUNetLib.SegmentationLogic import availableDevices

        worker = self.logic.segmentationLogic.worker if askWorker and self.logic is not None else None
        available = availableDevices(worker)
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for name in DEVICES:
            combo.addItem(name, name)
            item = combo.model().item(combo.count - 1)
            item.setEnabled(available.get(name, False))
            if not available.get(name, False):
                item.setToolTip(_("Not available with this PyTorch installation"))
        combo.blockSignals(wasBlocked)

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    # -- apply / cancel -----------------------------------------------------------------------

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._job is not None:
            return
        ready = self._card is not None and bool(self._inputSelectors) and all(self.inputVolumes())
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.text = _("Apply")
        self.ui.applyButton.toolTip = _("Segment the input volumes") if ready else _("Select a model and all its input volumes")

    def onApplyButton(self) -> None:
        if self._job is not None:
            self._cancelEvent.set()
            self.ui.applyButton.enabled = False
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            installing = bool(self.logic.missingModules())
            if not self.logic.ensureDependencies():
                self.ui.statusLabel.text = _("Dependencies are needed to segment.")
                return
            if installing:  # the same Apply goes on, with the GPUs the new PyTorch sees
                self._populateDevices(askWorker=True)
            if self._card is None:  # the card could not be read before dependencies existed
                self._loadCard(self._parameterNode.modelPath)
            parameters = self._parameterNode
            self._cancelEvent = threading.Event()
            self._progress = (0.0, _("Starting"))
            job = self.logic.prepare(
                self.inputVolumes(),
                parameters.modelPath,
                roiVolumes=self.roiVolumes(),
                roiNode=parameters.roiNode,
                outputSegmentation=parameters.outputSegmentation,
                outputTable=parameters.outputTable,
                referenceSegmentation=parameters.referenceSegmentation,
                device=parameters.device,
                progressCallback=self._onWorkerProgress,
                cancelEvent=self._cancelEvent,
                outputROI=parameters.outputROI,
                outputOverlapTable=parameters.outputOverlapTable,
                useROI=parameters.useROI,
                marginMM=parameters.marginMM,
            )
            # The network runs in the logic's worker process; the poll timer reads its progress
            # without blocking (a thread in Slicer's process would be starved of the GIL).
            self._job = job
            self._startTime = time.perf_counter()
            job.start()
            self.ui.modelPathLineEdit.addCurrentPathToHistory()
            self._setRunning(True)
            self._pollTimer.start()

    def _onWorkerProgress(self, fraction: float, message: str) -> None:
        # Called from job.poll() on the main thread: store; onPollWorker updates the widgets.
        self._progress = (fraction, message)

    def _setRunning(self, running: bool) -> None:
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.enabled = True
        self.ui.progressBar.setVisible(running)
        for widget in (self.ui.modelCollapsibleButton, self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton):
            widget.enabled = not running

    def onPollWorker(self) -> None:
        job = self._job
        done = job is None or job.poll()
        fraction, message = self._progress
        self.ui.progressBar.value = int(fraction * 1000)
        self.ui.statusLabel.text = f"{message} ({time.perf_counter() - self._startTime:.0f} s)"
        if not done:
            return
        self._pollTimer.stop()
        self._job = None
        self._setRunning(False)
        from MedSegUNetLib.errors import ProcessingCancelled

        if isinstance(job.error, ProcessingCancelled):
            self.ui.statusLabel.text = _("Cancelled; nothing was changed.")
            self._checkCanApply()
            return
        self.ui.statusLabel.text = _("Failed.")
        try:
            with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
                try:
                    result = self.logic.finish(job)
                except ProcessingCancelled:
                    self.ui.statusLabel.text = _("Cancelled; nothing was changed.")
                else:
                    self._showResult(result)
        finally:
            self._checkCanApply()

    def _showResult(self, result) -> None:
        from MedSegUNetLib.SegmentationLogic import timingsText

        parameters = self._parameterNode
        parameters.outputSegmentation = result.segmentationNode
        parameters.outputTable = result.statisticsTableNode
        parameters.outputROI = result.roiNode
        if result.overlapTableNode is not None:
            parameters.outputOverlapTable = result.overlapTableNode
        displayNode = result.segmentationNode.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility(True)
        reference = self.inputVolumes()[0]
        slicer.util.setSliceViewerLayers(background=reference, fit=True)
        if parameters.show3D:  # closed surfaces take time: only when asked
            result.segmentationNode.CreateClosedSurfaceRepresentation()
        if not self._tableShown:  # the layout changes on the first result only; the button shows it again
            self._tableShown = True
            self.onShowTable()
        self.ui.statusLabel.text = _("Done on {device}: {timings}").format(device=result.device, timings=timingsText(result.timings))

    def onShowTable(self) -> None:
        table = self._parameterNode.outputTable if self._parameterNode else None
        if table is None:
            return
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()


#
# MedSegUNetLogic
#


class MedSegUNetLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: wraps ``SegmentationLogic`` on ``slicer.mrmlScene`` and installs dependencies.

    Console use::

        logic = slicer.util.getModuleLogic("MedSegUNet")
        result = logic.process([t2tra], "/path/model.pt", roiVolumes=[t2sag, t2cor])
    """

    REQUIRED_MODULES = ("monai", "scipy", "slicerio", "jsonschema", "yaml")

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._segmentationLogic = None

    def getParameterNode(self):
        return MedSegUNetParameterNode(super().getParameterNode())

    @property
    def segmentationLogic(self):
        from MedSegUNetLib.SegmentationLogic import SegmentationLogic

        if self._segmentationLogic is None or self._segmentationLogic.scene is not slicer.mrmlScene:
            if self._segmentationLogic is not None:
                self._segmentationLogic.close()
            # The network runs in a PythonSlicer worker process kept warm between runs: Slicer's
            # own process never imports torch or MONAI.
            self._segmentationLogic = SegmentationLogic(slicer.mrmlScene, useWorker=True, workerExecutable=self.pythonSlicerExecutable())
        return self._segmentationLogic

    @staticmethod
    def pythonSlicerExecutable() -> str:
        """Slicer's ``PythonSlicer`` (Slicer's Python with its environment), as the AI extensions use it."""
        import shutil

        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def pullCatalogModel(name: str) -> str:
        """A catalog model's file, downloaded once (SHA256 checked) into Slicer's cache folder."""
        from MedSegUNetLib import catalog

        return str(catalog.pullModel(name, cache=catalog.cacheFolder(slicer.app.cachePath)))

    def close(self) -> None:
        """Stop the worker process (the next run starts a new one)."""
        if self._segmentationLogic is not None:
            self._segmentationLogic.close()

    def prepare(self, *args, **kwargs):
        """See ``SegmentationLogic.prepare``: reads the nodes on the main thread."""
        return self.segmentationLogic.prepare(*args, **kwargs)

    def finish(self, job):
        """See ``SegmentationLogic.finish``: writes the results on the main thread."""
        return self.segmentationLogic.finish(job)

    def process(self, inputVolumes, modelPath, roiVolumes=(), **kwargs):
        """Segment in one call (console and batch scripts); installs nothing without asking.

        Args:
            inputVolumes: scalar volume nodes in the model card's input order.
            modelPath: TorchScript model file.
            roiVolumes: extra series whose extents limit the ROI.
            kwargs: ``roiNode``, ``outputSegmentation``, ``outputTable``, ``referenceSegmentation``,
                ``device``, ``progressCallback``, ``cancelEvent``, ``useROI``, ``marginMM``.

        Returns:
            the result with ``segmentationNode``, ``statisticsTableNode``, ``roiNode``,
            ``overlapTableNode`` and ``timings``.
        """
        if not self.ensureDependencies(askConfirmation=not slicer.app.commandOptions().noMainWindow):
            raise RuntimeError("MedSegUNet needs PyTorch, MONAI and its other dependencies; install them first.")
        return self.segmentationLogic.process(inputVolumes, modelPath, roiVolumes=roiVolumes, **kwargs)

    def missingModules(self) -> list:
        """What the first Apply must install: ``torch`` (missing or broken) and the other packages.

        Read from the packages' metadata: Slicer's process never imports torch or MONAI.
        """
        from MedSegUNetLib import dependencies

        status = dependencies.torchStatus()
        return (["torch"] if status != "ok" else []) + dependencies.missingModules()

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install what is missing, after one confirmation: PyTorch via the PyTorch extension, the rest from requirements.txt.

        The torch, numpy, SimpleITK and VTK already present are pinned (a constraints file), so pip
        never replaces Slicer's or the PyTorch extension's builds.

        Returns:
            True when everything is installed; False when the user declined.

        Raises:
            MedSegUNetError: an installation failed (one line saying what to do).
        """
        from MedSegUNetLib import dependencies
        from MedSegUNetLib.errors import MedSegUNetError

        missing = self.missingModules()
        if not missing:
            return True
        broken = dependencies.torchStatus() == "broken"
        names = ", ".join(("PyTorch (reinstall: the installed one is broken)" if broken else "PyTorch") if name == "torch" else name for name in missing)
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("MedSegUNet needs these Python packages: {names}. Install them now? "
              "PyTorch comes from the PyTorch extension, built for this computer's GPU; it may download a few GB.").format(names=names),
            windowTitle=_("Install Python packages"),
        ):
            return False
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ImportError:
                raise MedSegUNetError("The PyTorch extension is missing: install 'PyTorch' from the Extensions Manager and restart Slicer.") from None
            try:
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
            except Exception as error:  # pip and network errors come in many types
                logging.exception("PyTorch installation failed")
                raise MedSegUNetError(f"PyTorch could not be installed ({error}): install it from the PyTorch Utils module, then retry.") from None
            if torch is None or dependencies.torchStatus() != "ok":
                raise MedSegUNetError("PyTorch could not be installed: install it from the PyTorch Utils module, then retry.")
            # The worker may hold the old (broken) PyTorch: start afresh.
            self.close()
        if dependencies.missingModules():
            self._installRequirements()
        still = self.missingModules()
        if still:
            raise MedSegUNetError(f"{', '.join(still)} still cannot be imported: restart Slicer and retry.")
        return True

    def _installRequirements(self) -> None:
        from MedSegUNetLib import dependencies
        from MedSegUNetLib.errors import MedSegUNetError

        requirements = self.resourcePath("requirements.txt")
        constraints = dependencies.writeConstraints()
        try:
            packaging = self._packagingModule()
            if packaging is not None:
                # The user was asked above, and the self-test needs the packages even in testing mode.
                packaging.pip_ensure(
                    packaging.load_requirements(requirements),
                    constraints=constraints,
                    skip_packages=list(dependencies.PINNED),
                    prompt_install=False,
                    skip_in_testing=False,
                    requester="MedSegUNet",
                )
            else:  # Slicer 5.6–5.10: pip with the constraints file keeps torch, numpy, SimpleITK and VTK as they are
                slicer.util.pip_install(["-r", requirements, "-c", constraints])
        except Exception as error:  # pip reports failures as CalledProcessError or RuntimeError
            logging.exception("Installing MedSegUNet requirements failed")
            raise MedSegUNetError(
                f"Installing the Python packages failed ({error}): check the network connection, or run "
                f"slicer.util.pip_install(['-r', {requirements!r}, '-c', {constraints!r}]) in the Python console, then retry."
            ) from None

    @staticmethod
    def _packagingModule():
        """Slicer's package installer with ``pip_ensure``/``load_requirements``, or None on older Slicer.

        It is ``slicer.packaging`` in current Slicer and was ``slicer.pydeps`` for a while; both are
        submodules, so they must be imported (not looked up as attributes of ``slicer``).
        """
        import importlib

        for name in ("slicer.packaging", "slicer.pydeps"):
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, "pip_ensure") and hasattr(module, "load_requirements"):
                return module
        return None

    def resourcePath(self, relativePath: str) -> str:
        return os.path.join(os.path.dirname(__file__), "Resources", relativePath)


#
# MedSegUNetTest
#


class MedSegUNetTest(ScriptedLoadableModuleTest):
    """Self-test with data it makes itself (``slicer.selfTests["MedSegUNet"]()``).

    The scenario lives in ``MedSegUNetLib/selftest.py`` so pytest runs the very same code against
    slicer-core on every CI run.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_KnownAnswerPhantom()

    def test_KnownAnswerPhantom(self):
        import tempfile

        self.delayDisplay("Checking dependencies")
        logic = MedSegUNetLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False), "dependencies are missing")
        from MedSegUNetLib import selftest

        with tempfile.TemporaryDirectory() as directory:
            figures = selftest.runSelfTestScenario(slicer.mrmlScene, directory, log=self.delayDisplay)
        self.assertEqual(figures["voxelCounts"], {"outer": 1633, "inner": 178})
        self.delayDisplay("Test passed")
