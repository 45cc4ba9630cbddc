"""A newcomer's first hour: the model's own ROI is never skipped, the model grid covers the whole ROI,
warnings for settings the model was not trained with, and QC that cannot be missed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import PROSTATEX_0000_ROI, REPO_ROOT
from MedSegUNetLib import cli
from MedSegUNetLib.models import phantoms

ZOO_PROSTATE = str(REPO_ROOT / "MedSegUNet" / "Resources" / "Models" / "prostate-zones" / "prostate-zones.pt")


def test_a_model_trained_on_a_multi_series_roi_refuses_to_run_without_it(capsys, tmp_path, prostate_series):
    tra, sag, cor = prostate_series.values()
    assert cli.main(["segment", "--model", ZOO_PROSTATE, tra, "--stats", str(tmp_path / "z.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "medsegunet: error: This model was trained on the region covered by the t2 sag series and the t2 cor series: "
        "add --roi-from with them (e.g. --roi-from SAG COR), or --no-roi to run on the whole volume."
    ]
    assert list(tmp_path.iterdir()) == []
    # With the series it runs as before; --no-roi is the user's explicit choice.
    assert cli.main(["segment", "-q", "--model", ZOO_PROSTATE, tra, "--roi-from", sag, cor, "--stats-json", str(tmp_path / "z.json")]) == 0
    report = json.loads((tmp_path / "z.json").read_text())
    assert [report["roi"]["ijk_min"], report["roi"]["ijk_max"]] == [list(PROSTATEX_0000_ROI[0]), list(PROSTATEX_0000_ROI[1])]
    assert all(segment["qc"] == "ok" for segment in report["segments"]), report["segments"]


def test_the_whole_pelvis_result_is_flagged(capsys, tmp_path, prostate_series):
    """The zoo card's QC ranges (from the literature) flag zones of hundreds of mL."""
    tra = next(iter(prostate_series.values()))
    assert cli.main(["segment", "-q", "--model", ZOO_PROSTATE, tra, "--no-roi", "--output", str(tmp_path / "z.seg.nrrd")]) == 0
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings and all(
        line.startswith("medsegunet: warning:") and "flagged: volume" in line and "above the expected" in line for line in warnings
    ), warnings


@pytest.mark.parametrize("option, value, trained", [("--context", "10", "0"), ("--margin", "5", "0")])
def test_context_and_margin_the_model_was_not_trained_with_warn(capsys, tmp_path, prostate_series, option, value, trained):
    tra, sag, cor = prostate_series.values()
    assert (
        cli.main(["segment", "-q", "--model", ZOO_PROSTATE, tra, "--roi-from", sag, cor, option, value, "--stats", str(tmp_path / "z.csv")])
        == 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        f"medsegunet: warning: {option} {value} mm differs from the {trained} mm this model was trained with: results may be worse (the "
        "model sheet says why)" in err
    )


def _probabilitiesInside(path: str, roi: dict) -> np.ndarray:
    """The probability vectors of the ROI's voxels (K, J, I, classes)."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(path))
    low, high = roi["ijk_min"], roi["ijk_max"]
    return array[low[2] : high[2] + 1, low[1] : high[1] + 1, low[0] : high[0] + 1]


def test_probabilities_sum_to_one_on_every_roi_voxel_of_prostatex(tmp_path, prostate_series, a_threshold_model):
    """With 1 mm voxels the 68.5 mm ROI once got a 68-voxel model grid, and its last column
    (i = 261) had probability 0 for every class, background included: labels there were lost."""
    tra, sag, cor = prostate_series.values()
    level = 400.0
    model = a_threshold_model((level,), [(1, "bright", (1.0, 1.0, 0.0))], inputs=("T2",), spacing=[1.0, 1.0, 3.0])
    argv = [
        "segment",
        "-q",
        "--model",
        model,
        tra,
        "--roi-from",
        sag,
        cor,
        "--probabilities",
        str(tmp_path / "p.nrrd"),
        "--stats-json",
        str(tmp_path / "s.json"),
        "--output",
        str(tmp_path / "z.nrrd"),
    ]
    assert cli.main(argv) == 0
    roi = json.loads((tmp_path / "s.json").read_text())["roi"]
    assert roi["ijk_max"][0] == 261
    inside = _probabilitiesInside(str(tmp_path / "p.nrrd"), roi)
    np.testing.assert_allclose(inside.sum(axis=-1), 1.0, atol=1e-4)
    # The last column is labelled like the image there (bright voxels), not left as background.
    from MedSegUNetLib.engine.volumes import readVolume

    intensity = sitk.GetArrayFromImage(readVolume(tra))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "z.nrrd")))
    rows = slice(roi["ijk_min"][1], roi["ijk_max"][1] + 1)
    bright, labelled = intensity[:, rows, 261] > level, labels[:, rows, 261] > 0
    assert bright.sum() > 50 and 2 * (bright & labelled).sum() / (bright.sum() + labelled.sum()) > 0.8


# [parameters: the card's spacing and orientation, input: a grid (size, spacing, tilt)]
GRIDS = [
    ([1.3, 0.7, 2.9], None, ((37, 29, 11), (0.9, 1.1, 3.3), 18.0)),
    ([2.0, 2.0, 2.0], "RAS", ((41, 23, 9), (0.7, 0.7, 4.1), -27.0)),
    ([0.5, None, 5.0], "LPS", ((19, 31, 7), (1.7, 0.6, 2.5), 64.0)),
]


@pytest.mark.parametrize("spacing, orientation, grid", GRIDS, ids=["anisotropic", "RAS", "flipped-and-coarse"])
def test_probabilities_sum_to_one_on_grids_the_spacing_does_not_divide(tmp_path, a_threshold_model, spacing, orientation, grid):
    size, voxel, tilt = grid
    image = phantoms.paintSpheres(
        phantoms.makeGrid(size, voxel, phantoms.rotationMatrix((1, 0.4, 0.2), tilt), (0, 0, 0)), [((0, 0, 0), 8.0, 1.0)]
    )
    sitk.WriteImage(image, str(tmp_path / "t2.nrrd"))
    model = a_threshold_model((0.5,), spacing=spacing, orientation=orientation)
    assert (
        cli.main(
            [
                "segment",
                "-q",
                "--model",
                model,
                str(tmp_path / "t2.nrrd"),
                "--no-roi",
                "--probabilities",
                str(tmp_path / "p.nrrd"),
                "--stats-json",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    roi = json.loads((tmp_path / "s.json").read_text())["roi"]
    assert roi["ijk_max"] == [s - 1 for s in size]
    inside = _probabilitiesInside(str(tmp_path / "p.nrrd"), roi)
    np.testing.assert_allclose(inside.sum(axis=-1), 1.0, atol=1e-4)
