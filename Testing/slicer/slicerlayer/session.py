"""Slicer's Python as the application sets it up, at one release, with the module loaded as Slicer loads it.

Real: the MRML scene and logics (slicer-core: ``vtkMRMLScene``, ``vtkSlicerApplicationLogic``, three
``vtkMRMLSliceLogic``\\ s and the layout node), the release's own ``slicer.util``, ``slicer.i18n``,
``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper`` (:mod:`sources`), Qt itself
(PyQt5, offscreen) with PythonQt's conventions (:mod:`pythonqt`), the module's files and the worker
through the real ``PythonSlicer`` launcher. Standing in: the CTK, qMRML and application classes,
made from their headers (:mod:`standins`).

:meth:`SlicerSession.loadModule` does what ``qSlicerScriptedLoadableModule`` does with a module
file: imports it under its name and constructs the module class with a module object as parent;
:meth:`SlicerSession.createWidget` what ``qSlicerScriptedLoadableModuleWidget`` does: constructs the
``<Module>Widget`` class with itself as parent, stores it in ``slicer.modules`` and calls ``setup()``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

from PyQt5 import QtCore

from . import pythonqt, standins, uiloader

MODULE_DIR = Path(__file__).resolve().parents[3] / "MedSegUNet"
# What the session puts into ``slicer`` and ``sys.modules`` (and takes out again on exit).
SLICER_NAMES = ("app", "mrmlScene", "modules", "moduleNames", "selfTests", "util", "i18n", "ScriptedLoadableModule", "parameterNodeWrapper")
FRESH_MODULES = ("MedSegUNet", "MedSegUNetLib.slicer.widget")
_MISSING = object()


def _loadFile(name: str, path: Path, package: bool = False):
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=[str(path.parent)] if package else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class SlicerSession:
    """One Slicer application, one release, one scene.

    Args:
        release: ``5.6.2``, ``5.8.1`` or ``main``.
        slicerPython: the release's ``slicer`` Python folder (:func:`sources.slicerPython`).
        workFolder: settings, cache and temporary files of this application.
        launcher: the ``PythonSlicer`` to put on PATH, as Slicer's bin folder is.
    """

    def __init__(self, release: str, slicerPython: Path, workFolder: Path, launcher: str | None = None) -> None:
        self.release = release
        self.slicerPython = Path(slicerPython)
        self.workFolder = Path(workFolder)
        self.launcher = launcher
        self.cachePath = self.workFolder / "cache"
        self.modules: dict[str, object] = {}
        self.moduleWidget = None

    # -- the application ---------------------------------------------------------------------------

    def __enter__(self) -> "SlicerSession":
        import slicer

        self.application = pythonqt.install()
        pythonqt.slotErrors.clear()
        self.cachePath.mkdir(parents=True, exist_ok=True)
        QtCore.QCoreApplication.setOrganizationName("NA-MIC")
        QtCore.QCoreApplication.setApplicationName("Slicer")
        QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
        QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, str(self.workFolder / "settings"))
        self.classes = standins.standInClasses(self.release)
        uiloader.CUSTOM_CLASSES.clear()
        uiloader.CUSTOM_CLASSES.update({name: cls for name, cls in self.classes.items() if issubclass(cls, pythonqt.QtWidgets.QWidget)})

        self._savedModules = {
            name: sys.modules.get(name, _MISSING)
            for name in [
                "qt",
                "ctk",
                *[f"slicer.{n}" for n in SLICER_NAMES],
                *FRESH_MODULES,
                *[n for n in sys.modules if n.startswith("slicer.parameterNodeWrapper")],
            ]
        }
        self._savedAttributes = {name: slicer.__dict__.get(name, _MISSING) for name in [*SLICER_NAMES, *self.classes]}
        self._savedPath = os.environ.get("PATH", "")
        for name in FRESH_MODULES:
            sys.modules.pop(name, None)

        sys.modules["qt"] = pythonqt.qtModule()
        ctk = types.ModuleType("ctk")
        for name, cls in self.classes.items():
            if name.startswith("ctk"):
                setattr(ctk, name, cls)
            else:
                setattr(slicer, name, cls)
        sys.modules["ctk"] = ctk
        if self.launcher:
            os.environ["PATH"] = os.pathsep.join([str(Path(self.launcher).parent), self._savedPath])

        self._makeApplication(slicer)
        slicer.i18n = _loadFile("slicer.i18n", self.slicerPython / "i18n.py")
        slicer.util = _loadFile("slicer.util", self.slicerPython / "util.py")
        slicer.parameterNodeWrapper = _loadFile(
            "slicer.parameterNodeWrapper", self.slicerPython / "parameterNodeWrapper" / "__init__.py", package=True
        )
        slicer.ScriptedLoadableModule = _loadFile("slicer.ScriptedLoadableModule", self.slicerPython / "ScriptedLoadableModule.py")
        return self

    def _makeApplication(self, slicer) -> None:
        """``slicer.app`` and ``slicer.mrmlScene`` as SlicerApp makes them: the scene with its
        application logic, selection, interaction and layout nodes and three slice views."""
        self.scene = slicer.vtkMRMLScene()
        self.applicationLogic = slicer.vtkSlicerApplicationLogic()
        self.applicationLogic.SetMRMLScene(self.scene)
        self.layoutNode = slicer.vtkMRMLLayoutNode()
        self.layoutNode.SetSingletonTag("vtkMRMLLayoutNode")
        self.scene.AddNode(self.layoutNode)
        self.sliceLogics = {}
        for name in ("Red", "Yellow", "Green"):
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLScene(self.scene)
            logic.SetMRMLApplicationLogic(self.applicationLogic)
            logic.AddSliceNode(name)
            self.sliceLogics[name] = logic
        self.commandOptions = self.classes["qSlicerCommandOptions"]()
        self.moduleManager = self.classes["qSlicerModuleManager"]()
        self.moduleManager._session = self
        self.layoutManager = self.classes["qSlicerLayoutManager"]()
        self.layoutManager._session = self
        self.app = self.classes["qSlicerApplication"]()
        self.app._session = self
        slicer.app = self.app
        slicer.mrmlScene = self.scene
        slicer.modules = types.SimpleNamespace()
        slicer.moduleNames = types.SimpleNamespace()
        slicer.selfTests = {}

    def __exit__(self, *exc) -> None:
        import slicer

        try:
            if self.moduleWidget is not None:
                self.unloadModule()
        finally:
            for name, value in self._savedModules.items():
                if value is _MISSING:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = value
            for name in list(sys.modules):
                if name.startswith("slicer.parameterNodeWrapper") and name not in self._savedModules:
                    del sys.modules[name]
            for name, value in self._savedAttributes.items():
                if value is _MISSING:
                    slicer.__dict__.pop(name, None)
                else:
                    setattr(slicer, name, value)
            os.environ["PATH"] = self._savedPath
            self.scene.Clear(True)

    # -- the module, as Slicer loads it ------------------------------------------------------------

    def loadModule(self, path: Path = MODULE_DIR / "MedSegUNet.py"):
        """Import the module file under its name and construct its module class (its parent: a
        ``qSlicerScriptedLoadableModule``); returns the Python module object."""
        import slicer

        path = Path(path)
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        self.moduleFile = _loadFile(path.stem, path)
        parent = self.classes["qSlicerScriptedLoadableModule"]()
        parent._session = self
        parent._standinValues.update(path=str(path), name=path.stem)  # set by the C++ factory: read-only to Python
        instance = getattr(self.moduleFile, path.stem)(parent)
        self.modules[path.stem] = parent
        setattr(slicer.modules, path.stem.lower(), parent)
        setattr(slicer.modules, f"{path.stem}Instance", instance)
        setattr(slicer.moduleNames, path.stem, path.stem)
        self.moduleParent, self.moduleInstance = parent, instance
        return self.moduleFile

    def createWidget(self):
        """The module's widget, made and set up as ``qSlicerScriptedLoadableModuleWidget`` does."""
        representation = self.classes["qSlicerScriptedLoadableModuleWidget"]()
        representation.setLayout(pythonqt.QtWidgets.QVBoxLayout())
        representation._session = self
        representation._module = self.moduleParent
        self.moduleWidget = representation
        return self.createWidgetFor(representation)

    def createWidgetFor(self, representation):
        import slicer

        name = self.moduleParent.name
        widget = getattr(sys.modules[name], f"{name}Widget")(representation)
        representation._python = widget
        setattr(slicer.modules, f"{name}Widget", widget)
        widget.setup()
        return widget

    @property
    def widget(self):
        return self.moduleWidget._python

    def enter(self) -> None:
        self.moduleWidget.enter()

    def exit(self) -> None:
        self.moduleWidget.exit()

    def unloadModule(self) -> None:
        """What Slicer does when the module is unloaded (application exit): ``moduleAboutToBeUnloaded``."""
        if self.moduleWidget.isEntered:
            self.exit()
        self.moduleManager.moduleAboutToBeUnloaded.emit(self.moduleParent.name)
        self.moduleWidget = None

    def processEvents(self, until=None, timeout: float = 60.0) -> None:
        """Run Qt's event loop (timers, queued signals) until ``until()`` is true or ``timeout`` passes."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            self.application.processEvents(QtCore.QEventLoop.AllEvents, 50)
            if until is None or until():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the event loop waited {timeout} s for a condition that never held")
            time.sleep(0.01)
