"""``medsegunet export`` / ``info``: scripting, the scripted-vs-eager check, the card from the config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedSegUNetLib.cli import main
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.engine.modelcard import loadModel, readCard
from MedSegUNetLib.models import trainconfig, training
from MedSegUNetLib.models.exporting import exportCheckpoint, exportNetwork
from MedSegUNetLib.models.phantoms import thresholdCard, writeThresholdModel


def tinyConfig(network: dict, dims: int = 3, patch: int = 16, **overrides) -> dict:
    config = {
        "name": "Tiny export test",
        "spatial_dims": dims,
        "inputs": [{"name": "T2"}, {"name": "ADC"}],
        "labels": [{"value": 1, "name": "gland", "color": [0.9, 0.6, 0.4]}, {"value": 3, "name": "lesion", "color": [1, 0, 0]}],
        "spacing": [0.5, 0.5, 3.0],
        "normalization": {"type": "percentile", "lower": 2, "upper": 98},
        "patch_size": [patch] * dims,
        "data": {"csv": "unused.csv"},
        "network": network,
    }
    config.update(overrides)
    return trainconfig.validateConfig(config)


def writeCheckpoint(path, config: dict, network) -> str:
    """A checkpoint in 'medsegunet train''s format, with one validated epoch."""
    row = {
        "epoch": 3,
        "train_loss": 0.5,
        "val_mean_dice": 0.625,
        "dice_gland": 0.75,
        "dice_lesion": 0.5,
        "iou_gland": 0.6,
        "iou_lesion": 0.33,
        "sensitivity_gland": 0.8,
        "sensitivity_lesion": 0.4,
        "specificity_gland": 0.99,
        "specificity_lesion": 0.999,
    }
    torch.save(
        {
            "format": training.CHECKPOINT_FORMAT,
            "epoch": 3,
            "history": [{"epoch": 1, "train_loss": 0.9}, row],
            "best": {"dice": 0.625, "epoch": 3, "stale": 2},
            "config": config,
            "train_cases": ["a", "b"],
            "validation_cases": ["c"],
            "model": network.state_dict(),
            "optimizer": {},
            "scheduler": None,
            "scaler": {},
        },
        path,
    )
    return str(path)


@pytest.mark.parametrize(
    "network, dims, patch",
    [
        ({"type": "UNet", "channels": [4, 8], "strides": [[2, 2, 1]], "num_res_units": 1}, 3, 16),
        ({"type": "AttentionUNet", "channels": [4, 8], "strides": [2]}, 2, 16),
        ({"type": "BasicUNet", "features": [4, 4, 8, 8, 16, 4]}, 2, 32),
        ({"type": "SegResNet", "init_filters": 4}, 2, 16),
    ],
)
def test_export_each_network_type(tmp_path, network, dims, patch):
    config = tinyConfig(network, dims, patch)
    torch.manual_seed(0)
    model = training.buildNetwork(config)
    checkpoint = writeCheckpoint(tmp_path / "best.pt", config, model)
    card = exportCheckpoint(checkpoint, tmp_path / "model.pt")
    assert card["spatial_dims"] == dims and card["patch_size"] == [patch] * dims
    assert card["normalization"] == {"type": "percentile", "lower": 2, "upper": 98}
    assert card["spacing"] == [0.5, 0.5, 3.0]
    assert card["validation"]["mean_dice"] == 0.625 and card["validation"]["per_label"]["lesion"]["dice"] == 0.5
    assert card["training"]["training_cases"] == ["a", "b"] and card["training"]["checkpoint_epoch"] == 3
    loaded = loadModel(tmp_path / "model.pt", "cpu")
    sample = torch.randn(1, 2, *[patch] * dims, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(loaded.network(sample).numpy(), model(sample).numpy(), rtol=1e-5, atol=1e-5)


class ScriptingDependent(torch.nn.Module):
    """Outputs differ between TorchScript and eager mode: export must refuse it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if torch.jit.is_scripting():
            out = out + 0.5
        return out


def test_export_refuses_scripted_eager_mismatch(tmp_path):
    card = thresholdCard([(1, "gland", (1, 0, 0))], spatialDims=3)
    target = tmp_path / "bad.pt"
    with pytest.raises(MedSegUNetError, match=r"scripted network's outputs differ .*max \|difference\| 0\.5"):
        exportNetwork(ScriptingDependent(), card, target, [1, 1, 8, 8, 8])
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_wrong_channel_count(tmp_path):
    card = thresholdCard([(1, "a", (1, 0, 0)), (2, "b", (0, 1, 0))], spatialDims=3)  # softmax: 3 channels needed
    with pytest.raises(MedSegUNetError, match="outputs 2 channels but the card needs 3"):
        exportNetwork(torch.nn.Conv3d(1, 2, 1), card, tmp_path / "m.pt", [1, 1, 4, 4, 4])
    assert not (tmp_path / "m.pt").exists()


def test_export_cli_config_for_another_network(tmp_path, capsys):
    config = tinyConfig({"type": "UNet", "channels": [4, 8], "strides": [2]})
    checkpoint = writeCheckpoint(tmp_path / "best.pt", config, training.buildNetwork(config))
    other = tmp_path / "other.json"
    import json

    raw = {k: v for k, v in config.items() if k in ("name", "spatial_dims", "inputs", "labels", "patch_size", "data")}
    raw["network"] = {"type": "UNet", "channels": [8, 16], "strides": [2]}
    other.write_text(json.dumps(raw))
    status = main(["export", "--checkpoint", checkpoint, "--config", str(other), "--output", str(tmp_path / "m.pt")])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert "holds another network than the config builds" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "m.pt")]) == 2


def test_export_cli_prints_card_and_info(tmp_path, capsys):
    config = tinyConfig({"type": "UNet", "channels": [4, 8], "strides": [2]})
    checkpoint = writeCheckpoint(tmp_path / "best.pt", config, training.buildNetwork(config))
    assert main(["export", "--checkpoint", checkpoint, "--output", str(tmp_path / "m.pt")]) == 0
    out = capsys.readouterr().out
    assert "Tiny export test (3D, softmax)" in out and "Labels: 1 gland, 3 lesion" in out
    assert "Validation: mean Dice 0.6250 on c (epoch 3)" in out
    assert main(["info", str(tmp_path / "m.pt")]) == 0
    info = capsys.readouterr().out
    assert "Inputs: T2, ADC" in info and "Spacing: 0.5 × 0.5 × 3 mm" in info and "Validation: mean Dice 0.6250" in info
    assert main(["info", "--json", str(tmp_path / "m.pt")]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["validation"]["cases"] == ["c"]


def test_info_on_threshold_model_and_bad_file(tmp_path, capsys):
    path = writeThresholdModel(tmp_path / "t.pt", [0.5], thresholdCard([(1, "sphere", (1, 0, 0))]))
    assert main(["info", path]) == 0
    assert "Known-answer threshold model (3D, softmax)" in capsys.readouterr().out
    (tmp_path / "not.pt").write_text("hello")
    assert main(["info", str(tmp_path / "not.pt")]) == 2
    assert "is not a model file (TorchScript .pt or torch.export .pt2)" in capsys.readouterr().err


# The seeds' tasks, trained on their public data sets: recipe in Resources/Training, sheet in docs/models.
SEED_MODELS = {"lgg-flair", "acdc-heart"}


def test_zoo_models_have_valid_cards(repo_root):
    """Every zoo model: ≤ 10 MB, a valid card with its validation, a model sheet and its training
    config; a demonstration model says so, a model of the seeds' tasks names its data's licence."""
    models = sorted((repo_root / "MedSegUNet" / "Resources" / "Models").glob("*/*.pt"))
    assert {path.stem for path in models} >= SEED_MODELS
    for path in models:
        assert path.stat().st_size <= 10 * 1024 * 1024, path
        card = readCard(path)
        assert "mean_dice" in card.get("validation", {}), path
        if path.stem in SEED_MODELS:
            assert "CC BY-NC-SA 4.0" in card["license"] and "research use only" in card["description"], path
            assert (repo_root / "docs" / "models" / f"{path.stem}.md").is_file(), path
            assert (repo_root / "Resources" / "Training" / f"{path.stem}.yaml").is_file(), path
            assert all(label.get("terminology") and label.get("qc") for label in card["labels"]), path
        else:
            assert "DEMONSTRATION" in card["description"], path
            assert (path.parent / "README.md").is_file(), path
            assert (path.parent / "train.yaml").is_file(), path


# [parameters (a shipped zoo model), input (the file each name of its example stands for), expected (the
# example runs as printed, from the folder holding those files)]
ZOO_EXAMPLE_INPUTS = {
    "prostate-zones": {
        "T2": "prostatex/ProstateX-0000/4-t2tsetra",
        "t2_sag": "prostatex/ProstateX-0000/3-t2tsesag",
        "t2_cor": "prostatex/ProstateX-0000/5-t2tsecor",
    },
    "brain-tumor-3d": {
        name: f"brain-tumor/TCGA-FG-6692/brats-space/{stem}_bet.nii.gz"
        for name, stem in (("T1", "t1"), ("T1c", "t1c"), ("T2", "t2"), ("FLAIR", "fla"))
    },
    "brain-tumor-2d": {"FLAIR": "brain-tumor/TCGA-FG-6692/brats-space/fla_bet.nii.gz"},
    "lgg-flair": {"FLAIR": "brain-tumor/TCGA-FG-6692/native/flair.nii.gz"},
    "acdc-heart": {"cine": "acdc:patient011_frame01_slices3-5_image.nii.gz"},
}


@pytest.mark.parametrize("name", list(ZOO_EXAMPLE_INPUTS))
def test_info_says_how_to_run_each_shipped_model_and_its_example_runs(name, shared_data, tmp_path, capsys, a_base_install):
    """``info NAME``: the ROI series, QC ranges, licence, citation, and a ``segment`` line with the
    model's own input names, which runs as printed once files of those names are there, in a fresh
    environment with only ``pip install -e .`` (:func:`conftest.a_base_install`), after a
    ``models pull`` that gives the shipped file offline."""
    import json
    import os
    import shlex
    import subprocess

    import SimpleITK as sitk

    from conftest import REPO_ROOT
    from MedSegUNetLib.engine.volumes import readVolume

    assert main(["info", name, "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert main(["info", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    for key, title in (("license", "Licence"), ("citation", "Cite"), ("version", "Version")):
        assert f"{title}: {card[key]}" in lines
    assert any(line.startswith("Expected volumes (QC flags outside): ") for line in lines) == any("qc" in label for label in card["labels"])
    assert any(line.startswith("ROI: ") for line in lines) == bool((card.get("roi") or {}).get("from_series"))
    (example,) = [line[len("Example: ") :] for line in lines if line.startswith("Example: ")]
    words = shlex.split(example)
    assert words[:4] == ["medsegunet", "segment", "--model", name]
    for stem, source in ZOO_EXAMPLE_INPUTS[name].items():
        path = REPO_ROOT / "Testing" / "data" / "acdc" / source[5:] if source.startswith("acdc:") else shared_data / source
        sitk.WriteImage(readVolume(str(path)), str(tmp_path / f"{stem}.nii.gz"))
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith("MEDSEGUNET_")},
        "PATH": a_base_install["bin"] + os.pathsep + os.environ["PATH"],
        "MEDSEGUNET_CACHE": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        ["bash", "-e", "-c", f"medsegunet models pull {name}\n{example}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.splitlines()[0].endswith(f"MedSegUNet/Resources/Models/{name}/{name}.pt") and not (tmp_path / "cache").exists()
    )  # shipped: nothing downloaded
    import slicerio

    segmentation = slicerio.read_segmentation(str(tmp_path / "segmentation.seg.nrrd"))
    assert [segment["name"] for segment in segmentation["segments"]] == [label["name"] for label in card["labels"]]
    reference = sitk.ReadImage(str(tmp_path / words[4]))
    assert list(segmentation["voxels"].shape[-3:]) == list(
        reference.GetSize()
    )  # slicerio: IJK, after the layer axis of overlapping segments
