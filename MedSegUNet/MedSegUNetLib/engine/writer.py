"""The one output step of a run, for every surface: a result, its report and an output plan in; the
segmentation, probabilities, statistics (CSV and JSON), overview and QC pictures out, staged,
verified and renamed together (nothing is kept when one fails).

``segment``, ``batch`` (local and Ray), ``demo`` and the Slicer worker compute the report with
:func:`runReport`; the first three write files with :func:`writeResults`, and every statistics
JSON is :func:`statisticsDocument` (schema ``medsegunet.statistics/1``, in the card reference).

Images are SimpleITK (LPS); the result is a :class:`pipeline.SegmentationResult` on the reference
grid (label map K, J, I).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import SimpleITK as sitk

if TYPE_CHECKING:  # the pipeline (and torch's, MONAI's helpers) is imported where a run needs it
    import numpy as np

    from .pipeline import SegmentationResult
from .cardview import cardView

STATISTICS_SCHEMA = "medsegunet.statistics/1"


@dataclass(frozen=True)
class OutputPlan:
    """Which files a run writes; None: not written.

    Args:
        segmentation: ``.seg.nrrd``, a plain label map (``.nrrd``, ``.nii.gz``, ...) or ``.dcm``
            (DICOM SEG of ``dicomSeries``, the reference's series folder).
        probabilities: the per-class probabilities (``probabilitiesUInt8``: round(255 p)).
        statisticsCSV: the statistics table.
        statisticsJSON: the statistics document (:func:`statisticsDocument`).
        preview: the overview PNG (axial slices, the other series with the ROI box).
        pictures: more PNGs (path → 2D RGB image), e.g. a cohort's QC tile.
    """

    segmentation: str | None = None
    dicomSeries: str | None = None
    probabilities: str | None = None
    probabilitiesUInt8: bool = False
    statisticsCSV: str | None = None
    statisticsJSON: str | None = None
    preview: str | None = None
    pictures: dict = field(default_factory=dict)


def runReport(
    result: SegmentationResult, card: dict, images: Sequence[sitk.Image], referenceMasks: Sequence[np.ndarray] | None = None
) -> tuple[dict, list[str]]:
    """The statistics of a result and its quality notes.

    Args:
        result: the run's :class:`pipeline.SegmentationResult`.
        images: the model's input volumes in card order (intensity statistics are taken on them).
        referenceMasks: one bool KJI mask per card label, to compare with (overlap metrics).

    Returns:
        (the report: ``segments``, ``mean_iou`` with a reference; one line per segment outside the
        card's quality range).
    """
    from . import statistics

    inputNames = cardView(card).inputNames
    report = statistics.computeStatistics(result.labelmap, card, dict(zip(inputNames, images)), referenceMasks, result.regions)
    notes = [
        f"{segment['name']}: {segment['qc']} (the card's quality range): check the result"
        for segment in report["segments"]
        if segment["qc"] != "ok"
    ]
    return report, notes


def statisticsDocument(
    report: dict,
    result: SegmentationResult,
    card: dict,
    modelPath: str,
    inputs: Sequence[tuple[str, str, int | None]],
    roiSeries: Sequence[str] = (),
    case: str | None = None,
    notes: Sequence[str] = (),
    modelSHA256: str | None = None,
    warnings: Sequence[str] = (),
    timings: dict | None = None,
) -> dict:
    """The statistics JSON of one run, the same keys whichever surface ran it.

    Args:
        inputs: (card input name, path, channel or None) per model input.
        roiSeries: the other series whose extents limited the ROI (paths).
        case: the cohort's case id (None outside a cohort).
        notes: how the case's series were found (a cohort's matching notes).
        timings: seconds per stage (default: the result's).
    """
    return {
        "schema": STATISTICS_SCHEMA,
        **report,
        "case": case,
        "inputs": [{"name": name, "path": path, "channel": channel} for name, path, channel in inputs],
        "roi_series": list(roiSeries),
        "notes": list(notes),
        "roi": result.roi.toDict(),
        "network_region": result.networkROI.toDict() if getattr(result, "networkROI", None) is not None else None,
        "model": {
            "path": os.path.abspath(modelPath),
            "name": cardView(card).name,
            "version": cardView(card).version,
            "sha256": modelSHA256,
            "card": card,
        },
        "device": result.device,
        "compiled": getattr(result, "compiled", None),
        "warnings": list(warnings),
        "timing_s": {key: round(value, 4) for key, value in (result.timings if timings is None else timings).items()},
    }


def writeResults(
    plan: OutputPlan,
    result: SegmentationResult,
    card: dict,
    report: dict,
    document: dict,
    images: Sequence[sitk.Image],
    others: dict | None = None,
    title: str = "",
) -> None:
    """Write every file of ``plan``: staged, verified, then renamed together.

    Args:
        images: the model's input volumes in card order (the first is drawn in the overview).
        others: the other series to draw the ROI box on in the overview (name → image, up to two).
        title: the overview's title (the case or the input's name).

    Raises:
        OutputError: a file could not be written or did not read back as written; nothing was kept.
    """
    from . import statistics
    from .outputs import stageProbabilities, stageSegmentation
    from .staging import StagedOutputs, imageVerifier, textVerifier, writeImageFile, writeTextFile

    inputNames = cardView(card).inputNames
    with StagedOutputs() as staged:
        if plan.segmentation and plan.dicomSeries:
            from .dicomseg import stageDicomSegmentation

            stageDicomSegmentation(staged, plan.dicomSeries, result.labelmap, card, plan.segmentation, result.regions)
        elif plan.segmentation:
            stageSegmentation(staged, result.labelmap, card["labels"], plan.segmentation, result.regions)
        if plan.probabilities:
            stageProbabilities(staged, result, plan.probabilities, plan.probabilitiesUInt8)
        if plan.preview:
            from .preview import writeOverview

            writeOverview(
                images[0],
                result.labelmap,
                result.roi,
                others or {},
                card,
                staged.stage(plan.preview, (".png",)),
                title,
                masks=result.masks(),
            )
        texts = (
            (plan.statisticsCSV, lambda: statistics.statisticsCSV(report["segments"], inputNames, "mean_iou" in report)),
            (plan.statisticsJSON, lambda: statistics.statisticsJSON(document)),
        )
        for path, make in texts:
            if path:
                text = make()
                writeTextFile(text, staged.stage(path, verify=textVerifier(text)))
        for path, picture in plan.pictures.items():
            writeImageFile(picture, staged.stage(path, verify=imageVerifier(picture)), compress=False)


__all__ = ["OutputPlan", "runReport", "statisticsDocument", "writeResults", "STATISTICS_SCHEMA"]
