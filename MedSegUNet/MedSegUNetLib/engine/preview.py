"""The pictures of a result: the overview (``segment --preview``, the demo's overview), axial slices
through the labels around the ROI and the other series with the ROI box cut through them; and the
QC tile of a cohort's montage (``batch``), drawn without a plotting library.

Images are SimpleITK (LPS); label masks are bool K, J, I arrays on the reference grid. matplotlib is
imported when a picture is drawn.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .cardview import cardView


def boxOnSlice(cornersRAS: np.ndarray, image: sitk.Image, k: float) -> np.ndarray:
    """Where an oriented box cuts the plane ``index k`` of a series, as a polygon in (i, j) index units.

    Args:
        cornersRAS: the 8 corners of the box (``RegionOfInterest.cornersRAS``, RAS mm, in
            ``itertools.product`` order over the three axes).
        image: the series (LPS); its continuous index space is where the cut is computed.
        k: the slice index.

    Returns:
        M×2 (i, j) vertices in order around the polygon (empty when the plane misses the box).
    """
    from .geometry import LPS_TO_RAS, ijkToLPSFromImage

    rasToIJK = np.linalg.inv(LPS_TO_RAS @ ijkToLPSFromImage(image))
    corners = (rasToIJK @ np.c_[cornersRAS, np.ones(8)].T).T[:, :3]
    points = []
    for a in range(8):
        for b in range(a + 1, 8):
            if bin(a ^ b).count("1") != 1:
                continue  # only the 12 edges: corners differing along one box axis
            ka, kb = corners[a, 2] - k, corners[b, 2] - k
            if ka == kb:
                continue
            t = ka / (ka - kb)
            if 0.0 <= t <= 1.0:
                points.append(corners[a, :2] + t * (corners[b, :2] - corners[a, :2]))
    if len(points) < 3:
        return np.zeros((0, 2))
    points = np.asarray(points)
    centre = points.mean(axis=0)
    order = np.argsort(np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0]))
    return points[order]


def _drawLabels(axis, masks: Sequence[np.ndarray], card: dict, aspect: float) -> None:
    """One slice's labels (``masks``: one bool J, I array per card label). Exclusive (softmax)
    labels are filled; regions that may overlap (sigmoid: tumour core inside whole tumour) are drawn
    as outlines, so an inner region never hides an outer one."""
    if not masks:
        return
    if cardView(card).output == "sigmoid":
        for mask, label in zip(masks, card["labels"]):
            if mask.any():
                axis.contour(mask.astype(np.float32), levels=[0.5], colors=[tuple(label["color"])], linewidths=1.5)
        return
    rgba = np.zeros((*masks[0].shape, 4))
    for mask, label in zip(masks, card["labels"]):
        rgba[mask] = [*label["color"], 0.45]
    axis.imshow(rgba, aspect=aspect)


def shownSlices(masks: Sequence[np.ndarray], roi, count: int = 6) -> list[int]:
    """Up to ``count`` axial slices (K indices of the reference) through the labels, spread evenly
    over the slices where they are largest (at least a tenth of their largest area: a stray voxel
    far away does not take a tile); the ROI's own slices when nothing was found.

    Args:
        masks: bool KJI arrays on the reference grid, one per label.
    """
    low, high = int(roi.ijkMin[2]), int(roi.ijkMax[2])
    areas = sum(np.asarray(mask[low : high + 1]).sum(axis=(1, 2)) for mask in masks) if masks else np.zeros(high - low + 1)
    withLabels = [low + int(k) for k in np.flatnonzero(areas >= max(1, 0.1 * areas.max()))] if areas.any() else list(range(low, high + 1))
    return sorted({withLabels[int(round(i))] for i in np.linspace(0, len(withLabels) - 1, min(count, len(withLabels)))})


def overviewCrop(roi, size: Sequence[int], fraction: float = 0.2, least: int = 8) -> tuple[slice, slice]:
    """The in-plane window of the axial tiles: the ROI grown by ``fraction`` of its size per side (at
    least ``least`` voxels), inside the image, so a structure clipped by the ROI shows as clipped.

    Args:
        size: the reference's size in I, J, K order.

    Returns:
        (J slice, I slice) of the reference's K, J, I array.
    """
    ranges = []
    for axis in (1, 0):
        low, high = int(roi.ijkMin[axis]), int(roi.ijkMax[axis])
        margin = max(least, int(round(fraction * (high - low + 1))))
        ranges.append(slice(max(0, low - margin), min(int(size[axis]), high + margin + 1)))
    return ranges[0], ranges[1]


THUMBNAIL_INCHES = 3.4
OVERVIEW_DPI = 100


def _drawSeriesPanel(axis, name: str, volume: sitk.Image, reference: sitk.Image, masks, card: dict, corners) -> None:
    """The middle slice of another series with the labels (KJI masks on the reference grid)
    resampled onto that one slice and the ROI box's cut (``corners``: RAS) through its plane."""
    from matplotlib.patches import Polygon

    from . import preprocessing

    k = volume.GetSize()[2] // 2
    array = sitk.GetArrayViewFromImage(volume)[k]
    # Each label is resampled onto the one slice shown, not onto the whole series.
    shownSlice = volume[:, :, k : k + 1]
    onVolume = []
    for mask in masks:
        maskImage = sitk.GetImageFromArray(mask.astype(np.uint8))
        maskImage.CopyInformation(reference)
        onVolume.append(
            sitk.GetArrayFromImage(preprocessing.resampleOnto(maskImage, shownSlice, sitk.sitkNearestNeighbor, sitk.sitkUInt8))[0] > 0
        )
    s = volume.GetSpacing()
    lo, hi = np.percentile(array, [1, 99.5])
    axis.imshow(array, cmap="gray", vmin=lo, vmax=hi, aspect=s[1] / s[0])
    _drawLabels(axis, onVolume, card, s[1] / s[0])
    polygon = boxOnSlice(corners, volume, k)
    if len(polygon):
        axis.add_patch(Polygon(polygon, closed=True, fill=False, edgecolor="yellow", linewidth=1.5))
    axis.set_title(f"{name} k={k}: ROI box (yellow)", fontsize=9)
    axis.axis("off")


def writeOverview(
    reference: sitk.Image,
    labelmap: sitk.Image,
    roi,
    others: dict[str, sitk.Image],
    card: dict,
    path: str,
    case: str,
    masks: Sequence[np.ndarray] | None = None,
) -> None:
    """PNG: up to 6 axial slices through the labels, each a little wider than the ROI (dashed: its
    edge), and the sagittal and coronal middle slices with the ROI box (its cut through each slice
    plane) and the labels resampled onto them.

    Args:
        masks: one bool KJI mask per card label on the reference grid (``result.masks()``: sigmoid
            regions may overlap); default: the label map's values.

    ``path`` is written as given (callers stage it with the run's other outputs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .pipeline import labelMasks

    masks = list(masks) if masks is not None else labelMasks(labelmap, card["labels"])
    shown = shownSlices(masks, roi)
    rows_, columns_ = overviewCrop(roi, reference.GetSize())
    image = sitk.GetArrayViewFromImage(reference)
    columns = max(len(shown), 2)
    # Thumbnails of 3.4 in at 100 dpi (over 256 px); the row of other series only when there are any.
    rows = [THUMBNAIL_INCHES] + ([4.6] if others else [])
    figure = plt.figure(figsize=(THUMBNAIL_INCHES * columns, sum(rows) + 0.8))
    grid = figure.add_gridspec(
        len(rows), columns, height_ratios=rows, wspace=0.04, hspace=0.12, left=0.01, right=0.99, top=0.93, bottom=0.06
    )
    spacing = reference.GetSpacing()
    aspect = spacing[1] / spacing[0]
    low, high = np.percentile(image[int(roi.ijkMin[2]) : int(roi.ijkMax[2]) + 1, rows_, columns_], [1, 99.5])
    for column, k in enumerate(shown):
        axis = figure.add_subplot(grid[0, column])
        axis.imshow(image[k, rows_, columns_], cmap="gray", vmin=low, vmax=high, aspect=aspect)
        _drawLabels(axis, [mask[k, rows_, columns_] for mask in masks], card, aspect)
        edge = (roi.ijkMin[0] - columns_.start - 0.5, roi.ijkMin[1] - rows_.start - 0.5)
        axis.add_patch(
            Rectangle(
                edge,
                roi.ijkMax[0] - roi.ijkMin[0] + 1,
                roi.ijkMax[1] - roi.ijkMin[1] + 1,
                fill=False,
                edgecolor="yellow",
                linestyle="--",
                linewidth=1.0,
            )
        )
        axis.set_title(f"axial k={k}", fontsize=8)
        axis.axis("off")
    corners = roi.cornersRAS()
    half = columns // 2
    for index, (name, volume) in enumerate(list(others.items())[:2]):
        axis = figure.add_subplot(grid[1, index * half : (index + 1) * half] if columns >= 2 else grid[1, index])
        # The two panels meet in the middle: no empty band between them.
        axis.set_anchor("E" if index == 0 else "W")
        _drawSeriesPanel(axis, name, volume, reference, masks, card, corners)
    handles = [plt.Rectangle((0, 0), 1, 1, color=label["color"]) for label in card["labels"]]
    figure.legend(handles, [label["name"] for label in card["labels"]], loc="lower center", ncol=len(handles), fontsize=9)
    figure.suptitle(f"{case}: {cardView(card).name} (dashed: the ROI's edge)", fontsize=10)
    try:
        figure.savefig(path, dpi=OVERVIEW_DPI, format="png")
    finally:
        plt.close(figure)


# Tiles of 256 px (readable at 100 %), 10 × 10 per montage page.
QC_TILE = 256


def qcTile(reference: sitk.Image, labelmap: sitk.Image, roi, card: dict, regions=None) -> np.ndarray:
    """The ROI's slice (along K) where the labels are largest (the mid-ROI slice when there are
    none), with the labels, as a QC_TILE² RGB uint8 tile, physical aspect kept.

    Args:
        reference: the reference volume (KJI arrays, LPS).
        labelmap: the result on the reference grid.
        regions: sigmoid regions (bool KJI per label), which may overlap: drawn as outlines, so an
            inner region is never hidden under an outer one.
    """
    from scipy import ndimage

    from .pipeline import labelMasks

    rows = slice(int(roi.ijkMin[1]), int(roi.ijkMax[1]) + 1)
    columns = slice(int(roi.ijkMin[0]), int(roi.ijkMax[0]) + 1)
    depth = slice(int(roi.ijkMin[2]), int(roi.ijkMax[2]) + 1)
    masks = [np.asarray(mask)[depth, rows, columns] for mask in labelMasks(labelmap, card["labels"], regions)]
    areas = sum(mask.sum(axis=(1, 2)) for mask in masks) if masks else np.zeros(0)
    k = int(np.argmax(areas)) if len(areas) and areas.max() > 0 else (depth.stop - depth.start - 1) // 2
    image = sitk.GetArrayViewFromImage(reference)[depth.start + k, rows, columns].astype(np.float32)
    low, high = np.percentile(image, [1, 99.5]) if image.size else (0.0, 1.0)
    gray = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for mask, label in zip(masks, card["labels"]):
        mask = mask[k]
        if regions is not None:
            mask = mask & ~ndimage.binary_erosion(mask)
            rgb[mask] = np.asarray(label["color"], dtype=np.float32)
        else:
            rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.asarray(label["color"], dtype=np.float32)
    spacing = reference.GetSpacing()
    heightMM, widthMM = rgb.shape[0] * spacing[1], rgb.shape[1] * spacing[0]
    scale = QC_TILE / max(heightMM, widthMM, 1e-6)
    height, width = max(1, int(round(heightMM * scale))), max(1, int(round(widthMM * scale)))
    rowIndex = np.minimum((np.arange(height) / height * rgb.shape[0]).astype(int), rgb.shape[0] - 1)
    columnIndex = np.minimum((np.arange(width) / width * rgb.shape[1]).astype(int), rgb.shape[1] - 1)
    tile = np.zeros((QC_TILE, QC_TILE, 3), dtype=np.float32)
    top, left = (QC_TILE - height) // 2, (QC_TILE - width) // 2
    tile[top : top + height, left : left + width] = rgb[rowIndex][:, columnIndex]
    return (tile * 255).astype(np.uint8)


def tileImage(tile: np.ndarray) -> sitk.Image:
    """A QC tile (rows, columns, RGB uint8) as a 2D RGB image, for SimpleITK's PNG writer: a worker
    needs no plotting library (matplotlib takes 0.6 s to import, before its first case)."""
    return sitk.GetImageFromArray(np.ascontiguousarray(tile, dtype=np.uint8), isVector=True)


__all__ = ["writeOverview", "boxOnSlice", "shownSlices", "overviewCrop", "qcTile", "tileImage", "QC_TILE"]
