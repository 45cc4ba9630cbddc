"""The plan of MedSegUNetLib holds: four packages by concern, every import pointing down, no circle.

Read from the source with ``ast`` (function-level imports included, since those are how circles
hide):

- ``engine`` imports nothing outside ``engine``; ``models`` imports ``engine``; ``cohorts`` imports
  ``engine`` and ``models``; ``slicer`` imports those three; ``commands`` (each command's parser and
  console wording), ``cli`` and ``demo`` sit on top and no library module imports them; the
  library packages neither parse arguments nor print;
- MRML, Qt and Slicer (``slicer``, ``qt``, ``ctk``, ``vtk``'s MRML) are imported only in ``slicer/``;
- no import circle between modules;
- no module over 600 lines, no function over 80;
- every name has one address: anywhere in the repository (library, tests, benchmarks, docs), a
  name is imported from the module that defines it, never through another module that imported it
  (``from engine.volumes import sha256`` when ``engine.paths`` defines it), nor reached as an
  attribute of such a module (``volumes.sha256``). Only a package's ``__init__`` may alias.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "MedSegUNet" / "MedSegUNetLib"
LAYERS = {"engine": 0, "models": 1, "cohorts": 2, "slicer": 3, "commands": 4, "": 4}
SLICER_ONLY = {"slicer", "qt", "ctk", "qSlicerSegmentationsModuleWidgetsPythonQt", "SampleData", "PyTorchUtils", "DICOMLib"}
DEPRECATED_ALIASES: set[str] = set()
REPO = LIB.parents[1]
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
            if (
                (target in ("cli", "demo") or packageOf(target) == "commands")
                and name not in ("cli", "demo")
                and packageOf(name) != "commands"
            ):
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
                found.append(path[path.index(target) :] + [target] if target in path else [node, target])
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


# -- one address per name -------------------------------------------------------------------------------


def boundNames(tree: ast.Module) -> set[str]:
    """Names a module defines at its top level (functions, classes, assignments, also under if/try)."""
    names, statements = set(), list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody", "handlers"):
                statements.extend(getattr(node, block, []) or [])
        elif isinstance(node, ast.ExceptHandler):
            statements.extend(node.body)
    return names


def secondAddresses(sources: dict[str, str], library: dict[str, str]) -> list[str]:
    """``file:line name from module`` for each name imported, or reached as an attribute, through a
    Lib module that does not define it (``library``: Lib module name → source)."""
    defined = {name: boundNames(ast.parse(text)) for name, text in library.items()}
    # Names a Lib module imports from another Lib module (what a second address would lead to).
    borrowed = {
        name: {
            alias.asname or alias.name
            for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.ImportFrom) and resolve(name, node)
            for alias in node.names
        }
        for name, text in library.items()
    }
    problems = []
    for fileName, text in sources.items():
        here = fileName[: -len(".py")].replace("/", ".").split("MedSegUNetLib.", 1)[1] if "MedSegUNetLib/" in fileName else None
        aliases = {}
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            targets = resolve(here, node) if here else resolve("x", node) if node.module and node.module.startswith("MedSegUNetLib") else []
            for target in targets:
                for alias in node.names:
                    if target.endswith("." + alias.name) or target == alias.name:
                        aliases[alias.asname or alias.name] = target
            module = (
                targets[0]
                if len(targets) == 1 and not any(targets[0].endswith("." + a.name) or targets[0] == a.name for a in node.names)
                else None
            )
            if module is None or module.endswith("__init__"):
                continue
            for alias in node.names:
                if alias.name != "*" and alias.name not in defined[module] and f"{module}.{alias.name}" not in defined:
                    problems.append(f"{fileName}:{node.lineno} {alias.name} from {module}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                module = aliases[node.value.id]
                if (
                    not module.endswith("__init__")
                    and node.attr in borrowed[module] - defined[module]
                    and f"{module}.{node.attr}" not in defined
                ):
                    problems.append(f"{fileName}:{node.lineno} {node.value.id}.{node.attr} from {module}")
    return problems


def repositorySources() -> dict[str, str]:
    """Every Python file of the repository, and the scripts tests run in subprocesses (string
    constants that import MedSegUNetLib, their ``%(name)r`` blanks filled)."""
    import re
    import textwrap

    paths = [
        *REPO.joinpath("MedSegUNet").rglob("*.py"),
        *REPO.joinpath("Testing").rglob("*.py"),
        *REPO.joinpath("docs").glob("*_example.py"),
    ]
    sources = {path.relative_to(REPO).as_posix(): path.read_text(encoding="utf-8") for path in paths if "__pycache__" not in path.parts}
    for fileName, text in list(sources.items()):
        if fileName.endswith("test_architecture.py"):  # its planted violations
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value and "MedSegUNetLib" in node.value:
                script = re.sub(r"%\((\w+)\)[rsd]", "None", textwrap.dedent(node.value)).replace("%%", "%")
                try:
                    ast.parse(script)
                except SyntaxError:
                    continue
                sources[f"{fileName}:{node.lineno} (a script)"] = script
    return sources


def librarySources() -> dict[str, str]:
    return {moduleName(path): path.read_text(encoding="utf-8") for path in LIB.rglob("*.py") if "__pycache__" not in path.parts}


def test_every_name_has_one_address():
    assert secondAddresses(repositorySources(), librarySources()) == []


@pytest.mark.parametrize(
    "planted",
    ["from MedSegUNetLib.engine.volumes import sha256\n", "from MedSegUNetLib.engine import volumes\nvolumes.checkCompleteFile('x')\n"],
)
def test_a_second_address_is_caught(planted):
    assert secondAddresses({"Testing/planted.py": planted}, librarySources()) != []
    # and inside the library, relative
    library = librarySources()
    library["slicer.nodes"] += "\nfrom ..engine.volumes import writeVolume\n"
    assert any(
        "writeVolume from engine.volumes" in p
        for p in secondAddresses({"MedSegUNet/MedSegUNetLib/slicer/nodes.py": library["slicer.nodes"]}, library)
    )


def test_settings_are_read_in_one_place():
    # MedSegUNet's own environment variables and resource locations come from engine.settings only.
    import re

    for path in LIB.rglob("*.py"):
        if path.name == "settings.py" or "__pycache__" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not re.fullmatch(r"MEDSEGUNET_[A-Z_]+", node.value), f"{moduleName(path)} names {node.value} itself"
                assert node.value != "XDG_CACHE_HOME", f"{moduleName(path)} finds the cache folder itself"
            if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "Path(__file__).resolve().parents":
                raise AssertionError(f"{moduleName(path)} walks up from __file__ to a resource")
            if isinstance(node, ast.Attribute) and node.attr == "parents" and "__file__" in ast.unparse(node):
                raise AssertionError(f"{moduleName(path)} walks up from __file__ to a resource")


# -- one writer ----------------------------------------------------------------------------------------
# A run's files (segmentation, probabilities, statistics, overview) are written by engine.writer only;
# engine.outputs defines the segmentation step itself, and the Slicer module's DICOM SEG export writes
# an edited segmentation of the scene (not a run's output).
WRITING_CALLS = {"statisticsJSON", "statisticsCSV", "stageSegmentation", "stageProbabilities", "stageDicomSegmentation", "writeOverview"}
WRITERS = {"engine.writer", "engine.outputs", "slicer.dicomexport"}


def outputSteps(library: dict[str, str]) -> list[str]:
    found = []
    for name, text in library.items():
        if name in WRITERS:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call):
                called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if called in WRITING_CALLS:
                    found.append(f"{name}:{node.lineno} {called}")
    return found


def test_one_writer_writes_every_runs_files():
    assert outputSteps(librarySources()) == []


def test_a_second_writer_is_caught():
    library = librarySources()
    library["cohorts.casejob"] += (
        "\ndef again(staged, result, card, path):\n    stageSegmentation(staged, result.labelmap, card['labels'], path)\n"
    )
    assert [line.split(" ")[1] for line in outputSteps(library)] == ["stageSegmentation"]


# -- no command-line code in the library --------------------------------------------------------------


def test_library_packages_neither_parse_arguments_nor_print():
    problems = []
    for name, text in librarySources().items():
        if packageOf(name) == "" or name.startswith("commands."):
            continue
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("print", "sys.stdout.write", "argparse.ArgumentParser"):
                problems.append(f"{name}:{node.lineno} {ast.unparse(node.func)}")
            if isinstance(node, (ast.Import, ast.ImportFrom)) and "argparse" in [a.name for a in node.names] + [
                getattr(node, "module", "")
            ]:
                problems.append(f"{name}:{node.lineno} imports argparse")
    assert problems == []


# -- a declared public API ----------------------------------------------------------------------------


def declaredNames(text: str) -> list[str] | None:
    """A module's ``__all__`` (a literal list; the last one bound), or None when it declares none."""
    declared = None
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "__all__" for target in node.targets):
            declared = list(ast.literal_eval(node.value))
    return declared


def importedFrom(sources: dict[str, str]) -> list[tuple[str, int, str, str]]:
    """``(file, line, Lib module, name)`` for each name imported from, or reached as an attribute of,
    a Lib module (not a package) in ``sources``."""
    known = {moduleName(path) for path in LIB.rglob("*.py")}
    found = []
    for fileName, text in sources.items():
        here = fileName[: -len(".py")].replace("/", ".").split("MedSegUNetLib.", 1)[1] if "MedSegUNetLib/" in fileName else "x"
        tree, aliases = ast.parse(text), {}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or (here == "x" and node.level):
                continue
            targets = resolve(here, node)
            for alias in node.names:
                modules = [target for target in targets if target.endswith("." + alias.name) or target == alias.name]
                if modules:
                    aliases[alias.asname or alias.name] = modules[0]  # a module imported by name
                elif len(targets) == 1 and not targets[0].endswith("__init__") and f"{targets[0]}.{alias.name}" not in known:
                    found.append((fileName, node.lineno, targets[0], alias.name))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                if not aliases[node.value.id].endswith("__init__"):
                    found.append((fileName, node.lineno, aliases[node.value.id], node.attr))
    return found


def apiProblems(sources: dict[str, str], library: dict[str, str]) -> list[str]:
    problems, declared = [], {}
    for name, text in library.items():
        if name.endswith("__init__"):
            continue
        names = declaredNames(text)
        if names is None:
            problems.append(f"{name} declares no __all__")
            continue
        defined = boundNames(ast.parse(text))
        problems += [f"{name}.__all__ names {n}, which it does not define" for n in names if n not in defined]
        declared[name] = set(names)
    for fileName, line, module, name in importedFrom(sources):
        if not name.startswith("_") and module in declared and name not in declared[module] and not fileName.startswith("Testing/"):
            problems.append(f"{fileName}:{line} uses {module}.{name}, which {module}.__all__ does not declare")
    return problems


def test_every_library_module_declares_its_public_api():
    assert apiProblems(repositorySources(), librarySources()) == []


def test_an_undeclared_name_is_caught():
    import re

    library = librarySources()
    library["engine.request"] = re.sub(r"__all__ = \[.*\]", "__all__ = []", library["engine.request"], flags=re.S)
    sources = {"MedSegUNet/MedSegUNetLib/commands/planted.py": "from ..engine.request import SegmentationRequest\n"}
    assert apiProblems(sources, library) == [
        "MedSegUNet/MedSegUNetLib/commands/planted.py:1 uses engine.request.SegmentationRequest, "
        "which engine.request.__all__ does not declare"
    ]
    library["engine.request"] += "\n__all__ = ['nowhere']\n"
    assert "engine.request.__all__ names nowhere, which it does not define" in apiProblems({}, library)


def test_the_library_imports_the_curated_names_from_their_modules():
    from MedSegUNetLib import engine

    problems = []
    for name, text in librarySources().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and resolve(name, node) == ["engine.__init__"]:
                problems += [f"{name}:{node.lineno} {alias.name}" for alias in node.names if alias.name in engine.API]
    assert problems == []
