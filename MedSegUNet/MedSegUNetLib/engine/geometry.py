"""Volume geometry and the multi-series region of interest (seed 004, done exactly).

Frames and layouts used here:

- ``ijkToLPS`` / ``ijkToRAS``: 4×4 homogeneous matrices, mm, mapping a continuous voxel index
  (i, j, k) — SimpleITK's and Slicer's index order — to ITK's LPS or Slicer's RAS frame.
- A volume's *extent* is its voxel-edge box: continuous index −0.5 … size−0.5 on each axis.
- The ROI of a set of volumes is the set of *reference* voxels whose centres lie inside every
  volume's extent, reported as the inclusive IJK index range bounding them.

The intersection is computed with half-spaces in the reference's continuous index space (each
volume contributes six), not with world-axis-aligned bounding boxes, which over-estimate the ROI
of tilted series (3× along one axis on ProstateX-0000, whose axial and coronal series are tilted
18°).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .errors import MedSegUNetError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# A voxel centre on an extent's face counts as inside; the tolerance (in index units of the
# tested volume) absorbs rounding of DICOM geometry, where neighbouring series share faces.
EXTENT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class VolumeGeometry:
    """The sampling grid of a volume.

    Args:
        ijkToLPS: 4×4, mm; continuous IJK index to ITK's LPS frame.
        size: number of voxels along i, j, k.
        name: display name used in messages.
    """

    ijkToLPS: np.ndarray
    size: tuple[int, int, int]
    name: str = "volume"

    @classmethod
    def fromImage(cls, image: sitk.Image, name: str = "volume") -> "VolumeGeometry":
        return cls(ijkToLPS=ijkToLPSFromImage(image), size=tuple(int(s) for s in image.GetSize()), name=name)

    @classmethod
    def fromIJKToRAS(cls, ijkToRAS: np.ndarray, size: Sequence[int], name: str = "volume") -> "VolumeGeometry":
        return cls(ijkToLPS=LPS_TO_RAS @ np.asarray(ijkToRAS, dtype=float), size=tuple(int(s) for s in size), name=name)

    @property
    def ijkToRAS(self) -> np.ndarray:
        return LPS_TO_RAS @ self.ijkToLPS

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.ijkToLPS[:3, :3], axis=0)


def ijkToLPSFromImage(image: sitk.Image) -> np.ndarray:
    """The image's index-to-physical matrix.

    Returns:
        ijkToLPS: 4×4, mm (direction × spacing in the upper 3×3, origin in the last column).
    """
    matrix = np.eye(4)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def ijkToRASFromImage(image: sitk.Image) -> np.ndarray:
    """ijkToRAS: 4×4, mm, as Slicer's ``vtkMRMLVolumeNode.GetIJKToRASMatrix`` gives it."""
    return LPS_TO_RAS @ ijkToLPSFromImage(image)


def setImageGeometryFromIJKToLPS(image: sitk.Image, ijkToLPS: np.ndarray) -> sitk.Image:
    """Set origin, spacing and direction of ``image`` from a 4×4 ijkToLPS matrix (in place)."""
    axes = np.asarray(ijkToLPS, dtype=float)[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (axes / spacing).ravel()))
    image.SetOrigin(tuple(float(v) for v in np.asarray(ijkToLPS)[:3, 3]))
    return image


def extentHalfSpaces(geometry: VolumeGeometry, referenceIJKToLPS: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A volume's extent as half-spaces ``A @ ijk <= b`` in the reference's continuous index space.

    Returns:
        (A, b): 6×3 and 6 arrays; rows are the low and high faces along the volume's i, j, k.
    """
    referenceToVolume = np.linalg.inv(geometry.ijkToLPS) @ referenceIJKToLPS
    linear, offset = referenceToVolume[:3, :3], referenceToVolume[:3, 3]
    high = np.asarray(geometry.size, dtype=float) - 0.5 + EXTENT_TOLERANCE
    low = -0.5 - EXTENT_TOLERANCE
    # low <= linear @ x + offset <= high, written as rows of A x <= b.
    a = np.vstack([-linear, linear])
    b = np.concatenate([offset - low, high - offset])
    return a, b


def pointsInsideExtents(ijkPoints: np.ndarray, reference: VolumeGeometry, volumes: Sequence[VolumeGeometry]) -> np.ndarray:
    """Which reference-index points lie inside every volume's extent.

    Args:
        ijkPoints: N×3 continuous reference indices (i, j, k).

    Returns:
        N booleans.
    """
    inside = np.ones(len(ijkPoints), dtype=bool)
    for volume in volumes:
        a, b = extentHalfSpaces(volume, reference.ijkToLPS)
        inside &= np.all(ijkPoints @ a.T <= b, axis=1)
    return inside


def _polytopeBounds(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Axis bounds of the bounded polytope ``A x <= b`` from its vertices, or None when empty.

    Every triple of planes is solved at once (batched determinants and solves: three series give
    816 triples, a cohort's every case pays this).
    """
    triples = np.array(list(itertools.combinations(range(len(a)), 3)), dtype=int)
    if not len(triples):
        return None
    subs = a[triples]  # triples × 3 × 3
    scale = np.linalg.norm(a, axis=1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        determinants = np.linalg.det(subs)
    regular = np.abs(determinants) >= 1e-12 * np.prod(scale[triples], axis=1)
    if not regular.any():
        return None
    points = np.linalg.solve(subs[regular], b[triples[regular]][..., None])[..., 0]
    feasible = np.all(points @ a.T <= b + 1e-9 * (1.0 + np.abs(b)), axis=1)
    if not feasible.any():
        return None
    vertices = points[feasible]
    return vertices.min(axis=0), vertices.max(axis=0)


def _slabHasVoxel(axis: int, index: int, low: np.ndarray, high: np.ndarray, insideTest) -> bool:
    """Whether the slab ``ijk[axis] == index`` of the box low..high holds a voxel centre inside."""
    ranges = [np.arange(low[d], high[d] + 1) if d != axis else np.array([index]) for d in range(3)]
    grid = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    return bool(insideTest(grid).any())


@dataclass
class RegionOfInterest:
    """The ROI on the reference grid.

    Args:
        reference: the reference volume's geometry.
        ijkMin: the first voxel of the inclusive reference index range (i, j, k).
        ijkMax: the last voxel of that range (i, j, k).
        volumeNames: the volumes whose extents were intersected.
        marginMM: margin added around the exact intersection.
    """

    reference: VolumeGeometry
    ijkMin: np.ndarray
    ijkMax: np.ndarray
    volumeNames: list[str] = field(default_factory=list)
    marginMM: float = 0.0

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.ijkMax - self.ijkMin + 1)

    @property
    def sizeMM(self) -> np.ndarray:
        return (self.ijkMax - self.ijkMin + 1) * self.reference.spacing

    def cornersRAS(self) -> np.ndarray:
        """The 8 voxel-edge corners of the ROI box (index ijkMin−0.5 … ijkMax+0.5), RAS mm, 8×3."""
        low, high = self.ijkMin - 0.5, self.ijkMax + 0.5
        corners = np.array([[c[0], c[1], c[2], 1.0] for c in itertools.product(*zip(low, high))])
        return (self.reference.ijkToRAS @ corners.T).T[:, :3]

    def centerRAS(self) -> np.ndarray:
        """Centre of the ROI box, RAS mm."""
        centre = np.append((self.ijkMin + self.ijkMax) / 2.0, 1.0)
        return (self.reference.ijkToRAS @ centre)[:3]

    def slices(self) -> tuple[slice, slice, slice]:
        """Index slices of the ROI into a KJI array of the reference."""
        return tuple(slice(int(self.ijkMin[d]), int(self.ijkMax[d]) + 1) for d in (2, 1, 0))

    def grown(self, marginMM: float) -> "RegionOfInterest":
        """This ROI grown by ``marginMM`` per side (clipped to the reference): the network's context."""
        low, high = growIndexRange(self.ijkMin, self.ijkMax, self.reference, marginMM)
        return RegionOfInterest(
            reference=self.reference, ijkMin=low, ijkMax=high, volumeNames=list(self.volumeNames), marginMM=self.marginMM + float(marginMM)
        )

    def toDict(self) -> dict:
        return {
            "reference": self.reference.name,
            "volumes": list(self.volumeNames),
            "ijk_min": [int(v) for v in self.ijkMin],
            "ijk_max": [int(v) for v in self.ijkMax],
            "size_voxels": list(self.size),
            "size_mm": [round(float(v), 6) for v in self.sizeMM],
            "margin_mm": float(self.marginMM),
            "ras_corners": [[round(float(v), 6) for v in corner] for corner in self.cornersRAS()],
            "ras_center": [round(float(v), 6) for v in self.centerRAS()],
        }


def sameCorners(a: np.ndarray, b: np.ndarray, tolerance: float = 1e-3) -> bool:
    """Whether two sets of 8 points (mm) are equal up to order (a flipped box axis reorders corners)."""
    distances = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    return bool(np.all(distances.min(axis=1) < tolerance) and np.all(distances.min(axis=0) < tolerance))


def computeROI(reference: VolumeGeometry, others: Sequence[VolumeGeometry] = (), marginMM: float = 0.0) -> RegionOfInterest:
    """The reference voxels whose centres lie inside every volume's extent.

    The continuous intersection polytope is found from its vertices; its bounding index range is
    then shrunk slab by slab until each boundary slab holds a voxel centre that passes the exact
    half-space test, so the result equals a brute-force check of every voxel centre.

    Args:
        reference: the grid the ROI is expressed on (first model input).
        others: the other volumes whose extents limit the ROI (the reference always does).
        marginMM: grow the range by ceil(margin / spacing) voxels per side, then clip.

    Returns:
        the ROI as an inclusive IJK range on the reference.

    Raises:
        MedSegUNetError: when no reference voxel centre lies inside all volumes.
    """
    volumes = [reference, *others]
    halfSpaces = [extentHalfSpaces(v, reference.ijkToLPS) for v in volumes]
    a = np.vstack([h[0] for h in halfSpaces])
    b = np.concatenate([h[1] for h in halfSpaces])
    bounds = _polytopeBounds(a, b)
    names = [v.name for v in volumes]
    noOverlap = MedSegUNetError(
        f"The volumes do not overlap ({', '.join(names)}): choose series of the same patient and frame of reference."
    )
    if bounds is None:
        raise noOverlap
    size = np.asarray(reference.size)
    low = np.maximum(np.ceil(bounds[0] - 1e-9), 0).astype(int)
    high = np.minimum(np.floor(bounds[1] + 1e-9), size - 1).astype(int)

    def insideTest(points: np.ndarray) -> np.ndarray:
        return np.all(points @ a.T <= b, axis=1)

    for axis in range(3):
        while low[axis] <= high[axis] and not _slabHasVoxel(axis, low[axis], low, high, insideTest):
            low[axis] += 1
        while high[axis] >= low[axis] and not _slabHasVoxel(axis, high[axis], low, high, insideTest):
            high[axis] -= 1
        if low[axis] > high[axis]:
            raise noOverlap
    low, high = growIndexRange(low, high, reference, marginMM)
    return RegionOfInterest(reference=reference, ijkMin=low, ijkMax=high, volumeNames=names, marginMM=float(marginMM))


def growIndexRange(low: np.ndarray, high: np.ndarray, reference: VolumeGeometry, marginMM: float) -> tuple[np.ndarray, np.ndarray]:
    """An inclusive IJK range grown by ceil(margin / spacing) voxels per side, clipped to the reference."""
    if not marginMM:
        return np.asarray(low), np.asarray(high)
    grow = np.ceil(float(marginMM) / reference.spacing - 1e-9).astype(int)
    return np.maximum(np.asarray(low) - grow, 0), np.minimum(np.asarray(high) + grow, np.asarray(reference.size) - 1)


def fullROI(reference: VolumeGeometry) -> RegionOfInterest:
    """The whole reference grid as an ROI (for ``--no-roi``)."""
    return RegionOfInterest(
        reference=reference, ijkMin=np.zeros(3, dtype=int), ijkMax=np.asarray(reference.size, dtype=int) - 1, volumeNames=[reference.name]
    )


def boxGeometry(centerRAS: Sequence[float], axesRAS: np.ndarray, radiusMM: Sequence[float], name: str = "Markups ROI") -> VolumeGeometry:
    """An oriented box given in RAS (a Markups ROI) as a "volume" of 1×1×1 voxel whose edges are its faces.

    Its extent (voxel-edge box) is then exactly the box, so it joins :func:`computeROI` as one more
    volume.

    Args:
        centerRAS: box centre, RAS mm.
        axesRAS: 3×3, columns are the box's unit axes in RAS.
        radiusMM: half-lengths along those axes, mm.
    """
    axes = np.asarray(axesRAS, dtype=float)
    radius = np.asarray(radiusMM, dtype=float)
    boxToRAS = np.eye(4)
    boxToRAS[:3, :3] = axes @ np.diag(2.0 * radius)
    boxToRAS[:3, 3] = np.asarray(centerRAS, dtype=float)
    return VolumeGeometry.fromIJKToRAS(boxToRAS, (1, 1, 1), name=name)


def roiFromRASBox(
    reference: VolumeGeometry, centerRAS: Sequence[float], axesRAS: np.ndarray, radiusMM: Sequence[float]
) -> RegionOfInterest:
    """The reference voxels whose centres lie inside an oriented box given in RAS (a Markups ROI)."""
    return computeROI(reference, [boxGeometry(centerRAS, axesRAS, radiusMM, "ROI box")])


def boundingBox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive index bounds of the non-zero voxels of an array, in its own axis order.

    Args:
        mask: any array (a KJI label map gives k, j, i bounds).

    Returns:
        (low, high) index arrays, or None when the array is all zero. Computed from the
        projections along each axis, far cheaper than ``np.nonzero`` on a large volume.
    """
    low, high = [], []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(np.any(mask, axis=others))
        if present.size == 0:
            return None
        low.append(present[0])
        high.append(present[-1])
    return np.asarray(low), np.asarray(high)


def cropToROI(image: sitk.Image, roi: RegionOfInterest) -> sitk.Image:
    """The ROI sub-grid of a reference-grid image (exact, no interpolation)."""
    return sitk.RegionOfInterest(image, [int(v) for v in roi.size], [int(v) for v in roi.ijkMin])


__all__ = [
    "LPS_TO_RAS",
    "EXTENT_TOLERANCE",
    "VolumeGeometry",
    "ijkToLPSFromImage",
    "ijkToRASFromImage",
    "setImageGeometryFromIJKToLPS",
    "extentHalfSpaces",
    "pointsInsideExtents",
    "RegionOfInterest",
    "sameCorners",
    "computeROI",
    "growIndexRange",
    "fullROI",
    "boxGeometry",
    "roiFromRASBox",
    "boundingBox",
    "cropToROI",
]
