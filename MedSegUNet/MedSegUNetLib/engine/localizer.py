"""A card's localiser: a second network that finds the region before the main network runs.

Published pipelines such as deepbet's brain extraction first run a small network on the whole
volume at a coarse fixed grid, take the bounding box of what it marks (largest component, grown
by a fraction of its size), and run the main network on that box only. Here the localiser's box
is an oriented box in physical space (LPS mm), so it joins the ROI exactly like one more series'
extent (:func:`geometry.computeROI`): the main network sees the reference voxels inside both the
series' intersection and the localiser's box.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from . import geometry, preprocessing
from .cardview import cardView
from .errors import VolumeError
from .modelcard import LoadedModel
from .postprocessing import cleanMask


def localizerModel(loaded: LoadedModel) -> LoadedModel:
    """The localiser as a model of its own: its network with a card for the inferer (one whole-grid
    window, the localiser's output kind and channel count)."""
    card, spec = loaded.card, loaded.card.localizer
    localizerCard = {
        "name": f"{card.name} (localiser)",
        "spatial_dims": 3,
        "inputs": card["inputs"],
        "labels": [],
        "output": spec["output"],
        "activation": "softmax",
        "out_channels": int(spec["channels"]),
        "patch_size": None,
        "overlap": 0.0,
        "sw_batch_size": 1,
        "size_divisible": card.window.sizeDivisible,
    }
    return LoadedModel(path=loaded.path, card=localizerCard, network=loaded.localizer, device=loaded.device)


def localizerGrid(reference: sitk.Image, roi: geometry.RegionOfInterest, card: dict) -> sitk.Image:
    """The localiser's grid: its ``grid.shape`` over the ROI's voxel-edge box, in its orientation
    (the card's when the localiser names none)."""
    card = cardView(card)
    spec = card.localizer
    roiGrid = geometry.cropToROI(preprocessing.emptyLike(reference), roi)
    return preprocessing.modelGrid(roiGrid, None, spec.get("orientation") or card.grid.orientation, spec["grid"]["shape"])


def findRegion(
    loaded: LoadedModel,
    images: Sequence[sitk.Image],
    roi: geometry.RegionOfInterest,
    progressCallback=None,
    cancelEvent=None,
    volumeStatistics: dict | None = None,
) -> geometry.VolumeGeometry:
    """Run the localiser over the ROI and return its box as a one-voxel "volume" whose extent is the box.

    Args:
        loaded: a model whose card has ``localizer`` (its network in ``loaded.localizer``).
        images: the model's inputs in card order (LPS).
        roi: the series' ROI on ``images[0]``; the localiser sees all of it.
        volumeStatistics: kept for the model grid's normalisation of the same images
            (:func:`preprocessing.normalize`).

    Returns:
        the box (LPS mm) for :func:`geometry.computeROI`.

    Raises:
        MedSegUNetError: the localiser marks nothing, or answers other than its card says.
    """
    from .inference import predictProbabilities

    spec = loaded.card.localizer
    grid = localizerGrid(images[0], roi, loaded.card)
    array = preprocessing.prepareInputs(
        images, grid, spec["normalization"], "zero", spec["grid"].get("interpolation", "linear"), volumeStatistics
    )
    probabilities = predictProbabilities(localizerModel(loaded), array, progressCallback, cancelEvent)
    # I, J, K on the localiser grid.
    mask = probabilities[int(spec["channel"])] >= float(spec["threshold"])
    if spec["largest_component"] and mask.any():
        mask = largestComponent(mask)
    bounds = geometry.boundingBox(mask)
    if bounds is None:
        raise VolumeError(
            f"The localiser of '{loaded.card.name}' found no region in the input: check that the volume is what the model expects "
            f"({', '.join(loaded.card.inputNames)}), or run without the model's localiser by choosing another model."
        )
    return boxGeometry(grid, *bounds, float(spec["margin_fraction"]), f"{loaded.card.name} localiser box")


def largestComponent(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a bool array (full connectivity, as the labels' post-processing)."""
    return cleanMask(mask, largest=True)


def boxGeometry(grid: sitk.Image, low: np.ndarray, high: np.ndarray, marginFraction: float, name: str) -> geometry.VolumeGeometry:
    """The voxel-edge box of grid indices ``low``–``high`` (inclusive, i, j, k), grown by
    ``marginFraction`` of its size on each side, as a one-voxel volume (LPS mm)."""
    size = (np.asarray(high, dtype=float) - np.asarray(low, dtype=float) + 1.0) * (1.0 + 2.0 * marginFraction)
    boxToGrid = np.eye(4)
    boxToGrid[:3, :3] = np.diag(size)
    boxToGrid[:3, 3] = (np.asarray(low, dtype=float) + np.asarray(high, dtype=float)) / 2.0
    return geometry.VolumeGeometry(ijkToLPS=geometry.ijkToLPSFromImage(grid) @ boxToGrid, size=(1, 1, 1), name=name)


__all__ = ["localizerModel", "localizerGrid", "findRegion", "largestComponent", "boxGeometry"]
