"""Checks a maintainer runs before submitting the extension to the Slicer Extensions Index, offline.

    python Testing/release_check.py            # report; exit status 1 when something is wrong

It checks:

- the description file ``MedSegUNet.json`` against the index's schema (kept in ``Testing/data``), and
  that it names the same repository and build dependencies as ``CMakeLists.txt``;
- the icon and screenshot URLs of ``CMakeLists.txt``: each names a file of this repository on its
  ``main`` branch, present here, a PNG (the icon 128 × 128);
- the model catalog (``MedSegUNet/MedSegUNetLib/models/catalog.json``): every file URL names a
  release asset of this repository whose local twin (the zoo's file of that name, shipped with the
  extension) has the catalog's SHA256 and size; published models name their own source;
- the module's dependencies (``MedSegUNet.py``'s ``parent.dependencies``) are Slicer core modules,
  and ``Resources/requirements.txt`` leaves Slicer's own packages (torch, numpy, SimpleITK, VTK,
  pydicom, Pillow) alone;

then prints what would be submitted: the description file, and per release tag the files to upload
(name, bytes, SHA256) before the pull request to Slicer/ExtensionsIndex.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import struct
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA = REPO_ROOT / "Testing" / "data" / "slicer-extension-catalog-entry-schema-v1.0.1.json"
# Modules every Slicer build has (Modules/Loadable and Modules/Scripted of Slicer/Slicer).
SLICER_CORE_MODULES = {
    "Markups",
    "Segmentations",
    "SubjectHierarchy",
    "Tables",
    "Volumes",
    "Data",
    "Models",
    "Transforms",
    "Colors",
    "Terminologies",
    "SampleData",
    "DICOM",
    "SegmentEditor",
    "SegmentStatistics",
    "Sequences",
    "Plots",
    "Texts",
}
SLICER_PACKAGES = {"torch", "numpy", "simpleitk", "vtk", "pydicom", "pillow"}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cmakeVariables(text: str) -> dict[str, str]:
    return {name: value for name, value in re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"', text)}


def pngSize(path: Path) -> tuple[int, int] | None:
    header = path.read_bytes()[:24]
    if header[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return struct.unpack(">II", header[16:24])


class Report:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def check(self, condition: bool, problem: str) -> bool:
        if not condition:
            self.problems.append(problem)
        return condition


def checkDescription(root: Path, report: Report) -> dict:
    description = json.loads((root / "MedSegUNet.json").read_text(encoding="utf-8"))
    try:
        import jsonschema

        jsonschema.validate(description, json.loads(SCHEMA.read_text(encoding="utf-8")))
    except ImportError:
        report.check(False, "jsonschema is not installed: the description file's schema was not checked (pip install jsonschema)")
    except Exception as error:  # jsonschema.ValidationError
        report.check(False, f"MedSegUNet.json does not follow the index's schema: {str(error).splitlines()[0]}")
    cmake = cmakeVariables((root / "CMakeLists.txt").read_text(encoding="utf-8"))
    repository = description["scm_url"].removesuffix(".git").rstrip("/")
    report.check(
        cmake.get("EXTENSION_HOMEPAGE", "").startswith(repository),
        f"the CMake homepage {cmake.get('EXTENSION_HOMEPAGE')!r} is not on {repository}",
    )
    depends = [] if cmake.get("EXTENSION_DEPENDS", "NA") == "NA" else cmake["EXTENSION_DEPENDS"].split()
    report.check(
        sorted(depends) == sorted(description.get("build_dependencies", [])),
        f"CMakeLists.txt depends on {depends}, MedSegUNet.json on {description.get('build_dependencies', [])}",
    )
    raw = repository.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    urls = [("icon", cmake.get("EXTENSION_ICONURL", ""))] + [
        ("screenshot", url) for url in cmake.get("EXTENSION_SCREENSHOTURLS", "").split()
    ]
    for kind, url in urls:
        if not report.check(url.startswith(raw), f"the {kind} URL {url!r} is not a file of {repository} on main"):
            continue
        local = root / url[len(raw) :]
        if report.check(local.is_file(), f"the {kind} URL names {local.relative_to(root)}, which is not in this checkout"):
            size = pngSize(local)
            report.check(size is not None, f"the {kind} {local.name} is not a PNG")
            if kind == "icon" and size is not None:
                report.check(size == (128, 128), f"the icon is {size[0]} × {size[1]}, the index wants 128 × 128")
    return description


def releaseAssets(root: Path, description: dict, report: Report) -> dict[str, list[tuple[str, int, str]]]:
    """Per release tag, the (file name, bytes, SHA256) the catalog's URLs need uploaded."""
    catalog = json.loads((root / "MedSegUNet" / "MedSegUNetLib" / "models" / "catalog.json").read_text(encoding="utf-8"))
    repository = description["scm_url"].removesuffix(".git").rstrip("/")
    zoo = root / "MedSegUNet" / "Resources" / "Models"
    twins = {path.name: path for path in zoo.glob("*/*") if path.is_file()}
    uploads: dict[str, list[tuple[str, int, str]]] = {}
    for entry in catalog["models"]:
        if "source" in entry:
            report.check(entry["source"].get("sha256") is not None, f"published model {entry['name']} names no SHA256 of its source")
            continue
        files = [(entry["url"], entry["sha256"], entry.get("bytes"))]
        if "pt2" in entry:
            files.append((entry["pt2"]["url"], entry["pt2"]["sha256"], entry["pt2"].get("bytes")))
        for url, checksum, size in files:
            match = re.fullmatch(re.escape(repository) + r"/releases/download/([^/]+)/([^/]+)", url)
            if not report.check(match is not None, f"{entry['name']}: {url} is not a release asset of {repository}"):
                continue
            tag, name = match.groups()
            twin = twins.get(name)
            if not report.check(twin is not None, f"{entry['name']}: no file {name} in the zoo to upload as {url}"):
                continue
            actual = sha256(twin)
            report.check(
                actual == checksum,
                f"{entry['name']}: {twin.relative_to(root)} has SHA256 {actual[:12]}…, the catalog says {checksum[:12]}…",
            )
            report.check(
                size is None or twin.stat().st_size == size,
                f"{entry['name']}: {twin.name} has {twin.stat().st_size} bytes, the catalog says {size}",
            )
            uploads.setdefault(tag, []).append((name, twin.stat().st_size, actual))
    return uploads


def checkModule(root: Path, report: Report) -> list[str]:
    tree = ast.parse((root / "MedSegUNet" / "MedSegUNet.py").read_text(encoding="utf-8"))
    dependencies = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(ast.unparse(target) == "self.parent.dependencies" for target in node.targets):
            dependencies = ast.literal_eval(node.value)
    for name in dependencies:
        report.check(name in SLICER_CORE_MODULES, f"the module depends on '{name}', which is not a module of every Slicer")
    requirements = (root / "MedSegUNet" / "Resources" / "requirements.txt").read_text(encoding="utf-8")
    names = {
        re.split(r"[<>=!~\[; ]", line.split("#")[0].strip())[0].lower() for line in requirements.splitlines() if line.split("#")[0].strip()
    }
    report.check(not names & SLICER_PACKAGES, f"requirements.txt would replace Slicer's own {sorted(names & SLICER_PACKAGES)}")
    return dependencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Offline checks before submitting MedSegUNet to the Slicer Extensions Index.")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="the repository to check (default: this one)")
    args = parser.parse_args(argv)
    report = Report()
    description = checkDescription(args.root, report)
    uploads = releaseAssets(args.root, description, report)
    dependencies = checkModule(args.root, report)
    print("Description file to add to Slicer/ExtensionsIndex (MedSegUNet.json):")
    print(json.dumps(description, indent=2))
    print(
        f"Module dependencies: {', '.join(dependencies) or 'none'}; extension dependencies: "
        f"{', '.join(description.get('build_dependencies', [])) or 'none'}"
    )
    print("Release assets to upload before the pull request (tag: file, bytes, SHA256):")
    for tag, files in sorted(uploads.items()):
        for name, size, checksum in files:
            print(f"  {tag}: {name}\t{size}\t{checksum}")
    if report.problems:
        print(f"{len(report.problems)} problem(s):", file=sys.stderr)
        for problem in report.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print("All release checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
