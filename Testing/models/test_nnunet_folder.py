"""nnU-Net v2 results folders (issue 37): read safely, and predicted voxel for voxel as
``nnUNetv2_predict`` does, against real results folders and predictions that nnU-Net 2.8.1 itself
made (``Testing/benchmarks/nnunet_reference.py``; ``Testing/data/nnunet/reference.json`` holds the
commands and versions)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import REPO_ROOT, requireSharedData
from MedSegUNetLib.engine.errors import ModelImportError
from MedSegUNetLib.engine.nnunet import predictCase, stackedFolds, windowSteps
from MedSegUNetLib.engine.volumes import readVolume
from MedSegUNetLib.models.nnunetfolder import buildNetwork, predictionPlan, readCheckpoints, readFolder

pytest.importorskip("dynamic_network_architectures", reason="the [nnunet] extra (dynamic_network_architectures) is needed")

FIXTURES = REPO_ROOT / "Testing" / "data" / "nnunet"
DATASETS = sorted(path.name for path in FIXTURES.iterdir() if (path / "results").is_dir()) if FIXTURES.is_dir() else []
# Which folds and mirroring each of nnUNetv2_predict's runs used.
RUNS = {"f0": (["0"], True), "f0-notta": (["0"], False), "f01": (["0", "1"], True)}


def resultsFolder(dataset: str) -> Path:
    return next((FIXTURES / dataset / "results").glob("*/*__*__*"))


def cases(dataset: str) -> list[Path]:
    return sorted((FIXTURES / dataset / "imagesTs").glob("*_0000.nii.gz"))


@pytest.fixture
def a_results_folder(tmp_path) -> Path:
    """A copy of the 3D fixture's results folder, named as nnU-Net names it, to spoil."""
    source = resultsFolder("aniso3d")
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize("run", list(RUNS))
@pytest.mark.parametrize("dataset", DATASETS)
def test_labels_are_nnunets_voxel_for_voxel(dataset, run):
    folds, mirroring = RUNS[run]
    folder, states = readCheckpoints(readFolder(resultsFolder(dataset), folds=folds))
    plan = predictionPlan(folder, mirroring=mirroring)
    network = stackedFolds([buildNetwork(folder, state) for state in states])
    for path in cases(dataset):
        image = sitk.ReadImage(str(path))
        # C, K, J, I: the case's channel files CASE_0000, CASE_0001, ... in order.
        files = sorted(path.parent.glob(path.name.replace("_0000.nii.gz", "_????.nii.gz")))
        channels = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(file))) for file in files])
        assert len(files) == len(folder.channelNames)
        labels, _ = predictCase(channels, list(reversed(image.GetSpacing())), network, plan)
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / dataset / "predictions" / run / path.name.replace("_0000", ""))))
        assert labels.shape == expected.shape
        values = [int(v) for v in np.unique(expected) if v]
        assert values, "the fixture's network segments something"
        assert (labels == expected).mean() >= 0.9995
        for value in values:
            dice = 2 * np.sum((labels == value) & (expected == value)) / (np.sum(labels == value) + np.sum(expected == value))
            assert dice >= 0.999, (path.name, value, dice)


# Real volumes of ../shared/data through aniso3d's fold 0 without mirroring, compared with nnU-Net itself
# (its predictions on patients' scans are not kept in the repository). The peer needs nnU-Net's environment.
REAL = {"prostatex0000-t2": ("prostatex", "ProstateX-0000", "4-t2tsetra"), "brain1": ("brain-tumor", "pyradiomics", "brain1_image.nrrd")}


def runNNUNet(inputs: Path, outputs: Path, *options: str) -> None:
    """nnU-Net 2.8.1 itself on aniso3d's folder, from the environment ``MEDSEGUNET_NNUNET_VENV`` names
    (the test skips, saying so, without one)."""
    import subprocess

    venv = os.environ.get("MEDSEGUNET_NNUNET_VENV")
    if not venv:
        pytest.skip("set MEDSEGUNET_NNUNET_VENV to nnU-Net's own virtual environment (Testing/benchmarks/nnunet_reference.py makes one)")
    predict = [str(Path(venv) / "bin" / "nnUNetv2_predict_from_modelfolder"), "-i", str(inputs), "-o", str(outputs)]
    done = subprocess.run(
        [*predict, "-m", str(resultsFolder("aniso3d")), *options, "-device", "cpu"], capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("name", list(REAL))
def test_real_volumes_are_nnunets_voxel_for_voxel(name, tmp_path):
    source = requireSharedData(*REAL[name])
    # nnU-Net reads the volume as NIfTI (its file ending): the same float32 copy feeds both.
    (tmp_path / "in").mkdir()
    copy = tmp_path / "in" / f"{name}_0000.nii.gz"
    sitk.WriteImage(sitk.Cast(readVolume(str(source)), sitk.sitkFloat32), str(copy))
    runNNUNet(tmp_path / "in", tmp_path / "out", "-f", "0", "--disable_tta")
    image = sitk.ReadImage(str(copy))
    folder, states = readCheckpoints(readFolder(resultsFolder("aniso3d"), folds=["0"]))
    labels, _ = predictCase(
        sitk.GetArrayFromImage(image)[None],
        list(reversed(image.GetSpacing())),
        stackedFolds([buildNetwork(folder, states[0])]),
        predictionPlan(folder, mirroring=False),
    )
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{name}.nii.gz")))
    assert labels.shape == expected.shape and np.count_nonzero(expected) > 0
    assert (labels == expected).mean() >= 0.9995


def test_a_folder_reads_as_nnunet_wrote_it():
    folder, states = readCheckpoints(readFolder(resultsFolder("aniso3d")))
    assert (folder.configuration, folder.folds, folder.trainer) == ("3d_fullres", ("0", "1"), "nnUNetTrainer")
    assert folder.mirroringAxes == (0, 1, 2) and folder.channelNames == ["T2"] and folder.outputChannels == 3
    plan = predictionPlan(folder)
    # 0.6 × 0.6 × 3.6 mm in I, J, K: the plans' target spacing is in array order (K, J, I).
    assert plan.spacing[0] > 3 * plan.spacing[1] and plan.normalization[0].scheme == "ZScoreNormalization"
    network = buildNetwork(folder, states[0])
    assert network(torch.zeros(1, 1, *plan.patchSize)).shape == (1, 3, *plan.patchSize)


def test_regions_and_the_residual_encoder_read_as_such():
    if "regions3d" not in DATASETS:
        pytest.skip("no region-based fixture")
    folder, _ = readCheckpoints(readFolder(resultsFolder("regions3d")))
    assert folder.outputChannels == 2 and predictionPlan(folder).regionsClassOrder == (1, 2)
    assert folder.architecture["network_class_name"].endswith("ResidualEncoderUNet")


def test_two_channels_normalise_as_their_plans_say():
    if "channels3d" not in DATASETS:
        pytest.skip("no two-channel fixture")
    folder, _ = readCheckpoints(readFolder(resultsFolder("channels3d")))
    t2, ct = predictionPlan(folder).normalization
    # The wide zero border made nnU-Net z-score T2 inside the non-zero mask; CT by the dataset's percentiles.
    assert (t2.scheme, t2.useMask) == ("ZScoreNormalization", True) and ct.scheme == "CTNormalization"
    assert ct.lower < ct.mean < ct.upper and folder.channelNames == ["T2", "CT"]


def test_windows_are_spread_as_nnunet_spreads_them():
    # nnU-Net's own example (sliding_window_prediction.py): 110 voxels, a 64 patch, step 0.5.
    assert windowSteps((110,), (64,), 0.5) == [[0, 23, 46]]
    # ceil((65 − 32) / 16) + 1 = 4 starts over 33 voxels; one window fills an axis of its own size.
    assert windowSteps((64, 65), (64, 32), 0.5) == [[0], [0, 11, 22, 33]]


class Hostile:
    """Runs code when unpickled: it must never be."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def spoil(folder: Path, file: str, change) -> None:
    path = folder / file
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def architecture(plans: dict) -> dict:
    return plans["configurations"]["3d_fullres"]["architecture"]


SPOILED = {
    "a network class off the list": (
        "plans.json",
        lambda plans: architecture(plans).update(network_class_name="os.system"),
        "names network class 'os.system'",
    ),
    "an argument naming os.system": (
        "plans.json",
        lambda plans: architecture(plans)["arch_kwargs"].update(nonlin="os.system"),
        "names 'os.system' for 'nonlin'",
    ),
    "a required import naming a module": (
        "plans.json",
        lambda plans: architecture(plans)["arch_kwargs"].update(conv_op="subprocess.Popen"),
        "names 'subprocess.Popen' for 'conv_op'",
    ),
    "plans of nnU-Net before 2.4": ("plans.json", lambda plans: plans["configurations"]["3d_fullres"].pop("architecture"), "plan it again"),
    "no channel names": ("dataset.json", lambda dataset: dataset.pop("channel_names"), "has no 'channel_names'"),
}


@pytest.mark.parametrize("file, change, message", SPOILED.values(), ids=list(SPOILED))
def test_a_spoiled_plan_is_refused_before_anything_is_imported(a_results_folder, file, change, message):
    spoil(a_results_folder, file, change)
    with pytest.raises(ModelImportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        readFolder(a_results_folder)


def test_a_checkpoint_that_runs_code_is_refused_unrun(a_results_folder, tmp_path):
    marker = tmp_path / "ran"
    torch.save({"network_weights": {}, "payload": Hostile(marker)}, a_results_folder / "fold_1" / "checkpoint_final.pth")
    with pytest.raises(ModelImportError, match="could run code when read"):
        readCheckpoints(readFolder(a_results_folder))
    assert not marker.exists()


def test_pickles_in_the_folder_are_never_read(a_results_folder, tmp_path):
    marker = tmp_path / "ran"
    for name in ("postprocessing.pkl", "plans.pkl"):
        (a_results_folder / name).write_bytes(pickle.dumps(Hostile(marker)))
    folder, states = readCheckpoints(readFolder(a_results_folder))
    buildNetwork(folder, states[0])
    predictionPlan(folder)
    assert not marker.exists()


def test_plans_and_checkpoints_of_two_models_are_refused(a_results_folder):
    spoil(a_results_folder, "plans.json", lambda plans: plans.update(dataset_name="Dataset999_other"))
    with pytest.raises(ModelImportError, match="the folder mixes two models"):
        readCheckpoints(readFolder(a_results_folder))


def test_labels_that_disagree_with_the_checkpoints_are_refused(a_results_folder):
    spoil(a_results_folder, "dataset.json", lambda dataset: dataset["labels"].update(extra=3))
    with pytest.raises(ModelImportError, match="other labels than dataset.json"):
        readCheckpoints(readFolder(a_results_folder))


def test_weights_that_do_not_fit_the_plans_are_refused(a_results_folder):
    spoil(a_results_folder, "plans.json", lambda plans: architecture(plans)["arch_kwargs"].update(features_per_stage=[8, 16, 32, 64]))
    folder, states = readCheckpoints(readFolder(a_results_folder))
    with pytest.raises(ModelImportError, match="do not fit the plans' network"):
        buildNetwork(folder, states[0])


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"folds": ["3"]}, r"Fold 3 has no checkpoint_final.pth .*choose the folds it has \(0, 1\)"),
        ({"checkpoint": "best"}, "Fold 0 has no checkpoint_best.pth"),
        ({"configuration": "3d_lowres"}, r"no configuration '3d_lowres': choose one of 2d, 3d_fullres"),
    ],
)
def test_a_missing_fold_or_configuration_is_named(a_results_folder, arguments, message):
    with pytest.raises(ModelImportError, match=message):
        readFolder(a_results_folder, **arguments)


def test_what_is_not_an_nnunet_folder_is_said(tmp_path):
    with pytest.raises(ModelImportError, match="has no dataset.json"):
        readFolder(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelImportError, match="is not a folder"):
        readFolder(tmp_path / "file")
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(ModelImportError, match="is not a JSON object"):
        readFolder(tmp_path)


def test_an_unknown_normalisation_is_refused(a_results_folder):
    spoil(a_results_folder, "plans.json", lambda plans: plans["configurations"]["3d_fullres"].update(normalization_schemes=["Mystery"]))
    folder, _ = readCheckpoints(readFolder(a_results_folder))
    with pytest.raises(ModelImportError, match="Normalisation 'Mystery' of channel 0"):
        predictionPlan(folder)


DNA_04_CHECK = """
import json, sys, importlib.metadata as metadata
import numpy as np, SimpleITK as sitk
import dynamic_network_architectures
from MedSegUNetLib.engine.nnunet import predictCase, stackedFolds
from MedSegUNetLib.models.nnunetfolder import buildNetwork, predictionPlan, readCheckpoints, readFolder
folder, states = readCheckpoints(readFolder(sys.argv[1]))
image = sitk.ReadImage(sys.argv[2])
labels, _ = predictCase(sitk.GetArrayFromImage(image)[None], list(reversed(image.GetSpacing())),
                        stackedFolds([buildNetwork(folder, state) for state in states]), predictionPlan(folder))
expected = sitk.GetArrayFromImage(sitk.ReadImage(sys.argv[3]))
print(json.dumps({"version": metadata.version("dynamic_network_architectures"), "where": dynamic_network_architectures.__file__,
                  "identical": float((labels == expected).mean())}))
"""


def test_the_dna_0_4_that_nnunetv2_brings_reads_the_same(tmp_path):
    # nnunetv2 2.8.1 requires dynamic_network_architectures 0.4.4, whose unet module needs no timm:
    # a user who has nnunetv2 imports with it. Here it is unpacked --no-deps ahead of this environment's 0.3.x.
    import subprocess
    import sys
    import zipfile

    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "dynamic_network_architectures==0.4.4"]
        + ["-d", str(tmp_path / "wheel")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if fetched.returncode != 0:
        pytest.skip(f"dynamic_network_architectures 0.4.4 cannot be fetched here (offline?): {fetched.stderr.strip().splitlines()[-1:]}")
    with zipfile.ZipFile(next((tmp_path / "wheel").glob("*.whl"))) as wheel:
        wheel.extractall(tmp_path / "site")
    case = FIXTURES / "aniso3d" / "imagesTs" / "aniso3d_006_0000.nii.gz"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            DNA_04_CHECK,
            str(resultsFolder("aniso3d")),
            str(case),
            str(FIXTURES / "aniso3d" / "predictions" / "f01" / "aniso3d_006.nii.gz"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")]))},
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["version"] == "0.4.4" and answer["where"].startswith(str(tmp_path / "site"))
    assert answer["identical"] >= 0.9995


def test_without_the_networks_package_the_remedy_is_said(monkeypatch):
    import sys

    folder, states = readCheckpoints(readFolder(resultsFolder("aniso3d"), folds=["0"]))
    # As in a Slicer or an environment without the [nnunet] extra: the package cannot be imported.
    for name in [name for name in sys.modules if name.startswith("dynamic_network_architectures")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "dynamic_network_architectures", None)
    with pytest.raises(ModelImportError, match=r"install 'dynamic_network_architectures>=0.3.1,<0.4' \(pip install -e '.\[nnunet\]'"):
        buildNetwork(folder, states[0])


def test_nnunet_itself_still_answers_as_the_stored_predictions(tmp_path):
    # The peer: nnU-Net 2.8.1 rerun on the fixture when its own environment is given (nnunet_reference.py
    # makes one); the stored predictions the other tests compare with must still be what it writes.
    runNNUNet(FIXTURES / "aniso3d" / "imagesTs", tmp_path, "-f", "0", "1")
    folder, states = readCheckpoints(readFolder(resultsFolder("aniso3d")))
    network, plan = stackedFolds([buildNetwork(folder, state) for state in states]), predictionPlan(folder)
    for path in cases("aniso3d"):
        image = sitk.ReadImage(str(path))
        labels, _ = predictCase(sitk.GetArrayFromImage(image)[None], list(reversed(image.GetSpacing())), network, plan)
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / path.name.replace("_0000", ""))))
        stored = sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "aniso3d" / "predictions" / "f01" / path.name.replace("_0000", ""))))
        assert np.array_equal(theirs, stored) and (labels == theirs).mean() >= 0.9995
