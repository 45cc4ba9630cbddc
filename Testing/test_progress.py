"""Progress where a user waits: on a real pseudo-terminal a tqdm bar that moves, in a log one plain
line per step, in the order the steps run (``segment``, ``batch``, ``import``; ``models pull`` is in
``models/test_catalog.py``)."""

from __future__ import annotations

import io
import re
import sys

import pytest
import SimpleITK as sitk

from conftest import aTerminalOnStderr, smallObliquePhantom
from MedSegUNetLib import cli
from MedSegUNetLib.engine.pipeline import Stage
from MedSegUNetLib.models.verification import ImportStage

LABELS = [(1, "bright", (1.0, 1.0, 0.0))]


@pytest.fixture
def a_small_case(tmp_path, a_threshold_model) -> dict:
    """An oblique phantom (20 × 18 × 8 voxels) as ``cases/{a,b}/image.nrrd`` and a threshold model
    with a patch smaller than the volume (several batches)."""
    image = smallObliquePhantom()
    for case in ("a", "b"):
        (tmp_path / "cases" / case).mkdir(parents=True)
        sitk.WriteImage(image, str(tmp_path / "cases" / case / "image.nrrd"))
    model = a_threshold_model((0.5,), LABELS, patchSize=(8, 8, 4))
    return {
        "volume": str(tmp_path / "cases" / "a" / "image.nrrd"),
        "cases": str(tmp_path / "cases"),
        "model": model,
        "out": tmp_path / "out",
    }


def runOnATerminal(monkeypatch, argv: list) -> tuple[int, str, str]:
    """``cli.main(argv)`` with stderr on a pseudo-terminal: (exit status, stdout, what the terminal showed)."""
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    with aTerminalOnStderr(monkeypatch) as terminal:
        code = cli.main([str(item) for item in argv])
    return code, sys.stdout.getvalue(), terminal


def assertABarThatMoved(terminal, least: int = 4) -> None:
    """Redrawn in place (carriage returns), never going back, through at least ``least`` values."""
    assert "\r" in terminal.text, terminal.text
    assert len(set(terminal.percentages)) >= least and terminal.percentages == sorted(terminal.percentages), terminal.percentages


def logSteps(out: str) -> list[tuple[int, str]]:
    """The ``[ 45%] message`` lines of a log: (percent, message)."""
    return [(int(percent), message) for percent, message in re.findall(r"^\[\s*(\d+)%\] (.*)$", out, re.MULTILINE)]


def test_segment_draws_a_moving_bar_on_a_terminal(monkeypatch, a_small_case):
    code, out, terminal = runOnATerminal(
        monkeypatch,
        ["segment", a_small_case["volume"], "--model", a_small_case["model"], "--output", a_small_case["out"].with_suffix(".seg.nrrd")],
    )
    assert code == 0
    assertABarThatMoved(terminal)
    assert "Running the network" in terminal.text and terminal.percentages[-1] >= 97
    # On a terminal the log lines are not printed as well: stdout has the summary only.
    assert logSteps(out) == [] and out.startswith("Wrote ")


def test_segment_logs_every_stage_once_in_the_order_they_run(capsys, a_small_case):
    assert (
        cli.main(
            [
                "segment",
                a_small_case["volume"],
                "--model",
                a_small_case["model"],
                "--output",
                str(a_small_case["out"].with_suffix(".seg.nrrd")),
            ]
        )
        == 0
    )
    steps = logSteps(capsys.readouterr().out)
    assert [percent for percent, _ in steps] == sorted(percent for percent, _ in steps)
    assert [message for _, message in steps if message in {stage.label for stage in Stage}] == [stage.label for stage in Stage]
    # Batches and classes are counted right: one label, batches "k of N" for one N.
    batches = [re.match(r"Inference: batch (\d+) of (\d+)", message) for _, message in steps if message.startswith("Inference")]
    assert len(batches) == 1 and int(batches[0].group(1)) <= int(batches[0].group(2))
    assert [message.split(": ")[1] for _, message in steps if message.startswith("Resampling to the reference grid")] == [
        "label 1 of 1 (bright)"
    ]


def test_batch_draws_a_cases_bar_on_a_terminal(monkeypatch, a_small_case):
    code, out, terminal = runOnATerminal(
        monkeypatch,
        ["batch", "--model", a_small_case["model"], "--cases", a_small_case["cases"], "--output", a_small_case["out"], "--device", "cpu"],
    )
    assert code == 0, out
    assert "\r" in terminal.text and re.search(r"cases: +100%\|.*\| 2/2", terminal.text) and "1/2" in terminal.text
    # The per-case log lines are the bar's on a terminal; stdout keeps the summary.
    assert not re.search(r"^\[\d/2\]", out, re.MULTILINE) and "2 cases: 2 ok, 0 skipped, 0 failed" in out


def test_batch_logs_a_line_per_case_with_worker_numbers(capsys, a_small_case):
    argv = [
        "batch",
        "--model",
        a_small_case["model"],
        "--cases",
        a_small_case["cases"],
        "--output",
        str(a_small_case["out"]),
        "--device",
        "cpu",
        "--workers",
        "1",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^case (\w): begun by worker (\d+)$", out, re.MULTILINE) == [("a", "1"), ("b", "1")]
    assert re.findall(r"^\[(\d)/2\] (\w): ok, \d+\.\d s$", out, re.MULTILINE) == [("1", "a"), ("2", "b")]
    # A rerun skips both and says when they were done and how long they took then.
    assert cli.main(argv) == 0
    assert (
        len(
            re.findall(
                r"^\[\d/2\] \w: skipped \(done on \d{4}-\d\d-\d\d \d\d:\d\d UTC in \d+\.\d s\)$", capsys.readouterr().out, re.MULTILINE
            )
        )
        == 2
    )


@pytest.fixture
def an_onnx_source(tmp_path) -> dict:
    pytest.importorskip("onnxruntime", reason="onnxruntime is a base dependency")
    from models.test_importing import exportONNX, writeCard

    exportONNX(tmp_path / "model.onnx")
    return {"onnx": str(tmp_path / "model.onnx"), "card": writeCard(tmp_path / "card.json"), "output": str(tmp_path / "imported.pt")}


def test_import_draws_a_moving_bar_on_a_terminal(monkeypatch, an_onnx_source):
    code, out, terminal = runOnATerminal(
        monkeypatch, ["import", an_onnx_source["onnx"], "--card", an_onnx_source["card"], "--output", an_onnx_source["output"]]
    )
    assert code == 0
    assertABarThatMoved(terminal, least=len(ImportStage))
    assert "Verifying the converted network against onnxruntime" in terminal.text and out.startswith("Wrote ")


def test_import_logs_its_steps_in_order(capsys, an_onnx_source):
    assert cli.main(["import", an_onnx_source["onnx"], "--card", an_onnx_source["card"], "--output", an_onnx_source["output"]]) == 0
    out = capsys.readouterr().out
    steps = logSteps(out)
    assert [percent for percent, _ in steps] == [round(stage.value[0] * 100) for stage in ImportStage]
    assert [message.split(" ")[0] for _, message in steps] == ["Reading", "Building", "Verifying", "Writing"]
    assert out.splitlines()[-1].startswith(f"Wrote {an_onnx_source['output']}: matches onnxruntime")
