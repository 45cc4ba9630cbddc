"""Shared fixtures of the MedSegUNet test suite.

Real data lives in ``../shared/data`` relative to the repository root (never copied into the
repository); tests that need it skip with a message when it is absent. Models are real TorchScript
files built and scripted here: a tiny MONAI UNet, and known-answer threshold models from
:mod:`MedSegUNetLib.models.phantoms`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
PROSTATEX = SHARED_DATA / "prostatex"
# ProstateX-0000's three T2 series; the axial one is the reference.
PROSTATE_SERIES = ("4-t2tsetra", "3-t2tsesag", "5-t2tsecor")
# Exact ROI of ProstateX-0000 on the axial T2 (inclusive IJK), checked by brute force over every voxel.
PROSTATEX_0000_ROI = ((125, 154, 0), (261, 243, 18))


def medsegunetCommand() -> list[str]:
    """The ``medsegunet`` command of the Python running the tests: its console script (as a user runs
    it) when installed beside this interpreter, else ``python -m MedSegUNetLib.cli``; never another
    environment's ``medsegunet`` found first on PATH."""
    script = Path(sys.executable).with_name("medsegunet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "MedSegUNetLib.cli"]


def requireSharedData(*parts: str) -> Path:
    """The path below ``../shared/data``, or skip the test with a message saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data '{path}' is absent (expected ../shared/data beside the repository)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def smallObliquePhantom():
    """The bad-input cases' good volume: 20 × 18 × 8 voxels of 1 × 1 × 2 mm tilted 18° about I, a
    bright sphere of 6 mm radius at the origin (LPS)."""
    from MedSegUNetLib.models import phantoms

    grid = phantoms.makeGrid((20, 18, 8), (1.0, 1.0, 2.0), phantoms.rotationMatrix((1, 0, 0), 18), (0, 0, 0))
    return phantoms.paintSpheres(grid, [((0, 0, 0), 6.0, 1.0)])


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return requireSharedData()


@pytest.fixture(scope="session")
def prostate_series() -> dict[str, str]:
    """The ProstateX-0000 T2 DICOM folders, reference (axial) first: name → folder path."""
    folder = requireSharedData("prostatex", "ProstateX-0000")
    return {name: str(folder / name) for name in PROSTATE_SERIES}


@pytest.fixture(scope="session")
def prostate_images(prostate_series):
    """The ProstateX-0000 T2 volumes as SimpleITK images (LPS), in ``prostate_series`` order."""
    from MedSegUNetLib.engine.volumes import readVolume

    return {name: readVolume(path) for name, path in prostate_series.items()}


@pytest.fixture(scope="session")
def prostate_series_0001() -> dict[str, str]:
    """The ProstateX-0001 T2 DICOM folders (series tilted about 6°), axial first."""
    folder = requireSharedData("prostatex", "ProstateX-0001")
    found = {}
    for suffix in ("t2tsetra", "t2tsesag", "t2tsecor"):
        matches = sorted(p for p in os.listdir(folder) if p.endswith(suffix))
        if not matches:
            pytest.skip(f"no '*{suffix}' series in '{folder}'")
        found[matches[0]] = str(folder / matches[0])
    return found


TINY_UNET_CARD = {
    "schema": "medsegunet.model/1",
    "name": "Tiny test UNet",
    "spatial_dims": 3,
    "inputs": [{"name": "T2"}],
    "labels": [{"value": 1, "name": "gland", "color": [0.9, 0.6, 0.4]}],
    "output": "softmax",
    "normalization": {"type": "zscore", "nonzero": True},
    "spacing": None,
    "orientation": None,
    "patch_size": [32, 32, 8],
    "overlap": 0.25,
    "sw_batch_size": 2,
}


@pytest.fixture(scope="session")
def a_tiny_unet(tmp_path_factory) -> str:
    """A real (untrained) MONAI UNet, scripted and saved with a card; returns the ``.pt`` path."""
    import torch
    from monai.networks.nets import UNet

    from MedSegUNetLib.engine.modelcard import saveModel

    torch.manual_seed(0)
    network = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    network.eval()
    path = tmp_path_factory.mktemp("tiny_unet") / "tiny_unet.pt"
    saveModel(network, TINY_UNET_CARD, path)
    return str(path)


@pytest.fixture(scope="session")
def a_threshold_model(tmp_path_factory):
    """Factory: ``make(thresholds, **thresholdCard kwargs)`` → path of a saved known-answer model.

    Labels default to one per threshold (values 1, 2, …). Models with the same arguments are built once.
    """
    from MedSegUNetLib.models import phantoms

    folder = tmp_path_factory.mktemp("threshold_models")
    built: dict[str, str] = {}

    def make(thresholds=(0.5,), labels=None, **cardArguments) -> str:
        if labels is None:
            labels = [(index + 1, f"label{index + 1}", (0.1 * (index + 1), 0.5, 0.5)) for index in range(len(thresholds))]
        key = repr((tuple(thresholds), tuple(labels), sorted(cardArguments.items())))
        if key not in built:
            card = phantoms.thresholdCard(labels, **cardArguments)
            path = folder / f"threshold_{len(built)}.pt"
            built[key] = phantoms.writeThresholdModel(path, thresholds, card)
        return built[key]

    return make


def slowThresholdModel(path, card: dict, thresholds, repeats: int = 4000, size: int = 256) -> str:
    """A known-answer threshold model made slow by one long forward: ``repeats`` matrix products of
    ``size`` × ``size`` whose result it discards (it prints and writes nothing); returns its path."""
    import torch

    from MedSegUNetLib.engine.modelcard import saveModel
    from MedSegUNetLib.models import phantoms

    class SlowThreshold(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = phantoms.thresholdModule(tuple(thresholds))
            self.repeats = repeats
            self.size = size

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            weight = torch.ones(self.size, self.size) / float(self.size)
            busy = torch.ones(self.size, self.size)
            for _ in range(self.repeats):
                busy = busy @ weight
            return self.inner(x) + 0.0 * busy.mean()

    saveModel(torch.jit.script(SlowThreshold()), card, path)
    return str(path)


@contextlib.contextmanager
def servedFolder(served: Path):
    """A real HTTP server on 127.0.0.1 serving ``served`` (``python -m http.server``'s handler, whose
    folder listings pip also reads as a simple package index); yields its base URL."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class HalfThenWait(http.server.BaseHTTPRequestHandler):
    """Serves ``body`` on any GET: its first half at once, the rest once ``release`` is set, so a
    test can act while a download is surely under way."""

    body = b""
    release = threading.Event()

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        half = len(self.body) // 2
        self.wfile.write(self.body[:half])
        self.wfile.flush()
        self.release.wait(60)
        try:
            self.wfile.write(self.body[half:])
        except OSError:  # the client was ended
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def a_stalling_server():
    """A real HTTP server on 127.0.0.1 answering with :class:`HalfThenWait`; yields ``(url, handler)``."""
    HalfThenWait.release = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HalfThenWait)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", HalfThenWait
    finally:
        HalfThenWait.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture()
def a_file_server(tmp_path):
    """A real HTTP server on localhost serving ``tmp_path / 'served'``; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    with servedFolder(served) as url:
        yield served, url


PYTHONSLICER_TOOLS = REPO_ROOT.parent / "shared" / "tools" / "pythonslicer"


def buildPythonSlicer() -> str:
    """The real ``PythonSlicer`` launcher (CTKAppLauncher, as Slicer ships it) launching this Python.

    Built once from ``../shared/tools/pythonslicer`` into a cache folder per interpreter (about two
    minutes) and reused; the tests skip with a message when the tools folder is absent.
    """
    import hashlib
    import subprocess
    import sys

    script = PYTHONSLICER_TOOLS / "build-pythonslicer.sh"
    sources = sorted(PYTHONSLICER_TOOLS.glob("AppLauncher-*.tar.gz"))
    if not script.is_file() or not sources:
        pytest.skip(f"the PythonSlicer launcher tools are absent (expected {PYTHONSLICER_TOOLS})")
    cacheBase = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(f"{sys.executable}|{sources[-1].name}".encode()).hexdigest()[:16]
    folder = cacheBase / "medsegunet-tests" / f"pythonslicer-{key}"
    launcher = folder / "bin" / "PythonSlicer"
    if launcher.is_file():
        check = subprocess.run(
            [str(launcher), "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
        if check.returncode == 0 and check.stdout.strip() == sys.executable:
            return str(launcher)
    built = subprocess.run(
        ["bash", str(script), str(sources[-1]), sys.executable, str(folder)],
        capture_output=True,
        text=True,
        timeout=1200,
        stdin=subprocess.DEVNULL,
    )
    if built.returncode != 0 or not launcher.is_file():
        pytest.fail(f"building the PythonSlicer launcher failed: {built.stderr[-2000:]}")
    return str(launcher)


@pytest.fixture(scope="session")
def python_slicer() -> str:
    """Path of the real ``PythonSlicer`` launcher (a CTKAppLauncher whose child runs this Python)."""
    return buildPythonSlicer()


def treeDigest(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (relative path → SHA256) and every folder (→ "dir")."""
    digest = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        digest[relative] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def bashBlocks(text: str) -> list[str]:
    """The ``bash`` code blocks of a Markdown text (the documentation's runnable examples)."""
    return [textwrap.dedent(block) for block in re.findall(r"^ *```bash\n(.*?)^ *```", text, re.DOTALL | re.MULTILINE)]


@pytest.fixture
def a_checkout(tmp_path) -> Path:
    """``tmp/repo`` with the repository's Resources and the module's (the zoo), and ``tmp/shared`` →
    the real shared data: the folder a user runs the documentation's examples from."""
    requireSharedData("prostatex", "ProstateX-0000")
    checkout = tmp_path / "repo"
    checkout.mkdir()
    os.symlink(REPO_ROOT / "Resources", checkout / "Resources")
    (checkout / "MedSegUNet").mkdir()
    os.symlink(REPO_ROOT / "MedSegUNet" / "Resources", checkout / "MedSegUNet" / "Resources")
    os.symlink(REPO_ROOT.parent / "shared", tmp_path / "shared")
    return checkout


def runBlock(block: str, folder: Path, environment: dict | None = None) -> subprocess.CompletedProcess:
    """Run a documentation example as written, by ``bash -e`` in ``folder``, with stderr a log."""
    prelude = f'medsegunet() {{ {" ".join(shlex.quote(part) for part in medsegunetCommand())} "$@"; }}\n'
    return subprocess.run(
        ["bash", "-e", "-c", prelude + block],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(environment or {})},
        stdin=subprocess.DEVNULL,
    )


class TerminalCapture:
    """What a command drew on a pseudo-terminal: the raw text and the bar percentages in order."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.text = ""

    @property
    def percentages(self) -> list[int]:
        """The bar's percentages in the order tqdm drew them (``' 45%|'``)."""
        return [int(value) for value in re.findall(r"(\d+)%\|", self.text)]


@contextlib.contextmanager
def aTerminalOnStderr(monkeypatch):
    """``sys.stderr`` on a real pseudo-terminal (160 columns) for the block, its output drained
    by a thread; yields a :class:`TerminalCapture`, complete when the block ends."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    capture = TerminalCapture()

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer closed it
                break
            if not data:
                break
            capture.received.extend(data)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    stream = open(slave, "w", buffering=1, encoding="utf-8", closefd=True)
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", stream)
        try:
            yield capture
        finally:
            stream.close()
            thread.join(timeout=30)
            os.close(master)
            capture.text = capture.received.decode("utf-8", "replace")


def baseRequirementClosure(requirements: list[str]) -> dict:
    """The installed distributions that ``pip install -e .`` brings for ``requirements``: each
    requirement and, recursively, its own (markers evaluated, extras followed only where asked)."""
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict = {}
    pending = [(Requirement(line), ()) for line in requirements]
    while pending:
        requirement, parentExtras = pending.pop()
        if requirement.marker is not None and not any(requirement.marker.evaluate({"extra": extra}) for extra in ("", *parentExtras)):
            continue
        name = canonicalize_name(requirement.name)
        extras = tuple(sorted(requirement.extras))
        if (name, extras) in found:
            continue
        distribution = importlib.metadata.distribution(requirement.name)
        found[(name, extras)] = distribution
        pending.extend((Requirement(line), extras) for line in distribution.requires or [])
    return {name: distribution for (name, _), distribution in found.items()}


@pytest.fixture(scope="session")
def a_base_install(tmp_path_factory) -> dict:
    """A fresh virtual environment holding MedSegUNet as ``pip install -e .`` leaves it: the base
    dependencies and theirs, and nothing an extra or the tests bring.

    Offline and in seconds: the base closure's installed distributions are linked, one top-level
    entry each, into a folder the new environment reads through a ``.pth`` file; MedSegUNet is
    installed into it by its own pip (editable, no index), and ``pip check`` proves that the
    linked set satisfies every requirement. Returns its ``python``, ``bin`` folder and the names.
    """
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    root = tmp_path_factory.mktemp("base-install")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    # pip, which every environment has (it pulls published models), and setuptools, the backend
    # that pip install -e . builds with (build-system.requires), as this Python's own would bring.
    distributions = baseRequirementClosure([*project["project"]["dependencies"], *project["build-system"]["requires"], "pip"])
    linked = root / "base-packages"
    linked.mkdir()
    for distribution in distributions.values():
        for file in distribution.files or []:
            top = file.parts[0]
            if top not in ("..", "__pycache__") and not os.path.lexists(linked / top):
                os.symlink(Path(distribution.locate_file("")) / top, linked / top)
    environment = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True, capture_output=True, timeout=300)
    python = environment / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True
    ).stdout.strip()
    Path(purelib, "base-packages.pth").write_text(f"{linked}\n", encoding="utf-8")
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "PYTHON"))}
    for command in (["install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(REPO_ROOT)], ["check"]):
        done = subprocess.run([str(python), "-m", "pip", *command], capture_output=True, text=True, timeout=600, env=clean, cwd=root)
        assert done.returncode == 0, done.stdout + done.stderr
    return {"python": str(python), "bin": str(environment / "bin"), "distributions": sorted(distributions)}


def errorLines(stderr: str) -> list[str]:
    """Standard error without the plain progress lines (``[ 45%] ...``) that ``models pull`` writes
    there in a log (its stdout is the path): what is left must be the one error line."""
    return [line for line in stderr.strip().splitlines() if not re.match(r"^\[\s*\d+%\] ", line)]


# -- the extension as CMake packages it --------------------------------------------------------
# ``cmake_record`` configures the extension with the real ``cmake`` against a stand-in Slicer package
# configuration (``Testing/data/FakeSlicer``) that records what ``slicerMacroBuildScriptedModule``
# receives. ``an_installed_extension`` copies exactly those files (every one it names, nothing else)
# to where ``ctkMacroCompilePythonScript`` puts them: ``<prefix>/lib/Slicer-X.Y/qt-scripted-modules/``,
# each path kept relative to the module's source folder.

FAKE_SLICER = REPO_ROOT / "Testing" / "data" / "FakeSlicer"


def configureExtension(build: Path) -> dict[str, list[str]]:
    """Configure the extension into ``build``; the recorded calls (``SCRIPT``, ``RESOURCE``, ...)."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    record = build / "record.txt"
    completed = subprocess.run(
        [
            cmake,
            "-S",
            str(REPO_ROOT),
            "-B",
            str(build),
            f"-DSlicer_DIR={FAKE_SLICER}",
            "-DBUILD_TESTING=ON",
            f"-DFAKE_SLICER_RECORD={record}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    calls: dict[str, list[str]] = {}
    for line in record.read_text().splitlines():
        key, _, value = line.partition(" ")
        calls.setdefault(key, []).append(value)
    return calls


@pytest.fixture(scope="session")
def cmake_record(tmp_path_factory) -> dict[str, list[str]]:
    """Configure the extension with real cmake against the stand-in Slicer; the recorded calls."""
    return configureExtension(tmp_path_factory.mktemp("cmake-build"))


@pytest.fixture(scope="session")
def an_installed_extension(tmp_path_factory, cmake_record) -> Path:
    """The extension's ``qt-scripted-modules`` folder as an Extension Manager install lays it out:
    the scripts and resources ``MedSegUNet/CMakeLists.txt`` lists, and nothing else."""
    folder = tmp_path_factory.mktemp("installed") / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    for relative in [*cmake_record["SCRIPT"], *cmake_record.get("RESOURCE", [])]:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / "MedSegUNet" / relative, target)
    return folder
