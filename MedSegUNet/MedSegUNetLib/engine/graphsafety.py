"""TorchScript model files are data: what their graphs may do is checked before they run.

A TorchScript archive carries code. Two moments run it:

- **loading**: ``torch.jit.load`` calls a module's ``__setstate__`` while it unpickles the module,
  so an archive whose code defines one runs it before any graph could be inspected. Such archives
  are refused from their text (:func:`checkArchiveText`), before ``torch.jit.load``;
- **calling**: ``forward`` and every other method may call scriptable operators with side effects
  (``aten::save`` writes a file, ``aten::from_file`` reads one, ``prim::Print`` writes to standard
  output). Every method of the module and of each submodule is walked over its graph, nested
  blocks included, and inlined wherever it calls a function or a class's method
  (:func:`forbiddenOperators`); any operator outside :data:`ALLOWED_OPERATORS`, an allow-list of
  pure tensor and container operators, is refused naming the operator and the method, before any
  call (:func:`checkScriptedModule`).

The allow-list is the union of what the zoo, TAPS (SegResNetDS), deepbet (LinkNet3d) and MONAI's
scriptable segmentation networks use, plus the pure tensor operators such networks are built of.
An operator outside it is refused even if it happens to be harmless: a model that needs one is
re-exported, never run on trust.
"""

from __future__ import annotations

import re
import threading
import zipfile

from .errors import MedSegUNetError

# Control flow, constants and containers: the interpreter's own pure instructions.
_PRIM = {
    "Constant", "GetAttr", "If", "Loop", "ListConstruct", "ListUnpack", "TupleConstruct", "TupleUnpack", "TupleIndex",
    "DictConstruct", "RaiseException", "Uninitialized", "unchecked_cast", "device", "dtype", "layout", "min", "max",
    "NumToTensor", "shape", "isinstance", "is_cuda", "data", "requires_grad", "AutogradZero", "BroadcastSizes",
    "ConstantChunk", "ListIndex", "TupleSlice", "abs", "type", "name", "grad", "unchecked_unwrap_optional",
    "EnumName", "EnumValue", "SetAttr",
}

# Pure tensor operators (and Python built-ins on numbers, lists, dicts and strings). In-place
# variants (trailing ``_``) are listed where networks use them.
_ATEN = """
__and__ __contains__ __derive_index __getitem__ __interpolate __is__ __isnot__ __not__ __or__ __range_length
__round_to_zero_floordiv __upsample __upsample_bilinear __xor__ _convolution _set_item _unsafe_view
_upsample_bicubic2d_aa _upsample_bilinear2d_aa _upsample_lanczos2d_aa _upsample_nearest_exact1d
_upsample_nearest_exact2d _upsample_nearest_exact3d abs adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d add add_ addmm all alpha_dropout amax amin any append arange
argmax argmin as_strided as_tensor avg_pool1d avg_pool2d avg_pool3d baddbmm batch_norm bmm Bool broadcast_tensors
broadcast_to cat ceil celu chunk clamp clamp_ clamp_max clamp_min clear clone contiguous conv1d conv2d conv3d
conv_transpose1d conv_transpose2d conv_transpose3d copy copy_ cos cumsum detach device dict dim div div_ dropout dropout_
einsum elu elu_ embedding empty empty_like eq erf exp expand expand_as extend feature_alpha_dropout feature_dropout
feature_dropout_ fill_ flatten flip Float floor floor_divide floordiv fmod format full full_like gather ge gelu get
glu group_norm gt hardsigmoid hardswish hardtanh hardtanh_ index index_select insert instance_norm Int int
interpolate is_floating_point item items keys layer_norm le leaky_relu leaky_relu_ len linear list local_response_norm
log log_softmax logsigmoid lt masked_fill matmul max max_pool1d max_pool2d max_pool3d maximum mean min minimum mish
mish_ mm mse_loss mul mul_ narrow ne neg new_empty new_full new_ones new_zeros norm normal_ numel ones ones_like pad
permute pixel_shuffle pop pow prelu rand rand_like randn randn_like range reciprocal relu relu6 relu_ remainder repeat
repeat_interleave requires_grad_ reshape reshape_as reverse round rsqrt rsub scalar_tensor scaled_dot_product_attention
select selu sigmoid sigmoid_ sign silu silu_ sin size slice softmax softplus softsign split sqrt square squeeze squeeze_
stack std str sub sub_ sum t tanh tanh_ tensor threshold to transpose tril triu type_as unbind unflatten unsqueeze
unsqueeze_ upsample_bicubic2d upsample_bilinear2d upsample_linear1d upsample_nearest1d upsample_nearest2d
upsample_nearest3d upsample_trilinear3d values var view view_as warn where zero_ zeros zeros_like
""".split()

ALLOWED_OPERATORS = frozenset({f"prim::{name}" for name in _PRIM} | {f"aten::{name}" for name in _ATEN})

# ``torch.jit.load`` runs ``__setstate__`` while it unpickles: an archive's code may not define one.
# TorchScript's parser takes any white space and line continuations between the two words.
_SETSTATE = re.compile(rb"\bdef[\s\\]+__setstate__\b")
# The code members of any archive this project reads are far smaller (TAPS: 60 kB).
CODE_BYTES_LIMIT = 32 * 2**20

_CHECKED: set[str] = set()
_CHECKED_LOCK = threading.Lock()


def checkArchiveText(archive: zipfile.ZipFile, what: str) -> None:
    """Refuse an archive whose code defines ``__setstate__`` (run by ``torch.jit.load`` itself).

    Args:
        archive: the TorchScript zip archive, open for reading.
        what: the file as the message names it.

    Raises:
        MedSegUNetError: a ``__setstate__`` in its code, or code larger than :data:`CODE_BYTES_LIMIT`.
    """
    from .archives import readMember

    left = CODE_BYTES_LIMIT
    for member in archive.infolist():
        if "/code/" not in member.filename or not member.filename.endswith(".py"):
            continue
        text = readMember(archive, member, left, what)
        left -= len(text)
        if _SETSTATE.search(text):
            raise MedSegUNetError(f"{what} defines __setstate__ in {member.filename.split('/code/', 1)[1]}, code that torch.jit.load would run: it is not loaded; export the network without it.")


def forbiddenOperators(module) -> list[tuple[str, str]]:
    """Every operator outside :data:`ALLOWED_OPERATORS` in any method of ``module`` or its submodules.

    Each method of each module type is walked once over its own graph, nested blocks included; a
    call into a submodule's method is that method's own walk (every submodule is walked). A graph
    that calls anything else (a free function, a method of a TorchScript class) is walked again
    inlined, so that the callee's operators are seen; what inlining cannot resolve stays a call,
    and a call is not an allowed operator. Instances of one type share its methods, so a network
    of many identical blocks is walked once per block type.

    Returns:
        ``(operator, method)`` pairs (method as ``submodule.name``), in the order found.
    """
    import torch

    modules = list(module.named_modules())
    moduleTypes = {submodule._c._type().qualified_name() for _, submodule in modules}
    found: list[tuple[str, str]] = []
    walked: set[tuple[str, str]] = set()
    for prefix, submodule in modules:
        typeName = submodule._c._type().qualified_name()
        for method in submodule._c._method_names():
            if (typeName, method) in walked:
                continue
            walked.add((typeName, method))
            graph = submodule._c._get_method(method).graph
            kinds = _operators(graph, moduleTypes)
            if not kinds <= ALLOWED_OPERATORS:
                graph = graph.copy()
                torch._C._jit_pass_inline(graph)  # free functions and class methods become their nodes
                kinds = _operators(graph, moduleTypes)
            where = f"{prefix}.{method}" if prefix else method
            found.extend((kind, where) for kind in sorted(kinds - ALLOWED_OPERATORS))
    return found


def _operators(graph, moduleTypes: set[str]) -> set[str]:
    """The operator kinds of a graph, nested blocks included; a call of a submodule's method is left
    out (that method is walked on its own)."""
    kinds: set[str] = set()
    blocks = [graph.block()]
    while blocks:
        for node in blocks.pop().nodes():
            kind = node.kind()
            if kind == "prim::CallMethod" and node.inputsAt(0).type().qualified_name() in moduleTypes:
                continue
            kinds.add(kind)
            blocks.extend(node.blocks())
    return kinds


def checkScriptedModule(module, what: str, digest: str | None = None) -> None:
    """Refuse a loaded TorchScript module whose graphs call an operator outside the allow-list.

    Args:
        module: a ``torch.jit.ScriptModule`` that has not been called.
        what: the file (and part) as the message names it.
        digest: the archive's SHA256: a digest checked once in this process is not walked again.

    Raises:
        MedSegUNetError: naming the first forbidden operator and its method.
    """
    if digest is not None:
        with _CHECKED_LOCK:
            if digest in _CHECKED:
                return
    found = forbiddenOperators(module)
    if found:
        operator, method = found[0]
        others = len({kind for kind, _ in found}) - 1
        more = f" (and {others} more operator(s))" if others else ""
        raise MedSegUNetError(
            f"{what} calls '{operator}' in {method}{more}, which is not a pure tensor operator: it is not run; export the network without it."
        )
    if digest is not None:
        with _CHECKED_LOCK:
            _CHECKED.add(digest)


def loadCheckedTorchScript(source, device, what: str):
    """``torch.jit.load`` of an archive (a path or bytes) whose code was checked first, and whose
    graphs are checked before it is returned: nothing in it has run.

    Args:
        source: a file path, or the archive's bytes (a localiser stored inside a model file).
        device: where the weights are mapped (``map_location``).
        what: the file (and part) as messages name it.

    Raises:
        MedSegUNetError: not a readable archive, ``__setstate__`` in its code, a forbidden operator,
            or ``torch.jit.load`` refusing it.
    """
    import hashlib
    import io

    import torch

    from .archives import openArchive
    from .errors import firstLine

    data = source if isinstance(source, (bytes, bytearray)) else None
    with openArchive(io.BytesIO(data) if data is not None else source, what) as archive:
        checkArchiveText(archive, what)
    # An archive in memory (a localiser inside a model file) is hashed at memory speed and checked
    # once per digest; a file is walked on each load (30-40 ms for the published and zoo networks,
    # less than hashing an 80 MB file), and loadModel loads each file version once per process.
    digest = hashlib.sha256(data).hexdigest() if data is not None else None
    try:
        module = torch.jit.load(io.BytesIO(data) if data is not None else source, map_location=device)
    except Exception as error:  # torch raises RuntimeError or ValueError for bad archives
        raise MedSegUNetError(f"Cannot load TorchScript {what[0].lower() + what[1:]} ({firstLine(str(error))[:140]}).") from None
    checkScriptedModule(module, what, digest)
    return module.eval()
