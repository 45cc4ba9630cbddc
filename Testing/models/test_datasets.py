"""``medsegunet data prepare lgg|acdc`` on small synthetic copies of the two source layouts:
known counts, patient-level splits, dropped items with their reasons, what ``train`` then reads,
and the refusals (a leaking split, an output that exists, a folder of the wrong layout)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedSegUNetLib import cli
from MedSegUNetLib.models import datasets, evaluation, trainconfig, traindata


def writeLGGFolder(root: Path, name: str, lesionSlices: tuple[int, ...], slices: int = 3, skipMask: int | None = None) -> None:
    """A kaggle_3m folder: ``name_N.tif`` 256 × 256 × 3 uint8 (channel n holds 10 × (n + 1) plus a
    bright square on lesion slices in FLAIR only) and ``name_N_mask.tif`` (0/255)."""
    folder = root / name
    folder.mkdir(parents=True)
    for number in range(1, slices + 1):
        image = np.zeros((256, 256, 3), np.uint8)
        image[..., 0], image[..., 1], image[..., 2] = 10, 20 + number, 30
        mask = np.zeros((256, 256), np.uint8)
        if number in lesionSlices:
            image[100:120, 60:90, 1] = 200
            mask[100:120, 60:90] = 255
        sitk.WriteImage(sitk.GetImageFromArray(image, isVector=True), str(folder / f"{name}_{number}.tif"))
        if number != skipMask:
            sitk.WriteImage(sitk.GetImageFromArray(mask), str(folder / f"{name}_{number}_mask.tif"))


@pytest.fixture()
def a_kaggle_folder(tmp_path) -> Path:
    root = tmp_path / "kaggle_3m"
    writeLGGFolder(root, "TCGA_FG_6692_20020606", (2,))
    writeLGGFolder(root, "TCGA_CS_4941_19960909", (1, 2))
    writeLGGFolder(root, "TCGA_CS_4941_19970101", (3,))  # the same patient, another date
    for index in range(5):
        writeLGGFolder(root, f"TCGA_DU_{5851 + index}_19950428", (2,))
    writeLGGFolder(root, "TCGA_HT_7000_19990101", (2,), skipMask=2)
    (root / "data.csv").write_text("Patient\n")
    return root


def readJSON(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_lgg_prepare_gives_flair_volumes_counts_and_a_patient_split(tmp_path, a_kaggle_folder, capsys):
    out = tmp_path / "prepared"
    assert cli.main(["data", "prepare", "lgg", str(a_kaggle_folder), "--output", str(out), "--validation", "2", "--test", "3"]) == 0
    printed = capsys.readouterr().out
    dataset = readJSON(out / "dataset.json")
    assert dataset["counts"] == {"patients": 7, "slices": 24, "slices_with_abnormality": 9}
    assert dataset["dropped"] == [{"item": "TCGA_HT_7000_19990101", "why": "slice 2 has no mask"}]
    assert "Dropped TCGA_HT_7000_19990101: slice 2 has no mask." in printed
    assert "differs from the published set in patients, slices, slices_with_abnormality, digest" in printed
    split = dataset["split"]
    assert "TCGA_FG_6692" in split["test"] and (len(split["train"]), len(split["validation"]), len(split["test"])) == (2, 2, 3)
    assert sorted(split["train"] + split["validation"] + split["test"]) == sorted(
        {"TCGA_FG_6692", "TCGA_CS_4941", *(f"TCGA_DU_{5851 + i}" for i in range(5))}
    )
    # Both dates of TCGA_CS_4941 sit in one part.
    parts = {e["image"].split("/")[-1][:21]: "test" for e in dataset["test"]} | {
        e["image"].split("/")[-1][:21]: "tr" for e in dataset["training"]
    }
    assert parts["TCGA_CS_4941_19960909"] == parts["TCGA_CS_4941_19970101"]
    assert dataset["numTraining"] + dataset["numTest"] == 8
    image = sitk.ReadImage(str(out / "imagesTs" / "TCGA_FG_6692_20020606.nii.gz"))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTs" / "TCGA_FG_6692_20020606.nii.gz")))
    array = sitk.GetArrayFromImage(image)
    assert array.shape == (3, 256, 256) and image.GetSpacing() == pytest.approx((0.83, 0.83, 5.0))
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert [int(array[k, 0, 0]) for k in range(3)] == [21, 22, 23]  # the FLAIR channel, slices in order
    assert label.sum() == 600 and label[1, 100:120, 60:90].all() and set(np.unique(label)) == {0, 1}
    for name, digest in dataset["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_train_reads_the_prepared_split_and_never_the_test_patients(tmp_path, a_kaggle_folder):
    out = tmp_path / "prepared"
    datasets.prepare("lgg", a_kaggle_folder, out, validation=2, test=3)
    dataset = readJSON(out / "dataset.json")
    config = trainconfig.validateConfig(yamlRecipe("lgg-flair.yaml", out), "recipe")
    training, validation = traindata.splitCases(traindata.readCases(config), config)
    assert sorted(c.id for c in validation) == sorted(dataset["validation"])
    testIds = {Path(e["image"]).name.split(".")[0] for e in dataset["test"]}
    assert testIds.isdisjoint(c.id for c in training + validation) and len(training) + len(validation) == dataset["numTraining"]


def yamlRecipe(name: str, data: Path) -> dict:
    import yaml

    from conftest import REPO_ROOT

    recipe = yaml.safe_load((REPO_ROOT / "Resources" / "Training" / name).read_text(encoding="utf-8"))
    recipe["data"]["msd"] = str(data)
    return recipe


def writeACDC(root: Path, lists: dict[str, list[str]], sliced: set[str]) -> Path:
    """SSL4MIS's layout: volumes (K, J, I) or ``_slice_N`` files; the LV cavity (3) a known box."""
    import h5py

    (root / "data").mkdir(parents=True)
    for name, frames in lists.items():
        (root / f"{name}.list").write_text("".join(f"{f}\n" for f in frames))
        for frame in frames:
            image = np.tile(np.linspace(0, 1, 40, dtype=np.float32), (4, 48, 1))
            label = np.zeros((4, 48, 40), np.uint8)
            label[:, 20:30, 10:20], label[:, 5:8, 5:8], label[:, 40:44, 30:35] = 3, 2, 1
            if frame[:10] in sliced:
                for k in range(4):
                    with h5py.File(root / "data" / f"{frame}_slice_{k + 1}.h5", "w") as stream:
                        stream["image"], stream["label"] = image[k], label[k]
            else:
                with h5py.File(root / "data" / f"{frame}.h5", "w") as stream:
                    stream["image"], stream["label"] = image, label
    return root


ACDC_LISTS = {
    "train": ["patient003_frame01", "patient003_frame02", "patient004_frame01", "patient004_frame02"],
    "val": ["patient002_frame01", "patient002_frame02"],
    "test": ["patient001_frame01", "patient001_frame02"],
}


def test_acdc_prepare_keeps_the_lists_split_and_assembles_slices(tmp_path, capsys):
    pytest.importorskip("h5py")
    source = writeACDC(tmp_path / "ACDC", ACDC_LISTS, sliced={"patient003", "patient004"})
    out = tmp_path / "prepared"
    assert cli.main(["data", "prepare", "acdc", str(source), "--output", str(out)]) == 0
    dataset = readJSON(out / "dataset.json")
    assert dataset["split"] == {"train": ["patient003", "patient004"], "validation": ["patient002"], "test": ["patient001"]}
    assert dataset["counts"] == {"patients": 4, "frames": 8} and dataset["dropped"] == []
    assert sorted(dataset["validation"]) == ["patient002_frame01", "patient002_frame02"]
    assert [Path(e["image"]).name for e in dataset["test"]] == ["patient001_frame01.nii.gz", "patient001_frame02.nii.gz"]
    assembled = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "patient003_frame01.nii.gz")))
    assert assembled.shape == (4, 48, 40) and int((assembled == 3).sum()) == 400 and int((assembled == 1).sum()) == 80
    image = sitk.ReadImage(str(out / "imagesTr" / "patient003_frame01.nii.gz"))
    assert image.GetSpacing() == pytest.approx((1.5, 1.5, 10.0)) and image.GetPixelID() == sitk.sitkFloat32


@pytest.mark.parametrize(
    "lists, expected",
    [
        ({**ACDC_LISTS, "test": ["patient001_frame01", "patient003_frame02"]}, "patient003 in both train and test"),
        ({**ACDC_LISTS, "val": ["patient002_frame01", "patient004_frame02"]}, "patient004 in both train and validation"),
    ],
    ids=["train-test", "train-val"],
)
def test_a_split_that_leaks_a_patient_is_refused(tmp_path, capsys, lists, expected):
    pytest.importorskip("h5py")
    source = writeACDC(tmp_path / "ACDC", lists, sliced=set())
    assert cli.main(["data", "prepare", "acdc", str(source), "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and expected in error[0] and "one part of the split" in error[0], error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kind, make, expected",
    [
        ("lgg", lambda p: p.mkdir(), "holds no kaggle_3m patient folders"),
        ("acdc", lambda p: p.mkdir(), "is not the ACDC folder"),
        ("lgg", lambda p: p.write_text("x"), "is not a folder"),
    ],
    ids=["empty-lgg", "empty-acdc", "a-file"],
)
def test_a_source_of_the_wrong_layout_is_one_line(tmp_path, capsys, kind, make, expected):
    make(tmp_path / "source")
    assert cli.main(["data", "prepare", kind, str(tmp_path / "source"), "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and expected in error[0], error
    assert not (tmp_path / "out").exists()


def test_an_output_that_exists_is_refused_and_kept(tmp_path, a_kaggle_folder, capsys):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert cli.main(["data", "prepare", "lgg", str(a_kaggle_folder), "--output", str(out)]) == 2
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and len(list(tmp_path.iterdir())) == 2


def test_held_out_figures_come_from_the_engine(tmp_path, a_kaggle_folder, a_threshold_model):
    """A threshold model at 100 of the FLAIR finds exactly the bright squares (200 on 21–23): Dice 1
    on every test volume, and the volumes in mL of the nominal grid."""
    out = tmp_path / "prepared"
    datasets.prepare("lgg", a_kaggle_folder, out, validation=2, test=3)
    model = a_threshold_model((100.0,), [(1, "FLAIR abnormality", (1.0, 0.8, 0.2))])
    rows = evaluation.evaluateCases(model, evaluation.testEntries(out))
    assert len(rows) == readJSON(out / "dataset.json")["numTest"] >= 3 and all(
        row["dice_FLAIR abnormality"] == pytest.approx(1.0) for row in rows
    ), rows
    fg = next(row for row in rows if row["case"] == "TCGA_FG_6692_20020606")
    assert fg["volume_ml_FLAIR abnormality"] == pytest.approx(600 * 0.83 * 0.83 * 5.0 / 1000, abs=1e-3)
    summary = evaluation.summarize(rows, ["dice_FLAIR abnormality"])
    assert summary["dice_FLAIR abnormality"]["mean"] == pytest.approx(1.0) and summary["dice_FLAIR abnormality"]["n"] == len(rows)


def test_train_with_data_option_trains_on_a_prepared_folder(tmp_path, a_kaggle_folder, capsys):
    """``train --config RECIPE --data PREPARED``: the recipe's own data path is replaced; one epoch
    of a small network, its validation table naming the prepared validation cases."""
    import yaml

    out = tmp_path / "prepared"
    datasets.prepare("lgg", a_kaggle_folder, out, validation=2, test=3)
    recipe = yamlRecipe("lgg-flair.yaml", tmp_path / "elsewhere")
    recipe.update(epochs=1, batch_size=4, network={"type": "UNet", "channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch"})
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    assert cli.main(["train", "--config", str(config), "--data", str(out), "--output", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1" in printed
    table = (tmp_path / "run" / "validation_cases.csv").read_text().splitlines()
    assert table[0].startswith("case,dice_FLAIR abnormality,iou_FLAIR abnormality,precision_FLAIR abnormality,recall_FLAIR abnormality")
    assert sorted(line.split(",")[0] for line in table[1:]) == sorted(readJSON(out / "dataset.json")["validation"])
    assert cli.main(["train", "--config", str(config), "--data", str(tmp_path / "none.csv"), "--output", str(tmp_path / "run2")]) == 2
    assert "is neither a folder nor a file" in capsys.readouterr().err


@pytest.mark.parametrize("first, second", [("lgg-flair.yaml", "lgg-flair-finetune.yaml"), ("acdc-heart.yaml", "acdc-heart-finetune.yaml")])
def test_a_second_stage_recipe_builds_its_first_stages_network(tmp_path, first, second):
    """``train --init`` takes stage 1's weights into stage 2's network: the two recipes must build
    the same network with the same inputs and labels, or stage 2 stops at its first step."""
    from MedSegUNetLib.models import training

    stages = [trainconfig.validateConfig(yamlRecipe(name, tmp_path), name) for name in (first, second)]
    assert stages[0]["network"] == stages[1]["network"] and stages[0]["inputs"] == stages[1]["inputs"]
    assert stages[0]["labels"] == stages[1]["labels"] and stages[0]["patch_size"] == stages[1]["patch_size"]
    one, two = (training.buildNetwork(config).state_dict() for config in stages)
    assert {key: tuple(value.shape) for key, value in one.items()} == {key: tuple(value.shape) for key, value in two.items()}


# [parameters (what dataset.json holds), input (a folder), expected (the one line)]
@pytest.mark.parametrize(
    "text, expected",
    [
        (None, "is not a Decathlon folder: it has no dataset.json"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "its top level is a list, not an object"),
    ],
    ids=["missing", "not-json", "a-list"],
)
def test_a_prepared_folders_description_is_read_one_way_everywhere(tmp_path, text, expected):
    """Training, its prepared validation list and the test evaluation read dataset.json through one
    reader: each fault is one line, never an internal error."""
    from MedSegUNetLib.engine.errors import MedSegUNetError

    if text is not None:
        (tmp_path / "dataset.json").write_text(text)
    for read in (traindata.readDecathlonDocument, traindata.preparedValidation, evaluation.testEntries):
        with pytest.raises(MedSegUNetError, match=expected):
            read(tmp_path)
