"""Model cards: schema validation, embedded card vs sidecar, and the per-process model cache."""

from __future__ import annotations

import copy
import json
import os
import sys
import zipfile

import pytest

from conftest import TINY_UNET_CARD
from MedSegUNetLib.engine import modelcard
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.models import phantoms


def card(**changes) -> dict:
    value = copy.deepcopy(TINY_UNET_CARD)
    for key, new in changes.items():
        if new is None and key.startswith("drop_"):
            value.pop(key[5:])
        else:
            value[key] = new
    return value


# [parameters (card change), input shape (—), expected (field named in the one-line error)]
INVALID_CARDS = [
    pytest.param(dict(drop_labels=None), "(top level)", "'labels' is a required property", id="missing-labels"),
    pytest.param(dict(schema="medsegunet.model/5"), "schema", "'medsegunet.model/5' is not one of", id="wrong-schema"),
    pytest.param(dict(spatial_dims=4), "spatial_dims", "4 is not one of", id="spatial-dims"),
    pytest.param(dict(inputs=[]), "inputs", "should be non-empty", id="no-inputs"),
    pytest.param(dict(labels=[{"value": 1, "name": "gland", "color": [1.0, 1.5, 0.0]}]), "labels/0/color/1", "1.5", id="colour-range"),
    pytest.param(dict(labels=[{"value": 0, "name": "bg", "color": [0, 0, 0]}]), "labels/0/value", "minimum", id="background-listed"),
    pytest.param(dict(output="linear"), "output", "'linear' is not one of", id="output"),
    pytest.param(dict(orientation="XYZ"), "orientation", "XYZ", id="orientation"),
    pytest.param(dict(spacing=[1.0, 1.0]), "spacing", "", id="spacing-length"),
    pytest.param(dict(normalization={"type": "histogram"}), "normalization/type", "histogram", id="normalization"),
    # A misspelt key would leave the default (5th percentile) in force without a word.
    pytest.param(
        dict(normalization={"type": "percentile", "lowr": 1}), "normalization", "('lowr' was unexpected)", id="normalization-misspelt-key"
    ),
    pytest.param(dict(threshold=1.5), "threshold", "1.5", id="threshold"),
    pytest.param(dict(patch_size=[0, 32, 8]), "patch_size", "", id="patch-size-zero"),
]


@pytest.mark.parametrize("validator", ["jsonschema", "standard-library"])
@pytest.mark.parametrize("changes, field, detail", INVALID_CARDS)
def test_invalid_card_is_one_line_naming_the_field(monkeypatch, changes, field, detail, validator):
    if validator == "standard-library":
        monkeypatch.setitem(sys.modules, "jsonschema", None)  # as in a fresh Slicer
    with pytest.raises(MedSegUNetError) as error:
        modelcard.validateCard(card(**changes), "model card 'm.pt'")
    message = str(error.value)
    assert "\n" not in message
    assert f"field '{field}'" in message and detail in message and "model card 'm.pt'" in message


def test_both_validators_agree_on_every_zoo_card_and_field(repo_root):
    """The stdlib check accepts every zoo card and finds the same fields as jsonschema on broken ones."""
    for path in sorted((repo_root / "MedSegUNet" / "Resources" / "Models").glob("*/*.pt")):
        good = json.loads(modelcard._embeddedCardText(str(path)))
        assert modelcard.schemaErrors(good, useJsonschema=False) == [] == modelcard.schemaErrors(good, useJsonschema=True)
    for parameters in INVALID_CARDS:
        broken = card(**parameters.values[0])
        fields = lambda errors: sorted({where for where, _ in errors})  # noqa: E731
        assert fields(modelcard.schemaErrors(broken, useJsonschema=False)) == fields(modelcard.schemaErrors(broken, useJsonschema=True)), (
            parameters.id
        )


def test_rules_beyond_the_schema():
    labels = [{"value": 1, "name": "a", "color": [0, 0, 0]}, {"value": 1, "name": "b", "color": [0, 0, 0]}]
    with pytest.raises(MedSegUNetError, match="label values must be unique"):
        modelcard.validateCard(card(labels=labels))
    with pytest.raises(MedSegUNetError, match="patch_size needs 3 values for a 3D model"):
        modelcard.validateCard(card(patch_size=[32, 32]))
    with pytest.raises(MedSegUNetError, match="patch_size needs 2 values for a 2D model"):
        modelcard.validateCard(card(spatial_dims=2, patch_size=[32, 32, 8]))


def test_defaults_are_filled_in():
    minimal = {key: TINY_UNET_CARD[key] for key in ("schema", "name", "spatial_dims", "inputs", "labels", "output")}
    full = modelcard.validateCard(minimal)
    assert full["threshold"] == 0.5 and full["spacing"] is None and full["orientation"] is None
    assert full["normalization"] == {"type": "zscore", "nonzero": True}
    assert full["patch_size"] is None and full["overlap"] == 0.25
    assert modelcard.validateCard(card(spacing=[None, None, None]))["spacing"] is None
    assert minimal == {key: TINY_UNET_CARD[key] for key in minimal}  # the input is not changed


@pytest.mark.parametrize("output, labels, expected", [("softmax", 1, 2), ("softmax", 3, 4), ("sigmoid", 2, 2)])
def test_output_channels(output, labels, expected):
    value = card(output=output, labels=[{"value": v + 1, "name": f"l{v}", "color": [0, 0, 0]} for v in range(labels)])
    assert modelcard.outputChannels(modelcard.validateCard(value)) == expected


def test_card_summary_lines():
    summary = modelcard.cardSummary(modelcard.validateCard(card(spacing=[1.0, None, 3.0], orientation="RAS")))
    assert summary.splitlines()[0] == "Tiny test UNet (3D, softmax)"
    assert "Inputs: T2" in summary and "Labels: 1 gland" in summary
    assert "Spacing: 1 × ref × 3 mm; orientation: RAS; normalisation: zscore" in summary
    fixed = modelcard.validateCard(
        card(schema="medsegunet.model/3", drop_spacing=None, grid={"shape": [256, 256, 128], "interpolation": "nearest"}, orientation="RAS")
    )
    assert "Grid: 256 × 256 × 128 voxels over the ROI (nearest); orientation: RAS" in modelcard.cardSummary(fixed)


def test_embedded_card_round_trip(a_tiny_unet):
    read = modelcard.readCard(a_tiny_unet)
    assert read == modelcard.validateCard(TINY_UNET_CARD)
    with zipfile.ZipFile(a_tiny_unet) as archive:
        names = [n for n in archive.namelist() if n.endswith("/extra/medsegunet.json")]
    assert len(names) == 1


def test_sidecar_overrides_embedded(tmp_path, a_tiny_unet):
    path = tmp_path / "model.pt"
    path.write_bytes(open(a_tiny_unet, "rb").read())
    sidecar = tmp_path / "model.pt.json"
    sidecar.write_text(json.dumps(card(name="From the sidecar", patch_size=[16, 16, 4])))
    read = modelcard.readCard(path)
    assert read["name"] == "From the sidecar" and read["patch_size"] == [16, 16, 4]
    assert modelcard.loadModel(path, "cpu").card["name"] == "From the sidecar"
    sidecar.write_text("{not json")
    with pytest.raises(MedSegUNetError, match="is not valid JSON"):
        modelcard.readCard(path)
    sidecar.write_text(json.dumps(card(output="maybe")))
    with pytest.raises(MedSegUNetError, match=r"model card '.*model\.pt\.json': field 'output'"):
        modelcard.readCard(path)


def test_model_without_card_or_not_torchscript(tmp_path):
    import torch

    bare = tmp_path / "bare.pt"
    torch.jit.save(phantoms.thresholdModule((0.5,)), str(bare))
    with pytest.raises(MedSegUNetError, match="has no 'medsegunet.json' card"):
        modelcard.readCard(bare)
    text = tmp_path / "weights.pt"
    text.write_text("not a model")
    with pytest.raises(MedSegUNetError, match=r"is not a model file \(TorchScript .pt or torch.export .pt2\)"):
        modelcard.readCard(text)
    with pytest.raises(MedSegUNetError, match="does not exist"):
        modelcard.readCard(tmp_path / "absent.pt")


def test_save_model_validates_before_writing(tmp_path):
    with pytest.raises(MedSegUNetError, match="field 'output'"):
        modelcard.saveModel(phantoms.thresholdModule((0.5,)), card(output="linear"), tmp_path / "m.pt")
    assert os.listdir(tmp_path) == []


def test_load_model_is_cached_and_reloads_after_change(tmp_path):
    path = tmp_path / "cached.pt"
    thresholdCard = phantoms.thresholdCard([(1, "a", (1, 0, 0))])
    phantoms.writeThresholdModel(path, (0.5,), thresholdCard)
    first = modelcard.loadModel(path, "cpu")
    assert modelcard.loadModel(path, "cpu") is first
    assert modelcard.loadModel(str(path), "cpu") is first
    assert str(first.device) == "cpu" and first.spatialDims == 3
    # Re-export: a new file (and modification time) means a new network in memory.
    phantoms.writeThresholdModel(path, (0.7,), thresholdCard)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = modelcard.loadModel(path, "cpu")
    assert second is not first
    assert float(second.network.levels[0]) == pytest.approx(0.7)
    assert modelcard.loadModel(path, "cpu") is second


def test_unloadable_archive_is_a_clear_error(tmp_path, a_tiny_unet):
    # A zip with a card but no TorchScript code.
    path = tmp_path / "broken.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("broken/extra/medsegunet.json", json.dumps(TINY_UNET_CARD))
    with pytest.raises(MedSegUNetError, match="Cannot load TorchScript model"):
        modelcard.loadModel(path, "cpu")


def test_resolve_device():
    import torch

    assert str(modelcard.resolveDevice("cpu")) == "cpu"
    assert modelcard.resolveDevice("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(MedSegUNetError, match="Unknown device 'tpu'"):
        modelcard.resolveDevice("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MedSegUNetError, match="no CUDA GPU"):
            modelcard.resolveDevice("cuda")


def test_schema_file_is_published():
    schema = modelcard.loadSchema()
    # Cards the exporters write are version 3; version 4 adds the nnU-Net configuration (imports only).
    assert schema["properties"]["schema"]["enum"] == ["medsegunet.model/1", "medsegunet.model/2", modelcard.SCHEMA_ID, "medsegunet.model/4"]
    assert modelcard.SCHEMA_ID == "medsegunet.model/3"
    assert set(schema["required"]) >= {"name", "spatial_dims", "inputs", "labels", "output"}


def test_version_1_cards_are_read_and_version_2_fields_need_version_2():
    version1 = card()
    assert modelcard.validateCard(version1)["schema"] == "medsegunet.model/1"
    with pytest.raises(MedSegUNetError, match="field 'blend' needs .*medsegunet.model/2"):
        modelcard.validateCard(card(blend="logits"))
    version2 = card(
        schema="medsegunet.model/2",
        blend="logits",
        tta="flips",
        postprocessing={"logit_smoothing_sigma": 2.5, "largest_component": [1], "fill_holes": True, "min_component_mm3": 50},
    )
    full = modelcard.validateCard(version2)
    assert full["blend"] == "logits" and full["postprocessing"]["largest_component"] == [1]
    for bad, field in (
        (dict(blend="mean"), "blend"),
        (dict(tta="rotations"), "tta"),
        (dict(postprocessing={"fill_holes": "yes"}), "postprocessing/fill_holes"),
    ):
        with pytest.raises(MedSegUNetError, match=f"field '{field}'"):
            modelcard.validateCard(card(schema="medsegunet.model/2", **bad))


# [parameters (a label's terminology), input (Slicer's TerminologyEntry tag made from it), expected (the codes read back)]
@pytest.mark.parametrize(
    "terminology",
    [
        {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "41216001", "Prostate"]},
        {
            "category": ["SCT", "123037004", "Anatomical Structure"],
            "type": ["SCT", "279706003", "Peripheral zone of prostate"],
            "type_modifier": ["SCT", "7771000", "Left"],
            "anatomic_region": ["SCT", "41216001", "Prostate"],
            "anatomic_region_modifier": ["SCT", "24028007", "Right"],
        },
    ],
)
def test_terminology_entry_reads_back(terminology):
    from MedSegUNetLib.engine.terminology import terminologyEntry, terminologyFromEntry

    assert terminologyFromEntry(terminologyEntry({"terminology": terminology})) == terminology
    assert terminologyFromEntry(None) is None and terminologyFromEntry("context~^^~^^~^^~anatomic~^^~^^") is None
