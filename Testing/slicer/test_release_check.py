"""``Testing/release_check.py``, the maintainer's offline check before an Extensions Index submission."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "Testing" / "release_check.py"


def runCheck(*arguments: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=300, cwd=str(cwd or REPO_ROOT))


def test_the_release_check_passes_and_lists_every_upload(tmp_path):
    done = runCheck(cwd=tmp_path)  # from another working folder
    assert done.returncode == 0, done.stderr
    catalog = json.loads((REPO_ROOT / "MedSegUNet" / "MedSegUNetLib" / "models" / "catalog.json").read_text())
    uploads = [line.strip() for line in done.stdout.splitlines() if line.startswith("  models-")]
    expected = []
    for entry in catalog["models"]:
        for file in [entry, entry.get("pt2")] if "source" not in entry else []:
            if file:
                tag, name = file["url"].rsplit("/", 2)[-2:]
                expected.append(f"{tag}: {name}\t{file['bytes']}\t{file['sha256']}")
    assert sorted(uploads) == sorted(expected) and len(expected) == 10
    assert "Module dependencies: Markups, Segmentations, SubjectHierarchy, Tables" in done.stdout
    assert done.stdout.rstrip().endswith("All release checks passed.")


def mirrorOfTheRepository(tmp_path):
    """A copy of what the check reads, the zoo linked, so one file can be spoiled."""
    root = tmp_path / "repo"
    for relative in (
        "MedSegUNet.json",
        "CMakeLists.txt",
        "MedSegUNet/MedSegUNet.py",
        "MedSegUNet/MedSegUNetLib/models/catalog.json",
        "MedSegUNet/Resources/requirements.txt",
        "MedSegUNet/Resources/Icons/MedSegUNet.png",
        "Resources/Screenshots/MedSegUNet-overview-rendering.png",
    ):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes((REPO_ROOT / relative).read_bytes())
    os.symlink(REPO_ROOT / "MedSegUNet" / "Resources" / "Models", root / "MedSegUNet" / "Resources" / "Models")
    return root


@pytest.mark.parametrize(
    "spoil, problem",
    [
        (lambda root: _edit(root / "MedSegUNet/MedSegUNetLib/models/catalog.json", '"sha256": "', '"sha256": "0'), "the catalog says"),
        (
            lambda root: _edit(
                root / "MedSegUNet/MedSegUNetLib/models/catalog.json",
                '/releases/download/models-0.1.0/prostate-zones.pt"',
                '/releases/download/models-0.1.0/prostate-zones-v2.pt"',
            ),
            "no file prostate-zones-v2.pt in the zoo",
        ),
        (
            lambda root: _edit(root / "MedSegUNet/MedSegUNet.py", '"Tables"]', '"Tables", "MONAIAuto3DSeg"]'),
            "'MONAIAuto3DSeg', which is not a module",
        ),
        (lambda root: _edit(root / "CMakeLists.txt", "MedSegUNet-overview-rendering.png", "missing.png"), "not in this checkout"),
        (
            lambda root: _edit(root / "MedSegUNet/Resources/requirements.txt", "monai>=1.3", "monai>=1.3\nnumpy>=2"),
            "would replace Slicer's own ['numpy']",
        ),
    ],
    ids=["sha256", "asset", "dependency", "screenshot", "requirements"],
)
def test_the_release_check_can_fail(tmp_path, spoil, problem):
    root = mirrorOfTheRepository(tmp_path)
    assert runCheck("--root", str(root)).returncode == 0
    spoil(root)
    done = runCheck("--root", str(root))
    assert done.returncode == 1 and problem in done.stderr, done.stderr


def _edit(path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
