"""A rerun of ``batch`` trusts a finished case only while its outputs are what the run wrote: the
manifest records each output's size and SHA256, and a case whose files were cut, edited or
removed is redone; a damaged manifest is recognised and redone; a manifest or summary that is a
FIFO never blocks the run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_batch import cohort, readLabels  # noqa: F401 (the module's cohort fixture)

from conftest import REPO_ROOT
from MedSegUNetLib import cli
from MedSegUNetLib.engine.paths import sha256


@pytest.fixture()
def a_finished_run(cohort, tmp_path):  # noqa: F811
    """One phantom case, segmented once; returns the command and the case folder."""
    cases = tmp_path / "cases"
    cases.mkdir()
    os.symlink(cohort["cases"] / "phantom", cases / "phantom")
    out = tmp_path / "out"
    argv = ["batch", "-q", "--model", cohort["model"], "--cases", str(cases), "--output", str(out), "--device", "cpu"]
    assert cli.main(argv) == 0
    return {"argv": argv, "out": out, "case": out / "phantom"}


def statusOf(out) -> str:
    with open(out / "summary.csv", newline="") as stream:
        (row,) = list(csv.DictReader(stream))
    return row["status"]


def test_the_manifest_records_every_outputs_size_and_sha256(a_finished_run):
    case = a_finished_run["case"]
    manifest = json.loads((case / "manifest.json").read_text())
    names = {"phantom.seg.nrrd", "phantom-statistics.csv", "phantom-statistics.json", "phantom-qc.png"}
    assert set(manifest["output_files"]) == names
    for name, record in manifest["output_files"].items():
        assert record == {"bytes": (case / name).stat().st_size, "sha256": sha256(case / name)}, name


# [how an output is damaged after the run]
DAMAGES = {
    "cut-in-half": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "one-byte-changed": lambda path: path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1])),
    "removed": lambda path: path.unlink(),
}


@pytest.mark.parametrize(
    "damage, name", [("cut-in-half", "phantom.seg.nrrd"), ("one-byte-changed", "phantom-statistics.json"), ("removed", "phantom-qc.png")]
)
def test_a_case_whose_output_changed_is_redone(a_finished_run, damage, name):
    case = a_finished_run["case"]
    labels = readLabels(case / "phantom.seg.nrrd")
    assert cli.main(a_finished_run["argv"]) == 0 and statusOf(a_finished_run["out"]) == "skipped"
    DAMAGES[damage](case / name)
    assert cli.main(a_finished_run["argv"]) == 0
    assert statusOf(a_finished_run["out"]) == "ok"  # redone, not skipped
    np.testing.assert_array_equal(readLabels(case / "phantom.seg.nrrd"), labels)
    manifest = json.loads((case / "manifest.json").read_text())
    assert all(record["sha256"] == sha256(case / output) for output, record in manifest["output_files"].items())


@pytest.mark.parametrize(
    "manifest", ['{"format": "medsegunet.batch-case/1", "model": ', "", "[1, 2]", '"a string"'], ids=["cut", "empty", "a-list", "a-string"]
)
def test_a_case_whose_manifest_is_damaged_is_recognised_and_redone(a_finished_run, manifest):
    (a_finished_run["case"] / "manifest.json").write_text(manifest)
    assert cli.main(a_finished_run["argv"]) == 0
    assert statusOf(a_finished_run["out"]) == "ok"
    assert json.loads((a_finished_run["case"] / "manifest.json").read_text())["format"] == "medsegunet.batch-case/1"


@pytest.mark.parametrize("which", ["manifest", "summary"])
def test_a_fifo_in_place_of_the_manifest_or_summary_never_blocks(a_finished_run, which):
    """In a subprocess with a time limit: a FIFO opened for reading would block forever."""
    target = a_finished_run["case"] / "manifest.json" if which == "manifest" else a_finished_run["out"] / "summary.csv"
    target.unlink()
    os.mkfifo(target)
    done = subprocess.run(
        [sys.executable, "-m", "MedSegUNetLib.cli", *a_finished_run["argv"]],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "MedSegUNet")},
    )
    assert done.returncode == 0, done.stderr
    # A FIFO manifest: the case folder is still recognised by its outputs, and redone.
    assert statusOf(a_finished_run["out"]) == ("ok" if which == "manifest" else "skipped")
    assert target.is_file() and not target.is_fifo()
