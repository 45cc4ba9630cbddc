"""What the first Apply installs, found from package metadata, never by importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT
from MedSegUNetLib.slicer import dependencies


def test_constraints_pin_the_present_torch_numpy_simpleitk_and_vtk():
    import importlib.metadata

    lines = dependencies.constraintsText().splitlines()
    pinned = dict(line.split("==") for line in lines)
    for name in ("torch", "numpy", "SimpleITK"):
        assert pinned[name] == importlib.metadata.version(name)
    path = dependencies.writeConstraints()
    with open(path, encoding="utf-8") as stream:
        assert stream.read().splitlines() == lines
    os.remove(path)


# A half-installed PyTorch (an empty namespace folder, or files without metadata) is "broken", not "ok".
PROBE = r"""
import json, os, sys
sys.path.insert(0, %(fake)r)
from MedSegUNetLib.slicer import dependencies
print(json.dumps({"status": dependencies.torchStatus(), "missing": dependencies.missingModules(), "torch": "torch" in sys.modules}))
"""


def test_broken_and_missing_torch_are_told_apart(tmp_path):
    (tmp_path / "torch").mkdir()  # what a failed install can leave: find_spec succeeds on it
    done = subprocess.run(
        [sys.executable, "-S", "-c", PROBE % {"fake": str(tmp_path)}],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO_ROOT),
        env={"PYTHONPATH": str(REPO_ROOT / "MedSegUNet")},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # -S: no site-packages, so no metadata: the empty folder is a broken PyTorch, and nothing was imported.
    assert report["status"] == "broken" and report["torch"] is False
    assert set(report["missing"]) == set(dependencies.REQUIRED)
    assert dependencies.torchStatus() == "ok"  # this test environment's real PyTorch


def test_devices_are_asked_of_the_worker(python_slicer):
    from MedSegUNetLib.slicer.job import availableDevices
    from MedSegUNetLib.slicer.worker import WorkerProcess

    worker = WorkerProcess(python_slicer)
    try:
        devices = availableDevices(worker)
        assert devices["cpu"] and devices["auto"] and set(devices) == {"auto", "cuda", "mps", "cpu"}
        import torch

        assert devices["cuda"] == torch.cuda.is_available()
    finally:
        worker.close()


def test_an_old_torch_is_installed_again_and_never_imported(tmp_path):
    # A PyTorch below the minimum, as pip leaves it (package and metadata): too old for the engine.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('this old torch must not be imported')\n")
    info = tmp_path / "torch-1.13.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 1.13.1\n")
    probe = PROBE.replace(
        '"torch": "torch" in sys.modules}', '"torch": "torch" in sys.modules, "install": dependencies.missingForSlicer()}'
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe % {"fake": str(tmp_path)}],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO_ROOT),
        env={"PYTHONPATH": str(REPO_ROOT / "MedSegUNet")},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "old" and report["install"][0] == "torch" and report["torch"] is False
    assert dependencies.versionTuple("2.13.0+cpu") == (2, 13, 0) and dependencies.versionTuple("2.1") >= dependencies.versionTuple(
        dependencies.TORCH_MINIMUM
    )


def test_the_constraints_file_is_removed_whatever_pip_does(tmp_path, monkeypatch):
    import tempfile

    import pytest

    from MedSegUNetLib.engine.errors import MedSegUNetError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # slicer-core's slicer.util.pip_install has no application to run PythonSlicer with here: it fails, as pip
    # may, and the constraints file written for it must go all the same.
    with pytest.raises(MedSegUNetError, match="Installing the Python packages failed"):
        dependencies.installRequirements(["no-such-package-of-medsegunet"])
    assert list(tmp_path.iterdir()) == []
