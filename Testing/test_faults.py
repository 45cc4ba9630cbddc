"""The fault catalogue: every way a run can go wrong ends cleanly, or works correctly.

Each case must end with exit status ≠ 0, exactly one line on stderr, no traceback, inputs
unchanged (checksums) and no file left in the output folder, hidden staging folders included.
Most cases call ``cli.main`` in-process (what the console script runs); signals, file-size limits
and FIFOs run as real processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import medsegunetCommand, requireSharedData, smallObliquePhantom
from MedSegUNetLib import cli
from MedSegUNetLib.engine.modelcard import saveModel
from MedSegUNetLib.models import phantoms

LABELS = [(1, "bright", (1.0, 1.0, 0.0))]


def command() -> list[str]:
    return medsegunetCommand()


def checksums(folder) -> dict[str, str]:
    """SHA256 of every file below ``folder`` (relative path → digest)."""
    found = {}
    for directory, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as stream:
                    found[os.path.relpath(path, folder)] = hashlib.sha256(stream.read()).hexdigest()
    return found


def assertCleanFault(code: int, stderr: str, outputFolder, expected: str) -> str:
    lines = stderr.strip().splitlines()
    assert code != 0, stderr
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert expected in lines[0], lines[0]
    assert os.listdir(outputFolder) == [], os.listdir(outputFolder)
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Models that answer wrongly, as real TorchScript files


def _scripted(kind: str):
    import torch

    class NaNModel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(torch.cat([x[:, :1], x[:, :1]], 1), float("nan"))

    class IntegerModel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x[:, :1] <= 0.5, x[:, :1] > 0.5], 1).long()

    class BooleanModel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x[:, :1] <= 0.5, x[:, :1] > 0.5], 1)

    class HalfSizeModel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.cat([x[:, :1], x[:, :1]], 1)
            return y[:, :, ::2]

    class FailingModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    models = {"nan": NaNModel, "integer": IntegerModel, "boolean": BooleanModel, "half": HalfSizeModel, "failing": FailingModel}
    return torch.jit.script(models[kind]())


@pytest.fixture(scope="module")
def fault_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fault_models")
    card = phantoms.thresholdCard(LABELS)
    paths = {}
    for kind in ("nan", "integer", "boolean", "half", "failing"):
        paths[kind] = str(folder / f"{kind}.pt")
        saveModel(_scripted(kind), card, paths[kind])
    # Within the card's window budget (2^32 voxels a batch), beyond any machine's free memory for the network.
    huge = {**card, "patch_size": [2048, 2048, 1024], "sw_batch_size": 1}
    paths["huge"] = phantoms.writeThresholdModel(folder / "huge.pt", (0.5,), huge)
    paths["model"] = phantoms.writeThresholdModel(folder / "good.pt", (0.5,), card)
    paths["twoInputs"] = phantoms.writeThresholdModel(folder / "two.pt", (0.5,), phantoms.thresholdCard(LABELS, inputs=("T2", "ADC")))
    latin = folder / "latin.pt"
    shutil.copy(paths["model"], latin)
    (folder / "latin.pt.json").write_bytes(json.dumps({**card, "name": "Drüse"}, ensure_ascii=False).encode("latin-1"))
    paths["latin1"] = str(latin)
    return paths


@pytest.fixture
def fault_inputs(tmp_path, fault_models):
    """Inputs (checksummed by the cases) and an empty output folder."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    image = smallObliquePhantom()
    paths = {"good": inputs / "t2.nrrd", "goodNii": inputs / "t2.nii.gz", "far": inputs / "far.nrrd", "labels": inputs / "labels.nrrd"}
    sitk.WriteImage(image, str(paths["good"]))
    sitk.WriteImage(image, str(paths["goodNii"]))
    far = sitk.Image(image)
    far.SetOrigin((500.0, 0.0, 0.0))
    sitk.WriteImage(far, str(paths["far"]))
    sitk.WriteImage(sitk.Cast(image > 0.5, sitk.sitkUInt8) * 4, str(paths["labels"]))
    # Cut-short NIfTI: gzip of the header alone, a gzip stream cut in half, an uncompressed file cut.
    import gzip

    raw = gzip.decompress(paths["goodNii"].read_bytes())
    (inputs / "header-only.nii.gz").write_bytes(gzip.compress(raw[:352]))
    compressed = paths["goodNii"].read_bytes()
    (inputs / "half.nii.gz").write_bytes(compressed[: len(compressed) // 2])
    sitk.WriteImage(image, str(inputs / "plain.nii"))
    with open(inputs / "plain.nii", "r+b") as stream:
        stream.truncate(352 + (20 * 18 * 8 * 4) // 2)
    paths.update({"headerOnly": inputs / "header-only.nii.gz", "halfGz": inputs / "half.nii.gz", "cutNii": inputs / "plain.nii"})
    noise = sitk.GetImageFromArray(np.random.default_rng(1).normal(300.0, 50.0, (8, 18, 20)).astype(np.float32))
    noise.CopyInformation(image)
    sitk.WriteImage(noise, str(inputs / "intensity.nrrd"))
    paths["intensity"] = inputs / "intensity.nrrd"
    sitk.WriteImage(sitk.Image([20, 18, 8], sitk.sitkComplexFloat32), str(inputs / "complex.nrrd"))
    paths["complex"] = inputs / "complex.nrrd"
    # The second input micrometres off the reference grid, as a float32 NIfTI header gives it.
    shifted = sitk.Image(image)
    shifted.SetOrigin([v + 2e-6 for v in image.GetOrigin()])
    sitk.WriteImage(shifted, str(inputs / "adc.nii.gz"))
    paths["shifted"] = inputs / "adc.nii.gz"
    checkpoint = inputs / "checkpoint.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    paths["checkpoint"] = checkpoint
    out = tmp_path / "out"
    out.mkdir()
    paths["out"] = out
    paths["inputs"] = inputs
    paths.update(fault_models)
    return paths


def segmentOutputs(p) -> list:
    return ["--output", p["out"] / "seg.seg.nrrd", "--stats", p["out"] / "stats.csv", "--stats-json", p["out"] / "stats.json"]


# [parameters (the failing command), input (fixture paths), expected (words of the one line)]
FAULT_CASES = [
    # 1. Options that cannot lose a value.
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["model"], "--model", p["model"], *segmentOutputs(p)],
        "--model was given twice",
        id="option-twice",
    ),
    pytest.param(lambda p: ["roi", p["good"], "--margin", "nan"], "must be a finite number", id="margin-nan"),
    pytest.param(lambda p: ["roi", p["good"], "--margin", "inf"], "must be a finite number", id="margin-inf"),
    pytest.param(lambda p: ["roi", p["good"], "--margin", "-1"], "must be a finite number", id="margin-negative"),
    pytest.param(lambda p: ["segment", "--model", p["model"], *segmentOutputs(p)], "Give the INPUT volumes", id="no-inputs"),
    # 2. Outputs never touch inputs or each other.
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["model"], "--output", p["good"]], "is the input given as INPUT", id="output-is-input"
    ),
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["model"], "--output", p["out"] / "a.nrrd", "--stats", p["out"] / "a.nrrd"],
        "name the same file",
        id="output-is-stats",
    ),
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["model"], "--stats", p["out"] / "s", "--stats-json", p["out"] / "s"],
        "name the same file",
        id="stats-is-stats-json",
    ),
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["model"], "--stats", p["model"]], "is the input given as --model", id="stats-is-model"
    ),
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["model"], "--output", p["out"] / "x.mhd", "--stats", p["out"] / "x.zraw"],
        "name the same file",
        id="mhd-data-file-is-stats",
    ),
    pytest.param(
        lambda p: ["roi", p["good"], p["goodNii"], "--json", p["goodNii"]], "is the input given as VOLUME", id="roi-json-is-volume"
    ),
    pytest.param(
        lambda p: ["export", "--checkpoint", p["checkpoint"], "--output", p["checkpoint"]],
        "is the input given as --checkpoint",
        id="export-onto-checkpoint",
    ),
    pytest.param(lambda p: ["segment", p["good"], "--model", p["model"], "--output", p["out"]], "is a folder", id="output-is-a-folder"),
    # 4. Inputs are checked, not assumed.
    pytest.param(
        lambda p: ["segment", p["headerOnly"], "--model", p["model"], *segmentOutputs(p)], "is cut short", id="nii-gz-header-only"
    ),
    pytest.param(lambda p: ["segment", p["halfGz"], "--model", p["model"], *segmentOutputs(p)], "is cut short", id="nii-gz-half"),
    pytest.param(lambda p: ["segment", p["cutNii"], "--model", p["model"], *segmentOutputs(p)], "is cut short", id="nii-cut"),
    pytest.param(lambda p: ["roi", p["good"], p["halfGz"]], "is cut short", id="roi-cut-short"),
    pytest.param(lambda p: ["segment", p["complex"], "--model", p["model"], *segmentOutputs(p)], "complex voxels", id="complex-pixels"),
    # 5. The model's answer is checked.
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["nan"], *segmentOutputs(p)], "returned NaN or infinite values", id="model-nan"
    ),
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["integer"], *segmentOutputs(p)],
        "returned int64 values instead of floating-point",
        id="model-integer",
    ),
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["boolean"], *segmentOutputs(p)],
        "returned bool values instead of floating-point",
        id="model-boolean",
    ),
    pytest.param(lambda p: ["segment", p["good"], "--model", p["half"], *segmentOutputs(p)], "returned shape", id="model-wrong-shape"),
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["failing"], *segmentOutputs(p)],
        "failed on an input of shape",
        id="model-fails-in-interpreter",
    ),
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["huge"], *segmentOutputs(p)], "GiB are free", id="card-cannot-fit-in-memory"
    ),
    pytest.param(lambda p: ["segment", p["good"], "--model", p["latin1"], *segmentOutputs(p)], "is not UTF-8 text", id="card-not-utf8"),
    # 6. Reference labels are label maps of this patient, in values the card maps.
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["model"], "--stats", p["out"] / "s.csv", "--reference-seg", p["intensity"]],
        "not a label map",
        id="reference-is-an-intensity-image",
    ),
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["model"], "--stats", p["out"] / "s.csv", "--reference-seg", p["far"]],
        "does not overlap",
        id="reference-elsewhere",
    ),
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["model"], "--stats", p["out"] / "s.csv", "--reference-seg", p["labels"]],
        "reference_values",
        id="reference-in-other-values",
    ),
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["model"], "--output", p["out"] / "s.nrrd", "--reference-seg", p["labels"]],
        "give --stats",
        id="reference-without-statistics",
    ),
]


@pytest.mark.parametrize("arguments, expected", FAULT_CASES)
def test_fault_in_process(capsys, fault_inputs, arguments, expected):
    before = checksums(fault_inputs["inputs"])
    code = cli.main([str(a) for a in arguments(fault_inputs)])
    captured = capsys.readouterr()
    assertCleanFault(code, captured.err, fault_inputs["out"], expected)
    assert checksums(fault_inputs["inputs"]) == before


def test_usage_errors_are_one_line_with_status_2(capsys):
    for argv in (["segment", "--model"], ["frobnicate"], ["roi", "--margin", "x", "a.nrrd"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "error:" in err, err


def test_micrometre_grid_difference_gives_statistics(capsys, fault_inputs):
    """Two inputs whose grids differ by 2 µm (float32 NIfTI header): statistics, not a crash."""
    out = fault_inputs["out"]
    code = cli.main(
        [
            str(a)
            for a in [
                "segment",
                fault_inputs["good"],
                fault_inputs["shifted"],
                "--model",
                fault_inputs["twoInputs"],
                "--stats",
                out / "s.csv",
                "-q",
            ]
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == "" and captured.out == ""
    rows = (out / "s.csv").read_text().splitlines()
    header, row = rows[0].split(","), rows[1].split(",")
    expected = int((sitk.GetArrayFromImage(sitk.ReadImage(str(fault_inputs["good"]))) > 0.5).sum())
    assert row[header.index("Number of voxels [voxels]")] == str(expected) and float(row[header.index("Mean (ADC)")]) == 1.0


# ---------------------------------------------------------------------------------------------
# Writes that cannot complete: file-size limit (short writes), for every output format.


def _noiseCase(folder, size=(64, 64, 32)):
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.random(tuple(reversed(size))).astype(np.float32))
    path = folder / "noise.nrrd"
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("name", ["seg.nii", "seg.nii.gz", "seg.seg.nrrd", "seg.nrrd", "seg.mhd", "seg.mha"])
def test_short_write_under_file_size_limit_leaves_nothing(tmp_path, a_threshold_model, name):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    volume = _noiseCase(inputs)
    model = a_threshold_model((0.5,), LABELS)
    before = checksums(inputs)
    limit = 6000  # bytes: below every format's size for this noisy label map, above the statistics

    def limitFileSize():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [*command(), "segment", str(volume), "--model", model, "--output", str(out / name), "--stats", str(out / "stats.csv")],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limitFileSize,
    )
    line = assertCleanFault(done.returncode, done.stderr, out, "")
    assert line.startswith("medsegunet: error:") and ("file-size limit" in line or "incompletely" in line), line
    assert checksums(inputs) == before


def test_mhd_output_is_a_pair_under_final_names(tmp_path, a_threshold_model, capsys):
    volume = _noiseCase(tmp_path, (16, 16, 8))
    out = tmp_path / "out"
    out.mkdir()
    code = cli.main(["segment", str(volume), "--model", a_threshold_model((0.5,), LABELS), "--output", str(out / "labels.mhd"), "-q"])
    assert code == 0, capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["labels.mhd", "labels.zraw"]
    assert "ElementDataFile = labels.zraw" in (out / "labels.mhd").read_text()
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.mhd")))
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(sitk.ReadImage(str(volume))) > 0.5)


# ---------------------------------------------------------------------------------------------
# Signals and special files, as real processes.


def test_sigterm_during_the_final_writes_leaves_nothing(tmp_path, a_threshold_model):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    volume = _noiseCase(inputs, (256, 256, 96))
    process = subprocess.Popen(
        [
            *command(),
            "segment",
            str(volume),
            "--model",
            a_threshold_model((0.5,), LABELS),
            "--output",
            str(out / "seg.nii.gz"),
            "--stats",
            str(out / "s.csv"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not any(n.startswith(".medsegunet-") for n in os.listdir(out)):
        time.sleep(0.002)
    assert process.poll() is None, "the run ended before its outputs were staged"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["medsegunet: terminated; nothing was written."]
    assert os.listdir(out) == []


@pytest.mark.parametrize("delay", [0.3, 1.5, 3.0])
def test_sigint_at_any_moment_gives_one_line(tmp_path, a_threshold_model, delay):
    volume = _noiseCase(tmp_path, (128, 128, 64))
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen(
        [*command(), "segment", str(volume), "--model", a_threshold_model((0.5,), LABELS), "--output", str(out / "seg.nii.gz")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:  # the run finished first: then it must have written its output
        assert os.listdir(out) == ["seg.nii.gz"]
        return
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["medsegunet: interrupted; nothing was written."], stderr
    assert os.listdir(out) == []


def test_fifo_as_a_volume_is_refused_at_once(tmp_path, a_threshold_model):
    fifo = tmp_path / "t2.nrrd"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    out.mkdir()
    started = time.monotonic()
    done = subprocess.run(
        [*command(), "segment", str(fifo), "--model", a_threshold_model((0.5,), LABELS), "--output", str(out / "s.nrrd")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assertCleanFault(done.returncode, done.stderr, out, "not a regular file or folder")
    assert time.monotonic() - started < 30


# ---------------------------------------------------------------------------------------------
# DICOM series with a missing slice (the real ProstateX-0000 axial T2).


@pytest.fixture
def axial_without_slice_10(tmp_path):
    source = requireSharedData("prostatex", "ProstateX-0000", "4-t2tsetra")
    from MedSegUNetLib.engine.volumes import findDicomSeries

    files = list(findDicomSeries(source)[0].files)
    folder = tmp_path / "axial-missing"
    folder.mkdir()
    for index, path in enumerate(files):
        if index != 9:
            shutil.copy(path, folder / os.path.basename(path))
    return folder, str(source)


def test_dicom_series_with_a_gap_is_refused(capsys, tmp_path, axial_without_slice_10):
    folder, _ = axial_without_slice_10
    out = tmp_path / "out"
    out.mkdir()
    before = checksums(folder)
    code = cli.main(["roi", str(folder), "--json", str(out / "roi.json")])
    line = assertCleanFault(code, capsys.readouterr().err, out, "a gap of 6.00 mm between slices 9 and 10")
    assert "--resample-irregular" in line
    assert checksums(folder) == before


def test_resample_irregular_rebuilds_the_true_geometry(axial_without_slice_10):
    from MedSegUNetLib.engine.volumes import readVolume

    folder, original = axial_without_slice_10
    complete = readVolume(original)
    rebuilt = readVolume(folder, resampleIrregular=True)
    assert rebuilt.GetSize() == complete.GetSize() == (384, 384, 19)
    np.testing.assert_allclose(rebuilt.GetSpacing(), complete.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(rebuilt.GetOrigin(), complete.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(rebuilt.GetDirection(), complete.GetDirection(), atol=1e-5)
    a, b = sitk.GetArrayFromImage(rebuilt), sitk.GetArrayFromImage(complete).astype(np.float32)
    kept = [k for k in range(19) if k != 9]
    np.testing.assert_allclose(a[kept], b[kept], atol=1e-3)
    # The missing slice is the mean of its neighbours, not a copy of either.
    np.testing.assert_allclose(a[9], (b[8] + b[10]) / 2, atol=1e-3)


def test_an_interruption_wrapped_by_python_is_still_an_interruption(monkeypatch, capsys):
    """A SIGINT that lands while Python 3.11 creates a class (a module imported mid-run) arrives as a
    RuntimeError ("Error calling __set_name__ ...") caused by the interruption: one line, status 130."""
    import argparse

    from MedSegUNetLib import cli
    from MedSegUNetLib.engine.errors import Interrupted

    def interruptedWhileImporting(args, console):
        try:
            raise Interrupted(signal.SIGINT)
        except Interrupted as interruption:
            raise RuntimeError("Error calling __set_name__ on 'Field' instance 'timings' in 'SegmentationResult'") from interruption

    namespace = argparse.Namespace(func=interruptedWhileImporting, quiet=True, verbose=False)
    monkeypatch.setattr(cli, "parseArguments", lambda argv: namespace)
    assert cli.main(["segment"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["medsegunet: interrupted; nothing was written."]
