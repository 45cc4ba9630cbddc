"""``medsegunet train``: train a MONAI U-Net with the preprocessing used at inference.

Every case goes through the engine's own inference preprocessing, so a trained model sees at
inference exactly what it saw in training:

1. ROI on the first input = intersection of all inputs' and extra ROI series' extents
   (:func:`pipeline.resolveROI`), cropped with :func:`geometry.cropToROI`.
2. Model grid from the card's spacing and orientation (:func:`preprocessing.modelGrid`); inputs
   resampled in physical space (linear) and normalised by :func:`preprocessing.prepareInputs`;
   the label resampled nearest-neighbour onto the same grid.

Arrays are MONAI's layout: ``C, I, J, K`` for 3D cases (SimpleITK arrays are ``K, J, I``); 2D
models train on ``C, I, J`` slices along K, as MONAI's ``SliceInferer`` runs them at inference.
Patches, augmentation, losses, metrics and the sliding-window validation are MONAI's.

Reproducibility: all random generators are re-seeded from ``(seed, epoch)`` at the start of every
epoch, so a run resumed from a checkpoint continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import copy
import csv
import functools
import io
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from ..engine.errors import Interrupted, MedSegUNetError, firstLine

SCHEMA_PATH = Path(__file__).with_name("trainconfig.schema.json")
CHECKPOINT_FORMAT = "medsegunet.checkpoint/1"
CARD_KEYS = (
    "name", "description", "version", "license", "citation", "spatial_dims", "inputs", "roi", "labels", "output",
    "threshold", "spacing", "orientation", "normalization", "patch_size", "overlap", "sw_batch_size", "size_divisible",
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
    "network": {"type": "UNet", "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1, "dropout": 0.0, "norm": "instance"},
    "sampling": {"mode": "posneg", "pos": 1.0, "neg": 1.0, "max_background": 0.95, "max_tries": 20, "samples_per_case": 4, "repeats": 1},
    "augmentation": {
        "flip_axes": [], "flip_prob": 0.5, "rotate_deg": 0.0, "scale": 0.0, "affine_prob": 0.0,
        "intensity_shift": 0.0, "intensity_scale": 0.0, "intensity_prob": 0.0,
        "elastic_prob": 0.0,
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


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def loadConfigFile(path: str | os.PathLike) -> dict:
    """Parse a YAML or JSON training config (not yet validated).

    Raises:
        MedSegUNetError: missing file or a syntax error.
    """
    import yaml

    from ..engine.volumes import checkRegularFile

    path = os.fspath(path)
    checkRegularFile(path, "Training config")
    if os.path.isdir(path):
        raise MedSegUNetError(f"Training config '{path}' is a folder: give the YAML or JSON file.")
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except UnicodeDecodeError:
        raise MedSegUNetError(f"Training config '{path}' is not UTF-8 text: save it as UTF-8.") from None
    try:
        config = json.loads(text) if path.lower().endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise MedSegUNetError(f"Training config '{path}' is not valid JSON ({error.msg}, line {error.lineno}).") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise MedSegUNetError(f"Training config '{path}' is not valid YAML ({getattr(error, 'problem', None) or 'syntax error'}{where}).") from None
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
        raise MedSegUNetError(f"Invalid {source}: field '{where}': {message} (see trainconfig.schema.json).")
    full = copy.deepcopy(DEFAULTS)
    for key, value in copy.deepcopy(config).items():
        if isinstance(value, dict) and isinstance(full.get(key), dict) and key not in ("label_remap", "normalization"):
            full[key].update(value)
        else:
            full[key] = value
    dims = full["spatial_dims"]
    if len(full["patch_size"]) != dims:
        raise MedSegUNetError(f"Invalid {source}: patch_size needs {dims} values for a {dims}D model, got {full['patch_size']}.")
    values = [label["value"] for label in full["labels"]]
    if len(set(values)) != len(values):
        raise MedSegUNetError(f"Invalid {source}: label values must be unique, got {values}.")
    hasRegions = any("region" in label for label in full["labels"])
    if full["output"] == "softmax" and hasRegions:
        raise MedSegUNetError(f"Invalid {source}: 'region' labels need output: sigmoid (each region is its own channel).")
    if full["loss"]["type"] == "dice_bce" and full["output"] != "sigmoid":
        raise MedSegUNetError(f"Invalid {source}: loss dice_bce needs output: sigmoid; use dice_ce with softmax.")
    network = full["network"]
    if network["type"] in ("UNet", "AttentionUNet") and len(network["strides"]) != len(network["channels"]) - 1:
        raise MedSegUNetError(
            f"Invalid {source}: network strides need one value fewer than channels ({len(network['channels'])} channels, {len(network['strides'])} strides)."
        )
    for stride in network["strides"]:
        if isinstance(stride, list) and len(stride) != dims:
            raise MedSegUNetError(f"Invalid {source}: each per-axis stride needs {dims} values, got {stride}.")
    divisor = _downsampling(full)
    for axis, (size, factor) in enumerate(zip(full["patch_size"], divisor)):
        if size % factor:
            raise MedSegUNetError(
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
        values = sorted({source for source, target in remap.items() if target in region} | {v for v in region if v not in remap and v not in targetsOnly})
        result.append(values)
    return result


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One training case.

    Args:
        id: case name (CSV ``case`` column, or the MSD image file name without suffix).
        inputs: per model input, ``(path, channel)``; ``channel`` picks a volume of a 4D file.
        label: label map path.
        roi: extra series limiting the ROI.
    """

    id: str
    inputs: list[tuple[str, int | None]]
    label: str
    roi: list[str] = field(default_factory=list)


def _stripSuffix(name: str) -> str:
    from ..engine.volumes import pathSuffix

    suffix = pathSuffix(name)
    return name[: -len(suffix)] if suffix else name


def readCases(config: dict) -> list[Case]:
    """The cases of a Decathlon folder or a CSV table.

    Raises:
        MedSegUNetError: missing files, columns or inconsistent channel counts.
    """
    data = config["data"]
    inputNames = [i["name"] for i in config["inputs"]]
    cases: list[Case] = []
    if "msd" in data:
        folder = data["msd"]
        description = os.path.join(folder, "dataset.json")
        if not os.path.isfile(description):
            raise MedSegUNetError(f"'{folder}' is not a Decathlon folder: it has no dataset.json.")
        with open(description, encoding="utf-8") as stream:
            try:
                dataset = json.load(stream)
            except json.JSONDecodeError as error:
                raise MedSegUNetError(f"'{description}' is not valid JSON ({error.msg}).") from None
        modalities = dataset.get("modality") or {"0": inputNames[0]}
        if len(modalities) != len(inputNames):
            raise MedSegUNetError(
                f"Decathlon folder '{folder}' has {len(modalities)} modalities ({', '.join(modalities.values())}) but the config lists {len(inputNames)} inputs: make them match."
            )
        for entry in dataset.get("training") or []:
            image = os.path.normpath(os.path.join(folder, entry["image"]))
            label = os.path.normpath(os.path.join(folder, entry["label"]))
            channels = [(image, index if len(inputNames) > 1 else None) for index in range(len(inputNames))]
            cases.append(Case(id=_stripSuffix(os.path.basename(image)), inputs=channels, label=label))
    else:
        table = data["csv"]
        if not os.path.isfile(table):
            raise MedSegUNetError(f"Case table '{table}' does not exist: check data/csv in the config.")
        base = os.path.dirname(table)
        with open(table, encoding="utf-8", newline="") as stream:
            rows = list(csv.DictReader(stream))
        if not rows:
            raise MedSegUNetError(f"Case table '{table}' has no rows.")
        columns = {c.strip().lower(): c for c in rows[0].keys() if c}
        missing = [name for name in [*inputNames, "label"] if name.lower() not in columns]
        if missing:
            raise MedSegUNetError(f"Case table '{table}' lacks column(s) {', '.join(missing)}: it needs one column per input, and 'label'.")
        roiColumns = [columns[c] for c in columns if c.startswith("roi")]

        def resolve(value: str) -> str:
            from ..engine.volumes import resolveTablePath

            return resolveTablePath(base, value)

        for index, row in enumerate(rows):
            caseId = (row.get(columns.get("case", ""), "") or "").strip() or f"case{index + 1:03d}"
            inputs = [(resolve(row[columns[name.lower()]]), None) for name in inputNames]
            roi = [resolve(row[c]) for c in roiColumns if (row.get(c) or "").strip()]
            cases.append(Case(id=caseId, inputs=inputs, label=resolve(row[columns["label"]]), roi=roi))
    if not cases:
        raise MedSegUNetError("The training data holds no cases.")
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise MedSegUNetError(f"Case ids must be unique, got {ids}.")
    return cases


def splitCases(cases: Sequence[Case], config: dict) -> tuple[list[Case], list[Case]]:
    """Training and validation cases: explicit ids, else a seeded random split."""
    data = config["data"]
    if data.get("validation_cases"):
        wanted = list(data["validation_cases"])
        known = {c.id for c in cases}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise MedSegUNetError(f"Validation case(s) {', '.join(unknown)} are not in the data (cases: {', '.join(sorted(known))}).")
        validation = [c for c in cases if c.id in wanted]
    else:
        fraction = float(data.get("validation_split", 0.2))
        count = int(round(fraction * len(cases))) if len(cases) > 1 else 0
        count = max(count, 1) if fraction > 0 and len(cases) > 1 else count
        order = np.random.default_rng(int(config["seed"])).permutation(len(cases))
        validation = [cases[i] for i in sorted(order[:count])]
    training = [c for c in cases if c not in validation]
    if not training:
        raise MedSegUNetError("No training cases are left after the validation split: use fewer validation cases.")
    return training, validation


def prepareCase(case: Case, config: dict) -> dict:
    """One case on its model grid, through the same steps as :func:`pipeline.segmentImages`.

    Returns:
        ``{"id", "image": float32 C,I,J,K, "label": uint8 1,I,J,K, "grid": sitk model grid}``;
        the label holds class indices (softmax: position in the card's labels, 0 background) or,
        for sigmoid models, the remapped label values (turned into region channels later).

    Raises:
        MedSegUNetError: unreadable volumes, no overlap.
    """
    from ..engine import geometry, pipeline, preprocessing
    from ..engine.volumes import readVolume, volumeName

    from ..engine.volumes import readVolumeChannel

    images = [readVolumeChannel(path, channel) for path, channel in case.inputs]
    names = [f"{case.id}:{i['name']}" for i in config["inputs"]]
    roiImages = [readVolume(path) for path in case.roi]
    roiSettings = config.get("roi") or {}
    roi = pipeline.resolveROI(
        images, names, roiImages, [volumeName(p) for p in case.roi], roiSettings.get("use", True), float(roiSettings.get("margin_mm", 0.0))
    )
    roiGrid = geometry.cropToROI(preprocessing.emptyLike(images[0]), roi)
    grid = preprocessing.modelGrid(roiGrid, config.get("spacing"), config.get("orientation"))
    array = preprocessing.prepareInputs(images, grid, config["normalization"])
    labelImage = readVolume(case.label)
    if labelImage.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        labelImage = sitk.Cast(sitk.Round(labelImage), sitk.sitkUInt16)
    label = np.array(preprocessing.imageToIJK(preprocessing.resampleOnto(labelImage, grid, sitk.sitkNearestNeighbor, sitk.sitkUInt8)))
    label = remapLabels(label, config)
    return {"id": case.id, "image": array, "label": label[None].astype(np.uint8), "grid": grid}


def remapLabels(label: np.ndarray, config: dict) -> np.ndarray:
    """Apply ``label_remap``, then (softmax) turn label values into class indices."""
    lookup = np.arange(256, dtype=np.uint8)
    for source, target in (config.get("label_remap") or {}).items():
        lookup[int(source)] = int(target)
    remapped = lookup[label]
    if config["output"] == "sigmoid":
        return remapped
    classes = np.zeros(256, dtype=np.uint8)
    for index, item in enumerate(config["labels"]):
        classes[int(item["value"])] = index + 1
    return classes[remapped]


def regionTargets(label: np.ndarray, config: dict) -> np.ndarray:
    """Sigmoid targets: one binary channel per label (its ``region`` values, or its own value).

    Args:
        label: remapped label values, ``1, spatial…``.

    Returns:
        float32 ``C_labels, spatial…``.
    """
    channels = [np.isin(np.asarray(label[0]), item.get("region", [item["value"]])) for item in config["labels"]]
    return np.stack(channels).astype(np.float32)


def toSlices(items: Sequence[dict]) -> list[dict]:
    """2D training items: every K slice of every case as ``C, I, J``."""
    slices = []
    for item in items:
        for k in range(item["image"].shape[-1]):
            slices.append({"image": item["image"][..., k], "label": item["label"][..., k], "id": f"{item['id']}:k{k}"})
    return slices


# --------------------------------------------------------------------------------------------
# MONAI building blocks
# --------------------------------------------------------------------------------------------


def buildNetwork(config: dict):
    """The MONAI network a config describes (output channels from the card's labels)."""
    from monai.networks import nets

    from ..engine.modelcard import outputChannels

    spec, dims = config["network"], config["spatial_dims"]
    inChannels, outChannels = len(config["inputs"]), outputChannels(cardFromConfig(config))
    norm = "INSTANCE" if spec.get("norm", "instance") == "instance" else "BATCH"
    dropout = float(spec.get("dropout", 0.0))
    kind = spec["type"]
    if kind == "UNet":
        return nets.UNet(
            spatial_dims=dims, in_channels=inChannels, out_channels=outChannels, channels=spec["channels"],
            strides=spec["strides"], num_res_units=int(spec.get("num_res_units", 1)), norm=norm, dropout=dropout,
        )
    if kind == "AttentionUNet":
        return nets.AttentionUnet(
            spatial_dims=dims, in_channels=inChannels, out_channels=outChannels, channels=spec["channels"],
            strides=spec["strides"], dropout=dropout,
        )
    if kind == "BasicUNet":
        return nets.BasicUNet(
            spatial_dims=dims, in_channels=inChannels, out_channels=outChannels,
            features=tuple(spec.get("features") or (16, 16, 32, 64, 128, 16)), norm=norm.lower(), dropout=dropout,
        )
    return nets.SegResNet(
        spatial_dims=dims, in_channels=inChannels, out_channels=outChannels, init_filters=int(spec.get("init_filters", 8)),
        blocks_down=tuple(spec.get("blocks_down") or (1, 2, 2, 4)), blocks_up=tuple(spec.get("blocks_up") or (1, 1, 1)),
        dropout_prob=dropout or None, norm=norm.lower(),
    )


def buildLoss(config: dict):
    """MONAI loss: soft Dice, Dice+CE, Dice+BCE (sigmoid) or softmax focal."""
    from monai.losses import DiceCELoss, DiceLoss, FocalLoss

    spec = config["loss"]
    sigmoid = config["output"] == "sigmoid"
    includeBackground = True if sigmoid else bool(spec.get("include_background", False))
    kind = spec["type"]
    batch = bool(spec.get("batch_dice", False))
    if kind == "dice":
        return DiceLoss(include_background=includeBackground, to_onehot_y=not sigmoid, softmax=not sigmoid, sigmoid=sigmoid, batch=batch)
    if kind == "dice_ce" and not sigmoid:
        return DiceCELoss(include_background=includeBackground, to_onehot_y=True, softmax=True, batch=batch)
    if kind in ("dice_ce", "dice_bce"):
        # MONAI's DiceCELoss applies softmax cross-entropy to multi-channel inputs, which is wrong
        # for overlapping sigmoid regions (WT/TC/ET): pair its DiceLoss with per-channel BCE instead.
        import torch

        dice = DiceLoss(include_background=True, sigmoid=True, batch=batch)
        bce = torch.nn.BCEWithLogitsLoss()
        return lambda logits, target: dice(logits, target) + bce(logits, target)
    return FocalLoss(include_background=True, to_onehot_y=not sigmoid, gamma=float(spec.get("gamma", 2.0)), use_softmax=not sigmoid)


def _defineMaxBackgroundCrop():
    """Define :class:`RandCropMaxBackgroundd` on first use (MONAI is imported lazily).

    It is registered as a module attribute (and served by the module ``__getattr__``), so that
    DataLoader workers started with ``spawn`` can unpickle it.
    """
    cached = globals().get("_MAX_BACKGROUND_CROP")
    if cached is not None:
        return cached
    from monai.transforms import MapTransform, Randomizable

    class RandCropMaxBackgroundd(Randomizable, MapTransform):
        """Random patches with at most ``maxBackground`` of background voxels (seed 000's sampling).

        Up to ``maxTries`` uniformly placed patches are drawn per sample; the first whose background
        fraction is small enough is kept (else the one with the least background), so patches
        concentrate around the labels without always centring on them.
        """

        def __init__(self, keys, labelKey, spatialSize, maxBackground, numSamples, maxTries):
            MapTransform.__init__(self, keys)
            self.labelKey, self.spatialSize = labelKey, [int(s) for s in spatialSize]
            self.maxBackground, self.numSamples, self.maxTries = float(maxBackground), int(numSamples), int(maxTries)

        def randomize(self, data=None):
            pass

        def __call__(self, data):
            label = np.asarray(data[self.labelKey])
            shape = label.shape[1:]
            samples = []
            for _ in range(self.numSamples):
                best, bestFraction = None, 2.0
                for _ in range(self.maxTries):
                    start = [int(self.R.randint(0, s - p + 1)) for s, p in zip(shape, self.spatialSize)]
                    window = tuple(slice(b, b + p) for b, p in zip(start, self.spatialSize))
                    fraction = float(np.mean(label[(slice(None), *window)] == 0))
                    if fraction < bestFraction:
                        best, bestFraction = window, fraction
                    if fraction <= self.maxBackground:
                        break
                sample = dict(data)
                for key in self.key_iterator(sample):
                    sample[key] = sample[key][(slice(None), *best)]
                samples.append(sample)
            return samples

    RandCropMaxBackgroundd.__module__ = __name__
    RandCropMaxBackgroundd.__qualname__ = "RandCropMaxBackgroundd"
    globals()["_MAX_BACKGROUND_CROP"] = RandCropMaxBackgroundd
    return RandCropMaxBackgroundd


def __getattr__(name: str):
    if name == "RandCropMaxBackgroundd":
        return _defineMaxBackgroundCrop()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def buildTransforms(config: dict):
    """The training transforms (MONAI ``Compose``) for ``{"image", "label"}`` items.

    Deterministic steps first (typing, padding to the patch, foreground indices), so
    ``CacheDataset`` caches them; then patch sampling, augmentation and, for sigmoid models, the
    region channels. Items are ``C, I, J[, K]`` arrays; each yields ``samples_per_case`` patches.
    """
    from monai.transforms import (
        Compose, DeleteItemsd, EnsureTyped, FgBgToIndicesd, Lambdad, Rand2DElasticd, Rand3DElasticd, RandAffined, RandCropByPosNegLabeld, RandFlipd,
        RandScaleIntensityd, RandShiftIntensityd, RandSpatialCropSamplesd, SpatialPadd,
    )

    keys = ["image", "label"]
    dims = config["spatial_dims"]
    patch = list(config["patch_size"])
    sampling, augmentation = config["sampling"], config["augmentation"]
    transforms = [
        EnsureTyped(keys=keys, data_type="tensor", track_meta=False),
        SpatialPadd(keys=keys, spatial_size=patch, mode="constant"),
    ]
    samples = int(sampling["samples_per_case"])
    if sampling["mode"] == "posneg":
        # Foreground/background indices are deterministic, so CacheDataset computes them once.
        transforms += [
            FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg"),
            RandCropByPosNegLabeld(
                keys=keys, label_key="label", spatial_size=patch, pos=sampling["pos"], neg=sampling["neg"], num_samples=samples,
                fg_indices_key="label_fg", bg_indices_key="label_bg", allow_smaller=False,
            ),
            DeleteItemsd(keys=["label_fg", "label_bg"]),
        ]
    elif sampling["mode"] == "max_background":
        transforms.append(_defineMaxBackgroundCrop()(keys, "label", patch, sampling["max_background"], samples, sampling["max_tries"]))
    else:
        transforms.append(RandSpatialCropSamplesd(keys=keys, roi_size=patch, num_samples=samples, random_size=False))
    for axis in augmentation["flip_axes"]:
        if axis < dims:
            transforms.append(RandFlipd(keys=keys, prob=augmentation["flip_prob"], spatial_axis=axis))
    rotate = augmentation["rotate_deg"]
    rotate = [rotate] * (1 if dims == 2 else 3) if not isinstance(rotate, list) else rotate
    if augmentation["affine_prob"] > 0 and (any(rotate) or augmentation["scale"] > 0):
        transforms.append(
            RandAffined(
                keys=keys, prob=augmentation["affine_prob"], rotate_range=[math.radians(r) for r in rotate],
                scale_range=[augmentation["scale"]] * dims, mode=("bilinear", "nearest"), padding_mode="zeros",
            )
        )
    if augmentation["elastic_prob"] > 0:
        if dims == 2:
            transforms.append(
                Rand2DElasticd(
                    keys=keys, spacing=[max(4, p // 4) for p in patch], magnitude_range=augmentation.get("elastic_magnitude", [1.0, 2.0]),
                    prob=augmentation["elastic_prob"], mode=("bilinear", "nearest"), padding_mode="zeros",
                )
            )
        else:
            transforms.append(
                Rand3DElasticd(
                    keys=keys, sigma_range=augmentation.get("elastic_sigma", [5.0, 7.0]), magnitude_range=augmentation.get("elastic_magnitude", [50.0, 150.0]),
                    prob=augmentation["elastic_prob"], mode=("bilinear", "nearest"), padding_mode="zeros",
                )
            )
    if augmentation["intensity_prob"] > 0:
        if augmentation["intensity_shift"] > 0:
            transforms.append(RandShiftIntensityd(keys="image", offsets=augmentation["intensity_shift"], prob=augmentation["intensity_prob"]))
        if augmentation["intensity_scale"] > 0:
            transforms.append(RandScaleIntensityd(keys="image", factors=augmentation["intensity_scale"], prob=augmentation["intensity_prob"]))
    if config["output"] == "sigmoid":
        transforms.append(Lambdad(keys="label", func=functools.partial(_regionTensor, config=config)))
    transforms.append(EnsureTyped(keys=keys, data_type="tensor", dtype=(np.float32, np.float32), track_meta=False))
    return Compose(transforms)


def _regionTensor(label, config):
    import torch

    return torch.from_numpy(regionTargets(np.rint(np.asarray(label)).astype(np.uint8), config))


def seedEverything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy, torch and MONAI (``monai.utils.set_determinism``)."""
    from monai.utils import set_determinism

    set_determinism(seed=int(seed) % (2**32), use_deterministic_algorithms=None)
    if deterministic:
        import torch

        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def predictCase(network, card: dict, image: np.ndarray, device) -> np.ndarray:
    """Probabilities of one ``C, I, J, K`` case with the inference code (sliding window / slices)."""
    from ..engine.inference import predictProbabilities
    from ..engine.modelcard import LoadedModel, validateCard

    loaded = LoadedModel(path="(training)", card=validateCard(card), network=network, device=device)
    return predictProbabilities(loaded, image)


def predictionToLabels(probabilities: np.ndarray, config: dict) -> np.ndarray:
    """Class-index (softmax) or region (sigmoid, ``C, …`` booleans) predictions."""
    if config["output"] == "softmax":
        return np.argmax(probabilities, axis=0).astype(np.uint8)
    return probabilities >= float(config.get("threshold", 0.5))


def caseMetrics(probabilities: np.ndarray, label: np.ndarray, config: dict) -> dict[str, np.ndarray]:
    """Per-label Dice, IoU, sensitivity, specificity (MONAI metrics) and the soft Dice loss.

    Args:
        probabilities: ``C_out, I, J, K`` from :func:`predictCase`.
        label: ``1, I, J, K`` class indices (softmax) or remapped values (sigmoid).

    Returns:
        ``{"dice": [L], "iou": [L], "sensitivity": [L], "specificity": [L], "loss": float}``.
    """
    import torch
    from monai.losses import DiceLoss
    from monai.metrics import ConfusionMatrixMetric, DiceMetric, MeanIoU
    from monai.networks.utils import one_hot

    count = len(config["labels"])
    if config["output"] == "softmax":
        predicted = torch.from_numpy(np.argmax(probabilities, axis=0)[None, None].astype(np.int64))
        prediction = one_hot(predicted, count + 1, dim=1)[:, 1:]
        target = one_hot(torch.from_numpy(label[None].astype(np.int64)), count + 1, dim=1)
        softLoss = DiceLoss(include_background=False)(torch.from_numpy(probabilities[None]), target)
        target = target[:, 1:]
    else:
        prediction = torch.from_numpy((probabilities >= float(config.get("threshold", 0.5)))[None].astype(np.float32))
        target = torch.from_numpy(regionTargets(label, config)[None])
        softLoss = DiceLoss(include_background=True)(torch.from_numpy(probabilities[None]), target)
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(prediction, target)
    iou = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(prediction, target)
    confusion = ConfusionMatrixMetric(include_background=True, metric_name=["sensitivity", "specificity"], reduction="none")
    confusion(prediction, target)
    sensitivity, specificity = confusion.aggregate()
    return {
        "dice": dice[0].numpy().astype(float),
        "iou": iou[0].numpy().astype(float),
        "sensitivity": sensitivity[0].numpy().astype(float),
        "specificity": specificity[0].numpy().astype(float),
        "loss": float(softLoss),
    }


def validate(network, config: dict, items: Sequence[dict], device) -> tuple[dict, list[np.ndarray]]:
    """Mean metrics over the validation cases and each case's predicted labels."""
    import torch

    card = cardFromConfig(config)
    network.eval()
    perCase, predictions = [], []
    with torch.no_grad():
        for item in items:
            probabilities = predictCase(network, card, item["image"], device)
            perCase.append(caseMetrics(probabilities, item["label"], config))
            predictions.append(predictionToLabels(probabilities, config))
    summary = {key: np.nanmean(np.stack([m[key] for m in perCase]), axis=0) for key in ("dice", "iou", "sensitivity", "specificity")}
    summary["loss"] = float(np.mean([m["loss"] for m in perCase]))
    summary["mean_dice"] = float(np.nanmean(summary["dice"]))
    return summary, predictions


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def metricColumns(config: dict) -> list[str]:
    columns = ["epoch", "train_loss", "val_soft_dice_loss", "val_mean_dice", "lr", "seconds"]
    for metric in ("dice", "iou", "sensitivity", "specificity"):
        columns += [f"{metric}_{label['name']}" for label in config["labels"]]
    return columns


def historyCSV(history: Sequence[dict], config: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=metricColumns(config), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)) for k, v in row.items()})
    return buffer.getvalue()


def writeHistory(history: Sequence[dict], config: dict, path: str) -> None:
    from ..engine.volumes import writeText

    writeText(historyCSV(history, config), path)


def plotCurves(history: Sequence[dict], config: dict, path: str) -> None:
    """Loss and validation Dice per epoch (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..engine.volumes import atomicOutput

    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [row["train_loss"] for row in history], label="training loss")
    validated = [row for row in history if row.get("val_mean_dice") is not None]
    if validated:
        left.plot([r["epoch"] for r in validated], [r["val_soft_dice_loss"] for r in validated], label="validation soft Dice loss")
        for label in config["labels"]:
            right.plot([r["epoch"] for r in validated], [r[f"dice_{label['name']}"] for r in validated], label=label["name"], color=label["color"])
        right.plot([r["epoch"] for r in validated], [r["val_mean_dice"] for r in validated], "k--", label="mean")
    from matplotlib.ticker import MaxNLocator

    for axis in (left, right):
        # Epochs are whole numbers; a resumed run of few epochs would otherwise get 1.5, 2.5, ...
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("epoch")
    left.set_title("Loss")
    left.legend()
    right.set_xlabel("epoch")
    right.set_ylim(0, 1)
    right.set_title("Validation Dice")
    if validated:
        right.legend()
    figure.suptitle(config["name"])
    figure.tight_layout()
    with atomicOutput(path) as temporary:
        figure.savefig(temporary, dpi=90, format="png")
    plt.close(figure)


def labelOverlay(labels: np.ndarray, config: dict) -> np.ndarray:
    """RGBA overlay of a 2D class-index (softmax) or ``C, …`` region (sigmoid) slice, transposed to rows=J."""
    rgba = np.zeros((*labels.shape[-2:], 4), dtype=float)
    for index, label in enumerate(config["labels"]):
        mask = labels == index + 1 if config["output"] == "softmax" else labels[index]
        rgba[mask] = [*label["color"], 0.45]
    return rgba.transpose(1, 0, 2)


def plotValidationSlices(items: Sequence[dict], predictions: Sequence[np.ndarray], config: dict, path: str) -> None:
    """For a few validation cases, the K slice with most labelled voxels: reference vs prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..engine.volumes import atomicOutput

    count = min(len(items), int(config.get("figure_cases", 3)))
    if count == 0:
        return
    figure, axes = plt.subplots(count, 2, figsize=(8, 4 * count), squeeze=False)
    for row, (item, prediction) in enumerate(zip(items[:count], predictions[:count])):
        label = item["label"][0]
        k = int(np.argmax((label > 0).reshape(-1, label.shape[-1]).sum(axis=0)))
        image = item["image"][0, :, :, k].T
        truth = label[..., k] if config["output"] == "softmax" else regionTargets(item["label"], config)[..., k].astype(bool)
        predicted = prediction[..., k]
        for column, (labels, title) in enumerate(((truth, "reference"), (predicted, "prediction"))):
            axis = axes[row, column]
            axis.imshow(image, cmap="gray")
            axis.imshow(labelOverlay(labels, config))
            axis.set_title(f"{item['id']} k={k}: {title}")
            axis.axis("off")
    figure.tight_layout()
    with atomicOutput(path) as temporary:
        figure.savefig(temporary, dpi=80, format="png")
    plt.close(figure)


class ProgressBar:
    """An epoch's progress: a tqdm bar on stderr when it is a terminal, then one summary line."""

    def __init__(self, total: int, prefix: str, log=None) -> None:
        self.total, self.prefix = max(total, 1), prefix
        self.log = log or (lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=prefix, file=sys.stderr, leave=False, unit="batch")

    def update(self, done: int, suffix: str = "") -> None:
        if self._bar is not None:
            self._bar.n = done
            self._bar.set_postfix_str(suffix, refresh=False)
            self._bar.refresh()

    def close(self, summary: str) -> None:
        if self._bar is not None:
            self._bar.close()
        self.log(f"{self.prefix} {summary}")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _buildOptimizer(network, config: dict):
    import torch

    spec = config["optimizer"]
    if spec["type"] == "sgd":
        optimizer = torch.optim.SGD(network.parameters(), lr=spec["lr"], momentum=spec.get("momentum", 0.9), weight_decay=spec.get("weight_decay", 0.0))
    elif spec["type"] == "adamw":
        optimizer = torch.optim.AdamW(network.parameters(), lr=spec["lr"], weight_decay=spec.get("weight_decay", 0.0))
    else:
        optimizer = torch.optim.Adam(network.parameters(), lr=spec["lr"], weight_decay=spec.get("weight_decay", 0.0))
    scheduler = None
    if spec.get("scheduler") == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(config["epochs"]))
    return optimizer, scheduler


def loadCheckpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint.

    Raises:
        MedSegUNetError: missing or not a MedSegUNet checkpoint.
    """
    import torch

    from ..engine.volumes import checkRegularFile

    path = os.fspath(path)
    checkRegularFile(path, "Checkpoint")
    if not os.path.isfile(path):
        raise MedSegUNetError(f"Checkpoint '{path}' is a folder: give the checkpoint file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for non-checkpoint files
        raise MedSegUNetError(f"Cannot read checkpoint '{path}' ({firstLine(str(error))[:120]}).") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise MedSegUNetError(f"'{path}' is not a 'medsegunet train' checkpoint.")
    return checkpoint


def loadNetworkWeights(network, checkpoint: dict, source: str | os.PathLike) -> None:
    """Put a checkpoint's weights into ``network``.

    Raises:
        MedSegUNetError: the checkpoint was made for another network than the config builds.
    """
    try:
        network.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise MedSegUNetError(
            f"Checkpoint '{os.fspath(source)}' holds another network than the config builds ({firstLine(error)[:100]}): use the training config."
        ) from None


def _saveCheckpoint(state: dict, path: str) -> None:
    import torch

    from ..engine.volumes import atomicOutput

    with atomicOutput(path) as temporary:
        torch.save(state, temporary)


def _saveEpoch(state: dict, lastPath: str, bestPath: str | None, metricsText: str, metricsPath: str) -> None:
    """One epoch's checkpoint(s) and metrics, staged and renamed together (all or none)."""
    import torch

    from ..engine.volumes import StagedOutputs, textVerifier, writeTextFile

    with StagedOutputs() as staged:
        torch.save(state, staged.stage(lastPath))
        if bestPath is not None:
            torch.save(state, staged.stage(bestPath))
        writeTextFile(metricsText, staged.stage(metricsPath, verify=textVerifier(metricsText)))


def _stretchedSchedule(optimizer, scheduler, history: Sequence[dict], doneEpochs: int, totalEpochs: int):
    """A cosine schedule for the epochs a resumed run adds, falling from the last epoch's rate.

    The stored schedule ended at the old total (often at rate 0, or about to rise again); the new
    one goes on from the rate of the last completed epoch down to ``eta_min`` just after the new
    total, so every added epoch trains at a lower rate than the one before.
    """
    import torch

    previous = [float(history[-1]["lr"])] * len(optimizer.param_groups) if history and history[-1].get("lr") else list(scheduler.base_lrs)
    for group, rate in zip(optimizer.param_groups, previous):
        group["lr"] = rate
        group["initial_lr"] = rate
    stretched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=totalEpochs - doneEpochs + 1, eta_min=scheduler.eta_min)
    with warnings.catch_warnings():
        # The step is the schedule's first position, not a skipped optimiser step.
        warnings.simplefilter("ignore", UserWarning)
        stretched.step()
    return stretched


def _keptMessage(lastPath: str) -> str | None:
    """What an interrupted run leaves: the last complete epoch's checkpoint, and how to go on."""
    if not os.path.isfile(lastPath):
        return None
    try:
        epoch = int(loadCheckpoint(lastPath)["epoch"])
    except MedSegUNetError:
        return None
    return f"{os.path.basename(lastPath)} (epoch {epoch}) kept in {os.path.dirname(os.path.abspath(lastPath))}; resume with --resume {lastPath}"


def _plain(value):
    """Checkpoint-safe Python values (``torch.load(weights_only=True)`` takes no NumPy scalars)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    return value


@dataclass
class TrainingResult:
    """What :func:`train` leaves in the output folder."""

    outputDir: str
    bestCheckpoint: str
    lastCheckpoint: str
    history: list[dict]
    bestEpoch: int | None
    bestMeanDice: float | None
    trainCases: list[str]
    validationCases: list[str]


def train(config: dict, outputDir: str | os.PathLike, resume: str | os.PathLike | None = None, device: str = "auto", log=None) -> TrainingResult:
    """Train a network as the (validated) config says, writing checkpoints, metrics and figures.

    Args:
        config: from :func:`readConfig` / :func:`validateConfig` (absolute data paths).
        outputDir: created if missing; receives ``config.json``, ``checkpoint_last.pt``,
            ``checkpoint_best.pt``, ``metrics.csv``, ``curves.png``, ``validation.png``.
        resume: a ``checkpoint_last.pt`` to continue from (its epoch count, weights, optimiser).
        device: ``auto``, ``cpu`` or ``cuda``.
        log: callable taking one line (default: stderr).

    Returns:
        where things were written and the best validation Dice.

    Raises:
        MedSegUNetError: bad data, or a checkpoint from another network.
    """
    import torch
    from monai.data import CacheDataset, DataLoader

    from ..engine.modelcard import resolveDevice

    log = log or (lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
    outputDir = os.fspath(outputDir)
    os.makedirs(outputDir, exist_ok=True)
    seed = int(config["seed"])
    torchDevice = resolveDevice(device)
    amp = bool(config.get("amp", True)) and torchDevice.type == "cuda"

    cases = readCases(config)
    trainCases, validationCases = splitCases(cases, config)
    log(f"{len(trainCases)} training case(s): {', '.join(c.id for c in trainCases)}; "
        f"{len(validationCases)} validation case(s): {', '.join(c.id for c in validationCases) or 'none'}")
    started = time.perf_counter()
    trainItems = [prepareCase(case, config) for case in trainCases]
    validationItems = [prepareCase(case, config) for case in validationCases]
    for item in trainItems + validationItems:
        item["grid_size"] = list(item["image"].shape[1:])
    log(f"Prepared cases on the model grid in {time.perf_counter() - started:.1f} s: "
        + "; ".join(f"{item['id']} {'×'.join(map(str, item['image'].shape[1:]))}" for item in trainItems + validationItems))
    if config["spatial_dims"] == 2:
        samples = toSlices(trainItems)
    else:
        samples = [{"image": item["image"], "label": item["label"], "id": item["id"]} for item in trainItems]
    samples = samples * int(config["sampling"].get("repeats", 1))

    seedEverything(seed, config.get("deterministic", True))
    network = buildNetwork(config).to(torchDevice)
    optimizer, scheduler = _buildOptimizer(network, config)
    # torch.amp.GradScaler is torch >= 2.3; Slicer's PyTorch may be older.
    scaler = torch.amp.GradScaler("cuda", enabled=amp) if hasattr(torch.amp, "GradScaler") else torch.cuda.amp.GradScaler(enabled=amp)
    lossFunction = buildLoss(config)
    transforms = buildTransforms(config)
    dataset = CacheDataset(
        data=[{"image": s["image"], "label": s["label"]} for s in samples], transform=transforms,
        cache_rate=float(config["data"].get("cache_rate", 1.0)), num_workers=0, progress=False, copy_cache=True,
    )
    workers = int(config["data"].get("num_workers", 0))

    startEpoch, history, best = 0, [], {"dice": None, "epoch": None, "stale": 0}
    if resume is not None:
        checkpoint = loadCheckpoint(resume)
        loadNetworkWeights(network, checkpoint, resume)
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None and checkpoint.get("scheduler"):
            scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        startEpoch = int(checkpoint["epoch"])
        history = list(checkpoint.get("history") or [])
        best = dict(checkpoint.get("best") or best)
        if startEpoch > int(config["epochs"]):
            raise MedSegUNetError(
                f"'{resume}' already ran {startEpoch} epochs but the config asks for {config['epochs']}: give 'epochs' above {startEpoch} to continue."
            )
        if scheduler is not None and hasattr(scheduler, "T_max") and scheduler.T_max != int(config["epochs"]):
            scheduler = _stretchedSchedule(optimizer, scheduler, history, startEpoch, int(config["epochs"]))
            log(f"The learning-rate schedule is stretched from {checkpoint['config']['epochs']} to {config['epochs']} epochs.")
        log(f"Resuming from '{resume}' after epoch {startEpoch}.")

    from ..engine.volumes import writeText

    writeText(json.dumps(config, indent=2), os.path.join(outputDir, "config.json"))
    lastPath = os.path.join(outputDir, "checkpoint_last.pt")
    bestPath = os.path.join(outputDir, "checkpoint_best.pt")
    patience = (config.get("early_stopping") or {}).get("patience")
    minDelta = float((config.get("early_stopping") or {}).get("min_delta", 0.0))
    generator = torch.Generator()

    def state(epoch: int) -> dict:
        return _plain({
            "format": CHECKPOINT_FORMAT, "epoch": epoch, "history": history, "best": best, "config": config,
            "train_cases": [c.id for c in trainCases], "validation_cases": [c.id for c in validationCases],
        }) | {
            "model": network.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None, "scaler": scaler.state_dict(),
        }

    try:
        for epoch in range(startEpoch, int(config["epochs"])):
            epochStart = time.perf_counter()
            # Everything random in this epoch depends only on (seed, epoch): resume == uninterrupted.
            epochSeed = (seed * 100003 + epoch) % (2**31)
            seedEverything(epochSeed, config.get("deterministic", True))
            transforms.set_random_state(seed=epochSeed)
            generator.manual_seed(epochSeed)
            loader = DataLoader(dataset, batch_size=int(config["batch_size"]), shuffle=True, num_workers=workers, generator=generator)
            network.train()
            bar = ProgressBar(len(loader), f"epoch {epoch + 1}/{config['epochs']}", log)
            losses = []
            for step, batch in enumerate(loader):
                images, labels = batch["image"].to(torchDevice), batch["label"].to(torchDevice)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
                    loss = lossFunction(network(images), labels)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(loss.detach()))
                bar.update(step + 1, f"loss {np.mean(losses):.4f}")
            lr = float(optimizer.param_groups[0]["lr"])
            if scheduler is not None:
                scheduler.step()
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None, "lr": lr,
                                   "val_soft_dice_loss": None, "val_mean_dice": None}
            validated = validationItems and ((epoch + 1) % int(config["val_interval"]) == 0 or epoch + 1 == int(config["epochs"]))
            improved = False
            if validated:
                summary, _ = validate(network, config, validationItems, torchDevice)
                row["val_soft_dice_loss"], row["val_mean_dice"] = summary["loss"], summary["mean_dice"]
                for metric in ("dice", "iou", "sensitivity", "specificity"):
                    for label, value in zip(config["labels"], summary[metric]):
                        row[f"{metric}_{label['name']}"] = float(value)
                if best["dice"] is None or summary["mean_dice"] > best["dice"] + minDelta:
                    best.update(dice=summary["mean_dice"], epoch=epoch + 1, stale=0)
                    improved = True
                else:
                    best["stale"] = int(best["stale"]) + 1
            elif not validationItems:
                best.update(epoch=epoch + 1)
                improved = True
            row["seconds"] = time.perf_counter() - epochStart
            history.append(row)
            text = f"loss {row['train_loss']:.4f}" + (f", validation mean Dice {row['val_mean_dice']:.4f}" if validated else "")
            bar.close(text + (" (best)" if improved and validated else "") + f", {row['seconds']:.1f} s")
            _saveEpoch(state(epoch + 1), lastPath, bestPath if improved else None, historyCSV(history, config), os.path.join(outputDir, "metrics.csv"))
            if patience and validated and int(best["stale"]) >= int(patience):
                log(f"Early stopping: no better validation Dice for {patience} validation(s); best {best['dice']:.4f} at epoch {best['epoch']}.")
                break
    except (KeyboardInterrupt, Interrupted) as error:
        error.kept = _keptMessage(lastPath)  # type: ignore[attr-defined]
        raise

    import shutil

    if not os.path.exists(lastPath):  # resumed into a new folder with no epoch left to run
        _saveCheckpoint(state(len(history)), lastPath)
    if not os.path.exists(bestPath) and resume is not None:
        previousBest = os.path.join(os.path.dirname(os.path.abspath(resume)), "checkpoint_best.pt")
        if os.path.exists(previousBest):
            shutil.copyfile(previousBest, bestPath)
    if not os.path.exists(bestPath):
        shutil.copyfile(lastPath, bestPath)
    plotCurves(history, config, os.path.join(outputDir, "curves.png"))
    if validationItems and os.path.exists(bestPath):
        network.load_state_dict(loadCheckpoint(bestPath)["model"])
        _, predictions = validate(network, config, validationItems, torchDevice)
        plotValidationSlices(validationItems, predictions, config, os.path.join(outputDir, "validation.png"))
    log(f"Done in {time.perf_counter() - started:.0f} s. Best checkpoint: {bestPath}"
        + (f" (epoch {best['epoch']}, validation mean Dice {best['dice']:.4f})" if best.get("dice") is not None else ""))
    return TrainingResult(
        outputDir=outputDir, bestCheckpoint=bestPath, lastCheckpoint=lastPath, history=history, bestEpoch=best.get("epoch"),
        bestMeanDice=best.get("dice"), trainCases=[c.id for c in trainCases], validationCases=[c.id for c in validationCases],
    )


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def addParser(subparsers) -> None:
    """Register ``medsegunet train``."""
    parser = subparsers.add_parser(
        "train",
        help="train a MONAI U-Net from a Decathlon folder or a case CSV",
        description="Train a MONAI U-Net with the same ROI, resampling and normalisation as inference. "
        "Writes checkpoints, metrics.csv, curves.png and validation.png to --output; then run 'medsegunet export'.",
    )
    parser.add_argument("--config", help="training config, YAML or JSON (see trainconfig.schema.json); with --resume, defaults to the checkpoint's")
    parser.add_argument("--output", required=True, help="output folder (created if missing)")
    parser.add_argument("--resume", help="checkpoint_last.pt of an interrupted run, to continue it")
    from ..engine.modelcard import DEVICES

    parser.add_argument("--device", default="auto", choices=DEVICES, help="where to train (default auto: CUDA when present)")
    parser.set_defaults(func=run)


def run(args, console=None) -> int:
    """``medsegunet train``: returns the exit status."""
    if args.config:
        config = readConfig(args.config)
    elif args.resume:
        config = validateConfig(loadCheckpoint(args.resume)["config"], f"config stored in '{args.resume}'")
    else:
        raise MedSegUNetError("Give --config CONFIG (YAML or JSON), or --resume CHECKPOINT to continue a run.")
    from ..engine.volumes import checkDistinctPaths

    checkDistinctPaths(
        {"--output": args.output, "--output (config.json)": os.path.join(args.output, "config.json")},
        {"--config": args.config, "--resume": args.resume},
    )
    log = console.line if console is not None else None
    train(config, args.output, resume=args.resume, device=args.device, log=log)
    return 0
