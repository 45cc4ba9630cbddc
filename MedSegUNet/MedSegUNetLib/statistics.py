"""Segment statistics and overlap metrics, as tables for the command line and Slicer.

All quantities are computed on the reference grid (label map and reference segmentation as
``SimpleITK.Image`` in LPS; inputs resampled linearly onto that grid). Volumes use the reference
spacing; centroids are reported in Slicer's RAS mm. Column titles follow Slicer's Segment
Statistics module where the quantity is the same.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from . import preprocessing
from .errors import MedSegUNetError
from .geometry import LPS_TO_RAS, setImageGeometryFromIJKToLPS
from .volumes import pathSuffix, readVolume

INTENSITY_KEYS = (("mean", "Mean"), ("std", "Standard deviation"), ("min", "Minimum"), ("max", "Maximum"), ("median", "Median"))
OVERLAP_KEYS = (
    ("dice", "Dice"),
    ("jaccard", "Jaccard"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("specificity", "Specificity"),
    ("hausdorff95_mm", "Hausdorff 95% [mm]"),
    ("mean_surface_distance_mm", "Mean surface distance [mm]"),
)


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def segmentStatistics(labelmap: sitk.Image, labels: Sequence[dict], intensityImages: dict[str, sitk.Image] | None = None) -> list[dict]:
    """Voxel counts, volumes, centroids and intensity statistics per label.

    Args:
        labelmap: integer label map on the reference grid.
        labels: the card's labels (``value``, ``name``, ``color``).
        intensityImages: input name → volume on any grid (resampled linearly onto the label map's).

    Returns:
        one dict per label, in card order, with ``value``, ``name``, ``color``, ``voxel_count``,
        ``volume_mm3``, ``volume_cm3``, ``centroid_ras`` and ``intensity`` {name: {mean, std, min,
        max, median}}; absent labels have zero volume and null intensities.
    """
    labelmap = sitk.Cast(labelmap, sitk.sitkUInt16)
    voxelVolume = float(np.prod(labelmap.GetSpacing()))
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(labelmap)
    present = set(shape.GetLabels())
    labelArray = sitk.GetArrayViewFromImage(labelmap)
    intensities = {}
    for name, image in (intensityImages or {}).items():
        resampled = preprocessing.resampleOnto(image, labelmap, pixelType=sitk.sitkFloat64)
        stats = sitk.LabelStatisticsImageFilter()
        stats.Execute(resampled, labelmap)
        # A copy, not a view: the resampled image is released at the next loop turn.
        intensities[name] = (stats, sitk.GetArrayFromImage(resampled))
    rows = []
    for label in labels:
        value = int(label["value"])
        count = int(shape.GetNumberOfPixels(value)) if value in present else 0
        row = {
            "value": value,
            "name": label["name"],
            "color": list(label.get("color", [])),
            "voxel_count": count,
            "volume_mm3": count * voxelVolume,
            "volume_cm3": count * voxelVolume / 1000.0,
            "centroid_ras": [float(v) for v in (LPS_TO_RAS[:3, :3] @ np.asarray(shape.GetCentroid(value)))] if count else None,
            "intensity": {},
        }
        for name, (stats, array) in intensities.items():
            if count:
                row["intensity"][name] = {
                    "mean": float(stats.GetMean(value)),
                    "std": float(stats.GetSigma(value)),
                    "min": float(stats.GetMinimum(value)),
                    "max": float(stats.GetMaximum(value)),
                    # ITK's label median comes from a histogram; the exact one is cheap here.
                    "median": float(np.median(array[labelArray == value])),
                }
            else:
                row["intensity"][name] = {key: None for key, _ in INTENSITY_KEYS}
        rows.append(row)
    return rows


def overlapMetrics(labelmap: sitk.Image, reference: sitk.Image, labels: Sequence[dict]) -> tuple[dict[int, dict], float | None]:
    """Overlap of the label map with a reference on the same grid, per label, with MONAI's metrics.

    Both empty → Dice and Jaccard 1; one empty → 0 and null distances. Distances use the grid's
    spacing (mm).

    Returns:
        ({label value: {dice, jaccard, precision, recall, specificity, hausdorff95_mm,
        mean_surface_distance_mm}}, mean IoU over the labels (seed 004)).
    """
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        compute_confusion_matrix_metric,
        get_confusion_matrix,
    )

    spacing = [float(s) for s in labelmap.GetSpacing()]
    predicted = preprocessing.imageToIJK(labelmap)
    truth = preprocessing.imageToIJK(reference)
    results: dict[int, dict] = {}
    for label in labels:
        value = int(label["value"])
        p = torch.from_numpy(np.ascontiguousarray(predicted == value))[None, None].float()
        t = torch.from_numpy(np.ascontiguousarray(truth == value))[None, None].float()
        cm = get_confusion_matrix(p, t, include_background=True)
        metric = {
            "dice": float(compute_dice(p, t, include_background=True, ignore_empty=False)),
            "jaccard": float(compute_iou(p, t, include_background=True, ignore_empty=False)),
            "precision": _finite(compute_confusion_matrix_metric("precision", cm)),
            "recall": _finite(compute_confusion_matrix_metric("sensitivity", cm)),
            "specificity": _finite(compute_confusion_matrix_metric("specificity", cm)),
            "hausdorff95_mm": None,
            "mean_surface_distance_mm": None,
        }
        if p.any() and t.any():
            with warnings.catch_warnings():
                # MONAI's own surface-distance helpers call a deprecated argument internally.
                warnings.simplefilter("ignore", FutureWarning)
                metric["hausdorff95_mm"] = _finite(compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing))
                metric["mean_surface_distance_mm"] = _finite(
                    compute_average_surface_distance(p, t, include_background=True, symmetric=True, spacing=spacing)
                )
        results[value] = metric
    meanIoU = float(np.mean([m["jaccard"] for m in results.values()])) if results else None
    return results, meanIoU


def readReferenceSegmentation(path: str, referenceGrid: sitk.Image, labels: Sequence[dict]) -> sitk.Image:
    """A reference labelmap or ``.seg.nrrd`` on any grid, resampled nearest-neighbour onto ``referenceGrid``.

    Segments of a ``.seg.nrrd`` are matched to the card's labels by name (case-insensitive), then
    by label value.

    Returns:
        uint16 label map on the reference grid, with the card's label values.

    Raises:
        MedSegUNetError: unreadable file.
    """
    if pathSuffix(path) == ".seg.nrrd":
        image = _segmentationFileToLabelmap(path, labels)
    else:
        image = readVolume(path)
        if image.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkInt8, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32):
            image = sitk.Cast(sitk.Round(image), sitk.sitkUInt16) if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) else image
    return preprocessing.resampleOnto(image, referenceGrid, sitk.sitkNearestNeighbor, sitk.sitkUInt16)


def _segmentationFileToLabelmap(path: str, labels: Sequence[dict]) -> sitk.Image:
    import slicerio

    try:
        segmentation = slicerio.read_segmentation(path)
    except Exception as error:  # slicerio raises plain exceptions for malformed headers
        raise MedSegUNetError(f"Cannot read segmentation '{path}' ({error}): check that it is a Slicer .seg.nrrd file.") from None
    voxels = segmentation["voxels"]
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    byName = {label["name"].lower(): int(label["value"]) for label in labels}
    values = {int(label["value"]) for label in labels}
    out = np.zeros(layers.shape[1:], dtype=np.uint16)
    for segment in segmentation["segments"]:
        value = byName.get(str(segment.get("name", "")).lower())
        if value is None and int(segment.get("labelValue", 0)) in values:
            value = int(segment["labelValue"])
        if value is None:
            continue
        out[layers[int(segment.get("layer", 0))] == int(segment["labelValue"])] = value
    image = sitk.GetImageFromArray(out.transpose(2, 1, 0).copy())
    return setImageGeometryFromIJKToLPS(image, segmentation["ijkToLPS"])


def statisticsColumns(inputNames: Sequence[str], withOverlap: bool) -> list[str]:
    """Column titles of the statistics table (CSV and Slicer table node)."""
    columns = ["Segment", "Label value", "Number of voxels [voxels]", "Volume [mm3]", "Volume [cm3]", "Centroid [RAS mm]"]
    for name in inputNames:
        columns += [f"{title} ({name})" for _, title in INTENSITY_KEYS]
    if withOverlap:
        columns += [title for _, title in OVERLAP_KEYS]
    return columns


def statisticsRows(segments: Sequence[dict], inputNames: Sequence[str], withOverlap: bool) -> list[list]:
    """The table's rows, one per label, matching :func:`statisticsColumns` (None for missing)."""
    rows = []
    for segment in segments:
        centroid = segment.get("centroid_ras")
        row = [
            segment["name"],
            segment["value"],
            segment["voxel_count"],
            segment["volume_mm3"],
            segment["volume_cm3"],
            " ".join(f"{v:.3f}" for v in centroid) if centroid else None,
        ]
        for name in inputNames:
            values = segment["intensity"].get(name, {})
            row += [values.get(key) for key, _ in INTENSITY_KEYS]
        if withOverlap:
            row += [segment.get(key) for key, _ in OVERLAP_KEYS]
        rows.append(row)
    return rows


def formatCell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def statisticsCSV(segments: Sequence[dict], inputNames: Sequence[str], withOverlap: bool) -> str:
    """The statistics table as CSV text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(statisticsColumns(inputNames, withOverlap))
    for row in statisticsRows(segments, inputNames, withOverlap):
        writer.writerow([formatCell(v) for v in row])
    return buffer.getvalue()


def computeStatistics(
    labelmap: sitk.Image,
    card: dict,
    intensityImages: dict[str, sitk.Image],
    referenceSegmentation: sitk.Image | None = None,
) -> dict:
    """Everything the statistics files hold, except run metadata.

    Returns:
        ``{"segments": [...], "mean_iou": float}`` (``mean_iou`` only with a reference).
    """
    segments = segmentStatistics(labelmap, card["labels"], intensityImages)
    report: dict = {"segments": segments}
    if referenceSegmentation is not None:
        metrics, meanIoU = overlapMetrics(labelmap, referenceSegmentation, card["labels"])
        for segment in segments:
            segment.update(metrics[segment["value"]])
        report["mean_iou"] = meanIoU
    return report


def statisticsJSON(report: dict) -> str:
    return json.dumps(report, indent=2, allow_nan=False)
