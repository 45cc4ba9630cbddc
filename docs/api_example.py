"""Segment one case from Python with the engine's curated surface (docs/api.md).

Usage::

    python docs/api_example.py MODEL.pt OUTPUT_FOLDER REFERENCE [ROI_SERIES ...]

REFERENCE is the model's input (a volume file or a DICOM series folder); the other series limit the
region of interest, as ``medsegunet segment --roi-from`` does. The script writes
``OUTPUT_FOLDER/result.seg.nrrd`` and ``OUTPUT_FOLDER/result-statistics.json`` (the command line's
statistics schema) and prints the ROI, as an index range of the reference (IJK), and each segment's
volume. Torch runs in this process: in Slicer, use the module's logic, whose worker runs it.
"""

from __future__ import annotations

import os
import sys

from MedSegUNetLib.engine import (
    OutputPlan,
    SegmentationRequest,
    loadModel,
    readVolume,
    runReport,
    segmentImages,
    statisticsDocument,
    writeResults,
)


# --8<-- [start:main]
def main(modelPath: str, output: str, reference: str, *roiSeries: str) -> None:
    request = SegmentationRequest(modelPath=modelPath, inputs=(reference,), roiSeries=roiSeries, device="cpu")
    model = loadModel(request.modelPath, device=request.device)
    card = model.card
    images = [readVolume(path) for path in request.inputs]  # SimpleITK images: LPS, KJI arrays
    roiImages = [readVolume(path) for path in request.roiSeries]
    result = segmentImages(images, model, roiImages=roiImages, **request.pipelineOptions(card))
    report, notes = runReport(result, card, images)
    inputs = [(spec["name"], path, None) for spec, path in zip(card["inputs"], request.inputs)]
    document = statisticsDocument(report, result, card, request.modelPath, inputs, request.roiSeries, notes=notes)
    os.makedirs(output, exist_ok=True)
    plan = OutputPlan(segmentation=os.path.join(output, "result.seg.nrrd"), statisticsJSON=os.path.join(output, "result-statistics.json"))
    writeResults(plan, result, card, report, document, images)
    print(f"ROI: reference IJK {[int(v) for v in result.roi.ijkMin]} to {[int(v) for v in result.roi.ijkMax]}")
    for segment in report["segments"]:
        print(f"{segment['name']}: {segment['volume_cm3']:.2f} cm³")


# --8<-- [end:main]


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
