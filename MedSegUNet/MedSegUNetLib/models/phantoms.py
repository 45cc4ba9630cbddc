"""Known-answer data for self-tests: analytic phantoms on oblique grids and threshold models.

Slicer's self-test and the pytest suite share these, so the whole geometry chain (ROI,
resampling, orientation, stitching, resampling back) is checked against an answer known in
closed form, without any trained weights.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import SimpleITK as sitk


def rotationMatrix(axis: Sequence[float], degrees: float) -> np.ndarray:
    """3×3 rotation about ``axis`` (Rodrigues), for building oblique directions."""
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis)
    angle = math.radians(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def makeGrid(size: Sequence[int], spacing: Sequence[float], direction: np.ndarray, centerLPS: Sequence[float] = (0, 0, 0)) -> sitk.Image:
    """An empty float32 image of ``size`` (i, j, k) whose centre sits at ``centerLPS``.

    Args:
        direction: 3×3 LPS direction (columns are the i, j, k axes); a negative determinant
            gives a left-handed grid.
    """
    image = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    image.SetSpacing([float(s) for s in spacing])
    direction = np.asarray(direction, dtype=float)
    image.SetDirection([float(v) for v in direction.ravel()])
    halfExtent = direction @ ((np.asarray(size) - 1) / 2.0 * np.asarray(spacing))
    image.SetOrigin([float(v) for v in np.asarray(centerLPS, dtype=float) - halfExtent])
    return image


def physicalPoints(image: sitk.Image) -> np.ndarray:
    """LPS coordinates of every voxel centre, as a K, J, I, 3 array."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(s, dtype=float) for s in reversed(size)), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return ijk * np.asarray(image.GetSpacing()) @ direction.T + np.asarray(image.GetOrigin())


def sphereMask(image: sitk.Image, centerLPS: Sequence[float], radiusMM: float) -> np.ndarray:
    """Boolean K, J, I array: voxel centres of ``image`` within ``radiusMM`` of ``centerLPS``."""
    return np.linalg.norm(physicalPoints(image) - np.asarray(centerLPS, dtype=float), axis=-1) <= radiusMM


def paintSpheres(image: sitk.Image, spheres: Sequence[tuple[Sequence[float], float, float]]) -> sitk.Image:
    """An image on ``image``'s grid with value ``v`` inside each sphere ``(centerLPS, radiusMM, v)``."""
    array = np.zeros(tuple(reversed(image.GetSize())), dtype=np.float32)
    for center, radius, value in spheres:
        array[sphereMask(image, center, radius)] = value
    painted = sitk.GetImageFromArray(array)
    painted.CopyInformation(image)
    return painted


def thresholdModule(thresholds: Sequence[float], softmax: bool = True):
    """A scripted network whose output is a threshold of its first input channel.

    Softmax: class c wins where the input exceeds ``thresholds[c-1]`` (and not the next one), so
    a phantom painted with values 1, 2, … comes back as labels 1, 2, …. Sigmoid: channel c is on
    where the input exceeds ``thresholds[c]``.
    """
    import torch

    class ThresholdUNet(torch.nn.Module):
        def __init__(self, levels: list[float], background: bool) -> None:
            super().__init__()
            self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32))
            self.background = background

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            first = x[:, :1]
            shape = [1, -1] + [1] * (x.dim() - 2)
            above = (first - self.levels.view(shape)) * 50.0
            if not self.background:
                return above
            # Logit of class c = (levels passed among 1..c) - (levels not passed among 1..c):
            # its maximum is at the highest level passed, and background (0) wins below the first.
            steps = torch.cumsum(above.clamp(min=-1.0, max=1.0), 1)
            return torch.cat([torch.zeros_like(first), steps], 1)

    return torch.jit.script(ThresholdUNet([float(t) for t in thresholds], softmax))


def thresholdCard(
    labels: Sequence[tuple[int, str, Sequence[float]]],
    spatialDims: int = 3,
    softmax: bool = True,
    spacing=None,
    orientation: str | None = None,
    patchSize=None,
    inputs: Sequence[str] = ("image",),
) -> dict:
    """A model card for :func:`thresholdModule`."""
    return {
        "schema": "medsegunet.model/1",
        "name": "Known-answer threshold model",
        "description": "Labels voxels by thresholds of the first input; for testing the geometry chain.",
        "spatial_dims": spatialDims,
        "inputs": [{"name": name} for name in inputs],
        "labels": [{"value": int(v), "name": n, "color": [float(c) for c in color]} for v, n, color in labels],
        "output": "softmax" if softmax else "sigmoid",
        "normalization": {"type": "none"},
        "spacing": list(spacing) if spacing is not None else None,
        "orientation": orientation,
        "patch_size": list(patchSize) if patchSize is not None else None,
        "overlap": 0.25,
        "sw_batch_size": 2,
        "size_divisible": 1,
    }


def writeThresholdModel(path: str | os.PathLike, thresholds: Sequence[float], card: dict) -> str:
    """Script a threshold model and save it with its card; returns the path."""
    from ..engine.modelcard import saveModel

    saveModel(thresholdModule(thresholds, softmax=card["output"] == "softmax"), card, path)
    return os.fspath(path)


__all__ = [
    "rotationMatrix",
    "makeGrid",
    "physicalPoints",
    "sphereMask",
    "paintSpheres",
    "thresholdModule",
    "thresholdCard",
    "writeThresholdModel",
]
