"""The ``medsegunet`` command: ``roi`` and ``segment`` on real data, and every bad-input case.

A couple of cases run as real processes (``subprocess``); the rest call ``cli.main`` in-process,
which is what the console script runs. Bad input must give exit status ≠ 0, exactly one line on
stderr (no traceback) and no file in the output folder.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import PROSTATEX_0000_ROI, medsegunetCommand, requireSharedData, smallObliquePhantom
from MedSegUNetLib import cli
from MedSegUNetLib.engine import geometry
from MedSegUNetLib.engine.volumes import readVolume
from MedSegUNetLib.models import phantoms

LABELS = [(1, "bright", (1.0, 1.0, 0.0))]


def command() -> list[str]:
    return medsegunetCommand()


def runProcess(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([*command(), *map(str, arguments)], capture_output=True, text=True, timeout=300)


def runInProcess(capsys, *arguments) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assertCleanFailure(code: int, stderr: str, outputFolder, expected: str) -> None:
    lines = stderr.strip().splitlines()
    assert code != 0
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and expected in lines[0], lines[0]
    assert os.listdir(outputFolder) == []


# ---------------------------------------------------------------------------------------------
# roi


def test_roi_on_real_data_as_a_process(prostate_series, prostate_images):
    paths = list(prostate_series.values())
    done = runProcess("roi", *paths)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["reference"] == "4-t2tsetra"
    assert report["ijk_min"] == list(PROSTATEX_0000_ROI[0]) and report["ijk_max"] == list(PROSTATEX_0000_ROI[1])
    np.testing.assert_allclose(report["size_mm"], [137 * 0.5, 90 * 0.5, 19 * 3.0], atol=1e-3)
    reference = prostate_images["4-t2tsetra"]
    corners = []
    for index in np.array(np.meshgrid(*[(lo - 0.5, hi + 0.5) for lo, hi in zip(*PROSTATEX_0000_ROI)], indexing="ij")).reshape(3, -1).T:
        x, y, z = reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in index])
        corners.append([-x, -y, z])
    assert sorted(np.round(report["ras_corners"], 3).tolist()) == sorted(np.round(corners, 3).tolist())


def test_roi_reference_margin_and_json_file(capsys, tmp_path, prostate_series, prostate_images):
    paths = list(prostate_series.values())
    sagittal = prostate_series["3-t2tsesag"]
    code, out, err = runInProcess(capsys, "roi", "--reference", sagittal, "--json", tmp_path / "roi.json", *paths)
    # The JSON goes to the file; the log says what was written (plain line, no carriage return).
    assert code == 0 and out == f"Wrote {tmp_path / 'roi.json'}\n" and err == ""
    report = json.loads((tmp_path / "roi.json").read_text())
    geometries = {name: geometry.VolumeGeometry.fromImage(image, name) for name, image in prostate_images.items()}
    expected = geometry.computeROI(geometries["3-t2tsesag"], [geometries["4-t2tsetra"], geometries["5-t2tsecor"]])
    assert report["reference"] == "3-t2tsesag"
    assert report["ijk_min"] == expected.ijkMin.tolist() and report["ijk_max"] == expected.ijkMax.tolist()
    # 2 mm margin: ceil(2 / 0.5) = 4 voxels in-plane, ceil(2 / 3) = 1 slice, clipped to 0 … 18.
    code, out, _ = runInProcess(capsys, "roi", "--margin", "2", *paths)
    grown = json.loads(out)
    low, high = np.array(PROSTATEX_0000_ROI[0]), np.array(PROSTATEX_0000_ROI[1])
    assert grown["ijk_min"] == np.maximum(low - [4, 4, 1], 0).tolist() == [121, 150, 0]
    assert grown["ijk_max"] == np.minimum(high + [4, 4, 1], [383, 383, 18]).tolist() == [265, 247, 18]


def test_roi_bad_reference_and_margin(capsys, tmp_path, prostate_series):
    paths = list(prostate_series.values())
    code, _, err = runInProcess(capsys, "roi", "--reference", tmp_path / "other.nrrd", "--json", tmp_path / "r.json", *paths)
    assertCleanFailure(code, err, tmp_path, "is not one of the VOLUMEs")
    code, _, err = runInProcess(capsys, "roi", "--margin", "-1", "--json", tmp_path / "r.json", *paths)
    assertCleanFailure(code, err, tmp_path, "--margin")


# ---------------------------------------------------------------------------------------------
# segment on real data

T2_LEVEL = 400.0


def test_segment_end_to_end_on_real_data(tmp_path, prostate_series, prostate_images, a_threshold_model):
    labels = requireSharedData("prostatex", "labels", "ProstateX-0000_gland_AI-Bosma22b.nii.gz")
    model = a_threshold_model((T2_LEVEL,), LABELS, inputs=("T2",), patchSize=(96, 96, 16))
    tra, sag, cor = prostate_series.values()
    out = tmp_path / "out"
    out.mkdir()
    done = runProcess(
        "segment",
        tra,
        "--model",
        model,
        "--roi-from",
        sag,
        cor,
        "--output",
        out / "seg.seg.nrrd",
        "--stats",
        out / "stats.csv",
        "--stats-json",
        out / "stats.json",
        "--reference-seg",
        labels,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # progress goes to a terminal only
    assert sorted(os.listdir(out)) == ["seg.seg.nrrd", "stats.csv", "stats.json"]

    reference = prostate_images["4-t2tsetra"]
    expected = np.zeros(tuple(reversed(reference.GetSize())), dtype=np.uint8)
    window = tuple(slice(lo, hi + 1) for lo, hi in zip(reversed(PROSTATEX_0000_ROI[0]), reversed(PROSTATEX_0000_ROI[1])))
    expected[window] = sitk.GetArrayFromImage(reference)[window] > T2_LEVEL

    import slicerio

    segmentation = slicerio.read_segmentation(str(out / "seg.seg.nrrd"))
    np.testing.assert_allclose(segmentation["ijkToLPS"], geometry.ijkToLPSFromImage(reference), atol=1e-4)
    assert [s["name"] for s in segmentation["segments"]] == ["bright"]
    voxels = segmentation["voxels"]
    offset = segmentation.get("referenceImageExtentOffset", [0, 0, 0])
    full = np.zeros(reference.GetSize(), dtype=np.uint8)
    full[offset[0] : offset[0] + voxels.shape[0], offset[1] : offset[1] + voxels.shape[1], offset[2] : offset[2] + voxels.shape[2]] = voxels
    np.testing.assert_array_equal(full.transpose(2, 1, 0), expected)

    report = json.loads((out / "stats.json").read_text())
    assert set(report) >= {"segments", "roi", "model", "device", "timing_s", "mean_iou"}
    segment = report["segments"][0]
    assert set(segment) >= {
        "value",
        "name",
        "voxel_count",
        "volume_mm3",
        "volume_cm3",
        "centroid_ras",
        "intensity",
        "dice",
        "jaccard",
        "precision",
        "recall",
        "specificity",
        "hausdorff95_mm",
        "mean_surface_distance_mm",
    }
    assert segment["voxel_count"] == int(expected.sum())
    assert segment["volume_mm3"] == pytest.approx(expected.sum() * np.prod(reference.GetSpacing()), rel=1e-6)
    assert set(segment["intensity"]["T2"]) == {"mean", "std", "min", "max", "median"}
    assert segment["intensity"]["T2"]["min"] > T2_LEVEL
    assert report["roi"]["ijk_min"] == list(PROSTATEX_0000_ROI[0]) and report["device"] == "cpu"
    gland = sitk.GetArrayFromImage(readVolume(labels)) > 0
    truePositive = np.logical_and(gland, expected).sum()
    assert segment["dice"] == pytest.approx(2 * truePositive / (gland.sum() + expected.sum()), abs=1e-6)
    assert report["mean_iou"] == pytest.approx(segment["jaccard"])
    assert report["timing_s"]["inference"] > 0

    rows = list(csv.reader((out / "stats.csv").open()))
    from MedSegUNetLib.engine.statistics import statisticsColumns

    assert rows[0] == statisticsColumns(["T2"], True)
    assert rows[1][:3] == ["bright", "1", str(int(expected.sum()))]


def test_segment_no_roi_and_plain_labelmap(capsys, tmp_path, prostate_series, a_threshold_model):
    model = a_threshold_model((T2_LEVEL,), LABELS, inputs=("T2",), patchSize=(96, 96, 16))
    tra = prostate_series["4-t2tsetra"]
    code, _, err = runInProcess(
        capsys, "segment", tra, "--model", model, "--no-roi", "--output", tmp_path / "labels.nii.gz", "--device", "cpu"
    )
    assert code == 0, err
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz")))
    np.testing.assert_array_equal(labels, (sitk.GetArrayFromImage(readVolume(tra)) > T2_LEVEL).astype(np.uint8))


def test_segment_log_has_one_line_per_stage(capsys, tmp_path, prostate_series, a_threshold_model):
    """In a log (stdout not a terminal), each stage prints once, however many batches or classes."""
    labels = [(1, "bright", (1.0, 1.0, 0.0)), (2, "brighter", (0.2, 0.4, 1.0))]
    model = a_threshold_model((T2_LEVEL, 2 * T2_LEVEL), labels, inputs=("T2",), spacing=(1.0, 1.0, 3.0), patchSize=(32, 32, 8))
    names = list(prostate_series)
    code, out, err = runInProcess(
        capsys,
        "segment",
        prostate_series[names[0]],
        "--roi-from",
        *[prostate_series[n] for n in names[1:]],
        "--model",
        model,
        "--output",
        tmp_path / "labels.nii.gz",
        "--device",
        "cpu",
    )
    assert code == 0, err
    progress = [line for line in out.splitlines() if line.startswith("[")]
    stages = [line.split("] ", 1)[1].split(":")[0] for line in progress]
    assert len(stages) == len(set(stages)) and len(progress) <= 12, progress
    assert sum("Resampling to the reference grid" in line for line in progress) == 1, progress  # not a line per class
    assert sum("Inference" in line for line in progress) == 1, progress


def test_a_reader_that_goes_away_ends_the_command_quietly(prostate_series):
    """``medsegunet roi ... | head -1``: the pipe closes under the output; no traceback, no error line."""
    process = subprocess.Popen([*command(), "roi", *prostate_series.values()], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before anything is written
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 141 and stderr.decode().strip() == "", stderr.decode()


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit ≠ 0, nothing written.


@pytest.fixture
def small_inputs(tmp_path, a_threshold_model):
    """Synthetic inputs, models and an empty output folder for the bad-input cases."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    image = smallObliquePhantom()
    paths = {
        "good": folder / "t2.nrrd",
        "far": folder / "far.nrrd",
        "nan": folder / "nan.nrrd",
        "four": folder / "four.nii.gz",
        "vector": folder / "rgb.nrrd",
        "corrupt": folder / "corrupt.nrrd",
        "slab": folder / "slab.nrrd",
    }
    sitk.WriteImage(image, str(paths["good"]))
    far = sitk.Image(image)
    far.SetOrigin((500.0, 0.0, 0.0))
    sitk.WriteImage(far, str(paths["far"]))
    bad = sitk.Image(image)
    bad[2, 3, 4] = float("nan")
    sitk.WriteImage(bad, str(paths["nan"]))
    sitk.WriteImage(sitk.Image([5, 5, 5, 2], sitk.sitkFloat32), str(paths["four"]))
    sitk.WriteImage(sitk.Image([5, 5, 5], sitk.sitkVectorFloat32, 3), str(paths["vector"]))
    paths["corrupt"].write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 10 10 10\nencoding: raw\n\n\x00")
    sitk.WriteImage(
        phantoms.paintSpheres(phantoms.makeGrid((1, 18, 8), (1.0, 1.0, 2.0), np.eye(3), (0, 0, 0)), [((0, 0, 0), 6.0, 1.0)]),
        str(paths["slab"]),
    )
    paths["model"] = a_threshold_model((0.5,), LABELS)
    paths["model2d"] = a_threshold_model((0.5,), LABELS, spatialDims=2)
    paths["model2inputs"] = a_threshold_model((0.5,), LABELS, inputs=("T2", "ADC"))
    badCard = tmp_path / "badcard.pt"
    shutil.copy(paths["model"], badCard)
    (tmp_path / "badcard.pt.json").write_text(json.dumps({**phantoms.thresholdCard(LABELS), "output": "linear"}))
    paths["badcard"] = badCard
    notModel = tmp_path / "notmodel.pt"
    notModel.write_text("weights")
    paths["notmodel"] = notModel
    out = tmp_path / "out"
    out.mkdir()
    paths["out"] = out
    return paths


# [parameters (how the command goes wrong), input shape (—), expected (words of the one-line error)]
BAD_INPUT_CASES = [
    pytest.param(lambda p: ["segment", p["out"].parent / "absent.nrrd", "--model", p["model"]], "does not exist", id="missing-volume"),
    pytest.param(lambda p: ["segment", p["corrupt"], "--model", p["model"]], "is cut short", id="unreadable-volume"),
    pytest.param(lambda p: ["segment", p["good"], "--model", p["out"].parent / "absent.pt"], "does not exist", id="missing-model"),
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["notmodel"]],
        "is not a model file (TorchScript .pt or torch.export .pt2)",
        id="unreadable-model",
    ),
    pytest.param(lambda p: ["segment", p["good"], "--model", p["badcard"]], "field 'output'", id="card-fails-schema"),
    pytest.param(lambda p: ["segment", p["good"], p["good"], "--model", p["model"]], "takes 1 input", id="too-many-inputs"),
    pytest.param(lambda p: ["segment", p["good"], "--model", p["model2inputs"]], "takes 2 input", id="too-few-inputs"),
    pytest.param(lambda p: ["segment", p["slab"], "--model", p["model2d"]], "2D model", id="2d-model-wrong-slice-axis"),
    pytest.param(lambda p: ["segment", p["good"], "--model", p["model"], "--roi-from", p["far"]], "do not overlap", id="no-overlap"),
    pytest.param(lambda p: ["segment", p["nan"], "--model", p["model"]], "NaN", id="nan-voxels"),
    pytest.param(lambda p: ["segment", p["four"], "--model", p["model"]], "4 dimensions", id="4d-volume"),
    pytest.param(lambda p: ["segment", p["vector"], "--model", p["model"]], "components per voxel", id="vector-volume"),
    pytest.param(
        lambda p: ["segment", p["good"], "--model", p["model"], "--reference-seg", p["out"].parent / "absent.nrrd"],
        "does not exist",
        id="missing-reference-seg",
    ),
    pytest.param(lambda p: ["roi", p["good"], p["far"]], "do not overlap", id="roi-no-overlap"),
    pytest.param(lambda p: ["roi", p["good"], p["nan"]], "NaN", id="roi-nan"),
]


def outputArguments(paths, command: str) -> list:
    out = paths["out"]
    if command == "roi":
        return ["--json", out / "roi.json"]
    return ["--output", out / "seg.seg.nrrd", "--stats", out / "stats.csv", "--stats-json", out / "stats.json"]


@pytest.mark.parametrize("arguments, expected", BAD_INPUT_CASES)
def test_bad_input_in_process(capsys, small_inputs, arguments, expected):
    argv = arguments(small_inputs)
    code, out, err = runInProcess(capsys, *argv, *outputArguments(small_inputs, argv[0]))
    assertCleanFailure(code, err, small_inputs["out"], expected)


def test_output_in_missing_folder(capsys, small_inputs):
    missing = small_inputs["out"] / "missing"
    for option in ("--output", "--stats", "--stats-json"):
        target = missing / ("seg.seg.nrrd" if option == "--output" else "stats.csv")
        code, _, err = runInProcess(capsys, "segment", small_inputs["good"], "--model", small_inputs["model"], option, target)
        assertCleanFailure(code, err, small_inputs["out"], "does not exist")
    code, _, err = runInProcess(
        capsys, "segment", small_inputs["good"], "--model", small_inputs["model"], "--output", small_inputs["out"] / "seg.png"
    )
    assertCleanFailure(code, err, small_inputs["out"], "must end with one of")


def test_bad_input_as_a_process(small_inputs):
    done = runProcess("segment", small_inputs["nan"], "--model", small_inputs["model"], "--output", small_inputs["out"] / "seg.seg.nrrd")
    assertCleanFailure(done.returncode, done.stderr, small_inputs["out"], "NaN")
    assert done.stderr.startswith("medsegunet: error:")
    done = runProcess("roi", small_inputs["good"], small_inputs["far"], "--json", small_inputs["out"] / "roi.json")
    assertCleanFailure(done.returncode, done.stderr, small_inputs["out"], "do not overlap")


def test_segment_success_writes_all_outputs(capsys, small_inputs):
    code, _, err = runInProcess(
        capsys, "segment", small_inputs["good"], "--model", small_inputs["model"], *outputArguments(small_inputs, "segment")
    )
    assert code == 0, err
    assert sorted(os.listdir(small_inputs["out"])) == ["seg.seg.nrrd", "stats.csv", "stats.json"]


# ---------------------------------------------------------------------------------------------
# Multi-value options cannot lose a value: every documented form gives the three-series ROI.

# [parameters (how the command line is written), input (tra, sag, cor), expected (the ROI of all three)]
ROI_FORMS = [
    pytest.param(
        lambda m, t, s, c, o: ["segment", "--model", m, t, "--roi-from", s, "--roi-from", c, "--stats-json", o], id="repeated-option"
    ),
    pytest.param(lambda m, t, s, c, o: ["segment", "--model", m, t, "--roi-from", s, c, "--stats-json", o], id="list-after-inputs"),
    pytest.param(
        lambda m, t, s, c, o: ["segment", "--model", m, "--roi-from", s, c, "--", t, "--stats-json", o], id="list-ended-by-double-dash"
    ),
    pytest.param(lambda m, t, s, c, o: ["segment", "--stats-json", o, "--roi-from", s, c, "--model", m, t], id="options-before-inputs"),
    pytest.param(
        lambda m, t, s, c, o: ["segment", "--roi-from", s, "--model", m, t, "--roi-from", c, "--stats-json", o], id="inputs-between-options"
    ),
    pytest.param(
        lambda m, t, s, c, o: ["-q", "segment", "--model", m, "--roi-from", s, c, "--stats-json", o, "--", t], id="double-dash-at-the-end"
    ),
]


@pytest.mark.parametrize("form", ROI_FORMS)
def test_roi_from_forms_on_real_data(capsys, tmp_path, prostate_series, a_threshold_model, form):
    model = a_threshold_model((T2_LEVEL,), LABELS, inputs=("T2",), patchSize=(96, 96, 16))
    tra, sag, cor = prostate_series.values()
    code, _, err = runInProcess(capsys, *form(model, tra, sag, cor, tmp_path / "stats.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "stats.json").read_text())
    assert report["roi"]["ijk_min"] == list(PROSTATEX_0000_ROI[0]) and report["roi"]["ijk_max"] == list(PROSTATEX_0000_ROI[1])
    assert report["roi"]["volumes"] == ["4-t2tsetra", "3-t2tsesag", "5-t2tsecor"]


def test_roi_from_list_swallowing_the_inputs_says_how(capsys, tmp_path, prostate_series, a_threshold_model):
    model = a_threshold_model((T2_LEVEL,), LABELS, inputs=("T2",))
    tra, sag, cor = prostate_series.values()
    code, _, err = runInProcess(capsys, "segment", "--model", model, "--roi-from", sag, cor, tra, "--stats-json", tmp_path / "s.json")
    # The three volumes all went to --roi-from: no INPUT is left, and the line says so.
    assertCleanFailure(code, err, tmp_path, "Give the INPUT volumes")


# Every command and action with the least it needs to parse; -q and --verbose go before its name,
# right after it, and at the end.
COMMAND_FORMS = {
    "roi": (["roi"], ["a.nii.gz"]),
    "segment": (["segment"], ["--model", "m.pt", "a.nii.gz"]),
    "batch": (["batch"], ["--model", "m.pt", "--cases", "cases.csv", "--output", "out"]),
    "import": (["import"], ["m.onnx", "--output", "m.pt"]),
    "export": (["export"], ["--checkpoint", "c.pt", "--output", "m.pt"]),
    "info": (["info"], ["m.pt"]),
    "train": (["train"], ["--config", "c.yaml", "--output", "run"]),
    "demo": (["demo"], []),
    "models list": (["models", "list"], []),
    "models pull": (["models", "pull"], ["brain-tumor-2d"]),
    "data prepare": (["data", "prepare"], ["lgg", "folder", "--output", "out"]),
}


@pytest.mark.parametrize("option, field", [("-q", "quiet"), ("--quiet", "quiet"), ("--verbose", "verbose")])
@pytest.mark.parametrize("where", ["before", "after-name", "at-end"])
@pytest.mark.parametrize("form", list(COMMAND_FORMS), ids=[name.replace(" ", "-") for name in COMMAND_FORMS])
def test_quiet_and_verbose_are_accepted_everywhere(form, where, option, field):
    """``models list -q`` as ``-q models list``: each option in each place, for every command."""
    from MedSegUNetLib.cli import parseArguments

    names, rest = COMMAND_FORMS[form]
    argv = {"before": [option, *names, *rest], "after-name": [*names, option, *rest], "at-end": [*names, *rest, option]}[where]
    args = parseArguments(argv)
    assert getattr(args, field) is True and args.command == names[0]
    other = {"quiet": "verbose", "verbose": "quiet"}[field]
    assert getattr(args, other) is False


def test_models_list_quiet_prints_the_table(capsys):
    from MedSegUNetLib.cli import main

    assert main(["models", "list", "-q"]) == 0
    out = capsys.readouterr()
    assert out.err == "" and "brain-tumor-2d" in out.out and "lgg-flair" in out.out
