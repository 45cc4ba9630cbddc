"""``.pt2`` (``torch.export``) model files: written, read by content, and checked before torch sees them.

Each hostile archive is made from a real one with one member changed, and carries a payload that
makes a marker folder. Where torch's own ``torch.export.load`` (or ``module()``) runs the payload,
the test shows it first, so the refusal is known to stop something real.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile

import pytest
import torch

from conftest import TINY_UNET_CARD
from MedSegUNetLib.engine import exportedmodel
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.engine.modelcard import clearModelCache, loadModel, readCard, saveModel


def tinyNetwork():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()


@pytest.fixture(scope="module")
def a_tiny_pt2(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("pt2") / "tiny.pt2"
    saveModel(tinyNetwork(), TINY_UNET_CARD, path, format="pt2")
    return str(path)


@pytest.fixture(scope="module")
def a_torch_saved_pt2(tmp_path_factory) -> str:
    """The same network as ``torch.export.save`` writes it for anyone: example inputs and guards included."""
    path = tmp_path_factory.mktemp("pt2") / "saved-by-torch.pt2"
    program = exportedmodel.exportNetwork(tinyNetwork(), exportedmodel.exampleInput(TINY_UNET_CARD))
    torch.export.save(program, str(path), extra_files={"medsegunet.json": json.dumps(TINY_UNET_CARD)})
    return str(path)


def test_a_file_torch_export_saved_loads_with_its_card(a_torch_saved_pt2):
    assert any(name.endswith("/data/sample_inputs/model.pt") and data for name, data in members(a_torch_saved_pt2).items())
    clearModelCache()
    loaded = loadModel(a_torch_saved_pt2, "cpu")
    sample = torch.randn(2, 1, 48, 32, 16)
    with torch.no_grad():
        assert torch.equal(loaded.network(sample), tinyNetwork()(sample))
    assert loaded.card["name"] == "Tiny test UNet"


def members(path: str) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def writeArchive(path, contents: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    return str(path)


def memberEnding(contents: dict, suffix: str) -> str:
    return next(name for name in contents if name.endswith(suffix))


class MakeFolder:
    """A pickle payload: unpickling it makes a folder (the marker that code ran)."""

    def __init__(self, folder: str):
        self.folder = folder

    def __reduce__(self):
        return (os.mkdir, (self.folder,))


def payload(marker) -> bytes:
    """A file in torch.save's format whose unpickling makes ``marker``."""
    buffer = io.BytesIO()
    torch.save(MakeFolder(str(marker)), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("shape", [(1, 1, 32, 32, 8), (2, 1, 48, 32, 16), (3, 1, 16, 64, 24)])
def test_a_pt2_answers_as_the_network_at_any_batch_and_size(a_tiny_pt2, shape):
    clearModelCache()
    loaded = loadModel(a_tiny_pt2, "cpu")
    sample = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(loaded.network(sample), tinyNetwork()(sample))
    assert readCard(a_tiny_pt2)["name"] == "Tiny test UNet"


def test_the_format_is_told_by_content_not_by_suffix(a_tiny_pt2, a_tiny_unet, tmp_path):
    disguised = tmp_path / "tiny.pt"
    disguised.write_bytes(open(a_tiny_pt2, "rb").read())
    scripted = tmp_path / "scripted.pt2"
    scripted.write_bytes(open(a_tiny_unet, "rb").read())
    assert exportedmodel.isExportedArchive(str(disguised)) and not exportedmodel.isExportedArchive(str(scripted))
    clearModelCache()
    sample = torch.randn(1, 1, 32, 32, 8)
    with torch.no_grad():
        assert torch.equal(loadModel(disguised, "cpu").network(sample), tinyNetwork()(sample))
        assert loadModel(scripted, "cpu").network(sample).shape == (1, 2, 32, 32, 8)
    assert exportedmodel.formatLine(str(disguised)).startswith("Format: torch.export (.pt2), written with torch 2.")
    assert exportedmodel.formatLine(str(scripted)).startswith("Format: TorchScript")


def test_the_card_is_stored_inside_byte_for_byte(a_tiny_pt2):
    contents = members(a_tiny_pt2)
    assert json.loads(contents[memberEnding(contents, "/extra/medsegunet.json")]) == readCard(a_tiny_pt2)
    # Written without example inputs: the archive is the weights, and no guard code is built on load.
    assert contents[memberEnding(contents, "/data/sample_inputs/model.pt")] == b""


def test_example_inputs_that_run_code_are_refused(a_torch_saved_pt2, tmp_path):
    marker = tmp_path / "ran"
    contents = members(a_torch_saved_pt2)
    contents[memberEnding(contents, "/data/sample_inputs/model.pt")] = payload(marker)
    hostile = writeArchive(tmp_path / "hostile.pt2", contents)
    with pytest.raises(MedSegUNetError, match="example inputs that are not plain tensors"):
        exportedmodel.loadCheckedExported(hostile, "cpu", "Model 'hostile.pt2'")
    assert not marker.exists()
    with contextlib.suppress(Exception):
        torch.export.load(hostile)  # torch itself falls back to an unsafe load: the payload is live
    assert marker.is_dir()


def test_a_pickled_weight_is_refused(a_torch_saved_pt2, tmp_path):
    marker = tmp_path / "ran"
    contents = members(a_torch_saved_pt2)
    configName = memberEnding(contents, "/data/weights/model_weights_config.json")
    config = json.loads(contents[configName])
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    contents[configName] = json.dumps(config).encode()
    contents[memberEnding(contents, "/data/weights/" + first["path_name"])] = payload(marker)
    with pytest.raises(MedSegUNetError, match="as a pickle, which loading would run"):
        exportedmodel.loadCheckedExported(writeArchive(tmp_path / "hostile.pt2", contents), "cpu", "Model 'hostile.pt2'")
    assert not marker.exists()


def programWith(path: str, tmp_path, change) -> str:
    contents = members(path)
    name = memberEnding(contents, "/models/model.json")
    document = json.loads(contents[name])
    change(document)
    contents[name] = json.dumps(document).encode()
    return writeArchive(tmp_path / "hostile.pt2", contents)


def test_guards_code_that_runs_python_is_refused(a_torch_saved_pt2, tmp_path):
    marker = tmp_path / "ran"
    hostile = programWith(
        a_torch_saved_pt2, tmp_path, lambda document: document["guards_code"].append(f"__import__('os').mkdir({str(marker)!r}) or True")
    )
    with pytest.raises(MedSegUNetError, match="shape expression with .* which torch would run as Python"):
        exportedmodel.loadCheckedExported(hostile, "cpu", "Model 'hostile.pt2'")
    assert not marker.exists()
    torch.export.load(hostile).module()(torch.randn(1, 1, 32, 32, 8))  # torch execs guards_code, run on each call
    assert marker.is_dir()


def test_a_shape_expression_that_runs_python_is_refused(a_torch_saved_pt2, tmp_path):
    marker = tmp_path / "ran"

    def poison(document):
        pending = [document]
        while pending:  # the first symbolic size of any tensor
            node = pending.pop()
            if isinstance(node, dict) and "expr_str" in node:
                node["expr_str"] = f"__import__('os').mkdir({str(marker)!r})"
                return
            pending.extend(node.values() if isinstance(node, dict) else node if isinstance(node, list) else [])

    hostile = programWith(a_torch_saved_pt2, tmp_path, poison)
    with pytest.raises(MedSegUNetError, match="which torch would run as Python"):
        exportedmodel.loadCheckedExported(hostile, "cpu", "Model 'hostile.pt2'")
    assert not marker.exists()
    with pytest.raises(Exception):
        torch.export.load(hostile)  # sympify evaluates it on the way (then fails on its result)
    assert marker.is_dir()


@pytest.mark.parametrize(
    "target, named",
    [
        ("torch.ops.aten.save.default", "torch.ops.aten.save.default"),
        ("torch.serialization.save", "torch.serialization.save"),
        ("builtins.exec", "builtins.exec"),
    ],
)
def test_a_graph_calling_a_side_effecting_operator_is_refused(a_torch_saved_pt2, tmp_path, target, named):
    def swap(document):
        document["graph_module"]["graph"]["nodes"][0]["target"] = target

    with pytest.raises(MedSegUNetError, match=f"calls '{named}', which is not a pure tensor operator"):
        exportedmodel.loadCheckedExported(programWith(a_torch_saved_pt2, tmp_path, swap), "cpu", "Model 'hostile.pt2'")


def test_a_card_that_inflates_to_a_gibibyte_is_refused_before_it_inflates(a_tiny_pt2, tmp_path):
    contents = members(a_tiny_pt2)
    cardName = memberEnding(contents, "/extra/medsegunet.json")
    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_STORED) as archive:
        for name, data in contents.items():
            if name != cardName:
                archive.writestr(name, data)
        info = zipfile.ZipInfo(cardName)
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as stream:
            chunk = b" " * (1 << 24)
            for _ in range(64):  # 1 GiB of spaces, about 1 MB deflated
                stream.write(chunk)
    assert os.path.getsize(bomb) < 8 << 20
    with pytest.raises(MedSegUNetError, match="medsegunet.json"):
        readCard(str(bomb))
    with pytest.raises(MedSegUNetError, match="medsegunet.json"):
        exportedmodel.loadCheckedExported(str(bomb), "cpu", "Model 'bomb.pt2'")


def test_a_member_torch_does_not_write_is_refused(a_torch_saved_pt2, tmp_path):
    contents = members(a_torch_saved_pt2)
    top = next(iter(contents)).split("/")[0]
    contents[f"{top}/extra/payload.pkl"] = payload(tmp_path / "ran")
    with pytest.raises(MedSegUNetError, match="holds '.*/extra/payload.pkl', which torch.export does not write"):
        exportedmodel.loadCheckedExported(writeArchive(tmp_path / "hostile.pt2", contents), "cpu", "Model 'hostile.pt2'")


@pytest.mark.parametrize(
    "expression, allowed",
    [
        ("Add(FloorDiv(Add(Symbol('s0', positive=True, integer=True), Integer(-1)), Integer(4)), Integer(1))", True),
        ("(1 + (((-1) + L['x'].size()[3]) // 2)) != 1", True),
        ("Max(s0, 2*s1) <= 512", True),
        ("(max(1, 1 + (((-1) + L['x'].size()[3]) // 2))*max(1, s0)) <= 4096", True),  # torch 2.9's guards
        ("max(1, key=print)", False),
        ("max.__self__", False),
        ("__import__('os').system('true')", False),
        ("L['x'].__class__", False),
        ("(lambda: 1)()", False),
        ("Symbol('s0', evaluate=__import__('os'))", False),
        ("s0.__class__.__base__", False),
        ("[s0 for s0 in range(3)]", False),
    ],
)
def test_shape_expressions_are_arithmetic_only(expression, allowed):
    if allowed:
        exportedmodel.checkExpression(expression, "Model 'm.pt2'")
    else:
        with pytest.raises(MedSegUNetError, match="Model 'm.pt2' holds a shape expression"):
            exportedmodel.checkExpression(expression, "Model 'm.pt2'")


def test_a_scripted_network_is_not_exported(tmp_path):
    with pytest.raises(MedSegUNetError, match="exported from the eager network, not a TorchScript one"):
        saveModel(torch.jit.script(tinyNetwork()), TINY_UNET_CARD, tmp_path / "m.pt2", format="pt2")
    assert list(tmp_path.iterdir()) == []


def test_a_pt2_with_a_localiser_keeps_both_programs(tmp_path):
    card = json.loads(json.dumps(TINY_UNET_CARD))
    card.update({"schema": "medsegunet.model/3", "localizer": {"grid": {"shape": [16, 16, 16]}, "normalization": {"type": "minmax"}}})
    localizer = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1)).eval()
    saveModel(tinyNetwork(), card, tmp_path / "two.pt2", localizer=localizer, format="pt2")
    clearModelCache()
    loaded = loadModel(tmp_path / "two.pt2", "cpu")
    sample = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.localizer(sample), localizer(sample))
