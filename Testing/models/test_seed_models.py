"""The zoo's models for the seeds' tasks, run by name through the installed command on volumes they
never saw: TCGA-FG-6692 (held out of the LGG training) in its skull-stripped 1 mm BraTS space and in
its native 5.5 mm tilted FLAIR (the two volumes within 20 % of each other), and three
slices of ACDC test patient 011 (``Testing/data/acdc``). The thresholds are the measured figures of
the model sheets less a margin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO_ROOT, requireSharedData

ACDC = REPO_ROOT / "Testing" / "data" / "acdc"
# Measured (docs/models/lgg-flair.md, version 1.2.0): on TCGA-FG-6692's native FLAIR 18.5 mL, right
# frontal as the BraTS-space fusion (30.2 mL) has it; on its skull-stripped BraTS-space FLAIR 15.9 mL,
# Dice 0.56 against the fusion's whole tumour (version 1.1.0, without the largest-component step:
# 19.9 mL native, 25 % above the BraTS-space result). The thresholds are those figures less a margin.
LGG_NATIVE_ML = (14.0, 26.0)
LGG_MIN_BRATS_DICE = 0.45
# On slices 3-5 of ACDC test patient 011 (docs/models/acdc-heart.md, version 1.2.0): LV cavity 0.968
# (ED) and 0.971 (ES), myocardium 0.84 and 0.90, RV 0.96 and 0.93 (version 1.1.0: LV 0.855 and 0.933).
ACDC_MIN_LV_DICE = {"frame01": 0.93, "frame02": 0.93}


def segment(model: str, volume: Path, out: Path) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "MedSegUNetLib.cli",
            "segment",
            "-q",
            "--model",
            model,
            str(volume),
            "--output",
            str(out),
            "--stats-json",
            str(out.with_suffix(".json")),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(REPO_ROOT / "MedSegUNet"), "PATH": "/usr/bin:/bin", "MEDSEGUNET_CATALOG": "", "HOME": str(out.parent)},
    )
    assert done.returncode == 0, done.stderr
    # Only a QC line may be printed (an empty result is outside the label's expected volume).
    assert all("expected" in line or "QC" in line or "qc" in line for line in done.stderr.splitlines()), done.stderr
    return json.loads(out.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def lgg_results(tmp_path_factory) -> dict:
    folder = requireSharedData("brain-tumor", "TCGA-FG-6692")
    out = tmp_path_factory.mktemp("lgg")
    return {
        space: (segment("lgg-flair", folder / path, out / f"{space}.nii.gz"), out / f"{space}.nii.gz")
        for space, path in (("brats", "brats-space/fla_bet.nii.gz"), ("native", "native/flair.nii.gz"))
    }


def test_lgg_flair_finds_the_abnormality_on_the_native_tilted_flair(lgg_results):
    """Skull on, 5.5 mm, tilted 17°: the abnormality's volume, and its place (right frontal, as the
    BraTS-space fusion has it) in physical space, on the FLAIR's own grid."""
    from scipy import ndimage

    report, path = lgg_results["native"]
    [row] = report["segments"]
    assert row["name"] == "FLAIR abnormality" and row["qc"] == "ok"
    assert LGG_NATIVE_ML[0] <= row["volume_cm3"] <= LGG_NATIVE_ML[1], row["volume_cm3"]
    labels = sitk.ReadImage(str(path))
    reference = sitk.ReadImage(str(requireSharedData("brain-tumor", "TCGA-FG-6692") / "native" / "flair.nii.gz"))
    assert labels.GetSize() == reference.GetSize() and np.allclose(labels.GetDirection(), reference.GetDirection())
    flair = sitk.GetArrayFromImage(reference)
    lesion = ndimage.center_of_mass(sitk.GetArrayFromImage(labels) == 1)
    head = ndimage.center_of_mass(flair > np.percentile(flair, 50))
    offset = np.subtract(*(labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in c[::-1]]) for c in (lesion, head)))
    assert offset[0] < -25 and offset[1] < -10, offset  # LPS: towards the patient's right, anterior


def test_lgg_flair_on_the_skull_stripped_brats_space_flair(lgg_results):
    """Skull-stripped, 1 mm, registered to BraTS space: Dice against the five-algorithm fusion's whole
    tumour (labels 1, 2, 4) on the same grid."""
    folder = requireSharedData("brain-tumor", "TCGA-FG-6692")
    report, path = lgg_results["brats"]
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(path))) == 1
    fusion = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "brats-space" / "seg_fusion_mav.nii.gz")))
    wholeTumour = np.isin(fusion, (1, 2, 4))
    dice = 2.0 * (predicted & wholeTumour).sum() / (predicted.sum() + wholeTumour.sum())
    assert dice >= LGG_MIN_BRATS_DICE, dice
    assert report["segments"][0]["qc"] == "ok"


def test_lgg_flair_volumes_agree_across_the_two_spaces(lgg_results):
    """The issue's goal: the abnormality's volume on the native FLAIR within 20 % of the BraTS-space
    one (measured 18.5 against 15.9 mL, 17 % apart)."""
    native = lgg_results["native"][0]["segments"][0]["volume_cm3"]
    assert abs(native / lgg_results["brats"][0]["segments"][0]["volume_cm3"] - 1.0) <= 0.2


@pytest.mark.parametrize("frame", ["frame01", "frame02"], ids=["end-diastole", "end-systole"])
def test_acdc_heart_segments_a_test_patient(tmp_path, frame):
    report = segment("acdc-heart", ACDC / f"patient011_{frame}_slices3-5_image.nii.gz", tmp_path / "heart.nii.gz")
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "heart.nii.gz")))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(ACDC / f"patient011_{frame}_slices3-5_label.nii.gz")))
    dice = {
        value: 2.0 * ((predicted == value) & (reference == value)).sum() / ((predicted == value).sum() + (reference == value).sum())
        for value in (1, 2, 3)
    }
    assert dice[3] >= ACDC_MIN_LV_DICE[frame], dice
    assert dice[2] >= 0.78 and dice[1] >= 0.88, dice
    assert [row["name"] for row in report["segments"]] == ["right ventricle", "myocardium", "left ventricle cavity"]
