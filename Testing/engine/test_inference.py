"""Running networks over whole arrays with MONAI's inferers (``inference.predictProbabilities``).

Arrays are float32 ``C, I, J, K`` (MONAI's layout without the batch axis).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from MedSegUNetLib.engine import inference, modelcard
from MedSegUNetLib.engine.errors import ProcessingCancelled

LABELS = [(1, "a", (1, 0, 0)), (2, "b", (0, 1, 0))]


def ramp(shape=(20, 18, 10)) -> np.ndarray:
    """Values 0 … 3 rising along I, as a one-channel C, I, J, K array."""
    values = np.linspace(0.0, 3.0, shape[0], dtype=np.float32)[:, None, None]
    return np.broadcast_to(values, shape)[None].copy()


# [parameters (card patch, size_divisible), input shape (I, J, K), expected window]
@pytest.mark.parametrize(
    "card, shape, expected",
    [
        ({"spatial_dims": 3, "patch_size": [96, 96, 16]}, (137, 90, 19), [96, 96, 16]),
        ({"spatial_dims": 3, "patch_size": None}, (137, 90, 19), [144, 96, 32]),
        ({"spatial_dims": 3, "patch_size": None, "size_divisible": 1}, (137, 90, 19), [137, 90, 19]),
        ({"spatial_dims": 2, "patch_size": None}, (137, 90, 19), [144, 96]),
        ({"spatial_dims": 2, "patch_size": [64, 64]}, (137, 90, 19), [64, 64]),
    ],
)
def test_window_size(card, shape, expected):
    assert inference.windowSize(card, shape) == expected


def test_softmax_probabilities_and_progress(a_threshold_model):
    loaded = modelcard.loadModel(a_threshold_model((0.5, 1.5), LABELS, patchSize=(8, 8, 4)), "cpu")
    progress = []
    probabilities = inference.predictProbabilities(loaded, ramp(), lambda f, m: progress.append((f, m)))
    assert probabilities.shape == (3, 20, 18, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    labels = probabilities.argmax(axis=0)
    values = ramp()[0]
    np.testing.assert_array_equal(labels, np.digitize(values, [0.5, 1.5]))
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 1
    windows = inference._windowCount((20, 18, 10), (8, 8, 4), 0.25)
    assert len(fractions) == -(-windows // 2)  # one report per batch of sw_batch_size = 2


def test_sigmoid_probabilities(a_threshold_model):
    loaded = modelcard.loadModel(a_threshold_model((0.5, 1.5), LABELS, softmax=False), "cpu")
    probabilities = inference.predictProbabilities(loaded, ramp())
    assert probabilities.shape == (2, 20, 18, 10)
    values = ramp()[0]
    np.testing.assert_array_equal(probabilities[0] > 0.5, values > 0.5)
    np.testing.assert_array_equal(probabilities[1] > 0.5, values > 1.5)


def test_2d_model_runs_slice_by_slice(a_threshold_model):
    loaded = modelcard.loadModel(a_threshold_model((0.5, 1.5), LABELS, spatialDims=2, patchSize=(8, 8)), "cpu")
    # Values vary along K only: every slice is constant, so each slice's label is that of its value.
    values = np.array([0.1, 0.7, 1.2, 1.8, 2.6, 0.3, 2.0], dtype=np.float32)
    array = np.broadcast_to(values, (12, 10, 7))[None].copy()
    labels = inference.predictProbabilities(loaded, array).argmax(axis=0)
    np.testing.assert_array_equal(labels, np.broadcast_to(np.digitize(values, [0.5, 1.5]), (12, 10, 7)))


def test_tiny_unet_output_is_probabilities(a_tiny_unet):
    loaded = modelcard.loadModel(a_tiny_unet, "cpu")
    rng = np.random.default_rng(0)
    probabilities = inference.predictProbabilities(loaded, rng.normal(size=(1, 40, 36, 12)).astype(np.float32))
    assert probabilities.shape == (2, 40, 36, 12)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)


def test_cancel_event_stops_inference(a_threshold_model):
    loaded = modelcard.loadModel(a_threshold_model((0.5,), LABELS[:1], patchSize=(4, 4, 4)), "cpu")
    cancel = threading.Event()
    batches = []

    def progress(fraction, message):
        batches.append(fraction)
        cancel.set()

    with pytest.raises(ProcessingCancelled):
        inference.predictProbabilities(loaded, ramp(), progress, cancel)
    assert len(batches) == 1  # checked before the next batch
