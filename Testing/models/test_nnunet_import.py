"""``medsegunet import NNUNET_RESULTS_FOLDER`` and the model file it writes, run by ``segment``, batch
and the Python API as ``nnUNetv2_predict`` ran the same folder (Testing/data/nnunet)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO_ROOT, errorLines, medsegunetCommand
from MedSegUNetLib.engine.errors import CardError
from MedSegUNetLib.engine.modelcard import loadModel, readCard, validateCard
from MedSegUNetLib.engine.pipeline import segmentImages

pytest.importorskip("dynamic_network_architectures", reason="the [nnunet] extra (dynamic_network_architectures) is needed")

FIXTURES = REPO_ROOT / "Testing" / "data" / "nnunet"


def resultsFolder(dataset: str) -> Path:
    return next((FIXTURES / dataset / "results").glob("*/*__*__*"))


def run(*arguments, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*medsegunetCommand(), *map(str, arguments)], capture_output=True, text=True, timeout=600, cwd=cwd)


def agreement(labels: np.ndarray, expected: np.ndarray) -> tuple[float, list[float]]:
    values = [int(v) for v in np.unique(expected) if v]
    dice = [2 * np.sum((labels == v) & (expected == v)) / (np.sum(labels == v) + np.sum(expected == v)) for v in values]
    return float((labels == expected).mean()), dice


@pytest.fixture(scope="module")
def an_imported_model(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("nnunet") / "aniso3d.pt"
    result = run("import", resultsFolder("aniso3d"), "--output", output)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith(f"Wrote {output}: nnU-Net 3d_fullres, folds 0, 1 of nnUNetTrainer")
    return output


def test_the_card_carries_the_whole_pipeline(an_imported_model):
    card = readCard(an_imported_model)
    assert card["schema"] == "medsegunet.model/4" and card.inputNames == ["T2"] and card.output == "softmax"
    assert [(label.value, label.name) for label in card.labels] == [(1, "gland"), (2, "lesion")]
    plan = card.nnunet
    assert plan.mirrorAxes == (0, 1, 2) and plan.normalization[0].scheme == "ZScoreNormalization" and card["nnunet"]["folds"] == 2
    record = card.provenance["nnunet"]
    assert (record["configuration"], record["folds"], record["trainer"]) == ("3d_fullres", ["0", "1"], "nnUNetTrainer")
    assert record["dataset"] == "Dataset901_aniso3d" and card.provenance["verified"]["max_abs_difference"] <= 1e-4


@pytest.mark.parametrize("case", ["aniso3d_006", "aniso3d_007"])
def test_segment_answers_as_nnunet_predict(an_imported_model, tmp_path, case):
    output = tmp_path / "labels.nii.gz"
    result = run("segment", "--model", an_imported_model, FIXTURES / "aniso3d" / "imagesTs" / f"{case}_0000.nii.gz", "--output", output)
    assert result.returncode == 0, result.stderr
    written = sitk.ReadImage(str(output))
    reference = sitk.ReadImage(str(FIXTURES / "aniso3d" / "predictions" / "f01" / f"{case}.nii.gz"))
    same, dice = agreement(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(reference))
    assert same >= 0.9995 and min(dice) >= 0.999
    assert written.GetSpacing() == pytest.approx(reference.GetSpacing()) and written.GetOrigin() == pytest.approx(reference.GetOrigin())


def test_one_fold_without_mirroring_answers_as_nnunet_predict(tmp_path):
    # Relative paths, from another working directory: as a user types them.
    shutil.copytree(resultsFolder("aniso3d"), tmp_path / resultsFolder("aniso3d").name)
    result = run("import", resultsFolder("aniso3d").name, "--folds", "0", "--no-tta", "--output", "one.pt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model = loadModel(tmp_path / "one.pt", device="cpu")
    assert model.card.nnunet.mirrorAxes == () and model.card["nnunet"]["folds"] == 1
    image = sitk.ReadImage(str(FIXTURES / "aniso3d" / "imagesTs" / "aniso3d_007_0000.nii.gz"))
    labels = sitk.GetArrayFromImage(segmentImages([image], model, useROI=False).labelmap)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "aniso3d" / "predictions" / "f0-notta" / "aniso3d_007.nii.gz")))
    same, dice = agreement(labels, expected)
    assert same >= 0.9995 and min(dice) >= 0.999


def test_a_2d_configuration_imports_and_answers_as_nnunet_predict(tmp_path):
    output = tmp_path / "slices.pt"
    assert run("import", resultsFolder("slices2d"), "--output", output).returncode == 0
    card = readCard(output)
    assert card.spatialDims == 2 and len(card.nnunet.patchSize) == 2
    image = sitk.ReadImage(str(FIXTURES / "slices2d" / "imagesTs" / "slices2d_006_0000.nii.gz"))
    labels = sitk.GetArrayFromImage(segmentImages([image], loadModel(output, device="cpu"), useROI=False).labelmap)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "slices2d" / "predictions" / "f01" / "slices2d_006.nii.gz")))
    same, dice = agreement(labels, expected)
    assert same >= 0.9995 and min(dice) >= 0.999


def test_a_refused_folder_leaves_no_file_and_one_line(tmp_path):
    folder = tmp_path / resultsFolder("aniso3d").name
    shutil.copytree(resultsFolder("aniso3d"), folder)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    result = run("import", folder, "--output", tmp_path / "model.pt")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert errorLines(result.stderr) == [
        "medsegunet: error: plans.json's 3d_fullres names network class 'os.system', which is not one of "
        "dynamic_network_architectures.architectures.unet.PlainConvUNet, "
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet: not imported."
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == [folder.name]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--folds", "7"], "Fold 7 has no checkpoint_final.pth in"),
        (["--checkpoint", "best"], "Fold 0 has no checkpoint_best.pth in"),
        (["--configuration", "3d_lowres"], "The plans have no configuration '3d_lowres': choose one of 2d, 3d_fullres (--configuration)."),
        (["--labels", "labels.csv"], "carries its own labels and pipeline"),
    ],
)
def test_options_that_do_not_fit_are_refused(tmp_path, arguments, message):
    output = tmp_path / "model.pt"
    result = run("import", resultsFolder("aniso3d"), "--output", output, *arguments)
    assert result.returncode != 0 and message in result.stderr and not output.exists()


def test_a_renamed_folder_says_which_configuration_to_choose(tmp_path):
    shutil.copytree(resultsFolder("aniso3d"), tmp_path / "renamed")
    result = run("import", tmp_path / "renamed", "--output", tmp_path / "model.pt")
    assert errorLines(result.stderr) == ["medsegunet: error: Say which configuration: choose one of 2d, 3d_fullres (--configuration)."]
    assert run("import", tmp_path / "renamed", "--configuration", "3d_fullres", "--output", tmp_path / "model.pt").returncode == 0


def test_nnunet_options_with_another_source_are_refused(tmp_path, a_tiny_unet):
    result = run("import", a_tiny_unet, "--output", tmp_path / "model.pt", "--no-tta", "--card", "card.json")
    assert result.returncode != 0 and "--no-tta go with an nnU-Net results folder" in result.stderr


def test_a_version_3_card_with_an_nnunet_pipeline_is_refused(an_imported_model):
    card = readCard(an_imported_model).toJSON()
    card["schema"] = "medsegunet.model/3"
    # A reader that knew only version 3 would run the network through the wrong steps.
    with pytest.raises(CardError, match='field \'nnunet\' needs "schema": "medsegunet.model/4"'):
        validateCard(card)


def test_info_says_what_nnunet_trained(an_imported_model):
    result = run("info", an_imported_model)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "nnU-Net: Dataset901_aniso3d, nnUNetPlans, 3d_fullres, nnUNetTrainer, folds 0, 1 (final checkpoints)" in lines
    assert any(
        line.startswith("nnU-Net pipeline: target spacing") and "2 fold(s) averaged, mirroring axes 0, 1, 2" in line for line in lines
    )


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_batch_answers_as_nnunet_predict_for_every_case(an_imported_model, tmp_path, engine):
    if engine == "ray":
        pytest.importorskip("ray", reason="Ray is needed for --engine ray")
    cases = tmp_path / "cases"
    cases.mkdir()
    for image in (FIXTURES / "aniso3d" / "imagesTs").glob("*.nii.gz"):
        shutil.copy(image, cases / image.name)
    result = run(
        "batch", "-q", "--model", an_imported_model, "--cases", cases, "--output", tmp_path / "out", "--workers", "1", "--engine", engine
    )
    assert result.returncode == 0, result.stderr
    for case in ("aniso3d_006", "aniso3d_007"):
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{case}_0000" / f"{case}_0000.seg.nrrd")))
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "aniso3d" / "predictions" / "f01" / f"{case}.nii.gz")))
        same, dice = agreement(written.reshape(expected.shape), expected)
        assert same >= 0.9995 and min(dice) >= 0.999


def zipOf(folder: Path, archive: Path) -> Path:
    """The folder as nnUNetv2_export_model_to_zip lays it out: DatasetNNN_name/TRAINER__PLANS__CONFIGURATION/..."""
    import zipfile

    with zipfile.ZipFile(archive, "w") as stream:
        for path in folder.rglob("*"):
            if path.is_file():
                stream.write(path, path.relative_to(folder.parent.parent).as_posix())
    return archive


def test_a_catalog_entry_pulls_an_nnunet_zip_and_imports_it(tmp_path, a_file_server, monkeypatch):
    import hashlib

    served, url = a_file_server
    archive = zipOf(resultsFolder("aniso3d"), served / "aniso3d.zip")
    entry = {
        "name": "aniso",
        "source": {"url": url + "aniso3d.zip", "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(), "folds": ["0"]},
    }
    (tmp_path / "catalog.json").write_text(json.dumps({"schema": "medsegunet.catalog/1", "models": [entry]}))
    environment = {"MEDSEGUNET_CATALOG": str(tmp_path / "catalog.json"), "MEDSEGUNET_CACHE": str(tmp_path / "cache")}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    result = run("models", "pull", "aniso")
    assert result.returncode == 0, result.stderr
    card = readCard(result.stdout.strip().splitlines()[-1])
    assert card.provenance["source"] == url + "aniso3d.zip" and card.provenance["nnunet"]["folds"] == ["0"]
    image = FIXTURES / "aniso3d" / "imagesTs" / "aniso3d_006_0000.nii.gz"
    assert run("segment", "--model", "aniso", image, "--output", tmp_path / "labels.nii.gz").returncode == 0
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "aniso3d" / "predictions" / "f0" / "aniso3d_006.nii.gz")))
    same, dice = agreement(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz"))), expected)
    assert same >= 0.9995 and min(dice) >= 0.999


def test_a_card_that_promises_other_folds_stops_the_run(an_imported_model, tmp_path):
    model = tmp_path / "model.pt"
    shutil.copy(an_imported_model, model)
    card = readCard(an_imported_model).toJSON()
    card["nnunet"]["folds"] = 3
    (tmp_path / "model.pt.json").write_text(json.dumps(card))
    image = FIXTURES / "aniso3d" / "imagesTs" / "aniso3d_006_0000.nii.gz"
    result = run("segment", "--model", model, image, "--output", tmp_path / "labels.nii.gz")
    assert result.returncode != 0 and not (tmp_path / "labels.nii.gz").exists()
    assert errorLines(result.stderr) == [
        "medsegunet: error: The nnU-Net network answers a [2, 3, 16, 56, 56] window where its card promises 3 fold(s) × 3 channels of "
        "[16, 56, 56]: the model file and its card do not belong together; import the results folder again."
    ]


def test_a_cascade_stage_is_refused_and_post_processing_is_noted(tmp_path):
    folder = tmp_path / resultsFolder("aniso3d").name
    shutil.copytree(resultsFolder("aniso3d"), folder)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    (folder / "plans.json").write_text(json.dumps(plans))
    refused = run("import", folder, "--configuration", "3d_cascade_fullres", "--output", tmp_path / "cascade.pt")
    assert errorLines(refused.stderr) == [
        "medsegunet: error: 3d_cascade_fullres is a cascade stage: it needs 3d_lowres's segmentation as an input, which this import "
        "does not run; import another configuration (--configuration)."
    ]
    (folder.parent / "postprocessing.json").write_text("{}")
    done = run("import", folder, "--output", tmp_path / "model.pt")
    assert done.returncode == 0, done.stderr
    note = "postprocessing.json was not applied (nnUNetv2_predict does not apply it either; nnUNetv2_apply_postprocessing does)"
    assert f"Note: {note}" in done.stdout.splitlines() and readCard(tmp_path / "model.pt").provenance["notes"] == [note]


def test_two_inputs_go_in_as_their_channels(tmp_path):
    # T2 then CT, as dataset.json's channel_names order them; the CT channel has nnU-Net's CT normalisation.
    assert run("import", resultsFolder("channels3d"), "--output", tmp_path / "two.pt").returncode == 0
    assert readCard(tmp_path / "two.pt").inputNames == ["T2", "CT"]
    images = [FIXTURES / "channels3d" / "imagesTs" / f"channels3d_006_{channel:04d}.nii.gz" for channel in (0, 1)]
    result = run("segment", "--model", tmp_path / "two.pt", *images, "--output", tmp_path / "labels.nii.gz")
    assert result.returncode == 0, result.stderr
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "channels3d" / "predictions" / "f01" / "channels3d_006.nii.gz")))
    same, dice = agreement(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz"))), expected)
    assert same >= 0.9995 and min(dice) >= 0.999
    # The channels swapped are other inputs: the labels change (the order is not a detail).
    swapped = run("segment", "--model", tmp_path / "two.pt", *reversed(images), "--output", tmp_path / "swapped.nii.gz")
    assert (
        swapped.returncode == 0 and agreement(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "swapped.nii.gz"))), expected)[0] < 0.999
    )


def test_a_pt2_archive_answers_as_nnunet_predict(tmp_path):
    output = tmp_path / "aniso3d.pt2"
    result = run("import", resultsFolder("aniso3d"), "--format", "pt2", "--output", output)
    assert result.returncode == 0, result.stderr
    model = loadModel(output, device="cpu")
    assert model.card["nnunet"]["folds"] == 2 and model.card.provenance["verified"]["max_abs_difference"] <= 1e-4
    image = sitk.ReadImage(str(FIXTURES / "aniso3d" / "imagesTs" / "aniso3d_007_0000.nii.gz"))
    labels = sitk.GetArrayFromImage(segmentImages([image], model, useROI=False).labelmap)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "aniso3d" / "predictions" / "f01" / "aniso3d_007.nii.gz")))
    same, dice = agreement(labels, expected)
    assert same >= 0.9995 and min(dice) >= 0.999
