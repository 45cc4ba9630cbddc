"""The engine imports without torch, MONAI, Qt or Slicer; ``medsegunet --help`` is fast."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import MedSegUNetLib
from conftest import medsegunetCommand

# The widget is the module's Qt code (it runs in Slicer only); the static tests read it.
QT_MODULES = {"slicer.widget"}
MODULES = sorted(
    info.name.removeprefix("MedSegUNetLib.")
    for info in pkgutil.walk_packages(MedSegUNetLib.__path__, "MedSegUNetLib.")
    if not info.ispkg and info.name.removeprefix("MedSegUNetLib.") not in QT_MODULES
)
PACKAGES = {"engine", "models", "cohorts", "slicer", "commands"}
FORBIDDEN = ("torch", "monai", "qt", "slicer", "ctk", "PythonQt", "vtk")

CHECK = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
roots = sorted({name.split('.')[0] for name in sys.modules})
print(json.dumps(roots))
"""


def test_every_package_and_engine_module_is_there():
    # Four packages by concern, the commands and the command line on top.
    assert {info.name for info in pkgutil.iter_modules(MedSegUNetLib.__path__) if info.ispkg} == PACKAGES
    assert {
        "engine.errors",
        "engine.geometry",
        "engine.volumes",
        "engine.modelcard",
        "engine.preprocessing",
        "engine.inference",
        "engine.pipeline",
        "engine.statistics",
        "engine.outputs",
        "models.phantoms",
        "cli",
    } <= set(MODULES)
    # Qt is imported only by the widget: every other module keeps off it (checked below).
    assert QT_MODULES <= {
        info.name.removeprefix("MedSegUNetLib.") for info in pkgutil.walk_packages(MedSegUNetLib.__path__, "MedSegUNetLib.")
    }


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_without_heavy_packages(module):
    done = subprocess.run([sys.executable, "-c", CHECK, f"MedSegUNetLib.{module}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    roots = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert not roots & set(FORBIDDEN), f"MedSegUNetLib.{module} imports {sorted(roots & set(FORBIDDEN))}"


def helpCommand() -> list[str]:
    return medsegunetCommand()


def test_help_loads_nothing_heavy():
    """``medsegunet --help`` answers at once because it imports no torch, MONAI, SciPy or
    matplotlib, the seconds-long imports (checked by what it loads, not by a clock: machines differ)."""
    code = (
        "import json, sys\nfrom MedSegUNetLib import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "segment" in done.stdout and "roi" in done.stdout
    roots = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert not roots & {"torch", "monai", "scipy", "matplotlib", "skimage", "ray", "onnx"}, sorted(roots)
    # The installed command answers too.
    assert subprocess.run([*helpCommand(), "--help"], capture_output=True, text=True, timeout=120).returncode == 0
