"""``medsegunet import`` of ONNX models exported from a MONAI SegResNetDS, verified with onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedSegUNetLib import cli
from MedSegUNetLib.engine import modelcard

pytest.importorskip("onnx", reason="the import extra is not installed")
pytest.importorskip("onnxruntime", reason="the import extra is not installed")

NETWORK = {
    "_target_": "monai.networks.nets.SegResNetDS",
    "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 8, "blocks_down": [1, 2, 2]},
}


def exportONNX(path, args=NETWORK["args"], activate: bool = False, fold: bool = False, dynamo: bool = False):
    import torch
    from monai.networks.nets import SegResNetDS

    torch.manual_seed(1)
    network = SegResNetDS(**args).eval()
    with torch.no_grad():  # a trained network's norms are not the defaults
        for module in network.modules():
            if isinstance(module, (torch.nn.BatchNorm3d, torch.nn.InstanceNorm3d)) and module.affine:
                if module.running_mean is not None:
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    exported = torch.nn.Sequential(network, torch.nn.Softmax(dim=1)) if activate else network
    if dynamo:  # torch's default exporter (torch.export, then onnxscript's optimiser)
        torch.onnx.export(
            exported,
            (torch.randn(1, 1, 32, 32, 32),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes={"x": {2: "i", 3: "j", 4: "k"}},
        )
        return network
    torch.onnx.export(
        exported,
        torch.randn(1, 1, 32, 32, 32),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {2: "i", 3: "j", 4: "k"}, "output": {2: "i", 3: "j", 4: "k"}},
        do_constant_folding=fold,
    )
    return network


def writeCard(path, network=NETWORK) -> str:
    card = {
        "schema": "medsegunet.model/2",
        "name": "Imported SegResNetDS",
        "version": "2.0",
        "spatial_dims": 3,
        "inputs": [{"name": "T2"}],
        "labels": [{"value": 1, "name": "gland", "color": [0.8, 0.5, 0.3]}],
        "output": "softmax",
        "normalization": {"type": "zscore"},
        "patch_size": [32, 32, 32],
        "blend": "logits",
        "network": network,
    }
    path.write_text(json.dumps(card))
    return str(path)


def test_onnx_import_matches_onnxruntime_and_says_where_it_came_from(capsys, tmp_path):
    import onnxruntime
    import torch

    exportONNX(tmp_path / "model.onnx")
    card = writeCard(tmp_path / "card.json")
    assert cli.main(["import", str(tmp_path / "model.onnx"), "--card", card, "--output", str(tmp_path / "imported.pt")]) == 0, (
        capsys.readouterr().err
    )
    written = modelcard.readCard(tmp_path / "imported.pt")
    assert written["provenance"]["format"] == "onnx" and written["provenance"]["verified"]["max_abs_difference"] < 1e-3
    assert "network" not in written and written["blend"] == "logits"
    # Another patch than the one verified: TorchScript and onnxruntime agree there too.
    sample = torch.randn(1, 1, 48, 40, 32, generator=torch.Generator().manual_seed(5))
    scripted = torch.jit.load(str(tmp_path / "imported.pt"))
    with torch.no_grad():
        ours = scripted(sample).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": sample.numpy()})[0]
    assert np.abs(ours - theirs).max() <= 1e-3 * (theirs.max() - theirs.min()) + 1e-4
    capsys.readouterr()
    assert cli.main(["info", str(tmp_path / "imported.pt")]) == 0
    assert "Imported from onnx" in capsys.readouterr().out


# [parameters (network and export), input (the ONNX graph), expected (folded norms restored)]
@pytest.mark.parametrize(
    "args, exporter, folded",
    [
        (NETWORK["args"], "torchscript-folded", 7),  # renamed tensors, norms merged into the convolutions before them
        (NETWORK["args"], "dynamo", 7),  # torch.onnx.export's default: norms merged by onnxscript's optimiser
        ({**NETWORK["args"], "norm": "instance"}, "torchscript-folded", 0),  # instance norms cannot fold; de-duplicated tensors
        ({**NETWORK["args"], "norm": "instance"}, "torchscript", 0),
    ],
)
def test_onnx_import_of_folded_dynamo_and_instance_norm_graphs(capsys, tmp_path, args, exporter, folded):
    import onnx
    import onnxruntime
    import torch

    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript (in the test extra)")
    exportONNX(tmp_path / "model.onnx", args=args, fold=exporter == "torchscript-folded", dynamo=exporter == "dynamo")
    operators = [node.op_type for node in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    norms = 7 * 2 if "norm" not in args else 0
    assert operators.count("BatchNormalization") == norms - folded
    card = writeCard(tmp_path / "card.json", {**NETWORK, "args": args})
    assert cli.main(["import", str(tmp_path / "model.onnx"), "--card", card, "--output", str(tmp_path / "imported.pt")]) == 0, (
        capsys.readouterr().err
    )
    notes = modelcard.readCard(tmp_path / "imported.pt")["provenance"]["notes"]
    assert any(f"{folded} batch norms folded" in note for note in notes) == bool(folded)
    scripted = torch.jit.load(str(tmp_path / "imported.pt"))
    # The folded norms are gone from the network, as from the graph: the same work, no more.
    assert sum(name.endswith("running_var") for name, _ in scripted.named_buffers()) == operators.count("BatchNormalization")
    sample = torch.randn(1, 1, 40, 32, 48, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours = scripted(sample).numpy()
    theirs = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": sample.numpy()}
    )[0]
    assert np.abs(ours - theirs).max() <= 1e-3 * (theirs.max() - theirs.min()) + 1e-4
    assert (ours.argmax(1) == theirs.argmax(1)).mean() > 0.999


# [parameters (what is wrong), input (the files), expected (words of the one line)]
@pytest.mark.parametrize(
    "fault, expected",
    [
        ("other-network", "has shape"),
        ("no-network", 'needs "network"'),
        ("activated", "ends with Softmax"),
        ("no-card", "needs --card"),
        ("bundle", "has no configs/inference.json"),
        ("deeper-network", "where the card's network has Conv3d"),
        ("group-norm", "where the card's network has GroupNorm"),
    ],
)
def test_import_refusals_write_nothing(capsys, tmp_path, fault, expected):
    source = tmp_path / "model.onnx"
    exportONNX(source, activate=fault == "activated")
    card = None
    if fault == "other-network":
        card = writeCard(tmp_path / "card.json", {**NETWORK, "args": {**NETWORK["args"], "init_filters": 16}})
    elif fault == "no-network":
        card = writeCard(tmp_path / "card.json", None)
    elif fault == "deeper-network":
        card = writeCard(tmp_path / "card.json", {**NETWORK, "args": {**NETWORK["args"], "blocks_down": [1, 2, 2, 4]}})
    elif fault == "group-norm":
        card = writeCard(tmp_path / "card.json", {**NETWORK, "args": {**NETWORK["args"], "norm": ["group", {"num_groups": 4}]}})
    elif fault in ("activated", "bundle"):
        card = writeCard(tmp_path / "card.json")
    if fault == "bundle":
        (tmp_path / "bundle" / "configs").mkdir(parents=True)
        source = tmp_path / "bundle"
    argv = ["import", str(source), "--output", str(tmp_path / "out.pt"), *(["--card", card] if card else [])]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "out.pt").exists()


def auto3dsegCheckpoint(path, **configChanges):
    import torch
    from monai.networks.nets import SegResNetDS

    torch.manual_seed(2)
    network = SegResNetDS(spatial_dims=3, in_channels=1, out_channels=3, init_filters=8, blocks_down=(1, 2, 2)).eval()
    config = {
        "network": {
            "_target_": "SegResNetDS",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "init_filters": 8,
            "blocks_down": [1, 2, 2],
        },
        "roi_size": [96, 96, 64],
        "resample_resolution": [0.5, 0.5, 3.0],
        "orientation_ras": True,
        "normalize_mode": "meanstd",
        "intensity_bounds": [0.0, 1000.0],
        "sigmoid": False,
        "crop_foreground": True,
    }
    config.update(configChanges)
    torch.save({"config": config, "state_dict": network.state_dict()}, str(path))
    return network


def test_auto3dseg_checkpoint_import(capsys, tmp_path):
    import torch

    network = auto3dsegCheckpoint(tmp_path / "model.pt")
    (tmp_path / "labels.csv").write_text("value,name\n1,peripheral zone\n2,transition zone\n")
    assert (
        cli.main(
            ["import", str(tmp_path / "model.pt"), "--labels", str(tmp_path / "labels.csv"), "--output", str(tmp_path / "imported.pt")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Note: crop_foreground" in out
    card = modelcard.readCard(tmp_path / "imported.pt")
    assert card["spacing"] == [0.5, 0.5, 3.0] and card["orientation"] == "RAS" and card["patch_size"] == [96, 96, 64]
    assert card["normalization"] == {"type": "zscore", "nonzero": True} and card["output"] == "softmax" and card["blend"] == "logits"
    assert [label["name"] for label in card["labels"]] == ["peripheral zone", "transition zone"]
    assert card["provenance"]["format"] == "auto3dseg" and card["provenance"]["verified"]["max_abs_difference"] < 1e-3
    sample = torch.randn(1, 1, 64, 64, 32)
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(tmp_path / "imported.pt"))(sample).numpy(), network(sample).numpy(), atol=1e-4)


@pytest.mark.parametrize(
    "changes, labels, expected",
    [
        ({"normalize_mode": "range"}, True, "normalize_mode 'range'"),
        ({"normalize_mode": "meanstdtanh"}, True, "normalize_mode 'meanstdtanh'"),
        ({}, False, "needs --labels"),
    ],
    ids=["range", "meanstdtanh", "no-labels"],
)
def test_auto3dseg_refusals(capsys, tmp_path, changes, labels, expected):
    auto3dsegCheckpoint(tmp_path / "model.pt", **changes)
    (tmp_path / "labels.csv").write_text("value,name\n1,a\n2,b\n")
    argv = [
        "import",
        str(tmp_path / "model.pt"),
        "--output",
        str(tmp_path / "imported.pt"),
        *(["--labels", str(tmp_path / "labels.csv")] if labels else []),
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and not (tmp_path / "imported.pt").exists()


def writeBundle(folder, preprocessing=None):
    """A MONAI bundle folder: inference config, metadata, and the weights of a small UNet."""
    import torch
    from monai.networks.nets import UNet

    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    torch.manual_seed(3)
    network = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    torch.save(network.state_dict(), str(folder / "models" / "model.pt"))
    inference = {
        "network_def": {
            "_target_": "UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "channels": [4, 8, 16],
            "strides": [2, 2],
            "num_res_units": 1,
        },
        "preprocessing": {
            "_target_": "Compose",
            "transforms": preprocessing
            or [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0]},
                {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True},
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 16], "sw_batch_size": 2, "overlap": 0.5},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1]},
            ],
        },
    }
    metadata = {
        "name": "Spleen-like test bundle",
        "version": "0.3.1",
        "license": "Apache-2.0",
        "network_data_format": {
            "inputs": {"image": {"num_channels": 1}},
            "outputs": {"pred": {"num_channels": 3, "channel_def": {"0": "background", "1": "organ", "2": "lesion"}}},
        },
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    return network


def test_monai_bundle_import(capsys, tmp_path):
    import torch

    network = writeBundle(tmp_path / "bundle")
    assert cli.main(["import", str(tmp_path / "bundle"), "--output", str(tmp_path / "imported.pt")]) == 0, capsys.readouterr().err
    card = modelcard.readCard(tmp_path / "imported.pt")
    assert (
        card["orientation"] == "RAS" and card["spacing"] == [1.5, 1.5, 2.0] and card["normalization"] == {"type": "zscore", "nonzero": True}
    )
    assert card["patch_size"] == [32, 32, 16] and card["overlap"] == 0.5 and card["output"] == "softmax"
    assert [(label["value"], label["name"]) for label in card["labels"]] == [(1, "organ"), (2, "lesion")]
    assert card["postprocessing"] == {"largest_component": [1]} and card["name"] == "Spleen-like test bundle" and card["version"] == "0.3.1"
    sample = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(tmp_path / "imported.pt"))(sample).numpy(), network(sample).numpy(), atol=1e-5)


def test_bundle_with_an_inexpressible_transform_is_refused(capsys, tmp_path):
    writeBundle(tmp_path / "bundle", [{"_target_": "LoadImaged", "keys": "image"}, {"_target_": "HistogramNormalized", "keys": "image"}])
    assert cli.main(["import", str(tmp_path / "bundle"), "--output", str(tmp_path / "imported.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HistogramNormalized" in err[0] and not (tmp_path / "imported.pt").exists()


@pytest.mark.slow
def test_a_trained_model_exported_with_torch_defaults_imports_and_segments_the_same(capsys, tmp_path, repo_root, prostate_series):
    """The zoo prostate model (MONAI UNet: PReLU, instance norms, residual units), exported to ONNX
    with torch.onnx.export's defaults, imported back, gives the zoo model's labels on ProstateX-0000."""
    import SimpleITK as sitk
    import torch

    from MedSegUNetLib.models import training

    zoo = repo_root / "MedSegUNet" / "Resources" / "Models" / "prostate-zones" / "prostate-zones.pt"
    card = modelcard.readCard(zoo)
    spec = card["training"]["network"]
    network = training.buildNetwork({**card, "network": spec}).eval()
    network.load_state_dict(torch.jit.load(str(zoo)).state_dict())
    pytest.importorskip("onnxscript", reason="torch.onnx.export's default (dynamo) exporter needs onnxscript (in the test extra)")
    # torch.onnx.export's defaults (dynamo); the sliding window sends batches of 2 windows of the patch size.
    torch.onnx.export(
        network,
        (torch.randn(2, 1, *card["patch_size"]),),
        str(tmp_path / "zones.onnx"),
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes={"x": {0: "n", 2: "i", 3: "j", 4: "k"}},
    )
    args = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": spec["channels"],
        "strides": spec["strides"],
        "num_res_units": spec["num_res_units"],
        "norm": "INSTANCE",
        "dropout": spec["dropout"],
    }
    imported = {key: value for key, value in card.items() if key not in ("training", "validation")}
    imported["network"] = {"_target_": "monai.networks.nets.UNet", "args": args}
    (tmp_path / "card.json").write_text(json.dumps(imported))
    assert (
        cli.main(["import", str(tmp_path / "zones.onnx"), "--card", str(tmp_path / "card.json"), "--output", str(tmp_path / "zones.pt")])
        == 0
    ), capsys.readouterr().err
    series = list(prostate_series.values())
    for model, output in ((zoo, "zoo.nii.gz"), (tmp_path / "zones.pt", "imported.nii.gz")):
        assert (
            cli.main(["segment", series[0], "--roi-from", *series[1:], "--model", str(model), "--output", str(tmp_path / output), "-q"])
            == 0
        ), capsys.readouterr().err
    zooLabels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "zoo.nii.gz")))
    importedLabels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "imported.nii.gz")))
    for value in (1, 2):
        assert (zooLabels == value).sum() > 1000
        dice = 2 * ((zooLabels == value) & (importedLabels == value)).sum() / ((zooLabels == value).sum() + (importedLabels == value).sum())
        assert dice > 0.999, (value, dice)


GROUP_NORM_NETWORK = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "init_filters": 8,
    "blocks_down": [1, 2, 2],
    "norm": ["GROUP", {"num_groups": 4}],
    "act": ["MISH", {"inplace": False}],
}


def exportGroupNormNetwork(path, dynamo: bool):
    """A SegResNetDS with group norms and Mish (as TAPS's), its norms' γ and β made unlike the defaults."""
    import torch
    from monai.networks.nets import SegResNetDS

    torch.manual_seed(4)
    network = SegResNetDS(**GROUP_NORM_NETWORK).eval()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    sample = torch.randn(1, 1, 32, 32, 32)
    if dynamo:
        torch.onnx.export(
            network, (sample,), str(path), input_names=["input"], output_names=["output"], dynamic_shapes={"x": {2: "i", 3: "j", 4: "k"}}
        )
    else:
        torch.onnx.export(
            network,
            sample,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {2: "i", 3: "j", 4: "k"}, "output": {2: "i", 3: "j", 4: "k"}},
        )
    return network


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter-opset17", "dynamo-exporter"])
def test_group_norms_and_mish_import_from_either_exporter(capsys, tmp_path, dynamo):
    """The exporters write a GroupNorm as Reshape → InstanceNormalization → Reshape → Mul (γ) → Add (β)."""
    import torch

    network = exportGroupNormNetwork(tmp_path / "model.onnx", dynamo)
    card = writeCard(tmp_path / "card.json", {"_target_": "monai.networks.nets.SegResNetDS", "args": GROUP_NORM_NETWORK})
    assert cli.main(["import", str(tmp_path / "model.onnx"), "--card", card, "--output", str(tmp_path / "imported.pt")]) == 0, (
        capsys.readouterr().err
    )
    sample = torch.randn(1, 1, 48, 32, 40)
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(tmp_path / "imported.pt"))(sample).numpy(), network(sample).numpy(), atol=2e-4)


def test_a_group_norm_with_other_groups_is_refused(capsys, tmp_path):
    exportGroupNormNetwork(tmp_path / "model.onnx", dynamo=False)
    other = {**GROUP_NORM_NETWORK, "norm": ["GROUP", {"num_groups": 2}]}
    card = writeCard(tmp_path / "card.json", {"_target_": "monai.networks.nets.SegResNetDS", "args": other})
    assert cli.main(["import", str(tmp_path / "model.onnx"), "--card", card, "--output", str(tmp_path / "imported.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 4 groups in the graph and 2 in the card's network" in err[0], err
    assert not (tmp_path / "imported.pt").exists()
