"""Writing segmentations: Slicer ``.seg.nrrd`` (with slicerio) or plain label maps (SimpleITK).

Everything is written in the reference geometry, staged, read back and renamed at the end
(:class:`volumes.StagedOutputs`), so a failure never leaves a partial file.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .errors import OutputError, firstLine
from .geometry import boundingBox, ijkToLPSFromImage
from .modelcard import exclusiveLabels
from .paths import pathSuffix
from .staging import StagedOutputs, checkOutputPath, imageVerifier, writeImageFile
from .terminology import slicerioTerminology

SEGMENTATION_SUFFIXES = (".seg.nrrd", ".nrrd", ".nii.gz", ".nii", ".mha", ".mhd", ".dcm")


def segmentationDict(labelmap: sitk.Image, labels: Sequence[dict], regions: np.ndarray | None = None) -> dict:
    """A slicerio segmentation (IJK voxels, ijkToLPS) holding one segment per card label.

    Segments keep the card's label values, names and colours. Softmax results share layer 0;
    sigmoid regions (``regions``, bool ``L, K, J, I``), which may overlap, get one layer each, as
    Slicer stores overlapping segments.
    """
    if regions is None:
        voxels = np.ascontiguousarray(sitk.GetArrayViewFromImage(labelmap).transpose(2, 1, 0)).astype(np.uint8)
        layerOf = {int(label["value"]): 0 for label in labels}
        masks = {int(label["value"]): voxels == int(label["value"]) for label in labels}
    else:
        voxels = np.stack(
            [np.asarray(region, dtype=np.uint8).transpose(2, 1, 0) * int(label["value"]) for label, region in zip(labels, regions)]
        )
        voxels = np.ascontiguousarray(voxels)
        layerOf = {int(label["value"]): index for index, label in enumerate(labels)}
        masks = {int(label["value"]): voxels[index] != 0 for index, label in enumerate(labels)}
    segments = []
    for label in labels:
        value = int(label["value"])
        segment = {
            "id": f"Segment_{value}",
            "name": label["name"],
            "color": [float(c) for c in label["color"]],
            "labelValue": value,
            "layer": layerOf[value],
        }
        terminology = slicerioTerminology(label)
        if terminology is not None:
            segment["terminology"] = terminology
        box = boundingBox(masks[value])
        if box is not None:
            segment["extent"] = [int(v) for axis in range(3) for v in (box[0][axis], box[1][axis])]
        segments.append(segment)
    return {
        "voxels": voxels,
        "ijkToLPS": ijkToLPSFromImage(labelmap),
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
    }


# pynrrd writes header fields as ASCII; Slicer reads and writes them as UTF-8. Names that are not
# ASCII are written under an ASCII placeholder, then put back as UTF-8 bytes in the header.
_NAME_PLACEHOLDER = "medsegunet-utf8-name-{index}"


def writeSegmentationFile(path: str, segmentation: dict) -> None:
    """slicerio's ``.seg.nrrd`` writer, with segment names in UTF-8 as Slicer writes them.

    slicerio's default gzip level 9 takes seconds on a fragmented label map; level 1 is about 100×
    faster there for files about 1.5× larger.
    """
    import slicerio

    names = {}
    for index, segment in enumerate(segmentation["segments"]):
        if not segment["name"].isascii():
            names[_NAME_PLACEHOLDER.format(index=index)] = segment["name"]
            segment["name"] = _NAME_PLACEHOLDER.format(index=index)
    slicerio.write_segmentation(path, segmentation, compression_level=1)
    if not names:
        return
    with open(path, "rb") as stream:
        content = stream.read()
    end = content.index(b"\n\n") + 2  # the header ends at the first blank line; the data follows
    header = content[:end]
    for placeholder, name in names.items():
        header = header.replace(placeholder.encode("ascii"), name.encode("utf-8"))
    with open(path, "wb") as stream:
        stream.write(header + content[end:])


def segmentNamesInHeader(path: str) -> list[str]:
    """The ``SegmentN_Name`` fields of a ``.seg.nrrd`` header, read as UTF-8 (Slicer's encoding)."""
    names: dict[int, str] = {}
    with open(path, "rb") as stream:
        for line in stream:
            if not line.strip():
                break
            text = line.decode("utf-8", "replace").rstrip("\n")
            key, separator, value = text.partition(":=")
            if separator and key.startswith("Segment") and key.endswith("_Name") and key[7:-5].isdigit():
                names[int(key[7:-5])] = value
    return [names[index] for index in sorted(names)]


def segmentationVerifier(labelmap: sitk.Image, labels: Sequence[dict], regions: np.ndarray | None = None):
    """A check that a written ``.seg.nrrd`` reads back with every segment's voxels."""
    import slicerio

    from .pipeline import labelMasks

    def verify(path: str) -> None:
        try:
            written = slicerio.read_segmentation(path)
        except Exception as error:  # pynrrd raises plain exceptions on a cut-short file
            raise OutputError(
                f"The output '{os.path.basename(path)}' was written incompletely ({firstLine(error)[:100]}); nothing was kept: check the "
                "free disk space."
            ) from None
        if segmentNamesInHeader(path) != [label["name"] for label in labels]:
            raise OutputError(
                f"The output '{os.path.basename(path)}' reads back with other segment names than were written; nothing was kept."
            )
        layers = written["voxels"] if written["voxels"].ndim == 4 else written["voxels"][np.newaxis]
        for label, mask, segment in zip(labels, labelMasks(labelmap, labels, regions), written["segments"]):
            readBack = layers[int(segment.get("layer", 0))] == int(segment["labelValue"])
            if int(readBack.sum()) != int(mask.sum()):
                raise OutputError(
                    f"The output '{os.path.basename(path)}' reads back different from what was written (segment '{label['name']}'); "
                    "nothing was kept."
                )

    return verify


def stageSegmentation(
    outputs: StagedOutputs, labelmap: sitk.Image, labels: Sequence[dict], path: str | os.PathLike, regions: np.ndarray | None = None
) -> None:
    """Write a segmentation into a run's staged outputs (renamed with the others, once verified).

    Args:
        labelmap: uint8 label map on the reference grid (LPS).
        labels: the card's labels.
        path: ``.seg.nrrd`` for Slicer (overlapping sigmoid regions kept as layers), or ``.nrrd`` /
            ``.nii.gz`` / ``.nii`` / ``.mha`` / ``.mhd`` for a plain label map (regions painted in
            card order, later labels over earlier ones).
        regions: sigmoid cards: the region masks.
    """
    if pathSuffix(path) == ".seg.nrrd":
        temporary = outputs.stage(path, SEGMENTATION_SUFFIXES, verify=segmentationVerifier(labelmap, labels, regions))
        writeSegmentationFile(temporary, segmentationDict(labelmap, labels, regions))
    else:
        image = sitk.Cast(labelmap, sitk.sitkUInt8)
        temporary = outputs.stage(path, SEGMENTATION_SUFFIXES, verify=imageVerifier(image))
        writeImageFile(image, temporary, True)


def writeSegmentation(labelmap: sitk.Image, labels: Sequence[dict], path: str | os.PathLike, regions: np.ndarray | None = None) -> None:
    """Write one segmentation file atomically (see :func:`stageSegmentation`)."""
    checkOutputPath(path, SEGMENTATION_SUFFIXES)
    with StagedOutputs() as outputs:
        stageSegmentation(outputs, labelmap, labels, path, regions)


PROBABILITY_SCALE_KEY = "medsegunet_probability_scale"


def probabilityImage(result, asUInt8: bool = False) -> sitk.Image:
    """The result's per-class probabilities on the reference grid, one vector component per class.

    Softmax: background first, then the labels; sigmoid: one component per label. Outside the ROI
    the probabilities are 0 (background 1 for softmax). ``asUInt8`` stores round(255 × p) and
    records the scale (1/255) in the header under ``medsegunet_probability_scale``.

    Args:
        result: a :class:`pipeline.SegmentationResult` made with ``keepProbabilities``.
    """
    reference = result.labelmap
    shape = tuple(reversed(reference.GetSize()))
    channels = result.probabilities.shape[0]
    dtype = np.uint8 if asUInt8 else np.float32
    full = np.zeros((*shape, channels), dtype=dtype)
    if exclusiveLabels(result.card):
        full[..., 0] = 255 if asUInt8 else 1.0
    window = result.roi.slices()
    for index in range(channels):
        values = result.probabilities[index]
        full[(*window, index)] = np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8) if asUInt8 else values
    image = sitk.GetImageFromArray(full, isVector=True)
    image.CopyInformation(reference)
    image.SetMetaData(PROBABILITY_SCALE_KEY, f"{1 / 255 if asUInt8 else 1.0:.10g}")
    return image


def stageProbabilities(outputs: StagedOutputs, result, path: str | os.PathLike, asUInt8: bool = False) -> None:
    """Write the probabilities (``.nrrd``, ``.nii.gz``, ``.mha``) into a run's staged outputs."""
    image = probabilityImage(result, asUInt8)
    temporary = outputs.stage(path, (".nrrd", ".nii.gz", ".nii", ".mha"), verify=imageVerifier(image))
    writeImageFile(image, temporary, True)


__all__ = [
    "SEGMENTATION_SUFFIXES",
    "segmentationDict",
    "writeSegmentationFile",
    "segmentNamesInHeader",
    "segmentationVerifier",
    "stageSegmentation",
    "writeSegmentation",
    "probabilityImage",
    "stageProbabilities",
]
