"""A TorchScript model file to a ``torch.export`` archive (``.pt2``): ``medsegunet convert`` (its
command is in :mod:`exporting`) and ``models pull --format pt2`` of a published model.

torch 2.13 deprecates TorchScript (``torch.jit.script``, ``save`` and ``load`` warn "switch to
torch.export"); a ``.pt2`` file keeps a model loadable once TorchScript is gone. torch cannot
export a TorchScript module itself (its converter stops at the loops MONAI's networks script to),
so the eager network is built again from what the card records (``training.network`` for a
model ``medsegunet train`` made; ``provenance.network`` with its arguments for an import), given
the TorchScript file's weights, exported, and verified against the TorchScript network on random
inputs of three sizes before anything is written.
"""

from __future__ import annotations

from ..engine.errors import ModelImportError

# Exported and TorchScript networks run the same kernels: the bar for a conversion.
TOLERANCE = 1e-6


def eagerNetwork(card: dict, source: str):
    """The eager network a card records, without its weights.

    Raises:
        MedSegUNetError: a card that records no network that can be built again (a published
            TorchScript pipeline, such as deepbet's, exists only as TorchScript).
    """
    from . import training
    from .networks import buildNetwork

    trained = (card.get("training") or {}).get("network")
    if isinstance(trained, dict) and trained.get("type"):
        return training.buildNetwork({**card, "network": trained}).eval()
    recorded = (card.get("provenance") or {}).get("network") or {}
    if isinstance(recorded, dict) and "_target_" in recorded and "args" in recorded:
        return buildNetwork({"_target_": recorded["_target_"], "args": recorded["args"]}, f"the network recorded in '{source}'")
    if isinstance(recorded, dict) and "_target_" in recorded:
        raise ModelImportError(
            f"'{source}' records its network's class but not its arguments (imported before they were recorded): import it again, then "
            "convert it."
        )
    raise ModelImportError(
        f"'{source}' holds a network that exists only as TorchScript ({recorded.get('torchscript', 'no recorded class')}): it cannot be "
        "converted to .pt2; keep the TorchScript file."
    )


def checkSizes(card: dict) -> list[list[int]]:
    """Three input sizes ``N, C, *spatial`` for the comparison: the patch, larger by the network's
    divisor on every axis, and smaller by it (at least one divisor)."""
    from ..engine.cardview import cardView
    from ..engine.exportedmodel import exampleInput

    patch = list(exampleInput(card).shape)
    divisor = cardView(card).window.sizeDivisible
    larger = patch[:2] + [size + divisor for size in patch[2:]]
    smaller = patch[:2] + [max(divisor, size - divisor) for size in patch[2:]]
    return [patch, larger, smaller]


def convertModel(source: str, output: str) -> list[float]:
    """Convert a TorchScript model file (and its localiser) to ``.pt2`` with the same card.

    Returns:
        the largest absolute difference between the two networks at each of the three sizes.

    Raises:
        MedSegUNetError: a file that is already ``.pt2``, a card without a network to rebuild,
            weights that do not fit it, or outputs that differ by more than :data:`TOLERANCE`.
    """
    import torch

    from ..engine.exportedmodel import isExportedArchive, saveExportedModel
    from ..engine.graphsafety import loadCheckedTorchScript
    from ..engine.modelcard import readCard

    card = readCard(source)
    if isExportedArchive(source):
        raise ModelImportError(f"'{source}' is already a torch.export (.pt2) model: nothing to convert.")
    if card.get("localizer"):
        raise ModelImportError(
            f"'{source}' has a localiser network stored as TorchScript only: it cannot be converted to .pt2; keep the TorchScript file."
        )
    scripted = loadCheckedTorchScript(source, "cpu", f"Model '{source}'")
    network = eagerNetwork(card, source)
    try:
        network.load_state_dict(scripted.state_dict())
    except RuntimeError as error:
        raise ModelImportError(
            f"The weights of '{source}' do not fit the network its card records ({str(error).splitlines()[0][:140]})."
        ) from None
    generator = torch.Generator().manual_seed(1)
    samples = [torch.randn(*shape, generator=generator) for shape in checkSizes(card)]
    with torch.no_grad():
        references = [(sample, scripted(sample)) for sample in samples]
    return saveExportedModel(network, card, output, references=references, tolerance=TOLERANCE)


__all__ = ["eagerNetwork", "checkSizes", "convertModel"]
