"""Running a TorchScript U-Net over a whole array with MONAI's inferers.

3D models use MONAI's ``SlidingWindowInferer`` with Gaussian blending; 2D models use
``SliceInferer`` along the last axis (K), slices batched. The network is wrapped so that every
batch checks the cancel event, reports progress, runs under mixed precision on CUDA and turns
logits into probabilities (softmax or sigmoid) before they are blended.
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Sequence

import numpy as np

from .errors import MedSegUNetError, ProcessingCancelled
from .modelcard import LoadedModel, outputChannels

ProgressCallback = Callable[[float, str], None]


def _roundUp(values: Sequence[int], multiple: int) -> list[int]:
    return [max(multiple, int(math.ceil(v / multiple)) * multiple) for v in values]


def windowSize(card: dict, spatialShape: Sequence[int]) -> list[int]:
    """The sliding-window (3D) or in-plane (2D) patch for an array of ``spatialShape`` (I, J, K).

    A card without ``patch_size`` runs the whole ROI in one window, padded to a multiple of
    ``size_divisible`` (16 by default) so that a U-Net's poolings line up.
    """
    dims = card["spatial_dims"]
    patch = card.get("patch_size")
    if patch:
        return [int(p) for p in patch]
    return _roundUp(list(spatialShape)[:dims], int(card.get("size_divisible", 16)))


def _windowCount(shape: Sequence[int], window: Sequence[int], overlap: float) -> int:
    count = 1
    for size, roi in zip(shape, window):
        interval = max(int(roi * (1 - overlap)), 1)
        count *= 1 if size <= roi else int(math.ceil((size - roi) / interval)) + 1
    return count


class _Predictor:
    """The network as MONAI's inferers call it: one batch of windows in, probabilities out."""

    def __init__(self, loaded: LoadedModel, batches: int, progressCallback, cancelEvent) -> None:
        self.loaded = loaded
        self.batches = max(batches, 1)
        self.done = 0
        self.progressCallback = progressCallback
        self.cancelEvent = cancelEvent
        self.expectedChannels = outputChannels(loaded.card)

    def __call__(self, batch):
        import torch

        if self.cancelEvent is not None and self.cancelEvent.is_set():
            raise ProcessingCancelled()
        device = self.loaded.device
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            logits = self.loaded.network(batch)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        if logits.shape[1] != self.expectedChannels:
            card = self.loaded.card
            raise MedSegUNetError(
                f"Model '{card['name']}' outputs {logits.shape[1]} channels but its card needs {self.expectedChannels} "
                f"({card['output']}, {len(card['labels'])} labels): fix the card's labels or output."
            )
        logits = logits.float()
        probabilities = torch.softmax(logits, dim=1) if self.loaded.card["output"] == "softmax" else torch.sigmoid(logits)
        self.done += 1
        if self.progressCallback is not None:
            self.progressCallback(min(self.done / self.batches, 1.0), f"Inference: batch {self.done} of {self.batches}")
        return probabilities


def predictProbabilities(
    loaded: LoadedModel,
    array: np.ndarray,
    progressCallback: ProgressCallback | None = None,
    cancelEvent: threading.Event | None = None,
) -> np.ndarray:
    """Class probabilities for a normalised array.

    Args:
        loaded: the model and its card.
        array: float32 ``C, I, J, K`` (model grid, MONAI layout without the batch axis).
        progressCallback: ``(fraction, message)`` after each batch, fraction of this step only.
        cancelEvent: checked before each batch; when set, :class:`ProcessingCancelled` is raised.

    Returns:
        float32 ``C_out, I, J, K`` probabilities (softmax: background first; sigmoid: one per label).

    Raises:
        MedSegUNetError: wrong channel count, or a 2D model on a volume whose slices lie along I or J.
        ProcessingCancelled: the cancel event was set.
    """
    import torch
    from monai.inferers import SliceInferer, SlidingWindowInferer

    card = loaded.card
    channels, *spatial = array.shape
    if channels != len(card["inputs"]):
        raise MedSegUNetError(
            f"Model '{card['name']}' takes {len(card['inputs'])} input(s) ({', '.join(i['name'] for i in card['inputs'])}) but got {channels}."
        )
    window = windowSize(card, spatial)
    overlap = float(card.get("overlap", 0.25))
    batchSize = int(card.get("sw_batch_size", 4))
    if card["spatial_dims"] == 2:
        if min(spatial[:2]) == 1 and spatial[2] > 1:
            raise MedSegUNetError(
                f"2D model '{card['name']}' runs on slices along K, but this volume has one voxel along "
                f"{'IJ'[spatial.index(1)]} (shape {tuple(spatial)}): re-orient it (card 'orientation') or use a 3D model."
            )
        windows = spatial[2]
        inferer = SliceInferer(roi_size=window, sw_batch_size=batchSize, spatial_dim=2, overlap=overlap, mode="gaussian", progress=False)
    else:
        windows = _windowCount(spatial, window, overlap)
        inferer = SlidingWindowInferer(roi_size=window, sw_batch_size=batchSize, overlap=overlap, mode="gaussian", progress=False)
    predictor = _Predictor(loaded, int(math.ceil(windows / batchSize)), progressCallback, cancelEvent)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None].to(loaded.device)
    with torch.inference_mode():
        probabilities = inferer(tensor, predictor)
    if isinstance(probabilities, (tuple, list)):
        probabilities = probabilities[0]
    return probabilities[0].float().cpu().numpy()
