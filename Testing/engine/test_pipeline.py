"""The whole geometry chain — ROI, resampling, orientation, stitching, resampling back — against
analytic phantoms, with known-answer threshold models (``phantoms.thresholdModule``).

Phantom: a sphere of value 1 (radius 13 mm) holding a sphere of value 2 (radius 7 mm), painted on
the reference grid. The threshold model (levels 0.5 and 1.5) must give back labels 1 and 2. When the
card keeps the reference grid (or only permutes its axes), the labels equal the thresholded phantom
exactly; when the card changes the spacing, the labels match the analytic sphere masks with Dice > 0.9.

Arrays: label maps and masks are K, J, I (SimpleITK); physical points are LPS mm.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import PROSTATEX_0000_ROI
from MedSegUNetLib.engine import geometry, modelcard, pipeline
from MedSegUNetLib.engine.errors import MedSegUNetError, ProcessingCancelled
from MedSegUNetLib.engine.volumes import readVolume
from MedSegUNetLib.models import phantoms

LABELS = [(1, "outer", (0.9, 0.5, 0.3)), (2, "inner", (0.2, 0.6, 0.9))]
LEVELS = (0.5, 1.5)
CENTER = (3.0, -2.0, 1.5)
OUTER_MM, INNER_MM = 13.0, 7.0

IDENTITY = np.eye(3)
FLIP_I = np.diag([-1.0, 1.0, 1.0])
SWAP_IJ = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])

REFERENCE_DIRECTIONS = {
    "axis-aligned": IDENTITY,
    "oblique-18": phantoms.rotationMatrix((1, 0, 0), 18),
    "rotated-45": phantoms.rotationMatrix((1, 1, 0), 45),
    "flipped": FLIP_I @ phantoms.rotationMatrix((0, 1, 0), 10),
    "left-handed": phantoms.rotationMatrix((0, 0, 1), 30) @ SWAP_IJ,
}


def referenceGrid(direction, size=(40, 36, 14), spacing=(1.0, 1.0, 2.5)) -> sitk.Image:
    return phantoms.makeGrid(size, spacing, direction, CENTER)


def phantomOn(grid: sitk.Image) -> sitk.Image:
    return phantoms.paintSpheres(grid, [(CENTER, OUTER_MM, 1.0), (CENTER, INNER_MM, 2.0)])


def expectedLabels(grid: sitk.Image) -> np.ndarray:
    """Analytic labels on ``grid``'s voxel centres (K, J, I)."""
    labels = np.zeros(tuple(reversed(grid.GetSize())), dtype=np.uint8)
    labels[phantoms.sphereMask(grid, CENTER, OUTER_MM)] = 1
    labels[phantoms.sphereMask(grid, CENTER, INNER_MM)] = 2
    return labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def segment(modelPath: str, images, **kwargs) -> pipeline.SegmentationResult:
    return pipeline.segmentImages(images, modelcard.loadModel(modelPath, "cpu"), **kwargs)


def labelsOf(result: pipeline.SegmentationResult) -> np.ndarray:
    return sitk.GetArrayFromImage(result.labelmap)


# [parameters (reference direction, card), input shape (reference size), expected (exact labels or min Dice)]
CHAIN_CASES = (
    [pytest.param(name, dict(spatialDims=3), (40, 36, 14), "exact", id=f"3d-keep-grid-{name}") for name in REFERENCE_DIRECTIONS]
    + [
        pytest.param(name, dict(spatialDims=3, orientation="RAS"), (40, 36, 14), "exact", id=f"3d-orientation-only-{name}")
        for name in ("oblique-18", "left-handed")
    ]
    + [
        pytest.param(name, dict(spatialDims=3, spacing=(1.5, 1.5, 2.0), orientation="RAS"), (40, 36, 14), 0.9, id=f"3d-respaced-RAS-{name}")
        for name in REFERENCE_DIRECTIONS
    ]
    + [
        pytest.param(
            "oblique-18",
            dict(spatialDims=3, spacing=(0.8, None, 3.0), orientation="PIL"),
            (40, 36, 14),
            0.9,
            id="3d-respaced-PIL-partial-null",
        ),
        pytest.param("oblique-18", dict(spatialDims=3, patchSize=(16, 16, 4)), (40, 36, 14), "exact", id="3d-sliding-window-keep-grid"),
        pytest.param("left-handed", dict(spatialDims=3, softmax=False), (40, 36, 14), "exact", id="3d-sigmoid-keep-grid"),
        pytest.param(
            "oblique-18",
            dict(spatialDims=3, softmax=False, spacing=(1.2, 1.2, 2.0), orientation="LPS"),
            (40, 36, 14),
            0.9,
            id="3d-sigmoid-respaced",
        ),
        pytest.param("oblique-18", dict(spatialDims=2), (40, 36, 14), "exact", id="2d-keep-grid"),
        pytest.param("flipped", dict(spatialDims=2, patchSize=(16, 16)), (40, 36, 14), "exact", id="2d-patches-keep-grid"),
        pytest.param(
            "left-handed", dict(spatialDims=2, spacing=(1.3, 1.3, None), orientation="RAS"), (40, 36, 14), 0.9, id="2d-respaced-RAS"
        ),
    ]
)


@pytest.mark.parametrize("direction, cardArguments, shape, expected", CHAIN_CASES)
def test_geometry_chain_against_phantom(a_threshold_model, direction, cardArguments, shape, expected):
    grid = referenceGrid(REFERENCE_DIRECTIONS[direction], size=shape)
    image = phantomOn(grid)
    model = a_threshold_model(LEVELS, LABELS, **cardArguments)
    result = segment(model, [image], names=["phantom"])
    labels = labelsOf(result)
    assert result.labelmap.GetSize() == shape
    np.testing.assert_allclose(result.labelmap.GetDirection(), grid.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(result.labelmap.GetOrigin(), grid.GetOrigin(), atol=1e-12)
    truth = expectedLabels(grid)
    if expected == "exact":
        np.testing.assert_array_equal(labels, truth)
    else:
        for value in (1, 2):
            assert dice(labels == value, truth == value) > expected, f"label {value}"
        # The outer label (shell and core together) is larger and its Dice tighter.
        assert dice(labels > 0, truth > 0) > 0.95


def test_sliding_window_stitching_equals_whole_roi(a_threshold_model):
    grid = referenceGrid(REFERENCE_DIRECTIONS["rotated-45"])
    image = phantomOn(grid)
    # A smooth ramp so that blended probabilities are not all saturated near the boundaries.
    whole = segment(a_threshold_model(LEVELS, LABELS, spacing=(1.5, 1.5, 2.0)), [sitk.SmoothingRecursiveGaussian(image, 2.0)])
    tiled = segment(
        a_threshold_model(LEVELS, LABELS, spacing=(1.5, 1.5, 2.0), patchSize=(12, 10, 6)), [sitk.SmoothingRecursiveGaussian(image, 2.0)]
    )
    np.testing.assert_array_equal(labelsOf(tiled), labelsOf(whole))
    assert (labelsOf(whole) == 2).sum() > 100


class ChannelThreshold:
    """A scripted known-answer model thresholding input channel ``channel`` (not the reference)."""

    @staticmethod
    def build(channel: int, levels=LEVELS):
        import torch

        inner = phantoms.thresholdModule(levels, softmax=True)

        class Picker(torch.nn.Module):
            def __init__(self, network, channel: int) -> None:
                super().__init__()
                self.network = network
                self.channel = channel

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.network(x[:, self.channel : self.channel + 1])

        return torch.jit.script(Picker(inner, channel))


@pytest.fixture(scope="module")
def two_input_models(tmp_path_factory):
    """Known-answer models for a 2-input card ("T2", "ADC") thresholding channel 0 or channel 1."""
    folder = tmp_path_factory.mktemp("two_inputs")
    paths = {}
    for channel in (0, 1):
        card = phantoms.thresholdCard(LABELS, inputs=("T2", "ADC"), spacing=(1.2, 1.2, 2.5))
        paths[channel] = str(folder / f"channel{channel}.pt")
        modelcard.saveModel(ChannelThreshold.build(channel), card, paths[channel])
    return paths


def test_second_input_on_rotated_grid_is_resampled_in_physical_space(two_input_models):
    reference = referenceGrid(REFERENCE_DIRECTIONS["oblique-18"])
    # The second input covers the phantom on its own rotated, finer grid (a different series).
    secondGrid = phantoms.makeGrid((44, 44, 30), (0.9, 0.9, 1.2), phantoms.rotationMatrix((0.2, 1, 0.3), 35), CENTER)
    first, second = phantomOn(reference), phantomOn(secondGrid)
    truth = expectedLabels(reference)
    viaFirst = segment(two_input_models[0], [first, second], names=["T2", "ADC"])
    viaSecond = segment(two_input_models[1], [first, second], names=["T2", "ADC"])
    # The ROI is limited by the second grid's extent; nothing is labelled outside it.
    expectedROI = geometry.computeROI(
        geometry.VolumeGeometry.fromImage(reference, "T2"), [geometry.VolumeGeometry.fromImage(secondGrid, "ADC")]
    )
    assert viaSecond.roi.ijkMin.tolist() == expectedROI.ijkMin.tolist() and viaSecond.roi.ijkMax.tolist() == expectedROI.ijkMax.tolist()
    assert viaSecond.roi.volumeNames == ["T2", "ADC"]
    for result in (viaFirst, viaSecond):
        labels = labelsOf(result)
        outside = np.ones(labels.shape, dtype=bool)
        outside[result.roi.slices()] = False
        assert not labels[outside].any()
        for value in (1, 2):
            assert dice(labels == value, truth == value) > 0.9, f"label {value}"


def test_no_roi_runs_on_whole_reference(a_threshold_model):
    grid = referenceGrid(IDENTITY)
    small = phantoms.makeGrid((10, 10, 10), (1.0, 1.0, 1.0), IDENTITY, CENTER)
    model = a_threshold_model(LEVELS, LABELS)
    image = phantomOn(grid)
    limited = segment(model, [image], roiImages=[small], roiNames=["small"])
    whole = segment(model, [image], roiImages=[small], roiNames=["small"], useROI=False)
    assert limited.roi.size == (10, 10, 4)  # 10 mm cube over 2.5 mm slices: z centres within ±5 mm
    assert whole.roi.size == grid.GetSize()
    np.testing.assert_array_equal(labelsOf(whole), expectedLabels(grid))
    truth = expectedLabels(grid)
    inside = np.zeros(truth.shape, dtype=bool)
    inside[limited.roi.slices()] = True
    np.testing.assert_array_equal(labelsOf(limited), np.where(inside, truth, 0))


def test_margin_and_given_roi(a_threshold_model):
    grid = referenceGrid(IDENTITY)
    small = phantoms.makeGrid((10, 10, 10), (1.0, 1.0, 1.0), IDENTITY, CENTER)
    model = a_threshold_model(LEVELS, LABELS)
    image = phantomOn(grid)
    plain = segment(model, [image], roiImages=[small])
    grown = segment(model, [image], roiImages=[small], marginMM=2.0)
    np.testing.assert_array_equal(grown.roi.ijkMin, np.maximum(plain.roi.ijkMin - [2, 2, 1], 0))
    np.testing.assert_array_equal(grown.roi.ijkMax, np.minimum(plain.roi.ijkMax + [2, 2, 1], np.asarray(grid.GetSize()) - 1))
    given = segment(model, [image], roi=plain.roi)
    np.testing.assert_array_equal(labelsOf(given), labelsOf(plain))


def test_progress_monotone_and_timings(a_threshold_model):
    fractions, messages = [], []
    reporter = pipeline.ProgressReporter(lambda fraction, message: (fractions.append(fraction), messages.append(message)))
    model = a_threshold_model(LEVELS, LABELS, patchSize=(16, 16, 4))
    result = segment(model, [phantomOn(referenceGrid(IDENTITY))], progress=reporter)
    reporter.finish()
    assert len(fractions) > 5
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert all(b >= a for a, b in zip(fractions, fractions[1:])), fractions
    assert fractions[-1] == 1.0
    assert any(m.startswith("Inference: batch") for m in messages)
    assert set(result.timings) >= {"roi", "resampling", "inference", "postprocessing"}
    assert all(t >= 0 for t in result.timings.values())


def test_cancel_before_start(a_threshold_model):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ProcessingCancelled):
        segment(a_threshold_model(LEVELS, LABELS), [phantomOn(referenceGrid(IDENTITY))], progress=pipeline.ProgressReporter(None, cancel))


def test_cancel_during_inference(a_threshold_model):
    cancel = threading.Event()
    seen = []

    def callback(fraction, message):
        seen.append(fraction)
        if message.startswith("Inference: batch 1 "):
            cancel.set()

    model = a_threshold_model(LEVELS, LABELS, patchSize=(8, 8, 4))
    with pytest.raises(ProcessingCancelled):
        segment(model, [phantomOn(referenceGrid(IDENTITY))], progress=pipeline.ProgressReporter(callback, cancel))
    # Stopped during inference: nothing after the inference stage was reported.
    assert max(seen) < pipeline.Stage.INFERENCE.end


def test_wrong_input_count_is_a_clear_error(a_threshold_model):
    image = phantomOn(referenceGrid(IDENTITY))
    with pytest.raises(MedSegUNetError) as error:
        segment(a_threshold_model(LEVELS, LABELS), [image, image])
    assert "takes 1 input" in str(error.value) and "\n" not in str(error.value)


def test_wrong_channel_count_at_network_is_a_clear_error(a_threshold_model):
    from MedSegUNetLib.engine.inference import predictProbabilities

    loaded = modelcard.loadModel(a_threshold_model(LEVELS, LABELS), "cpu")
    with pytest.raises(MedSegUNetError, match="takes 1 input"):
        predictProbabilities(loaded, np.zeros((2, 8, 8, 4), dtype=np.float32))


def test_network_output_channels_must_match_card(tmp_path):
    # A one-level threshold network (2 output channels) under a card with two labels (3 channels).
    card = phantoms.thresholdCard(LABELS)
    path = tmp_path / "mismatch.pt"
    modelcard.saveModel(phantoms.thresholdModule((0.5,)), card, path)
    with pytest.raises(MedSegUNetError, match="returned shape \\(1, 2, 40, 36, 14\\) .* where the card needs \\(1, 3, 40, 36, 14\\)"):
        segment(str(path), [phantomOn(referenceGrid(IDENTITY))])


def test_2d_model_on_volume_with_one_slice_along_i(a_threshold_model):
    grid = phantoms.makeGrid((1, 20, 20), (1.0, 1.0, 1.0), IDENTITY, CENTER)
    with pytest.raises(MedSegUNetError) as error:
        segment(a_threshold_model(LEVELS, LABELS, spatialDims=2), [phantomOn(grid)])
    assert "2D model" in str(error.value) and "along I" in str(error.value)


def test_single_slice_volume_with_2d_model(a_threshold_model):
    grid = phantoms.makeGrid((40, 36, 1), (1.0, 1.0, 2.5), IDENTITY, CENTER)
    result = segment(a_threshold_model(LEVELS, LABELS, spatialDims=2), [phantomOn(grid)])
    np.testing.assert_array_equal(labelsOf(result), expectedLabels(grid))


def test_tiny_unet_runs_end_to_end(a_tiny_unet):
    grid = referenceGrid(REFERENCE_DIRECTIONS["oblique-18"])
    image = phantomOn(grid)
    loaded = modelcard.loadModel(a_tiny_unet, "cpu")
    result = pipeline.segmentImages([sitk.Add(image, 1.0)], loaded)
    labels = labelsOf(result)
    assert labels.shape == tuple(reversed(grid.GetSize()))
    assert set(np.unique(labels)) <= {0, 1}
    assert result.device == "cpu"


# ---------------------------------------------------------------------------------------------
# Real data: ProstateX-0000 T2 axial (reference) with sagittal and coronal limiting the ROI.

T2_LEVEL = 400.0


def thresholdedReference(image: sitk.Image, roi) -> np.ndarray:
    expected = np.zeros(tuple(reversed(image.GetSize())), dtype=np.uint8)
    inside = np.zeros(expected.shape, dtype=bool)
    inside[roi.slices()] = True
    expected[(sitk.GetArrayViewFromImage(image) > T2_LEVEL) & inside] = 1
    return expected


@pytest.mark.parametrize(
    "cardArguments, smoothingMM, expected",
    [
        pytest.param({}, 0.0, "exact", id="keep-grid"),
        pytest.param(dict(orientation="RAS"), 0.0, "exact", id="RAS-only"),
        # Raw T2 thresholds are speckled at the 0.5 mm scale, which a 1 mm grid cannot carry; a 1.5 mm
        # Gaussian leaves structure a 1 × 1 × 3 mm grid can represent, so Dice measures the geometry chain.
        pytest.param(dict(spacing=(1.0, 1.0, 3.0), orientation="RAS", patchSize=(96, 96, 16)), 1.5, 0.95, id="1x1x3mm-RAS"),
    ],
)
def test_prostatex_segment_with_threshold_model(prostate_images, a_threshold_model, cardArguments, smoothingMM, expected):
    images = list(prostate_images.values())
    names = list(prostate_images)
    reference = images[0]
    if smoothingMM:
        reference = sitk.SmoothingRecursiveGaussian(sitk.Cast(reference, sitk.sitkFloat32), smoothingMM)
    model = a_threshold_model((T2_LEVEL,), [(1, "bright", (1.0, 1.0, 0.0))], inputs=("T2",), **cardArguments)
    result = segment(model, [reference], names=names[:1], roiImages=images[1:], roiNames=names[1:])
    assert (result.roi.ijkMin.tolist(), result.roi.ijkMax.tolist()) == (list(PROSTATEX_0000_ROI[0]), list(PROSTATEX_0000_ROI[1]))
    assert result.roi.volumeNames == names
    labels = labelsOf(result)
    truth = thresholdedReference(reference, result.roi)
    assert truth.sum() > 10000
    if expected == "exact":
        np.testing.assert_array_equal(labels, truth)
    else:
        assert dice(labels == 1, truth == 1) > expected
        outside = np.ones(labels.shape, dtype=bool)
        outside[result.roi.slices()] = False
        assert not labels[outside].any()


def test_prostatex_0001_segment_keeps_grid(prostate_series_0001, a_threshold_model):
    from MedSegUNetLib.engine.volumes import readVolume

    images = [readVolume(path) for path in prostate_series_0001.values()]
    model = a_threshold_model((T2_LEVEL,), [(1, "bright", (1.0, 1.0, 0.0))], inputs=("T2",))
    result = segment(model, images[:1], roiImages=images[1:])
    assert (result.roi.ijkMin.tolist(), result.roi.ijkMax.tolist()) == ([126, 148, 0], [261, 237, 18])
    np.testing.assert_array_equal(labelsOf(result), thresholdedReference(images[0], result.roi))


# A ROI whose I runs along S, J along P, K along R: a model grid in RAS order is its axes reversed,
# so the ROI's voxels in the model's axis order are stored exactly as SimpleITK stores the ROI.
I_ALONG_S = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


# [parameters (card kind, ROI axes), input (random probabilities on an RAS model grid over the ROI),
# expected: labels, regions and kept probabilities equal those of the straightforward route, each
# class resampled onto the ROI grid as SimpleITK stores it (K, J, I), kept in arrays of their own]
@pytest.mark.parametrize(
    "softmax, channels, direction",
    [
        pytest.param(True, 3, phantoms.rotationMatrix((1, 1, 0), 12), id="softmax-3"),
        pytest.param(True, 2, phantoms.rotationMatrix((1, 1, 0), 12), id="softmax-binary"),
        pytest.param(False, 2, phantoms.rotationMatrix((1, 1, 0), 12), id="sigmoid-2"),
        pytest.param(True, 3, I_ALONG_S, id="softmax-3-model-axes-reversed"),
    ],
)
def test_labels_from_a_reoriented_model_grid_equal_the_direct_route(softmax, channels, direction):
    from MedSegUNetLib.engine import preprocessing

    roiGrid = phantoms.makeGrid((21, 17, 9), (0.8, 0.8, 2.5), direction, (2.0, -1.0, 0.5))
    grid = preprocessing.modelGrid(roiGrid, (1.1, 1.1, 1.3), "RAS")
    rng = np.random.default_rng(7)
    probabilities = rng.random((channels, *grid.GetSize())).astype(np.float32)
    if softmax:
        probabilities /= probabilities.sum(axis=0, keepdims=True)
    labelCount = channels - 1 if softmax else channels
    card = phantoms.thresholdCard([(index + 1, f"l{index + 1}", (0.5, 0.5, 0.5)) for index in range(labelCount)], softmax=softmax)
    kept: list = []
    labels, regions = pipeline.probabilitiesToLabels(probabilities, grid, roiGrid, card, keep=kept)
    direct = []
    for channel in probabilities:
        image = sitk.GetImageFromArray(np.ascontiguousarray(channel.transpose(2, 1, 0)))
        image.CopyInformation(grid)
        direct.append(sitk.GetArrayFromImage(sitk.Resample(image, roiGrid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)))
    direct = np.stack(direct)
    np.testing.assert_allclose(np.stack(kept), direct, atol=1e-6)
    # Not views of the per-class images, which are gone once the call returns.
    assert all(array.flags.owndata for array in kept)
    assert labels.shape == tuple(reversed(roiGrid.GetSize())) and labels.flags.c_contiguous
    if softmax:
        np.testing.assert_array_equal(labels, np.argmax(direct, axis=0))
        assert regions is None
    else:
        np.testing.assert_array_equal(regions, direct >= 0.5)
        assert len(np.unique(labels)) == 3
    if softmax and channels == 2:
        # Without kept probabilities the binary card brings back one class: the same labels.
        np.testing.assert_array_equal(pipeline.probabilitiesToLabels(probabilities, grid, roiGrid, card)[0], labels)


# [parameters (labels of a softmax model), input (a T2 series), expected (the class messages)]
@pytest.mark.parametrize(
    "labels, expected",
    [
        ([(1, "bright", (1.0, 1.0, 0.0))], ["label 1 of 1 (bright)"]),
        (
            [(1, "bright", (1.0, 1.0, 0.0)), (2, "brighter", (0.2, 0.4, 1.0))],
            ["background", "label 1 of 2 (bright)", "label 2 of 2 (brighter)"],
        ),
    ],
    ids=["one-label", "two-labels"],
)
def test_resampling_back_counts_the_models_labels(a_threshold_model, prostate_series, labels, expected):
    """'label k of n' counts the card's labels (not the network's channels); background is named."""
    from MedSegUNetLib.engine.modelcard import loadModel

    model = loadModel(
        a_threshold_model(
            tuple(100.0 * (index + 1) for index in range(len(labels))),
            labels,
            inputs=("T2",),
            spacing=(1.0, 1.0, 3.0),
            patchSize=(32, 32, 8),
        ),
        "cpu",
    )
    messages: list[str] = []
    pipeline.segmentImages(
        [readVolume(prostate_series["4-t2tsetra"])],
        model,
        useROI=False,
        progress=pipeline.ProgressReporter(lambda fraction, message: messages.append(message)),
    )
    prefix = "Resampling to the reference grid: "
    assert [message[len(prefix) :] for message in messages if message.startswith(prefix)] == expected
