"""MedSegUNet: U-Net segmentation of MRI in 3D Slicer, limited to the region all series cover.

This file is the thin Qt/Slicer layer. The MRML work is in ``MedSegUNetLib/slicer/logic.py``
(tested with slicer-core), the processing in the ``MedSegUNetLib`` engine (shared with the
``medsegunet`` command), and the self-test scenario in ``MedSegUNetLib/slicer/selftest.py``.
"""

import os
import sys
import unittest
from typing import Annotated, Optional, Union

import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLMarkupsROINode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

# Light: no torch, MONAI or Qt (the Lib's engine modules are imported lazily by the logic).
from MedSegUNetLib.engine.settings import SAMPLE_DATA_FILES, SAMPLE_DATA_URL
from MedSegUNetLib.slicer.modulelogic import ModuleLogic

README_URL = "https://github.com/medsegunet/SlicerMedSegUNet#readme"
# Reloaded by the developer's "Reload" button, in dependency order.
LIB_MODULES = (
    "engine.settings",
    "engine.errors",
    "engine.terminology",
    "engine.nnunet",
    "engine.cardview",
    "engine.request",
    "engine.paths",
    "engine.archives",
    "engine.graphsafety",
    "engine.filecheck",
    "engine.staging",
    "engine.volumes",
    "engine.dicomseg",
    "engine.geometry",
    "engine.exportedmodel",
    "engine.schemacheck",
    "engine.modelcard",
    "engine.compiled",
    "engine.inference",
    "engine.preprocessing",
    "engine.postprocessing",
    "engine.localizer",
    "engine.pipeline",
    "engine.preview",
    "engine.outputs",
    "engine.statistics",
    "engine.writer",
    "models.downloads",
    "models.networks",
    "models.verification",
    "models.onnximport",
    "models.torchscriptimport",
    "models.importing",
    "models.nnunetfolder",
    "models.nnunetimport",
    "models.trainconfig",
    "models.traindata",
    "models.trainreports",
    "models.training",
    "models.converting",
    "models.sources",
    "models.catalog",
    "models.phantoms",
    "cohorts.seriesmatch",
    "slicer.dependencies",
    "slicer.nodes",
    "slicer.dicomexport",
    "slicer.jobfiles",
    "slicer.job",
    "slicer.results",
    "slicer.worker",
    "slicer.logic",
    "slicer.selftest",
    "slicer.modulelogic",
    "slicer.widget",
)


#
# MedSegUNet
#


class MedSegUNet(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSegUNet")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        # The output nodes' modules (and the subject hierarchy the outputs are placed in) must be loaded first.
        self.parent.dependencies = ["Markups", "Segmentations", "SubjectHierarchy", "Tables"]
        self.parent.contributors = ["MedSegUNet developers"]
        self.parent.helpText = _(
            "Segments MRI volumes with MONAI U-Nets (TorchScript or torch.export files) described by a model card, inside the "
            "region covered by all series of the study (for example axial, sagittal and coronal T2). "
            'See the <a href="{url}">README</a> for models, console batch use and the command line tool.'
        ).format(url=README_URL)
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
        uris=[SAMPLE_DATA_URL + fileName for fileName, _ in SAMPLE_DATA_FILES.values()],
        fileNames=[fileName for fileName, _ in SAMPLE_DATA_FILES.values()],
        nodeNames=[fileName.split(".")[0] for fileName, _ in SAMPLE_DATA_FILES.values()],
        checksums=[f"SHA256:{checksum}" for _, checksum in SAMPLE_DATA_FILES.values()],
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
    # The card schema's range (roi.margin_mm, roi.context_mm): any card's value fits the panel.
    marginMM: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0
    contextMM: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0
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


class MedSegUNetWidget(ScriptedLoadableModuleWidget):
    """The GUI shell: its code is ``MedSegUNetLib/slicer/widget.py`` (Qt is imported there only)."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.controller = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from MedSegUNetLib.slicer.widget import MedSegUNetWidgetController

        self.logic = MedSegUNetLogic()
        self.controller = MedSegUNetWidgetController(self, self.logic)
        self.controller.setup()

    def cleanup(self) -> None:
        if self.controller is not None:
            self.controller.cleanup()
        if self.logic is not None:  # no worker process outlives the module
            self.logic.close()

    def enter(self) -> None:
        if self.controller is not None:
            self.controller.enter()

    def exit(self) -> None:
        if self.controller is not None:
            self.controller.exit()

    def onReload(self) -> None:
        """End the worker process, reload the Lib modules (dependencies first), then the module itself."""
        import importlib

        if self.logic is not None:
            self.logic.close()

        for name in LIB_MODULES:
            module = sys.modules.get(f"MedSegUNetLib.{name}")
            if module is not None:
                importlib.reload(module)
        ScriptedLoadableModuleWidget.onReload(self)


#
# MedSegUNetLogic
#


class MedSegUNetLogic(ModuleLogic, ScriptedLoadableModuleLogic):
    """Slicer-side logic: ``MedSegUNetLib.slicer.modulelogic.ModuleLogic`` on ``slicer.mrmlScene``, its
    worker process started with Slicer's ``PythonSlicer``.

    ``ModuleLogic`` comes first: ``ScriptedLoadableModuleLogic.__init__`` calls ``super().__init__()``
    with no arguments, which must reach ``object``, not ``ModuleLogic.__init__`` (which needs the scene).

    Console use::

        logic = slicer.util.getModuleLogic("MedSegUNet")
        result = logic.process([t2tra], "/path/model.pt", roiVolumes=[t2sag, t2cor])
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        ModuleLogic.__init__(
            self,
            slicer.mrmlScene,
            requirementsPath=os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt"),
            cachePath=slicer.app.cachePath,
            interactive=not slicer.app.commandOptions().noMainWindow,
            testing=slicer.app.testingEnabled(),
        )

    def getParameterNode(self):
        return MedSegUNetParameterNode(super().getParameterNode())

    def exportDicomSegmentation(self, segmentationNode, referenceVolumeNode, path: str) -> str:
        """See ``SegmentationLogic.exportDicomSegmentation`` (``referenceVolumeNode`` None: the one the
        segmentation was made on); the files come from Slicer's DICOM database."""
        database = getattr(slicer, "dicomDatabase", None)
        fileForInstance = database.fileForInstance if database is not None and database.isOpen else None
        return ModuleLogic.exportDicomSegmentation(self, segmentationNode, referenceVolumeNode, path, fileForInstance=fileForInstance)


#
# MedSegUNetTest
#


class MedSegUNetTest(ScriptedLoadableModuleTest):
    """Self-test with data it makes itself (``slicer.selfTests["MedSegUNet"]()``): the user's path,
    ``MedSegUNetLogic().process`` with the network in the PythonSlicer worker process.

    The scenario lives in ``MedSegUNetLib/slicer/selftest.py`` so pytest runs the very same code against
    slicer-core, its worker started through the real PythonSlicer launcher, on every CI run.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        try:
            self.test_KnownAnswerPhantom()
        except unittest.SkipTest as reason:  # the Reload and Test button calls runTest directly
            self.delayDisplay(str(reason))

    def test_KnownAnswerPhantom(self):
        import tempfile

        logic = MedSegUNetLogic()
        missing = logic.missingModules()
        if missing and slicer.app.testingEnabled():  # testing mode never installs anything
            self.skipTest(
                _("MedSegUNet self-test skipped: {names} not installed (install them with the module's Apply first).").format(
                    names=", ".join(missing)
                )
            )
        self.assertTrue(logic.ensureDependencies(askConfirmation=True), "dependencies are missing")
        try:
            with tempfile.TemporaryDirectory() as directory:
                figures = logic.runSelfTest(directory, log=self.delayDisplay)
        finally:
            logic.close()
        self.assertEqual(figures["voxelCounts"], {"outer": 1633, "inner": 178})
        self.delayDisplay(_("Test passed in {seconds:.1f} s").format(seconds=figures["seconds"]))
