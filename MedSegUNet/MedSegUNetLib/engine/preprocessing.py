"""From scanner volumes to the network's array and back: grids, resampling, normalisation.

Grids are ``SimpleITK.Image`` geometries in LPS mm. The *ROI grid* is the reference volume cropped
to the ROI; the *model grid* is the ROI grid re-oriented (``sitk.DICOMOrient``, the closest
orientation to the card's code, as MONAI's ``Orientation`` does) and re-sampled to the card's
spacing while keeping the ROI's voxel-edge box. Arrays handed to the network are float32 in
``C, I, J, K`` order (MONAI's layout); SimpleITK arrays are ``K, J, I``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .errors import MedSegUNetError

# The most voxels a model grid may have (2^30: 4 GiB of float32 per channel): a card's spacing of
# micrometres on a whole pelvis would ask for 10^16.
MAX_GRID_VOXELS = 2**30


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


def modelGrid(roiGrid: sitk.Image, spacing: Sequence[float | None] | None, orientation: str | None) -> sitk.Image:
    """The grid the network sees: its voxel-edge box is exactly the ROI grid's.

    Each axis gets ``n = max(round(extent / spacing), 1)`` voxels and the spacing is then adjusted to
    ``extent / n`` (at most half a voxel's worth from the card's over the extent), so that no part of
    the ROI is left outside the model grid and none is added (the same grid in training and
    inference).

    Args:
        roiGrid: the reference cropped to the ROI (only its geometry is used).
        spacing: target mm along the model array's i, j, k (after re-orientation); None entries
            keep the ROI grid's spacing on that axis.
        orientation: a code such as ``"RAS"`` (axis directions, as MONAI and ``sitk.DICOMOrient``
            use them) or None to keep the reference's axes.

    Returns:
        an empty uint8 image with the model grid's geometry.
    """
    grid = emptyLike(roiGrid)
    if orientation:
        grid = sitk.DICOMOrient(grid, orientation.upper())
    if not spacing:
        return grid
    oldSpacing = np.asarray(grid.GetSpacing())
    oldSize = np.asarray(grid.GetSize())
    wanted = np.array([old if new is None else float(new) for old, new in zip(oldSpacing, spacing)])
    extent = oldSize * oldSpacing
    newSize = np.maximum(np.round(extent / wanted), 1).astype(int)
    voxels = int(np.prod(newSize.astype(np.int64)))
    if voxels > MAX_GRID_VOXELS:
        raise MedSegUNetError(
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
    image: sitk.Image,
    grid: sitk.Image,
    interpolator: int = sitk.sitkLinear,
    pixelType: int = sitk.sitkFloat32,
    defaultValue: float = 0.0,
) -> sitk.Image:
    """Resample ``image`` in physical space onto ``grid`` (never by voxel count).

    A grid identical to the image's returns a cast copy without interpolation.
    """
    if sameGrid(image, grid):
        # Within the tolerance the voxels are the same; the copy takes the target's geometry, so
        # that ITK filters combining it with the grid's images (which check the physical space to
        # 1e-6) accept it, e.g. a float32 NIfTI header micrometres off the reference.
        same = sitk.Cast(image, pixelType) if image.GetPixelID() != pixelType else image
        exact = same.GetOrigin() == grid.GetOrigin() and same.GetSpacing() == grid.GetSpacing() and same.GetDirection() == grid.GetDirection()
        if not exact:
            # A copy (changing the geometry of a shared SimpleITK image copies its voxels anyway).
            same = sitk.Image(same)
            same.CopyInformation(grid)
        return same
    return sitk.Resample(image, grid, sitk.Transform(), interpolator, defaultValue, pixelType)


class _ImageBuffer:
    """Exposes an image's voxels to NumPy while holding the image, so views cannot outlive it."""

    def __init__(self, image: sitk.Image) -> None:
        self.image = image
        self.view = sitk.GetArrayViewFromImage(image)
        self.__array_interface__ = self.view.__array_interface__


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


def normalize(array: np.ndarray, normalization: dict) -> np.ndarray:
    """Normalise a ``C, I, J, K`` float32 array as the card says, with MONAI's intensity transforms.

    - ``zscore``: per channel, over non-zero voxels when ``nonzero`` (seed 000's standardisation).
    - ``zscore_slice``: per channel and per slice along K, as seed 000's ``standardize``.
    - ``percentile``: ``lower``–``upper`` percentiles (default 5–95, seed 002) to ``b_min``–``b_max``.
    - ``minmax``: per channel to ``b_min``–``b_max`` (default 0–1).

    Returns:
        a float32 ``C, I, J, K`` array.
    """
    from monai.transforms import NormalizeIntensity, ScaleIntensity, ScaleIntensityRangePercentiles

    kind = normalization.get("type", "none")
    array = np.asarray(array, dtype=np.float32)
    if kind == "none":
        return array
    if kind == "zscore":
        out = NormalizeIntensity(nonzero=normalization.get("nonzero", True), channel_wise=True)(array)
    elif kind == "zscore_slice":
        channels, i, j, k = array.shape
        # Slices become channels so MONAI's channel-wise statistics are per channel and per slice.
        perSlice = array.transpose(0, 3, 1, 2).reshape(channels * k, i, j)
        normalized = NormalizeIntensity(nonzero=normalization.get("nonzero", False), channel_wise=True)(perSlice)
        out = np.asarray(normalized).reshape(channels, k, i, j).transpose(0, 2, 3, 1)
    elif kind == "percentile":
        out = ScaleIntensityRangePercentiles(
            lower=normalization.get("lower", 5.0),
            upper=normalization.get("upper", 95.0),
            b_min=normalization.get("b_min", 0.0),
            b_max=normalization.get("b_max", 1.0),
            clip=normalization.get("clip", True),
            channel_wise=True,
        )(array)
    elif kind == "minmax":
        out = ScaleIntensity(minv=normalization.get("b_min", 0.0), maxv=normalization.get("b_max", 1.0), channel_wise=True)(array)
    else:
        raise MedSegUNetError(f"Unknown normalisation '{kind}': use zscore, zscore_slice, percentile, minmax or none.")
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32))


def prepareInputs(images: Sequence[sitk.Image], grid: sitk.Image, normalization: dict, padding: str = "zero") -> np.ndarray:
    """Resample every input onto the model grid (linear) and normalise.

    Args:
        images: the model's inputs in card order, each on its own grid (LPS).
        grid: the model grid.
        padding: model-grid voxels outside an input's extent: ``"zero"``, 0 after normalisation
            (what a network trained on zero-padded crops saw), or ``"edge"``, the nearest voxel of
            the input (extrapolated before normalisation).

    Returns:
        a float32 ``C, I, J, K`` array.
    """
    channels = np.empty((len(images), *grid.GetSize()), dtype=np.float32)
    outside = []
    for channel, image in enumerate(images):
        if padding == "edge" and not sameGrid(image, grid):
            resampled = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32, True)
            channels[channel] = imageToIJK(resampled)
            outside.append(None)
            continue
        channels[channel] = imageToIJK(resampleOnto(image, grid))
        if sameGrid(image, grid):
            outside.append(None)
            continue
        ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(image)
        outside.append(imageToIJK(resampleOnto(ones, grid, sitk.sitkNearestNeighbor, sitk.sitkUInt8)) == 0)
    normalized = normalize(channels, normalization)
    for channel, mask in enumerate(outside):
        if mask is not None and mask.any():
            normalized[channel][mask] = 0.0
    return normalized
