"""From scanner volumes to the network's array and back: grids, resampling, normalisation.

Grids are ``SimpleITK.Image`` geometries in LPS mm. The *ROI grid* is the reference volume cropped
to the ROI; the *model grid* is the ROI grid re-oriented (``sitk.DICOMOrient``, the closest
orientation to the card's code, as MONAI's ``Orientation`` does) and re-sampled to the card's
spacing while keeping the ROI's voxel-edge box. Arrays handed to the network are float32 in
``C, I, J, K`` order (MONAI's layout); SimpleITK arrays are ``K, J, I``.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from . import geometry
from .errors import CardError, GeometryError
from .modelcard import MAX_GRID_VOXELS, normalizationSteps


def emptyLike(grid: sitk.Image, pixelType: int = sitk.sitkUInt8) -> sitk.Image:
    """A zero image with the geometry of ``grid``."""
    image = sitk.Image(grid.GetSize(), pixelType)
    image.CopyInformation(grid)
    return image


def sameGrid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-5) -> bool:
    """Whether two images sample the same voxel centres."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def modelGrid(
    roiGrid: sitk.Image, spacing: Sequence[float | None] | None, orientation: str | None, shape: Sequence[int] | None = None
) -> sitk.Image:
    """The grid the network sees: its voxel-edge box is exactly the ROI grid's.

    With a spacing, each axis gets ``n = max(round(extent / spacing), 1)`` voxels and the spacing is
    then adjusted to ``extent / n`` (at most half a voxel's worth from the card's over the extent),
    so that no part of the ROI is left outside the model grid and none is added (the same grid in
    training and inference). With a shape (a card's ``grid``), each axis gets that many voxels over
    the same box, as a published pipeline that resizes its crop to a fixed array does.

    Args:
        roiGrid: the reference cropped to the ROI (only its geometry is used).
        spacing: target mm along the model array's i, j, k (after re-orientation); None entries
            keep the ROI grid's spacing on that axis.
        orientation: a code such as ``"RAS"`` (axis directions, as MONAI and ``sitk.DICOMOrient``
            use them) or None to keep the reference's axes.
        shape: voxels along the model array's i, j, k (after re-orientation), instead of a spacing.

    Returns:
        an empty uint8 image with the model grid's geometry.
    """
    grid = emptyLike(roiGrid)
    if orientation:
        grid = sitk.DICOMOrient(grid, orientation.upper())
    if not spacing and shape is None:
        return grid
    oldSpacing = np.asarray(grid.GetSpacing())
    oldSize = np.asarray(grid.GetSize())
    extent = oldSize * oldSpacing
    if shape is not None:
        newSize = np.asarray([int(n) for n in shape])
        wanted = extent / newSize
    else:
        wanted = np.array([old if new is None else float(new) for old, new in zip(oldSpacing, spacing)])
        newSize = np.maximum(np.round(extent / wanted), 1).astype(int)
    voxels = int(np.prod(newSize.astype(np.int64)))
    if voxels > MAX_GRID_VOXELS:
        raise GeometryError(
            f"The model grid would have {voxels:,} voxels ({' × '.join(str(int(n)) for n in newSize)} at "
            f"{' × '.join(f'{v:g}' for v in wanted)} mm), above the budget of {MAX_GRID_VOXELS:,}: "
            "use a model with a coarser spacing, or a smaller ROI."
        )
    newSpacing = extent / newSize
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    # Keep the voxel-edge box: the first edge stays put, the first centre moves by half a voxel.
    firstEdge = np.asarray(grid.GetOrigin()) - direction @ (0.5 * oldSpacing)
    origin = firstEdge + direction @ (0.5 * newSpacing)
    resampled = sitk.Image([int(s) for s in newSize], sitk.sitkUInt8)
    resampled.SetSpacing([float(s) for s in newSpacing])
    resampled.SetDirection(grid.GetDirection())
    resampled.SetOrigin([float(v) for v in origin])
    return resampled


def resampleOnto(
    image: sitk.Image, grid: sitk.Image, interpolator: int = sitk.sitkLinear, pixelType: int = sitk.sitkFloat32, defaultValue: float = 0.0
) -> sitk.Image:
    """Resample ``image`` in physical space onto ``grid`` (never by voxel count).

    A grid identical to the image's returns a cast copy without interpolation.
    """
    if sameGrid(image, grid):
        # Within the tolerance the voxels are the same; the copy takes the target's geometry, so
        # that ITK filters combining it with the grid's images (which check the physical space to
        # 1e-6) accept it, e.g. a float32 NIfTI header micrometres off the reference.
        same = sitk.Cast(image, pixelType) if image.GetPixelID() != pixelType else image
        exact = (
            same.GetOrigin() == grid.GetOrigin() and same.GetSpacing() == grid.GetSpacing() and same.GetDirection() == grid.GetDirection()
        )
        if not exact:
            # A copy (changing the geometry of a shared SimpleITK image copies its voxels anyway).
            same = sitk.Image(same)
            same.CopyInformation(grid)
        return same
    return sitk.Resample(image, grid, sitk.Transform(), interpolator, defaultValue, pixelType)


def permutedGrid(grid: sitk.Image, order: Sequence[int]) -> sitk.Image:
    """The voxels of ``grid`` with its axes listed in ``order`` (axis n is ``grid``'s axis ``order[n]``).

    The same voxel centres in physical space; only the order SimpleITK stores them in changes (the
    first voxel, the origin, stays put).

    Returns:
        an empty uint8 image (only its geometry is used).
    """
    order = [int(axis) for axis in order]
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    permuted = sitk.Image([grid.GetSize()[axis] for axis in order], sitk.sitkUInt8)
    permuted.SetSpacing([grid.GetSpacing()[axis] for axis in order])
    permuted.SetDirection([float(v) for v in direction[:, order].ravel()])
    permuted.SetOrigin(grid.GetOrigin())
    return permuted


def ijkOrderedGrid(grid: sitk.Image) -> sitk.Image:
    """The voxels of ``grid`` with its axes listed in reverse (SimpleITK's x is the grid's K).

    SimpleITK's K, J, I array of an image on this grid is ``grid``'s I, J, K array, contiguous: a
    physical-space resampling onto it writes the network's layout directly, without the transposed
    copy of a whole model grid (the slowest step of preparing a 256³ grid).
    """
    return permutedGrid(grid, (2, 1, 0))


def parallelAxes(grid: sitk.Image, other: sitk.Image) -> list[int] | None:
    """For each axis of ``other``, the axis of ``grid`` along (or against) it; None unless the two
    grids' axes are parallel up to order and sign (a model grid re-oriented from ``grid``'s axes is)."""
    dot = np.abs(np.asarray(other.GetDirection()).reshape(3, 3).T @ np.asarray(grid.GetDirection()).reshape(3, 3))
    order = [int(axis) for axis in np.argmax(dot, axis=1)]
    parallel = sorted(order) == [0, 1, 2] and np.allclose(dot[range(3), order], 1.0, atol=1e-6)
    return order if parallel else None


def permutedToKJI(array: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """A K, J, I view of a grid's voxels stored by :func:`permutedGrid` (``grid``, ``order``); the
    last three axes are moved, any leading ones kept."""
    lead = array.ndim - 3
    return array.transpose(*range(lead), *[lead + 2 - list(order).index(2 - axis) for axis in range(3)])


def resampleToIJK(
    image: sitk.Image,
    grid: sitk.Image,
    interpolator: int = sitk.sitkLinear,
    pixelType: int = sitk.sitkFloat32,
    defaultValue: float = 0.0,
    extrapolate: bool = False,
) -> np.ndarray:
    """``image`` resampled in physical space onto ``grid``, as ``grid``'s contiguous I, J, K array.

    Args:
        image: any grid (LPS).
        grid: the target grid (only its geometry is used).
        extrapolate: voxels outside ``image`` take its nearest voxel instead of ``defaultValue``.

    Returns:
        a writable I, J, K array of ``pixelType``, its own voxels (over the resampled image's
        memory, which it holds: no copy of a 64 MB grid).
    """
    if sameGrid(image, grid):
        # Nothing to interpolate (an interpolator would blur exact voxel centres by rounding).
        return np.array(imageToIJK(resampleOnto(image, grid, interpolator, pixelType, defaultValue)), order="C")
    resampled = sitk.Resample(image, ijkOrderedGrid(grid), sitk.Transform(), interpolator, defaultValue, pixelType, extrapolate)
    return np.asarray(_ImageBuffer(resampled, writable=True))


class _ImageBuffer:
    """Exposes an image's voxels to NumPy while holding the image, so views cannot outlive it.

    ``writable`` only for an image nobody else holds (a filter's fresh output): SimpleITK images
    share their voxels on copy until changed through SimpleITK, which NumPy writes bypass.
    """

    def __init__(self, image: sitk.Image, writable: bool = False) -> None:
        self.image = image
        self.view = sitk.GetArrayViewFromImage(image)
        interface = dict(self.view.__array_interface__)
        if writable:
            interface["data"] = (interface["data"][0], False)
        self.__array_interface__ = interface


def imageToIJK(image: sitk.Image) -> np.ndarray:
    """A read-only view of the image's voxels as an I, J, K array (SimpleITK gives K, J, I).

    ``sitk.GetArrayViewFromImage`` alone does not keep the image alive, so a view of a temporary
    image (``imageToIJK(resampleOnto(...))``) would read freed memory; the array returned here
    references the image for as long as it lives.
    """
    return np.asarray(_ImageBuffer(image)).transpose(2, 1, 0)


def ijkToImage(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """An image on ``grid`` from an I, J, K array."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.CopyInformation(grid)
    return image


def normalize(
    array: np.ndarray,
    normalization: dict | list,
    volumes: Sequence[np.ndarray] | None = None,
    inPlace: bool = False,
    volumeStatistics: dict | None = None,
) -> np.ndarray:
    """Normalise a ``C, I, J, K`` float32 array as the card says: one step or a list run in order.

    - ``zscore``: per channel, over non-zero voxels when ``nonzero`` (seed 000's standardisation).
    - ``zscore_slice``: per channel and per slice along K, as seed 000's ``standardize``.
    - ``percentile``: ``lower``–``upper`` percentiles (default 5–95, seed 002) to ``b_min``–``b_max``;
      with ``nonzero``, the percentiles of the non-zero voxels.
    - ``minmax``: per channel to ``b_min``–``b_max`` (default 0–1).
    - ``affine``: ``value × scale + shift`` (default 1 and 0).

    Each step's statistics come from the array itself (``"statistics": "roi"``, the default: the
    network's input grid) or from the whole input volume of the channel (``"volume"``, as a
    published pipeline that takes its percentiles before cropping does); the volumes then go through
    the same steps, so a later step's volume statistics see what the network's array sees.

    Args:
        array: float32 ``C, I, J, K`` on the model grid.
        normalization: a card's ``normalization`` (a step or a list of steps).
        volumes: per channel, the whole input volume's voxels (any layout); needed only when a
            step takes ``"volume"`` statistics.
        inPlace: normalise ``array`` itself (a writable float32 array the caller gives up)
            instead of a copy.
        volumeStatistics: a dict kept by the caller across calls on the same ``volumes`` (a
            localiser's grid and then the model grid of one case): each step's volume statistics
            are taken once.

    Returns:
        a float32 ``C, I, J, K`` array.
    """
    steps = normalizationSteps({"normalization": normalization})
    # At most one copy, then every step in place (a 256³ grid is 64 MB a channel).
    if not (inPlace and isinstance(array, np.ndarray) and array.dtype == np.float32 and array.flags.writeable):
        array = np.array(array, dtype=np.float32)
    needVolume = [any(later.get("statistics") == "volume" for later in steps[index:]) for index in range(len(steps))]
    if needVolume[0] and (volumes is None or len(volumes) != len(array)):
        raise CardError("The card's normalisation takes statistics over the whole input volume but no volume was given.")
    # The volumes' own voxels (any dtype) until a step transforms them for a later step's statistics.
    volumes = [np.asarray(v).ravel() for v in volumes] if needVolume[0] else [None] * len(array)
    memo = volumeStatistics if volumeStatistics is not None else {}
    for index, step in enumerate(steps):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # what overflows is refused below, in one line
            array = _normalizationStep(array, step, index, steps, volumes, memo, needVolume)
        checkFinite(array, step, index)
    return np.ascontiguousarray(array, dtype=np.float32)


def checkFinite(array: np.ndarray, step: dict, index: int) -> None:
    """Refuse a normalised array holding an infinity or NaN, naming the step that made it.

    One float64 sum: finite exactly when every value is (float32's largest values summed over any
    grid stay far below float64's range), without a boolean copy of the grid.

    Raises:
        MedSegUNetError: naming the step (1-based) and its type.
    """
    if not math.isfinite(float(np.sum(array, dtype=np.float64))):
        raise CardError(
            f"The card's normalisation step {index + 1} ({step.get('type', 'none')}) gives values beyond float32's range (or not numbers): "
            "check its scale, shift or b_min/b_max; the network is not run."
        )


def _normalizationStep(array, step: dict, index: int, steps: list, volumes: list, memo: dict, needVolume: list) -> np.ndarray:
    """One step of :func:`normalize` over every channel (and, for a later step's statistics, the volumes, in place)."""
    if step.get("type") == "zscore_slice":
        return zscoreSlices(array, step.get("nonzero", False))
    parameters = []
    for number, (volume, channel) in enumerate(zip(volumes, array)):
        if step.get("statistics") != "volume":
            parameters.append(stepParameters(step, channel))
            continue
        key = (number, json.dumps(steps[: index + 1], sort_keys=True))
        if key not in memo:
            memo[key] = stepParameters(step, volume)
        parameters.append(memo[key])
    for channel, values in zip(array, parameters):
        applyStep(channel, step, values, inPlace=True)
    if index + 1 < len(steps) and needVolume[index + 1]:
        volumes[:] = [applyStep(volume, step, values) for volume, values in zip(volumes, parameters)]
    return array


def stepParameters(step: dict, values: np.ndarray) -> tuple[float, float]:
    """A step's two parameters from one channel's voxels: (mean, std) for zscore, (low, high) for
    percentile and minmax; (0, 1) for steps without statistics."""
    kind = step.get("type", "none")
    if kind == "zscore":
        return meanAndStd(values, step.get("nonzero", True)) or (0.0, 1.0)
    if kind == "percentile":
        values = np.asarray(values).ravel()
        if step.get("nonzero", False):
            # Zeros are a skull-stripped volume's outside: its percentiles are the brain's alone.
            values = values[values != 0]
        if values.size == 0:
            return 0.0, 0.0
        low, high = np.percentile(values, [step.get("lower", 5.0), step.get("upper", 95.0)])
        return float(low), float(high)
    if kind == "minmax":
        return float(values.min()), float(values.max())
    return 0.0, 1.0


_CHUNK = 1 << 18


def meanAndStd(values: np.ndarray, nonzero: bool = False) -> tuple[float, float] | None:
    """Mean and population standard deviation (NumPy's ``std``) of an array's values, or of its
    non-zero values; None when there are none.

    In float64, two passes over chunks small enough to stay in the CPU's cache: NumPy's ``std``
    of a 256³ float32 grid builds a 64 MB temporary and takes three times as long.
    """
    flat = np.asarray(values).ravel()
    chunks = [flat[start : start + _CHUNK] for start in range(0, flat.size, _CHUNK)]

    def selected(chunk: np.ndarray) -> np.ndarray:
        chunk = chunk.astype(np.float64)
        return chunk[chunk != 0] if nonzero else chunk

    count, total = 0, 0.0
    for chunk in chunks:
        part = selected(chunk)
        count, total = count + part.size, total + float(part.sum())
    if count == 0:
        return None
    mean, squares = total / count, 0.0
    for chunk in chunks:
        part = selected(chunk) - mean
        squares += float(np.dot(part, part))
    return mean, math.sqrt(squares / count)


def applyStep(values: np.ndarray, step: dict, parameters: tuple[float, float], inPlace: bool = False) -> np.ndarray:
    """One step with statistics already taken (:func:`stepParameters`): the linear map MONAI's
    ``NormalizeIntensity`` / ``ScaleIntensityRange`` apply with given parameters (a whole-volume
    pipeline needs no MONAI import for it), on a float32 copy or, ``inPlace``, on ``values``
    itself (a float32 array)."""
    kind = step.get("type", "none")
    first, second = parameters
    out = values if inPlace else np.array(values, dtype=np.float32)
    if kind == "zscore":
        # A constant channel keeps its offset removed and is not divided (MONAI's rule for std 0).
        scale, offset = 1.0 / (second if second > 0 else 1.0), -first / (second if second > 0 else 1.0)
        if step.get("nonzero", True):
            chosen = out != 0
            np.multiply(out, np.float32(scale), out=out, where=chosen)
            np.add(out, np.float32(offset), out=out, where=chosen)
            return out
    elif kind in ("percentile", "minmax"):
        low, high = float(step.get("b_min", 0.0)), float(step.get("b_max", 1.0))
        scale = (high - low) / (second - first) if second > first else 0.0
        offset = low - first * scale
        out *= np.float32(scale)
        out += np.float32(offset)
        if kind == "percentile" and step.get("clip", True):
            np.clip(out, min(low, high), max(low, high), out=out)
        return out
    elif kind == "affine":
        scale, offset = float(step.get("scale", 1.0)), float(step.get("shift", 0.0))
    elif kind == "none":
        return out
    else:
        raise CardError(f"Unknown normalisation '{kind}': use zscore, zscore_slice, percentile, minmax, affine or none.")
    out *= np.float32(scale)
    out += np.float32(offset)
    return out


def zscoreSlices(array: np.ndarray, nonzero: bool = False) -> np.ndarray:
    """``zscore_slice``: z-score per channel and per slice along K (seed 000's ``standardize``), with
    MONAI's ``NormalizeIntensity``; the one step whose statistics are not one pair per channel.

    Args:
        array: float32 ``C, I, J, K``.

    Returns:
        a float32 ``C, I, J, K`` array.
    """
    from monai.transforms import NormalizeIntensity

    channels, i, j, k = array.shape
    # Slices become channels so MONAI's channel-wise statistics are per channel and per slice.
    perSlice = np.asarray(array, dtype=np.float32).transpose(0, 3, 1, 2).reshape(channels * k, i, j)
    normalized = NormalizeIntensity(nonzero=nonzero, channel_wise=True)(perSlice)
    return np.ascontiguousarray(np.asarray(normalized, dtype=np.float32).reshape(channels, k, i, j).transpose(0, 2, 3, 1))


def gridInside(grid: sitk.Image, image: sitk.Image, tolerance: float = 1e-6) -> bool:
    """Whether every voxel centre of ``grid`` lies strictly inside ``image``'s extent (so no model
    voxel needs padding): its 8 corner centres do, the extent being convex."""
    size = np.asarray(grid.GetSize())
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in size])), dtype=float)
    gridToLPS = geometry.ijkToLPSFromImage(grid)
    lpsToImage = np.linalg.inv(geometry.ijkToLPSFromImage(image))
    indices = (lpsToImage @ gridToLPS @ np.c_[corners, np.ones(len(corners))].T).T[:, :3]
    return bool(np.all(indices > -0.5 + tolerance) and np.all(indices < np.asarray(image.GetSize()) - 0.5 - tolerance))


INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


def prepareInputs(
    images: Sequence[sitk.Image],
    grid: sitk.Image,
    normalization: dict | list,
    padding: str = "zero",
    interpolation: str = "linear",
    volumeStatistics: dict | None = None,
) -> np.ndarray:
    """Resample every input onto the model grid and normalise.

    Args:
        images: the model's inputs in card order, each on its own grid (LPS).
        grid: the model grid.
        normalization: a card's normalisation (a step or a list of steps); ``"volume"``
            statistics are taken over each whole input image.
        padding: model-grid voxels outside an input's extent: ``"zero"``, 0 after normalisation
            (what a network trained on zero-padded crops saw), or ``"edge"``, the nearest voxel of
            the input (extrapolated before normalisation).
        interpolation: ``"linear"`` or ``"nearest"`` (a card grid's ``interpolation``).
        volumeStatistics: shared by the calls on the same ``images`` (:func:`normalize`).

    Returns:
        a float32 ``C, I, J, K`` array.
    """
    interpolator = INTERPOLATORS[interpolation]
    if len(images) == 1:
        # The usual card: normalised where it was resampled, without a copy.
        channels = resampleToIJK(images[0], grid, interpolator, extrapolate=padding == "edge")[None]
    else:
        channels = np.empty((len(images), *grid.GetSize()), dtype=np.float32)
        for channel, image in enumerate(images):
            channels[channel] = resampleToIJK(image, grid, interpolator, extrapolate=padding == "edge")
    outside = []
    for channel, image in enumerate(images):
        if padding == "edge" or sameGrid(image, grid) or gridInside(grid, image):
            outside.append(None)
            continue
        ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(image)
        outside.append(resampleToIJK(ones, grid, sitk.sitkNearestNeighbor, sitk.sitkUInt8) == 0)
    wholeVolumes = None
    if any(step.get("statistics") == "volume" for step in normalizationSteps({"normalization": normalization})):
        wholeVolumes = [sitk.GetArrayViewFromImage(image) for image in images]
    normalized = normalize(channels, normalization, wholeVolumes, inPlace=True, volumeStatistics=volumeStatistics)
    for channel, mask in enumerate(outside):
        if mask is not None and mask.any():
            normalized[channel][mask] = 0.0
    return normalized


__all__ = [
    "emptyLike",
    "sameGrid",
    "modelGrid",
    "resampleOnto",
    "permutedGrid",
    "ijkOrderedGrid",
    "parallelAxes",
    "permutedToKJI",
    "resampleToIJK",
    "imageToIJK",
    "ijkToImage",
    "normalize",
    "checkFinite",
    "stepParameters",
    "meanAndStd",
    "applyStep",
    "zscoreSlices",
    "gridInside",
    "prepareInputs",
]
