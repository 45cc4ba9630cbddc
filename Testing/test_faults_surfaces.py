"""Faults of the newest surfaces, through the installed command: a card whose normalisation
overflows, a disk that fills, an input the user may not read, and Ctrl-C or SIGTERM during one
long network call. Each ends with one line, its exit status and no output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO_ROOT, medsegunetCommand, slowThresholdModel
from MedSegUNetLib.engine.modelcard import readCard

LABELS = [(1, "bright", (1.0, 0.0, 0.0))]


def command() -> list[str]:
    return medsegunetCommand()


def noiseVolume(path: Path, size=(48, 40, 24)) -> Path:
    image = sitk.GetImageFromArray(np.random.default_rng(0).random(tuple(reversed(size))).astype(np.float32))
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))
    return path


def oneLine(done: subprocess.CompletedProcess, expected: str, code: int = 2) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and "internal error" not in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert expected in lines[0], lines[0]
    return lines[0]


# Each step's parameters are within the card schema's bounds (±1e6); together they pass float32's
# 3.4e38 at the 7th step (inputs in 0–1: 1e6 to the 7th is 1e42).
@pytest.mark.parametrize(
    "steps, expected",
    [
        ([{"type": "affine", "scale": 1e6}] * 7, "normalisation step 7 (affine)"),
        ([{"type": "minmax", "b_min": 0.0, "b_max": 1e6}] + [{"type": "affine", "scale": 1e6}] * 6, "normalisation step 7 (affine)"),
        ([{"type": "affine", "scale": -1e6}] * 6 + [{"type": "affine", "shift": 1e6, "scale": 1e6}], "normalisation step 7 (affine)"),
    ],
    ids=["scale", "minmax-then-scale", "negative"],
)
def test_a_normalisation_that_overflows_float32_is_refused_naming_its_step(tmp_path, a_threshold_model, steps, expected):
    model = tmp_path / "model.pt"
    shutil.copy(a_threshold_model((0.5,), LABELS), model)
    card = readCard(model).toJSON()
    card.update(schema="medsegunet.model/3", normalization=steps)
    (tmp_path / "model.pt.json").write_text(json.dumps(card))
    noiseVolume(tmp_path / "t1.nrrd")
    done = subprocess.run(
        [*command(), "segment", "--model", str(model), str(tmp_path / "t1.nrrd"), "--output", str(tmp_path / "out.nrrd")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    oneLine(done, expected)
    assert not (tmp_path / "out.nrrd").exists()


@contextlib.contextmanager
def smallDisk(size: str):
    """A tmpfs of ``size`` mounted for the test (root only; skipped where mounting is not allowed)."""
    folder = Path(tempfile.mkdtemp(prefix="medsegunet-small-disk-"))
    mounted = (
        os.geteuid() == 0
        and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True).returncode == 0
    )
    if not mounted:
        folder.rmdir()
        pytest.skip("a small file system cannot be mounted here (needs root and mount rights)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)
        folder.rmdir()


def test_a_disk_that_fills_says_no_space_left(tmp_path, a_threshold_model):
    """A 300 kB disk: the segmentation's files do not fit; one line says the disk is full, nothing is left."""
    noiseVolume(tmp_path / "t1.nrrd", (96, 96, 48))
    with smallDisk("300k") as disk:
        out = disk / "out"
        out.mkdir()
        done = subprocess.run(
            [
                *command(),
                "segment",
                "--model",
                a_threshold_model((0.5,), LABELS),
                str(tmp_path / "t1.nrrd"),
                "--output",
                str(out / "seg.nii"),
                "--stats-json",
                str(out / "s.json"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        line = oneLine(done, "Cannot write")
        assert "no space left" in line or "the disk is full" in line, line
        assert os.listdir(out) == []


def test_a_batch_whose_disk_fills_mid_case_says_no_space_left(tmp_path, a_threshold_model):
    (tmp_path / "cases" / "t1").mkdir(parents=True)
    noiseVolume(tmp_path / "cases" / "t1" / "image.nrrd", (96, 96, 48))
    with smallDisk("400k") as disk:
        out = disk / "out"
        done = subprocess.run(
            [
                *command(),
                "batch",
                "-q",
                "--model",
                a_threshold_model((0.5,), LABELS),
                "--cases",
                str(tmp_path / "cases"),
                "--output",
                str(out),
                "--format",
                "nii",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 1, done.stderr
        failed = [line for line in done.stderr.splitlines() if "failed" in line and "t1" in line]
        assert failed and ("no space left" in failed[0] or "the disk is full" in failed[0]), done.stderr
        assert "cannot be read back" not in done.stderr
        assert not [name for name in os.listdir(out) if name.startswith(".medsegunet")] if out.exists() else True


def asNobody() -> list[str]:
    """The command as the unprivileged user, where this test runs as root (root reads every file).

    The installed script may sit where that user cannot read (a root-only ``~/.pyenv``), so the
    command is probed as it will run, then as ``python -m``; the test is skipped only where neither
    can start."""
    if os.geteuid() != 0:
        return command()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is not installed: as root, no file is unreadable")
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    for candidate in (command(), [sys.executable, "-m", "MedSegUNetLib.cli"]):
        probe = subprocess.run(
            [*prefix, *candidate, "--version"],
            capture_output=True,
            cwd=tempfile.gettempdir(),
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "MedSegUNet")},
        )
        if probe.returncode == 0:
            return [*prefix, *candidate]
    pytest.skip("the unprivileged user cannot run this checkout's Python")


@pytest.mark.parametrize("what", ["volume", "model"])
def test_an_input_the_user_may_not_read_is_one_line(a_threshold_model, what):
    asUser = asNobody()
    folder = Path(tempfile.mkdtemp(prefix="medsegunet-unreadable-"))
    try:
        os.chmod(folder, 0o777)
        volume, model = noiseVolume(folder / "t1.nrrd"), folder / "model.pt"
        shutil.copy(a_threshold_model((0.5,), LABELS), model)
        (volume if what == "volume" else model).chmod(0o600 if asUser != command() else 0o000)
        (volume if what == "model" else model).chmod(0o644)
        done = subprocess.run(
            [*asUser, "segment", "--model", str(model), str(volume), "--output", str(folder / "out.nrrd")],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=str(folder),
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "MedSegUNet"), "HOME": str(folder)},
        )
        oneLine(done, "permission denied")
        assert not (folder / "out.nrrd").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    "how, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_during_one_long_network_call_ends_the_run_at_once(tmp_path, how, code, word):
    """The signal is sent once the network's call has begun (the engine's test hook leaves a file
    then), never at a moment chosen by a clock; that one call would take far longer than the bound."""
    from MedSegUNetLib.engine.settings import TEST_NETWORK_BEGUN
    from MedSegUNetLib.models import phantoms

    model = slowThresholdModel(tmp_path / "slow.pt", phantoms.thresholdCard(LABELS), (0.5,), repeats=40000)
    noiseVolume(tmp_path / "t1.nrrd")
    out, begun = tmp_path / "out", tmp_path / "begun"
    out.mkdir()
    begun.mkdir()
    process = subprocess.Popen(
        [*command(), "segment", "-q", "--model", model, str(tmp_path / "t1.nrrd"), "--output", str(out / "seg.nrrd")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, TEST_NETWORK_BEGUN.name: str(begun)},
    )
    try:
        deadline = time.monotonic() + 120
        while not list(begun.iterdir()) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [path.name for path in begun.iterdir()] == [f"{process.pid}-network"], "the network never began"
        process.send_signal(how)
        sent = time.monotonic()
        rest = process.communicate(timeout=60)[1]  # stderr
        elapsed = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == code, rest
    assert [line for line in rest.strip().splitlines() if line.startswith("medsegunet:")] == [
        f"medsegunet: {word}; nothing was written."
    ], rest
    assert elapsed < 3.0, f"the run took {elapsed:.1f} s to end after the signal"
    assert os.listdir(out) == []
