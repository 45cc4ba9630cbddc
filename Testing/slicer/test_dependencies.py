"""What the first Apply installs, found from package metadata, never by importing torch."""

from __future__ import annotations

import json
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


# A half-installed PyTorch (an empty namespace folder, or files without metadata) is "broken", not "ok".
PROBE = r"""
import json, os, sys
sys.path.insert(0, %(fake)r)
from MedSegUNetLib.slicer import dependencies
print(json.dumps({"status": dependencies.torchStatus(), "missing": dependencies.missingModules(), "torch": "torch" in sys.modules}))
"""


def test_broken_and_missing_torch_are_told_apart(tmp_path):
    (tmp_path / "torch").mkdir()  # what a failed install can leave: find_spec succeeds on it
    done = subprocess.run([sys.executable, "-S", "-c", PROBE % {"fake": str(tmp_path)}], capture_output=True, text=True, timeout=120,
                          cwd=str(REPO_ROOT), env={"PYTHONPATH": str(REPO_ROOT / "MedSegUNet")})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # -S: no site-packages, so no metadata: the empty folder is a broken PyTorch, and nothing was imported.
    assert report["status"] == "broken" and report["torch"] is False
    assert set(report["missing"]) == set(dependencies.REQUIRED)
    assert dependencies.torchStatus() == "ok"  # this test environment's real PyTorch


def test_devices_are_asked_of_the_worker(python_slicer):
    from MedSegUNetLib.slicer.logic import availableDevices
    from MedSegUNetLib.slicer.worker import WorkerProcess

    worker = WorkerProcess(python_slicer)
    try:
        devices = availableDevices(worker)
        assert devices["cpu"] and devices["auto"] and set(devices) == {"auto", "cuda", "mps", "cpu"}
        import torch

        assert devices["cuda"] == torch.cuda.is_available()
    finally:
        worker.close()
