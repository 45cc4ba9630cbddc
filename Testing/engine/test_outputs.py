"""Writing segmentations: Slicer ``.seg.nrrd`` through slicerio, plain label maps through SimpleITK."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from MedSegUNetLib.engine import geometry, outputs
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.models import phantoms

LABELS = [
    {"value": 1, "name": "peripheral zone", "color": [0.9, 0.6, 0.3]},
    {"value": 2, "name": "transition zone", "color": [0.3, 0.6, 0.9]},
    {"value": 5, "name": "lesion", "color": [1.0, 0.0, 0.0]},
]


@pytest.fixture
def a_labelmap() -> sitk.Image:
    """An oblique, left-handed uint8 label map with labels 1 and 2 (5 is absent)."""
    direction = phantoms.rotationMatrix((1, 0, 0), 18) @ np.diag([1.0, -1.0, 1.0])
    grid = phantoms.makeGrid((24, 20, 9), (0.5, 0.5, 3.0), direction, (10.0, -30.0, 5.0))
    image = phantoms.paintSpheres(grid, [((10.0, -30.0, 5.0), 5.0, 1.0), ((10.0, -30.0, 5.0), 2.5, 2.0)])
    return sitk.Cast(image, sitk.sitkUInt8)


def test_seg_nrrd_round_trip(tmp_path, a_labelmap):
    path = tmp_path / "result.seg.nrrd"
    outputs.writeSegmentation(a_labelmap, LABELS, path)
    assert os.listdir(tmp_path) == ["result.seg.nrrd"]
    segmentation = slicerio.read_segmentation(str(path))
    np.testing.assert_allclose(segmentation["ijkToLPS"], geometry.ijkToLPSFromImage(a_labelmap), atol=1e-6)
    segments = {s["name"]: s for s in segmentation["segments"]}
    assert list(segments) == [label["name"] for label in LABELS]
    for label in LABELS:
        segment = segments[label["name"]]
        assert int(segment["labelValue"]) == label["value"]
        np.testing.assert_allclose(segment["color"], label["color"], atol=1e-4)
    voxels = segmentation["voxels"]  # I, J, K
    expected = sitk.GetArrayFromImage(a_labelmap).transpose(2, 1, 0)
    offset = segmentation.get("referenceImageExtentOffset", [0, 0, 0])
    full = np.zeros_like(expected)
    full[offset[0] : offset[0] + voxels.shape[0], offset[1] : offset[1] + voxels.shape[1], offset[2] : offset[2] + voxels.shape[2]] = voxels
    np.testing.assert_array_equal(full, expected)
    assert (expected == 1).sum() > 50 and (expected == 2).sum() > 5


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".nii", ".mha"])
def test_plain_labelmap(tmp_path, a_labelmap, suffix):
    path = tmp_path / f"labels{suffix}"
    outputs.writeSegmentation(a_labelmap, LABELS, path)
    read = sitk.ReadImage(str(path))
    assert read.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(a_labelmap))
    np.testing.assert_allclose(read.GetDirection(), a_labelmap.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(read.GetOrigin(), a_labelmap.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetSpacing(), a_labelmap.GetSpacing(), atol=1e-6)


def test_segmentation_dict_extents(a_labelmap):
    data = outputs.segmentationDict(a_labelmap, LABELS)
    byValue = {s["labelValue"]: s for s in data["segments"]}
    ijk = sitk.GetArrayFromImage(a_labelmap).transpose(2, 1, 0)
    nonzero = np.nonzero(ijk == 2)
    assert byValue[2]["extent"] == [int(v) for axis in nonzero for v in (axis.min(), axis.max())]
    assert "extent" not in byValue[5]  # absent label: empty segment


def test_bad_output_paths_leave_nothing(tmp_path, a_labelmap):
    with pytest.raises(MedSegUNetError, match="must end with one of"):
        outputs.writeSegmentation(a_labelmap, LABELS, tmp_path / "labels.png")
    with pytest.raises(MedSegUNetError, match="does not exist"):
        outputs.writeSegmentation(a_labelmap, LABELS, tmp_path / "missing" / "labels.seg.nrrd")
    assert os.listdir(tmp_path) == []


def test_terminology_reaches_seg_nrrd_as_slicer_writes_it(tmp_path, repo_root):
    """The zoo card's SNOMED CT codes become each segment's TerminologyEntry tag, read back by slicerio."""
    import slicerio

    from MedSegUNetLib.engine import modelcard
    from MedSegUNetLib.engine.terminology import terminologyEntry

    card = modelcard.readCard(repo_root / "MedSegUNet" / "Resources" / "Models" / "prostate-zones" / "prostate-zones.pt")
    labelmap = sitk.Image([6, 5, 4], sitk.sitkUInt8)
    labelmap[1, 1, 1] = 1
    labelmap[2, 2, 2] = 2
    outputs.writeSegmentation(labelmap, card["labels"], tmp_path / "zones.seg.nrrd")
    segments = slicerio.read_segmentation(str(tmp_path / "zones.seg.nrrd"), skip_voxels=True)["segments"]
    for segment, label in zip(segments, card["labels"]):
        terminology = segment["terminology"]
        assert terminology["category"] == ["SCT", "123037004", "Anatomical Structure"]
        assert terminology["type"] == label["terminology"]["type"]
        assert slicerio.segmentation.terminology_entry_to_string(terminology) == terminologyEntry(label)
    assert segments[0]["terminology"]["type"] == ["SCT", "279706003", "Peripheral zone of prostate"]
