"""Published TorchScript models (deepbet's ``model.pt`` and its ``bbox_model.pt``) wrapped with a card.

The network is kept as its authors scripted it; what the import adds is the card that says how
their pipeline prepares the input and reads the output (a schema 3 card: fixed grid shape,
normalisation steps, a localiser, probabilities), and a check before anything is written: the
network (and the localiser) must answer a random input of the shape the card will give it with
the channels the card says (values in 0–1 for probabilities), and the written file, loaded again,
must answer the same input identically.
"""

from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

from ..engine.errors import ModelImportError, firstLine
from .verification import ImportStage, compareOutputs, provenance, readImportCard, reportStep

# A window no larger than this is used for the check when the card runs whole grids (cheap on a CPU).
CHECK_SHAPE = [64, 64, 64]


def isTorchScript(path: str) -> bool:
    """Whether a file is a TorchScript archive (its ``code/`` and ``constants.pkl``), not a
    ``torch.save`` checkpoint (``data.pkl`` only)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any("/code/" in name for name in names) and any(name.endswith("/constants.pkl") for name in names)


def loadScripted(path: str, what: str):
    """A TorchScript network on the CPU, or one line saying why it cannot be read."""
    from ..engine.graphsafety import loadCheckedTorchScript
    from ..engine.paths import checkRegularFile

    checkRegularFile(path, what)
    if not isTorchScript(path):
        raise ModelImportError(f"{what} '{path}' is not a TorchScript archive: give a file saved with torch.jit.save.")
    return loadCheckedTorchScript(path, "cpu", f"{what} '{path}'")


def checkShape(card: dict, grid: dict | None) -> list[int]:
    """The spatial shape of the random input: the card's window, else its grid shape, else :data:`CHECK_SHAPE`."""
    dims = int(card.get("spatial_dims", 3))
    if card.get("patch_size"):
        return [int(v) for v in card["patch_size"]]
    if grid:
        return [int(v) for v in grid["shape"]][:dims]
    return CHECK_SHAPE[:dims]


def answer(network, sample, channels: int, probabilities: bool, what: str) -> np.ndarray:
    """The network's output on ``sample`` (``N, C, ...``), checked against the card's channel count and range."""
    import torch

    with torch.inference_mode():
        try:
            output = network(sample)
        except Exception as error:  # torch.jit.Error and shape errors
            raise ModelImportError(
                f"The {what} fails on a random input of shape {tuple(sample.shape)} ({firstLine(error)[:140]}): check the card's inputs "
                "and grid."
            ) from None
    output = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.ndim != sample.ndim:
        raise ModelImportError(f"The {what} does not return a floating-point tensor of {sample.ndim} dimensions: it is not imported.")
    if int(output.shape[1]) != channels:
        raise ModelImportError(
            f"The {what} gives {int(output.shape[1])} channels but the card needs {channels}: fix the card's labels, output or channels."
        )
    values = output.float().numpy()
    if probabilities and (values.min() < -1e-4 or values.max() > 1 + 1e-4):
        raise ModelImportError(
            f"The {what} returns values from {values.min():.3g} to {values.max():.3g}, not probabilities: set the card's output to softmax "
            "or sigmoid."
        )
    return values


def importTorchScript(
    source: str, cardPath: str, output: str, localizerPath: str | None = None, origin: tuple[str, str | None] | None = None, progress=None
) -> dict:
    """Wrap a published TorchScript network (and its localiser) with a card; returns the card written
    (``origin``: the network's and the localiser's sources to record, :func:`verification.provenance`;
    ``progress``: told each :class:`verification.ImportStage`).

    Raises:
        MedSegUNetError: a file that is not TorchScript, a card whose localiser and ``--localizer``
            do not go together, a network that fails or answers other than the card says, or a
            written file that answers differently.
    """
    import torch

    from ..engine.modelcard import loadModel, outputChannels, saveModel, validateCard
    from ..engine.paths import sha256

    card = validateCard(readImportCard(cardPath), f"model card '{cardPath}'")
    if (localizerPath is None) != (card.get("localizer") is None):
        raise ModelImportError(
            "The card's 'localizer' and --localizer go together: give the localiser's TorchScript file with a card that describes it, or "
            "neither."
        )
    reportStep(progress, ImportStage.READING, f"the TorchScript {os.path.basename(source)} and checking its operators")
    network = loadScripted(source, "Model")
    localizer = loadScripted(localizerPath, "Localiser") if localizerPath else None
    from ..engine.filecheck import checkTensorBudget

    generator = torch.Generator().manual_seed(0)
    shape = [1, len(card["inputs"]), *checkShape(card, card.get("grid"))]
    checkTensorBudget("The check's random input", shape)
    if card.get("localizer"):
        checkTensorBudget("The localiser check's random input", [1, len(card["inputs"]), *card["localizer"]["grid"]["shape"]])
    sample = torch.rand(*shape, generator=generator)
    reportStep(progress, ImportStage.VERIFYING, f"its own answers on a {tuple(shape)} input")
    expected = answer(network, sample, outputChannels(card), card["output"] == "probabilities", "network")
    checks = [(sample, expected)]
    if localizer is not None:
        spec = card["localizer"]
        localizerSample = torch.rand(1, len(card["inputs"]), *spec["grid"]["shape"], generator=generator)
        checks.append(
            (localizerSample, answer(localizer, localizerSample, int(spec["channels"]), spec["output"] == "probabilities", "localiser"))
        )
    sourceOrigin, localizerOrigin = origin or (None, None)
    record = provenance("torchscript", source, sha256(source), {"torchscript": network.original_name}, {}, [], sourceOrigin)
    if localizerPath:
        record.update(localizer=localizerOrigin or os.path.abspath(localizerPath), localizer_sha256=sha256(localizerPath))
    card = card.replaced(provenance=record)
    with tempfile.TemporaryDirectory(prefix="medsegunet-import-") as folder:
        # The file as it will be written, loaded back and asked the same questions.
        reportStep(progress, ImportStage.WRITING, os.path.basename(output))
        trial = os.path.join(folder, "trial.pt")
        saveModel(network, card, trial, localizer=localizer)
        reloaded = loadModel(trial, "cpu")
        got = answer(reloaded.network, sample, outputChannels(card), False, "written network")
        record["verified"] = compareOutputs(expected, got, list(sample.shape), f"the published TorchScript (torch {torch.__version__})")
        card = card.replaced(provenance=record)
        if localizer is not None:
            localizerSample, localizerExpected = checks[1]
            gotLocalizer = answer(reloaded.localizer, localizerSample, int(card["localizer"]["channels"]), False, "written localiser")
            compareOutputs(localizerExpected, gotLocalizer, list(localizerSample.shape), "the published localiser")
        saveModel(reloaded.network, card, output, localizer=reloaded.localizer)
    return card


__all__ = ["isTorchScript", "loadScripted", "checkShape", "answer", "importTorchScript"]
