"""The engine imports without torch, MONAI, Qt or Slicer; ``medsegunet --help`` is fast."""

from __future__ import annotations

import json
import pkgutil
import shutil
import subprocess
import sys
import time

import pytest

import MedSegUNetLib

# The widget is the module's Qt code (it runs in Slicer only); the static tests read it.
QT_MODULES = {"widget"}
MODULES = sorted(info.name for info in pkgutil.iter_modules(MedSegUNetLib.__path__) if info.name not in QT_MODULES)
FORBIDDEN = ("torch", "monai", "qt", "slicer", "ctk", "PythonQt", "vtk")

CHECK = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
roots = sorted({name.split('.')[0] for name in sys.modules})
print(json.dumps(roots))
"""


def test_every_engine_module_is_listed():
    # The package stays flat and holds the modules the engine needs.
    assert {"errors", "geometry", "volumes", "modelcard", "preprocessing", "inference", "pipeline", "statistics", "outputs", "phantoms", "cli"} <= set(MODULES)
    assert not any(info.ispkg for info in pkgutil.iter_modules(MedSegUNetLib.__path__))
    # Qt is imported only by the widget: every other module keeps off it (checked below).
    assert QT_MODULES <= {info.name for info in pkgutil.iter_modules(MedSegUNetLib.__path__)}


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_without_heavy_packages(module):
    done = subprocess.run([sys.executable, "-c", CHECK, f"MedSegUNetLib.{module}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    roots = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert not roots & set(FORBIDDEN), f"MedSegUNetLib.{module} imports {sorted(roots & set(FORBIDDEN))}"


def helpCommand() -> list[str]:
    executable = shutil.which("medsegunet")
    return [executable] if executable else [sys.executable, "-m", "MedSegUNetLib.cli"]


def test_help_is_fast():
    command = helpCommand()
    subprocess.run([*command, "--help"], capture_output=True, timeout=60)  # warm the file cache
    start = time.perf_counter()
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert "segment" in done.stdout and "roi" in done.stdout
    assert elapsed < 3.0, f"medsegunet --help took {elapsed:.2f} s"


@pytest.mark.parametrize("subcommand", ["roi", "segment"])
def test_subcommand_help(subcommand):
    done = subprocess.run([*helpCommand(), subcommand, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage: medsegunet" in done.stdout
