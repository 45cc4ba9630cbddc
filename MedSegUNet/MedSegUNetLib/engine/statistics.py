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
from .errors import MedSegUNetError, VolumeError, firstLine
from .geometry import LPS_TO_RAS, boundingBox, setImageGeometryFromIJKToLPS
from .paths import checkRegularFile, pathSuffix
from .volumes import readVolume

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


def segmentStatistics(
    labelmap: sitk.Image, labels: Sequence[dict], intensityImages: dict[str, sitk.Image] | None = None, regions: np.ndarray | None = None
) -> list[dict]:
    """Voxel counts, volumes, centroids and intensity statistics per label.

    Args:
        labelmap: integer label map on the reference grid (LPS; KJI arrays).
        labels: the card's labels (``value``, ``name``, ``color``).
        intensityImages: input name → volume on any grid (resampled linearly onto the label map's).
        regions: sigmoid cards: bool ``L, K, J, I`` region masks in card order, possibly
            overlapping; each label's figures are then those of its whole region, not of the
            voxels the painted label map shows for it.

    Returns:
        one dict per label, in card order, with ``value``, ``name``, ``color``, ``voxel_count``,
        ``volume_mm3``, ``volume_cm3``, ``centroid_ras`` and ``intensity`` {name: {mean, std, min,
        max, median}}; absent labels have zero volume and null intensities. ``std`` is the sample
        standard deviation (n − 1), as in Slicer's Segment Statistics.
    """
    voxelVolume = float(np.prod(labelmap.GetSpacing()))
    # Everything outside the labels' bounding box is background: the figures are computed on that
    # box alone (the crop keeps the physical geometry, so centroids are unchanged).
    labelArray = sitk.GetArrayViewFromImage(labelmap)
    box = boundingBox(labelArray if regions is None else np.any(regions, axis=0))
    if box is None:
        box = (np.zeros(3, dtype=int), np.zeros(3, dtype=int))
    start = [int(v) for v in box[0][::-1]]
    size = [int(v) for v in (box[1] - box[0] + 1)[::-1]]
    window = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(*box))
    croppedLabels = sitk.RegionOfInterest(labelmap, size, start)
    resampled = {}
    for name, image in (intensityImages or {}).items():
        if preprocessing.sameGrid(image, labelmap):
            image = sitk.RegionOfInterest(image, size, start)  # the same voxels, without interpolation
        # float32 voxels (ITK sums them in double): half the memory of float64 on a whole volume.
        resampled[name] = preprocessing.resampleOnto(image, croppedLabels, pixelType=sitk.sitkFloat32)
    if regions is None:
        return _statisticsRows(
            sitk.Cast(croppedLabels, sitk.sitkUInt16), [(label, int(label["value"])) for label in labels], resampled, voxelVolume
        )
    rows = []
    for label, region in zip(labels, regions):
        mask = sitk.GetImageFromArray(np.ascontiguousarray(region[window], dtype=np.uint8))
        mask.CopyInformation(croppedLabels)
        rows += _statisticsRows(mask, [(label, 1)], resampled, voxelVolume)
    return rows


def _statisticsRows(
    labelImage: sitk.Image, labelsAndValues: Sequence[tuple[dict, int]], resampled: dict[str, sitk.Image], voxelVolume: float
) -> list[dict]:
    """Rows for the labels found as ``value`` in ``labelImage`` (uint), intensities on its grid."""
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputePerimeterOff()  # counts and centroids only: the perimeter is most of the filter's time
    shape.Execute(labelImage)
    present = set(shape.GetLabels())
    labelArray = sitk.GetArrayViewFromImage(labelImage)
    intensities = {}
    for name, image in resampled.items():
        stats = sitk.LabelStatisticsImageFilter()
        stats.UseHistogramsOff()  # its histogram serves only ITK's approximate median (2/3 of its time)
        stats.Execute(image, labelImage)
        intensities[name] = (stats, sitk.GetArrayViewFromImage(image))
    rows = []
    for label, value in labelsAndValues:
        count = int(shape.GetNumberOfPixels(value)) if value in present else 0
        row = {
            "value": int(label["value"]),
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


def overlapMetrics(
    predicted: Sequence[np.ndarray], reference: Sequence[np.ndarray], labels: Sequence[dict], spacing: Sequence[float]
) -> tuple[dict[int, dict], float | None]:
    """Overlap of predicted and reference masks, per label, with MONAI's metrics.

    Definitions, as computed:

    - Dice = 2|P∩R| / (|P| + |R|); Jaccard (IoU) = |P∩R| / |P∪R|; both empty → 1, one empty → 0.
    - precision, recall (sensitivity) and specificity from the voxel confusion matrix.
    - HD95: MONAI's ``compute_hausdorff_distance(percentile=95)``: the larger of the two directed
      95th percentiles of distances between surface (edge) voxels, in mm.
    - mean surface distance: MONAI's ``compute_average_surface_distance(symmetric=True)``: the
      mean over the surface-voxel distances of both directions pooled (ASSD), in mm.
    - mean IoU: the mean of the per-label Jaccard over the foreground labels (seed 004).

    Surface-element libraries (DeepMind's ``surface_distance``) weight each surface element by its
    area and give lower values on anisotropic voxels; both are "right" for their definition.

    Args:
        predicted, reference: one bool KJI mask per label, on the same grid.
        spacing: the grid's spacing (i, j, k), mm.

    Returns:
        ({label value: {dice, jaccard, precision, recall, specificity, hausdorff95_mm,
        mean_surface_distance_mm}}, mean IoU over the labels).
    """
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_confusion_matrix_metric,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        get_confusion_matrix,
    )

    spacing = [float(s) for s in spacing]
    results: dict[int, dict] = {}
    for label, predictedMask, referenceMask in zip(labels, predicted, reference):
        value = int(label["value"])
        # KJI → IJK, so that the spacing given to MONAI matches the axes.
        p = torch.from_numpy(np.ascontiguousarray(np.asarray(predictedMask).transpose(2, 1, 0)))[None, None].float()
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(referenceMask).transpose(2, 1, 0)))[None, None].float()
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
                metric["hausdorff95_mm"] = _finite(
                    compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing)
                )
                metric["mean_surface_distance_mm"] = _finite(
                    compute_average_surface_distance(p, t, include_background=True, symmetric=True, spacing=spacing)
                )
        results[value] = metric
    meanIoU = float(np.mean([m["jaccard"] for m in results.values()])) if results else None
    return results, meanIoU


# Above this many distinct values a "label map" is an intensity image given by mistake.
MAX_REFERENCE_LABELS = 255


def referenceValues(label: dict) -> list[int]:
    """The reference label-map values that make up a card label's region (default: its own value)."""
    return [int(v) for v in label.get("reference_values") or [label["value"]]]


def readReferenceMasks(path: str, referenceGrid: sitk.Image, labels: Sequence[dict]) -> tuple[list[np.ndarray], list[str]]:
    """A reference label map or ``.seg.nrrd`` as one mask per card label on ``referenceGrid``.

    A label map's values are mapped through each label's ``reference_values`` (BraTS whole tumour
    = 1, 2 and 4); segments of a ``.seg.nrrd`` are matched by name (case-insensitive), then by
    label value. Everything is resampled nearest-neighbour onto the reference grid.

    Returns:
        (bool KJI masks in card order, warnings: one line per reference value no label maps).

    Raises:
        MedSegUNetError: unreadable file, not an integer label image, no overlap with the
            reference volume, or no value in common with the card's labels.
    """
    if pathSuffix(path) == ".seg.nrrd":
        parts = _segmentationFileParts(path, labels)
    else:
        parts = [(readVolume(path), None)]
    return referenceMasksFromParts(parts, referenceGrid, labels, path)


def referenceMasksFromParts(
    parts: Sequence[tuple[sitk.Image, int | None]], referenceGrid: sitk.Image, labels: Sequence[dict], name: str
) -> tuple[list[np.ndarray], list[str]]:
    """Masks per card label from reference parts on their own grids (see :func:`readReferenceMasks`).

    Args:
        parts: ``(label map, None)`` (values mapped through ``reference_values``) or
            ``(0/1 mask, card value)`` for a segment matched to a label.
        name: the reference's name, for messages.
    """
    from .geometry import VolumeGeometry, computeROI

    values = [int(label["value"]) for label in labels]
    masks = [np.zeros(tuple(reversed(referenceGrid.GetSize())), dtype=bool) for _ in labels]
    warningsFound: list[str] = []
    for image, value in parts:
        try:
            computeROI(
                VolumeGeometry.fromImage(referenceGrid, "reference volume"), [VolumeGeometry.fromImage(image, "reference segmentation")]
            )
        except MedSegUNetError:
            raise VolumeError(
                f"Reference segmentation '{name}' does not overlap the reference volume: give the reference of this patient and series."
            ) from None
        if value is not None:
            resampled = sitk.GetArrayFromImage(preprocessing.resampleOnto(image, referenceGrid, sitk.sitkNearestNeighbor, sitk.sitkUInt8))
            masks[values.index(value)] |= resampled != 0
            continue
        image = _integerLabelImage(image, name)
        array = sitk.GetArrayFromImage(preprocessing.resampleOnto(image, referenceGrid, sitk.sitkNearestNeighbor, sitk.sitkUInt32))
        present = {int(v) for v in np.unique(array)} - {0}
        mapped: set[int] = set()
        for index, label in enumerate(labels):
            wanted = referenceValues(label)
            mapped |= set(wanted)
            masks[index] |= np.isin(array, wanted)
        if present and not present & mapped:
            raise VolumeError(
                f"Reference '{name}' holds values {sorted(present)[:8]} but the card's labels stand for {sorted(mapped)}: "
                "give the labels 'reference_values' in the card (e.g. whole tumour [1, 2, 4]) or a reference in the card's values."
            )
        if present - mapped:
            warningsFound.append(
                f"reference '{name}' holds values {sorted(present - mapped)} that no label of the card stands for; they count as background"
            )
    return masks, warningsFound


def _integerLabelImage(image: sitk.Image, name: str) -> sitk.Image:
    """The image as an unsigned label map, or a one-line refusal when it is not a label map."""
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise VolumeError(
            f"Reference '{name}' has non-integer voxel values, so it is not a label map (an intensity image?): give a label map or "
            ".seg.nrrd."
        )
    if array.size and (array.min() < 0):
        raise VolumeError(f"Reference '{name}' has negative voxel values, so it is not a label map: give a label map or .seg.nrrd.")
    distinct = np.unique(array)
    if len(distinct) > MAX_REFERENCE_LABELS + 1:
        raise VolumeError(
            f"Reference '{name}' has {len(distinct)} distinct values, so it is not a label map (an intensity image?): give a label map or "
            ".seg.nrrd."
        )
    return sitk.Cast(image, sitk.sitkUInt32)


def cardValueOfSegment(name: str, labelValue: int, labels: Sequence[dict]) -> int | None:
    """The card label a reference segment stands for: by name (case-insensitive), then by label value."""
    for label in labels:
        if label["name"].lower() == name.lower():
            return int(label["value"])
    return int(labelValue) if int(labelValue) in {int(label["value"]) for label in labels} else None


def _segmentationFileParts(path: str, labels: Sequence[dict]) -> list[tuple[sitk.Image, int | None]]:
    """The segments of a ``.seg.nrrd`` that match card labels, as 0/1 masks on the file's grid."""
    import slicerio

    try:
        checkRegularFile(path, "Reference segmentation")
        segmentation = slicerio.read_segmentation(path)
    except MedSegUNetError:
        raise
    except Exception as error:  # slicerio raises plain exceptions for malformed headers
        raise VolumeError(f"Cannot read segmentation '{path}' ({firstLine(error)}): check that it is a Slicer .seg.nrrd file.") from None
    voxels = segmentation["voxels"]
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    parts = []
    for segment in segmentation["segments"]:
        value = cardValueOfSegment(str(segment.get("name", "")), int(segment.get("labelValue", 0)), labels)
        if value is None:
            continue
        mask = (layers[int(segment.get("layer", 0))] == int(segment["labelValue"])).astype(np.uint8)
        image = sitk.GetImageFromArray(mask.transpose(2, 1, 0).copy())
        parts.append((setImageGeometryFromIJKToLPS(image, segmentation["ijkToLPS"]), value))
    if not parts:
        names = ", ".join(label["name"] for label in labels)
        raise VolumeError(f"No segment of reference '{path}' matches the model's labels ({names}): rename the segments to these names.")
    return parts


def qualityFlag(segment: dict, label: dict) -> str:
    """``"ok"``, or ``"flagged: "`` and why a segment's volume is outside the card's expected
    ``qc.volume_ml`` range (the same words in the statistics, the batch summary and the Slicer table)."""
    expected = (label.get("qc") or {}).get("volume_ml")
    if not expected:
        return "ok"
    low, high = float(expected[0]), float(expected[1])
    volume = float(segment["volume_cm3"])  # 1 cm3 = 1 mL
    if volume < low:
        return f"flagged: volume {volume:.2f} mL below the expected {low:g}–{high:g} mL"
    if volume > high:
        return f"flagged: volume {volume:.2f} mL above the expected {low:g}–{high:g} mL"
    return "ok"


def statisticsColumns(inputNames: Sequence[str], withOverlap: bool) -> list[str]:
    """Column titles of the statistics table (CSV and Slicer table node)."""
    columns = ["Segment", "Label value", "Number of voxels [voxels]", "Volume [mm3]", "Volume [cm3]", "Centroid [RAS mm]", "QC"]
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
            segment.get("qc", "ok"),
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
    referenceMasks: Sequence[np.ndarray] | None = None,
    regions: np.ndarray | None = None,
) -> dict:
    """Everything the statistics files hold, except run metadata.

    Args:
        labelmap: the result on the reference grid.
        referenceMasks: one bool KJI mask per card label (:func:`readReferenceMasks`).
        regions: sigmoid cards: the result's region masks (see :func:`segmentStatistics`).

    Returns:
        ``{"segments": [...], "mean_iou": float}`` (``mean_iou`` only with a reference).
    """
    from .pipeline import labelMasks

    segments = segmentStatistics(labelmap, card["labels"], intensityImages, regions)
    for segment, label in zip(segments, card["labels"]):
        segment["qc"] = qualityFlag(segment, label)
    report: dict = {"segments": segments}
    if referenceMasks is not None:
        predicted = labelMasks(labelmap, card["labels"], regions)
        metrics, meanIoU = overlapMetrics(predicted, referenceMasks, card["labels"], labelmap.GetSpacing())
        for segment in segments:
            segment.update(metrics[segment["value"]])
        report["mean_iou"] = meanIoU
    return report


def statisticsJSON(report: dict) -> str:
    return json.dumps(report, indent=2, allow_nan=False)


__all__ = [
    "OVERLAP_KEYS",
    "segmentStatistics",
    "overlapMetrics",
    "referenceValues",
    "readReferenceMasks",
    "referenceMasksFromParts",
    "cardValueOfSegment",
    "qualityFlag",
    "statisticsColumns",
    "statisticsRows",
    "formatCell",
    "statisticsCSV",
    "computeStatistics",
    "statisticsJSON",
]
