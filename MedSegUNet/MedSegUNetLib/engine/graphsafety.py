"""TorchScript model files are data: what their graphs may do is checked before they run.

A TorchScript archive carries code. Two moments run it:

- **loading**: ``torch.jit.load`` calls a module's ``__setstate__`` while it unpickles the module,
  so an archive whose code defines one runs it before any graph could be inspected. Such archives
  are refused from their text (:func:`checkArchiveText`), before ``torch.jit.load``;
- **calling**: ``forward`` and every other method may call scriptable operators with side effects
  (``aten::save`` writes a file, ``aten::from_file`` reads one, ``prim::Print`` writes to standard
  output). Every method of the module and of each submodule is walked over its graph, nested
  blocks included, and inlined wherever it calls a function or a class's method
  (:func:`forbiddenOperators`); any operator outside :func:`allowedOperators`, an allow-list of
  pure tensor and container operators, is refused naming the operator and the method, before any
  call (:func:`checkScriptedModule`).

The allow-list is torch's registry of tensor operators (1,700 names of torch 2.13, kept as data in
``torchscript-operators.json``) less those that reach outside the tensors (files, printing, the
random seed, storage swaps), and the interpreter's pure instructions; the zoo, TAPS
(SegResNetDS), deepbet (LinkNet3d) and MONAI's scriptable segmentation networks pass it. An
operator outside it is refused even if it happens to be harmless: a model that needs one is
re-exported, never run on trust.
"""

from __future__ import annotations

import json
import re
import threading
import zipfile
from pathlib import Path

from .errors import ModelFileError

# The allow-list: the pure operators of torch's registry (the aten namespace of torch 2.13, which
# :func:`operatorAllowList` writes), less :data:`DENIED_ATEN`, and the interpreter's own pure
# instructions (:data:`ALLOWED_PRIM`). It is data beside this module: an operator a later torch
# adds is refused until the list is made again and reviewed.
OPERATORS_FILE = Path(__file__).with_name("torchscript-operators.json")

# What a graph may not do although torch registers it: files (save, from_file), printing, the
# global random seed, storage swaps and resizes (a tensor aliased onto other memory), streams and
# futures, and torch's own test operators.
DENIED_ATEN = frozenset(
    {
        "save",
        "from_file",
        "_print",
        "manual_seed",
        "seed",
        "initial_seed",
        "set",
        "set_",
        "set_data",
        "record_stream",
        "pin_memory",
        "_pin_memory",
        "resize_",
        "resize_as_",
        "_resize_output_",
        "wait",
        "_cufft_set_plan_cache_max_size",
        "_cufft_clear_plan_cache",
        "set_grad_enabled",
        "_amp_update_scale_",
        "_copy_from_and_resize",
        "_copy_from",
        "_debug_has_internal_overlap",
    }
)

# Control flow, constants, containers and tensor properties. Calls (CallFunction, CallMethod),
# Python escapes (PythonOp), printing, RPC, futures, profiling and context managers are not here.
ALLOWED_PRIM = frozenset(
    f"prim::{name}"
    for name in """
Constant GetAttr SetAttr If Loop ListConstruct ListUnpack TupleConstruct TupleUnpack TupleIndex TupleSlice DictConstruct
RaiseException Uninitialized unchecked_cast unchecked_unwrap_optional device dtype layout min max abs NumToTensor shape
isinstance is_cpu is_cuda is_ipu is_maia is_meta is_mkldnn is_mps is_mtia is_nested is_quantized is_sparse is_sparse_csr
is_vulkan is_xla is_xpu data requires_grad grad name type id itemsize nbytes tolist rangelist StringIndex EnumName EnumValue
ConstantChunk BroadcastSizes AutogradZero AutogradAdd ListIndex index CreateObject
""".split()
)


def allowedOperators() -> frozenset:
    """The allow-list (read once from :data:`OPERATORS_FILE`)."""
    global _ALLOWED
    if _ALLOWED is None:
        with open(OPERATORS_FILE, encoding="utf-8") as stream:
            listed = json.load(stream)["aten"]
        _ALLOWED = frozenset(f"aten::{name}" for name in listed if name not in DENIED_ATEN) | ALLOWED_PRIM
    return _ALLOWED


_ALLOWED: frozenset | None = None


def operatorAllowList() -> dict:
    """The content of :data:`OPERATORS_FILE` made from the running torch's operator registry (for a
    maintainer, after a torch upgrade: review what it adds before committing it)."""
    import torch

    names = sorted({schema.name[len("aten::") :] for schema in torch._C._jit_get_all_schemas() if schema.name.startswith("aten::")})
    return {
        "about": "Pure TorchScript operators a model file may call (engine/graphsafety.py); made by operatorAllowList() from this torch's "
        "registry.",
        "torch": torch.__version__.split("+")[0],
        "aten": [name for name in names if name not in DENIED_ATEN and not name.startswith("_test_")],
    }


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
            raise ModelFileError(
                f"{what} defines __setstate__ in {member.filename.split('/code/', 1)[1]}, code that torch.jit.load would run: it is not "
                "loaded; export the network without it."
            )


def forbiddenOperators(module) -> list[tuple[str, str]]:
    """Every operator outside :func:`allowedOperators` in any method of ``module`` or its submodules.

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

    allowed = allowedOperators()
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
            if not kinds <= allowed:
                graph = graph.copy()
                torch._C._jit_pass_inline(graph)  # free functions and class methods become their nodes
                kinds = _operators(graph, moduleTypes)
            where = f"{prefix}.{method}" if prefix else method
            found.extend((kind, where) for kind in sorted(kinds - allowed))
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
        raise ModelFileError(
            f"{what} calls '{operator}' in {method}{more}, which is not a pure tensor operator: it is not run; export the network without "
            "it."
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
        raise ModelFileError(f"Cannot load TorchScript {what[0].lower() + what[1:]} ({firstLine(str(error))[:140]}).") from None
    checkScriptedModule(module, what, digest)
    return module.eval()


__all__ = [
    "DENIED_ATEN",
    "allowedOperators",
    "operatorAllowList",
    "checkArchiveText",
    "forbiddenOperators",
    "checkScriptedModule",
    "loadCheckedTorchScript",
]
