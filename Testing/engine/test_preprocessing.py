"""Model grids, physical-space resampling and intensity normalisation (``preprocessing``).

Arrays given to ``normalize`` are float32 ``C, I, J, K`` (MONAI's layout without the batch axis);
SimpleITK arrays are ``K, J, I``; physical points LPS mm.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import SimpleITK as sitk

from MedSegUNetLib.engine import preprocessing
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.models import phantoms


def cijk(values, shape) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(shape)


# [parameters (normalization), input shape (C, I, J, K), expected (flattened output)]
NORMALIZATION_CASES = [
    # Non-zero voxels 1, 2, 3: mean 2, population std √(2/3); zeros stay 0 (seed 000).
    pytest.param({"type": "zscore", "nonzero": True}, [0, 1, 2, 3], (1, 4, 1, 1), [0.0, -1.2247449, 0.0, 1.2247449], id="zscore-nonzero"),
    pytest.param(
        {"type": "zscore", "nonzero": False}, [0, 1, 2, 3], (1, 4, 1, 1), [-1.3416408, -0.4472136, 0.4472136, 1.3416408], id="zscore-all"
    ),
    # Per channel: the second channel's scale does not leak into the first.
    pytest.param({"type": "zscore", "nonzero": False}, [1, 3, 100, 300], (2, 2, 1, 1), [-1, 1, -1, 1], id="zscore-per-channel"),
    # Per slice along K: slice k=0 holds 1, 3 and slice k=1 holds 10, 30 → each becomes −1, 1.
    pytest.param({"type": "zscore_slice"}, [1, 10, 3, 30], (1, 2, 1, 2), [-1, -1, 1, 1], id="zscore-slice"),
    # 0 … 100: 5th percentile 5, 95th 95 → (x − 5) / 90, clipped.
    pytest.param(
        {"type": "percentile"}, list(range(0, 101, 5)), (1, 21, 1, 1), np.clip((np.arange(0, 101, 5) - 5) / 90, 0, 1), id="percentile-5-95"
    ),
    pytest.param(
        {"type": "percentile", "lower": 10, "upper": 90, "b_min": -1, "b_max": 1, "clip": False},
        list(range(0, 101, 10)),
        (1, 11, 1, 1),
        (np.arange(0, 101, 10) - 10) / 80 * 2 - 1,
        id="percentile-10-90-unclipped",
    ),
    # A skull-stripped volume: ten zeros and 10 … 100. Over the non-zero voxels the 0th and 100th
    # percentiles are 10 and 100 (zeros clip to 0); over all voxels the 0th would be 0.
    pytest.param(
        {"type": "percentile", "lower": 0, "upper": 100, "nonzero": True},
        [0] * 10 + list(range(10, 101, 10)),
        (1, 20, 1, 1),
        [0] * 10 + list((np.arange(10, 101, 10) - 10) / 90),
        id="percentile-nonzero",
    ),
    pytest.param(
        {"type": "percentile", "lower": 0, "upper": 100, "nonzero": True},
        [0, 0, 0],
        (1, 3, 1, 1),
        [0, 0, 0],
        id="percentile-nonzero-all-zero",
    ),
    pytest.param({"type": "minmax"}, [2, 4, 6], (1, 3, 1, 1), [0, 0.5, 1], id="minmax"),
    pytest.param(
        {"type": "minmax", "b_min": -1, "b_max": 1},
        [2, 4, 6, 10, 20, 30],
        (2, 3, 1, 1),
        [-1, 0, 1, -1, 0, 1],
        id="minmax-range-per-channel",
    ),
    pytest.param({"type": "none"}, [2, 4, 6], (1, 3, 1, 1), [2, 4, 6], id="none"),
]


@pytest.mark.parametrize("normalization, values, shape, expected", NORMALIZATION_CASES)
def test_normalize_known_values(normalization, values, shape, expected):
    out = preprocessing.normalize(cijk(values, shape), normalization)
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_allclose(out.ravel(), np.asarray(expected, dtype=float), atol=1e-5)


def test_zscore_slice_each_slice_has_mean_0_std_1():
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(2, 9, 7, 5)) * np.arange(1, 6) * 10 + np.arange(5) * 100).astype(np.float32)
    out = preprocessing.normalize(array, {"type": "zscore_slice"})
    for channel in range(2):
        for k in range(5):
            np.testing.assert_allclose(out[channel, :, :, k].mean(), 0.0, atol=1e-5)
            np.testing.assert_allclose(out[channel, :, :, k].std(), 1.0, atol=1e-4)


def test_unknown_normalization_is_a_clear_error():
    with pytest.raises(MedSegUNetError, match="Unknown normalisation 'histogram'"):
        preprocessing.normalize(np.zeros((1, 2, 2, 2), np.float32), {"type": "histogram"})


def roiGrid(direction=np.eye(3), size=(10, 12, 4), spacing=(1.0, 1.0, 2.5)) -> sitk.Image:
    return preprocessing.emptyLike(phantoms.makeGrid(size, spacing, direction, (5.0, -3.0, 2.0)))


def edgeBox(image: sitk.Image) -> np.ndarray:
    """The 8 voxel-edge corners in LPS, sorted, so boxes compare regardless of axis order."""
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
        for corner in np.array(np.meshgrid(*[(-0.5, s - 0.5) for s in image.GetSize()], indexing="ij")).reshape(3, -1).T
    ]
    return np.asarray(sorted(np.round(corners, 6).tolist()))


# [parameters (spacing, orientation), input shape (ROI size), expected (model grid size, spacing)]
MODEL_GRID_CASES = [
    pytest.param(None, None, (10, 12, 4), ((10, 12, 4), (1.0, 1.0, 2.5)), id="keep"),
    pytest.param((2.0, 2.0, None), None, (10, 12, 4), ((5, 6, 4), (2.0, 2.0, 2.5)), id="coarser-in-plane"),
    pytest.param((0.5, None, 5.0), None, (10, 12, 4), ((20, 12, 2), (0.5, 1.0, 5.0)), id="mixed"),
    pytest.param(None, "RAS", (10, 12, 4), ((10, 12, 4), (1.0, 1.0, 2.5)), id="RAS"),
    # PIL: i along P (was j), j along I (was k, flipped), k along L (was i).
    pytest.param(None, "PIL", (10, 12, 4), ((12, 4, 10), (1.0, 2.5, 1.0)), id="PIL-permuted"),
    pytest.param((2.0, 5.0, 1.0), "PIL", (10, 12, 4), ((6, 2, 10), (2.0, 5.0, 1.0)), id="PIL-respaced"),
]


@pytest.mark.parametrize("spacing, orientation, shape, expected", MODEL_GRID_CASES)
def test_model_grid_keeps_the_voxel_edge_box(spacing, orientation, shape, expected):
    grid = roiGrid(size=shape)
    model = preprocessing.modelGrid(grid, spacing, orientation)
    assert model.GetSize() == expected[0]
    np.testing.assert_allclose(model.GetSpacing(), expected[1])
    np.testing.assert_allclose(edgeBox(model), edgeBox(grid), atol=1e-6)


def test_model_grid_orientation_codes():
    model = preprocessing.modelGrid(roiGrid(), None, "RAS")
    direction = np.asarray(model.GetDirection()).reshape(3, 3)
    # RAS: index i grows towards patient Right (−x in LPS), j towards Anterior (−y), k towards Superior.
    np.testing.assert_allclose(direction, np.diag([-1.0, -1.0, 1.0]))
    oblique = preprocessing.modelGrid(roiGrid(phantoms.rotationMatrix((1, 0, 0), 18)), None, "LPS")
    np.testing.assert_allclose(np.asarray(oblique.GetDirection()).reshape(3, 3), phantoms.rotationMatrix((1, 0, 0), 18), atol=1e-12)


def test_resample_onto_is_physical_space():
    # Linear interpolation reproduces an affine function exactly: f(p) = a·p + b sampled on one oblique
    # grid and resampled onto another must equal f at the new grid's voxel centres (inside the source).
    a, b = np.array([0.3, -0.7, 1.1]), 5.0
    source = phantoms.makeGrid((30, 30, 30), (1.0, 1.2, 0.9), phantoms.rotationMatrix((1, 2, 3), 25), (0, 0, 0))
    values = sitk.GetImageFromArray((phantoms.physicalPoints(source) @ a + b).astype(np.float32))
    values.CopyInformation(source)
    target = phantoms.makeGrid((8, 9, 7), (1.5, 1.5, 2.0), phantoms.rotationMatrix((0, 1, 0), -40) @ np.diag([1, -1, 1]), (1.0, -1.0, 0.5))
    resampled = preprocessing.resampleOnto(values, target)
    assert resampled.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(resampled), phantoms.physicalPoints(target) @ a + b, atol=1e-3)


def test_resample_onto_same_grid_is_a_cast_copy():
    image = sitk.Cast(phantoms.paintSpheres(roiGrid(), [((5.0, -3.0, 2.0), 3.0, 7.0)]), sitk.sitkInt16)
    same = preprocessing.resampleOnto(image, roiGrid())
    assert same.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(same), sitk.GetArrayFromImage(image))
    nearest = preprocessing.resampleOnto(image, roiGrid(spacing=(1.0, 1.0, 2.5000001)), sitk.sitkNearestNeighbor, sitk.sitkUInt8)
    assert nearest.GetPixelID() == sitk.sitkUInt8


def test_image_to_ijk_axis_order_and_round_trip():
    grid = roiGrid()
    array = np.arange(10 * 12 * 4, dtype=np.float32).reshape(10, 12, 4)  # I, J, K
    image = preprocessing.ijkToImage(array, grid)
    assert image.GetSize() == (10, 12, 4)
    assert image.GetPixel(3, 5, 2) == array[3, 5, 2]
    np.testing.assert_array_equal(preprocessing.imageToIJK(image), array)
    assert image.GetOrigin() == grid.GetOrigin()


def test_image_to_ijk_of_a_temporary_image_stays_valid():
    # Regression: a bare sitk.GetArrayViewFromImage of a temporary image reads freed memory.
    view = preprocessing.imageToIJK(sitk.Image([40, 40, 40], sitk.sitkFloat32) + 3.0)
    gc.collect()
    clutter = [sitk.Image([40, 40, 40], sitk.sitkFloat32) + 7.0 for _ in range(4)]
    assert view.shape == (40, 40, 40)
    assert view.min() == 3.0 and view.max() == 3.0
    del clutter


def test_prepare_inputs_stacks_channels_in_card_order():
    grid = roiGrid()
    first = sitk.Image(grid.GetSize(), sitk.sitkFloat32) + 2.0
    first.CopyInformation(grid)
    # The second input is on a finer rotated grid that covers the first: resampled values stay 5.
    secondGrid = phantoms.makeGrid((40, 40, 40), (0.8, 0.8, 0.8), phantoms.rotationMatrix((0, 0, 1), 30), (5.0, -3.0, 2.0))
    second = sitk.Image(secondGrid.GetSize(), sitk.sitkInt16) + 5
    second.CopyInformation(secondGrid)
    array = preprocessing.prepareInputs([first, second], grid, {"type": "none"})
    assert array.shape == (2, 10, 12, 4) and array.dtype == np.float32
    np.testing.assert_allclose(array[0], 2.0)
    np.testing.assert_allclose(array[1], 5.0)


# [parameters (target grid direction, interpolator), input (a 20°-tilted source), expected: the
# IJK array equals SimpleITK's own resampling onto the grid, read in I, J, K order]
IJK_RESAMPLING_CASES = [
    pytest.param(np.diag([1.0, 1.0, 1.0]), sitk.sitkLinear, id="axial-linear"),
    pytest.param(np.diag([-1.0, -1.0, 1.0]), sitk.sitkNearestNeighbor, id="ras-flipped-nearest"),
    pytest.param(np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), sitk.sitkLinear, id="permuted-left-handed-linear"),
    pytest.param(phantoms.rotationMatrix((1, 2, 3), 35), sitk.sitkNearestNeighbor, id="oblique-nearest"),
]


@pytest.mark.parametrize("direction, interpolator", IJK_RESAMPLING_CASES)
def test_resample_to_ijk_equals_resampling_then_transposing(direction, interpolator):
    source = phantoms.makeGrid((30, 26, 18), (1.0, 1.2, 2.0), phantoms.rotationMatrix((1, 0, 0), 20), (0.0, 0.0, 0.0))
    values = sitk.GetImageFromArray(np.random.default_rng(0).random(tuple(reversed(source.GetSize()))).astype(np.float32))
    values.CopyInformation(source)
    # 80 mm along I from a point inside the source: longer than the source in any direction.
    target = phantoms.makeGrid((40, 23, 11), (2.0, 0.9, 1.7), direction, (10.0, 10.0, 5.0))
    ijk = preprocessing.resampleToIJK(values, target, interpolator)
    expected = sitk.GetArrayFromImage(sitk.Resample(values, target, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)).transpose(
        2, 1, 0
    )
    assert ijk.shape == (40, 23, 11) and ijk.flags.c_contiguous and ijk.flags.writeable
    np.testing.assert_allclose(ijk, expected, atol=1e-6)
    assert 0 < np.count_nonzero(ijk) < ijk.size  # the target reaches outside the source: zeros there


def test_permuted_grid_holds_the_same_voxel_centres():
    grid = phantoms.makeGrid((5, 7, 3), (1.0, 2.0, 3.0), phantoms.rotationMatrix((0, 1, 1), 25) @ np.diag([1, -1, 1]), (4.0, -2.0, 9.0))
    for order in [(2, 1, 0), (1, 2, 0), (0, 2, 1)]:
        permuted = preprocessing.permutedGrid(grid, order)
        assert permuted.GetSize() == tuple(grid.GetSize()[axis] for axis in order)
        index = (4, 6, 2)  # i, j, k of grid
        point = grid.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(permuted.TransformIndexToPhysicalPoint(tuple(index[axis] for axis in order)), point, atol=1e-12)
    assert preprocessing.ijkOrderedGrid(grid).GetSize() == (3, 7, 5)


def test_parallel_axes_and_kji_view_undo_a_reorientation():
    roi = phantoms.makeGrid((6, 5, 4), (1.0, 1.0, 2.0), phantoms.rotationMatrix((0, 0, 1), 15), (0.0, 0.0, 0.0))
    oriented = sitk.DICOMOrient(preprocessing.emptyLike(roi), "SAR")  # axes permuted and flipped
    order = preprocessing.parallelAxes(roi, preprocessing.ijkOrderedGrid(oriented))
    assert sorted(order) == [0, 1, 2]
    values = sitk.GetImageFromArray(np.arange(6 * 5 * 4, dtype=np.float32).reshape(4, 5, 6))
    values.CopyInformation(roi)
    stored = sitk.GetArrayFromImage(preprocessing.resampleOnto(values, preprocessing.permutedGrid(roi, order), sitk.sitkNearestNeighbor))
    np.testing.assert_array_equal(preprocessing.permutedToKJI(stored, order), sitk.GetArrayFromImage(values))
    tilted = phantoms.makeGrid((6, 5, 4), (1.0, 1.0, 2.0), phantoms.rotationMatrix((1, 0, 0), 30), (0.0, 0.0, 0.0))
    assert preprocessing.parallelAxes(roi, tilted) is None


@pytest.mark.parametrize(
    "nonzero, values, expected",
    [
        (False, [0.0, 1.0, 2.0, 3.0], (1.5, np.std([0.0, 1.0, 2.0, 3.0]))),
        (True, [0.0, 1.0, 2.0, 3.0], (2.0, np.std([1.0, 2.0, 3.0]))),
        (True, [0.0, 0.0], None),
    ],
)
def test_mean_and_std_known_values(nonzero, values, expected):
    result = preprocessing.meanAndStd(np.asarray(values, dtype=np.float32), nonzero)
    assert result == (pytest.approx(expected) if expected is not None else None)


def test_mean_and_std_of_a_large_grid_equals_numpy_in_float64():
    values = np.random.default_rng(1).normal(300.0, 40.0, 3_000_001).astype(np.float32)  # several chunks, one partial
    mean, std = preprocessing.meanAndStd(values)
    assert mean == pytest.approx(values.astype(np.float64).mean(), rel=1e-12)
    assert std == pytest.approx(values.astype(np.float64).std(), rel=1e-12)


def test_volume_statistics_are_taken_once_per_case():
    volume = np.arange(1000, dtype=np.int16).reshape(10, 10, 10)
    steps = [{"type": "percentile", "lower": 10, "upper": 90, "statistics": "volume"}, {"type": "zscore", "nonzero": False}]
    memo: dict = {}
    first = preprocessing.normalize(np.full((1, 4, 4, 4), 500.0, np.float32), steps, [volume], volumeStatistics=memo)
    assert list(memo.values()) == [pytest.approx((99.9, 899.1))]
    # The second grid of the same case reuses them (a stale value here shows in the output).
    memo[next(iter(memo))] = (0.0, 1000.0)
    second = preprocessing.normalize(np.array([[[[250.0, 750.0]]]], np.float32), steps, [volume], volumeStatistics=memo)
    np.testing.assert_allclose(second.ravel(), [-1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(first, 0.0)
