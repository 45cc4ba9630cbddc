"""Read the Slicer and CTK APIs the module uses from their sources, at the Slicer releases it supports.

Writes two fact files the tests read (names and signatures, no code):

- ``Testing/data/slicer-api-signatures.json``: the parameters of the functions of Slicer's
  ``Base/Python/slicer/util.py`` and ``packaging.py`` that this repository calls, at each release
  (read with ``ast``; a function a release lacks is absent from its record);
- ``Testing/data/slicer-gui-api.json``: for each Qt class of CTK, qMRML and Slicer's application the
  module's code or Slicer's Python layer reaches, what PythonQt exposes of it (``Q_PROPERTY``\\ s,
  signals, public slots and ``Q_INVOKABLE`` methods, with normalised signatures) and its base
  class, read from the headers at the Slicer release and at the CTK commit that release builds
  (``SuperBuild/External_CTK.cmake``). The test layer's stand-ins for these classes are made from it.

Usage (the repositories as ``git clone --mirror`` or the search tool's ``fetch`` brings them)::

    python Testing/slicer/upstream/extract_api.py --slicer-git PATH --ctk-git PATH
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
# The releases the module supports (Slicer 5.6 and 5.8 ship Python 3.9, 5.10 and later 3.12).
TAGS = {"5.6.2": "v5.6.2", "5.8.1": "v5.8.1", "5.10.0": "v5.10.0", "main": "HEAD"}
GUI_TAGS = ("5.6.2", "5.8.1", "main")

SLICER_HEADERS = {
    "qMRMLWidget": "Libs/MRML/Widgets/qMRMLWidget.h",
    "qMRMLNodeComboBox": "Libs/MRML/Widgets/qMRMLNodeComboBox.h",
    "qMRMLSliderWidget": "Libs/MRML/Widgets/qMRMLSliderWidget.h",
    "qMRMLRangeWidget": "Libs/MRML/Widgets/qMRMLRangeWidget.h",
    "qMRMLSpinBox": "Libs/MRML/Widgets/qMRMLSpinBox.h",
    "qMRMLLayoutManager": "Libs/MRML/Widgets/qMRMLLayoutManager.h",
    "qSlicerLayoutManager": "Base/QTGUI/qSlicerLayoutManager.h",
    "qSlicerWidget": "Base/QTGUI/qSlicerWidget.h",
    "qSlicerAbstractModuleWidget": "Base/QTGUI/qSlicerAbstractModuleWidget.h",
    "qSlicerScriptedLoadableModuleWidget": "Base/QTGUI/qSlicerScriptedLoadableModuleWidget.h",
    "qSlicerCoreApplication": "Base/QTCore/qSlicerCoreApplication.h",
    "qSlicerApplication": "Base/QTGUI/qSlicerApplication.h",
    "qSlicerCoreCommandOptions": "Base/QTCore/qSlicerCoreCommandOptions.h",
    "qSlicerCommandOptions": "Base/QTGUI/qSlicerCommandOptions.h",
    "qSlicerModuleManager": "Base/QTCore/qSlicerModuleManager.h",
    "qSlicerAbstractCoreModule": "Base/QTCore/qSlicerAbstractCoreModule.h",
    "qSlicerAbstractModule": "Base/QTGUI/qSlicerAbstractModule.h",
    "qSlicerLoadableModule": "Base/QTGUI/qSlicerLoadableModule.h",
    "qSlicerScriptedLoadableModule": "Base/QTGUI/qSlicerScriptedLoadableModule.h",
}
# PythonQt decorators: methods that Slicer adds to its classes for Python (``static_<Class>_<name>``
# is a static method of Class; ``<name>(Class* self, ...)`` a method of Class).
SLICER_DECORATORS = ("Base/QTCore/qSlicerBaseQTCorePythonQtDecorators.h", "Base/QTGUI/qSlicerBaseQTGUIPythonQtDecorators.h")
CTK_HEADERS = {
    name: f"Libs/Widgets/{name}.h"
    for name in (
        "ctkCollapsibleButton",
        "ctkPathLineEdit",
        "ctkDirectoryButton",
        "ctkRangeWidget",
        "ctkSliderWidget",
        "ctkCheckBox",
        "ctkComboBox",
        "ctkDoubleRangeSlider",
        "ctkDoubleSlider",
        "ctkDoubleSpinBox",
        "ctkCheckablePushButton",
        "ctkColorPickerButton",
        "ctkPushButton",
    )
}


def gitShow(gitDir: str, revision: str, path: str) -> str | None:
    done = subprocess.run(["git", "--git-dir", gitDir, "show", f"{revision}:{path}"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


# -- Python signatures ---------------------------------------------------------------------------


def signatures(source: str) -> dict:
    """Every top-level function of a Python file: parameter names, defaults, varargs."""
    functions = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            arguments = node.args
            functions[node.name] = {
                "positional": [a.arg for a in [*arguments.posonlyargs, *arguments.args]],
                "keyword_only": [a.arg for a in arguments.kwonlyargs],
                "varargs": arguments.vararg is not None,
                "varkw": arguments.kwarg is not None,
                "defaults": len(arguments.defaults),
                "kw_required": [a.arg for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults) if d is None],
            }
    return functions


def calledNames() -> set[str]:
    """The ``slicer.util`` and ``packaging`` functions this repository's Python calls (the ones worth recording)."""
    names = {"pip_ensure", "load_requirements"}
    for path in [*REPO_ROOT.joinpath("MedSegUNet").rglob("*.py"), REPO_ROOT / "docs" / "batch_example.py"]:
        names |= set(re.findall(r"\butil\.(\w+)\(", path.read_text(encoding="utf-8")))
    return names


def pythonAPI(slicerGit: str) -> dict:
    wanted = calledNames()
    result = {}
    for version, revision in TAGS.items():
        commit = subprocess.run(
            ["git", "--git-dir", slicerGit, "rev-parse", revision], capture_output=True, text=True, check=True
        ).stdout.strip()
        util = signatures(gitShow(slicerGit, revision, "Base/Python/slicer/util.py"))
        packaging = gitShow(slicerGit, revision, "Base/Python/slicer/packaging.py")
        result[version] = {
            "commit": commit,
            "slicer.util": {name: value for name, value in util.items() if name in wanted},
            "slicer.packaging": {name: value for name, value in signatures(packaging).items() if name in wanted} if packaging else None,
        }
    return result


# -- Qt headers ------------------------------------------------------------------------------------


def _stripComments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", "", text)


def normalizeType(text: str) -> str:
    """A C++ parameter's type as moc normalises it: no name, default, ``const`` or reference."""
    text = text.split("=")[0].strip()
    text = re.sub(r"\bconst\b", "", text).replace("&", " ").strip()
    tokens = re.findall(r"[A-Za-z_][A-Za-z0-9_:<>,]*|\*+", text)
    if (
        len(tokens) > 1
        and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tokens[-1])
        and tokens[-2] not in ("unsigned", "signed", "long", "short")
    ):
        tokens = tokens[:-1]  # the parameter's name
    typeText = ""
    for token in tokens:
        typeText += token if token.startswith("*") or not typeText else " " + token
    return typeText.replace(" *", "*")


def _parameters(text: str) -> list[tuple[str, bool]]:
    """(type, has default) per parameter of a parameter list."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "<(":
            depth += 1
        elif char in ">)":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [(normalizeType(p), "=" in p) for p in parts if p.strip() and p.strip() != "void"]


def _signatures(name: str, parameterText: str) -> list[str]:
    """The normalised signatures moc makes of a declaration: one per count of defaulted arguments."""
    parameters = _parameters(parameterText)
    required = sum(1 for _, default in parameters if not default)
    return [f"{name}({','.join(t for t, _ in parameters[:count])})" for count in range(len(parameters), required - 1, -1)]


DECLARATION = re.compile(
    r"(?:Q_INVOKABLE\s+)?(?:virtual\s+|static\s+|inline\s+|explicit\s+)*[\w:<>,\s\*&]*?\b(\w+)\s*\(([^()]*(?:\([^()]*\)[^()]*)*)\)\s*(?:const)?\s*(?:override)?\s*(?:=\s*0)?\s*[;{]"
)


def parseHeader(text: str, className: str) -> dict:
    """What PythonQt exposes of ``className``: its base, properties, signals, public slots, invokables."""
    text = _stripComments(text)
    match = re.search(rf"class\s+(?:\w+_EXPORT\s+)?{className}\s*:\s*public\s+([\w:]+)", text)
    if match is None:
        raise ValueError(f"no class {className}")
    start = text.index("{", match.end())
    depth, end = 0, start
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            break
    body = text[start + 1 : end]
    properties = {}
    for prop in re.finditer(r"Q_PROPERTY\(\s*([\w:<>\*\s]+?)\s+(\w+)\s+READ\s+\w+([^)]*)\)", body):
        properties[prop.group(2)] = [normalizeType(prop.group(1) + " x"), "WRITE" in prop.group(3)]
    enums = {}
    for enum in re.finditer(r"\benum\s+(\w+)\s*\{([^}]*)\}", body):
        values, last = {}, -1
        for item in enum.group(2).split(","):
            key, _, expression = item.partition("=")
            key, expression = key.strip(), expression.strip()
            if not key:
                continue
            if not expression:
                expression = str(last + 1)
            try:  # a literal or an expression of earlier enumerators (``Dirs | Files``)
                last = int(eval(expression, {"__builtins__": {}}, dict(values)))  # noqa: S307 (header text of a trusted mirror)
            except Exception:
                continue  # an expression of Qt's constants (QDir::Files): left out
            values[key] = last
        enums[enum.group(1)] = values
    signals, slots, invokables = [], [], []
    section = "private"
    for chunk in re.split(r"(\b(?:public|protected|private)\s*(?:Q_SLOTS|slots)?\s*:|\bQ_SIGNALS\s*:|\bsignals\s*:)", body):
        header = re.fullmatch(r"\b(public|protected|private)\s*(Q_SLOTS|slots)?\s*:|\b(Q_SIGNALS|signals)\s*:", chunk.strip())
        if header:
            section = "signals" if header.group(3) else (header.group(1) + (" slots" if header.group(2) else ""))
            continue
        flat = re.sub(r"\s+", " ", re.sub(r"Q_PROPERTY\([^)]*\)|Q_ENUMS?\([^)]*\)|Q_FLAGS?\([^)]*\)|Q_DECLARE_\w+\([^)]*\)", "", chunk))
        for declaration in DECLARATION.finditer(flat):
            name = declaration.group(1)
            if name in (className, f"~{className}") or name.isupper():  # constructors and macros (Q_UNUSED, ...)
                continue
            found = _signatures(name, declaration.group(2))
            if section == "signals":
                signals += found
            elif section == "public slots":
                slots += found
            elif section == "public" and "Q_INVOKABLE" in declaration.group(0):
                invokables += found
    return {
        "base": match.group(1),
        "properties": properties,
        "enums": enums,
        "signals": sorted(set(signals)),
        "slots": sorted(set(slots)),
        "invokables": sorted(set(invokables)),
    }


def decoratorMethods(text: str) -> dict[str, list[str]]:
    """Class → methods a PythonQt decorator header adds (normalised signatures, without ``self``)."""
    added: dict[str, list[str]] = {}
    body = _stripComments(text)
    for chunk in re.split(r"\bpublic\s+(?:Q_SLOTS|slots)\s*:", body)[1:]:
        flat = re.sub(r"\s+", " ", chunk.split("};")[0])
        for declaration in DECLARATION.finditer(flat):
            name, parameters = declaration.group(1), _parameters(declaration.group(2))
            static = re.fullmatch(r"static_(\w+?)_(\w+)", name)
            if static:
                className, method, rest = static.group(1), static.group(2), parameters
            elif parameters and parameters[0][0].endswith("*") and not name.startswith(("new_", "delete_")):
                className, method, rest = parameters[0][0][:-1], name, parameters[1:]
            else:
                continue
            added.setdefault(className, []).append(f"{method}({','.join(t for t, _ in rest)})")
    return added


def ctkRevision(slicerGit: str, revision: str) -> str:
    text = gitShow(slicerGit, revision, "SuperBuild/External_CTK.cmake")
    return re.search(r'"([0-9a-f]{40})"', text).group(1)


def guiAPI(slicerGit: str, ctkGit: str) -> dict:
    result = {}
    for version in GUI_TAGS:
        revision = TAGS[version]
        ctk = ctkRevision(slicerGit, revision)
        classes = {}
        for className, path in SLICER_HEADERS.items():
            classes[className] = {"header": path, **parseHeader(gitShow(slicerGit, revision, path), className)}
        for path in SLICER_DECORATORS:
            for className, methods in decoratorMethods(gitShow(slicerGit, revision, path)).items():
                if className in classes:
                    classes[className]["decorators"] = sorted(set(classes[className].get("decorators", []) + methods))
        for className, path in CTK_HEADERS.items():
            text = gitShow(ctkGit, ctk, path)
            if text is not None:
                classes[className] = {"header": path, **parseHeader(text, className)}
        result[version] = {
            "slicer": subprocess.run(["git", "--git-dir", slicerGit, "rev-parse", revision], capture_output=True, text=True).stdout.strip(),
            "ctk": ctk,
            "classes": classes,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slicer-git", required=True)
    parser.add_argument("--ctk-git", required=True)
    args = parser.parse_args()
    data = REPO_ROOT / "Testing" / "data"
    signaturesPath = data / "slicer-api-signatures.json"
    old = json.loads(signaturesPath.read_text())
    old["description"] = (
        "Signatures (parameter names only) of the functions of Slicer's Base/Python/slicer/util.py and packaging.py at the "
        "releases named and main, read by Testing/slicer/upstream/extract_api.py; PyTorchUtilsLogic from fepegar/SlicerPyTorch."
    )
    old["slicer"] = pythonAPI(args.slicer_git)
    signaturesPath.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")
    gui = {
        "description": "What PythonQt exposes of the CTK, qMRML and Slicer application classes the module reaches, read from their headers "
        "by "
        "Testing/slicer/upstream/extract_api.py: base class, Q_PROPERTYs (type, writable), signals, public slots and Q_INVOKABLE "
        "methods (moc-normalised signatures).",
        "releases": guiAPI(args.slicer_git, args.ctk_git),
    }
    (data / "slicer-gui-api.json").write_text(json.dumps(gui, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
