"""nnU-Net v2's prediction of one case, step for step as nnunetv2 2.8.1 does it (issue 37).

nnU-Net works in the array space of the image as SimpleITK reads it and never re-orients: the
input is ``C, K, J, I`` (a 3D image's ``sitk.GetArrayFromImage`` per channel), permuted by the
plans' ``transpose_forward``; every shape, spacing and patch size here is in that permuted array
order, and the labels come back as ``K, J, I`` on the input's own grid (its geometry is the input's).

The steps (``nnunetv2``'s modules in brackets):

1. crop to the bounding box of the filled non-zero mask of all channels (``cropping``);
2. normalise each channel by its scheme (``default_normalization_schemes``), before resampling;
3. resample to the target spacing with ``skimage.transform.resize(order=3, mode="edge",
   anti_aliasing=False)``, done here by SciPy's ``zoom`` on the same grid, and, when the spacing is
   anisotropic (ratio > 3), in-plane slice by slice and then along the low-resolution axis with
   ``map_coordinates(order=0)`` (``default_resampling``);
4. pad to the patch (constant 0, centred), tile with steps ``round(i · (L − P) / (n − 1))``, weight by
   a Gaussian of σ = patch / 8 (maximum 10, zeros replaced by its minimum), average the flips of the
   allowed mirror axes and then the folds, as logits, in half precision as nnU-Net accumulates them
   (``sliding_window_prediction``, ``predict_from_raw_data``);
5. resample the logits back to the cropped shape (order 1, order 0 along the low-resolution axis),
   take the labels (argmax, or regions in ``regions_class_order``) and put them back into the full
   grid (``export_prediction``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

ANISO_THRESHOLD = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD


@dataclass(frozen=True)
class ChannelNormalization:
    """One channel's normalisation, as the plans name it.

    Args:
        scheme: ``ZScoreNormalization``, ``CTNormalization``, ``NoNormalization``, ``RescaleTo01Normalization``
            or ``RGBTo01Normalization``.
        useMask: z-score over the non-zero mask only, 0 outside it (``use_mask_for_norm``).
        mean, std, lower, upper: the dataset's foreground statistics (CT: clip to ``lower``/``upper``, the
            0.5 and 99.5 percentiles, then ``(x − mean) / std``).
    """

    scheme: str
    useMask: bool = False
    mean: float = 0.0
    std: float = 1.0
    lower: float = 0.0
    upper: float = 0.0


@dataclass(frozen=True)
class NNUNetPlan:
    """What one configuration of an nnU-Net plan decides at prediction time (permuted array order).

    Args:
        patchSize: the window (2 values for a 2D configuration, run slice by slice along the first axis).
        spacing: the target spacing in mm (2 values for 2D: the first axis keeps the image's).
        transposeForward: the axis permutation applied to ``K, J, I`` first.
        normalization: one per input channel.
        dataOrder, dataOrderZ: spline orders for the images (in-plane, low-resolution axis).
        probabilitiesOrder, probabilitiesOrderZ: the same for the logits on the way back.
        forceSeparateZ: the plans' ``force_separate_z`` (None: decided by the anisotropy).
        mirrorAxes: the spatial axes of the patch whose flips are averaged (empty: no mirroring).
        stepSize: the tile step as a fraction of the patch (``nnUNetv2_predict -step_size``, 0.5).
        regionsClassOrder: region-based models: the label each sigmoid region writes, in order; None: softmax.
    """

    patchSize: tuple[int, ...]
    spacing: tuple[float, ...]
    transposeForward: tuple[int, ...]
    normalization: tuple[ChannelNormalization, ...]
    dataOrder: int = 3
    dataOrderZ: int = 0
    probabilitiesOrder: int = 1
    probabilitiesOrderZ: int = 0
    forceSeparateZ: bool | None = None
    mirrorAxes: tuple[int, ...] = ()
    stepSize: float = 0.5
    regionsClassOrder: tuple[int, ...] | None = None

    def toJSON(self, folds: int) -> dict:
        """The card's ``nnunet`` object (schema 4) for a network that answers ``folds`` folds."""
        return {
            "patch_size": list(self.patchSize),
            "spacing": list(self.spacing),
            "transpose_forward": list(self.transposeForward),
            "normalization": [
                {"scheme": n.scheme, "use_mask": n.useMask, "mean": n.mean, "std": n.std, "lower": n.lower, "upper": n.upper}
                for n in self.normalization
            ],
            "data_order": self.dataOrder,
            "data_order_z": self.dataOrderZ,
            "probabilities_order": self.probabilitiesOrder,
            "probabilities_order_z": self.probabilitiesOrderZ,
            "force_separate_z": self.forceSeparateZ,
            "mirror_axes": list(self.mirrorAxes),
            "step_size": self.stepSize,
            "regions_class_order": list(self.regionsClassOrder) if self.regionsClassOrder is not None else None,
            "folds": int(folds),
        }

    @classmethod
    def fromJSON(cls, spec) -> NNUNetPlan:
        """From the card's ``nnunet`` object (validated by the schema)."""
        regions = spec.get("regions_class_order")
        return cls(
            patchSize=tuple(int(v) for v in spec["patch_size"]),
            spacing=tuple(float(v) for v in spec["spacing"]),
            transposeForward=tuple(int(v) for v in spec["transpose_forward"]),
            normalization=tuple(
                ChannelNormalization(
                    n["scheme"],
                    bool(n.get("use_mask", False)),
                    float(n.get("mean", 0.0)),
                    float(n.get("std", 1.0)),
                    float(n.get("lower", 0.0)),
                    float(n.get("upper", 0.0)),
                )
                for n in spec["normalization"]
            ),
            dataOrder=int(spec.get("data_order", 3)),
            dataOrderZ=int(spec.get("data_order_z", 0)),
            probabilitiesOrder=int(spec.get("probabilities_order", 1)),
            probabilitiesOrderZ=int(spec.get("probabilities_order_z", 0)),
            forceSeparateZ=spec.get("force_separate_z"),
            mirrorAxes=tuple(int(v) for v in spec.get("mirror_axes") or ()),
            stepSize=float(spec.get("step_size", 0.5)),
            regionsClassOrder=tuple(int(v) for v in regions) if regions is not None else None,
        )


def cropToNonzero(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """The box of the filled non-zero mask of all channels.

    Args:
        data: ``C, *spatial``.

    Returns:
        the cropped data, the mask inside the box (``*spatial``) and the box as slices (half-open).
    """
    from scipy.ndimage import binary_fill_holes

    mask = binary_fill_holes(np.any(data != 0, axis=0))
    if not mask.any():
        box = tuple(slice(0, size) for size in mask.shape)
    else:
        box = tuple(
            slice(int(np.flatnonzero(mask.any(axis=other))[0]), int(np.flatnonzero(mask.any(axis=other))[-1]) + 1)
            for other in _others(mask.ndim)
        )
    return data[(slice(None), *box)], mask[box], box


def _others(ndim: int) -> list[tuple[int, ...]]:
    return [tuple(axis for axis in range(ndim) if axis != kept) for kept in range(ndim)]


def normalize(data: np.ndarray, mask: np.ndarray, schemes: Sequence[ChannelNormalization]) -> np.ndarray:
    """Each channel by its scheme, in float32 as nnU-Net computes it (``C, *spatial``, changed in place)."""
    data = data.astype(np.float32, copy=False)
    for channel, spec in enumerate(schemes):
        image = data[channel]
        if spec.scheme == "ZScoreNormalization":
            if spec.useMask:
                values = image[mask]
                image[mask] = (values - values.mean()) / max(values.std(), 1e-8)
            else:
                mean, std = image.mean(), image.std()
                image -= mean
                image /= max(std, 1e-8)
        elif spec.scheme == "CTNormalization":
            np.clip(image, spec.lower, spec.upper, out=image)
            image -= spec.mean
            image /= max(spec.std, 1e-8)
        elif spec.scheme == "RescaleTo01Normalization":
            image -= image.min()
            image /= np.clip(image.max(), a_min=1e-8, a_max=None)
        elif spec.scheme == "RGBTo01Normalization":
            image /= 255.0
        elif spec.scheme != "NoNormalization":
            raise ValueError(f"unknown normalisation scheme {spec.scheme!r}")
    return data


def resize(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``skimage.transform.resize(array, shape, order, mode="edge", anti_aliasing=False)``: SciPy's
    ``zoom`` on the pixel grid (``grid_mode=True``), edges repeated, clipped to the input's range."""
    from scipy import ndimage

    array = np.asarray(array, dtype=np.float64)
    factors = [new / old for new, old in zip(shape, array.shape)]
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
    if order > 0:
        np.clip(out, array.min(), array.max(), out=out)
    return out


def separateZAxis(currentSpacing: Sequence[float], newSpacing: Sequence[float], force: bool | None) -> int | None:
    """The low-resolution axis resampled on its own, or None (``determine_do_sep_z_and_axis``)."""

    def lowres(spacing):
        axes = np.where(max(spacing) / np.array(spacing) == 1)[0]
        return int(axes[0]) if len(axes) == 1 else None

    if force is not None:
        return lowres(currentSpacing) if force else None
    for spacing in (currentSpacing, newSpacing):
        if np.max(spacing) / np.min(spacing) > ANISO_THRESHOLD:
            return lowres(spacing)
    return None


def resample(data: np.ndarray, shape: Sequence[int], axis: int | None, order: int, orderZ: int) -> np.ndarray:
    """``C, *spatial`` to ``C, *shape`` (``resample_data_or_seg``); unchanged when the shape is."""
    from scipy.ndimage import map_coordinates

    shape = np.array(shape)
    if np.all(np.array(data.shape[1:]) == shape):
        return data
    # Computed in float64, stored in the input's type (float32 images, float16 logits), as nnU-Net does.
    out = np.zeros((data.shape[0], *shape), dtype=data.dtype)
    data = data.astype(float, copy=False)
    for channel in range(data.shape[0]):
        if axis is None:
            out[channel] = resize(data[channel], shape, order)
            continue
        inPlane = [size for index, size in enumerate(shape) if index != axis]
        partial = np.moveaxis(np.stack([resize(part, inPlane, order) for part in np.moveaxis(data[channel], axis, 0)]), 0, axis)
        if partial.shape[axis] == shape[axis]:
            out[channel] = partial
            continue
        grid = np.mgrid[tuple(slice(0, size) for size in shape)].astype(float)
        coordinates = np.array([(old / new) * (grid[index] + 0.5) - 0.5 for index, (old, new) in enumerate(zip(partial.shape, shape))])
        out[channel] = map_coordinates(partial, coordinates, order=orderZ, mode="nearest")
    return out


def newShape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> list[int]:
    """``compute_new_shape``: ``round(spacing / target · shape)`` per axis."""
    return [int(round(old / new * size)) for old, new, size in zip(spacing, target, shape)]


def gaussianMap(patch: Sequence[int]):
    """``compute_gaussian(patch, 1/8, value_scaling_factor=10)`` in half precision, zeros replaced by its minimum."""
    import torch
    from scipy.ndimage import gaussian_filter

    delta = np.zeros(patch)
    delta[tuple(size // 2 for size in patch)] = 1
    weights = gaussian_filter(delta, [size / 8 for size in patch], 0, mode="constant", cval=0)
    weights /= np.max(weights) / 10
    weights = torch.from_numpy(weights).to(torch.float16)
    weights[weights == 0] = torch.min(weights[weights != 0])
    return weights


def windowSteps(size: Sequence[int], patch: Sequence[int], step: float) -> list[list[int]]:
    """``compute_steps_for_sliding_window``: ``ceil((L − P) / (P · step)) + 1`` starts per axis, evenly spread."""
    steps = []
    for length, window in zip(size, patch):
        count = int(np.ceil((length - window) / (window * step))) + 1
        stride = (length - window) / (count - 1) if count > 1 else 0
        steps.append([int(np.round(stride * index)) for index in range(count)])
    return steps


def _windows(size: Sequence[int], patch: Sequence[int], step: float) -> list[tuple]:
    """Every window's slices over ``C, *size`` (a 2D patch over 3D data: each slice of the first axis)."""
    if len(patch) == len(size) - 1:
        starts = windowSteps(size[1:], patch, step)
        return [
            (slice(None), depth, *(slice(s, s + p) for s, p in zip(corner, patch)))
            for depth in range(size[0])
            for corner in itertools.product(*starts)
        ]
    return [
        (slice(None), *(slice(s, s + p) for s, p in zip(corner, patch))) for corner in itertools.product(*windowSteps(size, patch, step))
    ]


def slidingWindowLogits(
    data, network: Callable, plan: NNUNetPlan, progress: Callable | None = None, device=None, expected: tuple[int, int] | None = None
):
    """Logits over ``data`` (a ``C, *spatial`` float32 tensor), averaged over flips and folds in half precision.

    Args:
        data: the preprocessed case.
        network: ``N, C, *patch`` → ``F, N, heads, *patch``: every fold's logits, stacked first.
        plan: patch, mirror axes and step.
        progress: told ``(done, total)`` windows; it may raise to cancel.
        device: where the network runs (the sums stay on the CPU); None: the CPU.
        expected: the folds and heads the card promises; another answer stops the run.

    Returns:
        ``heads, *spatial`` logits (float16, CPU).

    Raises:
        ModelFileError: the network answers another shape, or values that are not finite.
    """
    import torch

    patch = list(plan.patchSize)
    spatial = list(data.shape[1:])
    target = spatial[: len(spatial) - len(patch)] + [max(p, s) for p, s in zip(patch, spatial[len(spatial) - len(patch) :])]
    below = [(t - s) // 2 for t, s in zip(target, spatial)]
    padded = torch.nn.functional.pad(data, [v for b, t, s in reversed(list(zip(below, target, spatial))) for v in (b, t - s - b)])
    windows = _windows(list(padded.shape[1:]), patch, plan.stepSize)
    gaussian = gaussianMap(patch)
    mirror = [axis + 2 for axis in plan.mirrorAxes]
    flips = [combination for count in range(len(mirror)) for combination in itertools.combinations(mirror, count + 1)]
    logits, n = None, torch.zeros(padded.shape[1:], dtype=torch.half)
    for done, window in enumerate(windows, start=1):
        x = padded[window][None].to(device or "cpu")
        # The window and its flips in one batch (about twice as fast on a CPU as one call each), then
        # summed in nnU-Net's order and averaged: each fold's logits as nnU-Net's per network.
        answers = network(torch.cat([x, *(torch.flip(x, axes) for axes in flips)])) if flips else network(x)
        prediction = answers[:, 0:1].clone()
        for index, axes in enumerate(flips, start=1):
            prediction += torch.flip(answers[:, index : index + 1], [axis + 1 for axis in axes])
        prediction = (prediction / (len(flips) + 1) if flips else prediction)[:, 0].float().cpu()
        _checkAnswer(prediction, patch, expected)
        if logits is None:
            logits = torch.zeros((prediction.shape[0], prediction.shape[1], *padded.shape[1:]), dtype=torch.half)
        prediction *= gaussian
        for fold in range(prediction.shape[0]):
            logits[fold][window] += prediction[fold]
        n[window[1:]] += gaussian
        if progress is not None:
            progress(done, len(windows))
    crop = (slice(None), *(slice(b, b + s) for b, s in zip(below, spatial)))
    folds = None
    for fold in range(logits.shape[0]):
        averaged = torch.div(logits[fold], n)[crop]
        folds = averaged if folds is None else folds + averaged
    if logits.shape[0] > 1:
        folds /= logits.shape[0]
    return folds


def _checkAnswer(prediction, patch: Sequence[int], expected: tuple[int, int] | None) -> None:
    """A window's logits (``F, heads, *patch``) are what the card promises, and finite."""
    import torch

    from .errors import ModelFileError

    shape = tuple(prediction.shape)
    if shape[2:] != tuple(patch) or (expected is not None and shape[:2] != tuple(expected)):
        promised = f"{expected[0]} fold(s) × {expected[1]} channels" if expected is not None else "logits"
        raise ModelFileError(
            f"The nnU-Net network answers a {list(shape)} window where its card promises {promised} of {list(patch)}: the model file "
            "and its card do not belong together; import the results folder again."
        )
    if not bool(torch.isfinite(prediction).all()):
        raise ModelFileError("The nnU-Net network answers values that are not finite (NaN or infinite): the model file is damaged.")


def stackedFolds(networks: Sequence[Callable]) -> Callable:
    """One callable answering every fold's logits, stacked first (what an imported model file holds)."""
    import torch

    return lambda x: torch.stack([network(x) for network in networks])


def labelsFromLogits(logits: np.ndarray, regionsClassOrder: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Argmax over channels (softmax models); or regions (sigmoid > 0.5) painted in
    ``regionsClassOrder``, returned too. Channels first, ``*spatial`` after."""
    if regionsClassOrder is None:
        return np.asarray(logits).argmax(0), None
    import torch

    regions = torch.sigmoid(torch.as_tensor(np.asarray(logits, dtype=np.float32))).numpy() > 0.5
    labels = np.zeros(regions.shape[1:], dtype=np.uint16)
    for channel, label in enumerate(regionsClassOrder):
        labels[regions[channel]] = label
    return labels, regions


def predictCase(
    data: np.ndarray,
    spacing: Sequence[float],
    network: Callable,
    plan: NNUNetPlan,
    progress: Callable | None = None,
    device=None,
    expected: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels for one case, as ``nnUNetv2_predict`` writes them.

    Args:
        data: ``C, K, J, I`` (each channel as ``sitk.GetArrayFromImage`` gives it).
        spacing: mm along K, J, I (SimpleITK's spacing reversed).
        network: every fold's logits, stacked first (:func:`stackedFolds` of eager networks, or the
            model file's network).
        plan: the configuration's prediction settings.
        progress: told ``(done, total)`` windows; it may raise to cancel.
        device: where the network runs.
        expected: the folds and heads the card promises (:func:`slidingWindowLogits`).

    Returns:
        ``K, J, I`` labels (uint8, or uint16 for 255 labels or more) on the input's grid, and for
        region-based models the bool ``L, K, J, I`` regions (sigmoid > 0.5; they may overlap), else None.
    """
    import torch

    forward = list(plan.transposeForward)
    data = np.asarray(data, dtype=np.float32).transpose([0, *[axis + 1 for axis in forward]])
    spacing = [float(spacing[axis]) for axis in forward]
    fullShape = data.shape[1:]
    cropped, mask, box = cropToNonzero(data)
    croppedShape = cropped.shape[1:]
    target = list(plan.spacing) if len(plan.spacing) == len(spacing) else [spacing[0], *plan.spacing]
    shape = newShape(croppedShape, spacing, target)
    normalized = normalize(np.array(cropped), mask, plan.normalization)
    axis = separateZAxis(spacing, target, plan.forceSeparateZ)
    prepared = resample(normalized, shape, axis, plan.dataOrder, plan.dataOrderZ)
    with torch.inference_mode():
        array = torch.from_numpy(np.ascontiguousarray(prepared, dtype=np.float32))
        logits = slidingWindowLogits(array, network, plan, progress, device, expected)
    axisBack = separateZAxis(target, spacing, plan.forceSeparateZ)
    logits = resample(logits.numpy(), croppedShape, axisBack, plan.probabilitiesOrder, plan.probabilitiesOrderZ)
    labels, regions = labelsFromLogits(logits, plan.regionsClassOrder)
    backward = np.argsort(forward)
    full = np.zeros(fullShape, dtype=np.uint8 if labels.max(initial=0) < 255 else np.uint16)
    full[box] = labels
    if regions is not None:
        fullRegions = np.zeros((len(regions), *fullShape), dtype=bool)
        fullRegions[(slice(None), *box)] = regions
        regions = fullRegions.transpose([0, *[axis + 1 for axis in backward]])
    return full.transpose(backward), regions


__all__ = [
    "ANISO_THRESHOLD",
    "ChannelNormalization",
    "NNUNetPlan",
    "cropToNonzero",
    "gaussianMap",
    "labelsFromLogits",
    "newShape",
    "normalize",
    "predictCase",
    "resample",
    "resize",
    "separateZAxis",
    "slidingWindowLogits",
    "stackedFolds",
    "windowSteps",
]
