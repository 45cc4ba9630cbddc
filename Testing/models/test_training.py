"""``medsegunet train``: config validation, data sources, training → export → segment, resume.

Data are generated here: small volumes whose labels are spheres painted into the images (so a
network can learn them in a few steps), written as a Decathlon folder (one 4D two-channel file per
case) or as a CSV whose two inputs lie on different, tilted grids with an extra ROI series.
"""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from MedSegUNetLib.engine import pipeline, statistics
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.engine.modelcard import loadModel, readCard
from MedSegUNetLib.models import trainconfig, traindata, training
from MedSegUNetLib.models.exporting import exportCheckpoint
from MedSegUNetLib.models.phantoms import makeGrid, paintSpheres, rotationMatrix

LABELS = [{"value": 1, "name": "outer", "color": [0.9, 0.3, 0.2]}, {"value": 2, "name": "inner", "color": [0.2, 0.5, 0.9]}]


def sphereCase(seed: int, size=(24, 24, 12), spacing=(1.0, 1.0, 2.0), direction=np.eye(3)):
    """(image, label) on one grid: an outer sphere (label 1) with an inner core (label 2)."""
    rng = np.random.default_rng(seed)
    grid = makeGrid(size, spacing, direction)
    center = rng.uniform(-3, 3, 3)
    label = paintSpheres(grid, [(center, 7.0, 1), (center, 3.5, 2)])
    labelArray = sitk.GetArrayFromImage(label)
    image = sitk.GetImageFromArray((labelArray * 100.0 + rng.normal(0, 10, labelArray.shape) + 50).astype(np.float32))
    image.CopyInformation(grid)
    return image, sitk.Cast(label, sitk.sitkUInt8)


def onGrid(image: sitk.Image, grid: sitk.Image) -> sitk.Image:
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


@pytest.fixture()
def msd_folder(tmp_path):
    """Decathlon folder, 3 cases, each a 4D (two-channel) NIfTI: channel 2 is the negated image."""
    root = tmp_path / "msd"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    entries = []
    for index in range(3):
        image, label = sphereCase(index)
        channels = [image, sitk.Cast(-image + 300.0, sitk.sitkFloat32)]
        four = sitk.JoinSeries(channels)  # 4D: I, J, K, channel
        origin, spacing = image.GetOrigin(), image.GetSpacing()
        direction = np.eye(4)
        direction[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3)
        four.SetOrigin([*origin, 0.0])
        four.SetSpacing([*spacing, 1.0])
        four.SetDirection(direction.ravel().tolist())
        name = f"case_{index:03d}.nii.gz"
        sitk.WriteImage(four, str(root / "imagesTr" / name))
        sitk.WriteImage(label, str(root / "labelsTr" / name))
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(json.dumps({"name": "spheres", "modality": {"0": "A", "1": "B"}, "training": entries}))
    return root


@pytest.fixture()
def csv_cases(tmp_path):
    """CSV of 3 cases: input A on an axis-aligned grid, input B on a 15°-tilted coarser grid
    (resampled onto A in physical space), an extra ROI series, and labels on A's grid."""
    root = tmp_path / "csvdata"
    root.mkdir()
    rows = ["case,A,B,label,roi_extra"]
    tilted = rotationMatrix([0, 0, 1], 15.0)
    for index in range(3):
        image, label = sphereCase(index)
        other = onGrid(image, makeGrid((20, 20, 14), (1.3, 1.3, 1.8), tilted))
        extra = makeGrid((22, 22, 10), (1.0, 1.0, 2.0), np.eye(3))
        for name, volume in (("a", image), ("b", other), ("label", label), ("roi", extra)):
            sitk.WriteImage(volume, str(root / f"c{index}_{name}.nrrd"))
        rows.append(f"p{index},c{index}_a.nrrd,c{index}_b.nrrd,c{index}_label.nrrd,c{index}_roi.nrrd")
    (root / "cases.csv").write_text("\n".join(rows) + "\n")
    return root / "cases.csv"


def baseConfig(data: dict, dims: int = 3, **overrides) -> dict:
    config = {
        "name": "Tiny spheres",
        "description": "test model",
        "spatial_dims": dims,
        "inputs": [{"name": "A"}, {"name": "B"}],
        "labels": LABELS,
        "output": "softmax",
        "normalization": {"type": "zscore", "nonzero": False},
        "patch_size": [16, 16, 8] if dims == 3 else [16, 16],
        "data": data,
        "network": {"type": "UNet", "channels": [8, 16], "strides": [2], "num_res_units": 0},
        "sampling": {"mode": "posneg", "samples_per_case": 2},
        "augmentation": {"flip_axes": [0, 1], "flip_prob": 0.5},
        "loss": {"type": "dice_ce"},
        "optimizer": {"type": "adam", "lr": 0.01},
        "epochs": 4,
        "batch_size": 2,
        "seed": 7,
    }
    config.update(overrides)
    return config


def writeConfig(tmp_path, config: dict, name: str = "config.yaml") -> str:
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(config) if name.endswith(".yaml") else json.dumps(config))
    return str(path)


def quiet(line: str) -> None:
    pass


def test_msd_3d_train_export_segment_matches_validation(tmp_path, msd_folder):
    """Train on a 4D two-channel Decathlon folder, export, segment: the exported model segments the
    validation case exactly as training's validation did (same preprocessing, same Dice)."""
    config = trainconfig.readConfig(
        writeConfig(tmp_path, baseConfig({"msd": str(msd_folder), "validation_cases": ["case_002"]}, epochs=20))
    )
    lines: list[str] = []
    result = training.train(config, tmp_path / "run", log=lines.append)
    epochLines = [line for line in lines if line.startswith("epoch ")]
    assert len(epochLines) == 20 and all(" left" in line for line in epochLines[:-1]) and " left" not in epochLines[-1], epochLines
    assert result.trainCases == ["case_000", "case_001"] and result.validationCases == ["case_002"]
    for name in ("config.json", "checkpoint_best.pt", "checkpoint_last.pt", "metrics.csv", "curves.png", "validation.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0, name
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 21
    assert "dice_outer" in rows[0] and "specificity_inner" in rows[0]
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]

    model = tmp_path / "spheres.pt"
    card = exportCheckpoint(result.bestCheckpoint, model)
    assert card["normalization"] == {"type": "zscore", "nonzero": False}
    assert card["patch_size"] == [16, 16, 8] and card["spatial_dims"] == 3
    assert [i["name"] for i in card["inputs"]] == ["A", "B"]
    assert card["validation"]["epoch"] == result.bestEpoch

    image, label = sphereCase(2)
    images = [image, sitk.Cast(-image + 300.0, sitk.sitkFloat32)]
    segmentation = pipeline.segmentImages(images, loadModel(model, "cpu"), names=["A", "B"])
    referenceMasks, _ = statistics.referenceMasksFromParts([(label, None)], segmentation.labelmap, card["labels"], "label")
    report = statistics.computeStatistics(segmentation.labelmap, card, {}, referenceMasks)
    for segment in report["segments"]:
        recorded = card["validation"]["per_label"][segment["name"]]["dice"]
        assert segment["dice"] == pytest.approx(recorded, abs=1e-6)
    assert card["validation"]["mean_dice"] > 0.5
    # The per-case validation table holds the best checkpoint's figures, as the card records them.
    table = list(csv.DictReader(io.StringIO((tmp_path / "run" / "validation_cases.csv").read_text())))
    assert [row["case"] for row in table] == ["case_002"] and set(table[0]) >= {
        "dice_outer",
        "iou_inner",
        "precision_outer",
        "recall_inner",
    }
    for name, figures in card["validation"]["per_label"].items():
        assert float(table[0][f"dice_{name}"]) == pytest.approx(figures["dice"], abs=1e-4)


def test_csv_2d_tilted_inputs_train_export_cli_segment(tmp_path, csv_cases):
    """2D training from a CSV whose second input is on a tilted grid, then export and segment via the CLI."""
    from MedSegUNetLib.cli import main

    config = baseConfig(
        {"csv": os.path.relpath(csv_cases, tmp_path), "validation_split": 0.34},
        dims=2,
        spacing=[1.5, 1.5, None],
        epochs=3,
        augmentation={
            "flip_axes": [0],
            "rotate_deg": 10,
            "scale": 0.1,
            "affine_prob": 0.5,
            "intensity_shift": 0.1,
            "intensity_prob": 0.5,
            "elastic_prob": 0.3,
        },
        sampling={"mode": "max_background", "max_background": 0.8, "samples_per_case": 1},
        loss={"type": "focal"},
    )
    configPath = writeConfig(tmp_path, config, "config.json")
    assert main(["train", "--config", configPath, "--output", str(tmp_path / "run")]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "checkpoint_best.pt"), "--output", str(tmp_path / "m.pt")]) == 0
    card = readCard(tmp_path / "m.pt")
    assert card["spatial_dims"] == 2 and card["spacing"] == [1.5, 1.5, None]
    checkpoint = training.loadCheckpoint(tmp_path / "run" / "checkpoint_best.pt")
    assert len(checkpoint["validation_cases"]) == 1 and len(checkpoint["train_cases"]) == 2

    case = checkpoint["validation_cases"][0][1]
    folder = csv_cases.parent
    output = tmp_path / "seg.nrrd"
    status = main(
        [
            "segment",
            str(folder / f"c{case}_a.nrrd"),
            str(folder / f"c{case}_b.nrrd"),
            "--model",
            str(tmp_path / "m.pt"),
            "--roi-from",
            str(folder / f"c{case}_roi.nrrd"),
            "--device",
            "cpu",
            "--output",
            str(output),
        ]
    )
    assert status == 0
    labelmap = sitk.ReadImage(str(output))
    reference = sitk.ReadImage(str(folder / f"c{case}_a.nrrd"))
    assert labelmap.GetSize() == reference.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(labelmap))) <= {0, 1, 2}


def test_prepared_case_uses_inference_roi_and_grid(csv_cases):
    """The training grid is the inference model grid: ROI from all inputs and the extra series."""
    from MedSegUNetLib.engine import geometry, preprocessing
    from MedSegUNetLib.engine.volumes import readVolume

    config = trainconfig.validateConfig(baseConfig({"csv": str(csv_cases)}, spacing=[2.0, 2.0, None]))
    case = traindata.readCases(config)[0]
    prepared = traindata.prepareCase(case, config)
    images = [readVolume(p) for p, _ in case.inputs]
    roi = pipeline.resolveROI(images, ["A", "B"], [readVolume(case.roi[0])], ["roi"])
    grid = preprocessing.modelGrid(geometry.cropToROI(preprocessing.emptyLike(images[0]), roi), [2.0, 2.0, None], None)
    assert prepared["image"].shape == (2, *grid.GetSize())
    assert roi.size[2] == 10  # the extra series limits K to its 10 slices
    np.testing.assert_allclose(prepared["image"], preprocessing.prepareInputs(images, grid, config["normalization"]))
    label = preprocessing.imageToIJK(preprocessing.resampleOnto(readVolume(case.label), grid, sitk.sitkNearestNeighbor, sitk.sitkUInt8))
    np.testing.assert_array_equal(prepared["label"][0], label)


def test_label_remap_and_regions():
    """BraTS-style 4→3 remapping; sigmoid region channels (whole tumour, core, enhancing)."""
    config = {
        "output": "sigmoid",
        "label_remap": {"4": 3},
        "labels": [
            {"value": 1, "name": "WT", "color": [0, 1, 0], "region": [1, 2, 3]},
            {"value": 2, "name": "TC", "color": [1, 1, 0], "region": [1, 3]},
            {"value": 3, "name": "ET", "color": [1, 0, 0], "region": [3]},
        ],
    }
    raw = np.array([0, 1, 2, 4], dtype=np.uint8)
    remapped = traindata.remapLabels(raw, config)
    np.testing.assert_array_equal(remapped, [0, 1, 2, 3])
    regions = traindata.regionTargets(remapped[None], config)
    np.testing.assert_array_equal(regions, [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]])
    softmax = {"output": "softmax", "label_remap": {"4": 3}, "labels": [{"value": 3}, {"value": 1}]}
    np.testing.assert_array_equal(traindata.remapLabels(raw, softmax), [0, 2, 0, 1])


def test_sigmoid_regions_dice_bce_trains(tmp_path, msd_folder):
    config = baseConfig(
        {"msd": str(msd_folder), "validation_cases": ["case_001"]},
        output="sigmoid",
        labels=[
            {"value": 1, "name": "whole", "color": [0, 1, 0], "region": [1, 2]},
            {"value": 2, "name": "core", "color": [1, 0, 0], "region": [2]},
        ],
        loss={"type": "dice_bce"},
        epochs=2,
    )
    result = training.train(trainconfig.validateConfig(config), tmp_path / "run", log=quiet)
    card = exportCheckpoint(result.bestCheckpoint, tmp_path / "m.pt")
    assert card["output"] == "sigmoid" and all("region" not in label for label in card["labels"])
    assert set(card["validation"]["per_label"]) == {"whole", "core"}


def test_resume_equals_uninterrupted(tmp_path, msd_folder):
    """4 epochs in one go == 2 epochs, then resumed for 2 more: identical weights and losses."""
    import torch

    data = {"msd": str(msd_folder), "validation_cases": ["case_002"]}
    augmentation = {
        "flip_axes": [0, 1, 2],
        "rotate_deg": 10,
        "scale": 0.1,
        "affine_prob": 0.5,
        "intensity_shift": 0.1,
        "intensity_prob": 0.5,
    }
    full = training.train(trainconfig.validateConfig(baseConfig(data, epochs=4, augmentation=augmentation)), tmp_path / "full", log=quiet)
    half = training.train(trainconfig.validateConfig(baseConfig(data, epochs=2, augmentation=augmentation)), tmp_path / "half", log=quiet)
    resumed = training.train(
        trainconfig.validateConfig(baseConfig(data, epochs=4, augmentation=augmentation)),
        tmp_path / "resumed",
        resume=half.lastCheckpoint,
        log=quiet,
    )
    a = training.loadCheckpoint(full.lastCheckpoint)
    b = training.loadCheckpoint(resumed.lastCheckpoint)
    assert a["epoch"] == b["epoch"] == 4
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]
    assert [h["train_loss"] for h in half.history] == [h["train_loss"] for h in full.history[:2]]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"network": {"type": "VNet"}}, "field 'network/type'"),
        ({"patch_size": [16, 16]}, "patch_size needs 3 values"),
        ({"loss": {"type": "dice_bce"}}, "dice_bce needs output: sigmoid"),
        ({"data": {}}, "exactly one of 'msd'"),
        ({"epochs": 0}, "field 'epochs'"),
        ({"learning_rate": 0.1}, "'learning_rate' was unexpected"),
        ({"patch_size": [17, 16, 8]}, "not a multiple of 2"),
        ({"network": {"channels": [8, 16, 32], "strides": [2]}}, "one value fewer than channels"),
        ({"labels": [{"value": 1, "name": "a", "color": [1, 0, 0], "region": [1]}]}, "need output: sigmoid"),
    ],
)
def test_config_errors_are_one_line(change, message):
    config = baseConfig({"csv": "cases.csv"})
    config.update(change)
    with pytest.raises(MedSegUNetError) as error:
        trainconfig.validateConfig(config)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_cli_config_errors(tmp_path, capsys):
    from MedSegUNetLib.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main(["train", "--config", str(bad), "--output", str(tmp_path / "out")]) == 2
    assert main(["train", "--config", str(tmp_path / "missing.yaml"), "--output", str(tmp_path / "out")]) == 2
    missingData = writeConfig(tmp_path, baseConfig({"csv": "nowhere.csv"}))
    assert main(["train", "--config", missingData, "--output", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert "not valid YAML" in lines[0] and "does not exist" in lines[1] and "nowhere.csv" in lines[2]
    assert not (tmp_path / "out" / "checkpoint_last.pt").exists()


def test_dice_bce_is_per_channel_for_overlapping_regions():
    """Sigmoid regions overlap (WT ⊃ TC ⊃ ET): the loss must be Dice + per-channel BCE, not softmax CE."""
    import torch
    from monai.losses import DiceLoss

    config = trainconfig.validateConfig(
        baseConfig(
            {"csv": "x.csv"},
            output="sigmoid",
            loss={"type": "dice_bce"},
            labels=[{**LABELS[0], "region": [1, 2]}, {**LABELS[1], "region": [2]}],
        )
    )
    logits = torch.randn(2, 2, 8, 8, 4, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(2, 2, 8, 8, 4)
    target[:, 0, 2:6, 2:6] = 1
    target[:, 1, 3:5, 3:5] = 1
    expected = DiceLoss(sigmoid=True)(logits, target) + torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert float(training.buildLoss(config)(logits, target)) == pytest.approx(float(expected), rel=1e-6)


def test_transforms_pickle_for_spawned_workers():
    """DataLoader workers started with 'spawn' (macOS, Windows) unpickle the training transforms."""
    import pickle

    config = trainconfig.validateConfig(
        baseConfig(
            {"csv": "x.csv"},
            output="sigmoid",
            loss={"type": "dice_bce"},
            sampling={"mode": "max_background", "max_background": 0.5, "samples_per_case": 3},
            labels=[{**LABELS[0], "region": [1, 2]}, {**LABELS[1], "region": [2]}],
        )
    )
    transforms = pickle.loads(pickle.dumps(traindata.buildTransforms(config)))
    label = np.zeros((1, 32, 32, 16), dtype=np.uint8)
    label[0, 4:20, 4:20, 2:12] = 1
    label[0, 8:12, 8:12, 4:8] = 2
    transforms.set_random_state(seed=3)
    samples = transforms({"image": np.random.default_rng(0).normal(size=(2, 32, 32, 16)).astype(np.float32), "label": label})
    assert len(samples) == 3
    for sample in samples:
        assert tuple(sample["image"].shape) == (2, 16, 16, 8) and tuple(sample["label"].shape) == (2, 16, 16, 8)
        assert float((sample["label"][0] == 0).float().mean()) <= 0.5  # at most half background
        assert bool((sample["label"][1] <= sample["label"][0]).all())  # core inside whole


def test_interrupted_training_says_what_was_kept(tmp_path, msd_folder):
    """SIGINT mid-run: one line naming the last complete epoch's checkpoint; no staging folder left."""
    import signal
    import subprocess
    import time

    from conftest import medsegunetCommand

    config = writeConfig(tmp_path, baseConfig({"msd": str(msd_folder), "validation_cases": ["case_002"]}, epochs=500))
    out = tmp_path / "run"
    process = subprocess.Popen(
        [*medsegunetCommand(), "train", "--config", config, "--output", str(out), "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (out / "checkpoint_last.pt").exists():
        time.sleep(0.05)
    # The moment is the first kept checkpoint (observed), not a clock's.
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    epoch = training.loadCheckpoint(out / "checkpoint_last.pt")["epoch"]
    assert (
        lines[0]
        == f"medsegunet: interrupted; checkpoint_last.pt (epoch {epoch}) kept in {out}; resume with --resume {out / 'checkpoint_last.pt'}."
    )
    assert not [name for name in os.listdir(out) if name.startswith(".medsegunet-")]
    # The checkpoint and metrics of one epoch appear together: metrics.csv has exactly that many rows.
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + epoch


def test_resume_with_more_epochs_stretches_the_schedule(tmp_path, msd_folder):
    data = {"msd": str(msd_folder), "validation_cases": ["case_002"]}
    optimizer = {"type": "adam", "lr": 0.01, "scheduler": "cosine"}
    lines: list[str] = []
    short = training.train(trainconfig.validateConfig(baseConfig(data, epochs=2, optimizer=optimizer)), tmp_path / "short", log=quiet)
    longer = training.train(
        trainconfig.validateConfig(baseConfig(data, epochs=6, optimizer=optimizer)),
        tmp_path / "longer",
        resume=short.lastCheckpoint,
        log=lines.append,
    )
    assert any("stretched from 2 to 6 epochs" in line for line in lines)
    rates = [row["lr"] for row in longer.history]
    assert len(rates) == 6 and all(b < a for a, b in zip(rates, rates[1:])), rates
    with pytest.raises(MedSegUNetError, match="already ran 6 epochs but the config asks for 3"):
        training.train(
            trainconfig.validateConfig(baseConfig(data, epochs=3, optimizer=optimizer)),
            tmp_path / "fewer",
            resume=longer.lastCheckpoint,
            log=quiet,
        )


@pytest.mark.parametrize(
    "postprocessing, schema",
    [
        (None, "medsegunet.model/1"),
        ({"largest_component": [2, 3]}, "medsegunet.model/2"),
        ({"min_component_mm3": 500.0, "fill_holes": True}, "medsegunet.model/2"),
    ],
    ids=["none", "largest-of-two-labels", "small-pieces"],
)
def test_a_recipe_postprocessing_goes_into_the_card(postprocessing, schema):
    """The ACDC recipe's largest-component step reaches the exported card (a model/2 field); a
    misspelt key is refused when the config is read."""
    from MedSegUNetLib.engine.modelcard import validateCard
    from MedSegUNetLib.models.trainconfig import cardFromConfig, validateConfig

    config = baseConfig({"csv": "cases.csv"}, dims=2)
    if postprocessing:
        config["postprocessing"] = postprocessing
    card = validateCard(cardFromConfig(validateConfig(config, "config", "/tmp")))
    assert card["schema"] == schema and card.get("postprocessing") == postprocessing
    with pytest.raises(MedSegUNetError, match="postprocessing"):
        validateConfig({**config, "postprocessing": {"largest_componnet": True}}, "config", "/tmp")


def test_init_starts_a_new_run_from_another_runs_weights(tmp_path, msd_folder, capsys):
    """``train --init``: the weights of another run (not its optimiser, schedule or history); with a
    vanishing rate and no running statistics the weights stay those; provenance reaches the card."""
    import torch

    from MedSegUNetLib.cli import main
    from MedSegUNetLib.engine.paths import sha256

    data = {"msd": str(msd_folder), "validation_cases": ["case_002"]}
    network = {"type": "UNet", "channels": [8, 16], "strides": [2], "num_res_units": 0, "norm": "instance"}
    first = training.train(trainconfig.validateConfig(baseConfig(data, epochs=2, network=network)), tmp_path / "first", log=quiet)
    frozen = writeConfig(tmp_path, baseConfig(data, epochs=1, network=network, optimizer={"type": "adam", "lr": 1e-30}))
    assert (
        main(["train", "--config", frozen, "--init", str(first.bestCheckpoint), "--output", str(tmp_path / "second"), "--device", "cpu"])
        == 0
    )
    assert f"Starting from the weights of '{first.bestCheckpoint}' (epoch " in capsys.readouterr().out
    before, after = training.loadCheckpoint(first.bestCheckpoint), training.loadCheckpoint(tmp_path / "second" / "checkpoint_last.pt")
    for key, tensor in before["model"].items():
        assert torch.allclose(tensor, after["model"][key], rtol=0, atol=1e-12), key
    assert len(after["history"]) == 1 and after["epoch"] == 1
    assert after["initialised_from"]["sha256"] == sha256(first.bestCheckpoint)
    assert after["initialised_from"]["epoch"] == before["epoch"]
    card = exportCheckpoint(tmp_path / "second" / "checkpoint_best.pt", tmp_path / "model.pt")
    assert card["training"]["initialised_from"]["file"] == "checkpoint_best.pt"


def test_init_is_refused_with_resume_or_another_network(tmp_path, msd_folder, capsys):
    from MedSegUNetLib.cli import main

    data = {"msd": str(msd_folder), "validation_cases": ["case_002"]}
    first = training.train(trainconfig.validateConfig(baseConfig(data, epochs=1)), tmp_path / "first", log=quiet)
    with pytest.raises(MedSegUNetError, match="give one of them"):
        training.train(
            trainconfig.validateConfig(baseConfig(data, epochs=2)),
            tmp_path / "both",
            resume=first.lastCheckpoint,
            init=first.bestCheckpoint,
            log=quiet,
        )
    wider = writeConfig(
        tmp_path, baseConfig(data, epochs=1, network={"type": "UNet", "channels": [16, 32], "strides": [2], "num_res_units": 0})
    )
    assert main(["train", "-q", "--config", wider, "--init", str(first.bestCheckpoint), "--output", str(tmp_path / "wider")]) == 2
    assert not (tmp_path / "wider" / "checkpoint_last.pt").exists()
    # A damaged --init stops the run before anything is made.
    cut = tmp_path / "cut.pt"
    with open(first.bestCheckpoint, "rb") as stream:
        cut.write_bytes(stream.read(4096))
    assert main(["train", "-q", "--config", wider, "--init", str(cut), "--output", str(tmp_path / "from-cut")]) == 2
    assert not (tmp_path / "from-cut").exists()
    # A new run into the folder it starts from would write over its --init checkpoint: refused untouched.
    same = writeConfig(tmp_path, baseConfig(data, epochs=1), "same.yaml")
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        before = (tmp_path / "first" / name).read_bytes()
        assert main(["train", "-q", "--config", same, "--init", str(tmp_path / "first" / name), "--output", str(tmp_path / "first")]) == 2
        assert (tmp_path / "first" / name).read_bytes() == before
    assert (
        f"--output (checkpoint_best.pt) '{tmp_path / 'first' / 'checkpoint_best.pt'}' is the input given as --init"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize("width, kept", [(1, 24 * 24), (4, 18 * 18)], ids=["1-voxel", "4-voxels"])
def test_skull_strip_erodes_the_head_and_keeps_the_labels(width, kept):
    """A 26 × 26 head loses ``width`` rings (a square stays a square under scipy's cross-shaped
    erosion); a label at its edge is kept with 2 voxels around it."""
    from MedSegUNetLib.models.traindata import headStrippedMask

    image = np.zeros((1, 32, 32), dtype=np.float32)
    image[0, 3:29, 3:29] = 0.5
    mask = headStrippedMask(image, np.zeros((1, 32, 32), dtype=np.uint8), width)
    assert int(mask.sum()) == kept
    label = np.zeros((1, 32, 32), dtype=np.uint8)
    label[0, 3:5, 10:12] = 1
    withLabel = headStrippedMask(image, label, width)
    assert withLabel[3:5, 10:12].all() and withLabel[1, 10] and not withLabel[0, 10]


def test_skull_strip_augmentation_runs_in_the_transforms(tmp_path):
    """skull_strip_prob 1: every slice's outer head is zeroed, the centre and the labels untouched;
    a reversed mm range is refused."""
    config = trainconfig.validateConfig(
        baseConfig(
            {"csv": "x.csv"},
            dims=2,
            patch_size=[32, 32],
            sampling={"mode": "center", "samples_per_case": 1},
            spacing=[2.0, 2.0, None],
            augmentation={"skull_strip_prob": 1.0, "skull_strip_mm": [8, 8]},
        )
    )
    image = np.zeros((2, 32, 32), dtype=np.float32)
    image[:, 2:30, 2:30] = 1.0
    label = np.zeros((1, 32, 32), dtype=np.uint8)
    label[0, 14:18, 14:18] = 1
    transforms = traindata.buildTransforms(config)
    transforms.set_random_state(seed=0)
    sample = transforms({"image": image, "label": label})
    out = np.asarray(sample["image"])
    assert out[:, 2, 15].tolist() == [0.0, 0.0] and out[:, 15, 15].tolist() == [1.0, 1.0]
    assert int((out[0] > 0).sum()) == 20 * 20  # 28 × 28 eroded by 8 mm: 4 voxels of 2 mm a side
    assert int(np.asarray(sample["label"]).sum()) == 16
    with pytest.raises(MedSegUNetError, match="skull_strip_mm"):
        trainconfig.validateConfig(baseConfig({"csv": "x.csv"}, augmentation={"skull_strip_mm": [16, 8]}))
