"""The multi-series region of interest: exact oriented-box intersection (``geometry.computeROI``).

Definition pinned down here: the ROI is the set of reference voxels whose centres lie inside every
volume's voxel-edge extent (continuous index −0.5 … size−0.5), reported as the inclusive IJK range
(i, j, k) bounding them, optionally grown by ceil(margin / spacing) voxels and clipped.

Arrays: voxel-centre lists are N×3 in (i, j, k) order; physical points are LPS mm unless named RAS.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PROSTATEX_0000_ROI
from MedSegUNetLib.engine import geometry
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.models import phantoms

IDENTITY = np.eye(3)
SWAP_IJ = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # left-handed (det −1)
FLIP_I = np.diag([-1.0, 1.0, 1.0])


def grid(size, spacing=(1.0, 1.0, 1.0), direction=IDENTITY, center=(0.0, 0.0, 0.0)) -> sitk.Image:
    return phantoms.makeGrid(size, spacing, direction, center)


def geometryOf(image: sitk.Image, name: str) -> geometry.VolumeGeometry:
    return geometry.VolumeGeometry.fromImage(image, name)


def bruteForceRange(reference: sitk.Image, others) -> tuple[np.ndarray, np.ndarray] | None:
    """The inclusive IJK range of reference voxels inside every extent, from SimpleITK's own geometry.

    Independent of :mod:`geometry`: voxel centres come from the image's origin/spacing/direction
    (``phantoms.physicalPoints``) and each volume's continuous index from its inverse affine.
    """
    points = phantoms.physicalPoints(reference).reshape(-1, 3)  # K, J, I order flattened, LPS
    size = reference.GetSize()
    k, j, i = np.meshgrid(*(np.arange(s) for s in reversed(size)), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3)
    inside = np.ones(len(points), dtype=bool)
    for image in [reference, *others]:
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        scaled = direction @ np.diag(image.GetSpacing())
        index = np.linalg.solve(scaled, (points - np.asarray(image.GetOrigin())).T).T
        tolerance = geometry.EXTENT_TOLERANCE
        inside &= np.all((index >= -0.5 - tolerance) & (index <= np.asarray(image.GetSize()) - 0.5 + tolerance), axis=1)
    if not inside.any():
        return None
    return ijk[inside].min(axis=0), ijk[inside].max(axis=0)


def roiOf(reference: sitk.Image, others, marginMM: float = 0.0) -> geometry.RegionOfInterest:
    return geometry.computeROI(
        geometryOf(reference, "reference"),
        [geometryOf(image, f"volume{index + 1}") for index, image in enumerate(others)],
        marginMM=marginMM,
    )


REFERENCE_10_12_8 = dict(size=(10, 12, 8))
ANISOTROPIC_REFERENCE = dict(size=(40, 40, 6), spacing=(0.5, 0.5, 3.0))
CUBE_10MM = dict(size=(5, 5, 5), spacing=(2.0, 2.0, 2.0))

# [parameters (reference grid, other grids, margin), input shape (reference size), expected (ijk_min, ijk_max)]
ROI_CASES = [
    pytest.param(REFERENCE_10_12_8, [REFERENCE_10_12_8], 0.0, (10, 12, 8), ((0, 0, 0), (9, 11, 7)), id="identical"),
    # Shifted 3.2 mm along x: the other extent starts at ref index 3.2 − 0.5 = 2.7 → first centre 3.
    pytest.param(
        REFERENCE_10_12_8, [dict(size=(10, 12, 8), center=(3.2, 0, 0))], 0.0, (10, 12, 8), ((3, 0, 0), (9, 11, 7)), id="shifted-x"
    ),
    # Shifted 2.5 mm: the other's face passes exactly through the centres of i = 2, which count as inside.
    pytest.param(
        REFERENCE_10_12_8,
        [dict(size=(10, 12, 8), center=(2.5, 0, 0))],
        0.0,
        (10, 12, 8),
        ((2, 0, 0), (9, 11, 7)),
        id="face-through-centres",
    ),
    pytest.param(
        REFERENCE_10_12_8, [dict(size=(10, 12, 8), center=(-1.7, 2.2, -3.0))], 0.0, (10, 12, 8), ((0, 2, 0), (7, 11, 4)), id="shifted-xyz"
    ),
    # A 10×10 mm square turned 45° about z is the diamond |x|+|y| ≤ 7.07; centres at half-integers reach |x| = 6.5.
    pytest.param(
        dict(size=(20, 20, 4)),
        [dict(size=(10, 10, 4), direction=phantoms.rotationMatrix((0, 0, 1), 45))],
        0.0,
        (20, 20, 4),
        ((3, 3, 0), (16, 16, 3)),
        id="rotated-45",
    ),
    # Flipped directions change the index order, not the box: same answer as a plain shift.
    pytest.param(
        REFERENCE_10_12_8,
        [dict(size=(10, 12, 8), direction=FLIP_I, center=(3.2, 0, 0))],
        0.0,
        (10, 12, 8),
        ((3, 0, 0), (9, 11, 7)),
        id="flipped-other",
    ),
    # Reference flipped along i: x = 4.5 − i, the other covers x ≥ −1.8 → i ≤ 6.3.
    pytest.param(
        dict(size=(10, 12, 8), direction=FLIP_I),
        [dict(size=(10, 12, 8), center=(3.2, 0, 0))],
        0.0,
        (10, 12, 8),
        ((0, 0, 0), (6, 11, 7)),
        id="flipped-reference",
    ),
    # Left-handed other (i along y): 6 voxels along y cover |y| ≤ 3, y = j − 5.5 → j = 3 … 8.
    pytest.param(
        REFERENCE_10_12_8, [dict(size=(6, 10, 8), direction=SWAP_IJ)], 0.0, (10, 12, 8), ((0, 3, 0), (9, 8, 7)), id="left-handed-other"
    ),
    pytest.param(
        dict(size=(12, 10, 8), direction=SWAP_IJ),
        [dict(size=(6, 10, 8))],
        0.0,
        (12, 10, 8),
        ((1, 2, 0), (10, 7, 7)),
        id="left-handed-reference",
    ),
    pytest.param(
        dict(size=(12, 10, 8), direction=SWAP_IJ),
        [dict(size=(10, 6, 8))],
        0.0,
        (12, 10, 8),
        ((3, 0, 0), (8, 9, 7)),
        id="left-handed-reference-cropped",
    ),
    # Anisotropic reference (0.5 × 0.5 × 3 mm) and a 10 mm cube: |x| ≤ 5 → i = 10 … 29; z ∈ ±1.5, ±4.5 → k = 1 … 4.
    pytest.param(ANISOTROPIC_REFERENCE, [CUBE_10MM], 0.0, (40, 40, 6), ((10, 10, 1), (29, 29, 4)), id="anisotropic"),
    # Margins grow by ceil(margin / spacing): 1.2 mm → 3 voxels in-plane, 1 slice; then clip.
    pytest.param(ANISOTROPIC_REFERENCE, [CUBE_10MM], 1.2, (40, 40, 6), ((7, 7, 0), (32, 32, 5)), id="margin-1.2mm"),
    pytest.param(ANISOTROPIC_REFERENCE, [CUBE_10MM], 1.0, (40, 40, 6), ((8, 8, 0), (31, 31, 5)), id="margin-exact-multiple"),
    pytest.param(ANISOTROPIC_REFERENCE, [CUBE_10MM], 100.0, (40, 40, 6), ((0, 0, 0), (39, 39, 5)), id="margin-clipped"),
    # Two others: the intersection of both shifts.
    pytest.param(
        REFERENCE_10_12_8,
        [dict(size=(10, 12, 8), center=(3.2, 0, 0)), dict(size=(10, 12, 8), center=(0, -4.0, 1.0))],
        0.0,
        (10, 12, 8),
        ((3, 0, 1), (9, 7, 7)),
        id="two-others",
    ),
]


@pytest.mark.parametrize("referenceGrid, otherGrids, margin, shape, expected", ROI_CASES)
def test_roi_known_ranges(referenceGrid, otherGrids, margin, shape, expected):
    reference = grid(**referenceGrid)
    others = [grid(**g) for g in otherGrids]
    assert reference.GetSize() == shape
    roi = roiOf(reference, others, margin)
    assert (roi.ijkMin.tolist(), roi.ijkMax.tolist()) == (list(expected[0]), list(expected[1]))
    if margin == 0:
        low, high = bruteForceRange(reference, others)
        assert (low.tolist(), high.tolist()) == (list(expected[0]), list(expected[1]))


@pytest.mark.parametrize("degrees", [18.0, 45.0])
@pytest.mark.parametrize("axis", [(1, 0, 0), (0, 1, 0), (1, 1, 1)])
def test_roi_oblique_equals_brute_force(axis, degrees):
    # A thin tilted slab across a thick reference, tilted about several axes.
    reference = grid((30, 30, 20), (1.0, 1.0, 1.0))
    tilted = grid((30, 30, 4), (1.0, 1.0, 1.0), phantoms.rotationMatrix(axis, degrees), center=(0.3, -0.2, 0.1))
    roi = roiOf(reference, [tilted])
    low, high = bruteForceRange(reference, [tilted])
    assert roi.ijkMin.tolist() == low.tolist() and roi.ijkMax.tolist() == high.tolist()


def test_roi_18_degrees_known_answer():
    # Rotation about x by 18° (s = sin 18°, c = cos 18°): a centre (y, z) is inside when |−s·y + c·z| ≤ 2 and
    # |c·y + s·z| ≤ 15. At z = 5.5 (k = 15) y = 10.5 … 13.5 qualify; at z = 6.5 y would need 13.53 … 13.66,
    # which holds no half-integer centre. So k = 4 … 15 (symmetric).
    reference = grid((30, 30, 20))
    tilted = grid((30, 30, 4), direction=phantoms.rotationMatrix((1, 0, 0), 18))
    roi = roiOf(reference, [tilted])
    assert roi.ijkMin.tolist() == [0, 0, 4] and roi.ijkMax.tolist() == [29, 29, 15]


def test_no_overlap_error_names_volumes():
    reference = geometryOf(grid((10, 10, 10)), "T2 axial")
    far = geometryOf(grid((10, 10, 10), center=(100.0, 0, 0)), "T2 sagittal")
    with pytest.raises(MedSegUNetError) as error:
        geometry.computeROI(reference, [far])
    message = str(error.value)
    assert "T2 axial" in message and "T2 sagittal" in message and "\n" not in message


def test_no_voxel_centre_inside_is_no_overlap():
    # The boxes overlap by 0.4 mm, but no reference voxel centre lies in the overlap.
    reference = geometryOf(grid((10, 10, 10)), "a")
    other = geometryOf(grid((10, 10, 10), center=(9.6, 0, 0)), "b")
    with pytest.raises(MedSegUNetError, match="do not overlap"):
        geometry.computeROI(reference, [other])


def test_ras_corners_and_size_mm():
    # Identity LPS grid with origin 0: ROI index −0.5 … 1.5 → LPS corners ±; RAS flips x and y.
    reference = sitk.Image([2, 2, 2], sitk.sitkFloat32)
    roi = roiOf(reference, [])
    expected = {(-x, -y, z) for x, y, z in itertools.product((-0.5, 1.5), repeat=3)}
    assert {tuple(c) for c in roi.cornersRAS().tolist()} == expected
    assert roi.toDict()["ras_corners"] and len(roi.toDict()["ras_corners"]) == 8


def test_ras_corners_oblique_match_simpleitk():
    reference = grid((40, 40, 6), (0.5, 0.5, 3.0), phantoms.rotationMatrix((1, 0.2, 0), 18), center=(10, -20, 5))
    roi = roiOf(reference, [grid(**CUBE_10MM, center=(10, -20, 5))])
    corners = []
    for index in itertools.product(*zip(roi.ijkMin - 0.5, roi.ijkMax + 0.5)):
        x, y, z = reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in index])
        corners.append((-x, -y, z))
    np.testing.assert_allclose(roi.cornersRAS(), np.asarray(corners), atol=1e-9)
    data = roi.toDict()
    np.testing.assert_allclose(data["size_mm"], (roi.ijkMax - roi.ijkMin + 1) * np.array([0.5, 0.5, 3.0]), atol=1e-6)
    assert set(data) >= {"reference", "ijk_min", "ijk_max", "ras_corners", "size_mm"}
    assert data["reference"] == "reference"


def test_size_mm_anisotropic():
    roi = roiOf(grid(**ANISOTROPIC_REFERENCE), [grid(**CUBE_10MM)])
    np.testing.assert_allclose(roi.sizeMM, [10.0, 10.0, 12.0])
    assert roi.toDict()["size_mm"] == [10.0, 10.0, 12.0]


def test_slices_and_crop_select_the_roi():
    reference = grid(**ANISOTROPIC_REFERENCE)
    values = np.arange(np.prod(reference.GetSize()), dtype=np.float32).reshape(tuple(reversed(reference.GetSize())))
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(reference)
    roi = roiOf(reference, [grid(**CUBE_10MM)])
    cropped = geometry.cropToROI(image, roi)
    assert cropped.GetSize() == roi.size == (20, 20, 4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(cropped), values[roi.slices()])
    np.testing.assert_allclose(cropped.GetOrigin(), reference.TransformIndexToPhysicalPoint([10, 10, 1]))


def test_full_roi():
    roi = geometry.fullROI(geometryOf(grid((7, 8, 9)), "ref"))
    assert roi.ijkMin.tolist() == [0, 0, 0] and roi.ijkMax.tolist() == [6, 7, 8]


def test_volume_geometry_matches_simpleitk():
    image = grid((5, 6, 7), (0.7, 0.8, 2.5), phantoms.rotationMatrix((0.3, 1, 0.2), 33) @ FLIP_I, center=(4, 5, 6))
    geom = geometryOf(image, "oblique")
    for index in [(0, 0, 0), (4, 5, 6), (1.5, -0.5, 3.25)]:
        np.testing.assert_allclose(
            (geom.ijkToLPS @ np.append(index, 1.0))[:3], image.TransformContinuousIndexToPhysicalPoint(index), atol=1e-9
        )
    np.testing.assert_allclose(geom.spacing, [0.7, 0.8, 2.5])
    np.testing.assert_allclose(geom.ijkToRAS, geometry.LPS_TO_RAS @ geom.ijkToLPS)
    again = geometry.VolumeGeometry.fromIJKToRAS(geom.ijkToRAS, geom.size)
    np.testing.assert_allclose(again.ijkToLPS, geom.ijkToLPS)
    copy = geometry.setImageGeometryFromIJKToLPS(sitk.Image([5, 6, 7], sitk.sitkUInt8), geom.ijkToLPS)
    np.testing.assert_allclose(copy.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(copy.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(copy.GetDirection(), image.GetDirection(), atol=1e-9)


def test_roi_from_ras_box_equals_brute_force():
    reference = grid((30, 30, 10), (1.0, 1.0, 2.0), phantoms.rotationMatrix((0, 0, 1), 10))
    axesRAS = phantoms.rotationMatrix((0, 0, 1), 30)
    roi = geometry.roiFromRASBox(geometryOf(reference, "ref"), centerRAS=(2.0, -3.0, 1.0), axesRAS=axesRAS, radiusMM=(6.0, 4.0, 5.0))
    # The same box as an image: RAS axes → LPS directions, edges at ±radius.
    box = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    geometry.setImageGeometryFromIJKToLPS(
        box,
        geometry.LPS_TO_RAS
        @ np.block([[axesRAS @ np.diag([12.0, 8.0, 10.0]), np.array([[2.0], [-3.0], [1.0]])], [np.zeros((1, 3)), np.ones((1, 1))]]),
    )
    low, high = bruteForceRange(reference, [box])
    assert roi.ijkMin.tolist() == low.tolist() and roi.ijkMax.tolist() == high.tolist()


# ---------------------------------------------------------------------------------------------
# Property tests on random oblique boxes.


@st.composite
def obliqueGrids(draw, maxSize: int = 9):
    size = tuple(draw(st.integers(1, maxSize)) for _ in range(3))
    spacing = tuple(draw(st.floats(0.4, 3.0)) for _ in range(3))
    axis = [draw(st.floats(-1.0, 1.0)) for _ in range(3)]
    if np.linalg.norm(axis) < 1e-3:
        axis = [0.0, 0.0, 1.0]
    direction = phantoms.rotationMatrix(axis, draw(st.floats(0.0, 180.0)))
    if draw(st.booleans()):
        direction = direction @ FLIP_I  # left-handed
    center = tuple(draw(st.floats(-2.5, 2.5)) for _ in range(3))
    return grid(size, spacing, direction, center)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reference=obliqueGrids(maxSize=10), others=st.lists(obliqueGrids(), min_size=1, max_size=3), data=st.data())
def test_roi_property_random_oblique_boxes(reference, others, data):
    expected = bruteForceRange(reference, others)
    if expected is None:
        with pytest.raises(MedSegUNetError):
            roiOf(reference, others)
        return
    roi = roiOf(reference, others)
    # Equals the brute-force voxel-centre check.
    assert roi.ijkMin.tolist() == expected[0].tolist() and roi.ijkMax.tolist() == expected[1].tolist()
    # Never leaves the reference, and every boundary slab of the range holds a voxel inside every volume.
    assert np.all(roi.ijkMin >= 0) and np.all(roi.ijkMax < np.asarray(reference.GetSize()))
    referenceGeometry = geometryOf(reference, "reference")
    otherGeometries = [geometryOf(image, f"v{index}") for index, image in enumerate(others)]
    box = np.stack(np.meshgrid(*(np.arange(lo, hi + 1) for lo, hi in zip(roi.ijkMin, roi.ijkMax)), indexing="ij"), -1).reshape(-1, 3)
    inside = geometry.pointsInsideExtents(box.astype(float), referenceGeometry, otherGeometries)
    for axis in range(3):
        assert inside[box[:, axis] == roi.ijkMin[axis]].any() and inside[box[:, axis] == roi.ijkMax[axis]].any()
    # Invariant to the order of the other volumes.
    order = data.draw(st.permutations(range(len(others))))
    permuted = geometry.computeROI(referenceGeometry, [otherGeometries[i] for i in order])
    assert permuted.ijkMin.tolist() == roi.ijkMin.tolist() and permuted.ijkMax.tolist() == roi.ijkMax.tolist()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reference=obliqueGrids(maxSize=10), other=obliqueGrids(), margin=st.floats(0.0, 6.0))
def test_roi_property_margin(reference, other, margin):
    expected = bruteForceRange(reference, [other])
    if expected is None:
        return
    roi = roiOf(reference, [other], margin)
    grow = np.ceil(margin / np.asarray(reference.GetSpacing()) - 1e-9).astype(int)
    assert roi.ijkMin.tolist() == np.maximum(expected[0] - grow, 0).tolist()
    assert roi.ijkMax.tolist() == np.minimum(expected[1] + grow, np.asarray(reference.GetSize()) - 1).tolist()


# ---------------------------------------------------------------------------------------------
# Real data: ProstateX T2 axial (reference), sagittal and coronal.


def allVoxelCentres(size) -> np.ndarray:
    return np.stack(np.meshgrid(*(np.arange(s) for s in size), indexing="ij"), -1).reshape(-1, 3).astype(float)


def worldBoxShortcut(geometries) -> tuple[np.ndarray, np.ndarray]:
    """The ROI as intersecting world-axis-aligned bounding boxes (the approximation the issue rejects)."""
    lows, highs = [], []
    for geom in geometries:
        corners = np.array([[*c, 1.0] for c in itertools.product(*((-0.5, s - 0.5) for s in geom.size))])
        points = (geom.ijkToLPS @ corners.T).T[:, :3]
        lows.append(points.min(axis=0))
        highs.append(points.max(axis=0))
    low, high = np.max(lows, axis=0), np.min(highs, axis=0)
    reference = geometries[0]
    centres = allVoxelCentres(reference.size)
    points = (reference.ijkToLPS[:3, :3] @ centres.T).T + reference.ijkToLPS[:3, 3]
    inside = centres[np.all((points >= low) & (points <= high), axis=1)]
    return inside.min(axis=0), inside.max(axis=0)


@pytest.fixture(scope="module")
def prostate_geometries(prostate_images):
    return [geometryOf(image, name) for name, image in prostate_images.items()]


def test_prostatex_roi_equals_brute_force(prostate_geometries):
    reference, *others = prostate_geometries
    roi = geometry.computeROI(reference, others)
    inside = geometry.pointsInsideExtents(allVoxelCentres(reference.size), reference, others)
    centres = allVoxelCentres(reference.size)[inside]
    assert roi.ijkMin.tolist() == centres.min(axis=0).astype(int).tolist()
    assert roi.ijkMax.tolist() == centres.max(axis=0).astype(int).tolist()
    assert (roi.ijkMin.tolist(), roi.ijkMax.tolist()) == (list(PROSTATEX_0000_ROI[0]), list(PROSTATEX_0000_ROI[1]))
    reversed_ = geometry.computeROI(reference, others[::-1])
    assert reversed_.ijkMin.tolist() == roi.ijkMin.tolist() and reversed_.ijkMax.tolist() == roi.ijkMax.tolist()


def test_prostatex_roi_independent_brute_force(prostate_images):
    images = list(prostate_images.values())
    low, high = bruteForceRange(images[0], images[1:])
    assert (low.tolist(), high.tolist()) == (list(PROSTATEX_0000_ROI[0]), list(PROSTATEX_0000_ROI[1]))


def test_prostatex_world_box_shortcut_is_three_times_too_large(prostate_geometries):
    reference, *others = prostate_geometries
    roi = geometry.computeROI(reference, others)
    low, high = worldBoxShortcut(prostate_geometries)
    ratio = (high - low + 1) / (roi.ijkMax - roi.ijkMin + 1)
    # The 18° tilt of the axial and coronal series inflates the axis-aligned box along j (A–P).
    assert ratio[1] > 2.5
    assert ratio.max() == ratio[1]
    np.testing.assert_allclose(ratio[[0, 2]], 1.0)


def test_prostatex_0001_roi_equals_brute_force(prostate_series_0001):
    from MedSegUNetLib.engine.volumes import readVolume

    images = [readVolume(path) for path in prostate_series_0001.values()]
    geometries = [geometryOf(image, name) for name, image in zip(prostate_series_0001, images)]
    roi = geometry.computeROI(geometries[0], geometries[1:])
    low, high = bruteForceRange(images[0], images[1:])
    assert roi.ijkMin.tolist() == low.tolist() and roi.ijkMax.tolist() == high.tolist()
    assert (roi.ijkMin.tolist(), roi.ijkMax.tolist()) == ([126, 148, 0], [261, 237, 18])
