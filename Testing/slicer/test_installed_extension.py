"""The extension as the Extensions Manager installs it: the files ``MedSegUNet/CMakeLists.txt`` lists,
laid out as ``ctkMacroCompilePythonScript`` copies them, and nothing from this checkout.

From that folder alone (it comes first on ``PYTHONPATH``; the test checks that the package is
imported from there), the catalog finds the zoo it ships, ``models list`` says so, the panel's list
says so, and the module's logic segments ProstateX-0000 with a shipped model, offline (an empty
cache, no catalog download), through its worker process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT

ZOO = ("prostate-zones", "brain-tumor-3d", "brain-tumor-2d", "lgg-flair", "acdc-heart")

INSTALLED_RUN = r"""
import json, sys
import MedSegUNetLib
from MedSegUNetLib.models import catalog
from MedSegUNetLib.engine.volumes import readVolume
import slicer
from MedSegUNetLib.slicer.nodes import addVolumeFromImage
from MedSegUNetLib.slicer.modulelogic import ModuleLogic
from MedSegUNetLib.slicer import selftest

choices = catalog.catalogChoices()
scene = slicer.vtkMRMLScene()
nodes = [addVolumeFromImage(scene, readVolume(path), name) for name, path in %(series)r]
logic = ModuleLogic(scene, %(requirements)r, workerExecutable=sys.executable, cachePath=%(cache)r, testing=True)
path = logic.pullCatalogModel("prostate-zones")
result = logic.process([nodes[0]], path, roiVolumes=nodes[1:], device="cpu")
labels = selftest.segmentationLabelArray(scene, result.segmentationNode, nodes[0])
logic.close()
print(json.dumps({"package": MedSegUNetLib.__file__, "choices": choices, "model": path,
                  "counts": [int((labels == index + 1).sum()) for index in range(2)]}))
"""


def installedEnvironment(folder, cache) -> dict:
    return {**os.environ, "PYTHONPATH": str(folder), "MEDSEGUNET_CACHE": str(cache), "MEDSEGUNET_CATALOG": ""}


def test_the_layout_holds_what_cmake_lists_and_the_zoo(an_installed_extension, cmake_record):
    shipped = sorted(p.relative_to(an_installed_extension).as_posix() for p in an_installed_extension.rglob("*") if p.is_file())
    assert shipped == sorted([*cmake_record["SCRIPT"], *cmake_record["RESOURCE"]])
    for name in ZOO:
        for suffix in (".pt", ".pt2"):
            assert (an_installed_extension / "Resources" / "Models" / name / f"{name}{suffix}").is_file()
    # The zoo's curves and sheets stay in the repository: the only picture is the module's icon.
    assert [p.relative_to(an_installed_extension).as_posix() for p in an_installed_extension.rglob("*.png")] == [
        "Resources/Icons/MedSegUNet.png"
    ]


def test_models_list_from_the_installed_extension_says_the_zoo_is_shipped(an_installed_extension, tmp_path):
    code = (
        "import sys, MedSegUNetLib; print(MedSegUNetLib.__file__); from MedSegUNetLib.cli import main; sys.exit(main(['models', 'list']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
        env=installedEnvironment(an_installed_extension, tmp_path / "cache"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith(str(an_installed_extension))
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[2:]}
    assert {name: rows[name][3] for name in ZOO} == {name: "shipped" for name in ZOO}
    assert rows["prostate-gland-taps"][3] == "-" and not (tmp_path / "cache").exists()


def test_the_installed_extension_segments_offline_with_a_shipped_model(an_installed_extension, tmp_path, prostate_series):
    series = list(prostate_series.items())
    script = INSTALLED_RUN % {
        "series": series,
        "requirements": str(an_installed_extension / "Resources" / "requirements.txt"),
        "cache": str(tmp_path / "slicer-cache"),
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
        env=installedEnvironment(an_installed_extension, tmp_path / "cache"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["package"].startswith(str(an_installed_extension))
    assert report["model"] == str(an_installed_extension / "Resources" / "Models" / "prostate-zones" / "prostate-zones.pt")
    panel = dict((name, text) for text, name in report["choices"])
    assert all("(included)" in panel[name] for name in ZOO) and "(download on first use)" in panel["prostate-gland-taps"]
    assert not (tmp_path / "slicer-cache").exists() and not (tmp_path / "cache").exists()  # nothing was downloaded
    # The same voxels as the command line of this checkout gives with the same model.
    from MedSegUNetLib import cli

    stats = tmp_path / "stats.json"
    model = REPO_ROOT / "MedSegUNet" / "Resources" / "Models" / "prostate-zones" / "prostate-zones.pt"
    assert (
        cli.main(
            ["segment", "-q", "--model", str(model), series[0][1], "--roi-from", series[1][1], series[2][1], "--stats-json", str(stats)]
        )
        == 0
    )
    expected = [segment["voxel_count"] for segment in json.loads(stats.read_text())["segments"]]
    assert report["counts"] == expected and min(expected) > 1000
