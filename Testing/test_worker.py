"""The network in a worker process: same labels, no torch in the caller, warm reuse, cancel, death.

Scenes are real ``vtkMRMLScene``s (slicer-core) holding the ProstateX-0000 series or the self-test
phantoms; the worker is a real ``python -m MedSegUNetLib.worker`` process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

slicer = pytest.importorskip("slicer", reason="the slicer-core package is needed for MRML tests")

from conftest import PROSTATEX_0000_ROI, REPO_ROOT, requireSharedData  # noqa: E402
from MedSegUNetLib import phantoms, selftest  # noqa: E402
from MedSegUNetLib.errors import MedSegUNetError, ProcessingCancelled  # noqa: E402
from MedSegUNetLib.SegmentationLogic import SegmentationLogic, addVolumeFromImage  # noqa: E402
from MedSegUNetLib.worker import WorkerProcess  # noqa: E402

LEVEL = 400.0

# Runs in a fresh process: the caller must never import torch or MONAI.
LIGHT_CALLER = r"""
import json, sys, time
import numpy as np
import slicer
from MedSegUNetLib.SegmentationLogic import SegmentationLogic, addVolumeFromImage
from MedSegUNetLib.volumes import readVolume
from MedSegUNetLib import selftest
scene = slicer.vtkMRMLScene()
nodes = [addVolumeFromImage(scene, readVolume(path), name) for name, path in %(series)r]
logic = SegmentationLogic(scene, useWorker=True)
times = []
for run in range(2):
    started = time.perf_counter()
    result = logic.process([nodes[0]], %(model)r, roiVolumes=nodes[1:], device="cpu")
    times.append(time.perf_counter() - started)
labels = selftest.segmentationLabelArray(scene, result.segmentationNode, nodes[0])
pid = logic.worker.process.pid
logic.close()
print(json.dumps({"times": times, "voxels": int((labels > 0).sum()), "roi": [result.roi.ijkMin.tolist(), result.roi.ijkMax.tolist()],
                  "torch": "torch" in sys.modules, "monai": "monai" in sys.modules, "pid": pid, "starts": logic.worker.starts}))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except OSError:
        return True


def test_worker_gives_the_command_line_labels_without_torch_in_the_caller(tmp_path, a_threshold_model):
    folder = requireSharedData("prostatex", "ProstateX-0000")
    model = a_threshold_model((LEVEL,), [(1, "bright", (1.0, 1.0, 0.0))], inputs=("T2",), patchSize=(96, 96, 16))
    series = [(name, str(folder / name)) for name in ("4-t2tsetra", "3-t2tsesag", "5-t2tsecor")]
    done = subprocess.run([sys.executable, "-c", LIGHT_CALLER % {"series": series, "model": model}], capture_output=True, text=True, timeout=300, cwd=str(REPO_ROOT))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch"] is False and report["monai"] is False
    assert report["roi"] == [list(PROSTATEX_0000_ROI[0]), list(PROSTATEX_0000_ROI[1])]
    # The command line on the same series and model.
    from MedSegUNetLib import cli

    assert cli.main(["segment", "-q", "--model", model, series[0][1], "--roi-from", series[1][1], series[2][1], "--stats-json", str(tmp_path / "s.json")]) == 0
    assert report["voxels"] == json.loads((tmp_path / "s.json").read_text())["segments"][0]["voxel_count"]
    # Warm: the second run skips the imports and the model load; one worker for both.
    assert report["starts"] == 1 and report["times"][1] < 0.5 * report["times"][0], report["times"]
    assert not _alive(report["pid"])


def _phantomScene(phantom_data):
    scene = slicer.vtkMRMLScene()
    nodes = {name: addVolumeFromImage(scene, image, name) for name, image in phantom_data["images"].items()}
    return scene, nodes


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    return selftest.makeSelfTestData(tmp_path_factory.mktemp("phantoms"))


def _sceneNodes(scene) -> list:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def _slowModel(path, card) -> str:
    import torch

    from MedSegUNetLib.modelcard import saveModel

    class Slow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = phantoms.thresholdModule(selftest.THRESHOLDS)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            busy = torch.ones(256, 256)
            for _ in range(4000):
                busy = busy @ (torch.ones(256, 256) / 256.0)
            return self.inner(x) + 0.0 * busy.mean()

    saveModel(torch.jit.script(Slow()), card, path)
    return str(path)


@pytest.mark.parametrize("when", ["during-imports", "during-inference"])
def test_cancel_ends_the_worker_within_a_second(tmp_path, phantom_data, when):
    scene, nodes = _phantomScene(phantom_data)
    before = _sceneNodes(scene)
    model = _slowModel(tmp_path / "slow.pt", phantom_data["card"]) if when == "during-inference" else phantom_data["modelPath"]
    logic = SegmentationLogic(scene, useWorker=True)
    cancel = threading.Event()
    messages: list[str] = []
    cancelledAt: list[float] = []

    def onProgress(fraction: float, message: str) -> None:
        messages.append(message)
        if when == "during-inference" and message.startswith("Inference") and not cancel.is_set():
            cancelledAt.append(time.perf_counter())
            cancel.set()

    if when == "during-imports":
        def cancelSoon() -> None:
            time.sleep(0.3)  # the worker is still importing torch
            cancelledAt.append(time.perf_counter())
            cancel.set()

        threading.Thread(target=cancelSoon, daemon=True).start()
    job = logic.prepare([nodes[selftest.INPUT_NAME]], model, device="cpu", progressCallback=onProgress, cancelEvent=cancel)
    assert job.run() is False and isinstance(job.error, ProcessingCancelled)
    ended = time.perf_counter()
    assert ended - cancelledAt[0] < 1.0, ended - cancelledAt[0]
    pid = None if logic.worker.process is None else logic.worker.process.pid
    assert pid is None and not logic.worker.alive
    with pytest.raises(ProcessingCancelled):
        logic.finish(job)
    assert _sceneNodes(scene) == before
    if when == "during-inference":
        assert any(m.startswith("Inference") for m in messages)
    # The next run starts a new worker and works.
    result = logic.process([nodes[selftest.INPUT_NAME]], phantom_data["modelPath"], device="cpu")
    assert result.segmentationNode is not None and logic.worker.starts == 2
    logic.close()


def test_a_killed_worker_gives_one_line_and_the_scene_is_unchanged(tmp_path, phantom_data):
    scene, nodes = _phantomScene(phantom_data)
    model = _slowModel(tmp_path / "slow.pt", phantom_data["card"])
    logic = SegmentationLogic(scene, useWorker=True)
    logic.worker.start()
    victim = logic.worker.process.pid
    before = _sceneNodes(scene)

    def killSoon() -> None:
        time.sleep(2.0)
        os.kill(victim, signal.SIGKILL)

    threading.Thread(target=killSoon, daemon=True).start()
    with pytest.raises(MedSegUNetError) as error:
        logic.process([nodes[selftest.INPUT_NAME]], model, device="cpu")
    message = str(error.value)
    assert "\n" not in message and "worker process stopped" in message and "signal 9" in message
    assert _sceneNodes(scene) == before
    logic.close()
    assert not _alive(victim)


PARENT = r"""
import sys
from MedSegUNetLib.worker import WorkerProcess
worker = WorkerProcess()
worker.start()
print(worker.request({"command": "ping"})["pid"], flush=True)
import os
os._exit(0)  # dies without closing the worker
"""


def test_the_worker_exits_when_its_parent_dies():
    done = subprocess.run([sys.executable, "-c", PARENT], capture_output=True, text=True, timeout=120, cwd=str(REPO_ROOT))
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.strip())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid)


def test_close_leaves_no_process():
    worker = WorkerProcess()
    pid = worker.request({"command": "ping"})["pid"]
    assert _alive(pid)
    worker.close()
    assert not _alive(pid) and not worker.alive
