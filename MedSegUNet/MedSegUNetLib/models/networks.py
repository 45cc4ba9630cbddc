"""Networks named by untrusted configs, built as data: nothing a model file or config says is run.

Model cards, MONAI bundle configs and Auto3DSeg checkpoints name their network with a
``_target_`` and its arguments. MONAI's ``ConfigParser`` would import any module a ``_target_``
names and evaluate ``$`` expressions, which lets a downloaded model run code (``os.system``,
``subprocess.Popen``, ``shutil.rmtree``). Here:

- a ``_target_`` must name a class of ``monai.networks.nets`` (``"SegResNetDS"``,
  ``"monai.networks.nets.SegResNetDS"`` or its defining module's path); it is looked up in that
  package before anything is imported or called, and must be a ``torch.nn.Module``;
- arguments are plain JSON data: ``$`` expressions and ``%`` file references are refused by name,
  never evaluated; ``@`` references are resolved only to plain values inside the same config;
  nested ``_target_`` objects and MONAI's ``_requires_``/``_mode_``/``_disabled_`` keys are refused.
"""

from __future__ import annotations

import re
from typing import Any

from ..engine.errors import ModelImportError

ALLOWED_PACKAGE = "monai.networks.nets"
# MONAI config keys that run or skip code; a network's arguments need none of them.
REFUSED_KEYS = ("_requires_", "_mode_", "_disabled_")
IGNORED_KEYS = ("_desc_",)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def networkClass(target: Any, where: str):
    """The class a ``_target_`` names, from ``monai.networks.nets`` only.

    Args:
        target: the ``_target_`` value (untrusted).
        where: what holds it, for the message (``"the card's network"``).

    Raises:
        MedSegUNetError: not a name of a network class of ``monai.networks.nets``.
    """
    if not isinstance(target, str) or not _IDENTIFIER.fullmatch(target):
        raise ModelImportError(
            f"{where} names no network class ('_target_': {str(target)[:80]!r}): name a class of {ALLOWED_PACKAGE}, e.g. \"SegResNetDS\"."
        )
    name = target.rsplit(".", 1)[-1]
    if "." in target and not target.startswith(ALLOWED_PACKAGE + "."):
        raise ModelImportError(
            f"{where} names '{target}', which is not a network of {ALLOWED_PACKAGE}: only MONAI's networks are built from model files, "
            "nothing else is imported or run."
        )
    import monai.networks.nets as nets
    import torch

    candidate = getattr(nets, name, None)
    if not isinstance(candidate, type) or not issubclass(candidate, torch.nn.Module):
        raise ModelImportError(
            f"{where} names '{target}', which is not a network class of {ALLOWED_PACKAGE}: name one of MONAI's networks (e.g. SegResNetDS, "
            "UNet)."
        )
    if "." in target and target not in (f"{ALLOWED_PACKAGE}.{name}", f"{candidate.__module__}.{name}"):
        raise ModelImportError(f"{where} names '{target}', which is not where {ALLOWED_PACKAGE}.{name} is defined.")
    return candidate


def _lookup(config: dict, reference: str, where: str) -> Any:
    """``@a#b`` → ``config["a"]["b"]`` (MONAI's reference syntax), inside ``config`` only."""
    node: Any = config
    for part in reference.split("#"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ModelImportError(
                f"{where}: the reference '@{reference}' names nothing in the config: references outside it are not followed."
            )
    return node


def plainValue(value: Any, where: str, config: dict | None = None, seen: tuple = ()) -> Any:
    """An argument as plain data: ``@`` references resolved inside ``config``; code refused.

    Raises:
        MedSegUNetError: a ``$`` expression, a ``%`` file reference, a reference outside the config
            or in a cycle, a nested ``_target_``, or a key that runs code, named by its key path.
    """
    if isinstance(value, str):
        if value.startswith("$"):
            raise ModelImportError(
                f"{where} is a '$' expression ({value[:60]!r}): expressions in model configs are never evaluated; write the value itself."
            )
        if value.startswith("%"):
            raise ModelImportError(f"{where} is a '%' reference to another file ({value[:60]!r}): only values inside the config are read.")
        if value.startswith("@"):
            reference = value[1:]
            if config is None or reference in seen:
                raise ModelImportError(f"{where} is a reference ({value[:60]!r}) that cannot be followed: write the value itself.")
            return plainValue(_lookup(config, reference, where), f"{where} (via {value})", config, (*seen, reference))
        return value
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [plainValue(item, f"{where}[{index}]", config, seen) for index, item in enumerate(value)]
    if isinstance(value, dict):
        if "_target_" in value:
            raise ModelImportError(f"{where} is an object with its own '_target_': a network's arguments must be plain values.")
        return {str(key): plainValue(item, f"{where}.{key}", config, seen) for key, item in value.items() if key not in IGNORED_KEYS}
    raise ModelImportError(f"{where} is a {type(value).__name__}, not a plain value.")


def networkArguments(spec: dict, where: str, config: dict | None = None) -> dict:
    """The keyword arguments of a network spec: ``{"_target_", "args": {...}}`` (a card) or
    ``{"_target_", key: value, ...}`` (a MONAI config), as plain data."""
    refused = [key for key in spec if key in REFUSED_KEYS]
    if refused:
        raise ModelImportError(
            f"{where} has '{refused[0]}', which MONAI would act on: a network's config holds only its class and arguments."
        )
    if "args" in spec:
        if not isinstance(spec["args"], dict) or set(spec) - {"_target_", "args", *IGNORED_KEYS}:
            raise ModelImportError(f'{where}: give the network as {{"_target_": ..., "args": {{...}}}}.')
        arguments = spec["args"]
    else:
        arguments = {key: value for key, value in spec.items() if key != "_target_"}
    return {str(key): plainValue(value, f"{where}.{key}", config) for key, value in arguments.items() if key not in IGNORED_KEYS}


def buildNetwork(spec: Any, where: str = "the card's network", config: dict | None = None):
    """The eager network a spec names, in eval mode, built without running anything from the spec.

    Args:
        spec: ``{"_target_": "monai.networks.nets.NAME", "args": {...}}`` or a MONAI config
            object ``{"_target_": "NAME", key: value, ...}`` (untrusted).
        where: what holds it, for messages.
        config: the whole config, for ``@`` references (MONAI configs).

    Raises:
        MedSegUNetError: a class outside ``monai.networks.nets``, arguments that are not plain data
            or that the class does not take.
    """
    if not isinstance(spec, dict) or "_target_" not in spec:
        raise ModelImportError(f'{where} needs {{"_target_": "monai.networks.nets.NAME", "args": {{...}}}} naming the network.')
    networkType = networkClass(spec["_target_"], where)
    arguments = networkArguments(spec, where, config)
    try:
        return networkType(**arguments).eval()
    except (TypeError, ValueError, AssertionError, KeyError, IndexError) as error:
        from ..engine.errors import firstLine

        raise ModelImportError(f"{where} '{spec['_target_']}' does not take these arguments ({firstLine(error)[:160]}).") from None


__all__ = ["networkClass", "plainValue", "networkArguments", "buildNetwork"]
