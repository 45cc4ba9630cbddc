"""The MedSegUNet module's GUI (Qt), imported by ``MedSegUNet.py`` (as in SlicerNNUnet): model and
catalog, one input selector per card input, ROI series, device, outputs, Apply/Cancel, progress.
The MRML work is in :mod:`logic`; the network, catalog downloads and imports run in the logic's
worker process, polled by a timer: Slicer's process never imports torch, MONAI or onnx.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

from MedSegUNetLib.engine import settings

INPUT_REFERENCE_ROLE = "InputVolume"
ROI_VOLUME_REFERENCE_ROLE = "ROIVolume"
# The model whose card set the ROI margin and context: another model resets them, the same one keeps the user's values.
CONTEXT_MODEL_ATTRIBUTE = "ContextFromModel"
# The catalog list's entry that imports an nnU-Net v2 results folder (in the worker) instead of pulling a model.
IMPORT_NNUNET = ":import-nnunet:"


class MedSegUNetWidgetController(VTKObservationMixin):
    """The GUI: model, inputs, ROI, device, outputs; the work runs in the logic's worker process.

    Args:
        shell: the module's widget (its layout, resource path and entered state).
        logic: the module's logic.
    """

    POLL_INTERVAL_MS = 100

    def __init__(self, shell, logic) -> None:
        VTKObservationMixin.__init__(self)
        self.shell = shell
        self.logic = logic
        self._parameterNode = self._parameterNodeGuiTag = None
        self._card = self._cardPath = None
        self._inputSelectors, self._observedVolumes = [], []
        # The run in flight: a segmentation job, a catalog pull or an import (all polled by the timer).
        self._job = self._cancelEvent = self._pollTimer = self._deviceQuery = self._devicesAskedOf = None
        self._installing = self._tableShown = False
        self._progress, self._startTime = (0.0, ""), 0.0

    def setup(self) -> None:
        uiWidget = slicer.util.loadUI(self.shell.resourcePath("UI/MedSegUNet.ui"))
        self.shell.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollWorker)
        # One member timer coalesces a burst of scene events (loading a study) into one refresh;
        # qt.QTimer.singleShot would make (and never delete) a timer per event.
        self._sceneChangeTimer = qt.QTimer()
        self._sceneChangeTimer.setSingleShot(True)
        self._sceneChangeTimer.setInterval(0)
        self._sceneChangeTimer.connect("timeout()", self._updateROIVolumeList)

        self.ui.modelPathLineEdit.nameFilters = ["MedSegUNet model (*.pt *.pt2 *.pth *.ts)", "All files (*)"]
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self._populateCatalog()
        self.ui.catalogComboBox.connect("activated(int)", self.onCatalogModelChosen)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.roiVolumesListWidget.connect("itemChanged(QListWidgetItem*)", self.onROIVolumesChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showTableButton.connect("clicked(bool)", self.onShowTable)
        self.ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSeg)
        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.hide()
        # No worker is started here: opening the module costs nothing. Which GPUs PyTorch sees is
        # asked of the worker once it runs (the first Apply or catalog model).
        self._populateDevices()

        logging.getLogger("MedSegUNetLib").setLevel(logging.INFO)  # its notes reach Slicer's log through Slicer's handler
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Module closed or reloaded: cancel a run and end the worker process (no process is left)."""
        if self._cancelEvent is not None:
            self._cancelEvent.set()
            if self._job is not None:
                self._job.poll()  # sees the cancel: ends the worker process
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if getattr(self, "_sceneChangeTimer", None) is not None:
            self._sceneChangeTimer.stop()
        self._deviceQuery = None
        if self.logic is not None:
            self.logic.close()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        # Node events only matter while the module is shown.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onSceneNodesChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onSceneNodesChanged)
        self._updateROIVolumeList()

    def exit(self) -> None:
        # After Reload, Slicer sets the new widget up without entering it, then exits it.
        for event in (slicer.mrmlScene.NodeAddedEvent, slicer.mrmlScene.NodeRemovedEvent):
            if self.hasObserver(slicer.mrmlScene, event, self.onSceneNodesChanged):
                self.removeObserver(slicer.mrmlScene, event, self.onSceneNodesChanged)
        self._observeVolumeNames([])
        self._sceneChangeTimer.stop()
        self.setParameterNode(None)  # GUI and observer let go once; enter() connects them again

    def onSceneStartClose(self, caller, event) -> None:
        if self._cancelEvent is not None:
            self._cancelEvent.set()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.shell.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node -----------------------------------------------------------------------

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[object]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            if self._parameterNode.modelPath:
                # Emits currentPathChanged when it differs, which loads the card (once).
                self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelPath
            else:  # a new scene starts from the last model used (the path edit's history)
                self._parameterNode.modelPath = self.ui.modelPathLineEdit.currentPath
            index = self.ui.deviceComboBox.findData(self._parameterNode.device)
            self.ui.deviceComboBox.currentIndex = max(index, 0)
            self._loadCard(self._parameterNode.modelPath)
            self._checkCanApply()

    # -- model and inputs ---------------------------------------------------------------------

    def _populateCatalog(self) -> None:
        """The catalog's models, each saying whether it is on this computer (MEDSEGUNET_CATALOG may name a mirror)."""
        from MedSegUNetLib.engine.errors import MedSegUNetError
        from MedSegUNetLib.models import catalog

        combo = self.ui.catalogComboBox
        combo.clear()
        combo.addItem(_("Choose a model..."), "")
        combo.addItem(_("Import nnU-Net model..."), IMPORT_NNUNET)
        try:
            choices = catalog.catalogChoices(cache=catalog.cacheFolder(self.logic.cachePath))
        except MedSegUNetError as error:
            combo.setToolTip(str(error))
            return
        for text, name in choices:
            combo.addItem(text, name)

    def onCatalogModelChosen(self, index: int) -> None:
        """Pull the chosen catalog model in the worker (download, import, checks), with progress and Cancel."""
        name = self.ui.catalogComboBox.itemData(index)
        self.ui.catalogComboBox.setCurrentIndex(0)
        if not name or self._job is not None or self._installing:
            return
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("nnU-Net results folder")) if name == IMPORT_NNUNET else ""
        if name == IMPORT_NNUNET and not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("The model could not be downloaded or imported."), waitCursor=True):
            if not self._ensureDependencies():
                return
            self._cancelEvent = threading.Event()
            self._progress = (0.0, _("Getting {name}").format(name=folder or name))
            start = (lambda *a: self.logic.startImport(folder, *a)) if folder else (lambda *a: self.logic.startPull(name, *a))
            self._startRun(start(self._onWorkerProgress, self._cancelEvent))

    def onModelPathChanged(self, path: str) -> None:
        if self._parameterNode:
            self._parameterNode.modelPath = path
        self._loadCard(path)

    def _loadCard(self, path: str, force: bool = False) -> None:
        """Read the card (not the weights), summarise it and rebuild one selector per input; the
        card already shown is not read again unless ``force``."""
        if path == self._cardPath and not force:
            return
        self._card, self._cardPath = None, path
        summary = _("Select a MedSegUNet model (.pt or .pt2) with its card.")
        if path:
            try:
                from MedSegUNetLib.engine import modelcard
                from MedSegUNetLib.engine.errors import MedSegUNetError

                self._card = modelcard.readCard(path)
                summary = modelcard.cardSummary(self._card)
                self._takeROISettingsFromCard(path)
            except ImportError:
                summary = _("Dependencies are missing; they are installed on the first Apply.")
                self._cardPath = None  # read again once they are
            except MedSegUNetError as error:
                summary = str(error)
        self.ui.modelSummaryLabel.text = summary
        self._rebuildInputSelectors()
        self._checkCanApply()

    def _takeROISettingsFromCard(self, path: str) -> None:
        """A newly chosen model brings the ROI margin and context it was trained with; the same model
        (entering the module again, a loaded scene) keeps the user's or the saved scene's values."""
        if not self._parameterNode:
            return
        raw = self._parameterNode.parameterNode
        if raw.GetAttribute(CONTEXT_MODEL_ATTRIBUTE) == path:
            return
        from MedSegUNetLib.engine.request import SegmentationRequest

        defaults = SegmentationRequest()  # what a run without the panel's values would take
        self._parameterNode.marginMM, self._parameterNode.contextMM = defaults.margin(self._card), defaults.context(self._card)
        raw.SetAttribute(CONTEXT_MODEL_ATTRIBUTE, path)

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
        from MedSegUNetLib.slicer.nodes import suggestInputVolumes

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

    def onVolumeModified(self, node, event=None) -> None:
        # A volume renamed while listed: refresh the list (once, whatever else changed).
        if any(item.data(qt.Qt.UserRole) == node.GetID() and item.text() != node.GetName() for item in self._roiItems()):
            self._sceneChangeTimer.start()

    def _observeVolumeNames(self, nodes: list) -> None:
        for node in self._observedVolumes:
            self.removeObserver(node, vtk.vtkCommand.ModifiedEvent, self.onVolumeModified)
        self._observedVolumes = list(nodes)
        for node in self._observedVolumes:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.onVolumeModified)

    def _roiItems(self) -> list:
        listWidget = self.ui.roiVolumesListWidget
        return [listWidget.item(row) for row in range(listWidget.count)]

    def _updateROIVolumeList(self) -> None:
        """List every other scalar volume, checked when it limits the ROI (pre-checked: same study)."""
        if not hasattr(self, "ui") or self._job is not None:
            return
        inputs = [node for node in self.inputVolumes() if node is not None]
        inputIDs = {node.GetID() for node in inputs}
        candidates = [
            node
            for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if not node.IsA("vtkMRMLLabelMapVolumeNode") and node.GetID() not in inputIDs
        ]
        raw = self._parameterNode.parameterNode if self._parameterNode else None
        if raw is not None and raw.GetAttribute("ROIVolumesEdited"):
            # The user's choice wins over the suggestion once they have edited the list.
            checked = {
                raw.GetNthNodeReferenceID(ROI_VOLUME_REFERENCE_ROLE, i)
                for i in range(raw.GetNumberOfNodeReferences(ROI_VOLUME_REFERENCE_ROLE))
            }
        elif inputs and self._card is not None:
            from MedSegUNetLib.slicer.nodes import suggestROIVolumes

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
        if self.shell.parent.isEntered:
            self._observeVolumeNames(candidates)

    def onROIVolumesChanged(self, item=None) -> None:
        if not self._parameterNode:
            return
        raw = self._parameterNode.parameterNode
        raw.RemoveNodeReferenceIDs(ROI_VOLUME_REFERENCE_ROLE)
        for node in self.roiVolumes():
            raw.AddNodeReferenceID(ROI_VOLUME_REFERENCE_ROLE, node.GetID())
        raw.SetAttribute("ROIVolumesEdited", "1")

    def roiVolumes(self) -> list:
        checkedIDs = [item.data(qt.Qt.UserRole) for item in self._roiItems() if item.checkState() == qt.Qt.Checked]
        return [node for node in map(slicer.mrmlScene.GetNodeByID, checkedIDs) if node is not None]

    # -- device -------------------------------------------------------------------------------

    def _populateDevices(self, available: Optional[dict] = None) -> None:
        """Fill the device list: ``available`` as the worker reported it; before it has, every
        device is offered (the run says in one line if the one chosen cannot be used)."""
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        current = combo.currentData
        combo.clear()
        for name in settings.DEVICES:
            combo.addItem(name, name)
            usable = True if available is None else available.get(name, False)
            item = combo.model().item(combo.count - 1)
            item.setEnabled(usable)
            if available is None and name in ("cuda", "mps"):
                item.setToolTip(_("Checked when the model runs"))
            elif not usable:
                item.setToolTip(_("Not available with this PyTorch installation"))
        combo.setCurrentIndex(max(combo.findData(current), 0) if current else 0)
        combo.blockSignals(wasBlocked)

    def _askDevices(self) -> None:
        """Ask the running worker which GPUs PyTorch sees, without waiting (the poll timer takes the answer)."""
        from MedSegUNetLib.engine.errors import MedSegUNetError
        from MedSegUNetLib.slicer.worker import PendingRequest

        worker = self.logic.segmentationLogic.worker
        if worker is None or not worker.alive or self._deviceQuery is not None or self._devicesAskedOf == (worker, worker.starts):
            return
        self._devicesAskedOf = (worker, worker.starts)  # once per worker process
        try:
            self._deviceQuery = PendingRequest(worker, {"command": "devices"})
        except MedSegUNetError:  # the list stays as it is (no query is pending)
            return
        self._pollTimer.start()

    def _pollDevices(self) -> None:
        query = self._deviceQuery
        if query is None or not query.poll():
            return
        self._deviceQuery = None
        if query.answer is not None:
            from MedSegUNetLib.slicer.dependencies import devicesFromAnswer

            self._populateDevices(devicesFromAnswer(query.answer))

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    # -- apply / cancel -----------------------------------------------------------------------

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._job is not None or self._installing:
            return
        ready = self._card is not None and bool(self._inputSelectors) and all(self.inputVolumes())
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.text = _("Apply")
        self.ui.applyButton.toolTip = _("Segment the input volumes") if ready else _("Select a model and all its input volumes")

    def _ensureDependencies(self) -> bool:
        """Install what is missing (asking first) with Apply and the catalog disabled meanwhile: pip's
        output is shown through Slicer's event loop, where a second click must find nothing to start."""
        if not self.logic.missingModules():
            return True
        self._installing = True
        self.ui.applyButton.enabled = False
        self.ui.catalogComboBox.enabled = False
        self.ui.statusLabel.text = _("Installing Python packages...")
        try:
            if not self.logic.ensureDependencies():
                self.ui.statusLabel.text = _("Dependencies are needed to segment.")
                return False
        finally:
            self._installing = False
            self.ui.catalogComboBox.enabled = True
            self._checkCanApply()
        self.ui.statusLabel.text = ""
        self._loadCard(self._parameterNode.modelPath if self._parameterNode else "", force=True)  # it may need them
        return True

    def onApplyButton(self) -> None:
        if self._installing:
            return
        if self._job is not None:
            self._cancelEvent.set()
            self.ui.applyButton.enabled = False
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            if not self._ensureDependencies():
                return
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
                contextMM=parameters.contextMM,
            )
            job.start()
            self.ui.modelPathLineEdit.addCurrentPathToHistory()
            self._startRun(job)

    def _startRun(self, job) -> None:
        """Poll ``job`` (a segmentation job or a catalog pull) from the timer: the network runs in the
        logic's worker process; a thread in Slicer's process would be starved of the GIL."""
        self._job = job
        self._startTime = time.perf_counter()
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
        """The poll timer: takes what the worker said so far (never blocks), updates the widgets."""
        self._pollDevices()
        job = self._job
        if job is None:
            if self._deviceQuery is None:
                self._pollTimer.stop()
            return
        done = job.poll()
        fraction, message = self._progress
        self.ui.progressBar.value = int(fraction * 1000)
        self.ui.statusLabel.text = f"{message} ({time.perf_counter() - self._startTime:.0f} s)"
        if not done:
            return
        self._job = None
        self._setRunning(False)
        self._askDevices()  # the worker is warm now: which GPUs does its PyTorch see?
        if self._deviceQuery is None:
            self._pollTimer.stop()
        from MedSegUNetLib.engine.errors import ProcessingCancelled
        from MedSegUNetLib.slicer.modulelogic import CatalogPull, ModelImport

        if isinstance(job.error, ProcessingCancelled):
            self.ui.statusLabel.text = _("Cancelled; nothing was changed.")
            self._checkCanApply()
            return
        self.ui.statusLabel.text = _("Failed.")
        try:
            if isinstance(job, (CatalogPull, ModelImport)):
                self._finishPull(job)
            else:
                self._finishSegmentation(job)
        finally:
            self._checkCanApply()

    def _finishPull(self, pull) -> None:
        with slicer.util.tryWithErrorDisplay(_("The model could not be downloaded or imported."), waitCursor=True):
            if pull.error is not None:
                raise pull.error
            self.ui.modelPathLineEdit.currentPath = pull.path
            self.ui.statusLabel.text = _("Model {name} is in {path}").format(name=pull.name, path=pull.path)
            self._populateCatalog()  # it is on this computer now

    def _finishSegmentation(self, job) -> None:
        from MedSegUNetLib.engine.errors import ProcessingCancelled

        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            try:
                result = self.logic.finish(job)
            except ProcessingCancelled:
                self.ui.statusLabel.text = _("Cancelled; nothing was changed.")
            else:
                self._showResult(result)

    def _showResult(self, result) -> None:
        from MedSegUNetLib.slicer.job import timingsText

        parameters = self._parameterNode
        parameters.outputSegmentation = result.segmentationNode
        parameters.outputTable = result.statisticsTableNode
        parameters.outputROI = result.roiNode
        if result.overlapTableNode is not None:
            parameters.outputOverlapTable = result.overlapTableNode
        if result.segmentationNode.GetDisplayNode() is not None:
            result.segmentationNode.GetDisplayNode().SetVisibility(True)
        reference = self.inputVolumes()[0]
        # The views are fitted only when they change volume: a re-run keeps the user's zoom and pan.
        shown = {node.GetBackgroundVolumeID() for node in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode")}
        slicer.util.setSliceViewerLayers(background=reference, fit=shown != {reference.GetID()})
        if parameters.show3D:  # closed surfaces take time: only when asked
            result.segmentationNode.CreateClosedSurfaceRepresentation()
        if not self._tableShown:  # the layout changes on the first result only; the button shows it again
            self._tableShown = True
            self.onShowTable()
        text = _("Done on {device}: {timings}").format(device=result.device, timings=timingsText(result.timings))
        for warning in result.warnings:
            logging.warning(warning)
        if result.warnings:
            text += "\n" + "\n".join(_("Warning: {text}").format(text=warning) for warning in result.warnings)
        self.ui.statusLabel.text = text

    def onShowTable(self) -> None:
        table = self._parameterNode.outputTable if self._parameterNode else None
        if table is None:
            return
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    def onExportDicomSeg(self) -> None:
        parameters = self._parameterNode
        segmentationNode = parameters.outputSegmentation if parameters else None
        if segmentationNode is None:
            slicer.util.warningDisplay(_("Segment first: the output segmentation is exported, against the volume it was made on."))
            return
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), _("Export DICOM SEG"), f"{segmentationNode.GetName()}.dcm", _("DICOM Segmentation (*.dcm)")
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("DICOM SEG export failed."), waitCursor=True):
            # highdicom is installed on the first export (asking first); the volume the segmentation records is its reference.
            self.logic.exportDicomSegmentation(segmentationNode, None, path)
            self.ui.statusLabel.text = _("DICOM SEG written: {path}").format(path=path)


__all__ = ["MedSegUNetWidgetController"]
