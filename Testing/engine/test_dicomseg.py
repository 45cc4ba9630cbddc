"""DICOM SEG from the real ProstateX-0000 series: read back with highdicom and with dcmqi.

The label map written as ``.nii.gz`` by the same run is the reference: the SEG must hold the same
voxels (frames reference the source images, so its geometry is the series'), with the card's
segment names and codes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import requireSharedData
from MedSegUNetLib import cli
from MedSegUNetLib.engine.modelcard import saveModel
from MedSegUNetLib.models import phantoms

LEVEL = 400.0
PROSTATE = {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "41216001", "Prostate"]}


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    folder = requireSharedData("prostatex", "ProstateX-0000")
    out = tmp_path_factory.mktemp("dicomseg")
    card = phantoms.thresholdCard(
        [(1, "bright", (1.0, 0.8, 0.2)), (2, "brighter", (0.2, 0.4, 1.0))], inputs=("T2",), patchSize=(96, 96, 16)
    )
    card["labels"][0]["terminology"] = PROSTATE
    card["version"] = "1.2.3"
    model = out / "threshold.pt"
    saveModel(phantoms.thresholdModule((LEVEL, 2 * LEVEL)), card, model)
    series = [str(folder / name) for name in ("4-t2tsetra", "3-t2tsesag", "5-t2tsecor")]
    for output in ("seg.dcm", "labels.nii.gz"):
        assert cli.main(["segment", "-q", "--model", str(model), series[0], "--roi-from", *series[1:], "--output", str(out / output)]) == 0
    return {"out": out, "series": series, "card": card, "labels": sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))}


def test_highdicom_reads_the_same_voxels_names_and_codes(seg_run):
    import highdicom as hd
    import pydicom

    from MedSegUNetLib.engine.volumes import findDicomSeries

    segmentation = hd.seg.segread(str(seg_run["out"] / "seg.dcm"))
    names = [item.SegmentLabel for item in segmentation.SegmentSequence]
    assert names == ["bright", "brighter"]
    first = segmentation.SegmentSequence[0]
    assert first.SegmentedPropertyTypeCodeSequence[0].CodeValue == "41216001"
    assert first.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
    assert segmentation.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Tissue"  # generic code
    assert first.SegmentAlgorithmName == seg_run["card"]["name"][:64]
    sources = [pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in findDicomSeries(seg_run["series"][0])[0].files]
    pixels = segmentation.get_pixels_by_source_instance(source_sop_instance_uids=sources, segment_numbers=[1, 2])  # K, J, I, segment
    labels = seg_run["labels"]
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), labels == 1)
    np.testing.assert_array_equal(pixels[..., 1].astype(bool), labels == 2)
    assert (labels == 1).sum() > 1000 and (labels == 2).sum() > 100


def test_dcmqi_reads_the_same_voxels(seg_run, tmp_path):
    tool = shutil.which("segimage2itkimage")
    if tool is None:
        pytest.skip("dcmqi is not installed (the test extra installs it)")
    done = subprocess.run(
        [
            tool,
            "--inputDICOM",
            str(seg_run["out"] / "seg.dcm"),
            "--outputDirectory",
            str(tmp_path),
            "--outputType",
            "nrrd",
            "--prefix",
            "seg",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    meta = json.loads((tmp_path / "seg-meta.json").read_text())
    assert [segment[0]["SegmentLabel"] for segment in meta["segmentAttributes"]] == ["bright", "brighter"]
    reference = sitk.ReadImage(str(seg_run["out"] / "labels.nii.gz"))
    for number in (1, 2):
        image = sitk.ReadImage(str(tmp_path / f"seg-{number}.nrrd"))
        onReference = sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
        np.testing.assert_array_equal(onReference > 0, seg_run["labels"] == number)


def test_non_dicom_reference_is_refused(capsys, tmp_path, seg_run):
    sitk.WriteImage(sitk.ReadImage(str(seg_run["out"] / "labels.nii.gz")), str(tmp_path / "t2.nrrd"))
    out = tmp_path / "out"
    out.mkdir()
    code = cli.main(
        ["segment", "--model", str(seg_run["out"] / "threshold.pt"), str(tmp_path / "t2.nrrd"), "--output", str(out / "seg.dcm")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs a DICOM series as the reference input" in err[0] and os.listdir(out) == []


def test_batch_writes_dicom_seg(tmp_path, seg_run):
    import highdicom as hd

    card = json.loads(json.dumps(seg_run["card"]))
    card["inputs"][0]["match"] = ["t2", "tra"]
    card["roi"] = {"from_series": ["t2 sag", "t2 cor"]}
    model = tmp_path / "model.pt"
    saveModel(phantoms.thresholdModule((LEVEL, 2 * LEVEL)), card, model)
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    os.symlink(requireSharedData("prostatex", "ProstateX-0000"), cohort / "P0")
    assert (
        cli.main(["batch", "-q", "--model", str(model), "--cases", str(cohort), "--output", str(tmp_path / "out"), "--format", "dcm"]) == 0
    )
    segmentation = hd.seg.segread(str(tmp_path / "out" / "P0" / "P0.dcm"))
    assert [item.SegmentLabel for item in segmentation.SegmentSequence] == ["bright", "brighter"]
