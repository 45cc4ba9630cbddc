"""``medsegunet convert`` (TorchScript → ``.pt2``) and ``export --format pt2``: the same answers,
voxel for voxel on the real prostate series, and one-line refusals that leave nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import TINY_UNET_CARD
from MedSegUNetLib import cli
from MedSegUNetLib.engine import exportedmodel, modelcard


def labels(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def a_converted_zoo_model(tmp_path_factory, repo_root) -> str:
    output = tmp_path_factory.mktemp("convert") / "prostate-zones.pt2"
    assert (
        cli.main(["convert", str(repo_root / "MedSegUNet/Resources/Models/prostate-zones/prostate-zones.pt"), "--output", str(output)]) == 0
    )
    return str(output)


def test_convert_prints_the_three_sizes_it_compared(a_converted_zoo_model, repo_root, tmp_path, capsys):
    output = tmp_path / "lgg.pt2"
    assert cli.main(["convert", "lgg-flair", "--output", str(output)]) == 0
    assert capsys.readouterr().out.strip().endswith("does on 128×128, 144×144, 112×112 inputs (max |difference| 0)")
    assert exportedmodel.isExportedArchive(str(output))
    assert modelcard.readCard(output) == modelcard.readCard(repo_root / "MedSegUNet/Resources/Models/lgg-flair/lgg-flair.pt")


def test_the_converted_zoo_model_segments_the_real_series_voxel_for_voxel(
    a_converted_zoo_model, repo_root, prostate_series, tmp_path, capsys
):
    tra, sag, cor = (prostate_series[name] for name in sorted(prostate_series, key=lambda n: ("tra" not in n, "sag" not in n)))
    for model, output in (
        (repo_root / "MedSegUNet/Resources/Models/prostate-zones/prostate-zones.pt", "ts.nii.gz"),
        (a_converted_zoo_model, "pt2.nii.gz"),
    ):
        assert cli.main(["segment", "-q", "--model", str(model), tra, "--roi-from", sag, cor, "--output", str(tmp_path / output)]) == 0, (
            capsys.readouterr().err
        )
    scripted, exported = labels(tmp_path / "ts.nii.gz"), labels(tmp_path / "pt2.nii.gz")
    assert np.bincount(scripted.ravel()).tolist()[1:] == [30148, 24713]
    assert np.array_equal(scripted, exported)


def test_batch_runs_a_pt2_model_as_segment_does(a_converted_zoo_model, repo_root, tmp_path, capsys, shared_data):
    import os

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    os.symlink(shared_data / "prostatex" / "ProstateX-0000", cohort / "ProstateX-0000")
    assert (
        cli.main(
            [
                "batch",
                "-q",
                "--model",
                a_converted_zoo_model,
                "--cases",
                str(cohort),
                "--output",
                str(tmp_path / "out"),
                "--format",
                "nii.gz",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    batch = labels(tmp_path / "out" / "ProstateX-0000" / "ProstateX-0000.nii.gz")
    assert np.bincount(batch.ravel()).tolist()[1:] == [30148, 24713]


def test_info_says_the_format_and_the_torch_that_wrote_it(a_converted_zoo_model, capsys):
    assert cli.main(["info", a_converted_zoo_model]) == 0
    assert f"Format: torch.export (.pt2), written with torch {torch.__version__}" in capsys.readouterr().out
    assert cli.main(["info", "prostate-zones"]) == 0
    assert "Format: TorchScript (convert it to .pt2 with 'medsegunet convert')" in capsys.readouterr().out


def scriptedWithLocalizer(path):
    from monai.networks.nets import UNet

    card = json.loads(json.dumps(TINY_UNET_CARD))
    card.update({"schema": "medsegunet.model/3", "localizer": {"grid": {"shape": [16, 16, 16]}, "normalization": {"type": "minmax"}}})
    network = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=1)
    modelcard.saveModel(network, card, path, localizer=torch.nn.Conv3d(1, 2, 3, padding=1))
    return str(path)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("pt2", "is already a torch.export (.pt2) model: nothing to convert"),
        ("localizer", "has a localiser network stored as TorchScript only: it cannot be converted"),
        ("no record", "holds a network that exists only as TorchScript (no recorded class): it cannot be converted"),
        ("class only", "records its network's class but not its arguments (imported before they were recorded): import it again"),
    ],
)
def test_convert_refusals_leave_nothing(a_converted_zoo_model, a_tiny_unet, tmp_path, capsys, source, expected):
    if source == "pt2":
        model = a_converted_zoo_model
    elif source == "localizer":
        model = scriptedWithLocalizer(tmp_path / "two.pt")
    elif source == "no record":
        model = a_tiny_unet
    else:
        card = {
            **modelcard.readCard(a_tiny_unet),
            "provenance": {"format": "onnx", "network": {"_target_": "monai.networks.nets.unet.UNet"}},
        }
        model = str(tmp_path / "imported.pt")
        modelcard.saveModel(torch.jit.load(a_tiny_unet), card, model)
    output = tmp_path / "out" / "converted.pt2"
    output.parent.mkdir()
    assert cli.main(["convert", model, "--output", str(output)]) == 2
    assert expected in capsys.readouterr().err
    assert list(output.parent.iterdir()) == []


def test_an_onnx_import_records_its_arguments_so_it_converts(tmp_path, capsys):
    pytest.importorskip("onnx")
    from test_importing import exportONNX, writeCard

    network = exportONNX(tmp_path / "model.onnx")
    assert (
        cli.main(
            ["import", str(tmp_path / "model.onnx"), "--card", writeCard(tmp_path / "card.json"), "--output", str(tmp_path / "imported.pt")]
        )
        == 0
    )
    recorded = modelcard.readCard(tmp_path / "imported.pt")["provenance"]["network"]
    assert recorded["args"] == {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 8, "blocks_down": [1, 2, 2]}
    assert cli.main(["convert", str(tmp_path / "imported.pt"), "--output", str(tmp_path / "imported.pt2")]) == 0, capsys.readouterr().err
    modelcard.clearModelCache()
    loaded = modelcard.loadModel(tmp_path / "imported.pt2", "cpu")
    sample = torch.randn(1, 1, 48, 32, 32)
    with torch.no_grad():
        expected = network(sample)
        np.testing.assert_allclose(
            loaded.network(sample).numpy(), (expected[0] if isinstance(expected, (list, tuple)) else expected).numpy(), atol=1e-5
        )


def test_export_writes_a_pt2_from_a_checkpoint(tmp_path, capsys):
    from test_exporting import tinyConfig, writeCheckpoint

    from MedSegUNetLib.models import training

    config = tinyConfig({"type": "UNet", "channels": [4, 8], "strides": [2]})
    torch.manual_seed(0)
    network = training.buildNetwork(config).eval()
    checkpoint = writeCheckpoint(tmp_path / "best.pt", config, network)
    assert cli.main(["export", "--checkpoint", checkpoint, "--output", str(tmp_path / "m.pt2"), "--format", "pt2"]) == 0
    assert "Wrote" in capsys.readouterr().out
    modelcard.clearModelCache()
    loaded = modelcard.loadModel(tmp_path / "m.pt2", "cpu")
    sample = torch.randn(2, 2, 32, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.network(sample), network(sample))
    assert loaded.card["validation"]["cases"] == ["c"]


@pytest.mark.parametrize("kind", ["onnx", "auto3dseg", "bundle"])
def test_import_writes_a_pt2_that_answers_as_the_eager_network(tmp_path, capsys, kind):
    pytest.importorskip("onnx")
    from test_importing import auto3dsegCheckpoint, exportONNX, writeBundle, writeCard

    if kind == "onnx":
        network = exportONNX(tmp_path / "model.onnx")
        arguments = [str(tmp_path / "model.onnx"), "--card", writeCard(tmp_path / "card.json")]
    elif kind == "auto3dseg":
        network = auto3dsegCheckpoint(tmp_path / "model.pt")
        (tmp_path / "labels.csv").write_text("value,name\n1,peripheral zone\n2,transition zone\n")
        arguments = [str(tmp_path / "model.pt"), "--labels", str(tmp_path / "labels.csv")]
    else:
        network = writeBundle(tmp_path / "bundle")
        arguments = [str(tmp_path / "bundle")]
    assert cli.main(["import", *arguments, "--output", str(tmp_path / "imported.pt2"), "--format", "pt2"]) == 0, capsys.readouterr().err
    assert exportedmodel.isExportedArchive(str(tmp_path / "imported.pt2"))
    modelcard.clearModelCache()
    loaded = modelcard.loadModel(tmp_path / "imported.pt2", "cpu")
    sample = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = network.eval()(sample)
        expected = expected[0] if isinstance(expected, (list, tuple)) else expected
        np.testing.assert_allclose(loaded.network(sample).numpy(), expected.numpy(), atol=1e-5)
    assert loaded.card["provenance"]["format"] == {"onnx": "onnx", "auto3dseg": "auto3dseg", "bundle": "monai-bundle"}[kind]


def test_import_of_a_published_torchscript_as_pt2_is_one_line(tmp_path, capsys, a_tiny_unet):
    (tmp_path / "card.json").write_text(json.dumps(modelcard.readCard(a_tiny_unet)))
    assert (
        cli.main(["import", a_tiny_unet, "--card", str(tmp_path / "card.json"), "--output", str(tmp_path / "m.pt2"), "--format", "pt2"])
        == 2
    )
    assert "exists only as TorchScript (no eager network to export): import it without --format pt2" in capsys.readouterr().err
    assert not (tmp_path / "m.pt2").exists()
