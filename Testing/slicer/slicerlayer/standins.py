"""Stand-ins for the CTK, qMRML and Slicer application classes, made from their real headers.

``Testing/data/slicer-gui-api.json`` (``Testing/slicer/upstream/extract_api.py``) records, per Slicer
release, what PythonQt exposes of each class: its base, ``Q_PROPERTY``\\ s, signals, public slots,
``Q_INVOKABLE`` methods and Slicer's PythonQt decorators. :func:`standInClasses` makes a PyQt5 class
of each with exactly those names: properties (real Qt properties, so PythonQt's attribute rules
apply), signals (connectable by their C++ signatures), and methods. What a test needs them to do
is written below as a behaviour mixin, and only for names the header declares
(:func:`undeclaredBehaviour` checks it); a declared method without behaviour raises
``NotImplementedError`` naming itself, and a name the header lacks does not exist.
"""

from __future__ import annotations

import json
from pathlib import Path

import vtk
from PyQt5 import QtCore, QtGui, QtWidgets

from .pythonqt import markCpp

API_PATH = Path(__file__).resolve().parents[2] / "data" / "slicer-gui-api.json"
QT_TYPES = {
    "bool": bool,
    "int": int,
    "double": float,
    "QString": str,
    "QStringList": "QStringList",
    "QIcon": QtGui.QIcon,
    "QVariant": "QVariant",
    "uint": int,
    "unsigned int": int,
}
DEFAULTS = {bool: False, int: 0, float: 0.0, str: "", "QStringList": []}


def loadAPI(version: str) -> dict:
    """The classes of one release (``5.6.2``, ``5.8.1`` or ``main``)."""
    return json.loads(API_PATH.read_text())["releases"][version]["classes"]


def _signalType(cppType: str):
    return {"bool": bool, "int": int, "double": float, "QString": str}.get(cppType, object)


def _names(signatures) -> set[str]:
    return {signature.split("(")[0] for signature in signatures}


# -- behaviour: only what the module and Slicer's Python layer use -----------------------------------


class SlicerWidgetBehaviour:
    """qSlicerWidget: holds a scene, announces it (its ``mrmlScene()`` is not exposed to Python)."""

    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)


class MRMLWidgetBehaviour(SlicerWidgetBehaviour):
    """qMRMLWidget: also gives its scene back (``Q_INVOKABLE mrmlScene()``)."""

    def mrmlScene(self):
        return getattr(self, "_scene", None)


class NodeComboBoxBehaviour:
    """qMRMLNodeComboBox: the current node among the scene's nodes of ``nodeTypes``; follows removals."""

    DEFAULTS = {
        "noneEnabled": False,
        "addEnabled": True,
        "removeEnabled": True,
        "renameEnabled": False,
        "editEnabled": False,
        "showChildNodeTypes": True,
        "selectNodeUponCreation": True,
        "noneDisplay": "None",
    }

    def setMRMLScene(self, scene) -> None:
        old = getattr(self, "_scene", None)
        if old is not None:
            old.RemoveObserver(self._observer)
        self._scene = scene
        self._observer = scene.AddObserver(scene.NodeRemovedEvent, self._onNodeRemoved) if scene is not None else None
        if self.currentNode() is None and not self.noneEnabled and self.nodeCount():
            self.setCurrentNode(self.nodeFromIndex(0))

    def mrmlScene(self):
        return getattr(self, "_scene", None)

    def _matches(self, node) -> bool:
        types = list(self.nodeTypes)
        if node is None or not any(node.IsA(t) for t in types) or any(node.IsA(t) for t in self.hideChildNodeTypes):
            return False
        if not self.showChildNodeTypes and node.GetClassName() not in types:
            return False
        return self.showHidden or not node.GetHideFromEditors()

    def _nodes(self) -> list:
        scene = self.mrmlScene()
        if scene is None:
            return []
        return [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()) if self._matches(scene.GetNthNode(i))]

    def nodeCount(self) -> int:
        return len(self._nodes())

    def nodeFromIndex(self, index: int):
        nodes = self._nodes()
        return nodes[index] if 0 <= index < len(nodes) else None

    def currentNode(self):
        node = getattr(self, "_current", None)
        return node if node is not None and node in self._nodes() else None

    def currentNodeId(self) -> str:
        return self._get_currentNodeID()

    def _get_currentNodeID(self) -> str:
        node = self.currentNode()
        return node.GetID() if node is not None else ""

    def _set_currentNodeID(self, nodeID: str) -> None:
        self.setCurrentNodeID(nodeID)

    def setCurrentNodeID(self, nodeID: str) -> None:
        scene = self.mrmlScene()
        self.setCurrentNode(scene.GetNodeByID(nodeID) if scene is not None and nodeID else None)

    def setCurrentNode(self, node) -> None:
        if isinstance(node, str):
            return self.setCurrentNodeID(node)
        node = node if self._matches(node) and node in self._nodes() else None
        if node is self.currentNode() and (node is not None or getattr(self, "_current", None) is None):
            return
        self._current = node
        self.currentNodeChanged[object].emit(node)
        self.currentNodeChanged[bool].emit(node is not None)
        self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def _onNodeRemoved(self, caller, event) -> None:
        current = getattr(self, "_current", None)
        if current is not None and not caller.IsNodePresent(current):
            self._current = None
            self.currentNodeChanged[object].emit(None)
            self.currentNodeChanged[bool].emit(False)
            self.currentNodeIDChanged.emit("")


class PathLineEditBehaviour:
    """ctkPathLineEdit: the current path, its history kept in the settings under ``settingKey``."""

    def _get_currentPath(self) -> str:
        return getattr(self, "_path", "")

    def _set_currentPath(self, path: str) -> None:
        self.setCurrentPath(path)

    def setCurrentPath(self, path: str) -> None:
        if path == getattr(self, "_path", ""):
            return
        self._path = path
        self.currentPathChanged.emit(path)

    def _set_settingKey(self, key: str) -> None:
        self._standinValues["settingKey"] = key
        self.retrieveHistory()

    def retrieveHistory(self) -> None:
        key = self._standinValues.get("settingKey")
        if key:
            history = QtCore.QSettings().value(key, []) or []
            if isinstance(history, str):
                history = [history]
            if history:
                self.setCurrentPath(history[0])

    def addCurrentPathToHistory(self) -> None:
        key = self._standinValues.get("settingKey")
        if key and self._get_currentPath():
            history = QtCore.QSettings().value(key, []) or []
            history = [
                self._get_currentPath(),
                *[p for p in ([history] if isinstance(history, str) else history) if p != self._get_currentPath()],
            ]
            QtCore.QSettings().setValue(key, history[:5])


class CollapsibleButtonBehaviour:
    """ctkCollapsibleButton: a button that paints nothing here (QAbstractButton is abstract)."""

    def paintEvent(self, event) -> None:
        pass


class ModuleWidgetBehaviour:
    """qSlicerScriptedLoadableModuleWidget: holds the Python widget, enters and exits it."""

    def _get_isEntered(self) -> bool:
        return getattr(self, "_entered", False)

    def _get_moduleName(self) -> str:
        return self._module.name

    def self(self):
        return self._python

    def module(self):
        return self._module

    def enter(self) -> None:
        self._entered = True
        self._python.enter()

    def exit(self) -> None:
        self._entered = False  # Superclass::exit() first, then the Python exit(), as the C++ widget does
        self._python.exit()

    def reload(self) -> None:
        self._session.createWidgetFor(self)


class ModuleBehaviour:
    """qSlicerScriptedLoadableModule: its descriptive properties as Python sets them; its widget."""

    def widgetRepresentation(self):
        return self._session.moduleWidget

    def createNewWidgetRepresentation(self):
        return self._session.moduleWidget

    def logic(self):
        return None  # a scripted module has no C++ logic: slicer.util.getModuleLogic asks the widget


class ModuleManagerBehaviour:
    def module(self, name: str):
        return self._session.modules.get(name)

    def modulesNames(self) -> list:
        return list(self._session.modules)


class CommandOptionsBehaviour:
    DEFAULTS = {"testingEnabled": True}


class LayoutManagerBehaviour:
    """qSlicerLayoutManager on real MRML: the layout node's arrangement and the three slice logics."""

    def _get_layout(self) -> int:
        return self._session.layoutNode.GetViewArrangement()

    def _set_layout(self, layout: int) -> None:
        self.setLayout(layout)

    def setLayout(self, layout: int) -> None:
        self._session.layoutNode.SetViewArrangement(layout)

    def mrmlSliceLogics(self):
        collection = vtk.vtkCollection()
        for logic in self._session.sliceLogics.values():
            collection.AddItem(logic)
        return collection

    def sliceViewNames(self) -> list:
        return list(self._session.sliceLogics)

    def mrmlScene(self):
        return self._session.scene


class ApplicationBehaviour:
    """qSlicerApplication: the settings, options, managers and logic the module asks for; the rest of
    QApplication (``processEvents``, cursors, ``translate``) is the real one."""

    def _get_cachePath(self) -> str:
        return str(self._session.cachePath)

    def commandOptions(self):
        return self._session.commandOptions

    def testingEnabled(self) -> bool:
        return bool(self._session.commandOptions.testingEnabled)

    def processEvents(self) -> None:
        QtWidgets.QApplication.processEvents()

    def moduleManager(self):
        return self._session.moduleManager

    def layoutManager(self):
        return self._session.layoutManager

    def applicationLogic(self):
        return self._session.applicationLogic

    def mrmlScene(self):
        return self._session.scene

    def userSettings(self):
        return QtCore.QSettings()

    def settings(self):
        return QtCore.QSettings()

    def __getattr__(self, name: str):
        # QApplication's own members (applicationName, setOverrideCursor, translate, topLevelWidgets, ...).
        if name in QT_APPLICATION_MEMBERS:
            return getattr(QtWidgets.QApplication.instance(), name)
        raise AttributeError(f"qSlicerApplication has no attribute named '{name}'")


QT_APPLICATION_MEMBERS = {
    "applicationName",
    "organizationName",
    "setOverrideCursor",
    "restoreOverrideCursor",
    "translate",
    "topLevelWidgets",
    "keyboardModifiers",
    "clipboard",
    "activeWindow",
    "style",
    "font",
    "palette",
    "instance",
}

BEHAVIOUR = {
    "qMRMLWidget": MRMLWidgetBehaviour,
    "qSlicerWidget": SlicerWidgetBehaviour,
    "qMRMLNodeComboBox": NodeComboBoxBehaviour,
    "ctkPathLineEdit": PathLineEditBehaviour,
    "ctkCollapsibleButton": CollapsibleButtonBehaviour,
    "qSlicerScriptedLoadableModuleWidget": ModuleWidgetBehaviour,
    "qSlicerScriptedLoadableModule": ModuleBehaviour,
    "qSlicerModuleManager": ModuleManagerBehaviour,
    "qSlicerCoreCommandOptions": CommandOptionsBehaviour,
    "qSlicerLayoutManager": LayoutManagerBehaviour,
    "qSlicerApplication": ApplicationBehaviour,
}
# Methods the behaviour classes may define beyond the header: Qt virtual overrides and helpers.
PRIVATE_OK = {"paintEvent", "DEFAULTS"}


def undeclaredBehaviour(classes: dict) -> list[str]:
    """``Class.name`` of every public behaviour the header of ``Class`` (and its bases) does not declare."""
    problems = []
    for className, behaviour in BEHAVIOUR.items():
        declared = set()
        name = className
        while name in classes:
            info = classes[name]
            declared |= set(info["properties"]) | _names(info["slots"]) | _names(info["invokables"]) | _names(info.get("decorators", []))
            name = info["base"]
        for cls in behaviour.__mro__[:-1]:
            for attribute in vars(cls):
                if attribute.startswith("_") or attribute in PRIVATE_OK or attribute in declared:
                    continue
                problems.append(f"{className}.{attribute}")
    return sorted(problems)


def _qtBase(name: str) -> type:
    for module in (QtWidgets, QtCore, QtGui):
        cls = getattr(module, name, None)
        if isinstance(cls, type):
            return cls
    return QtCore.QObject  # ctkLayoutFactory, ctkCommandLineParser: QObjects of CTK's that nothing here reaches


def _property(name: str, cppType: str, writable: bool, enums: dict):
    pythonType = QT_TYPES.get(cppType)
    if pythonType is None:
        pythonType = int if (cppType in enums or cppType.endswith(("s", "Policy", "Alignment")) or "::" in cppType) else "QVariant"
    default = DEFAULTS.get(pythonType)

    def getter(self):
        custom = getattr(type(self), f"_get_{name}", None)
        if custom is not None:
            return custom(self)
        return self._standinValues.get(name, default)

    def setter(self, value):
        custom = getattr(type(self), f"_set_{name}", None)
        if custom is not None:
            custom(self, value)
        else:
            self._standinValues[name] = value

    return QtCore.pyqtProperty(pythonType, getter, setter if writable else None)


def _signals(signatures: list[str]) -> tuple[dict, dict]:
    """pyqtSignals by name (overloads together) and C++ signature → (name, overload key)."""
    byName: dict[str, list] = {}
    for signature in signatures:
        name, arguments = signature.split("(", 1)
        types = [_signalType(a) for a in arguments[:-1].split(",") if a]
        byName.setdefault(name, []).append((signature, types))
    namespace, mapping = {}, {}
    for name, overloads in byName.items():
        if len(overloads) == 1:
            namespace[name] = QtCore.pyqtSignal(*overloads[0][1])
            mapping[overloads[0][0]] = (name, None)
        else:
            namespace[name] = QtCore.pyqtSignal(*[list(types) for _, types in overloads])
            for signature, types in overloads:
                mapping[signature] = (name, types[0] if len(types) == 1 else tuple(types))
    return namespace, mapping


def _stub(className: str, name: str, header: str):
    def notImplemented(self, *args, **kwargs):
        raise NotImplementedError(f"{className}.{name} is declared in {header}, but the test layer's stand-in does not implement it")

    notImplemented.__name__ = name
    return notImplemented


def standInClasses(version: str) -> dict[str, type]:
    """Every class of the release's API as a PyQt5 class with the header's names."""
    classes = loadAPI(version)
    built: dict[str, type] = {}

    def build(className: str) -> type:
        if className in built:
            return built[className]
        info = classes[className]
        base = build(info["base"]) if info["base"] in classes else _qtBase(info["base"])
        if className == "qSlicerCoreApplication":
            base = QtCore.QObject  # one QApplication per process: the application's own members come from it
        behaviour = BEHAVIOUR.get(className)
        namespace = {name: _property(name, cppType, writable, info["enums"]) for name, (cppType, writable) in info["properties"].items()}
        signals, mapping = _signals(info["signals"])
        namespace.update(signals)
        inherited = dict(getattr(base, "cppSignals", {}))
        inherited.update(mapping)
        namespace["cppSignals"] = inherited
        namespace["cppHeader"] = info["header"]
        for values in info["enums"].values():
            namespace.update(values)
        bases = (behaviour, base) if behaviour is not None else (base,)
        cls = markCpp(type(className, bases, namespace))
        for name in _names(info["slots"]) | _names(info["invokables"]) | _names(info.get("decorators", [])):
            if not any(
                name in vars(c)
                for c in cls.__mro__
                if c not in (QtCore.QObject, QtWidgets.QWidget) and not c.__module__.startswith("PyQt5")
            ):
                setattr(cls, name, _stub(className, name, info["header"]))
        original = cls.__init__

        def __init__(self, *args, _defaults=getattr(behaviour, "DEFAULTS", {}), _original=original, **kwargs):
            _original(self, *args, **kwargs)
            values = dict(self.__dict__.get("_standinValues", {}))  # the bases' defaults, then this class's
            values.update(_defaults)
            self._standinValues = values

        cls.__init__ = __init__
        built[className] = cls
        return cls

    for className in classes:
        build(className)
    return built
