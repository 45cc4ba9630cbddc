"""``medsegunet export`` and ``medsegunet info``: from a training checkpoint to a model file.

Export rebuilds the network the training config describes, loads the checkpoint's weights,
scripts it to TorchScript, checks that the scripted and the eager network agree on a sample
input, and saves it with a model card made from the same config (:func:`training.cardFromConfig`),
so that the extension prepares inputs at inference exactly as training did.
"""

from __future__ import annotations

import os
from typing import Sequence

from ..engine.errors import TrainingError, firstLine

# Scripted and eager outputs are the same arithmetic; these only absorb kernel-order rounding.
RTOL = 1e-4
ATOL = 1e-4


def checkScriptedMatches(network, scripted, sampleShape: Sequence[int], seed: int = 0) -> float:
    """Run eager and scripted networks on one random sample and compare.

    Args:
        network: the eager ``torch.nn.Module`` (put in eval mode here).
        scripted: its ``torch.jit.script`` version.
        sampleShape: ``N, C, spatial…`` (MONAI layout).

    Returns:
        the largest absolute difference.

    Raises:
        MedSegUNetError: outputs of different shapes or values.
    """
    import torch

    network.eval()
    scripted.eval()
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(*[int(s) for s in sampleShape], generator=generator)
    with torch.no_grad():
        eager = network(sample)
        script = scripted(sample)
    if isinstance(eager, (tuple, list)):
        eager, script = eager[0], script[0]
    if tuple(eager.shape) != tuple(script.shape):
        raise TrainingError(
            f"The scripted network's output shape {tuple(script.shape)} differs from the eager network's {tuple(eager.shape)}: the model "
            "cannot be exported."
        )
    difference = float((eager.float() - script.float()).abs().max())
    if not torch.allclose(eager.float(), script.float(), rtol=RTOL, atol=ATOL):
        raise TrainingError(
            f"The scripted network's outputs differ from the eager network's (max |difference| {difference:.3g}): "
            "the network's code behaves differently under TorchScript, so it cannot be exported; nothing was written."
        )
    return difference


def exportNetwork(network, card: dict, path: str | os.PathLike, sampleShape: Sequence[int], format: str = "torchscript") -> float:
    """Script a network, check it against the eager one, and save it with its card (or, with
    ``format="pt2"``, export it with ``torch.export``, checked the same way by :func:`modelcard.saveModel`).

    Args:
        network: eager network with trained weights.
        card: its model card (validated by :func:`modelcard.saveModel`).
        path: the ``.pt`` (or ``.pt2``) file to write (atomically).
        sampleShape: ``N, C, spatial…`` of the check sample.
        format: ``torchscript`` or ``pt2``.

    Returns:
        the largest absolute difference between scripted and eager outputs.

    Raises:
        MedSegUNetError: the network cannot be scripted, disagrees with its scripted form, or its
            output channels do not fit the card.
    """
    import torch

    from ..engine.modelcard import outputChannels, saveModel, validateCard
    from ..engine.staging import checkOutputPath

    card = validateCard(card)
    checkOutputPath(path)
    network = network.cpu().eval()
    with torch.no_grad():
        channels = network(torch.zeros(*[int(s) for s in sampleShape])).shape[1]
    if channels != outputChannels(card):
        raise TrainingError(
            f"The network outputs {channels} channels but the card needs {outputChannels(card)} ({card['output']}, {len(card['labels'])} "
            "labels): fix the config's labels or output."
        )
    if format == "pt2":
        saveModel(network, card, path, format="pt2")
        return 0.0
    try:
        scripted = torch.jit.script(network)
    except Exception as error:  # TorchScript raises its own frontend errors
        raise TrainingError(f"The network cannot be scripted to TorchScript ({firstLine(error)[:160]}).") from None
    difference = checkScriptedMatches(network, scripted, sampleShape)
    saveModel(scripted, card, path)
    return difference


def epochsInRun(checkpointPath: str | os.PathLike, history: list) -> int:
    """How many epochs the run behind a checkpoint did: ``checkpoint_best.pt`` holds the history up
    to its own epoch only; the run's ``metrics.csv`` beside it has every epoch."""
    import csv

    epochs = len(history)
    metrics = os.path.join(os.path.dirname(os.path.abspath(os.fspath(checkpointPath))), "metrics.csv")
    try:
        with open(metrics, encoding="utf-8", newline="") as stream:
            epochs = max([epochs, *(int(row["epoch"]) for row in csv.DictReader(stream) if str(row.get("epoch", "")).isdigit())])
    except (OSError, KeyError, ValueError, csv.Error):
        pass
    return epochs


def validationWording(card: dict) -> str:
    """``Validation`` on unseen cases, or ``Fit on the training case`` when the figures come from a
    training case (or a copy of one): the words ``info`` and ``export`` print before the Dice."""
    validation = card.get("validation") or {}
    trained = [str(name) for name in (card.get("training") or {}).get("training_cases") or []]
    cases = [str(name) for name in validation.get("cases") or []]
    if any(case == name or case.startswith(name + "-") for case in cases for name in trained):
        return "Fit on the training case (not a validation on unseen data)"
    return "Validation"


def cardFromCheckpoint(config: dict, checkpoint: dict, epochsRun: int | None = None) -> dict:
    """The card for a checkpoint: the config's card fields plus a record of training and validation.

    Args:
        epochsRun: the epochs the whole run did (default: the checkpoint's history).
    """
    from .trainconfig import cardFromConfig

    card = cardFromConfig(config)
    # A checkpoint holds the weights of its own last epoch (checkpoint_best.pt: the best one).
    epoch = int(checkpoint.get("epoch", 0))
    history = checkpoint.get("history") or []
    row = next((r for r in history if r.get("epoch") == epoch), None)
    card["training"] = {
        "tool": "medsegunet train",
        "training_cases": list(checkpoint.get("train_cases") or []),
        "epochs_run": epochsRun if epochsRun is not None else len(history),
        "checkpoint_epoch": epoch,
        "network": config["network"],
        "loss": config["loss"]["type"],
        "optimizer": config["optimizer"],
        "patch_size": config["patch_size"],
        "sampling": config["sampling"],
        "seed": config["seed"],
        "label_remap": config.get("label_remap") or {},
    }
    if checkpoint.get("initialised_from"):
        card["training"]["initialised_from"] = {
            key: value for key, value in checkpoint["initialised_from"].items() if key in ("file", "sha256", "epoch", "earlier")
        }
    if row is not None and row.get("val_mean_dice") is not None:
        card["validation"] = {
            "cases": list(checkpoint.get("validation_cases") or []),
            "epoch": epoch,
            "mean_dice": row["val_mean_dice"],
            "per_label": {
                label["name"]: {m: row.get(f"{m}_{label['name']}") for m in ("dice", "iou", "sensitivity", "specificity")}
                for label in config["labels"]
            },
            "note": "computed on the model grid inside the ROI by 'medsegunet train'",
        }
    return card


def exportCheckpoint(
    checkpointPath: str | os.PathLike,
    outputPath: str | os.PathLike,
    configPath: str | os.PathLike | None = None,
    format: str = "torchscript",
) -> dict:
    """Export a ``medsegunet train`` checkpoint to a TorchScript model with its card.

    Args:
        checkpointPath: usually ``checkpoint_best.pt``.
        outputPath: the model file to write.
        configPath: a config to take the card fields from instead of the one stored in the checkpoint.
        format: ``torchscript`` (``.pt``) or ``pt2`` (a ``torch.export`` archive).

    Returns:
        the card written.

    Raises:
        MedSegUNetError: unreadable checkpoint, a config for another network, scripting problems.
    """
    from . import trainconfig, training

    checkpoint = training.loadCheckpoint(checkpointPath)
    if configPath is not None:
        config = trainconfig.readConfig(configPath)
    else:
        config = trainconfig.validateConfig(checkpoint["config"], f"config stored in '{os.fspath(checkpointPath)}'")
    network = training.buildNetwork(config)
    training.loadNetworkWeights(network, checkpoint, checkpointPath)
    card = cardFromCheckpoint(config, checkpoint, epochsInRun(checkpointPath, checkpoint.get("history") or []))
    sampleShape = [1, len(config["inputs"]), *config["patch_size"]]
    exportNetwork(network, card, outputPath, sampleShape, format)
    from ..engine.modelcard import readCard

    return readCard(outputPath)


def fileStem(words: str) -> str:
    """A file name for an example command from a card's words: ``T2 axial`` → ``T2_axial``."""
    import re

    return re.sub(r"[^A-Za-z0-9]+", "_", str(words)).strip("_") or "input"


def usageLines(card: dict, modelRef: str) -> list[str]:
    """What a user needs to run a model, after :func:`cardSummary`: the series its ROI needs, the
    context it sees, QC ranges, licence, citation, and a ``segment`` line with its own input names.

    Args:
        card: a validated card.
        modelRef: how the user named the model (a catalog name or a path), used in the example.
    """
    import shlex

    roi = card.get("roi") or {}
    lines = []
    # The series the ROI needs, when the card uses one.
    series = [str(words) for words in roi.get("from_series") or []] if roi.get("use", True) else []
    if series:
        lines.append(
            "ROI: the inputs' common extent cut by series matching "
            + ", ".join(f"'{words}'" for words in series)
            + " (give them with --roi-from; --no-roi runs on the whole input)"
        )
    if roi.get("context_mm"):
        lines.append(f"Context: the network sees the ROI grown by {float(roi['context_mm']):g} mm; labels stay inside the ROI")
    ranges = [
        f"{label['name']} {label['qc']['volume_ml'][0]:g}–{label['qc']['volume_ml'][1]:g} mL"
        for label in card["labels"]
        if (label.get("qc") or {}).get("volume_ml")
    ]
    if ranges:
        lines.append("Expected volumes (QC flags outside): " + "; ".join(ranges))
    for key, title in (("version", "Version"), ("license", "Licence"), ("citation", "Cite")):
        if card.get(key):
            lines.append(f"{title}: {card[key]}")
    command = ["medsegunet", "segment", "--model", modelRef, *[f"{fileStem(item['name'])}.nii.gz" for item in card["inputs"]]]
    if series:
        command += ["--roi-from", *[f"{fileStem(words)}.nii.gz" for words in series]]
    command += ["--output", "segmentation.seg.nrrd"]
    lines.append("Example: " + shlex.join(command))
    return lines


__all__ = [
    "checkScriptedMatches",
    "exportNetwork",
    "epochsInRun",
    "validationWording",
    "cardFromCheckpoint",
    "exportCheckpoint",
    "fileStem",
    "usageLines",
]
