"""The typed card (engine/cardview.py): the card's JSON, read-only at every depth, with typed views
whose defaults live in one place; the JSON itself does not change."""

from __future__ import annotations

import copy
import json
import pickle
import re
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from MedSegUNetLib.engine.cardview import (
    DEFAULTS,
    READ_ONLY,
    GridSettings,
    InputSpec,
    LabelSpec,
    ModelCard,
    ROISettings,
    WindowSettings,
    cardView,
)
from MedSegUNetLib.engine.modelcard import CARD_EXTRA_FILE, loadModel, readCard, validateCard
from MedSegUNetLib.models import phantoms

ZOO = sorted((REPO_ROOT / "MedSegUNet" / "Resources" / "Models").glob("*/*.pt"))
LIBRARY = REPO_ROOT / "MedSegUNet" / "MedSegUNetLib"


def embeddedCard(path: Path) -> dict:
    """The card JSON as the model file holds it."""
    with zipfile.ZipFile(path) as archive:
        name = next(entry for entry in archive.namelist() if entry.endswith(f"extra/{CARD_EXTRA_FILE}"))
        return json.loads(archive.read(name))


@pytest.fixture
def a_card() -> ModelCard:
    card = phantoms.thresholdCard([(1, "gland", (0.9, 0.6, 0.2)), (2, "lesion", (1.0, 0.0, 0.0))], inputs=("T2", "ADC"))
    card["inputs"][0]["match"] = ["t2", "axial"]
    card["labels"][1]["qc"] = {"volume_ml": [0.1, 30]}
    card["roi"] = {"from_series": ["t2 sagittal", "t2 coronal"], "margin_mm": 5, "context_mm": 12.5}
    return validateCard(card)


@pytest.mark.parametrize("path", ZOO, ids=[path.parent.name for path in ZOO])
def test_a_zoo_card_reads_as_its_file_holds_it(path):
    card = readCard(path)
    written = embeddedCard(path)
    assert isinstance(card, ModelCard)
    # Every field of the file, unchanged; what the card adds are the schema's defaults, nothing else.
    assert {key: card[key] for key in written} == written
    assert set(card) - set(written) <= set(DEFAULTS) | {"activation"}
    # The JSON a card writes is the one it read: plain types, same text.
    assert json.dumps(card, sort_keys=True) == json.dumps(card.toJSON(), sort_keys=True)
    assert validateCard(card.toJSON()) == card


MUTATIONS = {
    "set a field": lambda card: card.__setitem__("name", "other"),
    "delete a field": lambda card: card.__delitem__("name"),
    "update": lambda card: card.update(name="other"),
    "setdefault": lambda card: card.setdefault("new", 1),
    "pop": lambda card: card.pop("name"),
    "clear": lambda card: card.clear(),
    "merge in place": lambda card: card.__ior__({"name": "other"}),
    "a label's name": lambda card: card["labels"][0].__setitem__("name", "other"),
    "append a label": lambda card: card["labels"].append({"value": 3}),
    "extend labels": lambda card: card["labels"].extend([]),
    "sort labels": lambda card: card["labels"].sort(),
    "a colour channel": lambda card: card["labels"][0]["color"].__setitem__(0, 0.0),
    "the ROI margin": lambda card: card["roi"].__setitem__("margin_mm", 0),
    "an input's words": lambda card: card["inputs"][0]["match"].append("cor"),
    "the normalisation": lambda card: card["normalization"].update(type="zscore"),
}


@pytest.mark.parametrize("mutate", MUTATIONS.values(), ids=list(MUTATIONS))
def test_a_card_is_read_only_at_every_depth(a_card, mutate):
    before = json.dumps(a_card, sort_keys=True)
    with pytest.raises(TypeError, match=re.escape(READ_ONLY)):
        mutate(a_card)
    assert json.dumps(a_card, sort_keys=True) == before


def test_a_plain_copy_is_editable_and_validates_again(a_card):
    edited = a_card.toJSON()
    assert type(edited) is dict and type(edited["labels"]) is list and type(edited["labels"][0]["color"]) is list
    edited["roi"]["margin_mm"] = 7
    assert validateCard(edited).roi.marginMM == 7.0
    assert a_card.roi.marginMM == 5.0


def test_a_card_survives_pickle_and_copies_unchanged(a_card):
    # Pickled to the worker and to Ray tasks; copied by callers that used to edit a dict.
    for copied in (pickle.loads(pickle.dumps(a_card)), copy.deepcopy(a_card), copy.copy(a_card)):
        assert isinstance(copied, ModelCard) and copied == a_card and copied.roi == a_card.roi
        with pytest.raises(TypeError):
            copied["labels"][0]["name"] = "other"


def test_the_typed_views_read_the_card(a_card):
    assert a_card.name == "Known-answer threshold model" and a_card.spatialDims == 3 and a_card.exclusive
    assert a_card.inputs == (InputSpec("T2", "", ("t2", "axial")), InputSpec("ADC"))
    assert a_card.inputNames == ["T2", "ADC"]
    assert a_card.labels == (LabelSpec(1, "gland", (0.9, 0.6, 0.2)), LabelSpec(2, "lesion", (1.0, 0.0, 0.0), None, (0.1, 30.0)))
    assert a_card.roi == ROISettings(("t2 sagittal", "t2 coronal"), 5.0, 12.5, "zero")
    assert a_card.window == WindowSettings(None, 2, 0.25, 1, "probabilities", None)
    assert a_card.grid == GridSettings(None, None, None, "linear")


def test_what_a_card_leaves_out_comes_from_one_place():
    card = phantoms.thresholdCard([(1, "gland", (1, 0, 0))], softmax=False)
    for key in ("overlap", "sw_batch_size", "size_divisible", "spacing", "orientation", "patch_size"):
        del card[key]
    card = validateCard(card)
    assert card.roi == ROISettings()
    assert card.window == WindowSettings() == WindowSettings(None, 4, 0.25, 16, "probabilities", None)
    assert card.grid == GridSettings()
    assert card.threshold == 0.5 and not card.exclusive
    # The JSON defaults validateCard fills are the typed views' own.
    assert (card["sw_batch_size"], card["overlap"], card["patch_size"]) == (WindowSettings.batchSize, WindowSettings.overlap, None)


def test_no_module_restates_a_card_default():
    # A default such as margin_mm's 0 or sw_batch_size's 4 written at a call site drifts from cardview's.
    restated = re.compile(
        r"""\.get\(\s*["'](margin_mm|context_mm|sw_batch_size|overlap|size_divisible|padding|blend)["']\s*,\s*[-\d"'\[]"""
    )
    found = [
        f"{path.relative_to(LIBRARY)}:{number}"
        for path in sorted(LIBRARY.rglob("*.py"))
        if path.name != "cardview.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if restated.search(line)
    ]
    assert found == []


def test_replaced_gives_a_new_card_and_keeps_the_old(a_card):
    recorded = a_card.replaced(provenance={"source": "test"})
    assert isinstance(recorded, ModelCard) and recorded.provenance == {"source": "test"}
    assert a_card.provenance == {} and "provenance" not in a_card
    with pytest.raises(TypeError):
        recorded["provenance"]["source"] = "other"


def test_a_hand_made_card_gets_the_same_views(a_card):
    plain = a_card.toJSON()
    assert cardView(plain).roi == a_card.roi and cardView(a_card) is a_card


def test_a_loaded_model_carries_a_read_only_card(a_tiny_unet):
    model = loadModel(a_tiny_unet, device="cpu")
    assert isinstance(model.card, ModelCard) and model.card == readCard(a_tiny_unet)
    with pytest.raises(TypeError):
        model.card["labels"][0]["name"] = "other"
