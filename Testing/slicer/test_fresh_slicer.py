"""A fresh Slicer: only Slicer's own packages (numpy, SimpleITK, VTK, MRML) and none of ours.

Slicer 5.6–5.10 bundle neither jsonschema nor PyYAML, and torch, MONAI and SciPy arrive only with
the first Apply's install. Run in a separate process in which importing any of them fails, the
module's engine must still read every zoo card (structural validation, standard library only)
and pre-select the inputs and ROI series of a real study, so that Apply can be enabled.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, requireSharedData

BLOCKED = ("torch", "monai", "jsonschema", "yaml", "scipy")

FRESH_SLICER = r"""
import json, sys
for name in %(blocked)r:
    sys.modules[name] = None  # 'import name' now raises ImportError, as in a fresh Slicer
import slicer
from MedSegUNetLib.engine import modelcard
from MedSegUNetLib.slicer.nodes import addVolumeFromImage, suggestInputVolumes, suggestROIVolumes
from MedSegUNetLib.engine.volumes import readVolume

scene = slicer.vtkMRMLScene()
nodes = [addVolumeFromImage(scene, readVolume(path), name) for name, path in %(series)r]
found = {}
for path in %(models)r:
    card = modelcard.readCard(path)
    inputs = suggestInputVolumes(card, nodes)
    roi = suggestROIVolumes(inputs[0], nodes, card) if inputs[0] is not None else []
    found[card["name"]] = {"inputs": [n.GetName() if n else None for n in inputs], "roi": [n.GetName() for n in roi],
                           "summary": modelcard.cardSummary(card)}
loaded = sorted(name for name in %(blocked)r if sys.modules.get(name) is not None)
print(json.dumps({"found": found, "loaded": loaded}))
"""


def test_fresh_slicer_reads_every_zoo_card_and_suggests_inputs():
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    folder = requireSharedData("prostatex", "ProstateX-0000")
    series = [(name, str(folder / name)) for name in ("4-t2tsetra", "3-t2tsesag", "5-t2tsecor", "7-ep2ddifftraDYNDISTADC")]
    models = sorted(str(p) for p in (REPO_ROOT / "MedSegUNet" / "Resources" / "Models").glob("*/*.pt"))
    script = FRESH_SLICER % {"blocked": BLOCKED, "series": series, "models": models}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=str(REPO_ROOT))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert len(report["found"]) == len(models) == 5
    assert {name.split(" (")[0] for name in report["found"]} >= {"LGG FLAIR abnormality", "Heart on short-axis cine"}
    prostate = next(value for name, value in report["found"].items() if name.startswith("Prostate"))
    assert prostate["inputs"] == ["4-t2tsetra"] and sorted(prostate["roi"]) == ["3-t2tsesag", "5-t2tsecor"]
    for value in report["found"].values():
        assert "Inputs:" in value["summary"] and "Labels:" in value["summary"]
