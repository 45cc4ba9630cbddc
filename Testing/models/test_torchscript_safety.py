"""TorchScript model files are data: a graph that would write a file (``torch.save``), read one
(``torch.from_file``), print, or run code while it loads (``__setstate__``) is refused by every
surface that loads models (``import``, ``models pull``, ``segment``, ``batch``, the worker) before
anything in it runs. Each payload would create a marker file in the test's folder; each case
checks the exit status, the one line naming the operator and the method, that no marker appeared,
and that no output was written. The networks the project ships or imports pass the same check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_untrusted_models import runRefused

from conftest import REPO_ROOT
from MedSegUNetLib.engine import graphsafety, modelcard
from MedSegUNetLib.engine.errors import MedSegUNetError

CARD = {
    "schema": "medsegunet.model/3",
    "name": "published mask",
    "spatial_dims": 3,
    "inputs": [{"name": "T1"}],
    "labels": [{"value": 1, "name": "object", "color": [1, 0, 0]}],
    "output": "probabilities",
    "activation": "softmax",
    "orientation": "RAS",
    "grid": {"shape": [16, 16, 16]},
    "normalization": [{"type": "minmax"}],
    "patch_size": None,
}
LOCALIZER = {"grid": {"shape": [8, 8, 8]}, "normalization": [{"type": "minmax"}], "margin_fraction": 0.1}


def twoChannels(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(torch.cat([torch.zeros_like(x[:, :1]), 20.0 * (x[:, :1] - 0.5)], dim=1), dim=1)


class Clean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return twoChannels(x)


class SavesInForward(Clean):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.marker)
        return twoChannels(x)


class Inner(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.marker)
        return x


class SavesInSubmodule(Clean):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.inner = Inner(marker)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No free function here: the submodule's method is found by its own walk, not by inlining.
        y = self.inner(x)
        return torch.softmax(torch.cat([torch.zeros_like(y[:, :1]), 20.0 * (y[:, :1] - 0.5)], dim=1), dim=1)


class SavesInSecondMethod(Clean):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    @torch.jit.export
    def export(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.marker)
        return x


class ReadsAFile(Clean):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.path = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() < -1e30:
            x = x + torch.from_file(self.path, size=1).float().sum()
        return twoChannels(x)


def saveAside(x: torch.Tensor, path: str) -> torch.Tensor:
    torch.save(x, path)
    return x


class CallsAFunction(Clean):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return twoChannels(saveAside(x, self.marker))


class Prints(Clean):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("payload")
        return twoChannels(x)


class SavesWhileLoading(Clean):
    """Whose ``__setstate__`` (run by ``torch.jit.load`` itself) writes the marker."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.weight = torch.nn.Parameter(torch.ones(1))

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0]
        self.marker = state[1]
        self.training = state[2]
        torch.save(state[0], state[1])


# [the network's class, the operator and method the refusal names]
HOSTILE = {
    "forward": (SavesInForward, "'aten::save' in forward"),
    "submodule": (SavesInSubmodule, "'aten::save' in inner.forward"),
    "second-method": (SavesInSecondMethod, "'aten::save' in export"),
    "from-file": (ReadsAFile, "'aten::from_file' in forward"),
    "print": (Prints, "'prim::Print' in forward"),
    "setstate": (SavesWhileLoading, "defines __setstate__"),
}


@pytest.fixture()
def a_workspace(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "thesis.docx").write_text("four years of work")
    (tmp_path / "card.json").write_text(json.dumps(CARD))
    (tmp_path / "card-localizer.json").write_text(json.dumps({**CARD, "localizer": LOCALIZER}))
    torch.jit.save(torch.jit.script(Clean()), str(tmp_path / "clean.pt"))
    return {"folder": tmp_path, "marker": tmp_path / "MARKER"}


def hostile(workspace, kind: str) -> str:
    """The hostile network saved as TorchScript (without running it); returns its path."""
    path = workspace["folder"] / f"{kind}.pt"
    network, _ = HOSTILE[kind]
    module = network(str(workspace["marker"])) if network.__init__ is not Clean.__init__ else network()
    torch.jit.save(torch.jit.script(module), str(path))
    if workspace["marker"].exists():
        workspace["marker"].unlink()  # torch.jit.save calls __getstate__ only; keep the check honest
    return str(path)


def withCard(workspace, kind: str) -> str:
    """The hostile network as a MedSegUNet model file (its card inside), written without loading it."""
    import zipfile

    source, path = hostile(workspace, kind), workspace["folder"] / f"{kind}-model.pt"
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(path, "w") as output:
        root = archive.namelist()[0].split("/")[0]
        for member in archive.infolist():
            output.writestr(member, archive.read(member))
        output.writestr(f"{root}/extra/{modelcard.CARD_EXTRA_FILE}", json.dumps(CARD))
    return str(path)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_import_refuses_a_hostile_network(capsys, a_workspace, kind):
    folder = a_workspace["folder"]
    runRefused(
        capsys,
        ["import", hostile(a_workspace, kind), "--card", str(folder / "card.json"), "--output", str(folder / "out.pt")],
        a_workspace,
        HOSTILE[kind][1],
    )


@pytest.mark.parametrize("kind", ["forward", "setstate"])
def test_import_refuses_a_hostile_localiser(capsys, a_workspace, kind):
    folder = a_workspace["folder"]
    argv = [
        "import",
        str(folder / "clean.pt"),
        "--card",
        str(folder / "card-localizer.json"),
        "--localizer",
        hostile(a_workspace, kind),
        "--output",
        str(folder / "out.pt"),
    ]
    runRefused(capsys, argv, a_workspace, HOSTILE[kind][1])


@pytest.mark.parametrize("kind", ["forward", "submodule", "second-method", "setstate"])
def test_segment_refuses_a_hostile_model_file(capsys, a_workspace, kind):
    folder = a_workspace["folder"]
    model = withCard(a_workspace, kind)
    _writeVolume(folder / "t1.nrrd")
    runRefused(
        capsys, ["segment", "--model", model, str(folder / "t1.nrrd"), "--output", str(folder / "mask.nrrd")], a_workspace, HOSTILE[kind][1]
    )


def _writeVolume(path: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.random.default_rng(0).random((12, 14, 16)).astype(np.float32))
    sitk.WriteImage(image, str(path))


def test_a_hostile_localiser_inside_a_model_file_is_refused_before_it_loads(a_workspace):
    """The localiser stored in a model file goes through the same check (here: code run by loading)."""
    import io

    folder = a_workspace["folder"]
    buffer = io.BytesIO(Path(hostile(a_workspace, "setstate")).read_bytes())
    with pytest.raises(MedSegUNetError, match="defines __setstate__"):
        graphsafety.loadCheckedTorchScript(buffer.getvalue(), "cpu", "The localiser")
    assert not a_workspace["marker"].exists()
    assert not list(folder.glob("*.tmp*"))


def test_pull_refuses_a_hostile_url_source_and_caches_nothing(capsys, a_workspace, a_file_server, monkeypatch):
    from MedSegUNetLib.engine.paths import sha256
    from MedSegUNetLib.models import catalog

    served, url = a_file_server
    source = Path(hostile(a_workspace, "forward"))
    (served / "model.pt").write_bytes(source.read_bytes())
    entry = {"name": "hostile", "card": CARD, "source": {"url": url + "model.pt", "sha256": sha256(source)}}
    (a_workspace["folder"] / "catalog.json").write_text(json.dumps({"schema": catalog.SCHEMA, "models": [entry]}))
    cache = a_workspace["folder"].parent / (a_workspace["folder"].name + "-cache")
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(a_workspace["folder"] / "catalog.json"))
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(cache))
    runRefused(capsys, ["models", "pull", "hostile"], a_workspace, "'aten::save' in forward")
    assert not [path for path in cache.rglob("*") if path.is_file()] if cache.exists() else True


def test_the_worker_refuses_a_hostile_model_and_lives_on(a_workspace):
    """A worker request naming a hostile model file gets an error answer; the worker answers the next."""
    folder = a_workspace["folder"]
    model = withCard(a_workspace, "forward")
    _writeVolume(folder / "t1.nrrd")
    requests = [
        {
            "id": 1,
            "command": "segment",
            "folder": str(folder),
            "request": {"modelPath": model, "device": "cpu", "useROI": False, "marginMM": 0.0},
            "inputs": [{"file": "t1.nrrd", "name": "t1", "inputName": "T1"}],
            "roi": [],
        },
        ["not", "an", "object"],
        {"id": 3, "command": "segment", "folder": str(folder)},
        {"id": 4, "command": "ping"},
    ]
    from MedSegUNetLib.slicer.worker import PROTOCOL_PREFIX

    # The worker ends at the end of its input, so the requests go one by one, each answer awaited.
    worker = subprocess.Popen(
        [sys.executable, "-m", "MedSegUNetLib.slicer.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO_ROOT)
    )
    answers = []
    try:
        for request in requests:
            worker.stdin.write(json.dumps(request) + "\n")
            worker.stdin.flush()
            while True:
                line = worker.stdout.readline()
                assert line.startswith(PROTOCOL_PREFIX.decode("ascii")), line
                answers.append(json.loads(line[len(PROTOCOL_PREFIX) :]))
                if "result" in answers[-1] or "error" in answers[-1]:
                    break
    finally:
        worker.stdin.close()
        worker.wait(timeout=60)
    # The stdin thread answers a malformed line at once, so answers come by id, not in order.
    final = {answer.get("id"): answer for answer in answers if "result" in answer or "error" in answer}
    assert final[1]["kind"] == "user" and "calls 'aten::save' in forward" in final[1]["error"], final
    assert final[None]["kind"] == "user" and "not a JSON object" in final[None]["error"], final
    assert final[3]["kind"] == "user" and "'inputs'" in final[3]["error"], final
    assert final[4]["result"]["pid"] > 0, final
    assert not a_workspace["marker"].exists() and not (folder / "labelmap.nrrd").exists()


def test_the_zoo_and_monai_networks_pass_the_allow_list(repo_root):
    """Every shipped zoo model (and its localiser), and MONAI's scriptable segmentation networks."""
    import monai.networks.nets as nets

    for path in sorted((repo_root / "MedSegUNet" / "Resources" / "Models").glob("*/*.pt")):
        assert graphsafety.forbiddenOperators(torch.jit.load(str(path))) == [], path
        modelcard.clearModelCache()
        assert modelcard.loadModel(path, "cpu").network is not None
    networks = [
        nets.UNet(3, 1, 2, (8, 16, 32), (2, 2), num_res_units=2),
        nets.UNet(2, 1, 2, (8, 16), (2,), norm="batch", dropout=0.1),
        nets.BasicUNet(3, 1, 2),
        nets.SegResNet(3, 8, 1, 2),
        nets.SegResNetDS(3, 8, 1, 2),
        nets.DynUNet(3, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2]),
        nets.AttentionUnet(3, 1, 2, (8, 16, 32), (2, 2)),
        nets.VNet(3, 1, 2),
        nets.HighResNet(3, 1, 2),
    ]
    for network in networks:
        assert graphsafety.forbiddenOperators(torch.jit.script(network.eval())) == [], type(network).__name__


def test_the_allow_list_is_the_registry_less_what_reaches_outside_the_tensors():
    allowed = graphsafety.allowedOperators()
    assert len(allowed) > 1500
    for name in ("aten::conv3d", "aten::roll", "aten::grid_sampler", "aten::scaled_dot_product_attention", "aten::_set_item", "prim::If"):
        assert name in allowed, name
    refused = {f"aten::{name}" for name in graphsafety.DENIED_ATEN} | {
        "prim::Print",
        "prim::PythonOp",
        "prim::CallFunction",
        "prim::CallMethod",
        "prim::rpc_async",
    }
    assert not refused & allowed


def test_an_archive_in_memory_is_walked_once_per_digest(a_workspace, monkeypatch):
    """A localiser's bytes are checked once per SHA256 in a process; the same bytes again are not walked."""
    data = (a_workspace["folder"] / "clean.pt").read_bytes()
    walked = []
    original = graphsafety.forbiddenOperators
    monkeypatch.setattr(graphsafety, "forbiddenOperators", lambda module: walked.append(1) or original(module))
    monkeypatch.setattr(graphsafety, "_CHECKED", set())
    graphsafety.loadCheckedTorchScript(data, "cpu", "The localiser")
    graphsafety.loadCheckedTorchScript(bytes(data), "cpu", "The localiser")
    assert len(walked) == 1


def test_a_forbidden_call_inside_a_free_function_is_found(a_workspace):
    """A graph that calls a scripted free function is walked inlined: the function's own operators count."""
    folder = a_workspace["folder"]
    module = torch.jit.script(CallsAFunction(str(a_workspace["marker"])))
    assert graphsafety.forbiddenOperators(module) == [("aten::save", "forward")]
    assert not a_workspace["marker"].exists()
    assert not list(folder.glob("*.tmp*"))
