"""Real published models from their own packages: TAPS (lavlab-taps 1.1.2, MIT), imported from its ONNX file.

The package's wheel is downloaded once (``pip download --no-deps``; its dependencies are not
needed here) into a cache folder; offline without that cache the test skips with a message.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT
from MedSegUNetLib import cli

pytest.importorskip("onnxruntime", reason="the import extra is not installed")

TAPS = "lavlab-taps==1.1.2"
TAPS_ONNX = "taps/resources/model_v1.onnx"


def packageFile(requirement: str, member: str) -> Path:
    """A file of a package's wheel, downloaded once into the tests' cache folder."""
    cacheBase = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cacheBase / "medsegunet-tests" / "published" / requirement.replace("==", "-")
    target = folder / member
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder), requirement],
                              capture_output=True, text=True, timeout=900)
        wheels = sorted(folder.glob("*.whl"))
        if done.returncode != 0 or not wheels:
            pytest.skip(f"{requirement} could not be downloaded (offline?) and is not cached in {folder}")
        with zipfile.ZipFile(wheels[0]) as archive:
            archive.extract(member, folder)
    return target


@pytest.fixture(scope="module")
def taps_onnx() -> Path:
    return packageFile(TAPS, TAPS_ONNX)


def test_taps_onnx_imports_and_matches_onnxruntime(capsys, tmp_path, taps_onnx):
    """GroupNorm (8 groups, written as Reshape → InstanceNormalization → Reshape → Mul → Add) and Mish,
    deep-supervision heads the export removed: the imported network gives onnxruntime's logits."""
    import onnxruntime
    import torch

    card = REPO_ROOT / "Resources" / "Models" / "prostate-gland-taps" / "card.json"
    assert cli.main(["import", str(taps_onnx), "--card", str(card), "--output", str(tmp_path / "taps.pt")]) == 0, capsys.readouterr().err
    assert "matches onnxruntime" in capsys.readouterr().out
    sample = np.random.default_rng(5).standard_normal((1, 1, 128, 128, 32)).astype(np.float32)  # the graph's fixed window
    session = onnxruntime.InferenceSession(str(taps_onnx), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: sample})[0]
    with torch.no_grad():
        got = torch.jit.load(str(tmp_path / "taps.pt"))(torch.from_numpy(sample)).numpy()
    assert got.shape == expected.shape == (1, 1, 128, 128, 32)
    assert np.max(np.abs(got - expected)) < 1e-3 * float(np.ptp(expected))


def test_the_shipped_taps_entry_pulls_and_segments_prostatex(capsys, tmp_path, taps_onnx, monkeypatch, prostate_series):
    """``models pull prostate-gland-taps`` from the package's wheel (the cached one, as the only index),
    then ``segment --model prostate-gland-taps`` with the three series' ROI and the card's context."""
    import json

    from conftest import SHARED_DATA

    wheels = taps_onnx.parents[2]
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDSEGUNET_CATALOG", raising=False)
    assert cli.main(["models", "pull", "prostate-gland-taps"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    tra, sag, cor = prostate_series.values()
    reference = SHARED_DATA / "prostatex" / "labels" / "ProstateX-0000_gland_AI-Bosma22b.nii.gz"
    assert cli.main(["segment", "-q", "--model", "prostate-gland-taps", tra, "--roi-from", sag, cor, "--stats-json", str(tmp_path / "s.json"),
                     "--reference-seg", str(reference)]) == 0, capsys.readouterr().err
    (segment,) = json.loads((tmp_path / "s.json").read_text())["segments"]
    assert segment["name"] == "prostate" and segment["qc"] == "ok" and segment["dice"] > 0.78, segment
