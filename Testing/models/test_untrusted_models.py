"""Models, bundles and checkpoints are data: nothing they say is run, nothing outside the output is touched.

Each payload here is harmless: it would create a marker file in the test's folder (``touch``) or
remove a decoy folder beside the model, if it ran. Every case checks the exit status, the one line,
that no marker appeared, that the folder holding the inputs is byte-identical afterwards, and that
no output was written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import errorLines, treeDigest
from MedSegUNetLib import cli

pytest.importorskip("onnx", reason="the import extra is not installed")

from test_importing import NETWORK, auto3dsegCheckpoint, exportONNX, writeBundle, writeCard  # noqa: E402


@pytest.fixture
def a_workspace(tmp_path):
    """A folder with a decoy folder (a payload may try to delete it) and the marker's path."""
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "thesis.docx").write_text("four years of work")
    return {"folder": tmp_path, "marker": tmp_path / "MARKER", "decoy": tmp_path / "keep"}


def payloads(workspace) -> dict[str, object]:
    marker, decoy = str(workspace["marker"]), str(workspace["decoy"])
    return {
        "popen": {"_target_": "subprocess.Popen", "args": {"args": ["touch", marker]}},
        "os-system": {"_target_": "os.system", "args": {"command": f"touch {marker}"}},
        "rmtree": {"_target_": "shutil.rmtree", "args": {"path": decoy}},
        "builtins-eval": {"_target_": "builtins.eval", "args": {"source": f"open({marker!r}, 'w')"}},
        "dollar-arg": {
            "_target_": "monai.networks.nets.SegResNetDS",
            "args": {**NETWORK["args"], "init_filters": f"$open({marker!r}, 'w') and 8"},
        },
        "nested-target": {
            "_target_": "monai.networks.nets.SegResNetDS",
            "args": {**NETWORK["args"], "act": {"_target_": "os.system", "command": f"touch {marker}"}},
        },
        "lookalike": {"_target_": "monai.networks.nets.os.system", "args": {"command": f"touch {marker}"}},
        "not-a-network": {"_target_": "monai.networks.nets.deprecated_arg", "args": {}},
    }


def runRefused(capsys, argv, workspace, expected: str) -> str:
    before = treeDigest(workspace["folder"])
    assert cli.main(argv) == 2
    err = errorLines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("medsegunet: error:") and "internal error" not in err[0], err
    assert expected in err[0], err[0]
    assert not workspace["marker"].exists(), "the payload ran"
    assert treeDigest(workspace["folder"]) == before, "something beside the output changed"
    return err[0]


@pytest.mark.parametrize(
    "payload, expected",
    [
        ("popen", "not a network of monai.networks.nets"),
        ("os-system", "not a network of monai.networks.nets"),
        ("rmtree", "not a network of monai.networks.nets"),
        ("builtins-eval", "not a network of monai.networks.nets"),
        ("dollar-arg", "'$' expression"),
        ("nested-target", "its own '_target_'"),
        ("lookalike", "not a network class"),
        ("not-a-network", "not a network class"),
    ],
)
def test_an_onnx_cards_network_is_never_run(capsys, a_workspace, payload, expected):
    folder = a_workspace["folder"]
    exportONNX(folder / "model.onnx")
    card = writeCard(folder / "card.json", payloads(a_workspace)[payload])
    runRefused(capsys, ["import", str(folder / "model.onnx"), "--card", card, "--output", str(folder / "m.pt")], a_workspace, expected)
    assert not (folder / "m.pt").exists()


class Payload:
    """A pickled object whose unpickling would run ``touch MARKER`` (as a malicious checkpoint does)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_checkpoint_is_not_unpickled(capsys, a_workspace):
    import torch

    folder = a_workspace["folder"]
    network = auto3dsegCheckpoint(folder / "clean.pt")
    checkpoint = torch.load(str(folder / "clean.pt"), weights_only=True)
    torch.save({**checkpoint, "epoch": Payload(str(a_workspace["marker"]))}, str(folder / "model.pt"))
    (folder / "labels.csv").write_text("value,name\n1,a\n2,b\n")
    del network
    message = runRefused(
        capsys,
        ["import", str(folder / "model.pt"), "--labels", str(folder / "labels.csv"), "--output", str(folder / "out.pt")],
        a_workspace,
        "Python objects beyond weights",
    )
    assert "not loaded" in message and not (folder / "out.pt").exists()


def test_a_checkpoint_with_numpy_metrics_still_imports(capsys, tmp_path):
    """Real Auto3DSeg checkpoints keep NumPy scalars (best metric) beside the weights: plain data."""
    import numpy as np
    import torch

    auto3dsegCheckpoint(tmp_path / "clean.pt")
    checkpoint = torch.load(str(tmp_path / "clean.pt"), weights_only=True)
    torch.save({**checkpoint, "best_metric": np.float64(0.87), "epoch": 300}, str(tmp_path / "model.pt"))
    (tmp_path / "labels.csv").write_text("value,name\n1,a\n2,b\n")
    assert (
        cli.main(["import", str(tmp_path / "model.pt"), "--labels", str(tmp_path / "labels.csv"), "--output", str(tmp_path / "out.pt")])
        == 0
    ), capsys.readouterr().err
    assert (tmp_path / "out.pt").is_file()


@pytest.mark.parametrize(
    "network, expected",
    [
        ({"_target_": "subprocess.Popen", "args": ["touch", "MARKER"]}, "not a network of monai.networks.nets"),
        (
            {
                "_target_": "SegResNetDS",
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 3,
                "init_filters": "$__import__('os').system('touch MARKER') or 8",
            },
            "'$' expression",
        ),
        (
            {
                "_target_": "SegResNetDS",
                "spatial_dims": 3,
                "in_channels": "@input_channels",
                "out_channels": 3,
                "init_filters": 8,
                "blocks_down": [1, 2, 2],
            },
            None,
        ),
        (
            {"_target_": "SegResNetDS", "spatial_dims": 3, "in_channels": "@nowhere", "out_channels": 3},
            "references outside it are not followed",
        ),
        ({"_target_": "SegResNetDS", "_requires_": "$print(1)", "spatial_dims": 3}, "'_requires_'"),
    ],
    ids=["popen", "dollar", "inner-reference", "outer-reference", "requires"],
)
def test_an_auto3dseg_config_is_read_as_data(capsys, a_workspace, network, expected):
    folder = a_workspace["folder"]
    os.chdir(folder)  # a relative MARKER would land here
    try:
        auto3dsegCheckpoint(folder / "model.pt", network=network, input_channels=1)
        (folder / "labels.csv").write_text("value,name\n1,a\n2,b\n")
        argv = ["import", str(folder / "model.pt"), "--labels", str(folder / "labels.csv"), "--output", str(folder / "m.pt")]
        if expected is None:  # a reference inside the config is a value, resolved
            assert cli.main(argv) == 0, capsys.readouterr().err
            return
        message = runRefused(capsys, argv, a_workspace, expected)
        assert "config key 'network'" in message
    finally:
        os.chdir(Path(__file__).parent)


def _bundleWith(folder: Path, change) -> Path:
    writeBundle(folder / "bundle")
    path = folder / "bundle" / "configs" / "inference.json"
    inference = json.loads(path.read_text())
    change(inference)
    path.write_text(json.dumps(inference))
    return folder / "bundle"


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: c.update(network_def="$__import__('os').system('touch MARKER')"), "network_def"),
        (lambda c: c["network_def"].update(_target_="subprocess.Popen", args=["touch", "MARKER"]), "not a network of monai.networks.nets"),
        (
            lambda c: c["network_def"].update(out_channels="$__import__('os').system('touch MARKER') or 3"),
            "network_def.out_channels is a '$' expression",
        ),
        (lambda c: c["network_def"].update(out_channels="%configs/other.json#classes"), "'%' reference"),
        (
            lambda c: c["inferer"].update(roi_size="$[32, 32, 16] if __import__('os').system('touch MARKER') else [32, 32, 16]"),
            "inferer.roi_size is a '$' expression",
        ),
        (lambda c: c.update(preprocessing="$__import__('os').system('touch MARKER')"), "preprocessing is a '$' expression"),
    ],
    ids=["network-expression", "network-popen", "arg-expression", "file-reference", "inferer-expression", "preprocessing-expression"],
)
def test_a_bundle_is_read_as_data(capsys, a_workspace, change, expected):
    folder = a_workspace["folder"]
    bundle = _bundleWith(folder, change)
    os.chdir(folder)
    try:
        runRefused(capsys, ["import", str(bundle), "--output", str(folder / "out.pt")], a_workspace, expected)
    finally:
        os.chdir(Path(__file__).parent)
    assert not (folder / "out.pt").exists()


def test_a_bundle_with_inner_references_imports(capsys, tmp_path):
    """``@`` references to values of the same config (as MONAI's own bundles write them) are followed."""

    def change(config):
        config["num_classes"] = 3
        config["network_def"]["out_channels"] = "@num_classes"
        config["inferer"]["roi_size"] = "@patch"
        config["patch"] = [32, 32, 16]

    bundle = _bundleWith(tmp_path, change)
    assert cli.main(["import", str(bundle), "--output", str(tmp_path / "out.pt")]) == 0, capsys.readouterr().err


def test_an_onnx_operator_onnxruntime_does_not_know_is_one_line(capsys, a_workspace):
    """A graph with an operator of an unknown domain: onnxruntime cannot verify it, nothing is written."""
    import onnx

    folder = a_workspace["folder"]
    exportONNX(folder / "model.onnx")
    model = onnx.load(str(folder / "model.onnx"))
    model.graph.node[-1].domain = "com.example.unknown"
    model.opset_import.append(onnx.helper.make_opsetid("com.example.unknown", 1))
    onnx.save(model, str(folder / "model.onnx"))
    card = writeCard(folder / "card.json")
    runRefused(
        capsys, ["import", str(folder / "model.onnx"), "--card", card, "--output", str(folder / "m.pt")], a_workspace, "cannot be verified"
    )
