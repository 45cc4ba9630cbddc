"""What every import shares: the network a card names (built as data), the check of the converted model
against its source, and the provenance recorded in the card.
"""

from __future__ import annotations

import enum
import json
import os
from typing import Callable

import numpy as np

from ..engine.errors import ModelImportError


class ImportStage(enum.Enum):
    """The steps of every import, in the order they run, with the share of the progress each starts at."""

    READING = (0.00, "Reading {what}")
    BUILDING = (0.20, "Building {what} and loading its weights")
    VERIFYING = (0.50, "Verifying the converted network against {what}")
    WRITING = (0.80, "Writing and checking {what}")


def reportStep(progress: Callable[[float, str], None] | None, stage: ImportStage, what: str) -> None:
    """Tell ``progress`` (a ``(fraction, message)`` callback, or None) that ``stage`` begins."""
    if progress is not None:
        progress(stage.value[0], stage.value[1].format(what=what))


# float32 runtimes differ by ~1e-4 on logits of ~10: allowed difference, relative to the output range.
RELATIVE_TOLERANCE = 1e-3
ABSOLUTE_TOLERANCE = 1e-4


def buildNetwork(spec: dict):
    """The eager network a card's ``network`` names: ``{"_target_": "monai.networks.nets.NAME", "args": {...}}``,
    built as data (:mod:`networks`: MONAI's networks only, nothing in the card is run)."""
    from .networks import buildNetwork as buildAllowed

    if not isinstance(spec, dict) or "_target_" not in spec:
        raise ModelImportError(
            'The card needs "network": {"_target_": "monai.networks.nets.NAME", "args": {...}} naming the network the ONNX weights belong '
            "to."
        )
    return buildAllowed(spec, "the card's network")


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
        raise ModelImportError(
            f"The network gives {got.shape[1]} channels but {channelsFrom} need {outputChannels(card)}: it is not imported."
        )
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
        raise ModelImportError(
            f"The imported network's outputs differ from {runtime}'s by {difference:.3g} (allowed {allowed:.3g} for an output range of "
            f"{span:.3g}): nothing was written."
        )
    return {"patch": patch, "max_abs_difference": difference, "output_range": span, "tolerance": allowed, "runtime": runtime}


def provenance(
    kind: str,
    source: str,
    checksum: str,
    network,
    verified: dict,
    notes: list[str],
    origin: str | None = None,
    arguments: dict | None = None,
) -> dict:
    """The card's record of where an imported model came from and how it was checked.

    Args:
        network: the eager network (its class is recorded), or the record itself for a network
            with no Python class to name (a published TorchScript: ``{"torchscript": name}``).
        origin: what to record as the source instead of the file's path (a catalog pull imports
            from a temporary folder: its release, such as ``deepbet==1.0.2 data/models/model.pt``).
        arguments: the network's constructor arguments as plain data, recorded so that the eager
            network can be built again (``medsegunet convert`` to ``.pt2``).
    """
    record = network if isinstance(network, dict) else {"_target_": type(network).__module__ + "." + type(network).__name__}
    if arguments is not None:
        record = {**record, "args": arguments}
    return {
        "format": kind,
        "source": origin or os.path.abspath(source),
        "source_sha256": checksum,
        "tool": "medsegunet import",
        "notes": list(notes),
        "network": record,
        "verified": verified,
    }


def readImportCard(path: str) -> dict:
    if not path:
        raise ModelImportError('Importing an ONNX model needs --card CARD.json (the model card, with the "network" it belongs to).')
    from ..engine.paths import checkRegularFile

    checkRegularFile(path, "Model card")
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except json.JSONDecodeError as error:
        raise ModelImportError(f"Model card '{path}' is not valid JSON ({error.msg}, line {error.lineno}).") from None
    except UnicodeDecodeError:
        raise ModelImportError(f"Model card '{path}' is not UTF-8 text: save it as UTF-8 JSON.") from None


__all__ = [
    "ImportStage",
    "reportStep",
    "RELATIVE_TOLERANCE",
    "buildNetwork",
    "verifyAgainstEager",
    "compareOutputs",
    "provenance",
    "readImportCard",
]
