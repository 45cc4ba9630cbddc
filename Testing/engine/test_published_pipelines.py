"""Schema 3 cards, for published pipelines: a fixed grid shape, a localiser network, normalisation
steps with whole-volume statistics, and networks that already end in an activation.

Each feature is checked against a known answer: scripted networks whose output is a closed-form
function of their input (identity, a threshold), phantoms on oblique grids, values against NumPy.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedSegUNetLib.engine import geometry, modelcard, pipeline, preprocessing
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.models import phantoms


class Identity(torch.nn.Module):
    """Returns its one-channel input as one channel (a 'probability' for a sigmoid card)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ThresholdSoftmax(torch.nn.Module):
    """Two softmax-like channels: channel 1 is 1 where the input is above 0.5, channel 0 the rest."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x[:, :1] > 0.5).float()
        return torch.cat([1.0 - inside, inside], dim=1)


class FixedProbabilities(torch.nn.Module):
    """0.3 background, 0.7 foreground everywhere: a second softmax would give 0.599."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(x[:, :1])
        return torch.cat([0.3 * ones, 0.7 * ones], dim=1)


def card3(**changes) -> dict:
    """A schema 3 card of one input and one label (sigmoid-activated probabilities)."""
    card = {
        "schema": "medsegunet.model/3",
        "name": "known answer",
        "spatial_dims": 3,
        "inputs": [{"name": "T1"}],
        "labels": [{"value": 1, "name": "object", "color": [1, 0, 0]}],
        "output": "probabilities",
        "activation": "sigmoid",
        "normalization": {"type": "none"},
        "patch_size": None,
        "size_divisible": 1,
        "sw_batch_size": 1,
    }
    card.update(changes)
    return card


@pytest.fixture()
def an_oblique_cube():
    """A 40 × 36 × 24 volume of 1 × 1.5 × 2 mm tilted 20°, with value 1 in index box [10..25, 8..21, 5..16] (i, j, k)."""
    image = phantoms.makeGrid((40, 36, 24), (1.0, 1.5, 2.0), phantoms.rotationMatrix((1, 1, 0), 20.0), (5.0, -3.0, 2.0))
    array = np.zeros((24, 36, 40), dtype=np.float32)  # K, J, I
    array[5:17, 8:22, 10:26] = 1.0
    cube = sitk.GetImageFromArray(array)
    cube.CopyInformation(image)
    return cube


def saveAndLoad(tmp_path, network, card, localizer=None):
    path = tmp_path / "model.pt"
    modelcard.saveModel(network, card, path, localizer=localizer)
    return modelcard.loadModel(path, "cpu")


# [parameters (grid shape, orientation), input (the oblique cube), expected (grid size and box)]
@pytest.mark.parametrize("shape, orientation", [([20, 18, 12], None), ([64, 64, 64], "RAS"), ([7, 9, 5], "LPI")])
def test_grid_shape_spans_the_roi_box_with_that_many_voxels(an_oblique_cube, shape, orientation):
    card = modelcard.validateCard(card3(grid={"shape": shape}, orientation=orientation))
    roi = geometry.computeROI(geometry.VolumeGeometry.fromImage(an_oblique_cube), [])
    prepared = pipeline.prepareImages([an_oblique_cube], card, roi=roi)
    assert list(prepared.grid.GetSize()) == shape and prepared.array.shape == (1, *shape)
    gridBox = geometry.RegionOfInterest(geometry.VolumeGeometry.fromImage(prepared.grid), np.zeros(3), np.asarray(shape) - 1)
    assert geometry.sameCorners(gridBox.cornersRAS(), roi.cornersRAS())


def test_an_identity_model_on_a_grid_shape_gives_back_its_input(tmp_path, an_oblique_cube):
    """The identity network's output is the input resampled onto the grid and back: the cube's voxels."""
    loaded = saveAndLoad(tmp_path, Identity(), card3(grid={"shape": [80, 72, 48], "interpolation": "nearest"}))
    result = pipeline.segmentImages([an_oblique_cube], loaded, useROI=False)
    labels = sitk.GetArrayFromImage(result.labelmap)
    assert np.array_equal(labels > 0, sitk.GetArrayFromImage(an_oblique_cube) > 0.5)  # twice finer, nearest: exact
    assert int(labels.sum()) == 12 * 14 * 16


# [parameters (margin fraction, extra series' box), input (the cube), expected (ROI index range)]
LOCALIZER_CASES = [
    pytest.param(0.0, None, ([10, 8, 5], [25, 21, 16]), id="the-cube"),
    pytest.param(0.25, None, ([6, 4, 2], [29, 25, 19]), id="grown-by-a-quarter-per-side"),
    pytest.param(0.0, ([0, 0, 0], [17, 35, 23]), ([10, 8, 5], [17, 21, 16]), id="cut-by-another-series"),
]


@pytest.mark.parametrize("margin, seriesBox, expected", LOCALIZER_CASES)
def test_a_localiser_box_joins_the_series_intersection(tmp_path, an_oblique_cube, margin, seriesBox, expected):
    """The localiser marks the cube: the ROI is the cube's box (grown as the card says), intersected
    with the other series' extents; the main network sees only that."""
    localizer = {"grid": {"shape": [40, 36, 24], "interpolation": "nearest"}, "margin_fraction": margin}
    loaded = saveAndLoad(tmp_path, FixedProbabilities(), card3(activation="softmax", localizer=localizer), localizer=ThresholdSoftmax())
    roiImages = []
    if seriesBox is not None:
        low, high = seriesBox
        roiImages = [sitk.RegionOfInterest(an_oblique_cube, [h - lo + 1 for lo, h in zip(low, high)], low)]
    result = pipeline.segmentImages([an_oblique_cube], loaded, roiImages=roiImages, roiNames=["half"])
    assert result.roi.ijkMin.tolist() == expected[0] and result.roi.ijkMax.tolist() == expected[1]
    assert result.roi.volumeNames[-1] == "known answer localiser box"
    labels = sitk.GetArrayFromImage(result.labelmap)
    size = np.asarray(expected[1]) - np.asarray(expected[0]) + 1
    assert int((labels == 1).sum()) == int(np.prod(size))  # the fixed 0.7 foreground fills the ROI, nothing outside


def test_a_localiser_on_a_coarse_reoriented_grid_finds_the_cube(tmp_path, an_oblique_cube):
    """A 16³ RAS localiser grid over the oblique volume: the box covers the cube and little more."""
    localizer = {"grid": {"shape": [16, 16, 16]}, "orientation": "RAS", "margin_fraction": 0.1}
    loaded = saveAndLoad(tmp_path, FixedProbabilities(), card3(activation="softmax", localizer=localizer), localizer=ThresholdSoftmax())
    result = pipeline.segmentImages([an_oblique_cube], loaded)
    low, high = result.roi.ijkMin, result.roi.ijkMax
    assert np.all(low <= [10, 8, 5]) and np.all(high >= [25, 21, 16])
    assert np.prod(high - low + 1) < 4 * 16 * 14 * 12


def test_a_localiser_that_finds_nothing_stops_in_one_line(tmp_path, an_oblique_cube):
    localizer = {"grid": {"shape": [8, 8, 8]}}
    loaded = saveAndLoad(tmp_path, FixedProbabilities(), card3(activation="softmax", localizer=localizer), localizer=ThresholdSoftmax())
    empty = sitk.Image(an_oblique_cube)
    empty *= 0
    with pytest.raises(MedSegUNetError, match="localiser of 'known answer' found no region") as error:
        pipeline.segmentImages([empty], loaded)
    assert "\n" not in str(error.value)


def deepbetNormalize(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """deepbet 1.0.2's ``normalize`` (utils.py) in NumPy: clip-scale, z-score, then × 0.226 + 0.449."""
    x = np.clip((x - low) / (high - low), 0, 1)
    x = (x - x.mean()) / x.std()
    return 0.226 * x + 0.449


DEEPBET_STEPS = [
    {"type": "percentile", "lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True, "statistics": "volume"},
    {"type": "zscore", "nonzero": False},
    {"type": "affine", "scale": 0.226, "shift": 0.449},
]


def test_normalisation_steps_with_whole_volume_statistics_equal_numpy():
    """deepbet's normalisation: percentiles of the whole volume, z-score of the crop, then affine."""
    rng = np.random.default_rng(3)
    volume = rng.gamma(2.0, 100.0, size=(30, 40, 50)).astype(np.float32)
    crop = volume[5:20, 10:30, 10:40]
    low, high = np.percentile(volume, [0.5, 99.5])
    expected = deepbetNormalize(crop, low, high)
    got = preprocessing.normalize(crop[None], DEEPBET_STEPS, [volume])
    assert np.allclose(got[0], expected, atol=1e-5)
    # With the crop's own percentiles the answer differs: the statistics' source matters.
    cropOnly = preprocessing.normalize(crop[None], [dict(DEEPBET_STEPS[0], statistics="roi"), *DEEPBET_STEPS[1:]])
    assert np.allclose(cropOnly[0], deepbetNormalize(crop, *np.percentile(crop, [0.5, 99.5])), atol=1e-5)
    assert not np.allclose(cropOnly[0], expected, atol=1e-3)


def test_a_later_volume_step_sees_the_volume_after_the_earlier_steps():
    """z-score over the whole volume after an affine step: mean and std of the transformed volume."""
    rng = np.random.default_rng(4)
    volume = rng.normal(50.0, 10.0, size=(20, 20, 20)).astype(np.float32)
    crop = volume[:10]
    steps = [{"type": "affine", "scale": 2.0, "shift": 1.0}, {"type": "zscore", "nonzero": False, "statistics": "volume"}]
    transformed = 2.0 * volume + 1.0
    expected = (2.0 * crop + 1.0 - transformed.mean()) / transformed.std()
    assert np.allclose(preprocessing.normalize(crop[None], steps, [volume])[0], expected, atol=1e-4)


def test_probabilities_are_not_activated_twice(tmp_path, an_oblique_cube):
    """A network ending in its own softmax: the kept probabilities are its 0.7, not softmax(0.3, 0.7) = 0.599."""
    loaded = saveAndLoad(tmp_path, FixedProbabilities(), card3(activation="softmax"))
    result = pipeline.segmentImages([an_oblique_cube], loaded, useROI=False, keepProbabilities=True)
    assert np.allclose(result.probabilities[1], 0.7, atol=1e-6) and np.allclose(result.probabilities[0], 0.3, atol=1e-6)
    assert int((sitk.GetArrayFromImage(result.labelmap) == 1).sum()) == 40 * 36 * 24


def test_logits_where_the_card_says_probabilities_stop_in_one_line(tmp_path, an_oblique_cube):
    class Logits(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 5.0 * x - 2.0

    loaded = saveAndLoad(tmp_path, Logits(), card3())
    with pytest.raises(
        MedSegUNetError,
        match=r"returned values from -2 to 3 where the card says probabilities.*set the card's output to softmax or sigmoid",
    ):
        pipeline.segmentImages([an_oblique_cube], loaded, useROI=False)


# [parameters (card change), input (—), expected (the one line)]
INVALID_VERSION_3_CARDS = [
    pytest.param(
        dict(schema="medsegunet.model/2", output="sigmoid", activation=None, grid={"shape": [8, 8, 8]}),
        "field 'grid' needs .*model/3",
        id="grid-in-a-v2-card",
    ),
    pytest.param(
        dict(schema="medsegunet.model/2", output="probabilities", activation=None),
        "field 'output' needs .*model/3",
        id="probabilities-in-a-v2-card",
    ),
    pytest.param(
        dict(schema="medsegunet.model/2", output="sigmoid", activation=None, normalization=[{"type": "zscore"}]),
        "field 'normalization' needs .*model/3",
        id="steps-in-a-v2-card",
    ),
    pytest.param(dict(grid={"shape": [8, 8, 8]}, spacing=[1, 1, 1]), "either 'spacing' or 'grid'", id="grid-and-spacing"),
    pytest.param(dict(output="sigmoid"), '\'activation\' .* needs "output": "probabilities"', id="activation-without-probabilities"),
    pytest.param(dict(blend="logits"), "no logits to blend", id="blend-logits"),
    pytest.param(
        dict(localizer={"grid": {"shape": [8, 8, 8]}, "channel": 2}),
        "localizer channel 2 is not one of its 2 channels",
        id="localizer-channel",
    ),
    pytest.param(
        dict(normalization=[{"type": "zscore"}, {"type": "affine", "scale": "big"}]), "field 'normalization/1/scale'", id="step-field"
    ),
    pytest.param(
        dict(normalization=[{"type": "zscore"}, {"type": "affine", "scal": 2.0}]),
        "field 'normalization/1': Additional properties are not allowed \\('scal' was unexpected\\)",
        id="step-misspelt-key",
    ),
    pytest.param(
        dict(normalization=[{"type": "zscore_slice", "statistics": "volume"}]),
        "zscore_slice takes its statistics per slice",
        id="slice-volume",
    ),
    pytest.param(dict(normalization=[{"type": "affine"}]), "affine normalisation step needs 'scale', 'shift'", id="empty-affine"),
    pytest.param(dict(grid={"shape": [2048, 2048, 2048]}), "grid .* above the", id="grid-budget"),
    pytest.param(dict(localizer={"grid": {"shape": [8, 8]}}), "field 'localizer/grid/shape'", id="localizer-shape"),
]


@pytest.mark.parametrize("changes, message", INVALID_VERSION_3_CARDS)
def test_invalid_version_3_cards_are_refused_in_one_line(changes, message):
    card = card3(**changes)
    card = {key: value for key, value in card.items() if value is not None}
    with pytest.raises(MedSegUNetError, match=message) as error:
        modelcard.validateCard(card)
    assert "\n" not in str(error.value)


def test_a_localiser_travels_inside_the_model_file(tmp_path):
    """Saved as an extra file of the one TorchScript archive; a card without its network is refused."""
    card = card3(activation="softmax", localizer={"grid": {"shape": [8, 8, 8]}})
    loaded = saveAndLoad(tmp_path, FixedProbabilities(), card, localizer=ThresholdSoftmax())
    sample = torch.zeros(1, 1, 4, 4, 4)
    sample[..., 1:3, 1:3, 1:3] = 1.0
    assert torch.equal(loaded.localizer(sample), ThresholdSoftmax()(sample))
    with pytest.raises(MedSegUNetError, match="needs its localiser network"):
        modelcard.saveModel(FixedProbabilities(), card, tmp_path / "without.pt")
    sidecar = tmp_path / "plain.pt"
    modelcard.saveModel(FixedProbabilities(), card3(activation="softmax"), sidecar)
    (tmp_path / "plain.pt.json").write_text(__import__("json").dumps(card))
    with pytest.raises(MedSegUNetError, match="has a card with a 'localizer' but no 'medsegunet-localizer.pt'"):
        modelcard.loadModel(sidecar, "cpu")
    assert copy.deepcopy(modelcard.readCard(tmp_path / "model.pt"))["localizer"]["margin_fraction"] == 0.0


def test_a_localisers_progress_comes_before_resampling_and_is_named(tmp_path, an_oblique_cube):
    """Progress in execution order: the localiser's batches are reported as its own, inside the ROI
    stage, before the inputs are resampled and before the network's batches."""
    localizer = {"grid": {"shape": [40, 36, 24], "interpolation": "nearest"}, "margin_fraction": 0.0}
    loaded = saveAndLoad(tmp_path, FixedProbabilities(), card3(activation="softmax", localizer=localizer), localizer=ThresholdSoftmax())
    messages: list[str] = []
    pipeline.segmentImages(
        [an_oblique_cube], loaded, progress=pipeline.ProgressReporter(lambda fraction, message: messages.append(message))
    )
    localiser = [index for index, message in enumerate(messages) if message.startswith("Locating the region (localiser): batch")]
    resampling = messages.index(pipeline.Stage.RESAMPLING.label)
    network = [index for index, message in enumerate(messages) if message.startswith("Inference: batch")]
    assert localiser and network and max(localiser) < resampling < min(network), messages
