"""``torch.export`` model files (``.pt2``) are data too: every member is checked before torch reads it.

A ``.pt2`` archive (``torch.export.save``) holds one or more exported programs (``models/NAME.json``:
the graph as JSON), their weights as raw bytes with a JSON layout, example inputs, and extra files.
``torch.export.load`` is not safe on a file from elsewhere (torch 2.13), in four places:

- weights and constants marked ``use_pickle`` are read with ``torch.load(weights_only=False)``,
  custom and opaque objects with ``pickle.loads``, and the example inputs fall back to
  ``weights_only=False`` when the safe load fails: any of them runs a pickle's code;
- the graph's symbolic shape expressions (``expr_str``) are parsed with ``sympy.sympify``, which
  evaluates its text as Python;
- ``ExportedProgram.module()`` builds its input check by ``exec`` of the archive's ``guards_code``;
- a node's ``target`` may name any attribute of ``torch`` (``torch.save`` say), called on ``forward``.

So the archive is read into memory within a budget (:mod:`archives`), and refused in one line
unless every member is one torch writes for plain tensors, no payload is pickled (the example
inputs must load with ``weights_only=True``), every expression parses as arithmetic over shape
symbols and ``L['x'].size()[i]`` (:func:`checkExpression`), and every operator is on the
TorchScript allow-list of :mod:`graphsafety` (the same ``aten`` names) or is one of Python's
arithmetic on sizes. Only then are *those bytes* (not the file again) handed to torch, and the
loaded graph is walked once more before anything calls it.
"""

from __future__ import annotations

import ast
import io
import json
import re
import zipfile

from .cardview import cardView
from .errors import MedSegUNetError, ModelFileError

PT2_FORMAT = b"pt2"
# A card is a page of JSON (the largest shipped: 6 kB); a larger member is refused before it
# inflates, in both formats (modelcard reads TorchScript cards with it).
CARD_BYTES_LIMIT = 2**20
CARD_MEMBER = "extra/medsegunet.json"
PROGRAMS = ("model", "localizer")

# What torch.export.save writes for plain tensors, below the archive's top folder.
_MEMBER = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|extra/medsegunet\.json"
    r"|models/(model|localizer)\.json|data/(weights|constants)/(model|localizer)_(weights|constants)_config\.json"
    r"|data/weights/weight_\d+|data/constants/tensor_\d+|data/sample_inputs/(model|localizer)\.pt)"
)

# Python's arithmetic on sizes, which dynamic shapes put in a graph beside the aten operators.
_PYTHON_TARGETS = frozenset(
    [
        f"_operator.{name}"
        for name in (
            "getitem",
            "add",
            "sub",
            "mul",
            "floordiv",
            "truediv",
            "mod",
            "neg",
            "pow",
            "eq",
            "ne",
            "lt",
            "le",
            "gt",
            "ge",
            "and_",
            "or_",
            "not_",
        )
    ]
    + [f"torch.sym_{name}" for name in ("max", "min", "not", "float", "int", "ite", "sqrt", "sum")]
    + ["math.ceil", "math.floor", "math.trunc"]
)

# The functions sympy's printer writes into shape expressions.
_SYMPY_FUNCTIONS = frozenset(
    {
        "Max",
        "Min",
        "Mod",
        "FloorDiv",
        "CeilDiv",
        "CleanDiv",
        "PythonMod",
        "IntTrueDiv",
        "FloatTrueDiv",
        "TruncToInt",
        "TruncToFloat",
        "ToFloat",
        "CeilToInt",
        "FloorToInt",
        "RoundToInt",
        "RoundDecimal",
        "Abs",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "And",
        "Or",
        "Not",
        "Piecewise",
        "OpaqueUnaryFn_sqrt",
        "PowByNatural",
        "FloatPow",
        "Identity",
        # sympy's srepr, as the archive stores expressions: Add(Symbol('s0', positive=True, integer=True), Integer(-1))
        "Add",
        "Mul",
        "Pow",
        "Integer",
        "Rational",
        "Float",
        "Symbol",
        "Infinity",
        "NegativeInfinity",
        "IntInfinity",
        "NegativeIntInfinity",
        "BooleanTrue",
        "BooleanFalse",
        "StrictLessThan",
        "LessThan",
        "StrictGreaterThan",
        "GreaterThan",
        "Equality",
        "Unequality",
    }
)
# Python's own functions that torch 2.9 writes into the expressions of size guards (max(1, s0 // 2)).
_PYTHON_FUNCTIONS = frozenset({"max", "min"})
# The assumptions a Symbol(...) may state, each True or False.
_ASSUMPTIONS = frozenset(
    {"positive", "negative", "integer", "real", "nonnegative", "nonpositive", "nonzero", "finite", "even", "odd", "commutative"}
)
_SYMBOL = re.compile(r"[sdu]\d+|q\d+|z\d+|ps\d+|idx\d+|oo|zoo|nan|True|False")
_EXPRESSION_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.operator,
    ast.unaryop,
    ast.boolop,
    ast.cmpop,
    ast.Call,
    ast.keyword,
    ast.Subscript,
    ast.Attribute,
)


def isExportedArchive(source) -> bool:
    """Whether a model file (a path or bytes) is a ``torch.export`` archive, by its content: a zip
    whose ``archive_format`` member says ``pt2`` (a TorchScript archive has ``data.pkl`` and ``code/``)."""
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as archive:
            for member in archive.infolist():
                if member.filename.count("/") == 1 and member.filename.endswith("/archive_format") and member.file_size < 64:
                    return archive.read(member).strip() == PT2_FORMAT
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return False


def checkExpression(text: str, what: str) -> None:
    """Refuse a shape expression that is not arithmetic over shape symbols.

    sympy evaluates expressions as Python and ``guards_code`` is ``exec``'d, so only their
    arithmetic is let through: numbers, symbols (``s27``), the functions sympy's printer writes
    (``Max``, ``FloorDiv``, ...), operators and comparisons, and ``L['name'].size()[i]``.
    """
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        raise ModelFileError(f"{what} holds a shape expression that is not one ({text[:60]!r}): it is not loaded.") from None
    for node in ast.walk(tree):
        if not isinstance(node, _EXPRESSION_NODES) or not _allowedNode(node):
            raise ModelFileError(
                f"{what} holds a shape expression with {type(node).__name__} in it ({text[:60]!r}), which torch would run as Python: it is "
                "not loaded."
            )


def _allowedNode(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in _SYMPY_FUNCTIONS or node.id in _PYTHON_FUNCTIONS or node.id == "L" or bool(_SYMBOL.fullmatch(node.id))
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float, str)) and not (
            isinstance(node.value, str) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", node.value)
        )
    if isinstance(node, ast.Call):
        function = node.func
        isSize = isinstance(function, ast.Attribute) and function.attr == "size" and not node.args
        keywordsPlain = all(
            keyword.arg in _ASSUMPTIONS and isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, bool)
            for keyword in node.keywords
        )
        known = isinstance(function, ast.Name) and (
            function.id in _SYMPY_FUNCTIONS or function.id in _PYTHON_FUNCTIONS and not node.keywords
        )
        return (known or isSize) and keywordsPlain
    if isinstance(node, ast.keyword):
        return node.arg in _ASSUMPTIONS
    if isinstance(node, ast.Attribute):
        return node.attr == "size"
    if isinstance(node, ast.Subscript):
        # L['x'] and .size()[i] only.
        base, index = node.value, node.slice
        return isinstance(index, ast.Constant) and (
            (isinstance(base, ast.Name) and base.id == "L" and isinstance(index.value, str))
            or (isinstance(base, ast.Call) and isinstance(index.value, int))
        )
    return True


def checkTarget(target: str, what: str) -> None:
    """Refuse an operator outside the allow-list (``torch.ops.aten.NAME.OVERLOAD`` as ``aten::NAME``)."""
    from .graphsafety import allowedOperators

    match = re.fullmatch(r"torch\.ops\.aten\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)", target)
    if match and f"aten::{match.group(1)}" in allowedOperators():
        return
    if target in _PYTHON_TARGETS:
        return
    raise ModelFileError(f"{what} calls '{target}', which is not a pure tensor operator: it is not run; export the network without it.")


def checkProgramDocument(document, what: str) -> None:
    """Walk a program's JSON: every ``target`` on the allow-list, every expression arithmetic, no
    custom objects."""
    pending = [document]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "target" and isinstance(value, str):
                    checkTarget(value, what)
                elif key == "expr_str" and isinstance(value, str):
                    checkExpression(value, what)
                elif key == "guards_code":
                    for line in value if isinstance(value, list) else [value]:
                        checkExpression(str(line), what)
                elif key == "range_constraints" and isinstance(value, dict):
                    for symbol in value:
                        checkExpression(str(symbol), what)
                elif key in ("custom_obj_values", "as_custom_obj", "as_custom_objs") and value:
                    raise ModelFileError(f"{what} holds a custom object, which loading would unpickle: it is not loaded.")
                pending.append(value)
        elif isinstance(node, list):
            pending.extend(node)


def readCheckedMembers(source, what: str) -> dict[str, bytes]:
    """Every member of a ``.pt2`` archive (a path or bytes), read within the memory budget and checked.

    Returns:
        member name (as stored) → its bytes: what is handed to torch, so the file is not read twice.

    Raises:
        MedSegUNetError: a member torch does not write for plain tensors, a pickled payload, an
            expression or an operator that :func:`checkProgramDocument` refuses.
    """
    from .archives import openArchive, readMember
    from .filecheck import memoryBudgetBytes

    budget = memoryBudgetBytes()
    members: dict[str, bytes] = {}
    with openArchive(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source, what) as archive:
        for member in archive.infolist():
            top, _, rest = member.filename.partition("/")
            if not top or not _MEMBER.fullmatch(rest):
                raise ModelFileError(
                    f"{what} holds '{member.filename}', which torch.export does not write for plain tensors "
                    f"({_versions(_writerVersion(archive, what))}): it is not loaded; use its TorchScript .pt, or write it again with this "
                    "torch."
                )
            limit = CARD_BYTES_LIMIT if rest == CARD_MEMBER else budget
            members[member.filename] = readMember(archive, member, limit, what)
            budget -= len(members[member.filename])
    _checkMembers({name.partition("/")[2]: data for name, data in members.items()}, what)
    return members


def _programDocument(archive, what: str) -> bytes | None:
    """The model program's document (``<archive>/models/model.json``) of an open archive, read
    within the memory budget, or None when it has none."""
    from .archives import readMember
    from .filecheck import memoryBudgetBytes

    for member in archive.infolist():
        if member.filename.endswith("/models/model.json"):
            return readMember(archive, member, memoryBudgetBytes(), what)
    return None


def _writerVersion(archive, what: str) -> str:
    """The torch that wrote an open archive, or ``?`` (:func:`_writtenWith` of its program)."""
    document = _programDocument(archive, what)
    return "?" if document is None else _writtenWith(document)


def _writtenWith(document: bytes) -> str:
    """A program document's ``torch_version``, or ``?`` when it is not readable JSON."""
    try:
        return str(json.loads(document).get("torch_version", "?"))
    except (ValueError, UnicodeDecodeError, AttributeError):
        return "?"


def _versions(writer: str) -> str:
    """``written with torch 2.8.0; this is torch 2.13.0``: what a refusal across versions names."""
    import torch

    return f"written with torch {writer}; this is torch {torch.__version__}"


def _checkMembers(members: dict[str, bytes], what: str) -> None:
    if members.get("archive_format", b"").strip() != PT2_FORMAT:
        raise ModelFileError(f"{what} is not a torch.export (.pt2) archive: save it with 'medsegunet convert' or 'export --format pt2'.")
    if "models/model.json" not in members:
        raise ModelFileError(f"{what} holds no program named 'model': export it with 'medsegunet export --format pt2'.")
    for name, data in members.items():
        if name.endswith("_config.json"):
            for entry in _json(data, what, name).get("config", {}).values():
                if entry.get("use_pickle") or not str(entry.get("path_name", "")).startswith(("weight_", "tensor_")):
                    raise ModelFileError(
                        f"{what} stores '{entry.get('path_name')}' as a pickle, which loading would run: it is not loaded."
                    )
        elif name.startswith("models/"):
            checkProgramDocument(_json(data, what, name), what)
        elif name.startswith("data/sample_inputs/") and data:
            _checkPlainPickle(data, what)


def _json(data: bytes, what: str, name: str):
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ModelFileError(f"{what} has a damaged '{name}' (not JSON): export the model again.") from None


def _checkPlainPickle(data: bytes, what: str) -> None:
    """The example inputs: torch retries a failed safe load unsafely, so they must load safely here."""
    import torch

    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # the safe unpickler refuses with several error types
        raise ModelFileError(
            f"{what} holds example inputs that are not plain tensors (a pickle that would run code): it is not loaded."
        ) from None


def loadCheckedExported(source, device, what: str, program: str = "model"):
    """One program of a checked ``.pt2`` archive, as a module on ``device`` that nothing has called
    (:func:`loadCheckedPrograms`, for a caller that needs only one).

    Args:
        program: ``model``, or ``localizer`` (the card's localiser network, stored beside it).
    """
    return loadCheckedPrograms(source, device, what, (program,))[program]


def loadCheckedPrograms(source, device, what: str, programs=("model",), members: dict[str, bytes] | None = None) -> dict:
    """Programs of a checked ``.pt2`` archive, read, checked and deserialised once, as modules on
    ``device`` that nothing has called.

    Args:
        source: a file path, or the archive's bytes.
        device: where the weights go.
        what: the file as messages name it.
        programs: the programs wanted (``model``, ``localizer``).
        members: the archive's members when the caller has read and checked them already.

    Raises:
        MedSegUNetError: as :func:`readCheckedMembers`, a missing program, or torch refusing it.
    """
    from .errors import firstLine

    load_pt2 = _archiveFunctions()[0]
    members = members if members is not None else readCheckedMembers(source, what)
    for program in programs:
        if not any(name.endswith(f"/models/{program}.json") for name in members):
            raise ModelFileError(f"{what} holds no '{program}' network: convert or export it again with its {program}.")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as checked:
        for name, data in members.items():
            checked.writestr(name, data)
    buffer.seek(0)
    try:
        exported = load_pt2(buffer).exported_programs
        wanted = {program: exported[program] for program in programs}
    except Exception as error:  # torch raises many types for archives it cannot read
        writer = _writtenWith(next((data for name, data in members.items() if name.endswith("/models/model.json")), b"{}"))
        raise ModelFileError(
            f"Cannot load the torch.export {what[0].lower() + what[1:]} ({_versions(writer)}: {firstLine(str(error))[:140]}); "
            "use its TorchScript .pt, or a torch at least as new as the one that wrote it."
        ) from None
    for program in wanted.values():
        for node in program.graph.nodes:
            if node.op == "call_function":
                checkTarget(_targetName(node.target), what)
    return {name: program.module().to(device) for name, program in wanted.items()}


def _targetName(target) -> str:
    """A graph node's target as the archive's JSON names it."""
    import torch

    if isinstance(target, torch._ops.OpOverload):
        namespace, name = target._schema.name.split("::", 1)
        return f"torch.ops.{namespace}.{name}.{target._overloadname}"
    module = getattr(target, "__module__", "") or ""
    return f"{'_operator' if module in ('operator', '_operator') else module}.{getattr(target, '__name__', target)}"


def exportNetwork(network, example, dynamicSpatial: bool = True):
    """``torch.export.export`` of an eager network in eval mode with the batch and every spatial size dynamic.

    Args:
        network: a ``torch.nn.Module``, or the module of a loaded ``.pt2`` program.
        example: a tensor ``N, C, *spatial`` of a size the network accepts (the card's patch).
        dynamicSpatial: False keeps the spatial sizes of ``example`` (the batch stays dynamic).
    """
    import torch
    from torch.export import Dim

    # An exported program's module (a loaded .pt2, compiled by AOTInductor) is in inference form
    # already and refuses .eval().
    if not isinstance(network, torch.fx.GraphModule):
        network = network.eval()
    # Batch and spatial sizes are left to the caller (sliding-window batches, any ROI); a batch of 2
    # in the example keeps torch from fixing it at 1.
    example = torch.cat([example[:1], example[:1]]) if example.shape[0] == 1 else example
    dynamic = {axis: Dim.AUTO for axis in range(example.dim()) if axis == 0 or (axis > 1 and dynamicSpatial)}
    with torch.no_grad():
        return torch.export.export(network, (example,), dynamic_shapes=(dynamic,))


def writeExportedArchive(programs: dict, cardText: str, path: str) -> None:
    """Write exported programs (``model`` and, when the card has one, ``localizer``) and the card as
    one ``.pt2`` archive at ``path`` (a temporary name: the caller verifies and renames it)."""
    package_pt2 = _archiveFunctions()[1]
    for program in programs.values():
        # Without example inputs the archive is the size of the weights (a 3D example is megabytes),
        # and the loaded module checks its inputs against the range constraints instead of
        # building a guard function from code strings.
        program.example_inputs = None
    package_pt2(path, exported_programs=programs, extra_files={"medsegunet.json": cardText})


def _archiveFunctions():
    """torch's own reader and writer of ``.pt2`` archives, or one line saying this torch has none
    (a Slicer whose torch predates the archive format keeps using TorchScript files)."""
    try:
        from torch.export.pt2_archive._package import load_pt2, package_pt2
    except ImportError:
        import torch

        raise ModelFileError(
            f"This torch ({torch.__version__}) cannot read or write .pt2 model files: use the TorchScript (.pt) file of the model, "
            "or update torch (the .pt2 format is tested with torch 2.13)."
        ) from None
    return load_pt2, package_pt2


def exampleInput(card: dict, localizer: bool = False):
    """A random input ``N, C, *spatial`` the card's network takes: its patch (or grid) with the
    card's input channels; 64 per axis for a whole-ROI card."""
    import torch

    card = cardView(card)
    dims = card.spatialDims
    if localizer:
        spatial, channels = card.localizer["grid"]["shape"], 1
    else:
        spatial = card.grid.shape or card.window.patchSize or [64] * dims
        channels = len(card.inputs)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, channels, *[int(size) for size in spatial][-dims:], generator=generator)


def saveExportedModel(network, card: dict, path, localizer=None, references=(), tolerance: float = 0.0) -> list[float]:
    """Export a network (and its localiser) with ``torch.export`` and write them with the card as a
    ``.pt2`` archive, verified before it is renamed into place: read back through the checks of
    :func:`loadCheckedExported`, it must answer the example input as the network does, answer each
    reference input with its reference output within ``tolerance``, and carry the card byte for byte.

    Args:
        references: ``(input, expected output)`` pairs the written model must reproduce (a
            conversion's TorchScript answers at several sizes).

    Returns:
        the largest absolute difference at each reference.

    Raises:
        MedSegUNetError: a network torch.export cannot capture (scripted modules included), or a
            written archive that does not read back the same.
    """
    import torch

    from .errors import firstLine
    from .staging import atomicOutput

    if isinstance(network, torch.jit.ScriptModule) or isinstance(localizer, torch.jit.ScriptModule):
        raise ModelFileError(
            "A .pt2 model is exported from the eager network, not a TorchScript one: use 'medsegunet convert' for a TorchScript file."
        )
    cardText = json.dumps(card, indent=2)
    examples = {"model": exampleInput(card)}
    modules = {"model": network.cpu().eval()}
    if localizer is not None:
        examples["localizer"], modules["localizer"] = exampleInput(card, localizer=True), localizer.cpu().eval()
    try:
        programs = {name: exportNetwork(modules[name], examples[name]) for name in modules}
    except MedSegUNetError:
        raise
    except Exception as error:  # torch.export raises many types for code it cannot capture
        raise ModelFileError(
            f"torch.export cannot capture the network ({firstLine(str(error))[:160]}): keep the TorchScript format (--format torchscript)."
        ) from None

    def verify(written: str) -> None:
        what = f"The written model '{written}'"
        members = readCheckedMembers(written, what)
        if [data for name, data in members.items() if name.endswith("/" + CARD_MEMBER)] != [cardText.encode("utf-8")]:
            raise ModelFileError(f"The model file '{written}' was written incompletely; nothing was kept: check the free disk space.")
        loadedPrograms = loadCheckedPrograms(written, "cpu", what, tuple(modules), members)
        for name, module in modules.items():
            loaded = loadedPrograms[name]
            with torch.no_grad():
                expected, answered = module(examples[name]), loaded(examples[name])
            if not torch.equal(expected, answered):
                raise ModelFileError(
                    f"The exported {name} answers differently from the network (max |difference| "
                    f"{float((expected - answered).abs().max()):.3g}): nothing was written."
                )
            if name == "model":
                differences[:] = [_referenceDifference(loaded, sample, reference) for sample, reference in references]
        if differences and max(differences) > tolerance:
            raise ModelFileError(
                f"The exported network answers differently from the source (max |difference| {max(differences):.3g}, "
                f"allowed {tolerance:g}): nothing was written."
            )

    differences: list[float] = []
    with atomicOutput(path, verify=verify) as temporary:
        writeExportedArchive(programs, cardText, temporary)
    return differences


def _referenceDifference(module, sample, reference) -> float:
    import torch

    with torch.no_grad():
        answered = module(sample)
    if tuple(answered.shape) != tuple(reference.shape):
        return float("inf")
    return float((answered - reference).abs().max())


def formatLine(path) -> str:
    """What ``medsegunet info`` says of a model file's format (and, for ``.pt2``, the torch that wrote it)."""
    if not isExportedArchive(path):
        return "Format: TorchScript (convert it to .pt2 with 'medsegunet convert')"
    from .archives import openArchive

    with openArchive(path, f"Model file '{path}'") as archive:
        document = _programDocument(archive, f"Model file '{path}'")
    # Stricter than _writtenWith: a damaged program document is an error here, not an unknown version.
    version = "?" if document is None else str(_json(document, path, "models/model.json").get("torch_version", "?"))
    return f"Format: torch.export (.pt2), written with torch {version}"


__all__ = [
    "CARD_BYTES_LIMIT",
    "isExportedArchive",
    "checkExpression",
    "checkTarget",
    "checkProgramDocument",
    "readCheckedMembers",
    "loadCheckedExported",
    "loadCheckedPrograms",
    "exportNetwork",
    "writeExportedArchive",
    "exampleInput",
    "saveExportedModel",
    "formatLine",
]
