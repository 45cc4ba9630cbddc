"""The engine's curated surface (``MedSegUNetLib.engine``): each name from its one module, imported on
first use, so that importing the package costs nothing; docs/api.md documents exactly these names,
and its example (docs/api_example.py) segments the real prostate case as the command line does."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys

import pytest
import SimpleITK as sitk

from conftest import PROSTATE_SERIES, PROSTATEX_0000_ROI, REPO_ROOT, requireSharedData
from MedSegUNetLib import engine


def runPython(code: str, cwd) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name, module", sorted(engine.API.items()))
def test_each_curated_name_is_its_modules_own(name, module):
    defining = importlib.import_module(f"MedSegUNetLib.engine.{module}")
    value = getattr(engine, name)
    assert value is getattr(defining, name)
    assert name in defining.__all__
    if hasattr(value, "__module__") and not name == "ProgressCallback":  # a typing alias reports typing
        assert value.__module__ == defining.__name__


def test_importing_the_package_imports_no_module(tmp_path):
    loaded = json.loads(
        runPython(
            "import json, sys\nimport MedSegUNetLib.engine\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('MedSegUNetLib.engine.', 'torch', 'numpy', 'SimpleITK')))))",
            tmp_path,
        )
    )
    assert loaded == []


def test_a_curated_name_imports_only_what_it_needs(tmp_path):
    # A request is a value: making one loads neither the network's libraries nor the image reader.
    loaded = json.loads(
        runPython(
            "import json, sys\nfrom MedSegUNetLib.engine import SegmentationRequest\nSegmentationRequest(marginMM=5)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('MedSegUNetLib.engine.', 'torch', 'monai', 'SimpleITK')))))",
            tmp_path,
        )
    )
    assert loaded == [
        "MedSegUNetLib.engine.cardview",
        "MedSegUNetLib.engine.errors",
        "MedSegUNetLib.engine.request",
        "MedSegUNetLib.engine.settings",
    ]


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'segment'"):
        engine.segment  # noqa: B018
    assert set(engine.API) <= set(dir(engine))


def test_the_api_page_documents_exactly_the_curated_surface():
    page = (REPO_ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    documented = re.findall(r"^::: MedSegUNetLib\.engine\.(\w+)\.(\w+)$", page, flags=re.M)
    assert sorted((name, module) for module, name in documented) == sorted(engine.API.items())


def test_the_api_example_segments_the_prostate_case(tmp_path):
    case = requireSharedData("prostatex", "ProstateX-0000")
    model = REPO_ROOT / "MedSegUNet" / "Resources" / "Models" / "prostate-zones" / "prostate-zones.pt"
    series = [str(case / name) for name in PROSTATE_SERIES]
    # From another working directory, with the output given relative to it.
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "docs" / "api_example.py"), str(model), "out", *series],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    low, high = PROSTATEX_0000_ROI
    assert done.stdout.splitlines() == [
        f"ROI: reference IJK {list(low)} to {list(high)}",
        "peripheral zone: 22.61 cm³",
        "transition zone: 18.53 cm³",
    ]
    document = json.loads((tmp_path / "out" / "result-statistics.json").read_text(encoding="utf-8"))
    assert document["schema"] == "medsegunet.statistics/1"
    assert [s["voxel_count"] for s in document["segments"]] == [30148, 24713]  # as medsegunet segment counts them
    # The segmentation is on the axial T2's grid (19 slices of 384 × 384), with those voxels.
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "result.seg.nrrd")))
    assert labels.shape == (19, 384, 384) and [int((labels == value).sum()) for value in (1, 2)] == [30148, 24713]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["result-statistics.json", "result.seg.nrrd"]
