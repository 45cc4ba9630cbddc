"""Writing segmentations: Slicer ``.seg.nrrd`` (with slicerio) or plain label maps (SimpleITK).

Everything is written in the reference geometry, to a temporary name first and renamed at the
end, so a failure never leaves a partial file.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .geometry import ijkToLPSFromImage
from .volumes import atomicOutput, checkOutputPath, pathSuffix

SEGMENTATION_SUFFIXES = (".seg.nrrd", ".nrrd", ".nii.gz", ".nii", ".mha", ".mhd")


def segmentationDict(labelmap: sitk.Image, labels: Sequence[dict]) -> dict:
    """A slicerio segmentation (IJK voxels, ijkToLPS) holding one segment per card label.

    Segments keep the card's label values, names and colours, all in layer 0.
    """
    voxels = np.ascontiguousarray(sitk.GetArrayViewFromImage(labelmap).transpose(2, 1, 0)).astype(np.uint8)
    segments = []
    for label in labels:
        value = int(label["value"])
        mask = voxels == value
        segment = {
            "id": f"Segment_{value}",
            "name": label["name"],
            "color": [float(c) for c in label["color"]],
            "labelValue": value,
            "layer": 0,
        }
        if mask.any():
            nonzero = np.nonzero(mask)
            segment["extent"] = [int(v) for axis in nonzero for v in (axis.min(), axis.max())]
        segments.append(segment)
    return {
        "voxels": voxels,
        "ijkToLPS": ijkToLPSFromImage(labelmap),
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
    }


def writeSegmentation(labelmap: sitk.Image, labels: Sequence[dict], path: str | os.PathLike) -> None:
    """Write a label map as ``.seg.nrrd`` (named, coloured segments) or as a plain label map.

    Args:
        labelmap: uint8 label map on the reference grid (LPS).
        labels: the card's labels.
        path: ``.seg.nrrd`` for Slicer, or ``.nrrd`` / ``.nii.gz`` / ``.nii`` / ``.mha`` for a label map.
    """
    import slicerio

    checkOutputPath(path, SEGMENTATION_SUFFIXES)
    with atomicOutput(path) as temporary:
        if pathSuffix(path) == ".seg.nrrd":
            # slicerio's default gzip level 9 takes seconds on a fragmented label map; level 1 is
            # about 100× faster there for files about 1.5× larger.
            slicerio.write_segmentation(temporary, segmentationDict(labelmap, labels), compression_level=1)
        else:
            sitk.WriteImage(sitk.Cast(labelmap, sitk.sitkUInt8), temporary, True)
