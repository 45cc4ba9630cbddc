"""ONNX graphs as MedSegUNet models: their weights copied into the MONAI network the card names.

The graph's weighted layers (Conv, ConvTranspose, BatchNormalization, InstanceNormalization, PRelu,
Gemm) are paired with the network's in execution order, not by name, so graphs from either of
torch's exporters import; a norm the export folded is folded in the imported network too. The
scripted network is verified against onnxruntime before anything is written.
"""

from __future__ import annotations

import os

import numpy as np

from ..engine.errors import ModelImportError, firstLine
from .networks import networkArguments
from .verification import ImportStage, buildNetwork, compareOutputs, provenance, readImportCard, reportStep


def onnxTensors(model, source: str = "the ONNX model") -> dict[str, np.ndarray]:
    """Every tensor of an ONNX graph under the PyTorch name ``torch.onnx.export`` gave it.

    Raises:
        MedSegUNetError: a tensor without its data, or of strings or another non-numeric type.
    """
    tensors = {initializer.name: numericTensor(initializer, source) for initializer in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input and node.output and node.input[0] in tensors:
            tensors[node.output[0]] = tensors[node.input[0]]
        elif node.op_type == "Constant" and node.output:
            for attribute in node.attribute:
                if attribute.name == "value":
                    tensors[node.output[0]] = numericTensor(attribute.t, source)
    return tensors


def numericTensor(tensor, source: str) -> np.ndarray:
    """An ONNX tensor as a NumPy array of numbers, checked: its data is there and it is numeric."""
    from onnx import numpy_helper

    name = tensor.name or "a constant"
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as error:  # onnx raises ValueError, TypeError or its own errors for damaged tensors
        raise ModelImportError(
            f"'{source}': the tensor '{name[:80]}' cannot be read ({firstLine(error)[:100]}): the file is damaged; export it again."
        ) from None
    if array.dtype.kind not in "fiub":
        raise ModelImportError(
            f"'{source}': the tensor '{name[:80]}' holds {array.dtype} values, not numbers: it is not a network's weights."
        )
    expected = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
    if array.size != expected:
        raise ModelImportError(
            f"'{source}': the tensor '{name[:80]}' declares {expected} values but holds {array.size}: the file is damaged; export it again."
        )
    return array


# The layers whose weights an ONNX graph carries, by the ONNX operator and the torch module kind.
WEIGHTED_OPS = {
    "Conv": "conv",
    "ConvTranspose": "convtranspose",
    "BatchNormalization": "batchnorm",
    "InstanceNormalization": "instancenorm",
    "PRelu": "prelu",
    "Gemm": "linear",
    "GroupNormalization": "groupnorm",
    "LayerNormalization": "layernorm",
}


def moduleKind(module) -> str | None:
    """``conv``, ``convtranspose``, ``batchnorm``, ``instancenorm``, ``prelu``, ``linear``, ``groupnorm``,
    ``layernorm``, or None for a module without weights (activations such as Mish or GELU)."""
    import torch.nn as nn

    kinds = (
        (nn.modules.conv._ConvTransposeNd, "convtranspose"),
        (nn.modules.conv._ConvNd, "conv"),
        (nn.modules.batchnorm._BatchNorm, "batchnorm"),
        (nn.modules.instancenorm._InstanceNorm, "instancenorm"),
        (nn.PReLU, "prelu"),
        (nn.Linear, "linear"),
        (nn.GroupNorm, "groupnorm"),
        (nn.LayerNorm, "layernorm"),
    )
    for moduleClass, kind in kinds:
        if isinstance(module, moduleClass):
            return kind
    return None


def layersInCallOrder(network, sample) -> list[tuple[str, object]]:
    """The network's weighted leaf modules that reach its output, with their names, in the order one
    forward pass calls them.

    Modules whose output never reaches the network's output (SegResNetDS's deep-supervision heads
    in eval mode) are left out: an exporter removes them from the graph. They are found by a
    backward pass: their outputs get no gradient.

    Raises:
        MedSegUNetError: a leaf module with weights that an ONNX graph's layers cannot be mapped to.
    """
    import torch

    called: list[tuple[str, object]] = []
    outputs: dict[str, object] = {}
    handles = []

    def keep(module, args, output, name):
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.retain_grad()
            outputs[name] = output

    for name, module in network.named_modules():
        if list(module.children()):
            continue
        if moduleKind(module) is None:
            if any(True for _ in module.parameters(recurse=False)):
                raise ModelImportError(
                    f"The card's network has a {type(module).__name__} ('{name}') whose weights this import cannot map from an ONNX graph: "
                    "use a network with batch, instance, group or layer norms."
                )
            continue
        handles.append(module.register_forward_pre_hook(lambda module, args, name=name: called.append((name, module))))
        handles.append(module.register_forward_hook(lambda module, args, output, name=name: keep(module, args, output, name)))
    try:
        with torch.enable_grad():
            result = network(sample)
            result = result[0] if isinstance(result, (list, tuple)) else result
            result.float().sum().backward()
    finally:
        for handle in handles:
            handle.remove()
        network.zero_grad(set_to_none=True)
    return [(name, module) for name, module in called if name in outputs and outputs[name].grad is not None]


def onnxLayers(model) -> tuple[list, dict]:
    """The graph's weighted nodes in graph (execution) order, and each tensor's consuming operators."""
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    return [node for node in model.graph.node if node.op_type in WEIGHTED_OPS], consumers


def nodeKind(node, graph) -> str:
    """The torch kind an ONNX weighted node stands for. The TorchScript exporter writes a GroupNorm as
    Reshape → InstanceNormalization (unit scale, zero bias, one channel per group) → Reshape → Mul (γ)
    → Add (β): an InstanceNormalization between two Reshapes is a group norm."""
    if node.op_type == "InstanceNormalization":
        producer = graph.producers.get(node.input[0])
        following = graph.consumers.get(node.output[0], [])
        if producer is not None and producer.op_type == "Reshape" and following and following[0].op_type == "Reshape":
            return "groupnorm"
    return WEIGHTED_OPS[node.op_type]


class GraphIndex:
    """Who makes and who takes each tensor of an ONNX graph."""

    def __init__(self, model) -> None:
        self.producers = {output: node for node in model.graph.node for output in node.output}
        self.consumers: dict[str, list] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)


def groupNormWeights(node, graph: GraphIndex, tensors: dict, channels: int, source: str) -> list:
    """γ and β of a decomposed group norm, from the Mul and Add after its second Reshape (unit and
    zero when the norm has none); its group count is the InstanceNormalization's scale length."""
    groups = tensors.get(node.input[1])
    if groups is None or not (np.all(groups == 1) and not np.any(tensors.get(node.input[2], 0))):
        raise ModelImportError(
            f"'{source}': the group norm at ONNX node '{node.name or node.op_type}' is not the exporter's pattern (unit scale, zero bias)."
        )
    reshaped = graph.consumers[node.output[0]][0].output[0]
    scale, bias, tensor = np.ones(channels, np.float32), np.zeros(channels, np.float32), reshaped
    for operator, into in (("Mul", "scale"), ("Add", "bias")):
        following = graph.consumers.get(tensor, [])
        if len(following) != 1 or following[0].op_type != operator:
            continue
        other = next((tensors[name] for name in following[0].input if name != tensor and name in tensors), None)
        if other is None or other.size != channels:
            continue
        if into == "scale":
            scale = other.reshape(channels)
        else:
            bias = other.reshape(channels)
        tensor = following[0].output[0]
    return [scale, bias, int(groups.size)]


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

    tensors = onnxTensors(model, source)
    nodes, consumers = onnxLayers(model)
    graph = GraphIndex(model)
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
                raise ModelImportError(
                    f"'{source}' has fewer weighted layers ({len(nodes)}) than the card's network (at '{name}'): {mismatch}."
                )
            node = nodes[position]
            position += 1
            if nodeKind(node, graph) != kind:
                raise ModelImportError(
                    f"'{source}': weighted layer {position} is an ONNX {node.op_type} where the card's network has {type(module).__name__} "
                    f"'{name}': {mismatch}."
                )
            weights = [tensors.get(input) if input else None for input in node.input[1:]] or [None]
            if kind == "groupnorm" and node.op_type == "InstanceNormalization":
                weights = groupNormWeights(node, graph, tensors, module.num_channels, source)
            if node.op_type == "Gemm" and weights[0] is not None and not any(a.name == "transB" and a.i == 1 for a in node.attribute):
                weights[0] = weights[0].T
            if weights[0] is None or (kind == "batchnorm" and any(weight is None for weight in weights[:4])):
                raise ModelImportError(
                    f"'{source}': the weights of ONNX node '{node.name or node.op_type}' are computed in the graph, not stored: export the "
                    "network in eval mode."
                )
            # Folded when the network calls a batch norm next but the graph's next weighted node is none.
            fusedNorm = (
                kind in ("conv", "convtranspose")
                and index + 1 < len(layers)
                and moduleKind(layers[index + 1][1]) == "batchnorm"
                and "BatchNormalization" not in consumers.get(node.output[0], [])
                and (position >= len(nodes) or nodes[position].op_type != "BatchNormalization")
            )
            pendingBias, pendingConv = _loadLayer(module, kind, name, weights, fusedNorm, source), module
    if position != len(nodes):
        raise ModelImportError(f"'{source}' has {len(nodes) - position} more weighted layers than the card's network: {mismatch}.")
    return [f"{folded} batch norms folded into the convolutions before them, as the ONNX export folded them"] if folded else []


def _loadLayer(module, kind: str, name: str, weights: list, fusedNorm: bool, source: str):
    """Copy one ONNX node's weights into one torch module; returns the folded bias when its norm is folded, else None."""
    import torch

    def put(parameter, array, what):
        if tuple(array.shape) != tuple(parameter.shape):
            raise ModelImportError(
                f"'{source}': the {what} of '{name}' has shape {tuple(array.shape)} where the card's network has {tuple(parameter.shape)}: "
                "check the network args."
            )
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
            raise ModelImportError(f"'{source}': ONNX gives '{name}' a bias that the card's network does not have: check the network args.")
    elif kind == "batchnorm":
        for parameter, array, what in zip(
            (module.weight, module.bias, module.running_mean, module.running_var), weights[:4], ("scale", "bias", "mean", "variance")
        ):
            put(parameter, array, what)
    elif kind == "instancenorm":
        if module.affine:
            put(module.weight, weights[0], "scale")
            put(module.bias, weights[1], "bias")
        elif not (np.all(weights[0] == 1) and not np.any(weights[1])):
            raise ModelImportError(
                f"'{source}': ONNX gives the instance norm '{name}' a scale and bias that the card's network does not have (affine=False): "
                "check the network args."
            )
    elif kind == "groupnorm":
        if len(weights) > 2 and weights[2] != module.num_groups:
            raise ModelImportError(
                f"'{source}': the group norm '{name}' has {weights[2]} groups in the graph and {module.num_groups} in the card's network: "
                "check the network args."
            )
        if module.affine:
            put(module.weight, np.asarray(weights[0]).reshape(-1), "scale")
            put(module.bias, np.asarray(weights[1]).reshape(-1), "bias")
    elif kind == "layernorm":
        if module.elementwise_affine:
            put(module.weight, np.asarray(weights[0]).reshape(module.weight.shape), "scale")
            if module.bias is not None and weights[1] is not None:
                put(module.bias, np.asarray(weights[1]).reshape(module.bias.shape), "bias")
    elif kind == "prelu":
        slope = np.asarray(weights[0])  # ONNX broadcasts it as (C, 1, 1, 1)
        put(module.weight, slope.reshape(module.weight.shape) if slope.size == module.weight.numel() else slope, "slope")
    return None


def checkGraphShape(model, source: str) -> None:
    """Refuse a graph without an input or an output, or whose nodes name no outputs: what a
    damaged, empty (0-byte) or hand-made file gives, before any of it is used."""
    if not model.graph.node or not model.graph.input or not model.graph.output:
        missing = "nodes" if not model.graph.node else "inputs" if not model.graph.input else "outputs"
        raise ModelImportError(
            f"'{source}' is an ONNX graph with no {missing}: it is not a network (an empty or cut-short download?); download or export it "
            "again."
        )
    for node in model.graph.node:
        if not node.output:
            raise ModelImportError(
                f"'{source}': the ONNX node '{(node.name or node.op_type)[:80]}' has no output: the graph is damaged; export it again."
            )


def checkGraphEnd(model, source: str) -> None:
    """Refuse a graph whose output is activated: the card's softmax/sigmoid would apply twice."""
    producers = {output: node for node in model.graph.node for output in node.output}
    last = producers.get(model.graph.output[0].name)
    if last is not None and last.op_type in ("Softmax", "Sigmoid", "ArgMax"):
        raise ModelImportError(
            f"'{source}' ends with {last.op_type}: the card cannot express it (MedSegUNet activates logits itself); export the logits, "
            f"before the {last.op_type}."
        )


def importONNX(source: str, cardPath: str, output: str, origin: str | None = None, format: str = "torchscript", progress=None) -> dict:
    """Convert and verify an ONNX model; write it with its card. Returns the card written
    (``origin``: the source it records, :func:`verification.provenance`; ``progress``: a
    ``(fraction, message)`` callback told each :class:`verification.ImportStage`).

    Raises:
        MedSegUNetError: missing packages, a card without a network, weights that do not fit, an
            activated output, or outputs that differ from onnxruntime's.
    """
    import torch

    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ModelImportError(
            "Importing ONNX needs onnx and onnxruntime, part of the base install: pip install onnx onnxruntime."
        ) from None
    from ..engine.modelcard import outputChannels, saveModel, validateCard
    from ..engine.paths import checkRegularFile, sha256

    if checkRegularFile(source, "ONNX model").st_size == 0:
        raise ModelImportError(f"ONNX model '{source}' is empty (0 bytes): a download failed; download or export it again.")
    reportStep(progress, ImportStage.READING, f"the ONNX graph {os.path.basename(source)}")
    card = readImportCard(cardPath)
    spec = card.pop("network", None)
    network = buildNetwork(spec)
    card = validateCard(card, f"model card '{cardPath}'")
    try:
        model = onnx.load(source)
    except Exception as error:  # protobuf raises DecodeError and others
        raise ModelImportError(f"Cannot read ONNX model '{source}' ({firstLine(error)}).") from None
    checkGraphShape(model, source)
    checkGraphEnd(model, source)
    dims = int(card["spatial_dims"])
    patch = list(card.get("patch_size") or [64] * dims)
    from ..engine.filecheck import checkTensorBudget

    checkTensorBudget("The check's random patch", [1, len(card["inputs"]), *patch])
    sample = torch.randn(1, len(card["inputs"]), *patch, generator=torch.Generator().manual_seed(0))
    reportStep(progress, ImportStage.BUILDING, type(network).__name__)
    notes = copyWeights(network, model, sample, source)
    try:
        scripted = torch.jit.script(network)
    except Exception as error:  # TorchScript's frontend errors
        raise ModelImportError(f"The card's network cannot be scripted to TorchScript ({firstLine(error)[:120]}).") from None
    reportStep(progress, ImportStage.VERIFYING, f"onnxruntime on a {tuple(sample.shape)} patch")
    try:
        session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    except Exception as error:  # an operator or opset this onnxruntime does not know, a damaged graph
        raise ModelImportError(
            f"onnxruntime cannot load '{source}' ({firstLine(error)[:160]}): the import cannot be verified, so nothing is written; update "
            "onnxruntime or re-export the model."
        ) from None
    try:
        expected = session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0]
    except Exception as error:  # onnxruntime raises its own error types
        raise ModelImportError(
            f"onnxruntime cannot run '{source}' on a {tuple(sample.shape)} patch ({firstLine(error)[:120]}): check the card's patch_size "
            "and inputs."
        ) from None
    with torch.no_grad():
        got = scripted(sample)
    got = (got[0] if isinstance(got, (tuple, list)) else got).numpy()
    if got.shape != expected.shape or got.shape[1] != outputChannels(card):
        raise ModelImportError(
            f"The imported network gives shape {got.shape}, onnxruntime {expected.shape}, the card needs {outputChannels(card)} channels: "
            "fix the card."
        )
    verified = compareOutputs(expected, got, list(sample.shape), f"onnxruntime {onnxruntime.__version__}")
    arguments = networkArguments(spec, "the card's network")
    card = card.replaced(provenance=provenance("onnx", source, sha256(source), network, verified, notes, origin, arguments))
    reportStep(progress, ImportStage.WRITING, os.path.basename(output))
    saveModel(network if format == "pt2" else scripted, card, output, format=format)
    return card


__all__ = [
    "onnxTensors",
    "numericTensor",
    "moduleKind",
    "layersInCallOrder",
    "onnxLayers",
    "nodeKind",
    "GraphIndex",
    "groupNormWeights",
    "copyWeights",
    "checkGraphShape",
    "checkGraphEnd",
    "importONNX",
]
