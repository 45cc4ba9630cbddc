"""The model catalog against a real HTTP server on 127.0.0.1: list, pull, run by name, refusals."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import errorLines
from MedSegUNetLib import cli
from MedSegUNetLib.engine import settings
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.engine.paths import sha256
from MedSegUNetLib.models import catalog

LABELS = [(1, "bright", (1.0, 1.0, 0.0))]


def test_shipped_catalog_lists_the_zoo_files_with_their_checksums(repo_root):
    shipped = catalog.loadCatalog(settings.CATALOG_PATH)
    names = {entry["name"] for entry in shipped["models"] if "source" not in entry}
    zoo = {path.stem: path for path in (repo_root / "MedSegUNet" / "Resources" / "Models").glob("*/*.pt")}
    assert names == set(zoo) == {"prostate-zones", "brain-tumor-3d", "brain-tumor-2d", "lgg-flair", "acdc-heart"}
    # Published models come from their authors' releases, pinned, with their licence and sheet.
    published = {entry["name"]: entry for entry in shipped["models"] if "source" in entry}
    assert published["prostate-gland-taps"]["source"]["pip"] == "lavlab-taps==1.1.2" and published["prostate-gland-taps"][
        "license"
    ].startswith("MIT")
    assert published["brain-mask-deepbet"]["source"]["pip"] == "deepbet==1.0.2" and published["brain-mask-deepbet"]["license"].startswith(
        "MIT"
    )
    assert all((repo_root / entry["sheet"]).is_file() for entry in published.values())
    # The inlined card is the one the repository keeps beside the model's sheet.
    for name, entry in published.items():
        assert entry["card"] == json.loads((repo_root / "MedSegUNet" / "Resources" / "Models" / name / "card.json").read_text()), name
    for entry in [entry for entry in shipped["models"] if "source" not in entry]:
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
    assert table[0].split("\t") == ["name", "version", "size", "offline", "description"]
    assert table[1].split("\t")[:4] == ["threshold", "1", "?", "-"]
    assert cli.main(["models", "pull", "threshold"]) == 0
    path = capsys.readouterr().out.strip()
    assert path.startswith(str(a_mirror["cache"])) and sha256(path) == sha256(a_mirror["model"])
    assert cli.main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["models"][0]["cached_path"] == path and listed["source"].endswith("catalog.json")
    assert listed["models"][0]["offline"] == "cached"
    # Any --model takes the name; the cached file is used without a new download.
    import SimpleITK as sitk

    from MedSegUNetLib.models import phantoms

    image = phantoms.paintSpheres(
        phantoms.makeGrid((16, 16, 8), (1, 1, 2), phantoms.rotationMatrix((1, 0, 0), 10)), [((0, 0, 0), 5.0, 1.0)]
    )
    sitk.WriteImage(image, str(tmp_path / "t2.nrrd"))
    assert cli.main(["segment", "-q", "--model", "threshold", str(tmp_path / "t2.nrrd"), "--stats", str(tmp_path / "s.csv")]) == 0
    assert int((tmp_path / "s.csv").read_text().splitlines()[1].split(",")[2]) == int((sitk.GetArrayFromImage(image) > 0.5).sum())
    assert cli.main(["info", "threshold"]) == 0 and "Known-answer threshold model" in capsys.readouterr().out


# [parameters (the model asked for), input (the mirror), expected (words of the one line)]
@pytest.mark.parametrize(
    "name, expected",
    [
        ("corrupted", "has SHA256"),
        ("offline", "Cannot download model 'offline'"),
        ("unknown", "neither a model file nor a model of the catalog"),
    ],
)
def test_refusals_leave_nothing_in_the_cache(capsys, a_mirror, name, expected):
    assert cli.main(["models", "pull", name]) == 2
    err = errorLines(capsys.readouterr().err)
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
    for content, expected in (
        ("{", "not valid JSON"),
        ('{"schema": "x", "models": []}', "not a MedSegUNet model catalog"),
        ('{"schema": "medsegunet.catalog/1", "models": [{"name": "a", "url": "u", "sha256": "x"}]}', "64-digit"),
    ):
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

    (tmp_path / "catalog.json").write_text(
        json.dumps(
            {
                "schema": catalog.SCHEMA,
                "models": [{"name": "slow", "url": a_trickling_server, "sha256": "1" * 64, "description": "a byte now and then"}],
            }
        )
    )
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(tmp_path / "catalog.json"))
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDSEGUNET_DOWNLOAD_TIMEOUT", "2")
    started = time.monotonic()
    assert cli.main(["models", "pull", "slow"]) == 2
    assert time.monotonic() - started < 30  # the limit is 2 s; the bytes would take days
    err = errorLines(capsys.readouterr().err)
    assert len(err) == 1 and "did not finish within 2 s" in err[0] and "MEDSEGUNET_DOWNLOAD_TIMEOUT" in err[0], err
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").rglob("*")) == []


@pytest.mark.parametrize("value", ["0", "-3", "nan", "soon"])
def test_a_bad_download_limit_is_one_line(capsys, a_mirror, monkeypatch, value):
    monkeypatch.setenv("MEDSEGUNET_DOWNLOAD_TIMEOUT", value)
    assert cli.main(["models", "pull", "threshold"]) == 2
    err = errorLines(capsys.readouterr().err)
    assert len(err) == 1 and "MEDSEGUNET_DOWNLOAD_TIMEOUT" in err[0]


def test_a_zoo_model_needs_no_network(capsys, tmp_path, repo_root, monkeypatch):
    """The shipped catalog's URLs are unreachable here; the zoo file with the same SHA256 is used."""
    monkeypatch.delenv("MEDSEGUNET_CATALOG", raising=False)
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    assert cli.main(["models", "pull", "prostate-zones"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(repo_root / "MedSegUNet" / "Resources" / "Models" / "prostate-zones" / "prostate-zones.pt")
    assert not (tmp_path / "cache").exists()


def _wheel(path, package: str, version: str, files: dict) -> None:
    """A real wheel (zip with METADATA, WHEEL and RECORD) holding ``files``: name in the package → bytes."""
    import zipfile

    distInfo = f"{package}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(f"{package}/{name}", content)
        archive.writestr(f"{distInfo}/METADATA", f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: {version}\n")
        archive.writestr(f"{distInfo}/WHEEL", "Wheel-Version: 1.0\nGenerator: medsegunet-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{distInfo}/RECORD", "")


@pytest.fixture(scope="module")
def a_published_onnx(tmp_path_factory):
    """A group-norm SegResNetDS exported to ONNX (as TAPS's), with the card that imports it."""
    from test_importing import GROUP_NORM_NETWORK, exportGroupNormNetwork

    folder = tmp_path_factory.mktemp("published")
    exportGroupNormNetwork(folder / "model.onnx", dynamo=False)
    card = {
        "schema": "medsegunet.model/2",
        "name": "Published gland model",
        "version": "1.0",
        "spatial_dims": 3,
        "inputs": [{"name": "T2"}],
        "labels": [{"value": 1, "name": "gland", "color": [0.8, 0.5, 0.3]}],
        "output": "softmax",
        "normalization": {"type": "zscore"},
        "patch_size": [32, 32, 32],
        "blend": "logits",
        "network": {"_target_": "monai.networks.nets.SegResNetDS", "args": GROUP_NORM_NETWORK},
    }
    return {"onnx": folder / "model.onnx", "card": card}


@pytest.fixture
def a_package_index(tmp_path, a_file_server, a_published_onnx, monkeypatch):
    """A wheel served on 127.0.0.1, pip pointed at it alone, a catalog naming the file inside it."""
    served, url = a_file_server
    _wheel(
        served / "published_gland-1.0-py3-none-any.whl",
        "published_gland",
        "1.0",
        {"__init__.py": b"", "resources/model.onnx": a_published_onnx["onnx"].read_bytes()},
    )
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", url)
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))

    def catalogWith(source: dict) -> None:
        entry = {"name": "gland", "description": "published", "license": "MIT", "card": a_published_onnx["card"], "source": source}
        (tmp_path / "catalog.json").write_text(json.dumps({"schema": catalog.SCHEMA, "models": [entry]}))
        monkeypatch.setenv("MEDSEGUNET_CATALOG", str(tmp_path / "catalog.json"))

    return {"cache": tmp_path / "cache", "catalogWith": catalogWith, "url": url, "served": served, "onnx": a_published_onnx["onnx"]}


def test_a_model_is_pulled_from_its_own_package_imported_and_cached(capsys, a_package_index):
    index = a_package_index
    index["catalogWith"]({"pip": "published-gland==1.0", "file": "published_gland/resources/model.onnx", "sha256": sha256(index["onnx"])})
    assert cli.main(["models", "pull", "gland"]) == 0, capsys.readouterr().err
    path = capsys.readouterr().out.strip().splitlines()[-1]
    from MedSegUNetLib.engine.modelcard import readCard

    card = readCard(path)
    assert (
        path.startswith(str(index["cache"]))
        and card["provenance"]["format"] == "onnx"
        and card["provenance"]["source_sha256"] == sha256(index["onnx"])
    )
    assert card["provenance"]["verified"]["max_abs_difference"] < 1e-3
    assert card["provenance"]["source"] == "published-gland==1.0 published_gland/resources/model.onnx"
    # Cached: a second pull needs no index (the server's folder is emptied).
    for wheel in index["served"].glob("*.whl"):
        wheel.unlink()
    assert cli.main(["models", "pull", "gland"]) == 0 and capsys.readouterr().out.strip().splitlines()[-1] == path


@pytest.mark.parametrize(
    "source, expected",
    [
        ({"pip": "published-gland==1.0", "file": "published_gland/resources/model.onnx", "sha256": "0" * 64}, "nothing was cached"),
        (
            {"pip": "published-gland==2.0", "file": "published_gland/resources/model.onnx", "sha256": "0" * 64},
            "pip could not download published-gland==2.0",
        ),
        ({"pip": "published-gland==1.0", "file": "published_gland/other.onnx", "sha256": "0" * 64}, "has no 'published_gland/other.onnx'"),
    ],
    ids=["wrong-sha256", "missing-version", "missing-file"],
)
def test_a_failed_source_pull_caches_nothing(capsys, a_package_index, source, expected):
    a_package_index["catalogWith"](source)
    assert cli.main(["models", "pull", "gland"]) == 2
    err = errorLines(capsys.readouterr().err)
    assert len(err) == 1 and expected in err[0], err
    assert not a_package_index["cache"].exists() or list(a_package_index["cache"].rglob("*")) == []


def test_an_onnx_url_source_is_imported_on_pull(capsys, a_package_index):
    index = a_package_index
    shutil.copy(index["onnx"], index["served"] / "model.onnx")
    index["catalogWith"]({"url": index["url"] + "model.onnx", "sha256": sha256(index["onnx"])})
    assert cli.main(["models", "pull", "gland"]) == 0, capsys.readouterr().err
    from MedSegUNetLib.engine.modelcard import readCard

    assert readCard(capsys.readouterr().out.strip().splitlines()[-1])["provenance"]["format"] == "onnx"


@pytest.mark.parametrize("pip", ["published-gland", "published-gland>=1.0", "x==1; import os"])
def test_a_pip_source_must_pin_one_version(capsys, a_package_index, pip):
    a_package_index["catalogWith"]({"pip": pip, "file": "published_gland/resources/model.onnx", "sha256": "0" * 64})
    assert cli.main(["models", "list"]) == 2
    err = errorLines(capsys.readouterr().err)
    assert len(err) == 1 and "must pin one version" in err[0], err


def test_auto3dseg_and_bundle_zip_sources_are_imported_on_pull(capsys, tmp_path, a_package_index, monkeypatch):
    """An Auto3DSeg checkpoint (labels from the entry's card) and a MONAI bundle zip, from 127.0.0.1."""
    import zipfile

    from test_importing import auto3dsegCheckpoint, writeBundle

    from MedSegUNetLib.engine.modelcard import readCard

    index = a_package_index
    auto3dsegCheckpoint(index["served"] / "auto3dseg.pt")
    writeBundle(tmp_path / "spleen")
    with zipfile.ZipFile(index["served"] / "bundle.zip", "w") as archive:
        for path in (tmp_path / "spleen").rglob("*"):
            if path.is_file():
                archive.write(path, "spleen_bundle/" + path.relative_to(tmp_path / "spleen").as_posix())
    card = {
        "schema": "medsegunet.model/2",
        "name": "auto",
        "spatial_dims": 3,
        "inputs": [{"name": "image"}],
        "output": "softmax",
        "labels": [
            {"value": 1, "name": "peripheral zone", "color": [0.3, 0.7, 0.3]},
            {"value": 2, "name": "transition zone", "color": [0.9, 0.6, 0.2]},
        ],
    }
    entries = [
        {
            "name": "auto",
            "card": card,
            "source": {"url": index["url"] + "auto3dseg.pt", "sha256": sha256(index["served"] / "auto3dseg.pt")},
        },
        {"name": "bundle", "source": {"url": index["url"] + "bundle.zip", "sha256": sha256(index["served"] / "bundle.zip")}},
    ]
    (tmp_path / "catalog.json").write_text(json.dumps({"schema": catalog.SCHEMA, "models": entries}))
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(tmp_path / "catalog.json"))
    for name, kind, served in (("auto", "auto3dseg", "auto3dseg.pt"), ("bundle", "monai-bundle", "bundle.zip")):
        assert cli.main(["models", "pull", name]) == 0, capsys.readouterr().err
        recorded = readCard(capsys.readouterr().out.strip().splitlines()[-1])["provenance"]
        assert (recorded["format"], recorded["source"]) == (kind, index["url"] + served)


def test_a_bundle_zip_with_a_member_outside_its_folder_is_not_unpacked(tmp_path):
    import zipfile

    from MedSegUNetLib.engine.errors import MedSegUNetError
    from MedSegUNetLib.models.sources import extractBundle

    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("../escaped.txt", "outside")
        archive.writestr("bundle/configs/inference.json", "{}")
    with pytest.raises(MedSegUNetError, match="outside its folder"):
        extractBundle(str(tmp_path / "evil.zip"), str(tmp_path / "unpacked"))
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "unpacked").exists()


@pytest.mark.parametrize("field, value", [("description", 5), ("license", ["MIT"]), ("version", 1.0)])
def test_catalog_fields_of_the_wrong_type_are_one_line(capsys, tmp_path, monkeypatch, field, value):
    entry = {"name": "m", "url": "https://example.invalid/m.pt", "sha256": "0" * 64, field: value}
    (tmp_path / "catalog.json").write_text(json.dumps({"schema": catalog.SCHEMA, "models": [entry]}))
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(tmp_path / "catalog.json"))
    assert cli.main(["models", "list"]) == 2
    err = errorLines(capsys.readouterr().err)
    assert len(err) == 1 and f"has a '{field}' that is not text" in err[0], err


def test_a_relative_catalog_url_is_one_line(capsys, tmp_path, monkeypatch):
    entry = {"name": "m", "url": "models/m.pt", "sha256": "0" * 64}
    (tmp_path / "catalog.json").write_text(json.dumps({"schema": catalog.SCHEMA, "models": [entry]}))
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(tmp_path / "catalog.json"))
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    assert cli.main(["models", "pull", "m"]) == 2
    err = errorLines(capsys.readouterr().err)
    assert len(err) == 1 and "Cannot download model 'm'" in err[0] and "internal error" not in err[0], err


def test_a_torchscript_url_source_with_its_localiser_is_wrapped_on_pull(capsys, tmp_path, a_file_server, monkeypatch):
    """A published TorchScript model and its localiser, each a URL with its SHA256 (the files as their
    authors ship them): wrapped with the entry's schema 3 card; a wrong localiser SHA256 caches nothing."""
    import torch
    from test_torchscript_import import CARD, Softmax2

    from MedSegUNetLib.engine.modelcard import loadModel

    served, url = a_file_server
    for name in ("model.pt", "bbox_model.pt"):
        torch.jit.save(torch.jit.script(Softmax2()), str(served / name))
    source = {
        "url": url + "model.pt",
        "sha256": sha256(served / "model.pt"),
        "localizer": {"url": url + "bbox_model.pt", "sha256": sha256(served / "bbox_model.pt")},
    }
    entries = [
        {"name": "published-mask", "card": CARD, "source": source},
        {"name": "tampered", "card": CARD, "source": {**source, "localizer": {**source["localizer"], "sha256": "0" * 64}}},
    ]
    (tmp_path / "catalog.json").write_text(json.dumps({"schema": catalog.SCHEMA, "models": entries}))
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(tmp_path / "catalog.json"))
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    assert cli.main(["models", "pull", "published-mask"]) == 0, capsys.readouterr().err
    loaded = loadModel(capsys.readouterr().out.strip().splitlines()[-1], "cpu")
    assert loaded.localizer is not None and loaded.card["provenance"]["localizer_sha256"] == source["localizer"]["sha256"]
    # The card records the release, not the temporary folder the pull imported from.
    assert (loaded.card["provenance"]["source"], loaded.card["provenance"]["localizer"]) == (url + "model.pt", url + "bbox_model.pt")
    assert cli.main(["info", str(loaded.path)]) == 0 and f"torchscript {url}model.pt (SHA256" in capsys.readouterr().out
    assert cli.main(["models", "pull", "tampered"]) == 2
    err = errorLines(capsys.readouterr().err)
    assert len(err) == 1 and "nothing was cached" in err[0], err
    assert not (tmp_path / "cache" / "models" / "tampered").exists()


def test_the_shipped_zoo_is_listed_as_available_offline(capsys, tmp_path, monkeypatch):
    """With an empty cache, the shipped catalog's zoo models are 'shipped' (pull returns the
    package's own file, offline); published models that are imported on pull are '-'."""
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDSEGUNET_CATALOG", raising=False)
    assert cli.main(["models", "list"]) == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["lgg-flair"][3] == "shipped" and rows["prostate-zones"][3] == "shipped"
    assert rows["prostate-gland-taps"][3] == "-"
    assert cli.main(["models", "list", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)["models"]}
    assert listed["acdc-heart"]["offline"] == "shipped" and listed["acdc-heart"]["cached_path"].endswith("acdc-heart.pt")
    assert listed["brain-mask-deepbet"]["cached_path"] is None and not (tmp_path / "cache").exists()


def test_every_shipped_catalog_source_pulls_with_the_base_install():
    """What pulling a shipped catalog entry imports is a base dependency (pyproject) and in the
    Slicer module's requirements: an ONNX source (TAPS) needs onnx and onnxruntime, nothing an extra
    brings."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    from packaging.requirements import Requirement

    from conftest import REPO_ROOT
    from MedSegUNetLib.models.catalog import loadCatalog
    from MedSegUNetLib.slicer import dependencies

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    base = {Requirement(line).name.lower() for line in project["dependencies"]}
    module = {
        Requirement(line.split("#")[0].strip()).name.lower()
        for line in (REPO_ROOT / "MedSegUNet" / "Resources" / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    }
    onnxSources = [entry["name"] for entry in loadCatalog()["models"] if str((entry.get("source") or {}).get("file", "")).endswith(".onnx")]
    assert onnxSources == ["prostate-gland-taps"]
    assert {"onnx", "onnxruntime"} <= base and {"onnx", "onnxruntime"} <= module
    assert {"onnx", "onnxruntime"} <= set(dependencies.REQUIRED.values())


# ---------------------------------------------------------------------------------------------
# both formats during the transition: each zoo model also as .pt2
# ---------------------------------------------------------------------------------------------

SHIPPED_PT2 = [entry["name"] for entry in catalog.loadCatalog(settings.CATALOG_PATH)["models"] if "pt2" in entry]


def test_the_catalog_lists_each_zoo_pt2_with_its_checksum(repo_root):
    assert (
        set(SHIPPED_PT2)
        == {path.stem for path in (repo_root / "MedSegUNet" / "Resources" / "Models").glob("*/*.pt2")}
        >= {"prostate-zones", "lgg-flair"}
    )
    for entry in catalog.loadCatalog(settings.CATALOG_PATH)["models"]:
        if "pt2" in entry:
            shipped = repo_root / "MedSegUNet" / "Resources" / "Models" / entry["name"] / f"{entry['name']}.pt2"
            assert entry["pt2"] == {"url": entry["url"][:-3] + ".pt2", "sha256": sha256(shipped), "bytes": shipped.stat().st_size}


@pytest.mark.parametrize("name", SHIPPED_PT2)
def test_each_zoo_pt2_answers_as_its_torchscript_on_three_sizes(capsys, tmp_path, monkeypatch, name):
    import torch

    from MedSegUNetLib.engine.modelcard import clearModelCache, loadModel
    from MedSegUNetLib.models.converting import checkSizes

    monkeypatch.delenv("MEDSEGUNET_CATALOG", raising=False)
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    assert cli.main(["models", "pull", name, "--format", "pt2"]) == 0
    exported = capsys.readouterr().out.strip()
    assert exported.endswith(f"MedSegUNet/Resources/Models/{name}/{name}.pt2") and not (tmp_path / "cache").exists()  # shipped: offline
    clearModelCache()
    scripted, converted = loadModel(str(catalog.pullModel(name)), "cpu"), loadModel(exported, "cpu")
    generator = torch.Generator().manual_seed(7)
    for shape in checkSizes(scripted.card):
        sample = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            assert float((scripted.network(sample) - converted.network(sample)).abs().max()) <= 1e-6, shape
    assert converted.card == scripted.card


def test_a_pt2_is_pulled_from_a_mirror_and_checked(capsys, tmp_path, a_file_server, a_tiny_unet, monkeypatch):
    import torch
    from monai.networks.nets import UNet

    from MedSegUNetLib.engine.modelcard import readCard, saveModel

    served, url = a_file_server
    torch.manual_seed(0)
    saveModel(
        UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
        readCard(a_tiny_unet),
        served / "tiny.pt2",
        format="pt2",
    )
    good = {"url": url + "tiny.pt2", "sha256": sha256(served / "tiny.pt2"), "bytes": (served / "tiny.pt2").stat().st_size}
    entries = [
        {"name": "tiny", "url": url + "absent.pt", "sha256": "1" * 64, "pt2": good},
        {"name": "tampered", "url": url + "absent.pt", "sha256": "1" * 64, "pt2": {**good, "sha256": "2" * 64}},
    ]
    (tmp_path / "catalog.json").write_text(json.dumps({"schema": catalog.SCHEMA, "models": entries}))
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(tmp_path / "catalog.json"))
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    assert cli.main(["models", "pull", "tiny", "--format", "pt2"]) == 0
    path = capsys.readouterr().out.strip()
    assert path.endswith("/tiny.pt2") and sha256(path) == good["sha256"]
    assert cli.main(["models", "pull", "tampered", "--format", "pt2"]) == 2
    assert "SHA256" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "models" / "tampered").exists() or not any((tmp_path / "cache" / "models" / "tampered").rglob("*.pt2"))


@pytest.mark.parametrize(
    "pt2, expected",
    [
        ("not an object", "has a 'pt2' that is not"),
        ({"url": "https://x/m.pt2", "sha256": "x"}, "needs a 'pt2' with a 'url' and a 64-digit"),
        ({"url": "https://x/m.pt2", "sha256": "0" * 64, "bytes": -1}, "'bytes' is not a whole number"),
        ({"url": "https://x/m.pt2", "sha256": "0" * 64, "code": "import os"}, "has a 'pt2' that is not"),
    ],
)
def test_bad_pt2_entries_are_one_line(tmp_path, pt2, expected):
    entry = {"name": "m", "url": "https://x/m.pt", "sha256": "0" * 64, "pt2": pt2}
    (tmp_path / "catalog.json").write_text(json.dumps({"schema": catalog.SCHEMA, "models": [entry]}))
    with pytest.raises(MedSegUNetError, match=re.escape(expected)):
        catalog.loadCatalog(tmp_path / "catalog.json")


def test_a_pip_source_pulls_as_pt2_converted_from_its_import(capsys, a_package_index):
    """``--format pt2`` of an imported source: its import, then a .pt2 beside it that answers as the
    import does; cached with its SHA256 like the import, made again from the import if damaged."""
    import torch

    from MedSegUNetLib.engine.exportedmodel import isExportedArchive
    from MedSegUNetLib.engine.modelcard import clearModelCache, loadModel, readCard

    index = a_package_index
    index["catalogWith"]({"pip": "published-gland==1.0", "file": "published_gland/resources/model.onnx", "sha256": sha256(index["onnx"])})
    assert cli.main(["models", "pull", "gland", "--format", "pt2"]) == 0, capsys.readouterr().err
    exported = Path(capsys.readouterr().out.strip().splitlines()[-1])
    imported = exported.with_suffix(".pt")
    assert exported.name == "gland.pt2" and exported.is_relative_to(index["cache"]) and isExportedArchive(str(exported))
    assert Path(str(exported) + ".sha256").read_text().strip() == sha256(exported)
    assert readCard(exported)["provenance"] == readCard(imported)["provenance"] and readCard(exported)["provenance"][
        "source_sha256"
    ] == sha256(index["onnx"])
    clearModelCache()
    scripted, converted = loadModel(str(imported), "cpu"), loadModel(str(exported), "cpu")
    sample = torch.randn(1, 1, 32, 32, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert float((scripted.network(sample) - converted.network(sample)).abs().max()) <= 1e-6
    # Cached: no index is needed and nothing is written again.
    for wheel in index["served"].glob("*.whl"):
        wheel.unlink()
    written = exported.stat().st_mtime_ns
    assert cli.main(["models", "pull", "gland", "--format", "pt2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(exported) and exported.stat().st_mtime_ns == written
    # A damaged .pt2 is converted again from the cached import, offline.
    good = sha256(exported)
    with open(exported, "ab") as stream:
        stream.write(b"tail")
    assert cli.main(["models", "pull", "gland", "--format", "pt2"]) == 0, capsys.readouterr().err
    assert sha256(exported) == good and [p.name for p in exported.parent.iterdir() if p.is_dir()] == []


def test_a_source_with_a_localiser_has_no_pt2_and_nothing_is_fetched(capsys, a_package_index):
    index = a_package_index
    index["catalogWith"](
        {"url": index["url"] + "model.pt", "sha256": "0" * 64, "localizer": {"url": index["url"] + "bbox_model.pt", "sha256": "1" * 64}}
    )
    assert cli.main(["models", "pull", "gland", "--format", "pt2"]) == 2
    err = errorLines(capsys.readouterr().err)
    assert err == [
        "medsegunet: error: 'gland' is published as TorchScript with a localiser network, which has no .pt2 form: pull it without "
        "'--format pt2'."
    ]
    assert not index["cache"].exists()


# ---------------------------------------------------------------------------------------------
# progress where a user waits: a bar that moves on a terminal, plain lines in a log
# ---------------------------------------------------------------------------------------------


def aServedZooCopy(a_file_server, repo_root, monkeypatch, tmp_path) -> dict:
    """A zoo model (0.9 MB: fifteen 64 KiB blocks) served under another name on 127.0.0.1, and an empty cache."""
    served, url = a_file_server
    model = repo_root / "MedSegUNet" / "Resources" / "Models" / "brain-tumor-2d" / "brain-tumor-2d.pt"
    shutil.copy(model, served / "mirrored.pt")
    entry = {
        "name": "mirrored",
        "url": url + "mirrored.pt",
        "sha256": sha256(model),
        "bytes": model.stat().st_size,
        "description": "a mirror's copy",
    }
    (served / "catalog.json").write_text(json.dumps({"schema": catalog.SCHEMA, "models": [entry]}))
    monkeypatch.setenv("MEDSEGUNET_CATALOG", url + "catalog.json")
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    return {"cache": tmp_path / "cache", "model": model}


def test_a_pull_draws_a_moving_bar_on_a_terminal(monkeypatch, tmp_path, a_file_server, repo_root):
    import io
    import sys

    from conftest import aTerminalOnStderr

    served = aServedZooCopy(a_file_server, repo_root, monkeypatch, tmp_path)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    with aTerminalOnStderr(monkeypatch) as terminal:
        assert cli.main(["models", "pull", "mirrored"]) == 0
    path = sys.stdout.getvalue()
    # Standard output is the path alone; the bar is redrawn in place, its percentage rising to the end.
    assert path.strip().startswith(str(served["cache"])) and len(path.splitlines()) == 1 and sha256(path.strip()) == sha256(served["model"])
    assert "\r" in terminal.text and "Downloading mirrored.pt" in terminal.text and re.search(r"of 0\.9\d? MB", terminal.text)
    assert len(set(terminal.percentages)) >= 5 and terminal.percentages == sorted(terminal.percentages) and terminal.percentages[-1] == 100


@pytest.mark.parametrize("quiet, expected", [(False, ["Downloading mirrored.pt"]), (True, [])], ids=["log", "quiet"])
def test_a_pull_in_a_log_prints_plain_lines_on_stderr(capsys, monkeypatch, tmp_path, a_file_server, repo_root, quiet, expected):
    served = aServedZooCopy(a_file_server, repo_root, monkeypatch, tmp_path)
    assert cli.main(["models", "pull", "mirrored", *(["-q"] if quiet else [])]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().startswith(str(served["cache"])) and len(captured.out.splitlines()) == 1
    # One line per step, no carriage return: a batch system's log reads it as it is.
    lines = captured.err.splitlines()
    assert "\r" not in captured.err and [re.sub(r"^\[\s*\d+%\] ", "", line).split(":")[0] for line in lines] == expected, lines


def test_a_source_pull_logs_its_import_steps_in_order(capsys, a_package_index):
    """Fetch, checksum, the import's own steps (read, build, verify, write), the cache write: in
    that order, each once, with fractions that never go back."""
    index = a_package_index
    index["catalogWith"]({"pip": "published-gland==1.0", "file": "published_gland/resources/model.onnx", "sha256": sha256(index["onnx"])})
    assert cli.main(["models", "pull", "gland"]) == 0
    lines = capsys.readouterr().err.splitlines()
    steps = [re.match(r"^\[\s*(\d+)%\] (.*)$", line).groups() for line in lines]
    assert [int(percent) for percent, _ in steps] == sorted(int(percent) for percent, _ in steps)
    expected = [
        "Fetching published-gland==1.0 with pip",
        "Checking SHA256 of model.onnx",
        "Importing and verifying model.onnx as 'gland'",
        "Reading the ONNX graph model.onnx",
        "Building SegResNetDS and loading its weights",
        "Verifying the converted network against onnxruntime on a (1, 1, 32, 32, 32) patch",
        "Writing and checking gland.pt",
        "Writing 'gland' to the cache",
        "'gland' is cached",
    ]
    assert [message.split(":")[0] for _, message in steps] == expected, lines
