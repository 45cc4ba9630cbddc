"""--probabilities, --preview and the card's quality ranges, on known-answer models."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedSegUNetLib import cli
from MedSegUNetLib.engine.modelcard import readCard, saveModel
from MedSegUNetLib.models import phantoms

LABELS = [(1, "outer", (0.2, 0.8, 0.2)), (2, "inner", (0.9, 0.2, 0.2))]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probabilities")
    grid = phantoms.makeGrid((30, 28, 10), (1.0, 1.0, 2.0), phantoms.rotationMatrix((1, 0, 1), 15), (0, 0, 0))
    image = phantoms.paintSpheres(grid, [((0, 0, 0), 9.0, 1.0), ((1.0, 0, 0), 4.0, 2.0)])
    sitk.WriteImage(image, str(folder / "t2.nrrd"))
    other = phantoms.makeGrid((30, 30, 8), (1.0, 1.0, 3.0), np.eye(3), (-3.0, 0, 0))
    sitk.WriteImage(phantoms.paintSpheres(other, []), str(folder / "sag.nrrd"))
    return {"folder": folder, "image": image}


def test_softmax_probabilities_sum_to_one_and_give_the_labels(capsys, tmp_path, case, a_threshold_model):
    model = a_threshold_model((0.5, 1.5), LABELS)
    out = tmp_path
    argv = [
        "segment",
        "-q",
        "--model",
        model,
        str(case["folder"] / "t2.nrrd"),
        "--roi-from",
        str(case["folder"] / "sag.nrrd"),
        "--output",
        str(out / "labels.nrrd"),
        "--probabilities",
        str(out / "p.nrrd"),
        "--preview",
        str(out / "preview.png"),
    ]
    assert cli.main(argv) == 0, capsys.readouterr().err
    probabilities = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "p.nrrd")))  # K, J, I, class
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nrrd")))
    assert probabilities.shape == (*labels.shape, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=-1), labels)
    assert (labels == 2).any() and (labels == 1).any()
    assert (out / "preview.png").stat().st_size > 5000
    # 0–255, with the scale in the header.
    assert cli.main([*argv[:-6], "--probabilities", str(out / "p8.nrrd"), "--probabilities-uint8"]) == 0
    scaled = sitk.ReadImage(str(out / "p8.nrrd"))
    assert scaled.GetPixelIDValue() == sitk.sitkVectorUInt8 and float(scaled.GetMetaData("medsegunet_probability_scale")) == pytest.approx(
        1 / 255
    )
    np.testing.assert_allclose(sitk.GetArrayFromImage(scaled) / 255.0, probabilities, atol=0.5 / 255 + 1e-6)


def test_uint8_probabilities_in_nifti_are_refused(capsys, tmp_path, case, a_threshold_model):
    code = cli.main(
        [
            "segment",
            "--model",
            a_threshold_model((0.5,), LABELS[:1]),
            str(case["folder"] / "t2.nrrd"),
            "--probabilities",
            str(tmp_path / "p.nii.gz"),
            "--probabilities-uint8",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "NIfTI has no place" in err[0] and list(tmp_path.iterdir()) == []


def test_quality_ranges_are_flagged(capsys, tmp_path, case):
    card = phantoms.thresholdCard(LABELS)
    card["labels"][0]["qc"] = {"volume_ml": [0.0, 1.0]}  # the outer ball is about 3 mL: flagged
    card["labels"][1]["qc"] = {"volume_ml": [0.1, 1.0]}
    model = tmp_path / "qc.pt"
    saveModel(phantoms.thresholdModule((0.5, 1.5)), card, model)
    assert readCard(model)["labels"][0]["qc"] == {"volume_ml": [0.0, 1.0]}
    code = cli.main(
        [
            "segment",
            "--model",
            str(model),
            str(case["folder"] / "t2.nrrd"),
            "--stats",
            str(tmp_path / "s.csv"),
            "--stats-json",
            str(tmp_path / "s.json"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "outer: flagged: volume" in captured.err and "above the expected 0–1 mL" in captured.err and "inner" not in captured.err
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["segments"][0]["qc"].startswith("flagged: volume") and report["segments"][1]["qc"] == "ok"
    rows = list(csv.DictReader((tmp_path / "s.csv").open(encoding="utf-8")))
    assert rows[0]["QC"] == report["segments"][0]["qc"] and rows[1]["QC"] == "ok"
    # Without --stats the warning is there all the same, and the segmentation is written.
    assert cli.main(["segment", "-q", "--model", str(model), str(case["folder"] / "t2.nrrd"), "--output", str(tmp_path / "seg.nrrd")]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        f"medsegunet: warning: outer: {report['segments'][0]['qc']} (the card's quality range): check the result"
    ]
    # The batch: one warning line per flagged case, the same words in the summary and the case's CSV.
    cohort = tmp_path / "cohort"
    for name in ("case1", "case2"):
        (cohort / name).mkdir(parents=True)
        sitk.WriteImage(case["image"], str(cohort / name / "image.nrrd"))
    assert cli.main(["batch", "-q", "--model", str(model), "--cases", str(cohort), "--output", str(tmp_path / "out")]) == 0
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings == [
        f"medsegunet: warning: case {name}: flagged: outer volume {report['segments'][0]['qc'].removeprefix('flagged: volume ')}"
        for name in ("case1", "case2")
    ], warnings
    summary = list(csv.DictReader((tmp_path / "out" / "summary.csv").open(encoding="utf-8")))
    assert [row["qc"] for row in summary] == [f"flagged: outer {report['segments'][0]['qc'].removeprefix('flagged: ')}"] * 2
    assert all(row["status"] == "ok" for row in summary)
    perCase = list(csv.DictReader((tmp_path / "out" / "case1" / "case1-statistics.csv").open(encoding="utf-8")))
    assert perCase[0]["QC"] == report["segments"][0]["qc"] and perCase[1]["QC"] == "ok"
