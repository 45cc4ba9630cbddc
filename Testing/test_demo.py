"""``medsegunet demo``: local data discovery, the checked download, the ROI box drawing, the real run."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import PROSTATEX_0000_ROI, requireSharedData
from MedSegUNetLib import demo
from MedSegUNetLib.cli import main
from MedSegUNetLib.engine import preview, settings
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.engine.geometry import VolumeGeometry, fullROI
from MedSegUNetLib.models.phantoms import makeGrid, rotationMatrix


def test_download_checks_sum_and_is_atomic(tmp_path, a_file_server, monkeypatch):
    served, url = a_file_server
    content = b"NRRD0004 not really an image"
    (served / "ProstateX-0000-t2-tse-tra.nrrd").write_bytes(content)
    target = tmp_path / "cache" / "a.nrrd"
    with pytest.raises(MedSegUNetError, match="has SHA256 .* instead of 3940564b"):
        demo.download(url + "ProstateX-0000-t2-tse-tra.nrrd", target, settings.SAMPLE_DATA_FILES["axial"][1])
    assert not target.exists() and not target.parent.exists()  # no file, and no folder the download made
    demo.download(url + "ProstateX-0000-t2-tse-tra.nrrd", target, hashlib.sha256(content).hexdigest())
    assert target.read_bytes() == content


def test_offline_without_data_says_how_to_use_local_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDSEGUNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(settings, "SAMPLE_DATA_URL", "http://127.0.0.1:9/")  # nothing listens on the discard port
    model = tmp_path / "model.pt"
    model.write_bytes(b"")
    assert main(["demo", "--output", str(tmp_path / "out"), "--model", str(model)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and captured.out == ""
    assert "Cannot download the demo data" in err and "medsegunet demo --data DIR" in err
    assert not (tmp_path / "out").exists()


def test_full_checksums_match_the_issue_prefixes():
    prefixes = {"axial": ("3940564b", "3dfb"), "sagittal": ("774a3891", "f329"), "coronal": ("628b928f", "0e59")}
    for role, (start, end) in prefixes.items():
        checksum = settings.SAMPLE_DATA_FILES[role][1]
        assert len(checksum) == 64 and checksum.startswith(start) and checksum.endswith(end)


def test_find_local_nrrd_files(tmp_path):
    image = makeGrid((4, 4, 3), (1, 1, 1), np.eye(3))
    for name in (
        "ProstateX-0000-t2-tse-cor.nrrd",
        "ProstateX-0000-t2-tse-tra.nrrd",
        "ProstateX-0000-t2-tse-sag.nrrd",
        "ProstateX-0000-adc.nrrd",
    ):
        sitk.WriteImage(image, str(tmp_path / name))
    found = demo.findLocalSeries(tmp_path)
    assert {role: path.split("/")[-1] for role, path in found.items()} == {
        "axial": "ProstateX-0000-t2-tse-tra.nrrd",
        "sagittal": "ProstateX-0000-t2-tse-sag.nrrd",
        "coronal": "ProstateX-0000-t2-tse-cor.nrrd",
    }
    (tmp_path / "ProstateX-0000-t2-tse-sag.nrrd").unlink()
    with pytest.raises(MedSegUNetError, match="No sagittal T2 series found"):
        demo.findLocalSeries(tmp_path)


def test_box_on_slice_of_tilted_series():
    """A box equal to a tilted volume's own extent cuts each of its slices in the slice's full extent."""
    volume = makeGrid((10, 6, 5), (1.0, 2.0, 3.0), rotationMatrix([1, 1, 0], 25.0))
    corners = fullROI(VolumeGeometry.fromImage(volume)).cornersRAS()
    polygon = preview.boxOnSlice(corners, volume, 2.0)
    np.testing.assert_allclose(polygon.min(axis=0), [-0.5, -0.5], atol=1e-9)
    np.testing.assert_allclose(polygon.max(axis=0), [9.5, 5.5], atol=1e-9)
    assert len(preview.boxOnSlice(corners, volume, 7.0)) == 0


def test_demo_on_local_prostatex(tmp_path, repo_root):
    """The README's demo command on the local DICOM copy: outputs, ROI, zone volumes, Dice vs HeviAI23."""
    from MedSegUNetLib.engine import statistics
    from MedSegUNetLib.engine.volumes import readVolume

    data = requireSharedData("prostatex", "ProstateX-0000")
    if not demo.defaultModelPath().is_file():
        pytest.skip("the prostate-zones zoo model has not been exported yet")
    output = tmp_path / "demo-output"
    assert main(["demo", "--data", str(data), "--output", str(output), "--device", "cpu"]) == 0
    names = [
        "ProstateX-0000-zones.seg.nrrd",
        "ProstateX-0000-statistics.csv",
        "ProstateX-0000-statistics.json",
        "ProstateX-0000-overview.png",
    ]
    assert sorted(p.name for p in output.iterdir()) == sorted(names)
    report = json.loads((output / "ProstateX-0000-statistics.json").read_text())
    assert report["roi"]["ijk_min"] == list(PROSTATEX_0000_ROI[0]) and report["roi"]["ijk_max"] == list(PROSTATEX_0000_ROI[1])
    volumes = {s["name"]: s["volume_cm3"] for s in report["segments"]}
    # HeviAI23 zones of this case: peripheral 22.5 cm3, transition 18.3 cm3.
    assert 12 < volumes["peripheral zone"] < 35 and 10 < volumes["transition zone"] < 30
    assert (output / "ProstateX-0000-statistics.csv").read_text().splitlines()[1].startswith("peripheral zone,1,")
    assert (output / "ProstateX-0000-overview.png").stat().st_size > 50_000

    import slicerio

    segmentation = slicerio.read_segmentation(str(output / names[0]))
    assert [s["name"] for s in segmentation["segments"]] == ["peripheral zone", "transition zone"]
    reference = readVolume(str(data / "4-t2tsetra"))
    labelmap = sitk.GetImageFromArray(np.ascontiguousarray(segmentation["voxels"].transpose(2, 1, 0)))
    labelmap.CopyInformation(reference)
    zones = sitk.Cast(
        sitk.ReadImage(str(requireSharedData("prostatex", "labels", "ProstateX-0000_zones_AI-HeviAI23.nii.gz"))), sitk.sitkUInt16
    )
    labels = [{"value": 1, "name": "pz", "color": [0, 1, 0]}, {"value": 2, "name": "tz", "color": [1, 0, 0]}]
    from MedSegUNetLib.engine.pipeline import labelMasks

    metrics, _ = statistics.overlapMetrics(labelMasks(labelmap, labels), labelMasks(zones, labels), labels, labelmap.GetSpacing())
    # ProstateX-0000 is the model's training case: this checks the whole chain, not generalisation.
    assert metrics[1]["dice"] > 0.7 and metrics[2]["dice"] > 0.7


def test_demo_names_outputs_after_the_case_given(tmp_path, capsys):
    """ProstateX-0001 gives ProstateX-0001-* outputs, all four together, and a log on stdout."""
    data = requireSharedData("prostatex", "ProstateX-0001")
    if not demo.defaultModelPath().is_file():
        pytest.skip("the prostate-zones zoo model has not been exported yet")
    output = tmp_path / "out"
    assert main(["demo", "--data", str(data), "--output", str(output), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in output.iterdir()) == sorted(
        ["ProstateX-0001-zones.seg.nrrd", "ProstateX-0001-statistics.csv", "ProstateX-0001-statistics.json", "ProstateX-0001-overview.png"]
    )
    assert json.loads((output / "ProstateX-0001-statistics.json").read_text())["case"] == "ProstateX-0001"
    assert "ProstateX-0001-overview.png" in captured.out and captured.err == ""
    # An output folder that is a file is refused before any work, and nothing is written.
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main(["demo", "--data", str(data), "--output", str(blocker), "--device", "cpu"]) == 2
    assert "is a file" in capsys.readouterr().err and blocker.read_text() == "x"


def _cubeWorld(size=(64, 64, 12)):
    """A reference (LPS identity, 1 mm) and its whole-volume ROI."""
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing((1.0, 1.0, 1.0))
    return image, fullROI(VolumeGeometry.fromImage(image))


def test_the_preview_slices_go_through_the_structure_not_a_stray_voxel():
    """Tiles are spread over the slices where the labels are largest: a structure on K 4–9 and one
    stray voxel on K 0 give six tiles on K 4–9."""
    image, roi = _cubeWorld()
    mask = np.zeros((12, 64, 64), dtype=bool)
    mask[4:10, 20:40, 20:40] = True
    mask[0, 5, 5] = True
    assert preview.shownSlices([mask], roi) == [4, 5, 6, 7, 8, 9]
    assert preview.shownSlices([np.zeros_like(mask)], roi, count=3) == [0, 6, 11]  # nothing found: the ROI's slices


# [parameters (the ROI's I and J ranges), input (a 64 × 64 reference), expected (the tile's window)]
@pytest.mark.parametrize(
    "low, high, expected",
    [
        ((20, 20, 0), (39, 29, 11), (slice(12, 38), slice(12, 48))),  # grown by 8 voxels (a fifth would be less)
        ((0, 10, 0), (63, 59, 11), (slice(0, 64), slice(0, 64))),  # grown by a fifth, clipped to the image
    ],
    ids=["small-roi", "large-roi"],
)
def test_the_preview_crop_is_wider_than_the_roi(low, high, expected):
    from MedSegUNetLib.engine.geometry import RegionOfInterest

    image, _ = _cubeWorld()
    roi = RegionOfInterest(VolumeGeometry.fromImage(image), np.array(low), np.array(high))
    assert preview.overviewCrop(roi, image.GetSize()) == expected


def test_overlapping_regions_are_outlined_so_none_hides_another(tmp_path):
    """A sigmoid card whose second region contains the first: filled, the first would vanish under the
    second; outlined, both colours are drawn."""
    import matplotlib.image

    image, roi = _cubeWorld()
    inner = np.zeros((12, 64, 64), dtype=bool)
    inner[3:9, 28:36, 28:36] = True
    outer = np.zeros_like(inner)
    outer[2:10, 16:48, 16:48] = True
    labels = [{"value": 1, "name": "core", "color": [1.0, 0.0, 0.0]}, {"value": 2, "name": "whole", "color": [0.0, 0.0, 1.0]}]
    labelmap = sitk.GetImageFromArray(np.where(outer, 2, 0).astype(np.uint8))  # later regions paint over earlier ones
    labelmap.CopyInformation(image)
    for output in ("sigmoid", "softmax"):
        card = {"name": "nested", "labels": labels, "output": output}
        path = tmp_path / f"{output}.png"
        preview.writeOverview(image, labelmap, roi, {}, card, str(path), "case", masks=[inner, outer] if output == "sigmoid" else None)
        pixels = matplotlib.image.imread(str(path))[..., :3]
        # Outlines are drawn in the full colour, fills at 45 % over the (black) image.
        red = np.sum((pixels[..., 0] > 0.35) & (pixels[..., 1] < 0.15) & (pixels[..., 2] < 0.15))
        blue = np.sum((pixels[..., 2] > 0.35) & (pixels[..., 0] < 0.15) & (pixels[..., 1] < 0.15))
        # The legend's swatches draw both colours in any case (about 300 pixels each): the tiles add to that.
        assert (red > 1000 and blue > 1000) if output == "sigmoid" else (red < 1000 < blue), (output, red, blue)
