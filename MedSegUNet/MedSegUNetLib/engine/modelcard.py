"""Model cards and TorchScript model loading.

A MedSegUNet model is one TorchScript file whose extra file ``medsegunet.json`` is its card (a
sidecar ``MODEL.pt.json`` overrides it). The card follows ``modelcard.schema.json`` (schema
``"medsegunet.model/2"``; version 1 cards are read as they are) and says how to prepare the inputs (spacing, orientation, normalisation,
patch size) and how to read the outputs (softmax or sigmoid, label names and colours).

Tensor layout at the network is MONAI's: ``N, C`` then the spatial axes in the model array's
i, j, k order (2D models: ``N, C, i, j``, one slice along k per batch item).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MedSegUNetError, firstLine

CARD_EXTRA_FILE = "medsegunet.json"
# What --device (and the Slicer module's device list) offers.
DEVICES = ["auto", "cpu", "cuda", "mps"]
# The most voxels one batch of windows may hold (2^32: 16 GiB of float32 per channel, before the
# network's features): anything larger is a typing mistake; what fits this machine is checked at run time.
MAX_WINDOW_VOXELS = 2**32
SCHEMA_ID = "medsegunet.model/2"
# What version 2 added: a version 1 card must not carry these (it would mean another tool's card).
VERSION_2_FIELDS = ("blend", "tta", "postprocessing")
SCHEMA_PATH = Path(__file__).with_name("modelcard.schema.json")

DEFAULTS: dict[str, Any] = {
    "threshold": 0.5,
    "spacing": None,
    "orientation": None,
    "normalization": {"type": "zscore", "nonzero": True},
    "patch_size": None,
    "overlap": 0.25,
    "sw_batch_size": 4,
}


def loadSchema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as stream:
        return json.load(stream)


def schemaErrors(card: Any, useJsonschema: bool | None = None) -> list[tuple[str, str]]:
    """``(field path, message)`` for each way ``card`` breaks the schema, sorted by path.

    jsonschema does the full validation where it is installed. Slicer does not bundle it, so a
    fresh Slicer checks the card with :func:`structuralErrors` (the standard library only), which
    covers every keyword the card schema uses; the module can show a card before any install.
    """
    if useJsonschema is None:
        useJsonschema = importlib.util.find_spec("jsonschema") is not None if sys.modules.get("jsonschema", True) is not None else False
    if not useJsonschema:
        return sorted(structuralErrors(loadSchema(), card), key=lambda e: e[0])
    import jsonschema

    validator = jsonschema.Draft202012Validator(loadSchema())
    errors = sorted(validator.iter_errors(card), key=lambda e: list(e.absolute_path))
    return [("/".join(str(p) for p in error.absolute_path), error.message) for error in errors]


_JSON_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def structuralErrors(schema: dict, value: Any, path: str = "") -> list[tuple[str, str]]:
    """Errors of ``value`` against the JSON-Schema keywords the card schemas use, stdlib only.

    Keywords: type, const, enum, required, properties, items, minItems, maxItems, minLength,
    maxLength, minimum, maximum, exclusiveMinimum, exclusiveMaximum, pattern, oneOf. Messages follow
    jsonschema's wording.
    """
    import re

    if "$ref" in schema:
        schema = _resolveReference(schema["$ref"])
    errors: list[tuple[str, str]] = []
    kinds = schema.get("type")
    if kinds is not None:
        allowed = kinds if isinstance(kinds, list) else [kinds]
        if not any(_JSON_TYPES[kind](value) for kind in allowed):
            return [(path, f"{value!r} is not of type {', '.join(repr(k) for k in allowed)}")]
    if "const" in schema and value != schema["const"]:
        errors.append((path, f"{schema['const']!r} was expected"))
    if "enum" in schema and value not in schema["enum"]:
        errors.append((path, f"{value!r} is not one of {schema['enum']!r}"))
    if "oneOf" in schema:
        passing = [option for option in schema["oneOf"] if not structuralErrors(option, value, path)]
        if len(passing) != 1:
            errors.append((path, f"{value!r} is not valid under any of the given schemas"))
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errors.append((path, f"{name!r} is a required property"))
        for name, subschema in schema.get("properties", {}).items():
            if name in value:
                errors += structuralErrors(subschema, value[name], f"{path}/{name}" if path else name)
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append((path, f"{value!r} should be non-empty" if schema["minItems"] == 1 else f"{value!r} is too short"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append((path, f"{value!r} is too long"))
        if isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                errors += structuralErrors(schema["items"], item, f"{path}/{index}" if path else str(index))
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append((path, f"{value!r} should be non-empty"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append((path, f"{value[:40]!r}... is too long"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append((path, f"{value!r} does not match {schema['pattern']!r}"))
    if _JSON_TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append((path, f"{value!r} is less than the minimum of {schema['minimum']!r}"))
        if "maximum" in schema and value > schema["maximum"]:
            errors.append((path, f"{value!r} is greater than the maximum of {schema['maximum']!r}"))
        if "exclusiveMinimum" in schema and not value > schema["exclusiveMinimum"]:
            errors.append((path, f"{value!r} is less than or equal to the minimum of {schema['exclusiveMinimum']!r}"))
        if "exclusiveMaximum" in schema and not value < schema["exclusiveMaximum"]:
            errors.append((path, f"{value!r} is greater than or equal to the maximum of {schema['exclusiveMaximum']!r}"))
    return errors


def _resolveReference(reference: str) -> dict:
    """A ``#/$defs/NAME`` reference of the card schema."""
    node: Any = loadSchema()
    for part in reference.lstrip("#/").split("/"):
        node = node[part]
    return node


# The context names Slicer's terminology files use for these codes.
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_TERMINOLOGY_KEYS = (("category", "category"), ("type", "type"), ("type_modifier", "typeModifier"),
                     ("anatomic_region", "anatomicRegion"), ("anatomic_region_modifier", "anatomicRegionModifier"))


def slicerioTerminology(label: dict) -> dict | None:
    """A card label's ``terminology`` in slicerio's segment form (``category``, ``type``, ... lists)."""
    terminology = label.get("terminology")
    if not terminology:
        return None
    entry = {"contextName": TERMINOLOGY_CONTEXT, "anatomicContextName": ANATOMIC_CONTEXT}
    for cardKey, slicerioKey in _TERMINOLOGY_KEYS:
        if terminology.get(cardKey):
            entry[slicerioKey] = [str(v) for v in terminology[cardKey]]
    return entry


def terminologyEntry(label: dict) -> str | None:
    """Slicer's ``TerminologyEntry`` segment tag for a card label, or None without terminology.

    ``context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier``,
    each code ``scheme^value^meaning`` (empty ``^^`` when absent), as slicerio writes it into
    ``.seg.nrrd`` files; built here too because Slicer's process may not have slicerio yet.
    """
    entry = slicerioTerminology(label)
    if entry is None:
        return None
    codes = ["^".join(entry.get(key, ["", "", ""])) for key in ("category", "type", "typeModifier")]
    region = ["^".join(entry.get(key, ["", "", ""])) for key in ("anatomicRegion", "anatomicRegionModifier")]
    return "~".join([entry["contextName"], *codes, entry["anatomicContextName"], *region])


def terminologyFromEntry(entry: str | None) -> dict | None:
    """A card label's ``terminology`` from Slicer's ``TerminologyEntry`` segment tag (see
    :func:`terminologyEntry`), or None when the tag has no category and type codes."""
    fields = (entry or "").split("~")
    if len(fields) < 3:
        return None
    # The tag's order: context, three type codes, anatomic context, two region codes.
    cardKeys = [cardKey for cardKey, _ in _TERMINOLOGY_KEYS]
    terminology = {}
    for key, field in zip([*cardKeys[:3], None, *cardKeys[3:]], fields[1:]):
        code = field.split("^")
        if key is not None and len(code) == 3 and code[0] and code[1]:
            terminology[key] = code
    return terminology if "category" in terminology and "type" in terminology else None


def validateCard(card: Any, source: str = "model card") -> dict:
    """Check a card against the schema and the rules a schema cannot say; fill in defaults.

    Args:
        card: the parsed JSON.
        source: where it came from, for messages.

    Returns:
        a new dict with every optional field present.

    Raises:
        MedSegUNetError: one line naming the first problem and the field.
    """
    nonFinite = _nonFiniteField(card)
    if nonFinite is not None:
        raise MedSegUNetError(f"Invalid {source}: field '{nonFinite}' is not a finite number (NaN or infinite): give a number.")
    errors = schemaErrors(card)
    if errors:
        where, message = errors[0]
        raise MedSegUNetError(f"Invalid {source}: field '{where or '(top level)'}': {firstLine(message)} (see modelcard.schema.json).")
    if card.get("schema") == "medsegunet.model/1":
        newer = [name for name in VERSION_2_FIELDS if name in card]
        if newer:
            raise MedSegUNetError(f"Invalid {source}: field '{newer[0]}' needs \"schema\": \"medsegunet.model/2\" (see modelcard.schema.json).")
    full = copy.deepcopy(DEFAULTS)
    full.update(copy.deepcopy(card))
    values = [label["value"] for label in full["labels"]]
    if len(set(values)) != len(values):
        raise MedSegUNetError(f"Invalid {source}: label values must be unique, got {values}.")
    patch = full["patch_size"]
    expected = 3 if full["spatial_dims"] == 3 else 2
    if patch is not None and len(patch) != expected:
        raise MedSegUNetError(
            f"Invalid {source}: patch_size needs {expected} values for a {full['spatial_dims']}D model, got {patch}."
        )
    if (full.get("postprocessing") or {}).get("logit_smoothing_sigma") and full.get("blend") != "logits":
        raise MedSegUNetError(f"Invalid {source}: postprocessing.logit_smoothing_sigma smooths blended logits: it needs \"blend\": \"logits\".")
    if full["spacing"] is not None and all(s is None for s in full["spacing"]):
        full["spacing"] = None
    _checkRanges(full, source)
    return full


def _nonFiniteField(value: Any, path: str = "") -> str | None:
    """The path of the first NaN or infinite number in a parsed card (JSON allows them in Python)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "(top level)"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _nonFiniteField(item, f"{path}/{key}" if path else str(key))
        if found is not None:
            return found
    return None


def _checkRanges(card: dict, source: str) -> None:
    """Rules between fields that a schema cannot say: ordered ranges, a window within the voxel budget."""
    normalization = card["normalization"]
    if normalization.get("type") == "percentile" and normalization.get("lower", 5.0) >= normalization.get("upper", 95.0):
        raise MedSegUNetError(f"Invalid {source}: normalization lower percentile {normalization.get('lower', 5.0):g} is not below upper {normalization.get('upper', 95.0):g}.")
    if "b_min" in normalization and "b_max" in normalization and normalization["b_min"] == normalization["b_max"]:
        raise MedSegUNetError(f"Invalid {source}: normalization b_min and b_max are both {normalization['b_min']:g}: give two different values.")
    for label in card["labels"]:
        volume = (label.get("qc") or {}).get("volume_ml")
        if volume is not None and volume[0] > volume[1]:
            raise MedSegUNetError(f"Invalid {source}: label '{label['name']}' qc.volume_ml [{volume[0]:g}, {volume[1]:g}] is not a range (min above max).")
    patch = card.get("patch_size")
    if patch is not None and math.prod(patch) * card.get("sw_batch_size", 1) > MAX_WINDOW_VOXELS:
        raise MedSegUNetError(
            f"Invalid {source}: patch_size {patch} × sw_batch_size {card.get('sw_batch_size', 1)} is {math.prod(patch) * card.get('sw_batch_size', 1):,} voxels per batch, "
            f"above the {MAX_WINDOW_VOXELS:,} a window batch may have: use a smaller window."
        )


def outputChannels(card: dict) -> int:
    """Number of output channels the network must produce for this card."""
    return len(card["labels"]) + (1 if card["output"] == "softmax" else 0)


def cardSummary(card: dict) -> str:
    """A few human-readable lines describing a card (``medsegunet info`` and the Slicer widget)."""
    spacing = card.get("spacing")
    spacingText = "reference's" if spacing is None else " × ".join("ref" if s is None else f"{s:g}" for s in spacing) + " mm"
    lines = [
        f"{card['name']} ({card['spatial_dims']}D, {card['output']})",
        "Inputs: " + ", ".join(i["name"] for i in card["inputs"]),
        "Labels: " + ", ".join(f"{label['value']} {label['name']}" for label in card["labels"]),
        f"Spacing: {spacingText}; orientation: {card.get('orientation') or 'reference'}; normalisation: {card['normalization']['type']}",
        f"Patch: {card.get('patch_size') or 'whole ROI'}; overlap {card.get('overlap')}",
    ]
    if card.get("description"):
        lines.append(card["description"])
    return "\n".join(lines)


def readCard(path: str | os.PathLike) -> dict:
    """The validated card of a model file, without loading the network weights.

    The sidecar ``PATH.json`` wins over the embedded card.

    Raises:
        MedSegUNetError: missing file, not a TorchScript archive, no card, or an invalid card.
    """
    from .volumes import checkRegularFile

    path = os.fspath(path)
    checkRegularFile(path, "Model file")
    if not os.path.isfile(path):
        raise MedSegUNetError(f"Model file '{path}' is a folder: give the TorchScript .pt file.")
    sidecar = path + ".json"
    if os.path.isfile(sidecar):
        try:
            with open(sidecar, encoding="utf-8") as stream:
                return validateCard(json.load(stream), f"model card '{sidecar}'")
        except json.JSONDecodeError as error:
            raise MedSegUNetError(f"Model card '{sidecar}' is not valid JSON ({error.msg}, line {error.lineno}).") from None
        except UnicodeDecodeError:
            raise MedSegUNetError(f"Model card '{sidecar}' is not UTF-8 text: save it as UTF-8 JSON.") from None
    text = _embeddedCardText(path)
    if not text:
        raise MedSegUNetError(
            f"Model '{path}' has no '{CARD_EXTRA_FILE}' card: export it with 'medsegunet export' or add a sidecar '{os.path.basename(sidecar)}'."
        )
    try:
        card = json.loads(text)
    except json.JSONDecodeError as error:
        raise MedSegUNetError(f"The card inside '{path}' is not valid JSON ({error.msg}).") from None
    return validateCard(card, f"model card in '{path}'")


def _embeddedCardText(path: str) -> str:
    """The card JSON stored in a TorchScript zip archive ('' when absent)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise MedSegUNetError(f"'{path}' is not a TorchScript model file: save models with torch.jit.save.")
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("/extra/" + CARD_EXTRA_FILE):
                    return archive.read(name).decode("utf-8")
    except UnicodeDecodeError:
        raise MedSegUNetError(f"The card inside '{path}' is not UTF-8 text: export the model again with a UTF-8 JSON card.") from None
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise MedSegUNetError(f"Model file '{path}' is damaged ({firstLine(error)}): copy or export it again.") from None
    return ""


@dataclass
class LoadedModel:
    """A TorchScript network on its device, with its card."""

    path: str
    card: dict
    network: Any
    device: Any

    @property
    def spatialDims(self) -> int:
        return int(self.card["spatial_dims"])


_CACHE: dict[tuple, LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def resolveDevice(device: str = "auto"):
    """The torch device for ``auto`` / ``cpu`` / ``cuda`` / ``mps`` (auto prefers CUDA, then MPS).

    Raises:
        MedSegUNetError: a device that this machine does not have.
    """
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MedSegUNetError("CUDA was asked for but no CUDA GPU is available to PyTorch: use --device cpu or auto.")
    if device == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise MedSegUNetError("MPS was asked for but is not available: use --device cpu or auto.")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise MedSegUNetError(f"Unknown device '{device}': use auto, cpu, cuda or mps.")
    return torch.device(device)


def loadModel(path: str | os.PathLike, device: str = "auto") -> LoadedModel:
    """Load a TorchScript model once per process and device; later calls reuse it.

    The cache key includes the file's modification time, so a re-exported model is reloaded.

    Raises:
        MedSegUNetError: unreadable model or invalid card.
    """
    import torch

    path = os.path.abspath(os.fspath(path))
    card = readCard(path)
    torchDevice = resolveDevice(device)
    sidecar = path + ".json"
    key = (path, os.path.getmtime(path), os.path.getmtime(sidecar) if os.path.exists(sidecar) else None, str(torchDevice))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            cached.card = card
            return cached
        try:
            network = torch.jit.load(path, map_location=torchDevice)
        except Exception as error:  # torch raises RuntimeError or ValueError for bad archives
            raise MedSegUNetError(f"Cannot load TorchScript model '{path}' ({firstLine(str(error))}).") from None
        network.eval()
        loaded = LoadedModel(path=path, card=card, network=network, device=torchDevice)
        # Keep one model per path: a re-exported file replaces the old one in memory.
        for old in [k for k in _CACHE if k[0] == path]:
            del _CACHE[old]
        _CACHE[key] = loaded
        return loaded


def clearModelCache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def saveModel(network, card: dict, path: str | os.PathLike) -> None:
    """Script (if needed) and save a network with its validated card embedded, atomically.

    Args:
        network: a ``torch.nn.Module`` or an already scripted module.
        card: the model card; validated before anything is written.
    """
    import torch

    from .volumes import atomicOutput

    card = validateCard(card)
    scripted = network if isinstance(network, torch.jit.ScriptModule) else torch.jit.script(network)

    def verify(written: str) -> None:
        # A short write leaves a zip archive whose members fail their CRC or whose card is gone.
        if _embeddedCardText(written) != json.dumps(card, indent=2):
            raise MedSegUNetError(f"The model file '{os.path.basename(written)}' was written incompletely; nothing was kept: check the free disk space.")

    with atomicOutput(path, verify=verify) as temporary:
        torch.jit.save(scripted, temporary, _extra_files={CARD_EXTRA_FILE: json.dumps(card, indent=2)})
