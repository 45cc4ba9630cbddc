"""``medsegunet import``: a model from another ecosystem as a verified MedSegUNet TorchScript model.

ONNX files are converted by copying their weights into the MONAI network the card names
(``"network": {"_target_": "monai.networks.nets.SegResNetDS", "args": {...}}``), rather than by
converting the ONNX graph (onnx2torch needs a torchvision that does not import beside every torch).
The graph's weighted layers (Conv, ConvTranspose, BatchNormalization, InstanceNormalization, PRelu,
Gemm) are paired with the network's in execution order, not by name, so graphs from either of
torch's exporters import: the default (dynamo, optimised by onnxscript) and the TorchScript one,
with or without constant folding (renamed tensors, batch norms merged into the convolutions
before them) (:func:`copyWeights`). Every import is verified before it
is written: the TorchScript model and onnxruntime must give the same outputs on a random patch,
within a tolerance relative to the output's range; a graph that activates its output (Softmax or
Sigmoid at the end), weights that do not fit the card's network, or any difference is refused in
one line and nothing is written.

Auto3DSeg checkpoints (SlicerMONAIAuto3DSeg's format: ``config`` with the network's ``_target_``,
``roi_size``, ``resample_resolution``, ``orientation_ras``, ``normalize_mode``, ``sigmoid``,
``crop_foreground``; and ``state_dict``) become a card with logit blending; labels come from
``--labels``; a normalisation the card cannot express is refused, and ``crop_foreground`` is
replaced by MedSegUNet's ROI (said on import and recorded in the card). The scripted network is
verified against the eager one. MONAI bundle folders (``configs/inference.json|yaml``,
``configs/metadata.json``, ``models/model.pt``) become a card from their preprocessing,
inferer, post-processing and channel names (:func:`cardFromBundle`), verified the same way.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from ..engine.errors import ModelImportError, firstLine
from .verification import ImportStage, provenance, reportStep, verifyAgainstEager


def detectFormat(source: str) -> str:
    """``onnx``, ``torchscript`` (a published TorchScript archive), ``auto3dseg`` (a checkpoint dict
    with ``config`` and ``state_dict``), ``bundle``, or ``nnunet`` (a results folder)."""
    from .torchscriptimport import isTorchScript

    if os.path.isdir(source):
        if os.path.isdir(os.path.join(source, "configs")):
            return "bundle"
        if os.path.isfile(os.path.join(source, "plans.json")) or os.path.isfile(os.path.join(source, "dataset.json")):
            return "nnunet"
        raise ModelImportError(
            f"'{source}' is a folder but neither a MONAI bundle (configs/) nor an nnU-Net results folder (dataset.json, plans.json)."
        )
    if source.lower().endswith(".onnx"):
        return "onnx"
    if source.lower().endswith((".pt", ".pth", ".ckpt")):
        return "torchscript" if os.path.isfile(source) and isTorchScript(source) else "auto3dseg"
    raise ModelImportError(
        f"'{source}' is not a model this command imports: give an .onnx file, a TorchScript or Auto3DSeg .pt file or a MONAI bundle folder."
    )


# Auto3DSeg's normalize_mode → a card normalisation; the others are refused, naming the mode.
AUTO3DSEG_NORMALIZATION = {
    "none": {"type": "none"},
    "meanstd": {"type": "zscore", "nonzero": True},
    "mri": {"type": "zscore", "nonzero": True},
}


def readLabels(path: str | None) -> list[dict]:
    """Labels from a CSV with ``value`` and ``name`` columns (SlicerMONAIAuto3DSeg's labels.csv)."""
    import csv

    if not path:
        raise ModelImportError("Importing an Auto3DSeg checkpoint needs --labels LABELS.csv (columns value,name).")
    from ..engine.paths import checkRegularFile, readRegularBytes

    checkRegularFile(path, "Labels table")
    rows = list(csv.DictReader(io.StringIO(decodeLabelsText(readRegularBytes(path, "Labels table", 2**20)), newline="")))
    try:
        labels = [{"value": int(row["value"]), "name": row["name"].strip()} for row in rows if row.get("name")]
    except (KeyError, ValueError):
        raise ModelImportError(f"Labels table '{path}' needs columns 'value' (integers 1–255) and 'name'.") from None
    if not labels:
        raise ModelImportError(f"Labels table '{path}' lists no label.")
    import colorsys

    for index, label in enumerate(labels):
        label["color"] = [round(c, 3) for c in colorsys.hsv_to_rgb((index * 0.618) % 1.0, 0.65, 0.9)]
    return labels


def decodeLabelsText(data: bytes) -> str:
    """A labels table's text in the encodings people save it in: UTF-8 (with or without a byte-order
    mark), UTF-16/32 with one (Excel's "Unicode text"), else Windows-1252 or Latin-1 (Excel's "CSV"
    on Windows). Label names are only shown, so a guess between the last two cannot misplace a file."""
    import codecs

    for mark, encoding in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(mark):
            return data.decode(encoding, errors="replace")
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


def cardFromAuto3DSeg(config: dict, labels: list[dict], source: str) -> tuple[dict, list[str]]:
    """The card an Auto3DSeg config says, and the notes of what MedSegUNet does instead.

    Raises:
        MedSegUNetError: a preprocessing step the card cannot express (named).
    """
    from .networks import plainValue

    def value(key: str, default=None):
        return plainValue(config.get(key, default), f"'{source}': config key '{key}'", config)

    mode = value("normalize_mode", "meanstd")
    if mode not in AUTO3DSEG_NORMALIZATION:
        raise ModelImportError(
            f"'{source}' uses normalize_mode '{mode}', which a MedSegUNet card cannot express (only none, meanstd/mri): it is not imported."
        )
    extra = list((value("extra_modalities") or {}).items())
    if any(value not in AUTO3DSEG_NORMALIZATION for _, value in extra):
        raise ModelImportError(f"'{source}' normalises an extra modality in a way a MedSegUNet card cannot express: it is not imported.")
    notes = []
    if value("crop_foreground", True):
        notes.append("crop_foreground: MedSegUNet crops to its region of interest (the region every series covers) instead")
    sigmoid = bool(value("sigmoid", False))
    card = {
        "schema": "medsegunet.model/2",
        "name": os.path.splitext(os.path.basename(source))[0],
        "description": f"Imported from the Auto3DSeg checkpoint {os.path.basename(source)}",
        "spatial_dims": 3,
        "inputs": [{"name": "image"}, *[{"name": str(name)} for name, _ in extra]],
        "labels": labels,
        "output": "sigmoid" if sigmoid else "softmax",
        "spacing": [float(v) for v in value("resample_resolution")] if value("resample_resolution") is not None else None,
        "orientation": "RAS" if value("orientation_ras", False) else None,
        "normalization": dict(AUTO3DSEG_NORMALIZATION[mode]),
        "patch_size": [int(v) for v in value("roi_size")],
        "overlap": 0.625,
        "sw_batch_size": 1,
        # SlidingWindowInfererAdapt blends the network's logits; they are activated afterwards.
        "blend": "logits",
    }
    return card, notes


def checkpointSafeTypes() -> list:
    """The plain non-torch types Auto3DSeg and Lightning checkpoints hold beside their weights
    (NumPy scalars of metrics, their dtypes): allowed to ``torch.load(weights_only=True)``, nothing else."""
    allowed = [np.dtype, np.ndarray]
    core = getattr(np, "_core", None) or getattr(np, "core")
    allowed += [core.multiarray.scalar, core.multiarray._reconstruct]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [
            getattr(dtypes, name)
            for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType")
            if hasattr(dtypes, name)
        ]
    return allowed


def loadCheckpointAsData(source: str):
    """A checkpoint read with ``torch.load(weights_only=True)``: tensors and plain values only; a
    file that needs anything else (a pickled object, code) is refused, never run."""
    import torch

    try:
        with torch.serialization.safe_globals(checkpointSafeTypes()):
            return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign or unsafe files
        text = firstLine(error)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise ModelImportError(
                f"'{source}' holds Python objects beyond weights and plain values, which could run code when read: it is not loaded (save "
                "the checkpoint's state_dict and config as plain data)."
            ) from None
        raise ModelImportError(f"Cannot read checkpoint '{source}' ({text[:120]}).") from None


def importAuto3DSeg(
    source: str, labelsPath: str | None, output: str, origin: str | None = None, format: str = "torchscript", progress=None
) -> dict:
    """Convert and verify an Auto3DSeg checkpoint (``config`` and ``state_dict``); returns the card
    written (``origin``: the source it records, :func:`verification.provenance`; ``progress``: told
    each :class:`verification.ImportStage`)."""
    import torch

    from ..engine.modelcard import saveModel, validateCard
    from ..engine.paths import checkRegularFile, sha256
    from .networks import buildNetwork as buildAllowed
    from .networks import networkArguments

    checkRegularFile(source, "Checkpoint")
    reportStep(progress, ImportStage.READING, f"the checkpoint {os.path.basename(source)} as data")
    checkpoint = loadCheckpointAsData(source)
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "state_dict" not in checkpoint:
        raise ModelImportError(f"'{source}' is not an Auto3DSeg checkpoint (a dict with 'config' and 'state_dict').")
    config = checkpoint["config"]
    card, notes = cardFromAuto3DSeg(config, readLabels(labelsPath), source)
    card = validateCard(card, f"card made from '{source}'")
    network = buildAllowed(config.get("network"), f"'{source}': config key 'network'", config)
    reportStep(progress, ImportStage.BUILDING, type(network).__name__)
    try:
        network.load_state_dict(checkpoint["state_dict"])
    except Exception as error:  # weights that do not fit raise many types
        raise ModelImportError(f"The weights of '{source}' do not fit the network its config names ({firstLine(error)[:140]}).") from None
    try:
        scripted = torch.jit.script(network)
    except Exception as error:  # TorchScript's frontend errors
        raise ModelImportError(f"The network of '{source}' cannot be scripted to TorchScript ({firstLine(error)[:120]}).") from None
    # A patch the network takes, small enough for a CPU check.
    patch = [min(int(v), 64) // 32 * 32 or 32 for v in card["patch_size"]]
    reportStep(progress, ImportStage.VERIFYING, f"the eager network on a {tuple(patch)} patch")
    verified = verifyAgainstEager(network, scripted, card, patch, "the labels (check --labels)")
    arguments = networkArguments(config.get("network"), f"'{source}': config key 'network'", config)
    card = card.replaced(provenance=provenance("auto3dseg", source, sha256(source), network, verified, notes, origin, arguments))
    reportStep(progress, ImportStage.WRITING, os.path.basename(output))
    saveModel(network if format == "pt2" else scripted, card, output, format=format)
    return card


def _transformName(item: dict) -> str:
    return str(item.get("_target_", "")).rsplit(".", 1)[-1]


# Loading, channel and saving transforms a card implies.
IMPLIED_TRANSFORMS = {
    "LoadImaged",
    "LoadImage",
    "EnsureChannelFirstd",
    "EnsureTyped",
    "EnsureType",
    "CastToTyped",
    "Invertd",
    "SaveImaged",
    "ToDeviced",
    "CopyItemsd",
}


def cardFromBundle(config: dict, source: str) -> dict:
    """The card a MONAI bundle's inference config and metadata say; refuses what a card cannot express.

    Preprocessing: loading and channel transforms are implied; ``Orientationd`` → orientation,
    ``Spacingd`` → spacing, ``NormalizeIntensityd`` → zscore, ``ScaleIntensityd`` → minmax,
    ``ScaleIntensityRangePercentilesd`` → percentile. Post-processing: ``Activationsd`` (softmax or
    sigmoid), ``AsDiscreted``, ``KeepLargestConnectedComponentd``, ``FillHolesd``.

    Args:
        config: the inference config as read (JSON or YAML data), with the metadata under ``_meta_``;
            only the values used here are read, each as plain data (:func:`networks.plainValue`).
    """
    bundle = BundleConfig(config, source)
    card: dict = {
        "schema": "medsegunet.model/2",
        "spatial_dims": 3,
        "spacing": None,
        "orientation": None,
        "normalization": {"type": "none"},
    }
    bundle.readPreprocessing(card)
    bundle.readPostprocessing(card)
    bundle.readInferer(card)
    bundle.readMetadata(card)
    return card


class BundleConfig:
    """A bundle's config read as data, one value at a time (nothing in it is evaluated)."""

    def __init__(self, config: dict, source: str) -> None:
        self.config, self.source = config, source

    def value(self, item: dict, key: str, default=None, where: str = ""):
        from .networks import plainValue

        found = item.get(key, default) if isinstance(item, dict) else default
        return plainValue(found, f"the bundle '{self.source}': {where or _transformName(item)}.{key}", self.config)

    def transforms(self, section: str) -> list:
        from .networks import plainValue

        part = self.config.get(section) or {}
        listed = part.get("transforms", []) if isinstance(part, dict) else part
        if isinstance(listed, str):  # an expression or reference: refused by name, never evaluated
            plainValue(listed, f"the bundle '{self.source}': {section}", None)
        if not isinstance(listed, list) or not all(isinstance(item, dict) for item in listed):
            raise ModelImportError(f"The bundle '{self.source}': {section}.transforms is not a list of transforms.")
        return [item for item in listed if _transformName(item) not in IMPLIED_TRANSFORMS]

    def readPreprocessing(self, card: dict) -> None:
        value = self.value
        for item in self.transforms("preprocessing"):
            name = _transformName(item)
            if name == "Orientationd":
                card["orientation"] = str(value(item, "axcodes", "RAS"))
            elif name == "Spacingd":
                card["spacing"] = [float(v) for v in value(item, "pixdim")]
            elif name == "NormalizeIntensityd":
                card["normalization"] = {"type": "zscore", "nonzero": bool(value(item, "nonzero", False))}
            elif name == "ScaleIntensityd":
                card["normalization"] = {
                    "type": "minmax",
                    "b_min": float(value(item, "minv", 0.0)),
                    "b_max": float(value(item, "maxv", 1.0)),
                }
            elif name == "ScaleIntensityRangePercentilesd":
                card["normalization"] = {
                    "type": "percentile",
                    "lower": float(value(item, "lower")),
                    "upper": float(value(item, "upper")),
                    "b_min": float(value(item, "b_min", 0.0)),
                    "b_max": float(value(item, "b_max", 1.0)),
                    "clip": bool(value(item, "clip", False)),
                }
            else:
                raise ModelImportError(
                    f"The bundle '{self.source}' preprocesses with {name}, which a MedSegUNet card cannot express: it is not imported."
                )

    def readPostprocessing(self, card: dict) -> None:
        card["output"], post = "softmax", {}
        for item in self.transforms("postprocessing"):
            name = _transformName(item)
            if name == "AsDiscreted":
                continue
            if name == "Activationsd":
                card["output"] = "sigmoid" if self.value(item, "sigmoid") else "softmax"
            elif name == "KeepLargestConnectedComponentd":
                post["largest_component"] = [int(v) for v in self.value(item, "applied_labels", [])] or True
            elif name == "FillHolesd":
                post["fill_holes"] = True
            else:
                raise ModelImportError(
                    f"The bundle '{self.source}' post-processes with {name}, which a MedSegUNet card cannot express: it is not imported."
                )
        if post:
            card["postprocessing"] = post

    def readInferer(self, card: dict) -> None:
        inferer = self.config.get("inferer", {}) if isinstance(self.config.get("inferer"), dict) else {}
        card["patch_size"] = [int(v) for v in self.value(inferer, "roi_size", [96, 96, 96], "inferer")]
        card["overlap"] = float(self.value(inferer, "overlap", 0.25, "inferer"))
        card["sw_batch_size"] = int(self.value(inferer, "sw_batch_size", 4, "inferer"))

    def readMetadata(self, card: dict) -> None:
        """Labels from the output channel names, inputs from the channel count, name, version, licence."""
        import colorsys

        metadata = self.config.get("_meta_", {}) or {}
        formats = metadata.get("network_data_format") or {}
        channels = next(iter((formats.get("outputs") or {}).values()), {}).get("channel_def") or {}
        softmax = card["output"] == "softmax"
        names = [(int(k), v) for k, v in sorted(channels.items(), key=lambda kv: int(kv[0])) if not (softmax and int(k) == 0)]
        if not names:
            raise ModelImportError(
                f"The bundle '{self.source}' names no output channels (metadata network_data_format outputs channel_def): it is not "
                "imported."
            )
        card["labels"] = [
            {
                "value": channel if softmax else channel + 1,
                "name": str(name),
                "color": [round(c, 3) for c in colorsys.hsv_to_rgb((index * 0.618) % 1.0, 0.65, 0.9)],
            }
            for index, (channel, name) in enumerate(names)
        ]
        channelsIn = int(next(iter((formats.get("inputs") or {}).values()), {}).get("num_channels", 1))
        card["inputs"] = [{"name": "image" if channelsIn == 1 else f"image{index + 1}"} for index in range(channelsIn)]
        card["name"] = str(metadata.get("name") or os.path.basename(os.path.normpath(self.source)))
        card["version"] = str(metadata.get("version", ""))
        if metadata.get("license"):
            card["license"] = str(metadata["license"])


def readConfigFile(path: str) -> dict:
    """A bundle's JSON or YAML config as plain data (``yaml.safe_load``: no Python objects)."""
    import yaml

    try:
        with open(path, encoding="utf-8-sig") as stream:
            data = json.load(stream) if path.lower().endswith(".json") else yaml.safe_load(stream)
    except (OSError, ValueError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ModelImportError(f"Cannot read the bundle's config '{path}' ({firstLine(error)[:120]}).") from None
    if not isinstance(data, dict):
        raise ModelImportError(f"The bundle's config '{path}' is not a JSON/YAML object.")
    return data


def importBundle(source: str, output: str, origin: str | None = None, format: str = "torchscript", progress=None) -> dict:
    """Convert and verify a MONAI bundle folder; returns the card written (``origin``: the source it
    records, :func:`verification.provenance`; ``progress``: told each :class:`verification.ImportStage`).

    The configs are read as data: the network is built by :func:`networks.buildNetwork` (MONAI's
    networks only), and no expression of the bundle is evaluated.
    """
    import torch

    from ..engine.modelcard import saveModel, validateCard
    from ..engine.paths import sha256
    from .networks import buildNetwork as buildAllowed
    from .networks import networkArguments

    reportStep(progress, ImportStage.READING, f"the bundle {os.path.basename(os.path.normpath(source))} as data")
    configs = os.path.join(source, "configs")
    inference = next(
        (
            os.path.join(configs, name)
            for name in ("inference.json", "inference.yaml", "inference.yml")
            if os.path.isfile(os.path.join(configs, name))
        ),
        None,
    )
    if inference is None:
        raise ModelImportError(f"The bundle '{source}' has no configs/inference.json or .yaml.")
    config = readConfigFile(inference)
    if os.path.isfile(os.path.join(configs, "metadata.json")):
        config["_meta_"] = readConfigFile(os.path.join(configs, "metadata.json"))
    card = validateCard(cardFromBundle(config, source), f"card made from the bundle '{source}'")
    weights = os.path.join(source, "models", "model.pt")
    if not os.path.isfile(weights):
        raise ModelImportError(f"The bundle '{source}' has no models/model.pt (its weights).")
    network = buildAllowed(config.get("network_def"), f"the bundle '{source}': network_def", config)
    reportStep(progress, ImportStage.BUILDING, type(network).__name__)
    state = loadCheckpointAsData(weights)
    try:
        network.load_state_dict(state.get("model", state) if isinstance(state, dict) and "model" in state else state)
        scripted = torch.jit.script(network)
    except Exception as error:  # weights and scripting fail in many ways
        raise ModelImportError(f"The bundle's network cannot be loaded or scripted ({firstLine(error)[:140]}).") from None
    reportStep(progress, ImportStage.VERIFYING, f"the eager network on a {tuple(card['patch_size'])} patch")
    verified = verifyAgainstEager(network, scripted, card, card["patch_size"], "its metadata's channel names")
    arguments = networkArguments(config.get("network_def"), f"the bundle '{source}': network_def", config)
    card = card.replaced(provenance=provenance("monai-bundle", source, sha256(weights), network, verified, [], origin, arguments))
    reportStep(progress, ImportStage.WRITING, os.path.basename(output))
    saveModel(network if format == "pt2" else scripted, card, output, format=format)
    return card


__all__ = [
    "detectFormat",
    "readLabels",
    "decodeLabelsText",
    "cardFromAuto3DSeg",
    "checkpointSafeTypes",
    "loadCheckpointAsData",
    "importAuto3DSeg",
    "cardFromBundle",
    "BundleConfig",
    "readConfigFile",
    "importBundle",
]
