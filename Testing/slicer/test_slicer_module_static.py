"""Static checks of the Slicer module and its packaging (no Slicer application needed).

- every Lib ``.py``/``.json`` file and every resource is listed in ``MedSegUNet/CMakeLists.txt``
  (unlisted files are silently dropped from the extension package);
- the CMake files configure with the real ``cmake`` against a stand-in Slicer package config that
  records what ``slicerMacroBuildScriptedModule`` and ``slicer_add_python_unittest`` receive;
- every ``self.ui.<name>`` used by ``MedSegUNet.py`` exists in the ``.ui`` file, and every widget
  bound with ``SlicerParameterName`` names a parameter of the parameter node;
- ``MedSegUNet.py`` defines the five template classes (parsed with ``ast``, not imported: it needs
  Qt and the Slicer application);
- the ExtensionsIndex catalog entry validates against its schema; icon and screenshot sizes.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "MedSegUNet"
LIB_DIR = MODULE_DIR / "MedSegUNetLib"
MODULE_FILE = MODULE_DIR / "MedSegUNet.py"
# The module's Slicer-facing code: the thin module file, its widget and its installer (in the Lib).
WIDGET_FILE = MODULE_DIR / "MedSegUNetLib" / "slicer" / "widget.py"
INSTALL_FILE = MODULE_DIR / "MedSegUNetLib" / "slicer" / "dependencies.py"
MODULE_LOGIC_FILE = MODULE_DIR / "MedSegUNetLib" / "slicer" / "modulelogic.py"
SLICER_FILES = [MODULE_FILE, WIDGET_FILE, INSTALL_FILE, MODULE_LOGIC_FILE]
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedSegUNet.ui"
CATALOG_SCHEMA = REPO_ROOT / "Testing" / "data" / "slicer-extension-catalog-entry-schema-v1.0.1.json"
# The zoo files that are models (shipped); the rest of a zoo folder is documentation.
ZOO_MODEL_SUFFIXES = (".pt", ".pt2")


def packagedFilesOnDisk() -> tuple[set[str], set[str]]:
    """What the extension must ship: (scripts, resources), paths relative to ``MedSegUNet/``.

    Every file of ``Resources`` is a resource, except the zoo's documentation (sheets, curves, tables,
    training configs), which stays in the repository: of ``Resources/Models`` only the model files ship.
    """
    scripts = {"MedSegUNet.py"} | {p.relative_to(MODULE_DIR).as_posix() for p in LIB_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    resources = {p.relative_to(MODULE_DIR).as_posix() for p in LIB_DIR.rglob("*.json") if "__pycache__" not in p.parts}
    for path in (MODULE_DIR / "Resources").rglob("*"):
        relative = path.relative_to(MODULE_DIR)
        if path.is_file() and "__pycache__" not in path.parts and (relative.parts[1] != "Models" or path.suffix in ZOO_MODEL_SUFFIXES):
            resources.add(relative.as_posix())
    return scripts, resources


def test_cmake_lists_every_lib_file_and_resource(cmake_record):
    scripts, resources = packagedFilesOnDisk()
    assert cmake_record["MODULE"] == ["MedSegUNet"]
    assert Path(cmake_record["MODULE_SOURCE_DIR"][0]) == MODULE_DIR
    listedScripts = cmake_record.get("SCRIPT", [])
    listedResources = cmake_record.get("RESOURCE", [])
    assert len(listedScripts) == len(set(listedScripts)) and len(listedResources) == len(set(listedResources)), "duplicates"
    assert set(listedScripts) == scripts, f"missing: {sorted(scripts - set(listedScripts))}, extra: {sorted(set(listedScripts) - scripts)}"
    assert set(listedResources) == resources, (
        f"missing: {sorted(resources - set(listedResources))}, extra: {sorted(set(listedResources) - resources)}"
    )
    assert cmake_record["GENERIC_TESTS"] == ["MedSegUNet"]


def test_cmake_registers_the_self_test_once(cmake_record):
    # The module file's MedSegUNetTest, once (a second entry point ran the same scenario twice).
    assert [Path(p) for p in cmake_record["UNITTEST"]] == [MODULE_FILE]


def test_extension_metadata(cmake_record):
    metadata = {key: values[0] for key, values in cmake_record.items() if key.startswith("EXTENSION_")}
    assert metadata["EXTENSION_CATEGORY"] == "Segmentation"
    assert metadata["EXTENSION_DEPENDS"] == "PyTorch"
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert metadata[key].startswith("https://"), key
    assert metadata["EXTENSION_CONTRIBUTORS"] and len(metadata["EXTENSION_DESCRIPTION"]) > 40
    # The URLs point at files of this repository.
    iconPath = metadata["EXTENSION_ICONURL"].split("/main/", 1)[1]
    assert (REPO_ROOT / iconPath).is_file()
    for url in metadata["EXTENSION_SCREENSHOTURLS"].split():
        assert (REPO_ROOT / url.split("/main/", 1)[1]).is_file()


def uiWidgetNames() -> dict[str, ElementTree.Element]:
    tree = ElementTree.parse(UI_FILE)
    names = {}
    for element in tree.iter():
        if element.tag in ("widget", "layout", "spacer") and element.get("name"):
            names[element.get("name")] = element
    return names


def test_every_ui_name_used_by_the_widget_exists():
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", WIDGET_FILE.read_text(encoding="utf-8")))
    names = uiWidgetNames()
    assert used, "the widget uses no ui names?"
    assert used <= set(names), f"missing in {UI_FILE.name}: {sorted(used - set(names))}"


def moduleTree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def slicerTrees() -> list:
    return [ast.parse(path.read_text(encoding="utf-8")) for path in SLICER_FILES]


def test_module_defines_the_five_template_classes():
    classes = {node.name: node for node in moduleTree().body if isinstance(node, ast.ClassDef)}
    expected = {
        "MedSegUNet": "ScriptedLoadableModule",
        "MedSegUNetWidget": "ScriptedLoadableModuleWidget",
        "MedSegUNetLogic": "ScriptedLoadableModuleLogic",
        "MedSegUNetTest": "ScriptedLoadableModuleTest",
    }
    for name, base in expected.items():
        assert name in classes, name
        assert base in [b.id for b in classes[name].bases if isinstance(b, ast.Name)], f"{name} does not derive from {base}"
    parameterNode = classes["MedSegUNetParameterNode"]
    assert any(isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in parameterNode.decorator_list)
    source = MODULE_FILE.read_text(encoding="utf-8")
    for banner in ("MedSegUNet", "MedSegUNetParameterNode", "MedSegUNetWidget", "MedSegUNetLogic", "MedSegUNetTest"):
        assert re.search(rf"^#\n# {banner}\n#$", source, re.MULTILINE), f"missing comment banner for {banner}"


def test_parameter_bindings_in_ui_name_parameters():
    classes = {node.name: node for node in moduleTree().body if isinstance(node, ast.ClassDef)}
    parameters = {node.target.id for node in classes["MedSegUNetParameterNode"].body if isinstance(node, ast.AnnAssign)}
    bound = {}
    for name, element in uiWidgetNames().items():
        for prop in element.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.find("string").text
    assert bound, "no widget is bound to the parameter node"
    assert set(bound.values()) <= parameters, f"unknown parameters: {sorted(set(bound.values()) - parameters)}"


def test_module_file_is_thin_and_imports_engine_lazily():
    tree = moduleTree()
    topLevelImports = {
        alias.name.split(".")[0]
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(name=node.module or "")])
    }
    # torch, MONAI and the engine may be missing when Slicer loads the module (installed on Apply).
    assert not topLevelImports & {"torch", "monai", "SimpleITK", "numpy"}
    libImports = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("MedSegUNetLib")}
    assert libImports <= {"MedSegUNetLib.slicer.modulelogic", "MedSegUNetLib.engine.settings"}, libImports
    assert len(MODULE_FILE.read_text(encoding="utf-8").splitlines()) < 800


def test_the_module_logic_imports_nothing_heavy():
    """What MedSegUNet.py imports when Slicer loads it: no numpy, SimpleITK, VTK, torch or MONAI."""
    code = (
        "import sys; import MedSegUNetLib.slicer.modulelogic, MedSegUNetLib.engine.settings; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'SimpleITK', 'vtk', 'torch', 'monai', 'qt'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(MODULE_DIR))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_sample_data_checksums_are_full_sha256():
    from MedSegUNetLib.engine import settings

    entries = [settings.SAMPLE_DATA_FILES[series] for series in ("axial", "sagittal", "coronal")]
    assert [name for name, _ in entries] == [f"ProstateX-0000-t2-tse-{o}.nrrd" for o in ("tra", "sag", "cor")]
    prefixes = [("3940564b", "3dfb"), ("774a3891", "f329"), ("628b928f", "0e59")]
    for (_, checksum), (start, end) in zip(entries, prefixes):
        assert re.fullmatch(r"[0-9a-f]{64}", checksum) and checksum.startswith(start) and checksum.endswith(end)
    # The module's Sample Data entry and the demo's download use this one table.
    assert "SAMPLE_DATA_FILES.values()" in MODULE_FILE.read_text(encoding="utf-8")


def test_catalog_entry_validates_against_schema():
    jsonschema = pytest.importorskip("jsonschema")
    entry = json.loads((REPO_ROOT / "MedSegUNet.json").read_text())
    schema = json.loads(CATALOG_SCHEMA.read_text())
    jsonschema.validate(entry, schema)
    assert entry["category"] == "Segmentation" and entry["build_dependencies"] == ["PyTorch"]
    assert entry["$schema"].startswith(schema["$id"].rstrip("#"))
    # The schema really constrains the entry (a wrong tier is refused).
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**entry, "tier": 2}, schema)


def test_requirements_leave_bundled_packages_alone():
    lines = [line.split("#")[0].strip() for line in (MODULE_DIR / "Resources" / "requirements.txt").read_text().splitlines()]
    names = {re.split(r"[<>=!~\[; ]", line)[0].lower() for line in lines if line}
    # What the worker imports for a run; the dependencies module checks the same list.
    from MedSegUNetLib.slicer import dependencies

    assert {distribution.lower() for distribution in dependencies.REQUIRED.values()} <= names
    assert not names & {name.lower() for name in dependencies.PINNED}


def test_icon_and_screenshot_sizes():
    image = pytest.importorskip("PIL.Image")
    with image.open(MODULE_DIR / "Resources" / "Icons" / "MedSegUNet.png") as icon:
        assert icon.size == (128, 128)
    screenshots = list((REPO_ROOT / "Resources" / "Screenshots").glob("*.png"))
    assert screenshots and all("rendering" in p.name for p in screenshots)
    with image.open(screenshots[0]) as shot:
        assert shot.size[0] >= 800


# -- checks against the Slicer/CTK APIs the module uses (verified against their sources) ------------

STANDARD_QT_WIDGETS = {
    "QWidget",
    "QLabel",
    "QCheckBox",
    "QDoubleSpinBox",
    "QSpinBox",
    "QComboBox",
    "QPushButton",
    "QProgressBar",
    "QListWidget",
    "QLineEdit",
}
# Custom widgets as Qt Designer with Slicer's plugins declares them (header, container).
SLICER_CUSTOM_WIDGETS = {
    "qMRMLWidget": ("qMRMLWidget.h", True),
    "qMRMLNodeComboBox": ("qMRMLNodeComboBox.h", False),
    "ctkCollapsibleButton": ("ctkCollapsibleButton.h", True),
    "ctkPathLineEdit": ("ctkPathLineEdit.h", False),
}
# Slicer's GUI connectors (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py) match on the exact
# widget class and the parameter's (unannotated) type.
CONNECTOR_TYPES = {"QCheckBox": "bool", "QDoubleSpinBox": "float", "qMRMLNodeComboBox": "node"}


def parameterAnnotations() -> dict[str, ast.expr]:
    classes = {node.name: node for node in moduleTree().body if isinstance(node, ast.ClassDef)}
    return {node.target.id: node.annotation for node in classes["MedSegUNetParameterNode"].body if isinstance(node, ast.AnnAssign)}


def annotationNames(annotation: ast.expr) -> set[str]:
    """The names in an annotation (``"None"`` for a literal None)."""
    names = {node.id for node in ast.walk(annotation) if isinstance(node, ast.Name)}
    if any(isinstance(node, ast.Constant) and node.value is None for node in ast.walk(annotation)):
        names.add("None")
    return names


def test_module_keeps_runtime_annotations():
    # parameterNodeWrapper resolves the annotations with typing.get_type_hints; keep them real objects.
    assert not any(isinstance(node, ast.ImportFrom) and node.module == "__future__" for node in moduleTree().body), (
        "MedSegUNet.py must not use 'from __future__ import annotations'"
    )


def test_union_parameters_include_none():
    # UnionSerializer only writes None (the default of a node parameter) through a None member, and
    # isNodeOrUnionOfNodes expects Union[NodeType1, ..., None]: without it the parameter node raises.
    for name, annotation in parameterAnnotations().items():
        names = annotationNames(annotation)
        if "Union" in names:
            assert "Optional" in names or "None" in names, f"{name}: Union of nodes needs None (Optional[Union[...]])"


def test_ui_widget_classes_and_scene_connections():
    tree = ElementTree.parse(UI_FILE)
    root = tree.getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == root.findtext("class") == "MedSegUNet"
    declared = {cw.findtext("class"): cw for cw in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    for cls in used - STANDARD_QT_WIDGETS:
        assert cls in SLICER_CUSTOM_WIDGETS, f"unexpected widget class {cls}"
        header, container = SLICER_CUSTOM_WIDGETS[cls]
        assert cls in declared and declared[cls].findtext("header") == header and declared[cls].findtext("extends") == "QWidget"
        assert (declared[cls].findtext("container") == "1") == container, cls
    # Every MRML widget gets the scene from the top-level qMRMLWidget (uiWidget.setMRMLScene in setup()).
    mrmlWidgets = {w.get("name") for w in root.iter("widget") if w.get("class", "").startswith("qMRML") and w is not top}
    connected = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("sender") == "MedSegUNet"
        and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert mrmlWidgets and mrmlWidgets == connected


def test_bound_widgets_have_a_gui_connector_for_their_parameter_type():
    annotations = parameterAnnotations()
    for name, element in uiWidgetNames().items():
        bound = [p.findtext("string") for p in element.findall("property") if p.get("name") == "SlicerParameterName"]
        if not bound:
            continue
        widgetClass = element.get("class")
        assert widgetClass in CONNECTOR_TYPES, f"{name}: no parameterNodeWrapper connector for {widgetClass}"
        names = annotationNames(annotations[bound[0]])
        expected = CONNECTOR_TYPES[widgetClass]
        if expected == "node":
            nodeClasses = {n for n in names if n.startswith("vtkMRML")}
            listed = {s.text for s in element.iter("string") if s.text and s.text.startswith("vtkMRML")}
            # The connector overwrites nodeTypes from the annotation; keep the .ui saying the same.
            assert nodeClasses and listed == nodeClasses, f"{name}: nodeTypes {listed} != annotation {nodeClasses}"
        else:
            assert expected in names, f"{name}: {widgetClass} needs a {expected} parameter"


def test_cmake_scripts_are_python_and_resources_keep_their_folder(cmake_record):
    # ctkMacroCompilePythonScript appends ".py" to SCRIPTS entries that lack it, and copies RESOURCES
    # to the same relative path: the schemas must be RESOURCES next to the modules that open them.
    assert all(script.endswith(".py") for script in cmake_record["SCRIPT"])
    for schema in ("engine/modelcard", "models/trainconfig"):
        assert f"MedSegUNetLib/{schema}.schema.json" in cmake_record["RESOURCE"]
    assert "MedSegUNetLib/engine/modelcard.py" in cmake_record["SCRIPT"] and "MedSegUNetLib/models/training.py" in cmake_record["SCRIPT"]


def slicerUtilCalls(path: Path) -> list[tuple[str, ast.Call]]:
    calls = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            value = node.func.value
            if (
                isinstance(value, ast.Attribute)
                and value.attr == "util"
                and isinstance(value.value, ast.Name)
                and value.value.id == "slicer"
            ):
                calls.append((node.func.attr, node))
    return calls


@pytest.mark.parametrize("path", [*SLICER_FILES, REPO_ROOT / "docs" / "batch_example.py"], ids=lambda p: p.name)
def test_slicer_util_calls_match_the_real_signatures(path):
    # slicer-core ships Slicer's own Base/Python/slicer/util.py: bind each call to the real signature.
    import inspect

    util = pytest.importorskip("slicer.util")
    for name, call in slicerUtilCalls(path):
        function = getattr(util, name, None)
        assert function is not None, f"slicer.util.{name} does not exist"
        args = [None] * len(call.args)
        kwargs = {keyword.arg: None for keyword in call.keywords if keyword.arg}
        try:
            inspect.signature(function).bind(*args, **kwargs)
        except TypeError as error:
            pytest.fail(f"slicer.util.{name} at line {call.lineno}: {error}")


def keywordsOfCalls(attribute: str) -> list[set[str]]:
    return [
        {keyword.arg for keyword in node.keywords}
        for tree in slicerTrees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute
    ]


# Keyword names read from the sources: Slicer Modules/Scripted/SampleData/SampleData.py,
# Base/Python/slicer/packaging.py (formerly pydeps.py), fepegar/SlicerPyTorch PyTorchUtils/PyTorchUtils.py.
VERIFIED_KEYWORDS = {
    "registerCustomSampleDataSource": {
        "category",
        "sampleName",
        "uris",
        "fileNames",
        "nodeNames",
        "customDownloader",
        "thumbnailFileName",
        "loadFileType",
        "loadFiles",
        "loadFileProperties",
        "checksums",
    },
    "pip_ensure": {"constraints", "skip_packages", "prompt_install", "prompt_restart", "requester", "skip_in_testing", "show_progress"},
}


@pytest.mark.parametrize("attribute", sorted(VERIFIED_KEYWORDS))
def test_extension_api_keywords_exist(attribute):
    calls = keywordsOfCalls(attribute)
    assert calls, f"{attribute} is not called"
    for keywords in calls:
        assert keywords <= VERIFIED_KEYWORDS[attribute], f"{attribute}: unknown {sorted(keywords - VERIFIED_KEYWORDS[attribute])}"


def test_mrml_api_used_by_the_widget_exists():
    slicer = pytest.importorskip("slicer")
    assert isinstance(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView, int)
    assert hasattr(slicer.vtkMRMLSelectionNode(), "SetActiveTableID")
    assert hasattr(slicer.vtkMRMLApplicationLogic, "PropagateTableSelection")
    assert hasattr(slicer.vtkMRMLSegmentationNode(), "CreateClosedSurfaceRepresentation")
    source = MODULE_FILE.read_text(encoding="utf-8")
    # Submodules are only attributes of the package once imported: look them up by import.
    assert 'getattr(slicer, "pydeps"' not in source and 'getattr(slicer, "packaging"' not in source


def test_widget_imports_work_in_a_fresh_slicer_without_dependencies():
    # In a fresh Slicer only numpy and SimpleITK exist; the widget's setup() reads the catalog and its
    # card and selector helpers before anything is installed, so they must not need what Apply installs.
    code = f"""
import importlib.abc, sys
BLOCKED = {{"torch", "monai", "scipy", "jsonschema", "yaml", "slicerio"}}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("not installed: " + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, {str(MODULE_DIR)!r})
from MedSegUNetLib.engine import modelcard, settings
from MedSegUNetLib.models.catalog import catalogChoices
from MedSegUNetLib.slicer.job import availableDevices, timingsText
from MedSegUNetLib.slicer.nodes import suggestInputVolumes, suggestROIVolumes
print(sorted(availableDevices().items()), len(catalogChoices()) > 0)
"""
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "[('auto', True), ('cpu', True), ('cuda', False), ('mps', False)] True"


def test_scene_events_are_coalesced_and_observed_only_while_entered():
    tree = ast.parse(WIDGET_FILE.read_text(encoding="utf-8"))
    source = WIDGET_FILE.read_text(encoding="utf-8")
    assert "QTimer.singleShot(" not in source.replace("qt.QTimer.singleShot would", "")
    methods = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}

    def observed(method: str) -> set[str]:
        """Scene events a method adds or removes observers of (named in the calls, or in the tuple they loop over)."""
        calls = [
            call
            for call in ast.walk(methods[method])
            if isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr in ("addObserver", "removeObserver")
            and len(call.args) > 1
        ]
        if not calls:
            return set()
        return {
            ast.unparse(node)
            for node in ast.walk(methods[method])
            if isinstance(node, ast.Attribute) and ast.unparse(node).startswith("slicer.mrmlScene.Node")
        }

    assert "slicer.mrmlScene.NodeAddedEvent" not in observed("setup")
    assert {"slicer.mrmlScene.NodeAddedEvent", "slicer.mrmlScene.NodeRemovedEvent"} <= observed("enter") & observed("exit")
    handler = methods["onSceneNodesChanged"]
    assert any("calldata_type" in ast.unparse(d) for d in handler.decorator_list) and "vtkMRMLScalarVolumeNode" in ast.unparse(handler)


def test_slicer_process_never_imports_torch_or_monai():
    for path in [MODULE_FILE, *sorted(LIB_DIR.rglob("*.py"))]:
        if path.name in ("worker.py",):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        topLevel = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        names = {alias.name.split(".")[0] for node in topLevel for alias in node.names} | {
            node.module.split(".")[0] for node in topLevel if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not names & {"torch", "monai"}, f"{path.name} imports torch or MONAI at module level"
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert "import torch" not in source and "ModuleLogic.__init__(\n            self,\n            slicer.mrmlScene" in source
    assert "SegmentationLogic(self.scene, useWorker=True" in MODULE_LOGIC_FILE.read_text(encoding="utf-8")


def test_module_file_is_the_five_template_classes_and_the_widget_lives_in_the_lib():
    tree = moduleTree()
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    assert classes == ["MedSegUNet", "MedSegUNetParameterNode", "MedSegUNetWidget", "MedSegUNetLogic", "MedSegUNetTest"]
    widget = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "MedSegUNetWidget")
    assert {f.name for f in widget.body if isinstance(f, ast.FunctionDef)} == {"__init__", "setup", "cleanup", "enter", "exit", "onReload"}
    assert len(MODULE_FILE.read_text(encoding="utf-8").splitlines()) < 320
    # Qt is imported by the widget's Lib file only; onReload reloads every Lib module, the widget last.
    assert "import qt" not in MODULE_FILE.read_text(encoding="utf-8") and "import qt" in WIDGET_FILE.read_text(encoding="utf-8")
    libModules = next(node for node in tree.body if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "LIB_MODULES")
    listed = [element.value for element in libModules.value.elts]
    # Every module Slicer's process may import: the engine (its console aside), the Slicer package,
    # and what they use of models and cohorts; the command line's modules are never loaded there.
    from test_architecture import libraryImports

    graph = libraryImports()
    needed = {name for name in graph if name.startswith("slicer.")} - {"slicer.__init__"}
    stack = list(needed)
    while stack:  # what the Slicer side imports, directly or not
        for imported in graph[stack.pop()]:
            if imported not in needed:
                needed.add(imported)
                stack.append(imported)
    assert set(listed) == {name for name in needed if not name.endswith("__init__")} | {
        f"engine.{p.stem}" for p in (LIB_DIR / "engine").glob("*.py") if p.stem not in ("__init__", "console")
    }
    # Dependency order: a module is reloaded after every Lib module it imports.
    for position, name in enumerate(listed):
        assert graph[name] & set(listed) <= set(listed[:position]), (name, sorted(graph[name] - set(listed[:position])))
    assert listed[-1] == "slicer.widget"


SIGNATURES = json.loads((REPO_ROOT / "Testing" / "data" / "slicer-api-signatures.json").read_text())


def signatureOf(entry: dict):
    import inspect

    parameters = []
    positional = entry["positional"]
    firstDefault = len(positional) - entry["defaults"]
    for index, name in enumerate(positional):
        default = None if index >= firstDefault else inspect.Parameter.empty
        parameters.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    if entry["varargs"]:
        parameters.append(inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL))
    for name in entry["keyword_only"]:
        default = inspect.Parameter.empty if name in entry["kw_required"] else None
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default))
    if entry["varkw"]:
        parameters.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(parameters)


def callsOf(attribute: str, paths) -> list:
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute:
                found.append((path.name, node))
    return found


def bindCall(signature, node, skipSelf: bool = False) -> None:
    args = [None] * len(node.args)
    kwargs = {keyword.arg: None for keyword in node.keywords if keyword.arg}
    signature.bind(*([None] if skipSelf else []), *args, **kwargs)


@pytest.mark.parametrize("version", sorted(SIGNATURES["slicer"]))
def test_slicer_calls_bind_on_every_supported_slicer(version):
    """Every slicer.util and slicer.packaging call, bound to the signature of Slicer 5.6, 5.8, 5.10 and main."""
    api = SIGNATURES["slicer"][version]
    paths = [*SLICER_FILES, REPO_ROOT / "docs" / "batch_example.py"]
    for path in paths:
        for name, call in slicerUtilCalls(path):
            assert name in api["slicer.util"], f"slicer.util.{name} ({path.name}:{call.lineno}) does not exist in Slicer {version}"
            try:
                bindCall(signatureOf(api["slicer.util"][name]), call)
            except TypeError as error:
                pytest.fail(f"slicer.util.{name} at {path.name}:{call.lineno} does not fit Slicer {version}: {error}")
    packaging = api["slicer.packaging"]
    for name in ("pip_ensure", "load_requirements"):
        for fileName, call in callsOf(name, SLICER_FILES):
            if packaging is None:
                continue  # that Slicer has no slicer.packaging: the module falls back to pip_install with constraints
            try:
                bindCall(signatureOf(packaging[name]), call)
            except TypeError as error:
                pytest.fail(f"slicer.packaging.{name} at {fileName}:{call.lineno} does not fit Slicer {version}: {error}")
    if packaging is None:
        # The fallback must be there for this Slicer.
        assert callsOf("pip_install", SLICER_FILES)


def test_pytorch_is_installed_without_importing_it_into_slicer():
    # PyTorchUtilsLogic.installTorch ends with "import torch" (fepegar/SlicerPyTorch): the module runs
    # light-the-torch itself in a PythonSlicer process and never imports PyTorchUtils or torch.
    assert not callsOf("installTorch", SLICER_FILES) and not callsOf("uninstallTorch", SLICER_FILES)
    for path in SLICER_FILES:
        imported = {
            alias.name
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert not imported & {"torch", "PyTorchUtils"}, path.name
    from MedSegUNetLib.slicer import dependencies

    assert [c for c in slicerUtilCalls(INSTALL_FILE) if c[0] == "launchConsoleProcess"] and dependencies.TORCH_REQUIREMENT.startswith(
        "torch>="
    )
    # The oldest torch the engine accepts is the project's own minimum.
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"torch>={dependencies.TORCH_MINIMUM}' in pyproject


def test_the_panel_takes_any_margin_and_context_a_card_may_have():
    # The card schema's maxima are the parameter node's and the spin boxes': no card value raises in a slot.
    schema = json.loads((LIB_DIR / "engine" / "modelcard.schema.json").read_text(encoding="utf-8"))
    roi = schema["properties"]["roi"]["properties"]
    annotations = parameterAnnotations()
    for parameter, field, box in (("marginMM", "margin_mm", "marginSpinBox"), ("contextMM", "context_mm", "contextSpinBox")):
        within = next(
            node for node in ast.walk(annotations[parameter]) if isinstance(node, ast.Call) and ast.unparse(node.func) == "WithinRange"
        )
        assert [ast.literal_eval(argument) for argument in within.args] == [roi[field]["minimum"], roi[field]["maximum"]]
        maximum = uiWidgetNames()[box].find("property[@name='maximum']/double").text
        assert float(maximum) == roi[field]["maximum"]


def test_the_signature_check_can_fail():
    # Slicer 5.6's pip_install takes no keyword arguments (5.10's does): such a call must be caught.
    call = ast.parse("slicer.util.pip_install(['-r', 'x'], blocking=True)").body[0].value
    with pytest.raises(TypeError):
        bindCall(signatureOf(SIGNATURES["slicer"]["5.6.2"]["slicer.util"]["pip_install"]), call)
    bindCall(signatureOf(SIGNATURES["slicer"]["main"]["slicer.util"]["pip_install"]), call)
