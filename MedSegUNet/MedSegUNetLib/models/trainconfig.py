"""``medsegunet train``'s configuration: read (JSON or YAML, as data), validated against
``trainconfig.schema.json``, and the model card it becomes.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from ..engine.errors import TrainingError, firstLine

SCHEMA_PATH = Path(__file__).with_name("trainconfig.schema.json")
CARD_KEYS = (
    "name",
    "description",
    "version",
    "license",
    "citation",
    "spatial_dims",
    "inputs",
    "roi",
    "labels",
    "output",
    "threshold",
    "spacing",
    "orientation",
    "normalization",
    "patch_size",
    "overlap",
    "sw_batch_size",
    "size_divisible",
)

DEFAULTS: dict[str, Any] = {
    "output": "softmax",
    "spacing": None,
    "orientation": None,
    "normalization": {"type": "zscore", "nonzero": True},
    "label_remap": {},
    "roi": {},
    "overlap": 0.25,
    "sw_batch_size": 4,
    "network": {
        "type": "UNet",
        "channels": [16, 32, 64, 128],
        "strides": [2, 2, 2],
        "num_res_units": 1,
        "dropout": 0.0,
        "norm": "instance",
    },
    "sampling": {"mode": "posneg", "pos": 1.0, "neg": 1.0, "max_background": 0.95, "max_tries": 20, "samples_per_case": 4, "repeats": 1},
    "augmentation": {
        "flip_axes": [],
        "flip_prob": 0.5,
        "rotate_deg": 0.0,
        "scale": 0.0,
        "affine_prob": 0.0,
        "intensity_shift": 0.0,
        "intensity_scale": 0.0,
        "intensity_prob": 0.0,
        "elastic_prob": 0.0,
        "skull_strip_prob": 0.0,
    },
    "loss": {"type": "dice_ce", "gamma": 2.0, "include_background": False},
    "optimizer": {"type": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9, "scheduler": "none"},
    "epochs": 50,
    "batch_size": 2,
    "val_interval": 1,
    "early_stopping": {},
    "seed": 0,
    "deterministic": True,
    "amp": True,
    "figure_cases": 3,
}


def loadConfigFile(path: str | os.PathLike) -> dict:
    """Parse a YAML or JSON training config (not yet validated).

    Raises:
        MedSegUNetError: missing file or a syntax error.
    """
    import yaml

    from ..engine.paths import checkRegularFile

    path = os.fspath(path)
    checkRegularFile(path, "Training config")
    if os.path.isdir(path):
        raise TrainingError(f"Training config '{path}' is a folder: give the YAML or JSON file.")
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except UnicodeDecodeError:
        raise TrainingError(f"Training config '{path}' is not UTF-8 text: save it as UTF-8.") from None
    try:
        config = json.loads(text) if path.lower().endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise TrainingError(f"Training config '{path}' is not valid JSON ({error.msg}, line {error.lineno}).") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise TrainingError(
            f"Training config '{path}' is not valid YAML ({getattr(error, 'problem', None) or 'syntax error'}{where})."
        ) from None
    return config


def validateConfig(config: Any, source: str = "training config", baseDir: str | os.PathLike | None = None) -> dict:
    """Check a config against ``trainconfig.schema.json`` and the rules a schema cannot say.

    Args:
        config: the parsed YAML/JSON.
        source: where it came from, for messages.
        baseDir: folder that relative data paths are relative to (the config's folder); the
            returned config holds absolute paths.

    Returns:
        a new dict with every optional field filled in (nested sections merged with defaults).

    Raises:
        MedSegUNetError: one line naming the first problem and its field.
    """
    import jsonschema

    with open(SCHEMA_PATH, encoding="utf-8") as stream:
        schema = json.load(stream)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), list(map(str, e.absolute_path))))
    if errors:
        error = errors[0]
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        message = firstLine(error.message)
        if error.validator == "oneOf" and list(error.absolute_path) == ["data"]:
            message = "give exactly one of 'msd' (a Decathlon folder) or 'csv' (a case table)"
        raise TrainingError(f"Invalid {source}: field '{where}': {message} (see trainconfig.schema.json).")
    full = copy.deepcopy(DEFAULTS)
    for key, value in copy.deepcopy(config).items():
        if isinstance(value, dict) and isinstance(full.get(key), dict) and key not in ("label_remap", "normalization"):
            full[key].update(value)
        else:
            full[key] = value
    dims = full["spatial_dims"]
    if len(full["patch_size"]) != dims:
        raise TrainingError(f"Invalid {source}: patch_size needs {dims} values for a {dims}D model, got {full['patch_size']}.")
    values = [label["value"] for label in full["labels"]]
    if len(set(values)) != len(values):
        raise TrainingError(f"Invalid {source}: label values must be unique, got {values}.")
    strip = full["augmentation"].get("skull_strip_mm")
    if strip is not None and strip[0] > strip[1]:
        raise TrainingError(f"Invalid {source}: augmentation.skull_strip_mm is [least, most] in mm, got {strip}.")
    hasRegions = any("region" in label for label in full["labels"])
    if full["output"] == "softmax" and hasRegions:
        raise TrainingError(f"Invalid {source}: 'region' labels need output: sigmoid (each region is its own channel).")
    if full["loss"]["type"] == "dice_bce" and full["output"] != "sigmoid":
        raise TrainingError(f"Invalid {source}: loss dice_bce needs output: sigmoid; use dice_ce with softmax.")
    network = full["network"]
    if network["type"] in ("UNet", "AttentionUNet") and len(network["strides"]) != len(network["channels"]) - 1:
        raise TrainingError(
            f"Invalid {source}: network strides need one value fewer than channels ({len(network['channels'])} channels, "
            f"{len(network['strides'])} strides)."
        )
    for stride in network["strides"]:
        if isinstance(stride, list) and len(stride) != dims:
            raise TrainingError(f"Invalid {source}: each per-axis stride needs {dims} values, got {stride}.")
    divisor = _downsampling(full)
    for axis, (size, factor) in enumerate(zip(full["patch_size"], divisor)):
        if size % factor:
            raise TrainingError(
                f"Invalid {source}: patch_size[{axis}] = {size} is not a multiple of {factor}, the network's downsampling along that axis."
            )
    if baseDir is not None:
        data = full["data"]
        for key in ("msd", "csv"):
            if key in data:
                data[key] = os.path.normpath(os.path.join(os.fspath(baseDir), os.path.expanduser(data[key])))
    return full


def _downsampling(config: dict) -> list[int]:
    """Total downsampling factor of the network along each axis (patches must be multiples)."""
    network, dims = config["network"], config["spatial_dims"]
    if network["type"] == "BasicUNet":
        return [16] * dims
    if network["type"] == "SegResNet":
        return [2 ** (len(network.get("blocks_down") or [1, 2, 2, 4]) - 1)] * dims
    factors = [1] * dims
    for stride in network["strides"]:
        perAxis = stride if isinstance(stride, list) else [stride] * dims
        factors = [f * int(s) for f, s in zip(factors, perAxis)]
    return factors


def readConfig(path: str | os.PathLike) -> dict:
    """Load and validate a training config file; data paths become absolute."""
    return validateConfig(loadConfigFile(path), f"training config '{os.fspath(path)}'", os.path.dirname(os.path.abspath(path)))


def cardFromConfig(config: dict) -> dict:
    """The model card a config's network will be exported with (inference = training preprocessing)."""
    card = {"schema": "medsegunet.model/1"}
    for key in CARD_KEYS:
        if key in config and config[key] is not None or key in ("spacing", "orientation"):
            card[key] = copy.deepcopy(config.get(key))
    card["labels"] = [{k: v for k, v in label.items() if k != "region"} for label in card["labels"]]
    sourceValues = referenceValuesFromConfig(config)
    for label, values in zip(card["labels"], sourceValues):
        if values != [int(label["value"])]:
            label["reference_values"] = values
    if config.get("postprocessing"):
        # Postprocessing is a model/2 field of the card.
        card.update(schema="medsegunet.model/2", postprocessing=copy.deepcopy(config["postprocessing"]))
    roi = {k: v for k, v in (config.get("roi") or {}).items() if k in ("from_series", "margin_mm")}
    if roi:
        card["roi"] = roi
    else:
        card.pop("roi", None)
    return card


def referenceValuesFromConfig(config: dict) -> list[list[int]]:
    """Per label, the values of an *original* reference label map that make up its region.

    Training remaps labels (``label_remap``, e.g. BraTS 4 → 3) and may define sigmoid regions on the
    remapped values (whole tumour = 1, 2, 3); a reference given to ``segment`` is in the original
    values, so whole tumour is 1, 2 and 4 there. A remap target that is not itself an original
    value (3 here) is left out.
    """
    remap = {int(source): int(target) for source, target in (config.get("label_remap") or {}).items()}
    targetsOnly = set(remap.values()) - set(remap)
    result = []
    for label in config["labels"]:
        region = {int(v) for v in label.get("region", [label["value"]])}
        values = sorted(
            {source for source, target in remap.items() if target in region}
            | {v for v in region if v not in remap and v not in targetsOnly}
        )
        result.append(values)
    return result


__all__ = ["SCHEMA_PATH", "DEFAULTS", "loadConfigFile", "validateConfig", "readConfig", "cardFromConfig", "referenceValuesFromConfig"]
