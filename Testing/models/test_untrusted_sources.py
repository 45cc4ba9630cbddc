"""Catalog sources are data from end to end: pip requirements are parsed, never passed as typed;
pip runs bounded, in its own process group, inside the pull's temporary folder, and ends with the
pull however the pull ends; downloads stop at their size, their deadline and a minimum rate; a
``file://`` source must be a regular file; cached models are checked by their own SHA256 on every
use; catalog names and fields are checked whole.

Servers are real (``http.server`` on 127.0.0.1); payloads only create a marker file in the test's
folder; processes are found by an environment tag, never by name.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

import pytest
import torch
from test_torchscript_safety import CARD, Clean

from conftest import REPO_ROOT, errorLines, servedFolder, treeDigest
from MedSegUNetLib import cli
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.engine.paths import sha256
from MedSegUNetLib.models import catalog, sources

TAG_VARIABLE = "MEDSEGUNET_TEST_TAG"


def taggedProcesses(tag: str) -> list[int]:
    """PIDs of live processes whose environment holds ``MEDSEGUNET_TEST_TAG=tag`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as stream:
                environment = stream.read()
            with open(f"/proc/{entry}/stat") as stream:
                state = stream.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"{TAG_VARIABLE}={tag}".encode() in environment.split(b"\0") and state != "Z":
            found.append(int(entry))
    return found


def goneWithin(tag: str, seconds: float) -> bool:
    """Whether every tagged process has ended within ``seconds`` (polled: a bound, not a chosen moment)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not taggedProcesses(tag):
            return True
        time.sleep(0.1)
    return not taggedProcesses(tag)


def pullCommand(name: str) -> list[str]:
    return [sys.executable, "-m", "MedSegUNetLib.cli", "models", "pull", name]


def catalogOf(folder: Path, *entries: dict) -> Path:
    path = folder / "catalog.json"
    path.write_text(json.dumps({"schema": catalog.SCHEMA, "models": list(entries)}))
    return path


# ---------------------------------------------------------------------------------------------
# Requirements are parsed, not passed


# [the catalog's pip value, the words of the refusal]
BAD_REQUIREMENTS = [
    ("pkg==1.0.tar.gz", "is not a version"),
    ("--log==1.0", "must pin one version"),
    ("./pkg==1.0", "must pin one version"),
    ("pkg[extra]==1.0", "must pin one version"),
    ("pkg==1.0; os_name=='posix'", "is not a version"),
    ("https://example.org/pkg==1.0", "must pin one version"),
    ("pkg>=1.0", "must pin one version"),
    ("pkg==1.0 --index-url=http://evil", "is not a version"),
]


@pytest.mark.parametrize("requirement, expected", BAD_REQUIREMENTS, ids=[case[0] for case in BAD_REQUIREMENTS])
def test_a_requirement_that_is_not_name_and_version_is_refused(requirement, expected):
    with pytest.raises(MedSegUNetError, match=expected):
        sources.parseRequirement(requirement, "the catalog")


@pytest.mark.parametrize(
    "requirement, canonical",
    [
        ("deepbet==1.0.2", "deepbet==1.0.2"),
        ("LavLab_TAPS==1.1.2", "lavlab-taps==1.1.2"),
        ("pkg==v1.0", "pkg==1.0"),
        ("pkg==1.0.post1", "pkg==1.0.post1"),
    ],
)
def test_a_requirement_reaches_pip_in_its_canonical_form(requirement, canonical):
    assert sources.parseRequirement(requirement, "the catalog") == canonical


def payloadSdist(folder: Path, marker: Path) -> Path:
    """``pkg-1.0.tar.gz`` whose ``setup.py`` creates the marker: what pip runs if it takes the
    catalog's "version" for a local archive."""
    source = folder / "pkg-1.0"
    source.mkdir()
    (source / "setup.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom setuptools import setup\nsetup(name='pkg', version='1.0')\n"
    )
    archive = folder / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="pkg-1.0")
    return archive


@pytest.mark.parametrize("requirement", ["pkg==1.0.tar.gz", "pkg==1.0-1.0.tar.gz", "--log==1.0"])
def test_a_pip_payload_in_the_current_folder_never_runs(tmp_path, requirement):
    """The payload sdist lies in the folder the user runs the command from: refused in one line
    when the catalog is read, no marker, the folder unchanged, no file '=1.0'."""
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "MARKER"
    payloadSdist(work, marker)
    (work / "pkg==1.0.tar.gz").write_bytes((work / "pkg-1.0.tar.gz").read_bytes())
    entry = {"name": "pkg", "card": CARD, "source": {"pip": requirement, "file": "pkg/model.pt", "sha256": "0" * 64}}
    environment = {
        **os.environ,
        "MEDSEGUNET_CATALOG": str(catalogOf(tmp_path, entry)),
        "MEDSEGUNET_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(REPO_ROOT / "MedSegUNet"),
    }
    before = treeDigest(work)
    done = subprocess.run(pullCommand("pkg"), cwd=work, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = errorLines(done.stderr)
    assert len(lines) == 1 and "'pip' must pin one version" in lines[0], lines
    assert not marker.exists() and treeDigest(work) == before and not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------
# pip under the bounds of every download, ended with the pull


class TricklingIndex:
    """A package index on 127.0.0.1 whose one wheel comes one byte every ``pause`` seconds (for at
    most ``limit`` seconds): a stalled mirror. ``requested`` is set when pip asks for the wheel."""

    WHEEL = "slowpkg-1.0-py3-none-any.whl"

    def __init__(self, pause: float = 0.5, limit: float = 60.0) -> None:
        self.requested = threading.Event()
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/simple/slowpkg"):
                    body = f'<html><body><a href="/files/{TricklingIndex.WHEEL}">{TricklingIndex.WHEEL}</a></body></html>'.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if self.path.endswith(TricklingIndex.WHEEL):
                    index.requested.set()
                    self.send_response(200)
                    self.send_header("Content-Length", str(10 * 2**20))
                    self.end_headers()
                    ends = time.monotonic() + limit
                    try:
                        while time.monotonic() < ends:
                            self.wfile.write(b"P")
                            self.wfile.flush()
                            time.sleep(pause)
                    except OSError:  # the client went away
                        pass
                    return
                self.send_error(404)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def a_stalled_index(tmp_path):
    index = TricklingIndex()
    tag = uuid.uuid4().hex
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    entry = {"name": "slow", "card": CARD, "source": {"pip": "slowpkg==1.0", "file": "slowpkg/model.pt", "sha256": "0" * 64}}
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    environment.update(
        {
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_INDEX_URL": index.url,
            "PIP_NO_CACHE_DIR": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "MEDSEGUNET_CATALOG": str(catalogOf(tmp_path, entry)),
            "MEDSEGUNET_CACHE": str(tmp_path / "cache"),
            "TMPDIR": str(temporary),
            TAG_VARIABLE: tag,
            "PYTHONPATH": str(REPO_ROOT / "MedSegUNet"),
        }
    )
    yield {"index": index, "tag": tag, "env": environment, "tmp": temporary, "cwd": tmp_path}
    for pid in taggedProcesses(tag):
        os.kill(pid, signal.SIGKILL)
    index.close()


@pytest.mark.parametrize(
    "variables, expected",
    [({"MEDSEGUNET_DOWNLOAD_TIMEOUT": "4"}, "did not finish within 4 s"), ({"MEDSEGUNET_DOWNLOAD_MIN_RATE": "100000/3"}, "stalled")],
)
def test_pip_keeps_the_deadline_and_the_minimum_rate(a_stalled_index, variables, expected):
    started = time.monotonic()
    done = subprocess.run(
        pullCommand("slow"),
        cwd=a_stalled_index["cwd"],
        env={**a_stalled_index["env"], **variables},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = errorLines(done.stderr)
    assert len(lines) == 1 and expected in lines[0] and "pip could not download slowpkg==1.0" in lines[0], lines
    assert time.monotonic() - started < 40
    assert a_stalled_index["index"].requested.is_set()
    assert goneWithin(a_stalled_index["tag"], 5), "pip outlived the pull"
    assert treeDigest(a_stalled_index["tmp"]) == {}, "pip's or the pull's temporary folders were left"


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_pip_ends_with_the_pull_however_it_ends(a_stalled_index, how):
    """The signal is sent once pip has asked for the wheel (observed at the server)."""
    process = subprocess.Popen(
        pullCommand("slow"),
        cwd=a_stalled_index["cwd"],
        env=a_stalled_index["env"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert a_stalled_index["index"].requested.wait(90), "pip never asked for the wheel"
        process.send_signal(how)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert goneWithin(a_stalled_index["tag"], 10), "pip outlived the pull"
    if how == signal.SIGKILL:
        return  # nothing of ours runs after SIGKILL: only the kernel's ending of pip is asked for
    assert process.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[how], stderr
    assert len(errorLines(stderr)) == 1, stderr
    assert treeDigest(a_stalled_index["tmp"]) == {}, "temporary folders were left"


# ---------------------------------------------------------------------------------------------
# Downloads: size, file:// sources


def test_a_file_source_that_is_a_fifo_is_refused_at_once(tmp_path, monkeypatch, capsys):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    entry = {"name": "fifo", "card": CARD, "source": {"url": fifo.as_uri(), "sha256": "0" * 64}}
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(catalogOf(tmp_path, entry)))
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    started = time.monotonic()
    assert cli.main(["models", "pull", "fifo"]) == 2
    err = errorLines(capsys.readouterr().err)
    assert len(err) == 1 and "is not a regular file" in err[0], err
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("declared", [4096, None])
def test_a_download_stops_at_the_catalogs_bytes(tmp_path, declared):
    """A served file larger than the entry's ``bytes`` stops at that size (without ``bytes``, at the
    cap: a 4 GiB default, here lowered through the same variable the size check reads)."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "big.pt").write_bytes(b"\0" * 2**20)
    with servedFolder(served) as url:
        entry = {"name": "big", "card": CARD, "source": {"url": url + "big.pt", "sha256": "0" * 64}}
        if declared:
            entry["bytes"] = declared
        zero = {"name": "zero", "card": CARD, "source": {"url": "file:///dev/zero", "sha256": "0" * 64}}
        environment = {
            **os.environ,
            "MEDSEGUNET_CATALOG": str(catalogOf(tmp_path, entry, zero)),
            "MEDSEGUNET_CACHE": str(tmp_path / "cache"),
            "PYTHONPATH": str(REPO_ROOT / "MedSegUNet"),
        }
        if not declared:
            environment["MEDSEGUNET_DOWNLOAD_MAX_BYTES"] = "4096"
        for name, expected in (("big", "larger than the 4096 bytes it may have"), ("zero", "not a regular file")):
            done = subprocess.run(pullCommand(name), cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
            lines = errorLines(done.stderr)
            assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], done.stderr
    assert not (tmp_path / "cache").exists() or not [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]


def test_a_trickling_http_download_ends_below_the_minimum_rate(tmp_path, monkeypatch):
    from MedSegUNetLib.models.downloads import download

    index = TricklingIndex(pause=0.3)
    monkeypatch.setenv("MEDSEGUNET_DOWNLOAD_MIN_RATE", "1000/2")
    started = time.monotonic()
    try:
        with pytest.raises(MedSegUNetError, match="stalled"):
            download(index.url.replace("/simple/", "/files/") + TricklingIndex.WHEEL, tmp_path / "out" / "x.whl", "0" * 64)
    finally:
        index.close()
    assert time.monotonic() - started < 20 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["fast", "-1", "10/0", "nan"])
def test_a_wrong_minimum_rate_is_one_line(monkeypatch, value):
    from MedSegUNetLib.models.downloads import minimumRate

    monkeypatch.setenv("MEDSEGUNET_DOWNLOAD_MIN_RATE", value)
    with pytest.raises(MedSegUNetError, match="MEDSEGUNET_DOWNLOAD_MIN_RATE"):
        minimumRate()


# ---------------------------------------------------------------------------------------------
# The cache: every cached model is checked by its own SHA256


@pytest.fixture()
def a_url_source(tmp_path, monkeypatch):
    """A published TorchScript network served on 127.0.0.1 and a catalog naming it; yields paths."""
    served = tmp_path / "served"
    served.mkdir()
    torch.jit.save(torch.jit.script(Clean()), str(served / "model.pt"))
    with servedFolder(served) as url:
        entry = {"name": "published", "card": CARD, "source": {"url": url + "model.pt", "sha256": sha256(served / "model.pt")}}
        monkeypatch.setenv("MEDSEGUNET_CATALOG", str(catalogOf(tmp_path, entry)))
        monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
        yield {"entry": entry, "served": served, "cached": catalog.cachedPath(entry)}


def pulled(capsys) -> Path:
    assert cli.main(["models", "pull", "published"]) == 0, capsys.readouterr().err
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_published_torchscript_source_is_cached_but_not_converted(capsys, a_url_source):
    """Its network exists only as TorchScript: ``--format pt2`` says so in one line, the verified
    import stays cached for a plain pull, and no .pt2 (nor its staging folder) is left."""
    assert cli.main(["models", "pull", "published", "--format", "pt2"]) == 2
    err = errorLines(capsys.readouterr().err)  # the pull's own steps are plain lines in a log
    assert len(err) == 1 and "cannot be converted to .pt2; keep the TorchScript file" in err[-1], err
    cached = a_url_source["cached"]
    assert sorted(path.name for path in cached.parent.iterdir()) == ["published.pt", "published.pt.sha256"]
    assert pulled(capsys) == cached


def test_a_damaged_cached_model_is_imported_again(capsys, a_url_source):
    path = pulled(capsys)
    good, written = sha256(path), path.stat().st_mtime_ns
    assert Path(str(path) + ".sha256").read_text().strip() == good
    assert pulled(capsys) == path and path.stat().st_mtime_ns == written  # an intact cached model is used as it is
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of the network's code or weights
    path.write_bytes(bytes(data))
    assert pulled(capsys) == path and sha256(path) == good


def test_another_network_with_the_same_card_in_the_cache_is_replaced(capsys, a_url_source):
    """A cached file swapped for another network saved with the same card (provenance included)."""
    from test_torchscript_import import Logits2

    from MedSegUNetLib.engine.modelcard import readCard, saveModel

    path = pulled(capsys)
    good = sha256(path)
    card = readCard(path)
    saveModel(torch.jit.script(Logits2()), card, path)
    assert sha256(path) != good and readCard(path)["provenance"] == card["provenance"]
    assert pulled(capsys) == path and sha256(path) == good


def test_a_damaged_cached_model_offline_is_one_line(capsys, a_url_source, monkeypatch, tmp_path):
    path = pulled(capsys)
    path.write_bytes(path.read_bytes()[:-10])
    entry = {**a_url_source["entry"], "source": {**a_url_source["entry"]["source"], "url": "http://127.0.0.1:9/model.pt"}}
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(catalogOf(tmp_path, entry)))
    assert cli.main(["models", "pull", "published"]) == 2
    err = errorLines(capsys.readouterr().err)
    assert len(err) == 1 and "Cannot download" in err[0] and "internal error" not in err[0], err


def test_a_cached_path_that_is_a_folder_is_refused(capsys, a_url_source):
    cached = a_url_source["cached"]
    cached.mkdir(parents=True)
    (cached / "mine.txt").write_text("a user's file")
    assert cli.main(["models", "pull", "published"]) == 2
    err = errorLines(capsys.readouterr().err)
    assert len(err) == 1 and "is not a regular file" in err[0], err
    assert sorted(os.listdir(cached)) == ["mine.txt"]


# ---------------------------------------------------------------------------------------------
# Catalog fields checked whole


# [the name or field, the words of the refusal]
@pytest.mark.parametrize(
    "change, expected",
    [
        ({"name": "prob\n"}, "needs a 'name' of up to 100"),
        ({"name": "x" * 300}, "needs a 'name' of up to 100"),
        ({"name": "a/b"}, "needs a 'name' of up to 100"),
        ({"bytes": "1000"}, "is not a whole number of bytes"),
        ({"bytes": -5}, "is not a whole number of bytes"),
        ({"bytes": True}, "is not a whole number of bytes"),
    ],
    ids=["trailing-newline", "300-characters", "slash", "bytes-string", "bytes-negative", "bytes-bool"],
)
def test_a_catalog_field_of_the_wrong_form_is_one_line(capsys, tmp_path, monkeypatch, change, expected):
    entry = {"name": "ok", "url": "http://127.0.0.1:9/x.pt", "sha256": "0" * 64, **change}
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(catalogOf(tmp_path, entry)))
    assert cli.main(["models", "list"]) == 2
    err = errorLines(capsys.readouterr().err)
    assert len(err) == 1 and expected in err[0] and "internal error" not in err[0], err


# ---------------------------------------------------------------------------------------------
# A wheel's members are bounded before they inflate


def bombWheel(folder: Path) -> Path:
    """A valid wheel for ``bombpkg==1.0`` whose model member inflates to 10 MiB (a 10 kB file)."""
    wheel = folder / "bombpkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bombpkg/__init__.py", "")
        archive.writestr("bombpkg/model.pt", b"\0" * (10 * 2**20))
        archive.writestr("bombpkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: bombpkg\nVersion: 1.0\n")
        archive.writestr("bombpkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr("bombpkg-1.0.dist-info/RECORD", "")
    return wheel


def test_a_wheel_member_that_inflates_past_the_catalogs_bytes_is_not_extracted(tmp_path):
    from MedSegUNetLib.engine.archives import ExtractionBudget, extractMember, openArchive

    wheel = bombWheel(tmp_path)
    assert wheel.stat().st_size < 100_000
    with pytest.raises(MedSegUNetError, match="inflates to more than"):
        with openArchive(wheel, "The wheel") as archive:
            extractMember(
                archive, archive.getinfo("bombpkg/model.pt"), str(tmp_path / "model.pt"), ExtractionBudget(tmp_path, 2**20), "The wheel"
            )
    assert not (tmp_path / "model.pt").exists()


def test_a_pip_source_whose_member_inflates_past_its_bytes_caches_nothing(tmp_path):
    """The whole pull, pip included, from a package index on 127.0.0.1 serving the bomb wheel."""
    root = tmp_path / "index"
    (root / "simple" / "bombpkg").mkdir(parents=True)
    bombWheel(root / "simple" / "bombpkg")
    entry = {
        "name": "bomb",
        "card": CARD,
        "bytes": 2**20,
        "source": {"pip": "bombpkg==1.0", "file": "bombpkg/model.pt", "sha256": "0" * 64},
    }
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    with servedFolder(root) as url:
        environment.update(
            {
                "PIP_CONFIG_FILE": os.devnull,
                "PIP_INDEX_URL": url + "simple/",
                "PIP_NO_CACHE_DIR": "1",
                "MEDSEGUNET_CATALOG": str(catalogOf(tmp_path, entry)),
                "MEDSEGUNET_CACHE": str(tmp_path / "cache"),
                "PYTHONPATH": str(REPO_ROOT / "MedSegUNet"),
            }
        )
        done = subprocess.run(pullCommand("bomb"), cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    lines = errorLines(done.stderr)
    assert len(lines) == 1 and "inflates to more than 1.0 MiB" in lines[0], lines
    assert not (tmp_path / "cache").exists() or not [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]


def test_a_source_pull_reports_each_step_in_order(a_url_source):
    """A pull that takes half a minute shows where it is: fetch, checksum, import and verification,
    cache write, done; fractions never go back."""
    steps: list[tuple[float, str]] = []
    path = catalog.pullModel("published", progress=lambda fraction, message: steps.append((fraction, message)))
    assert path == a_url_source["cached"] and path.is_file()
    words = [message.split()[0] for _, message in steps]
    # The download's own lines (bytes, rate, time left) come within the fetch step.
    downloads = [message for _, message in steps if message.startswith("Downloading model.pt: ")]
    assert downloads and downloads[-1].split(": ", 1)[1].startswith(
        f"{a_url_source['served'].joinpath('model.pt').stat().st_size / 2**20:.1f} of "
    )
    # The import's own steps (read, verify, write and check) come within the import step.
    assert [word for word in words if word != "Downloading"] == [
        "Fetching",
        "Checking",
        "Importing",
        "Reading",
        "Verifying",
        "Writing",
        "Writing",
        "'published'",
    ], steps
    assert [fraction for fraction, _ in steps] == sorted(fraction for fraction, _ in steps) and steps[-1][0] == 1.0
    assert steps[0][1] == f"Fetching {a_url_source['entry']['source']['url']}"


# [parameters (bytes done, size, seconds), expected (what the bar or log line says)]
@pytest.mark.parametrize(
    "done, total, seconds, expected",
    [
        (10 * 2**20, 80 * 2**20, 2.0, "10.0 of 80.0 MB, 5.0 MB/s, about 14 s left"),
        (3 * 2**20, 0, 1.5, "3.0 MB, 2.0 MB/s"),  # pip, or a server that does not say the size
        (0, 5 * 2**20, 0.0, "0.0 of 5.0 MB"),
    ],
)
def test_a_transfer_says_its_bytes_rate_and_time_left(done, total, seconds, expected):
    from MedSegUNetLib.models.downloads import transferText

    assert transferText(done, total, seconds) == expected


def test_a_pip_fetch_reports_the_bytes_it_has_brought(tmp_path, monkeypatch):
    """pip says nothing while it runs: the pull reports the bytes under its folder, at each poll."""
    from MedSegUNetLib.engine.errors import MedSegUNetError
    from MedSegUNetLib.models import sources

    root = tmp_path / "index"
    (root / "simple" / "bombpkg").mkdir(parents=True)
    bombWheel(root / "simple" / "bombpkg")
    folder = tmp_path / "pull"
    folder.mkdir()
    messages: list[str] = []
    with servedFolder(root) as url:
        for key in [key for key in os.environ if key.startswith("PIP_")]:
            monkeypatch.delenv(key)
        monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("PIP_INDEX_URL", url + "simple/")
        monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
        with pytest.raises(MedSegUNetError, match="inflates"):
            sources.fetchWheelFiles(
                "bombpkg==1.0",
                ["bombpkg/model.pt"],
                str(folder),
                maxBytes=2**20,
                progress=lambda fraction, message: messages.append(message),
            )
    assert messages and all(message.startswith("Fetching bombpkg==1.0 with pip: ") and " MB" in message for message in messages), messages
