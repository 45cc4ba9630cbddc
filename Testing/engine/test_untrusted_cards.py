"""Model cards are checked like the command line: every number finite and within physical bounds,
names free of control characters; unicode names are kept (UTF-8 in NRRD, CSV and JSON).

Each refused card is a sidecar ``MODEL.pt.json`` beside a real threshold model: ``segment`` exits 2
with one line naming the field, and writes nothing.
"""

from __future__ import annotations

import json
import math

import pytest
import SimpleITK as sitk

from conftest import smallObliquePhantom
from MedSegUNetLib import cli
from MedSegUNetLib.engine import outputs
from MedSegUNetLib.engine.modelcard import saveModel
from MedSegUNetLib.models import phantoms


@pytest.fixture
def a_card_world(tmp_path):
    sitk.WriteImage(smallObliquePhantom(), str(tmp_path / "t2.nrrd"))
    card = phantoms.thresholdCard([(1, "bright", (1.0, 1.0, 0.0))], inputs=("T2",))
    card["schema"] = "medsegunet.model/2"
    saveModel(phantoms.thresholdModule((0.5,)), card, tmp_path / "m.pt")
    return {"folder": tmp_path, "card": card, "model": tmp_path / "m.pt"}


def _withSidecar(world, change) -> str:
    card = json.loads(json.dumps(world["card"]))
    change(card)
    # json.dumps writes NaN and Infinity, which Python's json reads back: the card must refuse them.
    (world["folder"] / "m.pt.json").write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")
    return str(world["model"])


def _set(path, value):
    def change(card):
        node = card
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
        node[path[-1]] = value

    return change


# [parameters: the card field and its value, expected: words of the one line]
FAULTS = [
    (("threshold",), math.nan, "not a finite number"),
    (("overlap",), math.inf, "not a finite number"),
    (("spacing",), [1.0, 1.0, math.nan], "not a finite number"),
    (("spacing",), [1e-4, 1e-4, 1e-4], "field 'spacing': [0.0001, 0.0001, 0.0001] is not valid"),
    (("spacing",), [1.0, 1.0, 500.0], "field 'spacing': [1.0, 1.0, 500.0] is not valid"),
    (("overlap",), 0.99, "greater than the maximum of 0.95"),
    (("threshold",), 1.5, "greater than or equal to the maximum of 1"),
    (("roi", "margin_mm"), 1e6, "greater than the maximum of 1000"),
    (("roi", "context_mm"), -math.inf, "not a finite number"),
    (("size_divisible",), 10**9, "greater than the maximum of 256"),
    (("patch_size",), [2048, 2048, 2048], "voxels per batch"),
    (("normalization",), {"type": "percentile", "lower": 90, "upper": 10}, "lower percentile 90 is not below upper 10"),
    (("normalization",), {"type": "minmax", "b_min": 1.0, "b_max": 1.0}, "b_min and b_max are both 1"),
    (("labels", 0, "name"), "bright\nSegment0_Color:=0 0 0", "labels/0/name"),
    (("labels", 0, "name"), "a\x00b", "labels/0/name"),
    (("inputs", 0, "name"), "T2\r", "inputs/0/name"),
    (("labels", 0, "qc"), {"volume_ml": [50, 10]}, "is not a range"),
]


@pytest.mark.parametrize("path, value, expected", FAULTS, ids=[f"{'.'.join(map(str, p))}={str(v)[:20]!r}" for p, v, _ in FAULTS])
def test_a_card_out_of_bounds_is_one_line_and_writes_nothing(capsys, a_card_world, path, value, expected):
    model = _withSidecar(a_card_world, _set(path, value))
    out = a_card_world["folder"] / "seg.seg.nrrd"
    assert (
        cli.main(
            [
                "segment",
                "--model",
                model,
                str(a_card_world["folder"] / "t2.nrrd"),
                "--output",
                str(out),
                "--stats",
                str(a_card_world["folder"] / "s.csv"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error" not in err[0] and expected in err[0], err
    assert not out.exists() and not (a_card_world["folder"] / "s.csv").exists()


def test_a_spacing_that_fits_the_card_but_not_the_roi_is_refused(capsys, a_card_world, tmp_path):
    """0.01 mm is a valid spacing; over a 200 mm volume it asks for 10^13 voxels: refused before allocating."""
    big = sitk.Image(400, 400, 100, sitk.sitkFloat32)
    big.SetSpacing((0.5, 0.5, 2.0))
    sitk.WriteImage(big, str(tmp_path / "big.nrrd"))
    model = _withSidecar(a_card_world, _set(("spacing",), [0.01, 0.01, 0.01]))
    assert cli.main(["segment", "-q", "--model", model, str(tmp_path / "big.nrrd"), "--stats", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model grid would have" in err[0] and "budget" in err[0], err


def test_unicode_names_are_kept_in_every_output(capsys, a_card_world):
    name, inputName = "Prostata – Übergangszone 前列腺", "T2 ä"

    def change(card):
        card["labels"][0]["name"] = name
        card["inputs"][0]["name"] = inputName

    model = _withSidecar(a_card_world, change)
    folder = a_card_world["folder"]
    argv = [
        "segment",
        "-q",
        "--model",
        model,
        str(folder / "t2.nrrd"),
        "--output",
        str(folder / "s.seg.nrrd"),
        "--stats",
        str(folder / "s.csv"),
        "--stats-json",
        str(folder / "s.json"),
    ]
    assert cli.main(argv) == 0, capsys.readouterr().err
    # NRRD: UTF-8 in the header, as Slicer writes it; ITK reads it back the same.
    assert outputs.segmentNamesInHeader(str(folder / "s.seg.nrrd")) == [name]
    assert sitk.ReadImage(str(folder / "s.seg.nrrd")).GetMetaData("Segment0_Name") == name
    # slicerio reads the voxels and the segment (its NRRD reader keeps ASCII only in names).
    import slicerio

    segmentation = slicerio.read_segmentation(str(folder / "s.seg.nrrd"))
    assert len(segmentation["segments"]) == 1 and int((segmentation["voxels"] > 0).sum()) > 0
    table = (folder / "s.csv").read_text(encoding="utf-8").splitlines()
    assert table[1].startswith(name + ",") and f"Mean ({inputName})" in table[0]
    assert json.loads((folder / "s.json").read_text(encoding="utf-8"))["segments"][0]["name"] == name
