"""Sigmoid region models: nested, overlapping regions stay regions in statistics, files and metrics.

The known-answer model has three sigmoid channels thresholding the input at 0.5, 1.5 and 2.5. The
phantom (oblique grid) holds three nested spheres painted 1, 2, 3, so the regions are the outer,
middle and inner balls, nested like BraTS whole tumour ⊃ tumour core ⊃ enhancing tumour. Arrays
built here are K, J, I (SimpleITK's order).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedSegUNetLib import cli
from MedSegUNetLib.engine import modelcard, pipeline
from MedSegUNetLib.engine.modelcard import saveModel
from MedSegUNetLib.models import phantoms

CENTER = (4.0, -3.0, 2.0)
RADII = (9.0, 6.0, 3.0)
REGIONS = [(1, "whole tumour", (0.3, 0.8, 0.3)), (2, "tumour core", (0.9, 0.8, 0.2)), (3, "enhancing tumour", (0.9, 0.2, 0.2))]
# BraTS values: 2 oedema (outer shell), 1 necrotic/non-enhancing core (middle shell), 4 enhancing.
REFERENCE_VALUES = [[1, 2, 4], [1, 4], [4]]


@pytest.fixture(scope="module")
def region_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regions")
    grid = phantoms.makeGrid((36, 34, 16), (0.9, 0.9, 1.6), phantoms.rotationMatrix((1, 1, 0), 25), CENTER)
    spheres = [(CENTER, radius, float(value)) for value, radius in zip((1, 2, 3), RADII)]
    image = phantoms.paintSpheres(grid, spheres)
    sitk.WriteImage(image, str(folder / "t1c.nrrd"))
    masks = [phantoms.sphereMask(grid, CENTER, radius) for radius in RADII]
    brats = np.zeros(masks[0].shape, dtype=np.uint8)
    brats[masks[0]] = 2
    brats[masks[1]] = 1
    brats[masks[2]] = 4
    reference = sitk.GetImageFromArray(brats)
    reference.CopyInformation(grid)
    sitk.WriteImage(reference, str(folder / "brats-reference.nii.gz"))
    card = phantoms.thresholdCard(REGIONS, softmax=False, patchSize=(24, 24, 12))
    for label, values in zip(card["labels"], REFERENCE_VALUES):
        label["reference_values"] = values
    model = folder / "regions.pt"
    saveModel(phantoms.thresholdModule((0.5, 1.5, 2.5), softmax=False), card, model)
    return {
        "folder": folder,
        "image": folder / "t1c.nrrd",
        "reference": folder / "brats-reference.nii.gz",
        "model": str(model),
        "masks": masks,
        "grid": grid,
    }


def test_pipeline_keeps_overlapping_regions(region_case):
    image = sitk.ReadImage(str(region_case["image"]))
    result = pipeline.segmentImages([image], modelcard.loadModel(region_case["model"], "cpu"), useROI=False)
    assert result.regions is not None and result.regions.shape == (3, *region_case["masks"][0].shape)
    for got, want in zip(result.masks(), region_case["masks"]):
        np.testing.assert_array_equal(got, want)
    # The plain label map paints regions in card order: the inner value wins where they overlap.
    painted = sitk.GetArrayFromImage(result.labelmap)
    assert (painted == 1).sum() == region_case["masks"][0].sum() - region_case["masks"][1].sum()
    assert (painted == 3).sum() == region_case["masks"][2].sum()


def test_region_statistics_files_and_brats_reference(capsys, tmp_path, region_case):
    out = tmp_path / "out"
    out.mkdir()
    code = cli.main(
        [
            "segment",
            str(region_case["image"]),
            "--model",
            region_case["model"],
            "--no-roi",
            "-q",
            "--output",
            str(out / "regions.seg.nrrd"),
            "--stats-json",
            str(out / "stats.json"),
            "--stats",
            str(out / "stats.csv"),
            "--reference-seg",
            str(region_case["reference"]),
        ]
    )
    assert code == 0, capsys.readouterr().err
    spacing = np.prod(region_case["grid"].GetSpacing())
    report = json.loads((out / "stats.json").read_text())
    for segment, mask in zip(report["segments"], region_case["masks"]):
        # Each region's own voxels: whole tumour counts the whole ball, not the painted shell.
        assert segment["voxel_count"] == int(mask.sum())
        assert segment["volume_mm3"] == pytest.approx(mask.sum() * spacing)
        assert segment["dice"] == 1.0 and segment["jaccard"] == 1.0
        assert segment["intensity"]["image"]["min"] >= segment["value"]
    assert report["mean_iou"] == 1.0 and report["warnings"] == []

    import slicerio

    segmentation = slicerio.read_segmentation(str(out / "regions.seg.nrrd"))
    assert segmentation["voxels"].ndim == 4 and segmentation["voxels"].shape[0] == 3
    for segment, mask in zip(segmentation["segments"], region_case["masks"]):
        readBack = segmentation["voxels"][segment["layer"]] == segment["labelValue"]
        np.testing.assert_array_equal(readBack.transpose(2, 1, 0), mask)
    assert [s["name"] for s in segmentation["segments"]] == [name for _, name, _ in REGIONS]


def test_reference_in_own_values_without_reference_values_is_refused(capsys, tmp_path, region_case):
    """The card without reference_values reads the BraTS reference as 1/2/3: value 4 is not mapped."""
    card = json.loads(json.dumps(modelcard.readCard(region_case["model"])))
    for label in card["labels"]:
        label.pop("reference_values")
    plain = tmp_path / "plain.pt"
    saveModel(phantoms.thresholdModule((0.5, 1.5, 2.5), softmax=False), card, plain)
    out = tmp_path / "out"
    out.mkdir()
    code = cli.main(
        [
            "segment",
            str(region_case["image"]),
            "--model",
            str(plain),
            "--no-roi",
            "-q",
            "--stats-json",
            str(out / "s.json"),
            "--reference-seg",
            str(region_case["reference"]),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    # Values 1 and 2 map, 4 does not: the run says so, on stderr and in the JSON.
    assert "holds values [4] that no label of the card stands for" in captured.err
    report = json.loads((out / "s.json").read_text())
    assert report["warnings"] and report["segments"][2]["dice"] == 0.0


def test_training_config_gives_reference_values(repo_root):
    from MedSegUNetLib.models import trainconfig

    config = {
        "labels": [{"value": 1, "region": [1, 2, 3]}, {"value": 2, "region": [1, 3]}, {"value": 3, "region": [3]}],
        "label_remap": {"4": 3},
    }
    assert trainconfig.referenceValuesFromConfig(config) == REFERENCE_VALUES
    zoo = modelcard.readCard(repo_root / "MedSegUNet" / "Resources" / "Models" / "brain-tumor-3d" / "brain-tumor-3d.pt")
    assert [label["reference_values"] for label in zoo["labels"]] == REFERENCE_VALUES
