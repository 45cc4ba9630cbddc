"""The README's shell examples run as written, and do what the README says they do.

Each ``bash`` block of the README that runs on real data is executed as it stands by ``bash -e``,
in a scratch folder laid out like a checkout (``Resources`` and ``../shared`` beside it), with
stderr not a terminal (a log): the test then compares what the README promises (outputs under
``out/``, progress lines on stdout, the ROI's figures, names) with what happened.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROSTATEX_0000_ROI, REPO_ROOT, requireSharedData

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def bashBlocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.DOTALL)


def blockWith(words: str) -> str:
    found = [block for block in bashBlocks(README) if words in block]
    assert len(found) == 1, f"the README has {len(found)} bash blocks with {words!r}"
    return found[0]


@pytest.fixture
def a_checkout(tmp_path) -> Path:
    """``tmp/repo`` with the repository's Resources, and ``tmp/shared`` → the real shared data."""
    requireSharedData("prostatex", "ProstateX-0000")
    checkout = tmp_path / "repo"
    checkout.mkdir()
    os.symlink(REPO_ROOT / "Resources", checkout / "Resources")
    os.symlink(REPO_ROOT.parent / "shared", tmp_path / "shared")
    return checkout


def runBlock(block: str, folder: Path, environment: dict | None = None) -> subprocess.CompletedProcess:
    prelude = "" if shutil.which("medsegunet") else f'medsegunet() {{ "{sys.executable}" -m MedSegUNetLib.cli "$@"; }}\n'
    return subprocess.run(["bash", "-e", "-c", prelude + block], cwd=folder, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(environment or {})}, stdin=subprocess.DEVNULL)


def test_the_prostate_example(a_checkout, tmp_path):
    block = blockWith("P=../shared/data/prostatex/ProstateX-0000")
    done = runBlock(block, a_checkout, {"MEDSEGUNET_CACHE": str(tmp_path / "cache"), "MEDSEGUNET_CATALOG": ""})
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # no warning on the README's own example
    # roi: its JSON, compact (lists of numbers on one line), with the exact three-series ROI.
    start = done.stdout.index("{")
    document, end = json.JSONDecoder().raw_decode(done.stdout[start:])
    assert [document["ijk_min"], document["ijk_max"]] == [list(PROSTATEX_0000_ROI[0]), list(PROSTATEX_0000_ROI[1])]
    assert done.stdout[start:start + end].count("\n") < 30
    # segment: progress lines in the log, then the outputs under out/ (which git ignores).
    log = done.stdout[start + end:]
    assert "[  0%] Loading model and volumes" in log and "[100%] Done" in log
    out = a_checkout / "out"
    assert sorted(path.name for path in out.iterdir()) == ["zones-by-name.seg.nrrd", "zones.csv", "zones.json", "zones.png", "zones.seg.nrrd"]
    report = json.loads((out / "zones.json").read_text())
    assert [segment["name"] for segment in report["segments"]] == ["peripheral zone", "transition zone"]
    assert all(segment["qc"] == "ok" and segment["dice"] > 0.5 for segment in report["segments"]), report["segments"]
    rows = list(csv.DictReader((out / "zones.csv").open(encoding="utf-8")))
    assert [row["Segment"] for row in rows] == ["peripheral zone", "transition zone"]
    assert subprocess.run(["git", "check-ignore", "-q", "out/zones.csv"], cwd=REPO_ROOT).returncode == 0
    # By name: the catalog's prostate-zones is the zoo file, offline, with the same labels.
    import slicerio

    assert [s["name"] for s in slicerio.read_segmentation(str(out / "zones-by-name.seg.nrrd"))["segments"]] == ["peripheral zone", "transition zone"]
    assert not (tmp_path / "cache").exists()


def test_the_batch_example(a_checkout):
    done = runBlock(blockWith("medsegunet batch"), a_checkout)
    assert done.returncode == 0, done.stderr
    table = [line.split("\t") for line in done.stdout.splitlines() if line.startswith(("case\t", "ProstateX-"))]
    assert table[0][:2] == ["case", "T2"] and {row[0] for row in table[1:3]} == {"ProstateX-0000", "ProstateX-0001"}
    assert done.stdout.strip().splitlines()[-1] == "2 cases: 2 ok, 0 skipped, 0 failed"
    summary = list(csv.DictReader((a_checkout / "out" / "cohort-output" / "summary.csv").open(encoding="utf-8")))
    assert [row["qc"] for row in summary] == ["ok", "ok"]
    assert subprocess.run(["git", "check-ignore", "-q", "out/cohort-output/summary.csv"], cwd=REPO_ROOT).returncode == 0


def test_the_quick_start_demo_prints_progress_in_a_log(a_checkout):
    command = next(line for line in blockWith("medsegunet demo").splitlines() if line.strip())
    demo = command[command.index("medsegunet demo"):]
    done = runBlock(demo, a_checkout)
    assert done.returncode == 0, done.stderr
    assert "[  0%] Loading model and volumes" in done.stdout and "[100%] Done" in done.stdout
    # The ROI as roi reports it: 68.5 mm along i.
    assert "ROI 68.5 × 45.0 × 57.0 mm" in done.stdout, done.stdout
    assert len(list((a_checkout / "demo-output").iterdir())) == 4
