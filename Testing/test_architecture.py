"""The plan of MedSegUNetLib holds: four packages by concern, every import pointing down, no circle.

Read from the source with ``ast`` (function-level imports included, since those are how circles
hide):

- ``engine`` imports nothing outside ``engine``; ``models`` imports ``engine``; ``cohorts`` imports
  ``engine`` and ``models``; ``slicer`` imports those three; ``cli`` and ``demo`` sit on top and no
  package module imports them;
- MRML, Qt and Slicer (``slicer``, ``qt``, ``ctk``, ``vtk``'s MRML) are imported only in ``slicer/``;
- no import circle between modules;
- no module over 600 lines, no function over 80.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "MedSegUNet" / "MedSegUNetLib"
LAYERS = {"engine": 0, "models": 1, "cohorts": 2, "slicer": 3, "": 4}
SLICER_ONLY = {"slicer", "qt", "ctk", "qSlicerSegmentationsModuleWidgetsPythonQt", "SampleData", "PyTorchUtils", "DICOMLib"}
DEPRECATED_ALIASES = {"SegmentationLogic"}
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def moduleName(path: Path) -> str:
    """``engine.volumes`` for ``MedSegUNetLib/engine/volumes.py``; ``cli`` for the top level."""
    return ".".join(path.relative_to(LIB).with_suffix("").parts)


def packageOf(name: str) -> str:
    return name.split(".")[0] if "." in name else ""


def resolve(name: str, node: ast.ImportFrom) -> list[str]:
    """The Lib modules an ``ImportFrom`` names, as ``package.module``."""
    parts = name.split(".")
    if node.level:
        base = parts[: len(parts) - node.level]
        target = [*base, *(node.module.split(".") if node.module else [])]
    elif node.module and node.module.startswith("MedSegUNetLib"):
        target = node.module.split(".")[1:]
    else:
        return []
    known = {moduleName(path) for path in LIB.rglob("*.py")}
    joined = ".".join(target)
    if joined in known:
        return [joined]
    found = []
    for alias in node.names:  # from PACKAGE import module
        candidate = ".".join([*target, alias.name])
        if candidate in known:
            found.append(candidate)
    if not found and f"{joined}.__init__" in known:
        found.append(f"{joined}.__init__")
    return found


def libraryImports(source: dict[str, str] | None = None) -> dict[str, set[str]]:
    """Module → the Lib modules it imports anywhere in its body (``package.module`` names)."""
    files = source or {moduleName(path): path.read_text(encoding="utf-8") for path in LIB.rglob("*.py") if "__pycache__" not in path.parts}
    graph = {}
    for name, text in files.items():
        imported = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                imported.update(resolve(name, node))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("MedSegUNetLib."):
                        imported.add(".".join(alias.name.split(".")[1:]))
        graph[name] = imported - {name}
    return graph


def externalImports(text: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def ruleViolations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that point up or sideways, and imports of the command line's modules."""
    problems = []
    for name, imported in graph.items():
        if name.split(".")[-1] in DEPRECATED_ALIASES:
            continue
        for target in imported:
            source, destination = packageOf(name), packageOf(target)
            if target in ("cli", "demo") and name not in ("cli", "demo"):
                problems.append(f"{name} imports the command line's {target}")
            elif LAYERS[destination] > LAYERS[source]:
                problems.append(f"{name} ({source or 'top'}) imports {target} ({destination or 'top'}), which sits above it")
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, as a path (depth-first search on the module graph)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_every_import_points_down():
    assert ruleViolations(libraryImports()) == []


def test_there_is_no_import_circle():
    assert circles(libraryImports()) == []


def test_mrml_and_qt_only_in_the_slicer_package():
    for path in LIB.rglob("*.py"):
        name = moduleName(path)
        if packageOf(name) == "slicer" or "__pycache__" in path.parts:
            continue
        assert not externalImports(path.read_text(encoding="utf-8")) & SLICER_ONLY, name


def test_modules_and_functions_stay_small():
    for path in LIB.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{moduleName(path)} has {len(text.splitlines())} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_FUNCTION_LINES, f"{moduleName(path)}.{node.name} has {length} lines"


# [parameters: a planted import, expected: the rule it breaks]
PLANTED = [
    ("engine.volumes", "from ..cohorts import batch\n", "sits above it"),
    ("engine.geometry", "def later():\n    from ..slicer import logic\n", "sits above it"),
    ("models.catalog", "from ..cli import main\n", "imports the command line's cli"),
    ("engine.errors", "from . import volumes\n", "circle"),
]


@pytest.mark.parametrize("module, planted, expected", PLANTED, ids=[p[0] + ":" + p[2] for p in PLANTED])
def test_the_rules_catch_a_planted_back_import(module, planted, expected):
    files = {moduleName(path): path.read_text(encoding="utf-8") for path in LIB.rglob("*.py") if "__pycache__" not in path.parts}
    files[module] = files[module] + "\n" + planted
    graph = libraryImports(files)
    if expected == "circle":
        assert any(module in circle for circle in circles(graph))
    else:
        assert any(expected in problem and problem.startswith(module) for problem in ruleViolations(graph)), ruleViolations(graph)


def test_a_planted_mrml_import_outside_the_slicer_package_is_seen():
    assert "slicer" in externalImports("def f():\n    import slicer\n") & SLICER_ONLY
