"""The network in a worker process started through the real PythonSlicer launcher, as in Slicer.

``PythonSlicer`` is CTKAppLauncher (built from source by the ``python_slicer`` fixture): it starts
the real interpreter as its child, so the worker's parent is the launcher and signalling the
launcher alone leaves the interpreter running. Every worker here runs through it. Scenes are real
``vtkMRMLScene``s (slicer-core) holding the ProstateX-0000 series or the self-test phantoms.
Moments of faults are chosen by what the worker reports (its first message, the inference stage),
never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="the slicer-core package is needed for MRML tests")

from conftest import PROSTATEX_0000_ROI, REPO_ROOT, requireSharedData, slowThresholdModel  # noqa: E402
from MedSegUNetLib.engine.errors import MedSegUNetError, ProcessingCancelled  # noqa: E402
from MedSegUNetLib.slicer import selftest  # noqa: E402
from MedSegUNetLib.slicer.logic import SegmentationLogic  # noqa: E402  # noqa: E402
from MedSegUNetLib.slicer.nodes import addVolumeFromImage  # noqa: E402
from MedSegUNetLib.slicer.worker import BEGUN_MESSAGE, PendingRequest, WorkerProcess  # noqa: E402

LEVEL = 400.0

# Runs in a fresh process (Slicer's stand-in): it must never import torch or MONAI.
LIGHT_CALLER = r"""
import json, sys, time
import numpy as np
import slicer
from MedSegUNetLib.slicer.logic import SegmentationLogic
from MedSegUNetLib.slicer.nodes import addVolumeFromImage
from MedSegUNetLib.engine.volumes import readVolume
from MedSegUNetLib.slicer import selftest
scene = slicer.vtkMRMLScene()
nodes = [addVolumeFromImage(scene, readVolume(path), name) for name, path in %(series)r]
logic = SegmentationLogic(scene, useWorker=True, workerExecutable=%(launcher)r)
times, pids = [], []
for run in range(2):
    if run == 1:
        time.sleep(5.0)  # idle: a worker that watched its parent's PID killed itself here
    started = time.perf_counter()
    result = logic.process([nodes[0]], %(model)r, roiVolumes=nodes[1:], device="cpu")
    times.append(time.perf_counter() - started)
    pids.append(logic.worker.interpreterPid)
labels = selftest.segmentationLabelArray(scene, result.segmentationNode, nodes[0])
launcher = logic.worker.process.pid
logic.close()
print(json.dumps({"times": times, "voxels": int((labels > 0).sum()), "roi": [result.roi.ijkMin.tolist(), result.roi.ijkMax.tolist()],
                  "torch": "torch" in sys.modules, "monai": "monai" in sys.modules, "pids": pids, "launcher": launcher,
                  "starts": logic.worker.starts}))
"""


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _goneWithin(pids, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.02)
    return not any(_alive(pid) for pid in pids)


def test_the_launcher_is_a_parent_in_between(python_slicer):
    worker = WorkerProcess(python_slicer)
    try:
        answer = worker.request({"command": "ping"})
        # The interpreter's parent is the launcher, not this process; its folder is its own.
        assert answer["ppid"] == worker.process.pid and answer["pid"] != worker.process.pid
        assert answer["ppid"] != os.getpid()
        assert os.path.basename(answer["cwd"]).startswith("medsegunet-worker-") and answer["cwd"] != os.getcwd()
        assert worker.interpreterPid == answer["pid"]
    finally:
        worker.close()
    assert not os.path.exists(answer["cwd"])


def test_worker_gives_the_command_line_labels_without_torch_in_the_caller(tmp_path, a_threshold_model, python_slicer):
    folder = requireSharedData("prostatex", "ProstateX-0000")
    model = a_threshold_model((LEVEL,), [(1, "bright", (1.0, 1.0, 0.0))], inputs=("T2",), patchSize=(96, 96, 16))
    series = [(name, str(folder / name)) for name in ("4-t2tsetra", "3-t2tsesag", "5-t2tsecor")]
    code = LIGHT_CALLER % {"series": series, "model": model, "launcher": python_slicer}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=str(REPO_ROOT))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch"] is False and report["monai"] is False
    assert report["roi"] == [list(PROSTATEX_0000_ROI[0]), list(PROSTATEX_0000_ROI[1])]
    # The command line on the same series and model.
    from MedSegUNetLib import cli

    assert (
        cli.main(
            [
                "segment",
                "-q",
                "--model",
                model,
                series[0][1],
                "--roi-from",
                series[1][1],
                series[2][1],
                "--stats-json",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    assert report["voxels"] == json.loads((tmp_path / "s.json").read_text())["segments"][0]["voxel_count"]
    # Warm after 5 s idle: one interpreter for both runs, and the second skips the imports and the load.
    assert report["starts"] == 1 and report["pids"][0] == report["pids"][1]
    assert report["times"][1] < 0.5 * report["times"][0], report["times"]
    assert not _alive(report["pids"][0]) and not _alive(report["launcher"])


def _phantomScene(phantom_data):
    scene = slicer.vtkMRMLScene()
    nodes = {name: addVolumeFromImage(scene, image, name) for name, image in phantom_data["images"].items()}
    return scene, nodes


def _roiSeries(nodes) -> list:
    """The sagittal and coronal phantoms: the ROI the self-test card's model was made for."""
    return [node for name, node in nodes.items() if name != selftest.INPUT_NAME]


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    return selftest.makeSelfTestData(tmp_path_factory.mktemp("phantoms"))


def _sceneNodes(scene) -> list:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def _slowModel(path, card, repeats: int = 4000) -> str:
    """The self-test's threshold model, made slow by work whose result it discards; it prints nothing."""
    return slowThresholdModel(path, card, selftest.THRESHOLDS, repeats=repeats)


@pytest.mark.parametrize("when", ["during-imports", "during-inference"])
def test_cancel_ends_the_whole_process_tree_within_a_second(tmp_path, phantom_data, python_slicer, when):
    scene, nodes = _phantomScene(phantom_data)
    before = _sceneNodes(scene)
    model = _slowModel(tmp_path / "slow.pt", phantom_data["card"]) if when == "during-inference" else phantom_data["modelPath"]
    logic = SegmentationLogic(scene, useWorker=True, workerExecutable=python_slicer)
    cancel = threading.Event()
    messages: list[str] = []
    tree: list[int] = []
    cancelledAt: list[float] = []
    trigger = BEGUN_MESSAGE if when == "during-imports" else "Inference"

    def onProgress(fraction: float, message: str) -> None:
        messages.append(message)
        if message.startswith(trigger) and not cancel.is_set():
            # The worker said it has begun (before any import) or reached the network.
            tree.extend([logic.worker.process.pid, logic.worker.interpreterPid])
            cancelledAt.append(time.perf_counter())
            cancel.set()

    job = logic.prepare(
        [nodes[selftest.INPUT_NAME]], model, roiVolumes=_roiSeries(nodes), device="cpu", progressCallback=onProgress, cancelEvent=cancel
    )
    assert job.run() is False and isinstance(job.error, ProcessingCancelled)
    assert len(tree) == 2 and tree[0] != tree[1]
    # Launcher and interpreter (python-real) both gone within a second of the cancel.
    assert _goneWithin(tree, max(0.0, 1.0 - (time.perf_counter() - cancelledAt[0]))), [p for p in tree if _alive(p)]
    assert logic.worker.process is None and not logic.worker.alive
    with pytest.raises(ProcessingCancelled):
        logic.finish(job)
    assert _sceneNodes(scene) == before
    # The next run starts a new worker and works.
    result = logic.process([nodes[selftest.INPUT_NAME]], phantom_data["modelPath"], roiVolumes=_roiSeries(nodes), device="cpu")
    assert result.segmentationNode is not None and logic.worker.starts == 2
    logic.close()


def test_a_killed_interpreter_gives_one_line_and_the_scene_is_unchanged(tmp_path, phantom_data, python_slicer):
    scene, nodes = _phantomScene(phantom_data)
    model = _slowModel(tmp_path / "slow.pt", phantom_data["card"])
    logic = SegmentationLogic(scene, useWorker=True, workerExecutable=python_slicer)
    before = _sceneNodes(scene)
    victims: list[int] = []

    def onProgress(fraction: float, message: str) -> None:
        if message.startswith("Inference") and not victims:  # python-real dies in the network (a crash, OOM)
            victims.extend([logic.worker.interpreterPid, logic.worker.process.pid])
            os.kill(victims[0], signal.SIGKILL)

    with pytest.raises(MedSegUNetError) as error:
        logic.process([nodes[selftest.INPUT_NAME]], model, roiVolumes=_roiSeries(nodes), device="cpu", progressCallback=onProgress)
    message = str(error.value)
    assert "\n" not in message and "worker process stopped" in message and "killed or crashed" in message, message
    assert "Report the problem" not in message  # the launcher's own words stay out
    assert _sceneNodes(scene) == before
    logic.close()
    assert _goneWithin(victims, 1.0)


OWNER = r"""
import sys
from MedSegUNetLib.slicer.worker import WorkerProcess
worker = WorkerProcess(%(launcher)r)
answer = worker.request({"command": "ping"})
print(answer["pid"], worker.process.pid, flush=True)
sys.stdin.readline()  # the test kills this process (Slicer's stand-in) with SIGKILL here
"""


def test_the_interpreter_exits_when_the_owner_is_killed(python_slicer):
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER % {"launcher": python_slicer}],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(REPO_ROOT),
    )
    try:
        interpreter, launcher = (int(value) for value in owner.stdout.readline().split())
        assert _alive(interpreter) and _alive(launcher)
        owner.kill()  # SIGKILL: no cleanup code runs in the owner
        owner.wait()
        # The owner held the only write end of the interpreter's stdin: EOF ends it, then the launcher.
        assert _goneWithin([interpreter], 2.0)
        assert _goneWithin([launcher], 2.0)
    finally:
        owner.kill()
        owner.stdin.close()
        owner.stdout.close()


def test_close_leaves_no_process(python_slicer):
    worker = WorkerProcess(python_slicer)
    answer = worker.request({"command": "ping"})
    tree = [worker.process.pid, answer["pid"]]
    assert all(_alive(pid) for pid in tree)
    worker.close()
    assert not any(_alive(pid) for pid in tree) and not worker.alive


def test_a_quit_line_ends_the_worker(python_slicer):
    worker = WorkerProcess(python_slicer)
    pid = worker.request({"command": "ping"})["pid"]
    worker.process.stdin.write(b'{"command": "quit"}\n')
    worker.process.stdin.flush()
    assert worker.process.wait(timeout=10) == 0
    assert _goneWithin([pid], 1.0)
    worker.close()


def test_polling_never_blocks_while_the_worker_is_silent(tmp_path, phantom_data, python_slicer):
    """Imports, model load and a slow network print nothing for seconds; the GUI timer's poll must
    return at once every time (the Slicer module polls every 100 ms on its main thread)."""
    scene, nodes = _phantomScene(phantom_data)
    model = _slowModel(tmp_path / "slow.pt", phantom_data["card"], repeats=6000)
    logic = SegmentationLogic(scene, useWorker=True, workerExecutable=python_slicer)
    messages: list[tuple[float, str]] = []
    job = logic.prepare(
        [nodes[selftest.INPUT_NAME]],
        model,
        roiVolumes=_roiSeries(nodes),
        device="cpu",
        progressCallback=lambda f, m: messages.append((time.perf_counter(), m)),
    )
    job.start()
    polls, started = [], time.perf_counter()
    while True:
        before = time.perf_counter()
        done = job.poll()
        polls.append((before, time.perf_counter() - before))
        if done:
            break
        time.sleep(0.01)
    assert job.error is None, job.error
    logic.finish(job)
    logic.close()
    # The longest silence between two worker messages (imports, load, the network), and the polls in it.
    times = [started] + [when for when, _ in messages]
    start, end = max(zip(times, times[1:]), key=lambda pair: pair[1] - pair[0])
    inSilence = [duration for when, duration in polls if start <= when <= end]
    assert len(inSilence) >= 10, f"only {len(inSilence)} polls in the longest silence ({end - start:.2f} s)"
    longest = max(duration for _, duration in polls)
    assert longest < 0.05, f"a poll took {longest * 1000:.0f} ms"


def test_devices_are_asked_without_blocking(python_slicer):
    worker = WorkerProcess(python_slicer)
    try:
        query = PendingRequest(worker, {"command": "devices"})
        polls = 0
        while not query.poll():
            polls += 1
            time.sleep(0.01)
        assert query.error is None and set(query.answer) >= {"torch", "cuda", "mps"}
        from MedSegUNetLib.slicer.dependencies import devicesFromAnswer

        assert devicesFromAnswer(query.answer)["cpu"] is True
        assert polls > 0  # importing torch in the worker took longer than one poll
    finally:
        worker.close()


def test_answers_of_two_requests_in_flight_reach_their_own_poll(python_slicer):
    worker = WorkerProcess(python_slicer)
    try:
        devices = PendingRequest(worker, {"command": "devices"})
        ping = PendingRequest(worker, {"command": "ping"})
        while not (ping.poll() and devices.poll()):
            time.sleep(0.01)
        assert ping.answer["pid"] == worker.interpreterPid and "cuda" in devices.answer
    finally:
        worker.close()


def test_errors_speak_of_the_modules_controls(phantom_data, python_slicer):
    scene, nodes = _phantomScene(phantom_data)
    logic = SegmentationLogic(scene, useWorker=True, workerExecutable=python_slicer)
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA GPU: asking for it does not fail")
        from MedSegUNetLib.engine.errors import DeviceError

        with pytest.raises(DeviceError) as error:  # the engine's class, across the process boundary
            logic.process([nodes[selftest.INPUT_NAME]], phantom_data["modelPath"], roiVolumes=_roiSeries(nodes), device="cuda")
        message = str(error.value)
        assert "--device" not in message and "the cpu or auto device" in message, message
    finally:
        logic.close()


def test_a_pt2_model_gives_the_torchscript_labels_in_the_worker_and_in_process(tmp_path, python_slicer):
    """A converted zoo model (.pt2) through the module's logic, with and without the PythonSlicer
    worker: the labels of the TorchScript file through ``segment``, voxel for voxel per label."""
    from MedSegUNetLib import cli
    from MedSegUNetLib.engine.volumes import readVolume

    folder = requireSharedData("prostatex", "ProstateX-0000")
    converted = str(tmp_path / "prostate-zones.pt2")
    assert cli.main(["convert", "prostate-zones", "--output", converted]) == 0
    scene = slicer.vtkMRMLScene()
    nodes = [addVolumeFromImage(scene, readVolume(str(folder / name)), name) for name in ("4-t2tsetra", "3-t2tsesag", "5-t2tsecor")]
    counts = []
    for useWorker in (False, True):
        logic = SegmentationLogic(scene, useWorker=useWorker, workerExecutable=python_slicer)
        try:
            result = logic.process([nodes[0]], converted, roiVolumes=nodes[1:], device="cpu")
        finally:
            logic.close()
        labels = selftest.segmentationLabelArray(scene, result.segmentationNode, nodes[0])
        counts.append([int((labels == value).sum()) for value in (1, 2)])
    # The TorchScript file's labels through 'segment' on these series (test_converting).
    assert counts == [[30148, 24713], [30148, 24713]]


# Installed as the worker's sitecustomize: a banner at start-up, and a "library" that prints from
# Python and writes to descriptor 1 from C when torch is imported (during the first request).
CHATTY_SITE = r"""
import os, sys
print("a banner printed at start-up")

class Chatty:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print("a library line on stdout (Python)")
            sys.stdout.flush()
            os.write(1, b"a library line on stdout (C)\\n")
        return None

sys.meta_path.insert(0, Chatty())
"""


def test_lines_a_library_prints_cannot_corrupt_the_answers(tmp_path, phantom_data, python_slicer):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CHATTY_SITE)
    scene, nodes = _phantomScene(phantom_data)
    logic = SegmentationLogic(scene, useWorker=True, workerExecutable=python_slicer)
    logic.worker.environment = {"PYTHONPATH": str(site)}
    try:
        result = logic.process([nodes[selftest.INPUT_NAME]], phantom_data["modelPath"], roiVolumes=_roiSeries(nodes), device="cpu")
        labels = selftest.segmentationLabelArray(scene, result.segmentationNode, nodes[selftest.INPUT_NAME])
        assert [int((labels == value).sum()) for value in (1, 2)] == [1633, 178]
        # Every printed line went to the worker's log, none to the answers.
        log = _wholeLog(logic.worker)
        for line in ("a banner printed at start-up", "a library line on stdout (Python)", "a library line on stdout (C)"):
            assert line in log
    finally:
        logic.close()


def _wholeLog(worker) -> str:
    worker._log.seek(0)
    return worker._log.read().decode("utf-8", "replace")


def _zonesCatalog(tmp_path, url: str, body: bytes) -> Path:
    import hashlib

    catalog = {
        "schema": "medsegunet.catalog/1",
        "models": [
            {
                "name": "zones-mirror",
                "url": url + "zones.pt",
                "sha256": hashlib.sha256(body).hexdigest(),
                "bytes": len(body),
                "description": "mirror",
            }
        ],
    }
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    return path


def aModuleLogic(tmp_path, python_slicer):
    """The module's logic on a scene of its own, its worker through the real launcher, its cache in ``tmp_path``."""
    from MedSegUNetLib.slicer.modulelogic import ModuleLogic

    requirements = str(REPO_ROOT / "MedSegUNet" / "Resources" / "requirements.txt")
    return ModuleLogic(
        slicer.vtkMRMLScene(),
        requirements,
        workerExecutable=python_slicer,
        cachePath=str(tmp_path / "slicer-cache"),
        interactive=False,
        testing=True,
    )


def test_a_catalog_pull_runs_in_the_worker_with_progress_and_cancel(tmp_path, a_stalling_server, python_slicer, monkeypatch):
    url, handler = a_stalling_server
    handler.body = (REPO_ROOT / "MedSegUNet" / "Resources" / "Models" / "prostate-zones" / "prostate-zones.pt").read_bytes()
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(_zonesCatalog(tmp_path, url, handler.body)))
    logic = aModuleLogic(tmp_path, python_slicer)
    cache = tmp_path / "slicer-cache" / "medsegunet" / "models" / "zones-mirror"
    cancel = threading.Event()
    progress: list[tuple[float, str]] = []

    def onProgress(fraction: float, message: str) -> None:
        progress.append((fraction, message))
        if fraction > 0:  # half of the file has come: the download is under way
            cancel.set()

    try:
        with pytest.raises(ProcessingCancelled):
            logic.pullCatalogModel("zones-mirror", onProgress, cancel)
        assert not cache.exists() and not logic.segmentationLogic.worker.alive
        handler.release.set()
        progress.clear()
        path = logic.pullCatalogModel("zones-mirror", lambda f, m: progress.append((f, m)))
        assert Path(path).read_bytes() == handler.body and cache in Path(path).parents
        assert progress and max(f for f, _ in progress) > 0
        with pytest.raises(MedSegUNetError, match="neither a model file nor a model of the catalog"):
            logic.pullCatalogModel("no-such-model")
    finally:
        logic.close()


def test_the_module_logic_pulls_without_importing_torch_or_onnx(tmp_path, a_file_server, python_slicer):
    served, url = a_file_server
    body = (REPO_ROOT / "MedSegUNet" / "Resources" / "Models" / "prostate-zones" / "prostate-zones.pt").read_bytes()
    (served / "zones.pt").write_bytes(body)
    catalog = _zonesCatalog(tmp_path, url, body)
    code = (
        "import json, sys, slicer\n"
        "from MedSegUNetLib.slicer.modulelogic import ModuleLogic\n"
        f"logic = ModuleLogic(slicer.vtkMRMLScene(), 'requirements.txt', workerExecutable={python_slicer!r}, "
        f"cachePath={str(tmp_path / 'c')!r}, testing=True)\n"
        "path = logic.pullCatalogModel('zones-mirror')\n"
        "logic.close()\n"
        "print(json.dumps({'path': path, 'heavy': sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai', 'onnx', "
        "'onnxruntime'})}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
        env={**os.environ, "MEDSEGUNET_CATALOG": str(catalog)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [] and Path(report["path"]).read_bytes() == body


def test_an_nnunet_folder_is_imported_in_the_worker_with_progress(tmp_path, python_slicer):
    pytest.importorskip("dynamic_network_architectures", reason="the [nnunet] extra is needed")
    from MedSegUNetLib.engine.modelcard import readCard

    folder = next((REPO_ROOT / "Testing" / "data" / "nnunet" / "aniso3d" / "results").glob("*/*__*__*"))
    logic = aModuleLogic(tmp_path, python_slicer)
    imported = tmp_path / "slicer-cache" / "medsegunet" / "imported"
    try:
        # Cancel ends the worker as a catalog pull's does (the same PendingRequest, tested above).
        progress: list[tuple[float, str]] = []
        path = logic.importNNUNetModel(str(folder), lambda fraction, message: progress.append((fraction, message)))
        assert Path(path) == imported / "Dataset901_aniso3d-3d_fullres.pt"
        assert readCard(path).provenance["nnunet"]["folds"] == ["0", "1"]
        messages = [message for _, message in progress]
        steps = ["Reading the nnU-Net results folder", "Building 2 fold(s) of PlainConvUNet and loading its weights"]
        assert [message for message in messages if message in steps] == steps
        with pytest.raises(MedSegUNetError, match="has no dataset.json"):
            logic.importNNUNetModel(str(tmp_path))
    finally:
        logic.close()
