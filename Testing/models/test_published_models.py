"""Real published models from their own packages, against their own tools.

- TAPS (``lavlab-taps`` 1.1.2, MIT): its ONNX file imported into a MONAI SegResNetDS;
- deepbet (``deepbet`` 1.0.2, MIT): its two TorchScript networks wrapped with a schema 3 card.

Both wheels are downloaded once (``pip download --no-deps``) into the tests' cache folder and then
served from 127.0.0.1 as a package index (``python -m http.server``'s folder listings), which is
the only index pip sees while the shipped catalog's entries are pulled. Offline without that cache
the tests skip with a message. The home tools run as their authors ship them: TAPS's command from
its unpacked wheel (its dependencies minus ``onnxruntime-gpu`` are in the test extra), deepbet's
``run_bet`` from the installed package.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, errorLines, requireSharedData, servedFolder
from MedSegUNetLib import cli

pytest.importorskip("onnxruntime", reason="the import extra is not installed")

TAPS = "lavlab-taps==1.1.2"
# TAPS's own command on ProstateX-0000's axial T2 (whole volume, --exact): Dice against the two AI
# gland readers, as Testing/benchmarks/README.md records them and the peer test below re-measures.
TAPS_OWN_DICE = {"Bosma22b": 0.832, "Guerbet23": 0.856}
TAPS_ONNX = "taps/resources/model_v1.onnx"
DEEPBET = "deepbet==1.0.2"


def publishedWheel(requirement: str) -> Path:
    """A package's wheel, downloaded once into the tests' cache folder (``pip download --no-deps``)."""
    cacheBase = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cacheBase / "medsegunet-tests" / "published" / requirement.replace("==", "-")
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder), requirement],
            capture_output=True,
            text=True,
            timeout=900,
        )
        wheels = sorted(folder.glob("*.whl"))
        if done.returncode != 0 or not wheels:
            pytest.skip(f"{requirement} could not be downloaded (offline?) and is not cached in {folder}")
    return wheels[0]


def unpacked(wheel: Path, member: str | None = None) -> Path:
    """The wheel unpacked beside it (once); returns the folder, or one member's path."""
    folder = wheel.parent / "unpacked"
    if not (folder / ".complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(folder)
        (folder / ".complete").write_text("")
    return folder / member if member else folder


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def mask(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def a_package_index(tmp_path_factory):
    """Both wheels in a PEP 503 folder tree served on 127.0.0.1; yields its ``simple/`` URL."""
    root = tmp_path_factory.mktemp("index")
    for requirement in (TAPS, DEEPBET):
        wheel = publishedWheel(requirement)
        project = root / "simple" / requirement.split("==")[0]
        project.mkdir(parents=True)
        shutil.copy(wheel, project / wheel.name)
    with servedFolder(root) as url:
        yield url + "simple/"


def inTheBaseInstall(base: dict, cache: Path, index: str | None = None) -> dict:
    """The environment of a user of the quick-start install: its ``medsegunet`` first on PATH, the
    model cache ``cache``, the shipped catalog, pip pointed at ``index`` alone."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("MEDSEGUNET_", "PIP_FIND_LINKS", "PIP_NO_INDEX"))}
    environment.update(PATH=base["bin"] + os.pathsep + os.environ["PATH"], MEDSEGUNET_CACHE=str(cache))
    if index:
        environment["PIP_INDEX_URL"] = index
    return environment


@pytest.fixture(scope="module")
def published_models(tmp_path_factory, a_package_index, a_base_install):
    """``models pull`` of both shipped entries in a fresh environment with only ``pip install -e .``
    (:func:`conftest.a_base_install`), pip pointed at the local index alone: name → cached model."""
    cache = tmp_path_factory.mktemp("cache")
    environment = inTheBaseInstall(a_base_install, cache, a_package_index)
    paths = {}
    for name in ("prostate-gland-taps", "brain-mask-deepbet"):
        done = subprocess.run(["medsegunet", "models", "pull", name], capture_output=True, text=True, timeout=900, env=environment)
        assert done.returncode == 0, done.stderr
        paths[name] = Path(done.stdout.strip())
        # Its log: each step once, in order, on stderr (stdout is the path alone).
        steps = re.findall(r"^\[\s*(\d+)%\] ([^:\n]*)", done.stderr, re.MULTILINE)
        assert [int(percent) for percent, _ in steps] == sorted(int(percent) for percent, _ in steps) and steps[-1][
            1
        ] == f"'{name}' is cached", done.stderr
    return {"cache": cache, "environment": environment, **paths}


def test_both_entries_pull_from_a_local_package_index_and_are_cached(published_models):
    from MedSegUNetLib.engine.modelcard import readCard

    taps, deepbet = readCard(published_models["prostate-gland-taps"]), readCard(published_models["brain-mask-deepbet"])
    assert all(published_models[name].is_relative_to(published_models["cache"]) for name in ("prostate-gland-taps", "brain-mask-deepbet"))
    assert (
        taps["provenance"]["format"] == "onnx"
        and taps["provenance"]["source_sha256"] == "1e39be9d19f6f71810cb0931a7fe895441cfd318d6002730c918ee99b9d79b91"
    )
    assert taps["provenance"]["verified"]["max_abs_difference"] < 1e-3 * taps["provenance"]["verified"]["output_range"]
    assert (
        deepbet["provenance"]["format"] == "torchscript"
        and deepbet["provenance"]["source_sha256"] == "de8ee7c69654d0dd3935dc4a5d84571d8ecf4637a6bfc01df399c4c2bc86e0fd"
    )
    assert deepbet["provenance"]["localizer_sha256"] == "39a7b2b5f799faa1391ea97bfcdc0b9299f20d84f2316a4ff8918dc4685e40aa"
    # The releases they came from, not the pull's temporary folder.
    assert taps["provenance"]["source"] == "lavlab-taps==1.1.2 taps/resources/model_v1.onnx"
    assert (deepbet["provenance"]["source"], deepbet["provenance"]["localizer"]) == (
        "deepbet==1.0.2 data/models/model.pt",
        "deepbet==1.0.2 data/models/bbox_model.pt",
    )
    assert deepbet["provenance"]["verified"]["max_abs_difference"] == 0.0 and deepbet["localizer"]["grid"]["shape"] == [128, 128, 128]
    assert taps["labels"][0]["terminology"]["type"][1] == "41216001" and deepbet["labels"][0]["terminology"]["type"][1] == "12738006"


def test_both_published_graphs_pass_the_operator_allow_list(published_models):
    """TAPS's SegResNetDS (imported) and deepbet's two published networks use only allowed operators,
    and the cache records each model file's SHA256 beside it."""
    import io

    import torch

    from MedSegUNetLib.engine import graphsafety, modelcard
    from MedSegUNetLib.engine.paths import sha256

    for name in ("prostate-gland-taps", "brain-mask-deepbet"):
        path = published_models[name]
        assert graphsafety.forbiddenOperators(torch.jit.load(str(path))) == [], name
        assert Path(str(path) + ".sha256").read_text().strip() == sha256(path)
    localizer = modelcard._extraFile(str(published_models["brain-mask-deepbet"]), modelcard.LOCALIZER_EXTRA_FILE)
    assert graphsafety.forbiddenOperators(torch.jit.load(io.BytesIO(localizer))) == []


def test_taps_pulls_as_pt2_and_deepbet_says_it_has_none(published_models):
    """``models pull NAME --format pt2`` in the base install: TAPS's cached import converted (its
    outputs checked against the import on three input sizes before the .pt2 enters the cache),
    with no fetch; deepbet, whose networks exist only as TorchScript, refused in one line."""
    from MedSegUNetLib.engine.exportedmodel import isExportedArchive
    from MedSegUNetLib.engine.modelcard import readCard
    from MedSegUNetLib.engine.paths import sha256

    environment, taps = published_models["environment"], published_models["prostate-gland-taps"]
    done = subprocess.run(
        ["medsegunet", "models", "pull", "prostate-gland-taps", "--format", "pt2"],
        capture_output=True,
        text=True,
        timeout=900,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    exported = Path(done.stdout.strip())
    assert exported == taps.with_suffix(".pt2") and isExportedArchive(str(exported))
    assert Path(str(exported) + ".sha256").read_text().strip() == sha256(exported)
    assert readCard(exported)["provenance"] == readCard(taps)["provenance"] and readCard(exported)["labels"] == readCard(taps)["labels"]
    steps = [step for _, step in re.findall(r"^\[\s*(\d+)%\] ([^\n]*)", done.stderr, re.MULTILINE)]
    assert steps == [
        "Converting 'prostate-gland-taps' to .pt2 and checking it on three input sizes",
        "'prostate-gland-taps' is cached as .pt2",
    ], done.stderr
    before = sorted(published_models["cache"].rglob("*"))
    refused = subprocess.run(
        ["medsegunet", "models", "pull", "brain-mask-deepbet", "--format", "pt2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert refused.returncode == 2 and refused.stdout == ""
    assert errorLines(refused.stderr) == [
        "medsegunet: error: 'brain-mask-deepbet' is published as TorchScript with a localiser network, which has no .pt2 form: pull it "
        "without '--format pt2'."
    ]
    assert sorted(published_models["cache"].rglob("*")) == before


@pytest.mark.parametrize("field", ["sha256", "localizer"])
def test_a_wrong_sha256_caches_nothing(capsys, tmp_path, monkeypatch, a_package_index, field):
    from MedSegUNetLib.engine import settings
    from MedSegUNetLib.models import catalog

    entry = next(e for e in catalog.loadCatalog(settings.CATALOG_PATH)["models"] if e["name"] == "brain-mask-deepbet")
    if field == "sha256":
        entry["source"]["sha256"] = "0" * 64
    else:
        entry["source"]["localizer"]["sha256"] = "f" * 64
    (tmp_path / "catalog.json").write_text(json.dumps({"schema": catalog.SCHEMA, "models": [entry]}))
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(tmp_path / "catalog.json"))
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", a_package_index)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)
    assert cli.main(["models", "pull", "brain-mask-deepbet"]) == 2
    err = errorLines(capsys.readouterr().err)
    assert len(err) == 1 and "nothing was cached" in err[0] and ("bbox_model.pt" in err[0]) == (field == "localizer"), err
    assert not (tmp_path / "cache").exists() or [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_taps_onnx_imports_and_matches_onnxruntime(published_models):
    """GroupNorm (8 groups, written as Reshape → InstanceNormalization → Reshape → Mul → Add) and Mish,
    deep-supervision heads the export removed: the network the pull imported gives onnxruntime's
    logits on another random window than the import's own check."""
    import onnxruntime
    import torch

    onnxFile = unpacked(publishedWheel(TAPS), TAPS_ONNX)
    sample = np.random.default_rng(5).standard_normal((1, 1, 128, 128, 32)).astype(np.float32)  # the graph's fixed window
    session = onnxruntime.InferenceSession(str(onnxFile), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: sample})[0]
    with torch.no_grad():
        got = torch.jit.load(str(published_models["prostate-gland-taps"]))(torch.from_numpy(sample)).numpy()
    assert got.shape == expected.shape == (1, 1, 128, 128, 32)
    assert np.max(np.abs(got - expected)) < 1e-3 * float(np.ptp(expected))


@pytest.fixture(scope="module")
def taps_home_mask(tmp_path_factory, prostate_images):
    """TAPS's own command (``taps segment --device cpu``) on ProstateX-0000's axial T2, from its unpacked wheel."""
    folder = tmp_path_factory.mktemp("taps-home")
    sitk.WriteImage(list(prostate_images.values())[0], str(folder / "t2.nii.gz"))
    environment = dict(os.environ, PYTHONPATH=str(unpacked(publishedWheel(TAPS))))
    command = "import sys; from taps.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", command, "segment", "t2.nii.gz", "taps.nii.gz", "--device", "cpu", "--exact"],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return mask(folder / "taps.nii.gz")


@pytest.mark.peer
def test_taps_on_the_whole_volume_agrees_with_taps_itself(tmp_path, published_models, prostate_series, taps_home_mask):
    """``segment --model prostate-gland-taps --no-roi``: the same field of view as TAPS's own command
    (Dice ≥ 0.97); and TAPS's own Dice against the readers is still the recorded one."""
    for reader, expected in TAPS_OWN_DICE.items():
        reference = mask(SHARED_DATA / "prostatex" / "labels" / f"ProstateX-0000_gland_AI-{reader}.nii.gz")
        assert abs(dice(taps_home_mask, reference) - expected) <= 0.002, reader
    tra = list(prostate_series.values())[0]
    assert (
        cli.main(
            [
                "segment",
                "-q",
                "--model",
                str(published_models["prostate-gland-taps"]),
                "--no-roi",
                tra,
                "--output",
                str(tmp_path / "ours.nii.gz"),
            ]
        )
        == 0
    )
    ours = mask(tmp_path / "ours.nii.gz")
    assert ours.shape == taps_home_mask.shape and dice(ours, taps_home_mask) >= 0.97


def test_taps_with_the_three_series_roi_is_as_good_as_taps_itself(tmp_path, published_models, prostate_series):
    """With the three series' ROI and the card's context: Dice against both AI gland readers at
    least TAPS's own (whole volume, :data:`TAPS_OWN_DICE`) − 0.01; run by name by the quick-start
    install's ``medsegunet``."""
    tra, sag, cor = prostate_series.values()
    done = subprocess.run(
        [
            "medsegunet",
            "segment",
            "-q",
            "--model",
            "prostate-gland-taps",
            tra,
            "--roi-from",
            sag,
            cor,
            "--stats-json",
            "s.json",
            "--output",
            "ours.nii.gz",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=published_models["environment"],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    (segment,) = json.loads((tmp_path / "s.json").read_text())["segments"]
    assert segment["name"] == "prostate" and segment["qc"] == "ok"
    ours = mask(tmp_path / "ours.nii.gz")
    for reader in ("Bosma22b", "Guerbet23"):
        reference = mask(SHARED_DATA / "prostatex" / "labels" / f"ProstateX-0000_gland_AI-{reader}.nii.gz")
        assert dice(ours, reference) >= TAPS_OWN_DICE[reader] - 0.01, reader


def test_deepbet_agrees_with_deepbet_itself_on_brats(tmp_path, published_models):
    """``segment --model brain-mask-deepbet`` on BraTS-GLI-00001 t1n: Dice ≥ 0.97 against deepbet's own
    mask, and against the BraTS pipeline's brain (the t1n's non-zero region) at least deepbet's − 0.01."""
    deepbet = pytest.importorskip("deepbet", reason='deepbet (the home tool) is not installed: pip install -e ".[test]"')
    t1n = requireSharedData("brain-tumor", "BraTS-GLI-00001-000", "BraTS-GLI-00001-000-t1n.nii.gz")
    deepbet.run_bet([str(t1n)], mask_paths=[str(tmp_path / "home.nii.gz")], no_gpu=True)
    # By name, by the quick-start install's medsegunet (deepbet itself is not in that environment).
    done = subprocess.run(
        ["medsegunet", "segment", "-q", "--model", "brain-mask-deepbet", str(t1n), "--output", "ours.nii.gz", "--stats-json", "s.json"],
        capture_output=True,
        text=True,
        timeout=900,
        env=published_models["environment"],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    home, ours, brain = mask(tmp_path / "home.nii.gz"), mask(tmp_path / "ours.nii.gz"), mask(t1n) > 0
    assert dice(ours, home) >= 0.97
    assert dice(ours, brain) >= dice(home, brain) - 0.01
    (segment,) = json.loads((tmp_path / "s.json").read_text())["segments"]
    assert segment["name"] == "brain" and segment["qc"] == "ok" and 1400 < segment["volume_cm3"] < 1900


def test_in_slicer_both_are_listed_and_segment_scene_volumes_with_their_codes(published_models, prostate_images):
    """The module's catalog list shows both; on a real MRML scene (slicer-core) each segments loaded
    volumes into a segment named and coded as its card says (prostate SCT 41216001, brain SCT 12738006)."""
    slicer = pytest.importorskip("slicer", reason="the slicer-core package is needed for MRML tests")
    import vtk

    from MedSegUNetLib.engine.volumes import readVolume
    from MedSegUNetLib.models import catalog
    from MedSegUNetLib.slicer.logic import SegmentationLogic
    from MedSegUNetLib.slicer.nodes import addVolumeFromImage

    listed = {entry["name"]: entry for entry in catalog.loadCatalog()["models"]}
    assert {"prostate-gland-taps", "brain-mask-deepbet"} <= set(listed) and listed["brain-mask-deepbet"]["license"].startswith("MIT")
    scene = slicer.vtkMRMLScene()
    tra, sag, cor = (addVolumeFromImage(scene, image, name) for name, image in prostate_images.items())
    t1n = readVolume(str(requireSharedData("brain-tumor", "BraTS-GLI-00001-000", "BraTS-GLI-00001-000-t1n.nii.gz")))
    brain = addVolumeFromImage(scene, t1n, "t1n")
    cases = [
        ("prostate-gland-taps", [tra], [sag, cor], "prostate", "~SCT^41216001^Prostate~", (20, 60)),
        ("brain-mask-deepbet", [brain], [], "brain", "~SCT^12738006^Brain~", (1400, 1900)),
    ]
    for name, inputs, roiVolumes, segmentName, code, volumeRange in cases:
        result = SegmentationLogic(scene).process(inputs, published_models[name], roiVolumes=roiVolumes, device="cpu")
        segment = result.segmentationNode.GetSegmentation().GetNthSegment(0)
        entry = vtk.reference("")
        assert segment.GetName() == segmentName and segment.GetTag("TerminologyEntry", entry) and code in str(entry), name
        table = result.statisticsTableNode
        column = next(c for c in range(table.GetNumberOfColumns()) if table.GetColumnName(c) == "Volume [mm3]")
        assert table.GetCellText(0, 0) == segmentName and volumeRange[0] < float(table.GetCellText(0, column)) / 1000 < volumeRange[1], name


@pytest.mark.parametrize("name, inputs, roi", [("prostate-gland-taps", ["T2 axial"], True), ("brain-mask-deepbet", ["T1"], False)])
def test_info_says_how_to_run_each_published_model(published_models, name, inputs, roi):
    """``info NAME`` of a pulled published model, in the quick-start install: its inputs, the series
    its ROI needs, QC range, licence, citation and provenance, and a ``segment`` line with the card's
    input names (the forms the tests above run); ``--json`` is the card."""
    import shlex

    environment = published_models["environment"]
    text = subprocess.run(["medsegunet", "info", name], capture_output=True, text=True, timeout=300, env=environment)
    card = json.loads(
        subprocess.run(["medsegunet", "info", name, "--json"], capture_output=True, text=True, timeout=300, env=environment).stdout
    )
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert [entry["name"] for entry in card["inputs"]] == inputs and card["provenance"]["source_sha256"]
    for key, title in (("license", "Licence"), ("citation", "Cite"), ("version", "Version")):
        assert f"{title}: {card[key]}" in lines, key
    assert any(line.startswith("Expected volumes (QC flags outside): ") for line in lines)
    assert any(line.startswith("ROI: ") and "--roi-from" in line for line in lines) == roi
    (example,) = [shlex.split(line[len("Example: ") :]) for line in lines if line.startswith("Example: ")]
    from MedSegUNetLib.models.exporting import fileStem

    assert example[:4] == ["medsegunet", "segment", "--model", name] and example[4] == f"{fileStem(inputs[0])}.nii.gz"
    assert ("--roi-from" in example) == roi and example[-2:] == ["--output", "segmentation.seg.nrrd"]
