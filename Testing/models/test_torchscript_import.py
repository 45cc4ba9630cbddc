"""``medsegunet import TORCHSCRIPT --card CARD [--localizer TORCHSCRIPT] --output MODEL.pt``: published
TorchScript networks wrapped with a schema 3 card, checked before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedSegUNetLib import cli
from MedSegUNetLib.engine import modelcard


class Softmax2(torch.nn.Module):
    """A published-style network that ends in its own softmax: channel 1 where the input is above 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.cat([torch.zeros_like(x[:, :1]), 20.0 * (x[:, :1] - 0.5)], dim=1), dim=1)


class Logits2(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x[:, :1], 5.0 * x[:, :1]], dim=1)


class Three(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x.repeat(1, 3, 1, 1, 1), dim=1)


CARD = {
    "schema": "medsegunet.model/3",
    "name": "published mask",
    "spatial_dims": 3,
    "inputs": [{"name": "T1"}],
    "labels": [{"value": 1, "name": "object", "color": [1, 0, 0]}],
    "output": "probabilities",
    "activation": "softmax",
    "orientation": "RAS",
    "grid": {"shape": [32, 32, 32]},
    "normalization": [{"type": "minmax"}],
    "patch_size": None,
    "localizer": {"grid": {"shape": [16, 16, 16]}, "normalization": [{"type": "minmax"}], "margin_fraction": 0.1},
}


@pytest.fixture()
def published(tmp_path):
    """Scripted files as their authors ship them, and a card; returns their paths."""
    paths = {}
    for name, module in (("model", Softmax2()), ("bbox", Softmax2()), ("logits", Logits2()), ("three", Three())):
        torch.jit.save(torch.jit.script(module), str(tmp_path / f"{name}.pt"))
        paths[name] = str(tmp_path / f"{name}.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "model.pt").read_bytes()[:1000])  # a download cut short
    paths["cut"] = str(tmp_path / "cut.pt")
    (tmp_path / "card.json").write_text(json.dumps(CARD))
    withoutLocalizer = {key: value for key, value in CARD.items() if key != "localizer"}
    (tmp_path / "plain.json").write_text(json.dumps(withoutLocalizer))
    paths["card"], paths["plain"] = str(tmp_path / "card.json"), str(tmp_path / "plain.json")
    return paths


def test_a_published_torchscript_with_its_localiser_imports_and_segments(capsys, tmp_path, published):
    """The written model holds both networks and its card; it segments a bright box in an oblique volume."""
    out = tmp_path / "wrapped.pt"
    assert (
        cli.main(["import", published["model"], "--card", published["card"], "--localizer", published["bbox"], "--output", str(out)]) == 0
    )
    assert "answers a random [1, 1, 32, 32, 32] input as the published one does (localiser included)" in capsys.readouterr().out
    loaded = modelcard.loadModel(out, "cpu")
    assert loaded.localizer is not None and loaded.card["provenance"]["format"] == "torchscript"
    assert loaded.card["provenance"]["verified"]["max_abs_difference"] == 0.0 and len(loaded.card["provenance"]["localizer_sha256"]) == 64
    from MedSegUNetLib.models import phantoms

    image = phantoms.makeGrid((48, 40, 30), (1.0, 1.0, 1.5), phantoms.rotationMatrix((0, 1, 1), 15.0))
    array = np.zeros((30, 40, 48), dtype=np.float32)
    array[8:20, 10:30, 12:36] = 100.0
    volume = sitk.GetImageFromArray(array)
    volume.CopyInformation(image)
    sitk.WriteImage(volume, str(tmp_path / "t1.nrrd"))
    assert (
        cli.main(
            [
                "segment",
                "-q",
                "--model",
                str(out),
                str(tmp_path / "t1.nrrd"),
                "--output",
                str(tmp_path / "mask.nrrd"),
                "--stats-json",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nrrd")))
    box = array > 0
    assert 2 * (labels.astype(bool) & box).sum() / (labels.astype(bool).sum() + box.sum()) > 0.9
    roi = json.loads((tmp_path / "s.json").read_text())["roi"]
    assert roi["volumes"][-1] == "published mask localiser box"


# [parameters (command-line arguments), input (the published files), expected (the one line)]
REFUSALS = [
    pytest.param(
        ["{model}", "--card", "{card}", "--output", "{out}"], "'localizer' and --localizer go together", id="card-localiser-without-file"
    ),
    pytest.param(
        ["{model}", "--card", "{plain}", "--localizer", "{bbox}", "--output", "{out}"],
        "'localizer' and --localizer go together",
        id="file-without-card-localiser",
    ),
    pytest.param(["{model}", "--output", "{out}"], "needs --card", id="no-card"),
    pytest.param(
        ["{logits}", "--card", "{plain}", "--output", "{out}"],
        "returns values from -1 to 5, not probabilities",
        id="logits-as-probabilities",
    ),
    pytest.param(["{three}", "--card", "{plain}", "--output", "{out}"], "gives 3 channels but the card needs 2", id="channels"),
    pytest.param(
        ["{model}", "--card", "{card}", "--localizer", "{three}", "--output", "{out}"],
        "localiser gives 3 channels but the card needs 2",
        id="localiser-channels",
    ),
    pytest.param(["{card}", "--card", "{plain}", "--output", "{out}"], "is not a model this command imports", id="not-torchscript"),
    pytest.param(
        ["{cut}", "--card", "{card}", "--localizer", "{bbox}", "--output", "{out}"],
        "Model '{cut}' is not a TorchScript archive",
        id="cut-short-model",
    ),
    pytest.param(
        ["{model}", "--card", "{card}", "--localizer", "{cut}", "--output", "{out}"],
        "Localiser '{cut}' is not a TorchScript archive",
        id="cut-short-localiser",
    ),
]


@pytest.mark.parametrize("arguments, message", REFUSALS)
def test_refusals_are_one_line_and_write_nothing(capsys, tmp_path, published, arguments, message):
    out = tmp_path / "refused.pt"
    assert cli.main(["import", *[a.format(out=out, **published) for a in arguments]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(**published) in err[0], err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model.pt", "bbox.pt", "logits.pt", "three.pt", "cut.pt", "card.json", "plain.json"]
    )


def test_a_localiser_goes_with_torchscript_only(capsys, tmp_path, published):
    (tmp_path / "model.onnx").write_bytes(b"not read")
    assert (
        cli.main(
            [
                "import",
                str(tmp_path / "model.onnx"),
                "--card",
                published["plain"],
                "--localizer",
                published["bbox"],
                "--output",
                str(tmp_path / "o.pt"),
            ]
        )
        == 2
    )
    assert "--localizer goes with a published TorchScript model, not with ONNX" in capsys.readouterr().err


def test_a_published_torchscript_without_a_localiser_imports(capsys, tmp_path, published):
    """The form without ``--localizer``: the card's grid and probabilities, no localiser in the file."""
    out = tmp_path / "plain.pt"
    assert cli.main(["import", published["model"], "--card", published["plain"], "--output", str(out)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip().endswith("answers a random [1, 1, 32, 32, 32] input as the published one does")
    loaded = modelcard.loadModel(out, "cpu")
    assert loaded.localizer is None and "localizer_sha256" not in loaded.card["provenance"] and loaded.card["grid"]["shape"] == [32, 32, 32]
