"""Segment statistics and overlap metrics on label maps with known answers.

Label maps are SimpleITK images (LPS); NumPy arrays built here are K, J, I.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from MedSegUNetLib.engine import outputs, pipeline, statistics
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.models import phantoms

SHAPE_KJI = (10, 20, 20)
SPACING = (1.0, 1.0, 2.0)
CARD = {
    "labels": [
        {"value": 1, "name": "cube", "color": [1.0, 0.0, 0.0]},
        {"value": 2, "name": "voxel", "color": [0.0, 1.0, 0.0]},
        {"value": 3, "name": "absent", "color": [0.0, 0.0, 1.0]},
    ]
}


def labelImage(array: np.ndarray, spacing=SPACING, origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    return image


def masksOf(image: sitk.Image, labels=CARD["labels"]) -> list[np.ndarray]:
    """One bool KJI mask per label, as the pipeline hands them to the metrics."""
    return pipeline.labelMasks(image, labels)


def overlap(predicted: sitk.Image, truth: sitk.Image, labels=CARD["labels"]):
    return statistics.overlapMetrics(masksOf(predicted, labels), masksOf(truth, labels), labels, predicted.GetSpacing())


def cubeLabels(offsetI: int = 0) -> np.ndarray:
    """Label 1: i 2…5 (+offset), j 3…6, k 1…2 (32 voxels); label 2: one voxel at (10, 10, 5)."""
    array = np.zeros(SHAPE_KJI, dtype=np.uint8)
    array[1:3, 3:7, 2 + offsetI : 6 + offsetI] = 1
    array[5, 10, 10] = 2
    return array


def test_segment_statistics_known_values():
    labelmap = labelImage(cubeLabels(), origin=(10.0, 20.0, -5.0))
    k, j, i = np.meshgrid(*(np.arange(n) for n in SHAPE_KJI), indexing="ij")
    intensity = sitk.GetImageFromArray((i + 10 * j + 100 * k).astype(np.float32))
    intensity.CopyInformation(labelmap)
    report = statistics.computeStatistics(labelmap, CARD, {"T2": intensity})
    assert "mean_iou" not in report
    cube, voxel, absent = report["segments"]
    assert (cube["value"], cube["name"], cube["color"]) == (1, "cube", [1.0, 0.0, 0.0])
    assert cube["voxel_count"] == 32 and cube["volume_mm3"] == 64.0 and cube["volume_cm3"] == pytest.approx(0.064)
    # Centroid index (3.5, 4.5, 1.5) → LPS origin + (3.5, 4.5, 3.0) → RAS flips x and y.
    assert cube["centroid_ras"] == pytest.approx([-13.5, -24.5, -2.0])
    # i ∈ 2…5, 10·j ∈ 30…60, 100·k ∈ 100…200, independent: mean 3.5 + 45 + 150, var 1.25 + 125 + 2500.
    stats = cube["intensity"]["T2"]
    assert stats["mean"] == pytest.approx(198.5)
    assert stats["min"] == 132.0 and stats["max"] == 265.0 and stats["median"] == pytest.approx(198.5)
    # Sample standard deviation (n − 1), as ITK's and VTK's label statistics give it.
    assert stats["std"] == pytest.approx(np.sqrt(2626.25 * 32 / 31))
    assert voxel["voxel_count"] == 1 and voxel["volume_mm3"] == 2.0
    assert voxel["intensity"]["T2"]["mean"] == 10 + 100 + 500 and voxel["intensity"]["T2"]["median"] == 610
    assert absent["voxel_count"] == 0 and absent["centroid_ras"] is None
    assert absent["intensity"]["T2"] == {"mean": None, "std": None, "min": None, "max": None, "median": None}


def test_intensity_on_another_grid_is_resampled_linearly():
    # An affine intensity f(p) = a·p + b on a rotated grid: linear interpolation is exact, so the mean over
    # a label equals f at the label's centroid and min/max are f at the extreme voxel centres.
    labelmap = labelImage(cubeLabels())
    a, b = np.array([2.0, -1.0, 0.5]), 100.0
    source = phantoms.makeGrid((40, 40, 40), (0.9, 0.9, 0.9), phantoms.rotationMatrix((1, 1, 0), 30), (10.0, 10.0, 10.0))
    values = sitk.GetImageFromArray((phantoms.physicalPoints(source) @ a + b).astype(np.float32))
    values.CopyInformation(source)
    cube = statistics.computeStatistics(labelmap, CARD, {"ADC": values})["segments"][0]
    centroidLPS = np.array([3.5, 4.5, 3.0])
    assert cube["intensity"]["ADC"]["mean"] == pytest.approx(centroidLPS @ a + b, abs=1e-3)
    corners = np.array([[i, j, 2.0 * k] for i in (2, 5) for j in (3, 6) for k in (1, 2)])
    assert cube["intensity"]["ADC"]["min"] == pytest.approx((corners @ a + b).min(), abs=1e-3)
    assert cube["intensity"]["ADC"]["max"] == pytest.approx((corners @ a + b).max(), abs=1e-3)


def surfaceDistances(a: np.ndarray, b: np.ndarray, spacing_kji) -> np.ndarray:
    """Distances (mm) from the edge voxels of ``a`` to the nearest edge voxel of ``b`` (SciPy, independent of MONAI)."""
    edgeA = a ^ ndimage.binary_erosion(a)
    edgeB = b ^ ndimage.binary_erosion(b)
    return ndimage.distance_transform_edt(~edgeB, sampling=spacing_kji)[edgeA]


def test_overlap_metrics_offset_cubes():
    predicted, truth = labelImage(cubeLabels(offsetI=1)), labelImage(cubeLabels())
    metrics, meanIoU = overlap(predicted, truth)
    cube = metrics[1]
    # 4×4×2 cubes shifted by one voxel along i: 3×4×2 = 24 shared of 32 each.
    assert cube["dice"] == pytest.approx(2 * 24 / 64)
    assert cube["jaccard"] == pytest.approx(24 / 40)
    assert cube["precision"] == pytest.approx(24 / 32) and cube["recall"] == pytest.approx(24 / 32)
    total = np.prod(SHAPE_KJI)
    assert cube["specificity"] == pytest.approx((total - 40) / (total - 32))
    a, b = cubeLabels(offsetI=1) == 1, cubeLabels() == 1
    spacingKJI = SPACING[::-1]
    both = np.concatenate([surfaceDistances(a, b, spacingKJI), surfaceDistances(b, a, spacingKJI)])
    assert cube["mean_surface_distance_mm"] == pytest.approx(both.mean(), abs=1e-6)
    assert cube["hausdorff95_mm"] == pytest.approx(
        max(np.percentile(surfaceDistances(a, b, spacingKJI), 95), np.percentile(surfaceDistances(b, a, spacingKJI), 95)), abs=1e-6
    )
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(predicted == 1, truth == 1)
    assert 0 < cube["hausdorff95_mm"] <= hausdorff.GetHausdorffDistance() == pytest.approx(1.0)
    # The single voxel matches exactly; the absent label is empty in both.
    assert metrics[2]["dice"] == 1.0 and metrics[2]["hausdorff95_mm"] == 0.0 and metrics[2]["mean_surface_distance_mm"] == 0.0
    assert metrics[3]["dice"] == 1.0 and metrics[3]["jaccard"] == 1.0
    assert metrics[3]["hausdorff95_mm"] is None and metrics[3]["mean_surface_distance_mm"] is None
    assert meanIoU == pytest.approx((24 / 40 + 1.0 + 1.0) / 3)


def test_surface_distances_of_separated_voxels_are_analytic():
    # One voxel each, 3 slices apart at 2 mm: every surface distance is 6 mm.
    a = np.zeros(SHAPE_KJI, dtype=np.uint8)
    b = np.zeros(SHAPE_KJI, dtype=np.uint8)
    a[2, 5, 5] = 1
    b[5, 5, 5] = 1
    metrics, meanIoU = overlap(labelImage(a), labelImage(b), CARD["labels"][:1])
    assert metrics[1]["hausdorff95_mm"] == pytest.approx(6.0) and metrics[1]["mean_surface_distance_mm"] == pytest.approx(6.0)
    assert metrics[1]["dice"] == 0.0 and metrics[1]["precision"] == 0.0 and metrics[1]["recall"] == 0.0
    assert meanIoU == 0.0


def test_one_empty_mask_gives_zero_and_null_distances():
    predicted = np.zeros(SHAPE_KJI, dtype=np.uint8)
    metrics, _ = overlap(labelImage(predicted), labelImage(cubeLabels()), CARD["labels"][:1])
    cube = metrics[1]
    assert cube["dice"] == 0.0 and cube["jaccard"] == 0.0 and cube["recall"] == 0.0
    assert cube["hausdorff95_mm"] is None and cube["mean_surface_distance_mm"] is None
    assert cube["precision"] is None  # 0 / 0: no positive prediction
    assert cube["specificity"] == 1.0


def test_csv_columns_and_rows():
    labelmap = labelImage(cubeLabels())
    intensity = sitk.Cast(labelmap, sitk.sitkFloat32) * 10.0
    report = statistics.computeStatistics(labelmap, CARD, {"T2": intensity, "ADC": intensity}, masksOf(labelImage(cubeLabels(offsetI=1))))
    text = statistics.statisticsCSV(report["segments"], ["T2", "ADC"], True)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == statistics.statisticsColumns(["T2", "ADC"], True)
    for title in (
        "Number of voxels [voxels]",
        "Volume [mm3]",
        "Volume [cm3]",
        "Mean (T2)",
        "Standard deviation (ADC)",
        "Median (T2)",
        "Dice",
        "Hausdorff 95% [mm]",
    ):
        assert title in rows[0]
    assert len(rows) == 1 + len(CARD["labels"])
    cube = dict(zip(rows[0], rows[1]))
    assert cube["Segment"] == "cube" and cube["Label value"] == "1" and cube["Number of voxels [voxels]"] == "32"
    assert cube["Volume [mm3]"] == "64" and cube["Mean (T2)"] == "10" and cube["Dice"] == "0.75"
    absent = dict(zip(rows[0], rows[3]))
    assert absent["Mean (T2)"] == "" and absent["Centroid [RAS mm]"] == ""
    assert report["mean_iou"] == pytest.approx((0.6 + 1 + 1) / 3)
    plain = statistics.statisticsColumns(["T2"], False)
    assert "Dice" not in plain and plain[:3] == ["Segment", "Label value", "Number of voxels [voxels]"]
    assert len(statistics.statisticsRows(report["segments"], ["T2"], False)[0]) == len(plain)


def test_reference_seg_nrrd_and_labelmap_on_another_grid(tmp_path):
    grid = labelImage(cubeLabels(), origin=(1.0, 2.0, 3.0))
    expected = masksOf(labelImage(cubeLabels()))
    # .seg.nrrd written on the same grid, with the segments' label values changed: names match them.
    renamed = [{**label, "value": label["value"] + 10} for label in CARD["labels"]]
    shifted = sitk.GetImageFromArray(np.where(cubeLabels() > 0, cubeLabels() + 10, 0).astype(np.uint8))
    shifted.CopyInformation(grid)
    outputs.writeSegmentation(shifted, renamed, tmp_path / "ref.seg.nrrd")
    fromSeg, warnings = statistics.readReferenceMasks(str(tmp_path / "ref.seg.nrrd"), grid, CARD["labels"])
    assert warnings == []
    for got, want in zip(fromSeg, expected):
        np.testing.assert_array_equal(got, want)
    # A labelmap on a 3× finer grid over the same box: nearest neighbour gives the coarse cube back.
    fine = sitk.Resample(
        grid,
        [s * 3 for s in grid.GetSize()],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        [o - s / 3 for o, s in zip(grid.GetOrigin(), grid.GetSpacing())],
        [s / 3 for s in grid.GetSpacing()],
        grid.GetDirection(),
    )
    sitk.WriteImage(fine, str(tmp_path / "fine.nii.gz"))
    fromFine, _ = statistics.readReferenceMasks(str(tmp_path / "fine.nii.gz"), grid, CARD["labels"])
    for got, want in zip(fromFine, expected):
        np.testing.assert_array_equal(got, want)
        assert got.shape == tuple(reversed(grid.GetSize()))
    with pytest.raises(MedSegUNetError, match="does not exist"):
        statistics.readReferenceMasks(str(tmp_path / "absent.nrrd"), grid, CARD["labels"])
    (tmp_path / "bad.seg.nrrd").write_text("garbage")
    with pytest.raises(MedSegUNetError, match="Cannot read segmentation"):
        statistics.readReferenceMasks(str(tmp_path / "bad.seg.nrrd"), grid, CARD["labels"])


def test_statistics_json_has_no_nan():
    report = statistics.computeStatistics(labelImage(cubeLabels()), CARD, {})
    text = statistics.statisticsJSON(report)
    assert "NaN" not in text and '"voxel_count": 32' in text
