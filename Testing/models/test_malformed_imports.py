"""Malformed model files and archives are one line each, never ``internal error``: ONNX graphs with
no outputs, a Conv without weights, a tensor without data, string weights, a 0-byte file; zips that
are not zips, fail their CRC, hold an encrypted member or inflate past their budget; model files
whose card member would inflate to far more than a card; labels tables in the encodings people
save; grids larger than the memory."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from conftest import errorLines, treeDigest
from MedSegUNetLib import cli
from MedSegUNetLib.engine.errors import MedSegUNetError

onnx = pytest.importorskip("onnx", reason="the import extra is not installed")

from test_importing import auto3dsegCheckpoint, exportONNX, writeCard  # noqa: E402


def oneLine(capsys, argv, folder: Path, expected: str) -> str:
    """Run the command; exit 2, one line holding ``expected``, nothing written in ``folder``."""
    before = treeDigest(folder)
    assert cli.main(argv) == 2
    err = errorLines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("medsegunet: error:") and "internal error" not in err[0], err
    assert expected in err[0], err[0]
    assert treeDigest(folder) == before
    return err[0]


def damaged(model, how: str):
    """An exported ONNX graph damaged one way (as a download, a bug or a hand can leave it)."""
    from onnx import TensorProto

    graph = model.graph
    if how == "no-outputs":
        del graph.output[:]
    elif how == "conv-without-weights":
        conv = next(node for node in graph.node if node.op_type == "Conv")
        del conv.input[1:]
    elif how == "tensor-without-data":
        initializer = max(graph.initializer, key=lambda tensor: len(tensor.raw_data))
        initializer.raw_data = initializer.raw_data[: len(initializer.raw_data) // 2]
    elif how == "string-weights":
        initializer = max(graph.initializer, key=lambda tensor: len(tensor.raw_data))
        count = 1
        for dim in initializer.dims:
            count *= dim
        initializer.ClearField("raw_data")
        initializer.data_type = TensorProto.STRING
        initializer.string_data.extend([b"w"] * count)
    return model


# [how the graph is damaged, the words of the one line]
ONNX_FAULTS = [
    ("no-outputs", "with no outputs"),
    ("conv-without-weights", "are computed in the graph, not stored"),
    ("tensor-without-data", "cannot be read"),
    ("string-weights", "not numbers"),
]


@pytest.mark.parametrize("how, expected", ONNX_FAULTS, ids=[case[0] for case in ONNX_FAULTS])
def test_a_malformed_onnx_graph_is_one_line(capsys, tmp_path, how, expected):
    exportONNX(tmp_path / "good.onnx")
    model = damaged(onnx.load(str(tmp_path / "good.onnx")), how)
    onnx.save(model, str(tmp_path / "model.onnx"))
    card = writeCard(tmp_path / "card.json")
    oneLine(capsys, ["import", str(tmp_path / "model.onnx"), "--card", card, "--output", str(tmp_path / "m.pt")], tmp_path, expected)


def test_a_zero_byte_onnx_is_one_line(capsys, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    card = writeCard(tmp_path / "card.json")
    oneLine(
        capsys, ["import", str(tmp_path / "model.onnx"), "--card", card, "--output", str(tmp_path / "m.pt")], tmp_path, "is empty (0 bytes)"
    )


def brokenZips(folder: Path) -> dict[str, Path]:
    """A file that is no zip, a zip whose member fails its CRC, and one with an encrypted member."""
    (folder / "not.zip").write_bytes(b"<html>404 Not Found</html>")
    with zipfile.ZipFile(folder / "crc.zip", "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("bundle/configs/inference.json", "{}" * 100)
    data = bytearray((folder / "crc.zip").read_bytes())
    at = data.index(b"{}{}")
    data[at] = ord("[")  # one byte of the stored member changed: its CRC no longer holds
    (folder / "crc.zip").write_bytes(bytes(data))
    with zipfile.ZipFile(folder / "encrypted.zip", "w") as archive:
        archive.writestr("bundle/configs/inference.json", "{}")
    data = bytearray((folder / "encrypted.zip").read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the encryption flag, in both headers
        at = data.index(signature)
        data[at + offset] |= 0x1
    (folder / "encrypted.zip").write_bytes(bytes(data))
    return {name: folder / f"{name}.zip" for name in ("not", "crc", "encrypted")}


@pytest.mark.parametrize("name, expected", [("not", "not a readable zip archive"), ("crc", "Bad CRC-32"), ("encrypted", "encrypted")])
def test_a_broken_bundle_zip_is_one_line(tmp_path, name, expected):
    from MedSegUNetLib.models.sources import extractBundle

    archive = brokenZips(tmp_path)[name]
    with pytest.raises(MedSegUNetError, match=expected):
        extractBundle(str(archive), str(tmp_path / "unpacked"))
    assert not [path for path in (tmp_path / "unpacked").rglob("*") if path.is_file()] if (tmp_path / "unpacked").exists() else True


@pytest.mark.parametrize("name, expected", [("not", "not a readable zip archive"), ("crc", "Bad CRC-32"), ("encrypted", "encrypted")])
def test_a_broken_bundle_zip_from_the_catalog_is_one_line_and_caches_nothing(capsys, tmp_path, monkeypatch, a_file_server, name, expected):
    from MedSegUNetLib.engine.paths import sha256
    from MedSegUNetLib.models import catalog

    served, url = a_file_server
    archive = brokenZips(served)[name]
    entry = {"name": "bundle", "source": {"url": url + archive.name, "sha256": sha256(archive)}}
    (tmp_path / "catalog.json").write_text(json.dumps({"schema": catalog.SCHEMA, "models": [entry]}))
    monkeypatch.setenv("MEDSEGUNET_CATALOG", str(tmp_path / "catalog.json"))
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    oneLine(capsys, ["models", "pull", "bundle"], tmp_path, expected)


def test_a_bundle_member_that_inflates_past_its_budget_is_not_unpacked(tmp_path):
    """10 MiB of zeros in a 10 kB zip, against a budget of 1 MiB: stopped while streaming."""
    from MedSegUNetLib.models.sources import extractBundle

    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bundle/configs/inference.json", "{}")
        archive.writestr("bundle/models/model.pt", b"\0" * (10 * 2**20))
    assert (tmp_path / "bomb.zip").stat().st_size < 100_000
    with pytest.raises(MedSegUNetError, match="inflates to more than 1.0 MiB"):
        extractBundle(str(tmp_path / "bomb.zip"), str(tmp_path / "unpacked"), maxBytes=2**20)
    assert sum(path.stat().st_size for path in (tmp_path / "unpacked").rglob("*") if path.is_file()) <= 2**20


def test_a_bundle_without_declared_bytes_may_inflate_twenty_fold_at_most(tmp_path):
    """No ``bytes`` in the entry: 100 MiB of zeros in a 100 kB zip pass the 64 MiB floor of 20 × its size."""
    from MedSegUNetLib.models.sources import extractBundle, inflationCap

    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bundle/configs/inference.json", "{}")
        archive.writestr("bundle/models/model.pt", b"\0" * (100 * 2**20))
    assert inflationCap(tmp_path / "bomb.zip") == 64 * 2**20
    with pytest.raises(MedSegUNetError, match="inflates to more than 64.0 MiB"):
        extractBundle(str(tmp_path / "bomb.zip"), str(tmp_path / "unpacked"))


def test_a_member_whose_declared_size_lies_is_stopped_at_the_budget(tmp_path):
    """A member that declares 100 bytes but inflates to 10 MiB: zipfile stops at the declared size and
    the CRC fails; the budget holds whatever the header says."""
    from MedSegUNetLib.engine.archives import ExtractionBudget, extractMember, openArchive

    with zipfile.ZipFile(tmp_path / "liar.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.bin", b"\0" * (10 * 2**20))
    data = bytearray((tmp_path / "liar.zip").read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size fields
        at = data.index(signature)
        data[at + offset : at + offset + 4] = (100).to_bytes(4, "little")
    (tmp_path / "liar.zip").write_bytes(bytes(data))
    with pytest.raises(MedSegUNetError) as error:
        with openArchive(tmp_path / "liar.zip", "The archive") as archive:
            extractMember(archive, archive.infolist()[0], str(tmp_path / "out.bin"), ExtractionBudget(tmp_path, 2**20), "The archive")
    assert "Bad CRC-32" in str(error.value) or "inflates" in str(error.value)
    assert not (tmp_path / "out.bin").exists()


def test_a_model_file_whose_card_would_inflate_to_a_gigabyte_is_refused_unread(capsys, tmp_path, a_tiny_unet):
    """``info`` reads at most 1 MiB of card: a 1 GiB member (a 1 MB file) is refused by its size."""
    with zipfile.ZipFile(a_tiny_unet) as source, zipfile.ZipFile(tmp_path / "model.pt", "w", zipfile.ZIP_DEFLATED) as output:
        for member in source.infolist():
            if not member.filename.endswith("/extra/medsegunet.json"):
                output.writestr(member, source.read(member))
        root = source.namelist()[0].split("/")[0]
        with output.open(f"{root}/extra/medsegunet.json", "w", force_zip64=True) as stream:
            block = b" " * 2**20
            for _ in range(1024):
                stream.write(block)
    assert (tmp_path / "model.pt").stat().st_size < 5 * 2**20
    oneLine(capsys, ["info", str(tmp_path / "model.pt")], tmp_path, "inflates to more than 1.0 MiB")


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8-sig", "utf-16", "cp1252"])
def test_an_auto3dseg_labels_table_in_any_common_encoding_imports(tmp_path, encoding):
    from MedSegUNetLib.models.importing import readLabels

    (tmp_path / "labels.csv").write_bytes("value,name\n1,Läsion\n2,Ödem\n".encode(encoding))
    labels = readLabels(str(tmp_path / "labels.csv"))
    assert [(label["value"], label["name"]) for label in labels] == [(1, "Läsion"), (2, "Ödem")]


def test_an_auto3dseg_import_with_a_latin1_labels_table_writes_its_names(capsys, tmp_path):
    from MedSegUNetLib.engine.modelcard import readCard

    auto3dsegCheckpoint(tmp_path / "model.pt")
    (tmp_path / "labels.csv").write_bytes("value,name\n1,Läsion\n2,Ödem\n".encode("latin-1"))
    assert (
        cli.main(["import", str(tmp_path / "model.pt"), "--labels", str(tmp_path / "labels.csv"), "--output", str(tmp_path / "out.pt")])
        == 0
    )
    assert [label["name"] for label in readCard(tmp_path / "out.pt")["labels"]] == ["Läsion", "Ödem"]


def test_a_grid_larger_than_the_memory_is_refused_with_the_figure(capsys, tmp_path):
    """A card whose fixed grid is 1024³ voxels of 8 inputs (128 GiB with its copies): refused before the
    random input is allocated."""
    import torch
    from test_torchscript_safety import CARD, Clean

    torch.jit.save(torch.jit.script(Clean()), str(tmp_path / "model.pt"))
    (tmp_path / "card.json").write_text(
        json.dumps({**CARD, "inputs": [{"name": f"T{index}"} for index in range(8)], "grid": {"shape": [1024, 1024, 1024]}})
    )
    line = oneLine(
        capsys,
        ["import", str(tmp_path / "model.pt"), "--card", str(tmp_path / "card.json"), "--output", str(tmp_path / "out.pt")],
        tmp_path,
        "GiB",
    )
    assert "memory" in line
