"""``medsegunet import NNUNET_RESULTS_FOLDER``: an nnU-Net v2 results folder as one model file.

The folder is read safely (:mod:`nnunetfolder`); the chosen folds' networks are traced together at
the plans' patch size into one TorchScript module that answers every fold's logits, stacked first
(``F, N, heads, *patch``), checked against the eager networks and saved with a schema-4 card whose
``nnunet`` object holds the whole prediction pipeline (:mod:`engine.nnunet`): the file runs as
``nnUNetv2_predict`` runs the folder.
"""

from __future__ import annotations

import hashlib
import os

from ..engine.cardview import ModelCard
from ..engine.errors import ModelImportError
from .nnunetfolder import NNUNetFolder, buildNetwork, predictionPlan, readCheckpoints, readFolder
from .verification import ImportStage, compareOutputs, reportStep

# Distinct colours for labels nnU-Net does not colour (RGB in 0..1), in label order.
PALETTE = [
    (0.90, 0.30, 0.25),
    (0.25, 0.60, 0.90),
    (0.95, 0.75, 0.20),
    (0.35, 0.75, 0.40),
    (0.65, 0.40, 0.80),
    (0.95, 0.55, 0.75),
    (0.40, 0.80, 0.80),
    (0.60, 0.45, 0.30),
]


def labelsOfFolder(folder: NNUNetFolder) -> tuple[list[dict], str]:
    """The card's labels and output: softmax labels by value, or regions painted in ``regions_class_order``."""
    entries = [(str(name), value) for name, value in folder.dataset["labels"].items() if value != 0 and name != "background"]
    regions = folder.dataset.get("regions_class_order")
    if regions is not None:
        if len(regions) != len(entries):
            raise ModelImportError(
                f"dataset.json has {len(entries)} regions but {len(regions)} regions_class_order entries: fix dataset.json."
            )
        values = [int(value) for value in regions]
    else:
        values = [int(value) for _, value in entries]
        if sorted(values) != list(range(1, len(values) + 1)):
            raise ModelImportError(f"dataset.json's labels {values} are not 1 to {len(values)}, as nnU-Net requires: fix dataset.json.")
    labels = [
        {"value": value, "name": name, "color": list(PALETTE[index % len(PALETTE)])}
        for index, ((name, _), value) in enumerate(zip(entries, values))
    ]
    return labels, ("sigmoid" if regions is not None else "softmax")


class _Folds:
    """Built lazily (torch is imported on first use): every fold's logits, stacked first."""

    @staticmethod
    def module(networks):
        import torch

        class StackedFolds(torch.nn.Module):
            def __init__(self, folds):
                super().__init__()
                self.folds = torch.nn.ModuleList(folds)

            def forward(self, x):
                return torch.stack([fold(x) for fold in self.folds])

        return StackedFolds(networks).eval()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _sha256(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _cardOf(folder: NNUNetFolder, plan, folds: int, tta: bool, checkpoint: str, recordedSource: str, verified: dict) -> dict:
    """The schema-4 card of an imported folder (its pipeline, labels and provenance)."""
    source = folder.path
    labels, output_kind = labelsOfFolder(folder)
    # nnUNetv2_predict does not apply the cross-validation's post-processing either (a separate command
    # does, from a pickle this import never opens): said, so that nobody expects it.
    notes = [
        f"{name} was not applied (nnUNetv2_predict does not apply it either; nnUNetv2_apply_postprocessing does)"
        for name in ("postprocessing.json", "postprocessing.pkl")
        if os.path.isfile(os.path.join(source, name)) or os.path.isfile(os.path.join(os.path.dirname(os.path.normpath(source)), name))
    ]
    plans = folder.plans
    card = {
        "schema": "medsegunet.model/4",
        "name": f"{plans.get('dataset_name', 'nnU-Net')} {folder.configuration}",
        "description": f"nnU-Net v2 {folder.trainer} ({plans.get('plans_name', 'plans')}, {folder.configuration}), folds "
        f"{', '.join(folder.folds)}{'' if tta else ', no mirroring'}; imported from the results folder.",
        "spatial_dims": len(plan.patchSize),
        "inputs": [{"name": name} for name in folder.channelNames],
        "labels": labels,
        "output": output_kind,
        "normalization": {"type": "none"},
        "patch_size": list(plan.patchSize),
        "nnunet": plan.toJSON(folds),
        "provenance": {
            "format": "nnunet",
            "source": recordedSource,
            "source_sha256": _sha256(folder.checkpoints),
            "tool": "medsegunet import",
            "notes": notes,
            "nnunet": {
                "dataset": plans.get("dataset_name"),
                "plans": plans.get("plans_name"),
                "configuration": folder.configuration,
                "trainer": folder.trainer,
                "folds": list(folder.folds),
                "checkpoint": checkpoint,
                "network": folder.architecture["network_class_name"],
                "dynamic_network_architectures": _version("dynamic_network_architectures"),
            },
            "verified": verified,
        },
    }
    return card


def importNNUNet(
    source: str,
    output: str,
    configuration: str | None = None,
    folds: list[str] | None = None,
    checkpoint: str = "final",
    tta: bool = True,
    origin: str | None = None,
    progress=None,
    format: str = "torchscript",
) -> ModelCard:
    """Convert and verify an nnU-Net v2 results folder; returns the card written.

    Args:
        source: the folder holding ``dataset.json``, ``plans.json`` and ``fold_N/``.
        output: the model file to write: TorchScript (``.pt``) or, with ``format="pt2"``, a
            ``torch.export`` archive (``.pt2``) of the same stacked folds.
        configuration, folds, checkpoint: as :func:`nnunetfolder.readFolder`.
        tta: average the flips of the mirror axes the checkpoints allow (``nnUNetv2_predict``'s default).
        origin: what the card records as the source instead of the folder's path.
        progress: told each :class:`verification.ImportStage`.

    Raises:
        ModelImportError: anything :mod:`nnunetfolder` refuses, or a traced network that answers otherwise.
    """
    import torch

    from ..engine.modelcard import saveModel, validateCard

    reportStep(progress, ImportStage.READING, "the nnU-Net results folder")
    folder, states = readCheckpoints(readFolder(source, configuration, folds, checkpoint))
    plan = predictionPlan(folder, mirroring=tta)
    reportStep(progress, ImportStage.BUILDING, f"{len(states)} fold(s) of {folder.architecture['network_class_name'].split('.')[-1]}")
    networks = [buildNetwork(folder, state) for state in states]
    stacked = _Folds.module(networks)
    sample = torch.randn(1, len(folder.channelNames), *plan.patchSize, generator=torch.Generator().manual_seed(0))
    reportStep(progress, ImportStage.VERIFYING, f"the eager networks on a {tuple(plan.patchSize)} patch")
    with torch.inference_mode():
        expected = stacked(sample)
    written = _convert(stacked, sample, format)
    with torch.inference_mode():
        verified = compareOutputs(expected.numpy(), written(sample).numpy(), list(plan.patchSize), "the eager networks")
    card = _cardOf(folder, plan, len(states), tta, checkpoint, origin or os.path.abspath(source), verified)
    card = validateCard(card, "the imported nnU-Net card")
    reportStep(progress, ImportStage.WRITING, os.path.basename(output))
    # A .pt2 archive is exported again from the eager folds by saveModel, which checks what it wrote.
    saveModel(stacked if format == "pt2" else written, card, output, format=format)
    return card


def _convert(stacked, sample, format: str):
    """The stacked folds traced to TorchScript, or exported with ``torch.export`` (``pt2``): what is checked."""
    import torch

    try:
        if format == "pt2":
            from ..engine.exportedmodel import exportNetwork

            return exportNetwork(stacked, sample).module()
        return torch.jit.trace(stacked, sample, check_trace=False)
    except Exception as error:  # tracing and exporting fail in many ways
        raise ModelImportError(f"The folds' networks cannot be converted ({str(error).splitlines()[0][:140]}).") from None


__all__ = ["PALETTE", "importNNUNet", "labelsOfFolder"]
