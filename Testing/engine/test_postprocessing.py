"""Card version 2 on phantoms with known answers: post-processing, logit blending and smoothing, TTA.

Arrays built here are K, J, I (SimpleITK's order); models see C, I, J, K.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedSegUNetLib.engine import modelcard, pipeline, postprocessing
from MedSegUNetLib.engine.modelcard import saveModel
from MedSegUNetLib.models import phantoms

GRID = phantoms.makeGrid((40, 36, 16), (1.0, 1.0, 2.0), phantoms.rotationMatrix((1, 1, 0), 20), (0.0, 0.0, 0.0))
BIG, SMALL = ((-4.0, 0.0, 0.0), 8.0), ((12.0, 8.0, 0.0), 3.0)


def version2(thresholds=(0.5,), softmax=True, **fields) -> dict:
    labels = [(index + 1, f"label{index + 1}", (0.2, 0.5, 0.2)) for index in range(len(thresholds))]
    card = phantoms.thresholdCard(labels, softmax=softmax)
    card["schema"] = "medsegunet.model/2"
    card.update(fields)
    return card


def run(tmp_path, card, image, module=None, name="m.pt", **options):
    path = tmp_path / name
    saveModel(module if module is not None else phantoms.thresholdModule((0.5,), softmax=card["output"] == "softmax"), card, path)
    result = pipeline.segmentImages([image], modelcard.loadModel(path, "cpu"), useROI=False, **options)
    return result, sitk.GetArrayFromImage(result.labelmap)


def test_largest_component_and_small_objects(tmp_path):
    image = phantoms.paintSpheres(GRID, [(*BIG, 1.0), (*SMALL, 1.0)])
    big = phantoms.sphereMask(GRID, *BIG)
    small = phantoms.sphereMask(GRID, *SMALL)
    _, plain = run(tmp_path, version2(), image, name="plain.pt")
    assert (plain == 1).sum() == big.sum() + small.sum()
    _, largest = run(tmp_path, version2(postprocessing={"largest_component": True}), image, name="largest.pt")
    np.testing.assert_array_equal(largest == 1, big)
    # The small ball's volume (its voxels × 2 mm³): 1.5 times that removes it, half of it keeps it.
    volume = small.sum() * 2.0
    _, removed = run(tmp_path, version2(postprocessing={"min_component_mm3": volume * 1.5}), image, name="removed.pt")
    np.testing.assert_array_equal(removed == 1, big)
    _, kept = run(tmp_path, version2(postprocessing={"min_component_mm3": volume * 0.5}), image, name="kept.pt")
    np.testing.assert_array_equal(kept == 1, big | small)


def test_fill_holes(tmp_path):
    ball = phantoms.sphereMask(GRID, *BIG)
    hole = phantoms.sphereMask(GRID, BIG[0], 3.0)
    array = (ball & ~hole).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(GRID)
    _, plain = run(tmp_path, version2(), image, name="plain.pt")
    assert not plain[hole].any()
    _, filled = run(tmp_path, version2(postprocessing={"fill_holes": True}), image, name="filled.pt")
    np.testing.assert_array_equal(filled == 1, ball)


def test_logit_blending_with_smoothing_matches_scipy_with_replicated_edges(tmp_path):
    """The blended logits are smoothed as SciPy's ``gaussian_filter(mode="nearest")`` does (TAPS's
    own smoothing): at the grid's faces the background's logits are replicated, not zero (0.5)."""
    from scipy import ndimage

    image = phantoms.paintSpheres(GRID, [(*BIG, 1.0), (*SMALL, 1.0)])
    card = version2(softmax=False, blend="logits", postprocessing={"logit_smoothing_sigma": 2.0})
    _, labels = run(tmp_path, card, image, name="smooth.pt")
    logits = (sitk.GetArrayFromImage(image).astype(np.float64) - 0.5) * 50.0  # K, J, I
    expected = ndimage.gaussian_filter(logits, sigma=2.0, mode="nearest", truncate=4.0) >= 0.0
    # MONAI's erf-sampled kernel against SciPy's sampled Gaussian: a few voxels on the 0.5 level set.
    assert np.count_nonzero((labels == 1) != expected) <= 5
    assert (labels == 1).sum() != (sitk.GetArrayFromImage(image) > 0.5).sum()  # the smoothing changed it
    with pytest.raises(Exception, match='needs "blend": "logits"'):
        modelcard.validateCard(version2(softmax=False, postprocessing={"logit_smoothing_sigma": 2.0}))


def test_smoothing_keeps_a_constant_logit_constant_up_to_the_faces():
    """A uniform background logit of −2 (probability 0.12) stays −2 at the grid's faces: zero padding
    would pull it to about −1 (0.27), and over a 0.25 threshold the border would become foreground."""
    import torch

    from MedSegUNetLib.engine.inference import smoothLogits

    smoothed = smoothLogits(torch.full((1, 1, 20, 18, 9), -2.0), 2.5)
    assert torch.allclose(smoothed, torch.tensor(-2.0), atol=1e-5)


def test_tta_averages_the_flipped_predictions(tmp_path):
    import torch

    class ShiftI(torch.nn.Module):
        """Logit of voxel i = 50·(x[i+1] − 0.5): a prediction shifted by one voxel along i."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (torch.roll(x[:, :1], shifts=-1, dims=2) - 0.5) * 50.0

    image = phantoms.paintSpheres(GRID, [(*BIG, 1.0)])
    card = version2(softmax=False, tta="flips")
    result, _ = run(tmp_path, card, image, module=torch.jit.script(ShiftI()), name="tta.pt", keepProbabilities=True)
    x = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-(v - 0.5) * 50.0))  # noqa: E731
    # Half of the 8 flips reverse i: the average of the shift forwards and backwards.
    expected = 0.5 * (sigmoid(np.roll(x, -1, axis=0)) + sigmoid(np.roll(x, 1, axis=0)))
    np.testing.assert_allclose(result.probabilities[0].transpose(2, 1, 0), expected, atol=1e-5)
    # A flip-symmetric model gives the same labels with and without TTA.
    _, plain = run(tmp_path, version2(), image, name="plain.pt")
    _, flipped = run(tmp_path, version2(tta="flips"), image, name="flipped.pt")
    np.testing.assert_array_equal(plain, flipped)


def test_fill_holes_follows_monai_through_corners():
    # Background voxels enclosed face by face but linked corner to corner to the border are not a
    # hole for MONAI's FillHoles (full connectivity); ITK's BinaryFillhole with face-connected
    # foreground would fill them.
    mask = np.ones((5, 5, 5), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[2, 2, 2] = False
    assert postprocessing.fillHoles(mask).sum() == 122
    mask[0, 0, 0] = True  # now (1,1,1) and (2,2,2) are sealed in: a hole
    assert postprocessing.fillHoles(mask).sum() == 125


@pytest.mark.parametrize("seed, fraction", [(0, 0.3), (1, 0.5), (2, 0.7), (3, 0.85)])
def test_clean_mask_equals_monai_on_random_masks(seed, fraction):
    from monai.transforms import FillHoles, KeepLargestConnectedComponent

    rng = np.random.default_rng(seed)
    for _ in range(25):
        mask = rng.random(tuple(int(n) for n in rng.integers(2, 12, 3))) < fraction
        sizes = np.sort(
            np.bincount(sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.view(np.uint8)), True)).ravel())[1:]
        )
        if len(sizes) > 1 and sizes[-1] == sizes[-2]:
            continue  # two largest components: which one stays is each library's own choice
        # MONAI's FillHoles writes into a NumPy input: each call gets its own copy.
        np.testing.assert_array_equal(
            postprocessing.cleanMask(mask, fill=True), np.asarray(FillHoles()(mask[None].astype(np.uint8)))[0] > 0
        )
        largest = np.asarray(KeepLargestConnectedComponent(applied_labels=[1], connectivity=3)(mask[None].astype(np.uint8)))
        np.testing.assert_array_equal(postprocessing.cleanMask(mask, largest=True), largest[0] > 0)
        np.testing.assert_array_equal(postprocessing.cleanMask(mask, largest=True, fill=True), np.asarray(FillHoles()(largest))[0] > 0)
