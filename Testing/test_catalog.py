"""The model catalog against a real HTTP server on 127.0.0.1: list, pull, run by name, refusals."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from MedSegUNetLib.models import catalog

from MedSegUNetLib import cli
from MedSegUNetLib.engine.volumes import sha256

LABELS = [(1, "bright", (1.0, 1.0, 0.0))]


def test_shipped_catalog_lists_the_zoo_files_with_their_checksums(repo_root):
    shipped = catalog.loadCatalog(catalog.CATALOG_PATH)
    names = {entry["name"] for entry in shipped["models"]}
    zoo = {path.stem: path for path in (repo_root / "Resources" / "Models").glob("*/*.pt")}
    assert names == set(zoo) == {"prostate-zones", "brain-tumor-3d", "brain-tumor-2d"}
    for entry in shipped["models"]:
        assert entry["sha256"] == sha256(zoo[entry["name"]]) and entry["bytes"] == zoo[entry["name"]].stat().st_size
        assert entry["url"].startswith("https://") and entry["url"].endswith(f"/{entry['name']}.pt")


@pytest.fixture
def a_mirror(tmp_path, a_file_server, a_threshold_model, monkeypatch):
    """A catalog served over HTTP (an institution's mirror) and an empty cache, set by environment."""
    served, url = a_file_server
    model = a_threshold_model((0.5,), LABELS)
    shutil.copy(model, served / "threshold.pt")
    entries = [
        {"name": "threshold", "url": url + "threshold.pt", "sha256": sha256(model), "description": "known answer", "version": "1"},
        {"name": "corrupted", "url": url + "threshold.pt", "sha256": "0" * 64, "description": "wrong checksum"},
        {"name": "offline", "url": "http://127.0.0.1:9/absent.pt", "sha256": sha256(model), "description": "unreachable"},
    ]
    (served / "catalog.json").write_text(json.dumps({"schema": catalog.SCHEMA, "models": entries}))
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDSEGUNET_CATALOG", url + "catalog.json")
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(cache))
    return {"cache": cache, "model": model, "url": url}


def test_list_pull_and_run_by_name(capsys, tmp_path, a_mirror):
    assert cli.main(["models", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split("\t") == ["name", "version", "size", "cache", "description"]
    assert table[1].split("\t")[:4] == ["threshold", "1", "?", "-"]
    assert cli.main(["models", "pull", "threshold"]) == 0
    path = capsys.readouterr().out.strip()
    assert path.startswith(str(a_mirror["cache"])) and sha256(path) == sha256(a_mirror["model"])
    assert cli.main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["models"][0]["cached_path"] == path and listed["source"].endswith("catalog.json")
    # Any --model takes the name; the cached file is used without a new download.
    import SimpleITK as sitk

    from MedSegUNetLib.models import phantoms

    image = phantoms.paintSpheres(phantoms.makeGrid((16, 16, 8), (1, 1, 2), phantoms.rotationMatrix((1, 0, 0), 10)), [((0, 0, 0), 5.0, 1.0)])
    sitk.WriteImage(image, str(tmp_path / "t2.nrrd"))
    assert cli.main(["segment", "-q", "--model", "threshold", str(tmp_path / "t2.nrrd"), "--stats", str(tmp_path / "s.csv")]) == 0
    assert int((tmp_path / "s.csv").read_text().splitlines()[1].split(",")[2]) == int((sitk.GetArrayFromImage(image) > 0.5).sum())
    assert cli.main(["info", "threshold"]) == 0 and "Known-answer threshold model" in capsys.readouterr().out


# [parameters (the model asked for), input (the mirror), expected (words of the one line)]
@pytest.mark.parametrize(
    "name, expected",
    [("corrupted", "has SHA256"), ("offline", "Cannot download model 'offline'"), ("unknown", "neither a model file nor a model of the catalog")],
)
def test_refusals_leave_nothing_in_the_cache(capsys, a_mirror, name, expected):
    assert cli.main(["models", "pull", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0]
    # Nothing at all: no file, and no empty folder left by the failed pull.
    assert not a_mirror["cache"].exists() or list(a_mirror["cache"].rglob("*")) == []


def test_download_can_be_cancelled(tmp_path, a_mirror):
    import threading

    from MedSegUNetLib.engine.errors import ProcessingCancelled

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ProcessingCancelled):
        catalog.pullModel("threshold", cancelEvent=cancel)
    assert not any(files for _, _, files in os.walk(a_mirror["cache"]))


def test_bad_catalogs_are_one_line(tmp_path, monkeypatch):
    for content, expected in (("{", "not valid JSON"), ('{"schema": "x", "models": []}', "not a MedSegUNet model catalog"),
                              ('{"schema": "medsegunet.catalog/1", "models": [{"name": "a", "url": "u", "sha256": "x"}]}', "64-digit")):
        path = tmp_path / "catalog.json"
        path.write_text(content)
        with pytest.raises(Exception) as error:
            catalog.loadCatalog(path)
        assert expected in str(error.value) and "\n" not in str(error.value)


@pytest.fixture
def a_trickling_server():
    """A real HTTP server on 127.0.0.1 that sends a model's headers, then one byte every 0.5 s."""
    import http.server
    import threading
    import time

    stop = threading.Event()

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            while not stop.is_set():
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                stop.wait(0.5)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/model.pt"
    stop.set()
    server.shutdown()
    server.server_close()


def test_a_trickling_server_is_given_up_on(capsys, tmp_path, a_trickling_server, monkeypatch):
    import time

    (tmp_path / "catalog.json").write_text(json.dumps({"schema": catalog.SCHEMA, "models": [
        {"name": "slow", "url": a_trickling_server, "sha256": "1" * 64, "description": "a byte now and then"}]}))
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(tmp_path / "catalog.json"))
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDSEGUNET_DOWNLOAD_TIMEOUT", "2")
    started = time.monotonic()
    assert cli.main(["models", "pull", "slow"]) == 2
    assert time.monotonic() - started < 30  # the limit is 2 s; the bytes would take days
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did not finish within 2 s" in err[0] and "MEDSEGUNET_DOWNLOAD_TIMEOUT" in err[0], err
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").rglob("*")) == []


@pytest.mark.parametrize("value", ["0", "-3", "nan", "soon"])
def test_a_bad_download_limit_is_one_line(capsys, a_mirror, monkeypatch, value):
    monkeypatch.setenv("MEDSEGUNET_DOWNLOAD_TIMEOUT", value)
    assert cli.main(["models", "pull", "threshold"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MEDSEGUNET_DOWNLOAD_TIMEOUT" in err[0]


def test_a_zoo_model_needs_no_network(capsys, tmp_path, repo_root, monkeypatch):
    """The shipped catalog's URLs are unreachable here; the zoo file with the same SHA256 is used."""
    monkeypatch.delenv("MEDSEGUNET_CATALOG", raising=False)
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    assert cli.main(["models", "pull", "prostate-zones"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(repo_root / "Resources" / "Models" / "prostate-zones" / "prostate-zones.pt")
    assert not (tmp_path / "cache").exists()
