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

import json
import os

import numpy as np

from ..engine.errors import MedSegUNetError, firstLine

# float32 runtimes differ by ~1e-4 on logits of ~10: allowed difference, relative to the output range.
RELATIVE_TOLERANCE = 1e-3
ABSOLUTE_TOLERANCE = 1e-4


def detectFormat(source: str) -> str:
    """``onnx``, ``auto3dseg`` (a checkpoint dict with ``config`` and ``state_dict``), or ``bundle``."""
    if os.path.isdir(source):
        if os.path.isdir(os.path.join(source, "configs")):
            return "bundle"
        raise MedSegUNetError(f"'{source}' is a folder but not a MONAI bundle (no configs/ folder).")
    if source.lower().endswith(".onnx"):
        return "onnx"
    if source.lower().endswith((".pt", ".pth", ".ckpt")):
        return "auto3dseg"
    raise MedSegUNetError(f"'{source}' is not a model this command imports: give an .onnx file, an Auto3DSeg checkpoint (.pt) or a MONAI bundle folder.")


def buildNetwork(spec: dict):
    """The eager network a card's ``network`` names: ``{"_target_": "monai.networks.nets.NAME", "args": {...}}``,
    built as data (:mod:`networks`: MONAI's networks only, nothing in the card is run)."""
    from .networks import buildNetwork as buildAllowed

    if not isinstance(spec, dict) or "_target_" not in spec:
        raise MedSegUNetError("The card needs \"network\": {\"_target_\": \"monai.networks.nets.NAME\", \"args\": {...}} naming the network the ONNX weights belong to.")
    return buildAllowed(spec, "the card's network")


def onnxTensors(model) -> dict[str, np.ndarray]:
    """Every tensor of an ONNX graph under the PyTorch name ``torch.onnx.export`` gave it."""
    from onnx import numpy_helper

    tensors = {initializer.name: numpy_helper.to_array(initializer) for initializer in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in tensors:
            tensors[node.output[0]] = tensors[node.input[0]]
        elif node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    tensors[node.output[0]] = numpy_helper.to_array(attribute.t)
    return tensors


# The layers whose weights an ONNX graph carries, by the ONNX operator and the torch module kind.
WEIGHTED_OPS = {"Conv": "conv", "ConvTranspose": "convtranspose", "BatchNormalization": "batchnorm", "InstanceNormalization": "instancenorm", "PRelu": "prelu", "Gemm": "linear"}


def moduleKind(module) -> str | None:
    """``conv``, ``convtranspose``, ``batchnorm``, ``instancenorm``, ``prelu``, ``linear``, or None for a module without weights."""
    import torch.nn as nn

    kinds = (
        (nn.modules.conv._ConvTransposeNd, "convtranspose"), (nn.modules.conv._ConvNd, "conv"), (nn.modules.batchnorm._BatchNorm, "batchnorm"),
        (nn.modules.instancenorm._InstanceNorm, "instancenorm"), (nn.PReLU, "prelu"), (nn.Linear, "linear"),
    )
    for moduleClass, kind in kinds:
        if isinstance(module, moduleClass):
            return kind
    return None


def layersInCallOrder(network, sample) -> list[tuple[str, object]]:
    """The network's weighted leaf modules, with their names, in the order one forward pass calls them.

    Raises:
        MedSegUNetError: a leaf module with weights that an ONNX graph's layers cannot be mapped to (GroupNorm, LayerNorm, ...).
    """
    import torch

    called: list[tuple[str, object]] = []
    handles = []
    for name, module in network.named_modules():
        if list(module.children()):
            continue
        if moduleKind(module) is None:
            if any(True for _ in module.parameters(recurse=False)):
                raise MedSegUNetError(f"The card's network has a {type(module).__name__} ('{name}') whose weights this import cannot map from an ONNX graph: use a network with BatchNorm or InstanceNorm.")
            continue
        handles.append(module.register_forward_pre_hook(lambda module, args, name=name: called.append((name, module))))
    try:
        with torch.no_grad():
            network(sample)
    finally:
        for handle in handles:
            handle.remove()
    return called


def onnxLayers(model) -> tuple[list, dict]:
    """The graph's weighted nodes in graph (execution) order, and each tensor's consuming operators."""
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    return [node for node in model.graph.node if node.op_type in WEIGHTED_OPS], consumers


def copyWeights(network, model, sample, source: str) -> list[str]:
    """Load an ONNX graph's weights into the card's network, layer by layer in execution order.

    The layers are paired in the order a forward pass calls them, not by name, so graphs whose
    tensors were renamed or merged by ``torch.onnx.export``'s constant folding import as well as
    unfolded ones. A batch norm folded into the convolution before it (the network calls the norm
    next, the graph's next weighted node is no BatchNormalization) is folded in the network too:
    the convolution takes the folded weights and bias and the norm becomes ``nn.Identity``, so the
    imported network does the work the exported graph does, no more. The caller verifies the
    result against onnxruntime.

    Returns:
        notes for the card's provenance (how many norms were folded by the export).

    Raises:
        MedSegUNetError: layers of another kind, shape or count than the card's network's, naming the first.
    """
    import torch

    tensors = onnxTensors(model)
    nodes, consumers = onnxLayers(model)
    layers = layersInCallOrder(network, sample)
    mismatch = "the card must name the network that was exported (same class and args)"
    position, folded, pendingBias, pendingConv = 0, 0, None, None
    with torch.no_grad():
        for index, (name, module) in enumerate(layers):
            kind = moduleKind(module)
            if kind == "batchnorm" and pendingBias is not None:
                # Folded by the export: y = conv(x; W') + b'.
                pendingConv.bias = torch.nn.Parameter(pendingBias)
                parentName, _, childName = name.rpartition(".")
                setattr(network.get_submodule(parentName) if parentName else network, childName, torch.nn.Identity())
                pendingBias, pendingConv, folded = None, None, folded + 1
                continue
            if position >= len(nodes):
                raise MedSegUNetError(f"'{source}' has fewer weighted layers ({len(nodes)}) than the card's network (at '{name}'): {mismatch}.")
            node = nodes[position]
            position += 1
            if WEIGHTED_OPS[node.op_type] != kind:
                raise MedSegUNetError(f"'{source}': weighted layer {position} is an ONNX {node.op_type} where the card's network has {type(module).__name__} '{name}': {mismatch}.")
            weights = [tensors.get(input) if input else None for input in node.input[1:]]
            if node.op_type == "Gemm" and weights[0] is not None and not any(a.name == "transB" and a.i == 1 for a in node.attribute):
                weights[0] = weights[0].T
            if weights[0] is None or (kind == "batchnorm" and any(weight is None for weight in weights[:4])):
                raise MedSegUNetError(f"'{source}': the weights of ONNX node '{node.name or node.op_type}' are computed in the graph, not stored: export the network in eval mode.")
            # Folded when the network calls a batch norm next but the graph's next weighted node is none.
            fusedNorm = (
                kind in ("conv", "convtranspose") and index + 1 < len(layers) and moduleKind(layers[index + 1][1]) == "batchnorm"
                and "BatchNormalization" not in consumers.get(node.output[0], [])
                and (position >= len(nodes) or nodes[position].op_type != "BatchNormalization")
            )
            pendingBias, pendingConv = _loadLayer(module, kind, name, weights, fusedNorm, source), module
    if position != len(nodes):
        raise MedSegUNetError(f"'{source}' has {len(nodes) - position} more weighted layers than the card's network: {mismatch}.")
    return [f"{folded} batch norms folded into the convolutions before them, as the ONNX export folded them"] if folded else []


def _loadLayer(module, kind: str, name: str, weights: list, fusedNorm: bool, source: str):
    """Copy one ONNX node's weights into one torch module; returns the folded bias when its norm is folded, else None."""
    import torch

    def put(parameter, array, what):
        if tuple(array.shape) != tuple(parameter.shape):
            raise MedSegUNetError(f"'{source}': the {what} of '{name}' has shape {tuple(array.shape)} where the card's network has {tuple(parameter.shape)}: check the network args.")
        parameter.copy_(torch.from_numpy(np.asarray(array, dtype=np.float32)))

    bias = weights[1] if len(weights) > 1 and weights[1] is not None else None
    if kind in ("conv", "convtranspose", "linear"):
        put(module.weight, weights[0], "weight")
        outputs = module.weight.shape[1 if kind == "convtranspose" else 0] * (module.groups if kind == "convtranspose" else 1)
        bias = np.zeros(outputs, np.float32) if bias is None else bias
        if fusedNorm:
            return torch.from_numpy(np.array(bias, dtype=np.float32))
        if module.bias is not None:
            put(module.bias, bias, "bias")
        elif np.any(bias):
            raise MedSegUNetError(f"'{source}': ONNX gives '{name}' a bias that the card's network does not have: check the network args.")
    elif kind == "batchnorm":
        for parameter, array, what in zip((module.weight, module.bias, module.running_mean, module.running_var), weights[:4], ("scale", "bias", "mean", "variance")):
            put(parameter, array, what)
    elif kind == "instancenorm":
        if module.affine:
            put(module.weight, weights[0], "scale")
            put(module.bias, weights[1], "bias")
        elif not (np.all(weights[0] == 1) and not np.any(weights[1])):
            raise MedSegUNetError(f"'{source}': ONNX gives the instance norm '{name}' a scale and bias that the card's network does not have (affine=False): check the network args.")
    elif kind == "prelu":
        slope = np.asarray(weights[0])  # ONNX broadcasts it as (C, 1, 1, 1)
        put(module.weight, slope.reshape(module.weight.shape) if slope.size == module.weight.numel() else slope, "slope")
    return None


def checkGraphEnd(model, source: str) -> None:
    """Refuse a graph whose output is activated: the card's softmax/sigmoid would apply twice."""
    producers = {output: node for node in model.graph.node for output in node.output}
    last = producers.get(model.graph.output[0].name)
    if last is not None and last.op_type in ("Softmax", "Sigmoid", "ArgMax"):
        raise MedSegUNetError(f"'{source}' ends with {last.op_type}: the card cannot express it (MedSegUNet activates logits itself); export the logits, before the {last.op_type}.")


def importONNX(source: str, cardPath: str, output: str) -> dict:
    """Convert and verify an ONNX model; write it with its card. Returns the card written.

    Raises:
        MedSegUNetError: missing packages, a card without a network, weights that do not fit, an
            activated output, or outputs that differ from onnxruntime's.
    """
    import torch

    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise MedSegUNetError("Importing ONNX needs onnx and onnxruntime: pip install -e \".[import]\".") from None
    from ..engine.modelcard import outputChannels, saveModel, validateCard
    from ..engine.volumes import checkRegularFile, sha256

    checkRegularFile(source, "ONNX model")
    card = readImportCard(cardPath)
    network = buildNetwork(card.pop("network", None))
    card = validateCard(card, f"model card '{cardPath}'")
    try:
        model = onnx.load(source)
    except Exception as error:  # protobuf raises DecodeError and others
        raise MedSegUNetError(f"Cannot read ONNX model '{source}' ({firstLine(error)}).") from None
    checkGraphEnd(model, source)
    dims = int(card["spatial_dims"])
    patch = list(card.get("patch_size") or [64] * dims)
    sample = torch.randn(1, len(card["inputs"]), *patch, generator=torch.Generator().manual_seed(0))
    notes = copyWeights(network, model, sample, source)
    try:
        scripted = torch.jit.script(network)
    except Exception as error:  # TorchScript's frontend errors
        raise MedSegUNetError(f"The card's network cannot be scripted to TorchScript ({firstLine(error)[:120]}).") from None
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    try:
        expected = session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0]
    except Exception as error:  # onnxruntime raises its own error types
        raise MedSegUNetError(f"onnxruntime cannot run '{source}' on a {tuple(sample.shape)} patch ({firstLine(error)[:120]}): check the card's patch_size and inputs.") from None
    with torch.no_grad():
        got = scripted(sample)
    got = (got[0] if isinstance(got, (tuple, list)) else got).numpy()
    if got.shape != expected.shape or got.shape[1] != outputChannels(card):
        raise MedSegUNetError(f"The imported network gives shape {got.shape}, onnxruntime {expected.shape}, the card needs {outputChannels(card)} channels: fix the card.")
    verified = compareOutputs(expected, got, list(sample.shape), f"onnxruntime {onnxruntime.__version__}")
    card["provenance"] = provenance("onnx", source, sha256(source), network, verified, notes)
    saveModel(scripted, card, output)
    return card


# Auto3DSeg's normalize_mode → a card normalisation; the others are refused, naming the mode.
AUTO3DSEG_NORMALIZATION = {"none": {"type": "none"}, "meanstd": {"type": "zscore", "nonzero": True}, "mri": {"type": "zscore", "nonzero": True}}


def readLabels(path: str | None) -> list[dict]:
    """Labels from a CSV with ``value`` and ``name`` columns (SlicerMONAIAuto3DSeg's labels.csv)."""
    import csv

    if not path:
        raise MedSegUNetError("Importing an Auto3DSeg checkpoint needs --labels LABELS.csv (columns value,name).")
    from ..engine.volumes import checkRegularFile

    checkRegularFile(path, "Labels table")
    with open(path, encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    try:
        labels = [{"value": int(row["value"]), "name": row["name"].strip()} for row in rows if row.get("name")]
    except (KeyError, ValueError):
        raise MedSegUNetError(f"Labels table '{path}' needs columns 'value' (integers 1–255) and 'name'.") from None
    if not labels:
        raise MedSegUNetError(f"Labels table '{path}' lists no label.")
    import colorsys

    for index, label in enumerate(labels):
        label["color"] = [round(c, 3) for c in colorsys.hsv_to_rgb((index * 0.618) % 1.0, 0.65, 0.9)]
    return labels


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
        raise MedSegUNetError(f"'{source}' uses normalize_mode '{mode}', which a MedSegUNet card cannot express (only none, meanstd/mri): it is not imported.")
    extra = list((value("extra_modalities") or {}).items())
    if any(value not in AUTO3DSEG_NORMALIZATION for _, value in extra):
        raise MedSegUNetError(f"'{source}' normalises an extra modality in a way a MedSegUNet card cannot express: it is not imported.")
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
        allowed += [getattr(dtypes, name) for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType") if hasattr(dtypes, name)]
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
            raise MedSegUNetError(f"'{source}' holds Python objects beyond weights and plain values, which could run code when read: it is not loaded (save the checkpoint's state_dict and config as plain data).") from None
        raise MedSegUNetError(f"Cannot read checkpoint '{source}' ({text[:120]}).") from None


def importAuto3DSeg(source: str, labelsPath: str | None, output: str) -> dict:
    """Convert and verify an Auto3DSeg checkpoint (``config`` and ``state_dict``); returns the card written."""
    import torch

    from ..engine.modelcard import saveModel, validateCard
    from .networks import buildNetwork as buildAllowed
    from ..engine.volumes import checkRegularFile, sha256

    checkRegularFile(source, "Checkpoint")
    checkpoint = loadCheckpointAsData(source)
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "state_dict" not in checkpoint:
        raise MedSegUNetError(f"'{source}' is not an Auto3DSeg checkpoint (a dict with 'config' and 'state_dict').")
    config = checkpoint["config"]
    card, notes = cardFromAuto3DSeg(config, readLabels(labelsPath), source)
    card = validateCard(card, f"card made from '{source}'")
    network = buildAllowed(config.get("network"), f"'{source}': config key 'network'", config)
    try:
        network.load_state_dict(checkpoint["state_dict"])
    except Exception as error:  # weights that do not fit raise many types
        raise MedSegUNetError(f"The weights of '{source}' do not fit the network its config names ({firstLine(error)[:140]}).") from None
    try:
        scripted = torch.jit.script(network)
    except Exception as error:  # TorchScript's frontend errors
        raise MedSegUNetError(f"The network of '{source}' cannot be scripted to TorchScript ({firstLine(error)[:120]}).") from None
    # A patch the network takes, small enough for a CPU check.
    patch = [min(int(v), 64) // 32 * 32 or 32 for v in card["patch_size"]]
    verified = verifyAgainstEager(network, scripted, card, patch, "the labels (check --labels)")
    card["provenance"] = provenance("auto3dseg", source, sha256(source), network, verified, notes)
    saveModel(scripted, card, output)
    return card


def verifyAgainstEager(network, scripted, card: dict, patch, channelsFrom: str) -> dict:
    """The scripted network against the eager one on a random patch, within the tolerance.

    Returns:
        what was verified (patch, difference, output range, tolerance, runtime).

    Raises:
        MedSegUNetError: another channel count than the card's, or a larger difference.
    """
    import torch

    from ..engine.modelcard import outputChannels

    sample = torch.randn(1, len(card["inputs"]), *patch, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = network(sample), scripted(sample)
    expected = (expected[0] if isinstance(expected, (tuple, list)) else expected).numpy()
    got = (got[0] if isinstance(got, (tuple, list)) else got).numpy()
    if got.shape[1] != outputChannels(card):
        raise MedSegUNetError(f"The network gives {got.shape[1]} channels but {channelsFrom} need {outputChannels(card)}: it is not imported.")
    return compareOutputs(expected, got, list(sample.shape), f"eager torch {torch.__version__}")


def compareOutputs(expected: np.ndarray, got: np.ndarray, patch: list, runtime: str) -> dict:
    """The imported TorchScript model's output against the source runtime's, within the tolerance.

    Returns:
        what was verified (patch, difference, output range, tolerance, runtime).

    Raises:
        MedSegUNetError: a larger difference than ``RELATIVE_TOLERANCE`` of the output's range.
    """
    span = float(expected.max() - expected.min())
    difference = float(np.abs(got - expected).max())
    allowed = RELATIVE_TOLERANCE * span + ABSOLUTE_TOLERANCE
    if not difference <= allowed:
        raise MedSegUNetError(
            f"The imported network's outputs differ from {runtime}'s by {difference:.3g} (allowed {allowed:.3g} for an output range of {span:.3g}): nothing was written."
        )
    return {"patch": patch, "max_abs_difference": difference, "output_range": span, "tolerance": allowed, "runtime": runtime}


def provenance(kind: str, source: str, checksum: str, network, verified: dict, notes: list[str]) -> dict:
    """The card's record of where an imported model came from and how it was checked."""
    return {
        "format": kind, "source": os.path.abspath(source), "source_sha256": checksum, "tool": "medsegunet import", "notes": list(notes),
        "network": {"_target_": type(network).__module__ + "." + type(network).__name__}, "verified": verified,
    }


def _transformName(item: dict) -> str:
    return str(item.get("_target_", "")).rsplit(".", 1)[-1]


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
    from .networks import plainValue

    def value(item: dict, key: str, default=None, where: str = ""):
        return plainValue(item.get(key, default) if isinstance(item, dict) else default, f"the bundle '{source}': {where or _transformName(item)}.{key}", config)

    def transforms(section: str) -> list:
        part = config.get(section) or {}
        listed = part.get("transforms", []) if isinstance(part, dict) else part
        if isinstance(listed, str):  # an expression or reference: refused by name, never evaluated
            plainValue(listed, f"the bundle '{source}': {section}", None)
        if not isinstance(listed, list) or not all(isinstance(item, dict) for item in listed):
            raise MedSegUNetError(f"The bundle '{source}': {section}.transforms is not a list of transforms.")
        return listed

    implied = {"LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureTyped", "EnsureType", "CastToTyped", "Invertd", "SaveImaged", "ToDeviced", "CopyItemsd"}
    card: dict = {"schema": "medsegunet.model/2", "spatial_dims": 3, "spacing": None, "orientation": None, "normalization": {"type": "none"}}
    for item in transforms("preprocessing"):
        name = _transformName(item)
        if name in implied:
            continue
        if name == "Orientationd":
            card["orientation"] = str(value(item, "axcodes", "RAS"))
        elif name == "Spacingd":
            card["spacing"] = [float(v) for v in value(item, "pixdim")]
        elif name == "NormalizeIntensityd":
            card["normalization"] = {"type": "zscore", "nonzero": bool(value(item, "nonzero", False))}
        elif name == "ScaleIntensityd":
            card["normalization"] = {"type": "minmax", "b_min": float(value(item, "minv", 0.0)), "b_max": float(value(item, "maxv", 1.0))}
        elif name == "ScaleIntensityRangePercentilesd":
            card["normalization"] = {"type": "percentile", "lower": float(value(item, "lower")), "upper": float(value(item, "upper")), "b_min": float(value(item, "b_min", 0.0)),
                                     "b_max": float(value(item, "b_max", 1.0)), "clip": bool(value(item, "clip", False))}
        else:
            raise MedSegUNetError(f"The bundle '{source}' preprocesses with {name}, which a MedSegUNet card cannot express: it is not imported.")
    output, post = "softmax", {}
    for item in transforms("postprocessing"):
        name = _transformName(item)
        if name in implied or name == "AsDiscreted":
            continue
        if name == "Activationsd":
            output = "sigmoid" if value(item, "sigmoid") else "softmax"
        elif name == "KeepLargestConnectedComponentd":
            post["largest_component"] = [int(v) for v in value(item, "applied_labels", [])] or True
        elif name == "FillHolesd":
            post["fill_holes"] = True
        else:
            raise MedSegUNetError(f"The bundle '{source}' post-processes with {name}, which a MedSegUNet card cannot express: it is not imported.")
    inferer = config.get("inferer", {}) if isinstance(config.get("inferer"), dict) else {}
    card["patch_size"] = [int(v) for v in value(inferer, "roi_size", [96, 96, 96], "inferer")]
    card["overlap"] = float(value(inferer, "overlap", 0.25, "inferer"))
    card["sw_batch_size"] = int(value(inferer, "sw_batch_size", 4, "inferer"))
    card["output"] = output
    if post:
        card["postprocessing"] = post
    metadata = config.get("_meta_", {}) or {}
    outputs = ((metadata.get("network_data_format") or {}).get("outputs") or {})
    channels = next(iter(outputs.values()), {}).get("channel_def") or {}
    names = [(int(k), v) for k, v in sorted(channels.items(), key=lambda kv: int(kv[0])) if not (output == "softmax" and int(k) == 0)]
    if not names:
        raise MedSegUNetError(f"The bundle '{source}' names no output channels (metadata network_data_format outputs channel_def): it is not imported.")
    import colorsys

    card["labels"] = [{"value": value if output == "softmax" else value + 1, "name": str(name),
                       "color": [round(c, 3) for c in colorsys.hsv_to_rgb((index * 0.618) % 1.0, 0.65, 0.9)]} for index, (value, name) in enumerate(names)]
    inputs = ((metadata.get("network_data_format") or {}).get("inputs") or {})
    channelsIn = int(next(iter(inputs.values()), {}).get("num_channels", 1))
    card["inputs"] = [{"name": "image" if channelsIn == 1 else f"image{index + 1}"} for index in range(channelsIn)]
    card["name"] = str(metadata.get("name") or os.path.basename(os.path.normpath(source)))
    card["version"] = str(metadata.get("version", ""))
    if metadata.get("license"):
        card["license"] = str(metadata["license"])
    return card


def readConfigFile(path: str) -> dict:
    """A bundle's JSON or YAML config as plain data (``yaml.safe_load``: no Python objects)."""
    import yaml

    try:
        with open(path, encoding="utf-8-sig") as stream:
            data = json.load(stream) if path.lower().endswith(".json") else yaml.safe_load(stream)
    except (OSError, ValueError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise MedSegUNetError(f"Cannot read the bundle's config '{path}' ({firstLine(error)[:120]}).") from None
    if not isinstance(data, dict):
        raise MedSegUNetError(f"The bundle's config '{path}' is not a JSON/YAML object.")
    return data


def importBundle(source: str, output: str) -> dict:
    """Convert and verify a MONAI bundle folder; returns the card written.

    The configs are read as data: the network is built by :func:`networks.buildNetwork` (MONAI's
    networks only), and no expression of the bundle is evaluated.
    """
    import torch

    from ..engine.modelcard import saveModel, validateCard
    from .networks import buildNetwork as buildAllowed
    from ..engine.volumes import sha256

    configs = os.path.join(source, "configs")
    inference = next((os.path.join(configs, name) for name in ("inference.json", "inference.yaml", "inference.yml") if os.path.isfile(os.path.join(configs, name))), None)
    if inference is None:
        raise MedSegUNetError(f"The bundle '{source}' has no configs/inference.json or .yaml.")
    config = readConfigFile(inference)
    if os.path.isfile(os.path.join(configs, "metadata.json")):
        config["_meta_"] = readConfigFile(os.path.join(configs, "metadata.json"))
    card = validateCard(cardFromBundle(config, source), f"card made from the bundle '{source}'")
    weights = os.path.join(source, "models", "model.pt")
    if not os.path.isfile(weights):
        raise MedSegUNetError(f"The bundle '{source}' has no models/model.pt (its weights).")
    network = buildAllowed(config.get("network_def"), f"the bundle '{source}': network_def", config)
    state = loadCheckpointAsData(weights)
    try:
        network.load_state_dict(state.get("model", state) if isinstance(state, dict) and "model" in state else state)
        scripted = torch.jit.script(network)
    except Exception as error:  # weights and scripting fail in many ways
        raise MedSegUNetError(f"The bundle's network cannot be loaded or scripted ({firstLine(error)[:140]}).") from None
    verified = verifyAgainstEager(network, scripted, card, card["patch_size"], "its metadata's channel names")
    card["provenance"] = provenance("monai-bundle", source, sha256(weights), network, verified, [])
    saveModel(scripted, card, output)
    return card


def readImportCard(path: str) -> dict:
    if not path:
        raise MedSegUNetError("Importing an ONNX model needs --card CARD.json (the model card, with the \"network\" it belongs to).")
    from ..engine.volumes import checkRegularFile

    checkRegularFile(path, "Model card")
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except json.JSONDecodeError as error:
        raise MedSegUNetError(f"Model card '{path}' is not valid JSON ({error.msg}, line {error.lineno}).") from None
    except UnicodeDecodeError:
        raise MedSegUNetError(f"Model card '{path}' is not UTF-8 text: save it as UTF-8 JSON.") from None


def addParser(subparsers) -> None:
    """Register ``medsegunet import``."""
    parser = subparsers.add_parser(
        "import",
        help="import an ONNX model as a verified MedSegUNet model",
        description="Convert a model from another ecosystem to a TorchScript MedSegUNet model with its card, verified against the source runtime.",
    )
    parser.add_argument("source", metavar="SOURCE", help="an .onnx file, an Auto3DSeg checkpoint (.pt) or a MONAI bundle folder")
    parser.add_argument("--output", required=True, metavar="MODEL.pt", help="the model file to write")
    parser.add_argument("--card", metavar="CARD.json", help="the model card, with \"network\": {\"_target_\", \"args\"} naming the network of the weights")
    parser.add_argument("--labels", metavar="LABELS.csv", help="labels (value,name) for Auto3DSeg checkpoints")
    parser.set_defaults(func=run)


def run(args, console) -> int:
    from ..engine.volumes import checkDistinctPaths, checkOutputPath

    checkOutputPath(args.output, (".pt",))
    checkDistinctPaths({"--output": args.output}, {"SOURCE": args.source, "--card": args.card, "--labels": args.labels})
    kind = detectFormat(args.source)
    if kind == "bundle":
        card = importBundle(args.source, args.output)
    elif kind == "onnx":
        card = importONNX(args.source, args.card, args.output)
    else:
        card = importAuto3DSeg(args.source, args.labels, args.output)
    for note in card["provenance"].get("notes", []):
        console.line(f"Note: {note}")
    verified = card["provenance"]["verified"]
    console.line(f"Wrote {args.output}: matches {verified['runtime']} within {verified['max_abs_difference']:.2g} (output range {verified['output_range']:.3g})")
    return 0

