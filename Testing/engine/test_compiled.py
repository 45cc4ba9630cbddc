"""``segment --compile``: a ``.pt2`` model as an AOTInductor package built here once (a real C++
compile), cached with its SHA256, used when it answers as the model does and is faster; one line
and the uncompiled network otherwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import TINY_UNET_CARD, errorLines, smallObliquePhantom
from MedSegUNetLib import cli

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="AOTInductor needs a C++ compiler (g++)")


@pytest.fixture(scope="module")
def a_tiny_pt2(tmp_path_factory) -> dict:
    """A real MONAI UNet saved as a ``.pt2`` (and as TorchScript), a phantom, and a cache folder."""
    import torch
    from monai.networks.nets import UNet

    from MedSegUNetLib.engine.modelcard import saveModel

    folder = tmp_path_factory.mktemp("compiled")
    torch.manual_seed(0)
    network = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    card = {**TINY_UNET_CARD, "patch_size": [32, 32, 16]}
    saveModel(network, card, folder / "tiny.pt2", format="pt2")
    saveModel(torch.jit.script(network), card, folder / "tiny.pt")
    sitk.WriteImage(smallObliquePhantom(), str(folder / "t2.nrrd"))
    return {
        "folder": folder,
        "pt2": str(folder / "tiny.pt2"),
        "pt": str(folder / "tiny.pt"),
        "volume": str(folder / "t2.nrrd"),
        "cache": folder / "cache",
    }


def segmentLabels(capsys, monkeypatch, model: dict, path: str, output: str, *options: str) -> tuple[np.ndarray, str, str]:
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(model["cache"]))
    assert cli.main(["segment", "--model", path, model["volume"], "--output", output, "--device", "cpu", *options]) == 0
    captured = capsys.readouterr()
    return sitk.GetArrayFromImage(sitk.ReadImage(output)), captured.out, captured.err


def test_a_compiled_package_is_built_once_checked_and_gives_the_labels_of_the_model(capsys, monkeypatch, a_tiny_pt2, tmp_path):
    plain, _, _ = segmentLabels(capsys, monkeypatch, a_tiny_pt2, a_tiny_pt2["pt2"], str(tmp_path / "plain.nrrd"))
    compiled, out, err = segmentLabels(
        capsys,
        monkeypatch,
        a_tiny_pt2,
        a_tiny_pt2["pt2"],
        str(tmp_path / "compiled.nrrd"),
        "--compile",
        "--stats-json",
        str(tmp_path / "compiled.json"),
    )
    assert "Compiling 'Tiny test UNet" in out and errorLines(err) == [], err
    (record,) = [json.loads(path.read_text()) for path in a_tiny_pt2["cache"].joinpath("compiled").glob("*/record.json")]
    # The statistics say what ran: the package, its speed-up and its torch.
    assert json.loads((tmp_path / "compiled.json").read_text())["compiled"] == {
        "speedup": round(record["speedup"], 3),
        "torch": record["torch"],
    }
    # The check against the uncompiled program: within 1e-4 of the output range, on the card's patch.
    assert record["patch"] == [1, 1, 32, 32, 16] and record["max_abs_difference"] < 1e-4 and record["torch"]
    # Python's per-operator overhead dominates a network this small: the C++ package is faster.
    assert record["faster"] and record["speedup"] > 1.0, record
    assert "Running the AOTInductor package built for this machine" in out
    # Logits within 1e-4: the labels are the model's (a voxel may flip only at an exact tie).
    assert plain.shape == compiled.shape and np.mean(plain != compiled) < 1e-3 and int((compiled == 1).sum()) > 0
    # Built once: a second run loads the cached package (no compile), with the same labels.
    again, out, _ = segmentLabels(capsys, monkeypatch, a_tiny_pt2, a_tiny_pt2["pt2"], str(tmp_path / "again.nrrd"), "--compile")
    assert "Compiling" not in out and "Running the AOTInductor package" in out and np.array_equal(again, compiled)


def test_a_package_whose_bytes_changed_is_not_used(a_tiny_pt2, tmp_path, capsys, monkeypatch):
    """The record's SHA256 decides: a package swapped or damaged in the cache is built again, never loaded."""
    from MedSegUNetLib.engine.compiled import _packageIntact, readRecord

    segmentLabels(capsys, monkeypatch, a_tiny_pt2, a_tiny_pt2["pt2"], str(tmp_path / "built.nrrd"), "--compile")
    (folder,) = [path.parent for path in a_tiny_pt2["cache"].joinpath("compiled").glob("*/record.json")]
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    record = readRecord(copy)
    assert _packageIntact(copy, record)
    with open(copy / "model.pt2", "r+b") as package:
        package.seek(-10, os.SEEK_END)
        package.write(b"0123456789")
    assert not _packageIntact(copy, record)
    (copy / "record.json").write_text('{"sha256": 1}')
    assert readRecord(copy) is None


def test_a_torchscript_model_runs_uncompiled_with_one_line(capsys, monkeypatch, a_tiny_pt2, tmp_path):
    plain, _, _ = segmentLabels(capsys, monkeypatch, a_tiny_pt2, a_tiny_pt2["pt"], str(tmp_path / "plain.nrrd"))
    labels, out, err = segmentLabels(
        capsys,
        monkeypatch,
        a_tiny_pt2,
        a_tiny_pt2["pt"],
        str(tmp_path / "compiled.nrrd"),
        "--compile",
        "--stats-json",
        str(tmp_path / "compiled.json"),
    )
    assert errorLines(err) == [
        "medsegunet: warning: --compile needs a .pt2 model ('tiny.pt' is TorchScript; 'medsegunet convert' makes one): running it "
        "uncompiled"
    ]
    assert np.array_equal(labels, plain) and json.loads((tmp_path / "compiled.json").read_text())["compiled"] is None


def test_without_a_compiler_the_model_runs_uncompiled_with_one_line(a_tiny_pt2, tmp_path):
    """A machine without the C++ compiler Inductor calls (CXX names none): one warning line, the
    segmentation as without --compile, and no package or record left in the cache."""
    cache = tmp_path / "cache"
    environment = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "MEDSEGUNET_CACHE": str(cache)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "MedSegUNetLib.cli",
            "segment",
            "--compile",
            "--model",
            a_tiny_pt2["pt2"],
            a_tiny_pt2["volume"],
            "--output",
            str(tmp_path / "seg.nrrd"),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    (warning,) = errorLines(done.stderr)
    assert warning.startswith("medsegunet: warning: AOTInductor could not compile 'Tiny test UNet") and warning.endswith(
        "Running it uncompiled."
    ), warning
    assert [path for path in cache.rglob("*") if path.is_file()] == []
    assert int((sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nrrd"))) == 1).sum()) > 0


def test_batch_workers_run_the_package_the_driver_built(capsys, monkeypatch, a_tiny_pt2, tmp_path):
    """``batch --compile``: the package is built (or found) once by the driver; each worker process
    loads it and gives the labels that ``segment --compile`` gives."""
    for case in ("a", "b"):
        (tmp_path / "cases" / case).mkdir(parents=True)
        shutil.copy(a_tiny_pt2["volume"], tmp_path / "cases" / case / "t2.nrrd")
    single, _, _ = segmentLabels(capsys, monkeypatch, a_tiny_pt2, a_tiny_pt2["pt2"], str(tmp_path / "single.nrrd"), "--compile")
    assert (
        cli.main(
            [
                "batch",
                "--compile",
                "--model",
                a_tiny_pt2["pt2"],
                "--cases",
                str(tmp_path / "cases"),
                "--output",
                str(tmp_path / "out"),
                "--device",
                "cpu",
                "--workers",
                "1",
                "--format",
                "nrrd",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Workers run the AOTInductor package built for this machine" in out and "Compiling" not in out
    for case in ("a", "b"):
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / case / f"{case}.nrrd"))), single), case
        report = json.loads((tmp_path / "out" / case / f"{case}-statistics.json").read_text())
        assert report["compiled"]["speedup"] > 1.0 and report["notes"] == [], report


def test_a_worker_that_cannot_load_the_package_says_so_in_each_case(a_tiny_pt2, tmp_path):
    """A batch worker that cannot use the driver's package (here its cache is a file, not a folder)
    runs the model uncompiled and says so in the case's notes and statistics, not silently."""
    from MedSegUNetLib.cohorts.casejob import BatchOptions, loadCaseModel, processCase
    from MedSegUNetLib.cohorts.cases import CaseSpec
    from MedSegUNetLib.engine.request import SegmentationRequest

    (tmp_path / "cache").write_text("not a folder")
    (tmp_path / "out").mkdir()  # as batch makes it
    options = BatchOptions(
        modelPath=a_tiny_pt2["pt2"],
        modelSHA256="",
        outputDir=str(tmp_path / "out"),
        format="nrrd",
        request=SegmentationRequest(device="cpu"),
        compiledCache=str(tmp_path / "cache"),
    )
    loaded = loadCaseModel(options, "cpu")
    assert loaded.compiled is None and "Running it uncompiled." in loaded.compileFallback
    row = processCase(CaseSpec(id="a", inputs=[(a_tiny_pt2["volume"], None)]), loaded, options)
    assert row["status"] == "ok" and len(row["notes"]) == 1 and row["notes"][0].startswith("ran uncompiled: "), row
    report = json.loads((tmp_path / "out" / "a" / "a-statistics.json").read_text())
    assert report["compiled"] is None and report["notes"] == row["notes"]


def test_a_hostile_pt2_with_compile_is_one_error_line_not_a_fallback(capsys, monkeypatch, a_tiny_pt2, tmp_path):
    """--compile falls back only for what compiling adds: a model that fails its own checks (Python
    in its guards) stops with the one line it gets without --compile, no warning, nothing cached."""
    from engine.test_exportedmodel import programWith

    marker = tmp_path / "ran"
    hostile = programWith(
        a_tiny_pt2["pt2"], tmp_path, lambda document: document["guards_code"].append(f"__import__('os').mkdir({str(marker)!r}) or True")
    )
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(cache))
    assert (
        cli.main(
            ["segment", "--compile", "--model", hostile, a_tiny_pt2["volume"], "--output", str(tmp_path / "seg.nrrd"), "--device", "cpu"]
        )
        == 2
    )
    (line,) = errorLines(capsys.readouterr().err)
    assert line.startswith("medsegunet: error:") and "which torch would run as Python" in line, line
    assert not marker.exists() and not (tmp_path / "seg.nrrd").exists() and not cache.exists()
