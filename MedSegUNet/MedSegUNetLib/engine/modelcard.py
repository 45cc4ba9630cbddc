"""Model cards and TorchScript model loading.

A MedSegUNet model is one TorchScript file whose extra file ``medsegunet.json`` is its card (a
sidecar ``MODEL.pt.json`` overrides it). The card follows ``modelcard.schema.json`` (schema
``"medsegunet.model/3"``; version 1 and 2 cards are read as they are) and says how to prepare the inputs (spacing or grid
shape, orientation, normalisation steps, patch size, a localiser network that finds the region
first) and how to read the outputs (softmax, sigmoid or already activated probabilities, label
names and colours). A localiser is a second TorchScript network stored in the same file (extra
file ``medsegunet-localizer.pt``).

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

from .cardview import DEFAULTS, LOCALIZER_DEFAULTS, ModelCard, cardView
from .errors import CardError, DeviceError, FileError, ModelFileError, OutputError, firstLine, unavailableDevice
from .exportedmodel import CARD_BYTES_LIMIT, isExportedArchive, loadCheckedPrograms
from .graphsafety import loadCheckedTorchScript
from .schemacheck import resolveReference, structuralErrors

CARD_EXTRA_FILE = "medsegunet.json"
LOCALIZER_EXTRA_FILE = "medsegunet-localizer.pt"
# What --device (and the Slicer module's device list) offers.
# The most voxels one batch of windows may hold (2^32: 16 GiB of float32 per channel, before the
# network's features): anything larger is a typing mistake; what fits this machine is checked at run time.
MAX_WINDOW_VOXELS = 2**32
# The most voxels a model grid may have (2^30: 4 GiB of float32 per channel): a card's spacing of
# micrometres on a whole pelvis would ask for 10^16.
MAX_GRID_VOXELS = 2**30
SCHEMA_ID = "medsegunet.model/3"
# What version 2 added: a version 1 card must not carry these (it would mean another tool's card).
VERSION_2_FIELDS = ("blend", "tta", "postprocessing")
# What version 3 added (published pipelines): grid shapes, a localiser, activated outputs, steps.
VERSION_3_FIELDS = ("grid", "localizer", "activation")
# What version 4 added: an nnU-Net v2 configuration run as nnU-Net runs it (engine/nnunet.py). A
# reader that knew only version 3 would run such a network through the wrong steps: refused there.
VERSION_4_FIELDS = ("nnunet",)
SCHEMA_PATH = Path(__file__).with_name("modelcard.schema.json")


def loadSchema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as stream:
        return json.load(stream)


def schemaErrors(card: Any, useJsonschema: bool | None = None, schema: dict | None = None) -> list[tuple[str, str]]:
    """``(field path, message)`` for each way ``card`` breaks the schema, sorted by path.

    jsonschema does the full validation where it is installed. Slicer does not bundle it, so a
    fresh Slicer checks the card with :func:`schemacheck.structuralErrors` (the standard library only), which
    covers every keyword the card schema uses; the module can show a card before any install.
    """
    if useJsonschema is None:
        useJsonschema = importlib.util.find_spec("jsonschema") is not None if sys.modules.get("jsonschema", True) is not None else False
    schema = schema if schema is not None else loadSchema()
    if not useJsonschema:
        return sorted(structuralErrors(schema, card, root=loadSchema()), key=lambda e: e[0])
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(card), key=lambda e: list(e.absolute_path))
    return [("/".join(str(p) for p in error.absolute_path), error.message) for error in errors]


def validateCard(card: Any, source: str = "model card") -> ModelCard:
    """Check a card against the schema and the rules a schema cannot say; fill in defaults.

    Args:
        card: the parsed JSON.
        source: where it came from, for messages.

    Returns:
        a :class:`cardview.ModelCard`: the JSON with every optional field present, read-only, with typed views.

    Raises:
        MedSegUNetError: one line naming the first problem and the field.
    """
    nonFinite = _nonFiniteField(card)
    if nonFinite is not None:
        raise CardError(f"Invalid {source}: field '{nonFinite}' is not a finite number (NaN or infinite): give a number.")
    errors = _normalizationErrors(card) or schemaErrors(card)
    if errors:
        where, message = errors[0]
        raise CardError(f"Invalid {source}: field '{where or '(top level)'}': {firstLine(message)} (see modelcard.schema.json).")
    _checkVersion(card, source)
    full = copy.deepcopy(DEFAULTS)
    full.update(copy.deepcopy(card))
    if full["output"] == "probabilities":
        full.setdefault("activation", "softmax")
    if full.get("localizer") is not None:
        full["localizer"] = {**copy.deepcopy(LOCALIZER_DEFAULTS), **full["localizer"]}
    values = [label["value"] for label in full["labels"]]
    if len(set(values)) != len(values):
        raise CardError(f"Invalid {source}: label values must be unique, got {values}.")
    patch = full["patch_size"]
    expected = 3 if full["spatial_dims"] == 3 else 2
    if patch is not None and len(patch) != expected:
        raise CardError(f"Invalid {source}: patch_size needs {expected} values for a {full['spatial_dims']}D model, got {patch}.")
    if (full.get("postprocessing") or {}).get("logit_smoothing_sigma") and full.get("blend") != "logits":
        raise CardError(f'Invalid {source}: postprocessing.logit_smoothing_sigma smooths blended logits: it needs "blend": "logits".')
    if full["spacing"] is not None and all(s is None for s in full["spacing"]):
        full["spacing"] = None
    _checkPipeline(full, source)
    _checkRanges(full, source)
    return ModelCard(full)


def _checkVersion(card: dict, source: str) -> None:
    """A field newer than the card's declared schema means another tool's card: refused, naming it."""
    version = {"medsegunet.model/1": 1, "medsegunet.model/2": 2, "medsegunet.model/3": 3}.get(card.get("schema"), 4)
    newer = [(name, 2) for name in VERSION_2_FIELDS if name in card] + [(name, 3) for name in VERSION_3_FIELDS if name in card]
    newer += [(name, 4) for name in VERSION_4_FIELDS if name in card]
    if card.get("output") == "probabilities":
        newer.append(("output", 3))
    if isinstance(card.get("normalization"), list) or any(
        step.get("type") == "affine" or "statistics" in step for step in normalizationSteps(card)
    ):
        newer.append(("normalization", 3))
    for name, needed in newer:
        if needed > version:
            raise CardError(f'Invalid {source}: field \'{name}\' needs "schema": "medsegunet.model/{needed}" (see modelcard.schema.json).')


def normalizationSteps(card: dict) -> list[dict]:
    """The card's (or a localiser's) normalisation as a list of steps, run in order."""
    normalization = card.get("normalization") or {"type": "none"}
    return list(normalization) if isinstance(normalization, list) else [normalization]


def _checkPipeline(card: dict, source: str) -> None:
    """Rules between the version 3 fields: one way to size the grid, an output that can be read."""
    if card.get("grid") is not None and card["spacing"] is not None:
        raise CardError(f"Invalid {source}: give either 'spacing' or 'grid' (a fixed shape), not both.")
    if "activation" in card and card["output"] != "probabilities":
        raise CardError(
            f'Invalid {source}: \'activation\' says what an already activated network ended with: it needs "output": "probabilities".'
        )
    if card["output"] == "probabilities" and card.get("blend") == "logits":
        raise CardError(f'Invalid {source}: a network that outputs probabilities has no logits to blend: remove "blend": "logits".')
    localizer = card.get("localizer")
    if localizer is not None and localizer["channel"] >= localizer["channels"]:
        raise CardError(
            f"Invalid {source}: localizer channel {localizer['channel']} is not one of its {localizer['channels']} channels (0 to "
            f"{localizer['channels'] - 1})."
        )
    for owner in [card, localizer] if localizer is not None else [card]:
        for step in normalizationSteps(owner):
            if step.get("type") == "zscore_slice" and step.get("statistics") == "volume":
                raise CardError(
                    f'Invalid {source}: zscore_slice takes its statistics per slice of the network\'s grid: remove "statistics": "volume".'
                )
            if step.get("type") == "affine" and "scale" not in step and "shift" not in step:
                raise CardError(f"Invalid {source}: an affine normalisation step needs 'scale', 'shift' or both.")


def _normalizationErrors(card: Any) -> list[tuple[str, str]]:
    """Errors of each normalisation step (the card's and its localiser's), with the step's own path:
    a step or a list of them is a ``oneOf``, whose failure alone would not say which field is wrong."""
    if not isinstance(card, dict):
        return []
    step = resolveReference(loadSchema(), "#/$defs/normalizationStep")
    errors = []
    owners = [("normalization", card.get("normalization"))]
    if isinstance(card.get("localizer"), dict):
        owners.append(("localizer/normalization", card["localizer"].get("normalization")))
    for path, normalization in owners:
        steps = (
            [(path, normalization)]
            if isinstance(normalization, dict)
            else [(f"{path}/{index}", item) for index, item in enumerate(normalization)]
            if isinstance(normalization, list)
            else []
        )
        for where, item in steps:
            errors += [(f"{where}/{field}" if field else where, message) for field, message in schemaErrors(item, schema=step)]
    return sorted(errors, key=lambda e: e[0])


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
    steps = normalizationSteps(card) + (normalizationSteps(card["localizer"]) if card.get("localizer") else [])
    for normalization in steps:
        if normalization.get("type") == "percentile" and normalization.get("lower", 5.0) >= normalization.get("upper", 95.0):
            raise CardError(
                f"Invalid {source}: normalization lower percentile {normalization.get('lower', 5.0):g} is not below upper "
                f"{normalization.get('upper', 95.0):g}."
            )
        if "b_min" in normalization and "b_max" in normalization and normalization["b_min"] == normalization["b_max"]:
            raise CardError(
                f"Invalid {source}: normalization b_min and b_max are both {normalization['b_min']:g}: give two different values."
            )
    for owner, what in ((card, "grid"), (card.get("localizer") or {}, "localizer grid")):
        shape = (owner.get("grid") or {}).get("shape")
        if shape is not None and math.prod(shape) > MAX_GRID_VOXELS:
            raise CardError(
                f"Invalid {source}: the {what} {shape} has {math.prod(shape):,} voxels, above the {MAX_GRID_VOXELS:,} a model grid may "
                "have."
            )
    for label in card["labels"]:
        volume = (label.get("qc") or {}).get("volume_ml")
        if volume is not None and volume[0] > volume[1]:
            raise CardError(
                f"Invalid {source}: label '{label['name']}' qc.volume_ml [{volume[0]:g}, {volume[1]:g}] is not a range (min above max)."
            )
    patch, batch = card["patch_size"], card["sw_batch_size"]  # filled in by validateCard
    if patch is not None and math.prod(patch) * batch > MAX_WINDOW_VOXELS:
        raise CardError(
            f"Invalid {source}: patch_size {patch} × sw_batch_size {batch} is {math.prod(patch) * batch:,} voxels per batch, "
            f"above the {MAX_WINDOW_VOXELS:,} a window batch may have: use a smaller window."
        )


def exclusiveLabels(card: dict) -> bool:
    """Whether the network's channels are a background and one exclusive class per label (softmax, or
    probabilities after a softmax) rather than one independent region per label (sigmoid)."""
    return card["output"] == "softmax" or (card["output"] == "probabilities" and card.get("activation", "softmax") == "softmax")


def outputChannels(card: dict) -> int:
    """Number of output channels the network must produce for this card (a localiser's card says it)."""
    if "out_channels" in card:
        return int(card["out_channels"])
    return len(card["labels"]) + (1 if exclusiveLabels(card) else 0)


def cardSummary(card: dict) -> str:
    """A few human-readable lines describing a card (``medsegunet info`` and the Slicer widget)."""
    spacing = card.get("spacing")
    gridText = "Spacing: " + ("reference's" if spacing is None else " × ".join("ref" if s is None else f"{s:g}" for s in spacing) + " mm")
    if card.get("grid"):
        gridText = (
            "Grid: "
            + " × ".join(str(n) for n in card["grid"]["shape"])
            + f" voxels over the ROI ({card['grid'].get('interpolation', 'linear')})"
        )
    normalizationText = " then ".join(step["type"] for step in normalizationSteps(card))
    if card.get("nnunet"):
        return _nnunetSummary(card)
    lines = [
        f"{card['name']} ({card['spatial_dims']}D, {card['output']})",
        "Inputs: " + ", ".join(i["name"] for i in card["inputs"]),
        "Labels: " + ", ".join(f"{label['value']} {label['name']}" for label in card["labels"]),
        f"{gridText}; orientation: {card.get('orientation') or 'reference'}; normalisation: {normalizationText}",
        f"Patch: {card.get('patch_size') or 'whole ROI'}; overlap {card.get('overlap')}",
    ]
    if card.get("localizer"):
        lines.append(
            "Localiser: "
            + " × ".join(str(n) for n in card["localizer"]["grid"]["shape"])
            + f" voxels, its box grown by {card['localizer']['margin_fraction']:g} of its size per side"
        )
    if card.get("description"):
        lines.append(card["description"])
    return "\n".join(lines)


def _nnunetSummary(card: dict) -> str:
    """:func:`cardSummary` of a schema-4 card: nnU-Net's own steps instead of the model grid's."""
    spec, record = card["nnunet"], (card.get("provenance") or {}).get("nnunet") or {}
    mirror = ", ".join(str(axis) for axis in spec.get("mirror_axes") or []) or "none"
    lines = [
        f"{card['name']} ({card['spatial_dims']}D, {card['output']})",
        "Inputs: " + ", ".join(i["name"] for i in card["inputs"]),
        "Labels: " + ", ".join(f"{label['value']} {label['name']}" for label in card["labels"]),
        f"nnU-Net pipeline: target spacing {' × '.join(f'{s:.4g}' for s in spec['spacing'])} mm and patch {spec['patch_size']} in "
        f"array order (axes permuted {spec['transpose_forward']}), {spec['folds']} fold(s) averaged, mirroring axes {mirror}; "
        "normalisation: " + ", ".join(step["scheme"] for step in spec["normalization"]),
    ]
    if record:
        lines.append(
            f"nnU-Net: {record.get('dataset')}, {record.get('plans')}, {record.get('configuration')}, {record.get('trainer')}, folds "
            f"{', '.join(record.get('folds') or [])} ({record.get('checkpoint')} checkpoints)"
        )
    return "\n".join(lines)


def readCard(path: str | os.PathLike) -> ModelCard:
    """The validated card of a model file (read-only, typed: :class:`cardview.ModelCard`), without
    loading the network weights.

    The sidecar ``PATH.json`` wins over the embedded card.

    Raises:
        MedSegUNetError: missing file, not a TorchScript archive, no card, or an invalid card.
    """
    from .paths import checkRegularFile

    path = os.fspath(path)
    checkRegularFile(path, "Model file")
    if not os.path.isfile(path):
        raise FileError(f"Model file '{path}' is a folder: give the TorchScript .pt file.")
    key = _fileKey(path)
    with _CACHE_LOCK:
        if key in _CARDS:
            return _CARDS[key]  # read-only: every caller may share it
    card = _readCardFile(path)
    with _CACHE_LOCK:
        _CARDS.clear()  # one model's card at a time: the cache only spares re-validating it within a run
        _CARDS[key] = card
    return card


def _fileKey(path: str) -> tuple:
    """What identifies a model file's card: the file's and the sidecar's size and modification time."""
    stat = os.stat(path)
    sidecar = path + ".json"
    sidecarStat = os.stat(sidecar) if os.path.isfile(sidecar) else None
    return (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, sidecarStat and (sidecarStat.st_size, sidecarStat.st_mtime_ns))


def _readCardFile(path: str) -> ModelCard:
    """The validated card of a model file (sidecar first), read and checked now."""
    sidecar = path + ".json"
    if os.path.isfile(sidecar):
        try:
            with open(sidecar, encoding="utf-8") as stream:
                return validateCard(json.load(stream), f"model card '{sidecar}'")
        except json.JSONDecodeError as error:
            raise CardError(f"Model card '{sidecar}' is not valid JSON ({error.msg}, line {error.lineno}).") from None
        except UnicodeDecodeError:
            raise CardError(f"Model card '{sidecar}' is not UTF-8 text: save it as UTF-8 JSON.") from None
    text = _embeddedCardText(path)
    if not text:
        raise CardError(
            f"Model '{path}' has no '{CARD_EXTRA_FILE}' card: export it with 'medsegunet export' or add a sidecar "
            f"'{os.path.basename(sidecar)}'."
        )
    try:
        card = json.loads(text)
    except json.JSONDecodeError as error:
        raise CardError(f"The card inside '{path}' is not valid JSON ({error.msg}).") from None
    return validateCard(card, f"model card in '{path}'")


def _embeddedCardText(path: str) -> str:
    """The card JSON stored in a TorchScript zip archive ('' when absent)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"'{path}' is not a model file (TorchScript .pt or torch.export .pt2): save models with 'medsegunet export'.")
    try:
        return _extraFile(path, CARD_EXTRA_FILE).decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFileError(f"The card inside '{path}' is not UTF-8 text: export the model again with a UTF-8 JSON card.") from None


def _extraFile(path: str, name: str) -> bytes:
    """An extra file of a TorchScript archive (b'' when absent), bounded before it inflates: a card
    by :data:`CARD_BYTES_LIMIT`, a localiser by the memory a model may take."""
    from .archives import openArchive, readMember
    from .filecheck import memoryBudgetBytes

    limit = CARD_BYTES_LIMIT if name == CARD_EXTRA_FILE else memoryBudgetBytes()
    with openArchive(path, f"Model file '{path}'") as archive:
        for member in archive.infolist():
            if member.filename.endswith("/extra/" + name):
                return readMember(archive, member, limit, f"Model file '{path}'")
    return b""


@dataclass
class LoadedModel:
    """A TorchScript network on its device, with its card (and its localiser network, if the card has one)."""

    path: str
    card: ModelCard
    network: Any
    device: Any
    localizer: Any = None
    # The record of the AOTInductor package ``network`` is (engine.compiled), when it is one.
    compiled: dict | None = None
    # Why --compile runs this model uncompiled, where a batch worker could not load the driver's package.
    compileFallback: str | None = None

    def __post_init__(self) -> None:
        self.card = cardView(self.card)

    @property
    def spatialDims(self) -> int:
        return self.card.spatialDims


_CACHE: dict[tuple, LoadedModel] = {}
_CARDS: dict[tuple, dict] = {}
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
        raise unavailableDevice("CUDA was asked for but no CUDA GPU is available to PyTorch")
    if device == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise unavailableDevice("MPS was asked for but is not available")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise DeviceError(f"Unknown device '{device}': use auto, cpu, cuda or mps.")
    return torch.device(device)


def loadModel(path: str | os.PathLike, device: str = "auto") -> LoadedModel:
    """Load a TorchScript model once per process and device; later calls reuse it.

    The cache key includes the file's modification time, so a re-exported model is reloaded.

    Raises:
        MedSegUNetError: unreadable model, invalid card, or a graph that calls an operator outside
            the allow-list (:mod:`graphsafety`: checked before the network is ever called).
    """
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
        if isExportedArchive(path):
            # One read, check and deserialisation of the archive for both programs.
            programs = loadCheckedPrograms(
                path, torchDevice, f"Model '{path}'", ("model", "localizer") if card.get("localizer") else ("model",)
            )
            network, localizer = programs["model"], programs.get("localizer")
        else:
            network = loadCheckedTorchScript(path, torchDevice, f"Model '{path}'")
            localizer = _loadLocalizer(path, torchDevice) if card.get("localizer") else None
        loaded = LoadedModel(path=path, card=card, network=network, device=torchDevice, localizer=localizer)
        # Keep one model per path: a re-exported file replaces the old one in memory.
        for old in [k for k in _CACHE if k[0] == path]:
            del _CACHE[old]
        _CACHE[key] = loaded
        return loaded


def _loadLocalizer(path: str, device):
    """The localiser network stored in the model file (extra file :data:`LOCALIZER_EXTRA_FILE`), checked as the network is."""
    data = _extraFile(path, LOCALIZER_EXTRA_FILE)
    if not data:
        raise ModelFileError(
            f"Model '{path}' has a card with a 'localizer' but no '{LOCALIZER_EXTRA_FILE}' network: import it with 'medsegunet import ... "
            "--localizer'."
        )
    return loadCheckedTorchScript(data, device, f"The localiser network of '{path}'")


def clearModelCache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
        _CARDS.clear()


def saveModel(network, card: dict, path: str | os.PathLike, localizer=None, format: str = "torchscript") -> None:
    """Save a network with its validated card embedded, atomically: scripted (if needed) to
    TorchScript, or exported with ``torch.export`` to a ``.pt2`` archive (``format="pt2"``).

    Args:
        network: a ``torch.nn.Module`` (or, for TorchScript, an already scripted module).
        card: the model card; validated before anything is written.
        localizer: the localiser network a card with ``localizer`` needs (module or scripted),
            stored as the extra file :data:`LOCALIZER_EXTRA_FILE` (TorchScript) or the archive's
            second program (``.pt2``).
        format: ``torchscript`` or ``pt2``.
    """
    import io

    import torch

    from .staging import atomicOutput

    card = validateCard(card)
    if (localizer is None) != (card.get("localizer") is None):
        raise CardError("A card with 'localizer' needs its localiser network, and only such a card has one: give both or neither.")
    if format == "pt2":
        from .exportedmodel import saveExportedModel

        saveExportedModel(network, card, path, localizer)
        return
    scripted = network if isinstance(network, torch.jit.ScriptModule) else torch.jit.script(network)
    extraFiles = {CARD_EXTRA_FILE: json.dumps(card, indent=2)}
    if localizer is not None:
        buffer = io.BytesIO()
        torch.jit.save(localizer if isinstance(localizer, torch.jit.ScriptModule) else torch.jit.script(localizer), buffer)
        extraFiles[LOCALIZER_EXTRA_FILE] = buffer.getvalue()

    def verify(written: str) -> None:
        # A short write leaves a zip archive whose members fail their CRC or whose card is gone.
        complete = _embeddedCardText(written) == extraFiles[CARD_EXTRA_FILE]
        if complete and localizer is not None:
            complete = _extraFile(written, LOCALIZER_EXTRA_FILE) == extraFiles[LOCALIZER_EXTRA_FILE]
        if not complete:
            raise OutputError(
                f"The model file '{os.path.basename(written)}' was written incompletely; nothing was kept: check the free disk space."
            )

    with atomicOutput(path, verify=verify) as temporary:
        torch.jit.save(scripted, temporary, _extra_files=extraFiles)


__all__ = [
    "CARD_EXTRA_FILE",
    "LOCALIZER_EXTRA_FILE",
    "MAX_GRID_VOXELS",
    "SCHEMA_ID",
    "SCHEMA_PATH",
    "loadSchema",
    "schemaErrors",
    "validateCard",
    "normalizationSteps",
    "exclusiveLabels",
    "outputChannels",
    "cardSummary",
    "readCard",
    "LoadedModel",
    "resolveDevice",
    "loadModel",
    "clearModelCache",
    "saveModel",
]
