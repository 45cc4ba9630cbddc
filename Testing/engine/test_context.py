"""Context around the ROI: the network sees more than the ROI; labels are written inside it only.

The known-answer model is a mean filter of radius R voxels (a fixed 3D convolution, zero-padded at
the array's border) followed by a threshold, so its answer near a voxel depends on the voxels up
to R away. Run on the exact ROI alone, it sees zeros past the ROI's border and differs from the
whole-volume answer there; with a context of at least R voxels (in mm) it gives the whole-volume
answer everywhere inside the ROI. Arrays are K, J, I.
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

RADIUS = 3  # voxels of the mean filter
SPACING = (1.0, 1.0, 2.0)


def meanFilterModel(path, padding: str | None = None) -> str:
    import torch

    class MeanThreshold(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            size = 2 * RADIUS + 1
            self.conv = torch.nn.Conv3d(1, 1, size, padding=RADIUS, bias=False)
            torch.nn.init.constant_(self.conv.weight, 1.0 / size**3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = self.conv(x[:, :1])
            return torch.cat([torch.zeros_like(mean), (mean - 0.5) * 50.0], 1)

    card = phantoms.thresholdCard([(1, "dense", (0.2, 0.8, 0.2))])
    if padding is not None:
        card["roi"] = {"padding": padding}
    saveModel(torch.jit.script(MeanThreshold().eval()), card, path)
    return str(path)


@pytest.fixture(scope="module")
def context_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("context")
    tilt = phantoms.rotationMatrix((0, 0, 1), 12)
    grid = phantoms.makeGrid((48, 44, 20), SPACING, tilt, (0.0, 0.0, 0.0))
    image = phantoms.paintSpheres(grid, [((0.0, 0.0, 0.0), 11.0, 1.0), ((6.0, 4.0, 2.0), 4.0, 0.0)])
    # A second series covering the left part only: the ROI's border cuts the ball.
    half = phantoms.makeGrid((20, 60, 30), (1.0, 1.0, 2.0), np.eye(3), (-8.0, 0.0, 0.0))
    return {"image": image, "half": half, "model": meanFilterModel(folder / "mean.pt"), "folder": folder}


def segment(case, **options):
    loaded = modelcard.loadModel(case["model"], "cpu")
    return pipeline.segmentImages([case["image"]], loaded, names=["t2"], roiImages=[case["half"]], roiNames=["half"], **options)


def test_context_of_the_filter_radius_gives_the_whole_volume_answer_inside_the_roi(context_case):
    loaded = modelcard.loadModel(context_case["model"], "cpu")
    whole = sitk.GetArrayFromImage(pipeline.segmentImages([context_case["image"]], loaded, useROI=False).labelmap)
    tight = segment(context_case, contextMM=0.0)
    roi = tight.roi.slices()
    outside = np.ones(whole.shape, dtype=bool)
    outside[roi] = False
    tightLabels = sitk.GetArrayFromImage(tight.labelmap)
    assert not tightLabels[outside].any()
    # Without context the border of the ROI is seen as zeros: the labels there differ.
    assert (tightLabels[roi] != whole[roi]).sum() > 20
    # A context of RADIUS voxels along every axis (2 mm slices: 6 mm) gives exactly the whole-volume answer.
    enough = RADIUS * max(SPACING)
    wide = segment(context_case, contextMM=enough)
    wideLabels = sitk.GetArrayFromImage(wide.labelmap)
    np.testing.assert_array_equal(wideLabels[roi], whole[roi])
    assert not wideLabels[outside].any() and wide.roi.ijkMin.tolist() == tight.roi.ijkMin.tolist()
    assert (wide.networkROI.ijkMin <= wide.roi.ijkMin).all() and (wide.networkROI.size > np.asarray(wide.roi.size)).any()
    # Less than the radius along i is not enough.
    short = sitk.GetArrayFromImage(segment(context_case, contextMM=1.0).labelmap)
    assert (short[roi] != whole[roi]).any()


def test_context_from_the_card_and_the_command_line(capsys, tmp_path, context_case):
    sitk.WriteImage(context_case["image"], str(tmp_path / "t2.nrrd"))
    sitk.WriteImage(context_case["half"], str(tmp_path / "half.nrrd"))
    loaded = modelcard.loadModel(context_case["model"], "cpu")
    whole = sitk.GetArrayFromImage(pipeline.segmentImages([context_case["image"]], loaded, useROI=False).labelmap)
    card = modelcard.readCard(context_case["model"]).toJSON()
    card["roi"] = {"context_mm": 6.0}
    (tmp_path / "mean.pt").write_bytes(open(context_case["model"], "rb").read())
    (tmp_path / "mean.pt.json").write_text(json.dumps(card))
    for extra, model in (([], str(tmp_path / "mean.pt")), (["--context", "6"], context_case["model"])):
        out = tmp_path / f"out{len(extra)}.nii.gz"
        assert (
            cli.main(
                [
                    "segment",
                    "-q",
                    "--model",
                    model,
                    str(tmp_path / "t2.nrrd"),
                    "--roi-from",
                    str(tmp_path / "half.nrrd"),
                    "--output",
                    str(out),
                    "--stats-json",
                    str(tmp_path / f"s{len(extra)}.json"),
                    *extra,
                ]
            )
            == 0
        ), capsys.readouterr().err
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
        report = json.loads((tmp_path / f"s{len(extra)}.json").read_text())
        low, high = report["roi"]["ijk_min"], report["roi"]["ijk_max"]
        window = tuple(slice(low[d], high[d] + 1) for d in (2, 1, 0))
        np.testing.assert_array_equal(labels[window], whole[window])
        assert report["network_region"]["margin_mm"] == 6.0 and labels.sum() == labels[window].sum()


def test_padding_zero_and_edge(tmp_path):
    """Voxels of the model grid outside an input: 0 after normalisation, or the nearest edge voxel."""
    from MedSegUNetLib.engine import preprocessing

    grid = phantoms.makeGrid((10, 10, 4), (1.0, 1.0, 1.0), np.eye(3), (0.0, 0.0, 0.0))
    image = sitk.Image(grid)
    image += 7.0
    narrow = sitk.RegionOfInterest(image, [6, 10, 4], [0, 0, 0])
    zero = preprocessing.prepareInputs([image, narrow], grid, {"type": "zscore", "nonzero": False}, "zero")
    assert np.all(zero[1][6:] == 0.0)
    edge = preprocessing.prepareInputs([image, narrow], grid, {"type": "none"}, "edge")
    np.testing.assert_allclose(edge[1], 7.0)
