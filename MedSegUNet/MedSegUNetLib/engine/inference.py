"""Running a TorchScript U-Net over a whole array with MONAI's inferers.

3D models use MONAI's ``SlidingWindowInferer`` with Gaussian blending; 2D models use
``SliceInferer`` along the last axis (K), slices batched. The network is wrapped so that every
batch checks the cancel event, reports progress, runs under mixed precision on CUDA and checks
the network's answer. Windows are blended as probabilities (softmax or sigmoid per window, the
default) or, for ``"blend": "logits"`` cards, as logits that are optionally smoothed (MONAI's Gaussian
filter with replicated edges, ``postprocessing.logit_smoothing_sigma``) and activated after blending.
``"tta": "flips"`` averages the inference over every flip of the model's axes.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any, Callable, Sequence

import numpy as np

from .cardview import cardView
from .errors import (
    MEMORY_REMEDY,
    MedSegUNetError,
    ModelFileError,
    OutOfMemoryError,
    ProcessingCancelled,
    VolumeError,
    firstLine,
    outOfMemory,
)
from .modelcard import LoadedModel, outputChannels
from .request import ProgressCallback


def _roundUp(values: Sequence[int], multiple: int) -> list[int]:
    return [max(multiple, int(math.ceil(v / multiple)) * multiple) for v in values]


def windowSize(card: dict, spatialShape: Sequence[int]) -> list[int]:
    """The sliding-window (3D) or in-plane (2D) patch for an array of ``spatialShape`` (I, J, K).

    A card without ``patch_size`` runs the whole ROI in one window, padded to a multiple of
    ``size_divisible`` (16 by default) so that a U-Net's poolings line up.
    """
    window = cardView(card).window
    if window.patchSize:
        return list(window.patchSize)
    return _roundUp(list(spatialShape)[: cardView(card).spatialDims], window.sizeDivisible)


def _windowCount(shape: Sequence[int], window: Sequence[int], overlap: float) -> int:
    count = 1
    for size, roi in zip(shape, window):
        interval = max(int(roi * (1 - overlap)), 1)
        count *= 1 if size <= roi else int(math.ceil((size - roi) / interval)) + 1
    return count


# A U-Net holds at least this many float32 feature values per input voxel of a window while it
# runs (the first level's features and their skip copy); used only as a lower bound, so that a card
# is refused before allocating only when it cannot fit whatever the network.
MIN_FEATURES_PER_VOXEL = 16


def isOutOfMemory(error: BaseException) -> bool:
    """Whether a torch or NumPy error is an allocation failure (CPU or GPU)."""
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def estimateMemory(card: dict, spatialShape: Sequence[int], window: Sequence[int]) -> dict[str, int]:
    """Bytes a run needs at least, before anything is allocated.

    Args:
        spatialShape: the model grid's I, J, K.
        window: the sliding-window patch (3D) or in-plane patch (2D).

    Returns:
        {"input", "output", "network", "total"} in bytes: the float32 input array, the blended
        output and its weight map (MONAI's inferer keeps both), and a lower bound of the network's
        activations for one batch of windows (:data:`MIN_FEATURES_PER_VOXEL`).
    """
    voxels = int(np.prod([int(v) for v in spatialShape], dtype=np.int64))
    card = cardView(card)
    channelsIn = len(card.inputs)
    channelsOut = outputChannels(card)
    windowVoxels = int(np.prod([int(v) for v in window], dtype=np.int64))
    batch = card.window.batchSize
    figures = {
        "input": 4 * channelsIn * voxels,
        "output": 4 * (channelsOut + 1) * voxels,
        "network": 4 * batch * windowVoxels * max(MIN_FEATURES_PER_VOXEL, channelsIn + channelsOut),
    }
    figures["total"] = sum(figures.values())
    return figures


def availableMemory(device) -> int | None:
    """Free bytes on the device (GPU) or available RAM (CPU, Linux); None when unknown."""
    try:
        if getattr(device, "type", str(device)) == "cuda":
            import torch

            return int(torch.cuda.mem_get_info(device)[0])
        if getattr(device, "type", str(device)) == "cpu" and hasattr(os, "sysconf"):
            with open("/proc/meminfo", encoding="ascii") as stream:
                for line in stream:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
    except (OSError, ValueError, RuntimeError):
        return None
    return None


def checkMemory(card: dict, spatialShape: Sequence[int], window: Sequence[int], device) -> None:
    """Refuse a run that cannot fit in memory, with the figure and what to change.

    Raises:
        MedSegUNetError: the lower-bound estimate exceeds the device's free memory.
    """
    available = availableMemory(device)
    if available is None:
        return
    card = cardView(card)
    figures = estimateMemory(card, spatialShape, window)
    if figures["total"] > available:
        gib = 1024**3
        raise OutOfMemoryError(
            f"Model '{card.name}' needs at least {figures['total'] / gib:.1f} GiB on {device} for this ROI "
            f"(input {figures['input'] / gib:.1f}, output {figures['output'] / gib:.1f}, network ≥ {figures['network'] / gib:.1f} GiB for "
            f"{card.window.batchSize} window(s) of {list(window)}) but {available / gib:.1f} GiB are free",
            MEMORY_REMEDY,
        )


def activate(logits, card: dict):
    """Softmax over the channels, or a sigmoid per channel, as the card's output says; an output the
    network already activated (``probabilities``) is returned as it is."""
    import torch

    output = cardView(card).output
    if output == "probabilities":
        return logits
    return torch.softmax(logits, dim=1) if output == "softmax" else torch.sigmoid(logits)


# How far outside 0–1 an activated output may stray (float16 rounding on CUDA) before it is refused.
PROBABILITY_TOLERANCE = 1e-3


def flipCombinations(spatialDims: int) -> list[tuple[int, ...]]:
    """Every combination of flips of the model's spatial axes (tensor dims 2…), identity first."""
    import itertools

    axes = list(range(2, 2 + spatialDims))
    return [combo for count in range(len(axes) + 1) for combo in itertools.combinations(axes, count)]


class _Predictor:
    """The network as MONAI's inferers call it: one batch of windows in, probabilities out.

    The network's answer is checked on every batch: a tensor of floating type, shape ``N, C`` of
    the card, then the window's spatial shape, and finite values.
    """

    def __init__(self, loaded: LoadedModel, batches: int, progressCallback, cancelEvent) -> None:
        self.loaded = loaded
        self.batches = max(batches, 1)
        self.done = 0
        self.progressCallback = progressCallback
        self.cancelEvent = cancelEvent
        self.expectedChannels = outputChannels(loaded.card)

    def _fail(self, what: str, advice: str) -> MedSegUNetError:
        return ModelFileError(f"Model '{self.loaded.card.name}' ({os.path.basename(self.loaded.path)}) {what}: {advice}.")

    def check(self, batch, logits):
        """The network's output as a tensor, or a one-line error saying how it differs from the card."""
        import torch

        if isinstance(logits, (tuple, list)) and logits:
            logits = logits[0]
        if not isinstance(logits, torch.Tensor):
            raise self._fail(
                f"returned {type(logits).__name__} instead of a tensor", "export it so that forward() returns the logits tensor"
            )
        if not logits.is_floating_point():
            raise self._fail(
                f"returned {str(logits.dtype).replace('torch.', '')} values instead of floating-point logits", "return logits, not labels"
            )
        card = self.loaded.card
        expected = (int(batch.shape[0]), self.expectedChannels, *[int(v) for v in batch.shape[2:]])
        if tuple(int(v) for v in logits.shape) != expected:
            detail = f"{card.output}, {len(card.labels)} labels"
            raise self._fail(
                f"returned shape {tuple(int(v) for v in logits.shape)} for input {tuple(int(v) for v in batch.shape)} where the card needs "
                f"{expected} ({detail})",
                "fix the card's labels, output or patch_size to match the network",
            )
        # One pass for both checks: NaN propagates into the extremes, infinities are extremes.
        low, high = (float(value) for value in torch.aminmax(logits.float()))
        if not (math.isfinite(low) and math.isfinite(high)):
            raise self._fail("returned NaN or infinite values", "check the model's weights and the card's normalization")
        if card.output == "probabilities":
            if low < -PROBABILITY_TOLERANCE or high > 1 + PROBABILITY_TOLERANCE:
                raise self._fail(
                    f"returned values from {low:.3g} to {high:.3g} where the card says probabilities (0 to 1)",
                    "set the card's output to softmax or sigmoid (the network returns logits)",
                )
        return logits

    def __call__(self, batch):
        import torch

        if self.cancelEvent is not None and self.cancelEvent.is_set():
            raise ProcessingCancelled()
        device = self.loaded.device

        def forward():
            # Grad mode and autocast are per thread: set again where the network runs.
            with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=device.type == "cuda"):
                return self.loaded.network(batch)

        try:
            logits = callInterruptibly(forward)
        except (RuntimeError, MemoryError) as error:  # torch.jit.Error is a RuntimeError
            if isOutOfMemory(error):
                raise outOfMemory(f"on {device} while running the network") from None
            raise self._fail(
                f"failed on an input of shape {tuple(int(v) for v in batch.shape)} ({firstLine(error)[:140]})",
                "check that the card's inputs, patch_size and spatial_dims are what the network takes",
            ) from None
        logits = self.check(batch, logits).float()
        self.done += 1
        if self.progressCallback is not None:
            self.progressCallback(min(self.done / self.batches, 1.0), f"Inference: batch {self.done} of {self.batches}")
        # Blended as the card says: probabilities (activated per window) or logits (activated after).
        return logits if self.loaded.card.window.blend == "logits" else activate(logits, self.loaded.card)


# Set when a network call was left running on its thread: the process must then end without the
# interpreter's shutdown, whose C++ destructors abort (SIGABRT) while torch still computes on it.
ABANDONED_CALLS = threading.Event()


def callInterruptibly(function: Callable[[], Any]) -> Any:
    """``function()`` on a thread of its own while the main thread waits, so that Ctrl-C or SIGTERM
    ends the run at once instead of when a long network call returns (Python runs signal handlers
    in the main thread only, between bytecodes, and a network call is one long C++ call).

    On an interruption the call is abandoned (a daemon thread: the process exits without it) and
    the handler's exception goes on from here. Off the main thread (a batch worker, the Slicer
    worker, Ray), no signal reaches the caller and the call runs where it is: those are stopped by
    ending their process.

    Returns:
        what ``function`` returns; what it raises is raised here.
    """
    if threading.current_thread() is not threading.main_thread():
        return function()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            _markCallBegun()
            outcome["value"] = function()
        except BaseException as error:  # handed over to the waiting thread, whatever it is
            outcome["error"] = error

    thread = threading.Thread(target=run, name="medsegunet-network", daemon=True)
    thread.start()
    try:
        thread.join()  # a lock wait: interrupted by a signal whose handler raises (POSIX)
    except BaseException:
        # Not thread.is_alive(): an interrupted join marks the thread stopped though it runs on.
        if not outcome:
            ABANDONED_CALLS.set()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _markCallBegun() -> None:
    # A test hook (settings.TEST_NETWORK_BEGUN): a network call about to begin on its own thread leaves
    # ``<pid>-network`` there, so that a test can signal the process during that call instead of
    # guessing the moment with a clock (the batch's cases leave ``<pid>-<case>`` the same way).
    from . import settings

    folder = settings.TEST_NETWORK_BEGUN.text()
    if folder and os.path.isdir(folder):
        open(os.path.join(folder, f"{os.getpid()}-network"), "w").close()


def wholeArrayInferer(window: Sequence[int]):
    """An inferer for a window that covers the whole array: zero-padded symmetrically up to the
    window (as MONAI's ``sliding_window_inference`` pads), one call, cropped back.

    Args:
        window: the window's spatial shape (I, J, K), at least the array's.
    """

    def infer(tensor, network):
        import torch.nn.functional as functional

        spatial = [int(v) for v in tensor.shape[2:]]
        before = [(target - size) // 2 for size, target in zip(spatial, window)]
        pads = []
        for size, target, low in reversed(list(zip(spatial, window, before))):
            pads += [low, target - size - low]
        output = network(functional.pad(tensor, pads) if any(pads) else tensor)
        return output[(slice(None), slice(None), *[slice(low, low + size) for low, size in zip(before, spatial)])]

    return infer


def smoothLogits(logits, sigma: float):
    """Gaussian smoothing of blended logits (``N, C`` + spatial; σ in voxels, truncated at 4σ) with
    MONAI's separable filter, the edges replicated: a zero-padded border (MONAI's
    ``GaussianSmooth``) is a logit of 0, probability 0.5, which pulls the background up at the
    grid's faces; SciPy's ``gaussian_filter(mode="nearest")``, as TAPS smooths, replicates them."""
    import torch
    from monai.networks.layers.simplelayers import gaussian_1d, separable_filtering

    kernel = gaussian_1d(torch.tensor(float(sigma)), truncated=4.0, approx="erf").to(logits)
    # Summing to one, as SciPy's truncated kernel does (MONAI's keeps the tails' 1e-4 out).
    kernel = kernel / kernel.sum()
    return separable_filtering(logits, [kernel] * (logits.ndim - 2), mode="replicate")


def usesMONAI(card: dict) -> bool:
    """Whether running this card imports MONAI: its slice or sliding-window inferer, logit
    smoothing, or a per-slice z-score (whole-array windows and the other steps need none of it)."""
    from .modelcard import normalizationSteps

    card = cardView(card)
    smoothing = card.postprocessing.get("logit_smoothing_sigma")
    return bool(
        card.spatialDims == 2
        or card.window.patchSize
        or smoothing
        or any(step.get("type") == "zscore_slice" for step in normalizationSteps(card))
    )


def chooseInferer(card: dict, spatial: Sequence[int], window: Sequence[int], batchSize: int):
    """MONAI's slice (2D) or sliding-window (3D) inferer for the card, or one whole-array call.

    Returns:
        (number of windows, the inferer: ``inferer(tensor, predictor)``).
    """
    card = cardView(card)
    overlap = card.window.overlap
    if card.spatialDims == 2:
        from monai.inferers import SliceInferer

        if min(spatial[:2]) == 1 and spatial[2] > 1:
            raise VolumeError(
                f"2D model '{card.name}' runs on slices along K, but this volume has one voxel along "
                f"{'IJ'[list(spatial).index(1)]} (shape {tuple(spatial)}): re-orient it (card 'orientation') or use a 3D model."
            )
        return spatial[2], SliceInferer(
            roi_size=window, sw_batch_size=batchSize, spatial_dim=2, overlap=overlap, mode="gaussian", progress=False
        )
    if not card.window.patchSize:
        # One window covers the whole array (a whole-ROI or fixed-grid card): MONAI's inferer would
        # weight it by a Gaussian and divide that out again; the network is called once instead.
        return 1, wholeArrayInferer(window)
    from monai.inferers import SlidingWindowInferer

    inferer = SlidingWindowInferer(roi_size=window, sw_batch_size=batchSize, overlap=overlap, mode="gaussian", progress=False)
    return _windowCount(spatial, window, overlap), inferer


def predictProbabilities(
    loaded: LoadedModel, array: np.ndarray, progressCallback: ProgressCallback | None = None, cancelEvent: threading.Event | None = None
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
        MedSegUNetError: wrong channel count, a 2D model on a volume whose slices lie along I or J,
            a run that cannot fit in memory, a network that fails or answers other than its card
            says (dtype, shape, non-finite values), or an out-of-memory error.
        ProcessingCancelled: the cancel event was set.
    """
    import torch

    card = loaded.card
    channels, *spatial = array.shape
    if channels != len(card.inputs):
        raise VolumeError(f"Model '{card.name}' takes {len(card.inputs)} input(s) ({', '.join(card.inputNames)}) but got {channels}.")
    window = windowSize(card, spatial)
    batchSize = card.window.batchSize
    windows, inferer = chooseInferer(card, spatial, window, batchSize)
    checkMemory(card, spatial, window, loaded.device)
    # Test-time augmentation: the same inference on every flip of the model's axes, flipped back
    # and averaged (in the space the card blends in). 2D models flip in-plane only.
    flips = flipCombinations(card.spatialDims) if card.window.tta == "flips" else [()]
    predictor = _Predictor(loaded, int(math.ceil(windows / batchSize)) * len(flips), progressCallback, cancelEvent)
    try:
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None].to(loaded.device)
        total = None
        with torch.inference_mode():
            for axes in flips:
                output = inferer(torch.flip(tensor, axes) if axes else tensor, predictor)
                if isinstance(output, (tuple, list)):
                    output = output[0]
                output = torch.flip(output, axes) if axes else output
                total = output if total is None else total.add_(output)
            blended = total / len(flips) if len(flips) > 1 else total
            if card.window.blend == "logits":
                sigma = float(card.postprocessing.get("logit_smoothing_sigma") or 0.0)
                if sigma > 0:
                    blended = smoothLogits(blended, sigma)
                blended = activate(blended, card)
        return blended[0].float().cpu().numpy()
    except (RuntimeError, MemoryError) as error:
        if isOutOfMemory(error):
            raise outOfMemory(f"on {loaded.device} while running the network") from None
        raise


__all__ = [
    "windowSize",
    "isOutOfMemory",
    "estimateMemory",
    "availableMemory",
    "checkMemory",
    "activate",
    "flipCombinations",
    "ABANDONED_CALLS",
    "callInterruptibly",
    "wholeArrayInferer",
    "smoothLogits",
    "usesMONAI",
    "chooseInferer",
    "predictProbabilities",
]
