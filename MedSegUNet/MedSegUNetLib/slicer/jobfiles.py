"""One Slicer run as files: what the worker process reads and writes, and the computation itself.

:func:`computeJob` is the engine's part of a Slicer run (model, ROI with an optional Markups box,
network, statistics); it runs in the worker process (:mod:`worker`) or, without one, in the
calling process. :func:`writeRequest` puts a job's volumes into a folder as uncompressed NRRD
(world geometry: LPS, as ``SimpleITK`` writes them) and returns the request;
:func:`runRequest` (in the worker) answers it with the label map, the sigmoid regions and the
statistics; :func:`readAnswer` (in the parent) turns the answer back into a
:class:`pipeline.SegmentationResult`.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from ..engine import geometry, modelcard, pipeline, statistics
from ..engine.errors import GeometryError, MedSegUNetError
from ..engine.request import SegmentationRequest
from ..engine.writer import runReport


def computeJob(
    request: SegmentationRequest,
    card: dict,
    images: Sequence[sitk.Image],
    names: Sequence[str],
    inputNames: Sequence[str],
    roiImages: Sequence[sitk.Image] = (),
    roiNames: Sequence[str] = (),
    referenceParts: list | None = None,
    progress: pipeline.ProgressReporter | None = None,
):
    """Load the model (cached), segment as ``request`` says, and compute the statistics.

    Args:
        images, roiImages: the inputs (card order) and the series limiting the ROI (LPS).
        referenceParts: a reference segmentation's parts to compare with (see ``nodes.referencePartsFromNode``).

    Returns:
        (:class:`pipeline.SegmentationResult`, statistics report, reference masks or None,
        warnings).
    """
    progress = progress or pipeline.ProgressReporter()
    progress.stage(pipeline.Stage.LOADING)
    model = modelcard.loadModel(request.modelPath, request.device)
    progress.checkCancel()
    options = request.pipelineOptions(card)
    roi = None
    if request.roiBox is not None:
        # The Markups box joins the intersection as one more extent: exact even when the box and
        # the series are tilted (an intersection of two index ranges could be a few voxels larger).
        progress.stage(pipeline.Stage.ROI)
        box = geometry.boxGeometry(*(np.asarray(part, dtype=float) for part in request.roiBox))
        try:
            roi = pipeline.resolveROI(images, names, roiImages, roiNames, options["useROI"], options["marginMM"], boxes=[box])
        except MedSegUNetError:
            raise GeometryError("The Markups ROI does not overlap the input volumes: move it onto the region to segment.") from None
    result = pipeline.segmentImages(
        images, model, names=names, roiImages=roiImages, roiNames=roiNames, roi=roi, progress=progress, **options
    )
    progress.stage(pipeline.Stage.STATISTICS)
    referenceMasks, warnings = None, []
    if referenceParts is not None:
        referenceMasks, warnings = statistics.referenceMasksFromParts(referenceParts, images[0], card["labels"], "reference segmentation")
    report, notes = runReport(result, card, images, referenceMasks)  # the engine's one report, as the command line's
    warnings += notes
    progress.checkCancel()
    return result, report, referenceMasks, warnings


def _write(image: sitk.Image, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    sitk.WriteImage(image, path, False)
    return name


def writeRequest(job, folder: str) -> dict:
    """A worker request for ``job`` (a ``SegmentationJob``), its volumes written into ``folder``."""
    reference = None
    if job.referenceParts is not None:
        reference = [
            {"file": _write(image, folder, f"reference{index}.nrrd"), "value": value}
            for index, (image, value) in enumerate(job.referenceParts)
        ]
    return {
        "command": "segment",
        "folder": folder,
        "request": job.request.toDict(),
        "inputs": [
            {"file": _write(image, folder, f"input{index}.nrrd"), "name": name, "inputName": inputName}
            for index, (image, name, inputName) in enumerate(zip(job.images, job.names, job.inputNames))
        ],
        "roi": [
            {"file": _write(image, folder, f"roi{index}.nrrd"), "name": name}
            for index, (image, name) in enumerate(zip(job.roiImages, job.roiNames))
        ],
        "reference": reference,
    }


def runRequest(request: dict, progressCallback: Callable[[float, str], None] | None = None) -> dict:
    """Answer a request in this process (the worker): files in, files and figures out."""
    from ..engine.volumes import readVolume

    folder = request["folder"]

    def read(item: dict) -> sitk.Image:
        return readVolume(os.path.join(folder, item["file"]))

    segmentation = SegmentationRequest.fromDict(request["request"])
    card = modelcard.readCard(segmentation.modelPath)
    reference = request.get("reference")
    referenceParts = (
        [(sitk.ReadImage(os.path.join(folder, item["file"])), item["value"]) for item in reference] if reference is not None else None
    )
    progress = pipeline.ProgressReporter(progressCallback)
    result, report, _, warnings = computeJob(
        segmentation,
        card,
        [read(item) for item in request["inputs"]],
        [item["name"] for item in request["inputs"]],
        [item["inputName"] for item in request["inputs"]],
        [read(item) for item in request["roi"]],
        [item["name"] for item in request["roi"]],
        referenceParts,
        progress,
    )
    progress.endStage()  # the statistics stage's time, which the result's timings do not hold yet
    regions = None
    if result.regions is not None:
        regions = []
        for index, region in enumerate(result.regions):
            image = sitk.GetImageFromArray(region.astype(np.uint8))
            image.CopyInformation(result.labelmap)
            regions.append(_write(image, folder, f"region{index}.nrrd"))
    return {
        "labelmap": _write(result.labelmap, folder, "labelmap.nrrd"),
        "regions": regions,
        "roi": {
            "ijkMin": result.roi.ijkMin.tolist(),
            "ijkMax": result.roi.ijkMax.tolist(),
            "volumeNames": list(result.roi.volumeNames),
            "marginMM": result.roi.marginMM,
        },
        "device": result.device,
        "timings": {**result.timings, **progress.timings},
        "report": report,
        "warnings": warnings,
    }


def readAnswer(answer: dict, folder: str, job) -> pipeline.SegmentationResult:
    """The worker's answer as a result on the job's reference grid (geometry taken from the job)."""
    labelmap = sitk.ReadImage(os.path.join(folder, answer["labelmap"]))
    labelmap.CopyInformation(job.images[0])
    regions = None
    if answer.get("regions") is not None:
        regions = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, name))).astype(bool) for name in answer["regions"]])
    roi = geometry.RegionOfInterest(
        reference=geometry.VolumeGeometry.fromImage(job.images[0], job.names[0]),
        ijkMin=np.asarray(answer["roi"]["ijkMin"], dtype=int),
        ijkMax=np.asarray(answer["roi"]["ijkMax"], dtype=int),
        volumeNames=list(answer["roi"]["volumeNames"]),
        marginMM=float(answer["roi"]["marginMM"]),
    )
    return pipeline.SegmentationResult(
        labelmap=labelmap, roi=roi, card=job.card, device=answer["device"], timings=dict(answer["timings"]), regions=regions
    )


__all__ = ["computeJob", "writeRequest", "runRequest", "readAnswer"]
