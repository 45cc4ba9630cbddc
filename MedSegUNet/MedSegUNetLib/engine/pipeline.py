"""The segmentation pipeline shared by the command line and the Slicer module.

Volumes in, label map out, all as ``SimpleITK.Image`` (LPS mm, IJK index, KJI arrays):

1. ROI = reference voxels inside every input's and every extra series' extent
   (:func:`geometry.computeROI`), or the whole reference, or a given ROI.
2. Inputs are resampled in physical space onto the model grid (the ROI re-oriented and re-spaced
   as the card says) and normalised (:mod:`preprocessing`).
3. The network runs through MONAI's sliding-window or slice inferer (:mod:`inference`).
4. Class probabilities go back onto the ROI grid (linear), one class at a time with a running
   argmax, so no full-volume per-class stack is kept; the label map is pasted into the reference.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from . import geometry, modelcard, preprocessing
from .cardview import cardView
from .errors import ProcessingCancelled, VolumeError
from .inference import predictProbabilities
from .modelcard import LoadedModel
from .postprocessing import postprocessLabels
from .request import ProgressCallback


class Stage(enum.Enum):
    """Processing stages with the share of the progress bar each takes (start, end)."""

    LOADING = (0.00, 0.05, "Loading model and volumes")
    ROI = (0.05, 0.08, "Computing the region of interest")
    RESAMPLING = (0.08, 0.15, "Resampling inputs onto the model grid")
    INFERENCE = (0.15, 0.85, "Running the network")
    POSTPROCESSING = (0.85, 0.92, "Resampling probabilities back to the reference")
    STATISTICS = (0.92, 0.97, "Computing statistics")
    WRITING = (0.97, 1.00, "Writing results")

    @property
    def start(self) -> float:
        return self.value[0]

    @property
    def end(self) -> float:
        return self.value[1]

    @property
    def label(self) -> str:
        return self.value[2]


class ProgressReporter:
    """Maps per-stage progress onto one ``(fraction, message)`` callback and checks for cancel."""

    def __init__(self, callback: ProgressCallback | None = None, cancelEvent: threading.Event | None = None) -> None:
        self.callback = callback
        self.cancelEvent = cancelEvent
        self.timings: dict[str, float] = {}
        self._stage: Stage | None = None
        self._stageStart = 0.0

    def stage(self, stage: Stage) -> None:
        """Enter a stage (closes the previous one's timing) and honour a pending cancel."""
        self.endStage()
        self.checkCancel()
        self._stage, self._stageStart = stage, time.perf_counter()
        self.report(stage.start, stage.label)

    def within(self, fraction: float, message: str) -> None:
        """Progress inside the current stage, ``fraction`` of that stage."""
        stage = self._stage
        if stage is not None:
            self.report(stage.start + (stage.end - stage.start) * min(max(fraction, 0.0), 1.0), message)

    def report(self, fraction: float, message: str) -> None:
        if self.callback is not None:
            self.callback(float(fraction), message)

    def checkCancel(self) -> None:
        if self.cancelEvent is not None and self.cancelEvent.is_set():
            raise ProcessingCancelled()

    def finish(self, message: str = "Done") -> dict[str, float]:
        self.endStage()
        self.report(1.0, message)
        return self.timings

    def endStage(self) -> None:
        """Close the current stage's timing."""
        if self._stage is not None:
            name = self._stage.name.lower()
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - self._stageStart
            self._stage = None


@dataclass
class SegmentationResult:
    """What one run produces.

    Args:
        labelmap: uint8 label map on the reference grid (values from the card's labels; sigmoid
            regions painted in card order).
        roi: the ROI used (reference IJK range).
        card: the model card.
        device: the torch device the network ran on.
        timings: seconds per stage.
        compiled: what ran the network when it was an AOTInductor package (``--compile``): the
            package's speed-up over the uncompiled program on one patch and the torch it was
            built with; None when the model file ran as it is.
        regions: sigmoid cards only: bool ``L, K, J, I`` masks on the reference grid, one per label
            in card order, possibly overlapping.
    """

    labelmap: sitk.Image
    roi: geometry.RegionOfInterest
    card: dict
    device: str
    timings: dict[str, float] = field(default_factory=dict)
    compiled: dict | None = None
    regions: np.ndarray | None = None
    networkROI: geometry.RegionOfInterest | None = None
    # float32 C, K, J, I on the ROI grid, only when asked for (--probabilities).
    probabilities: np.ndarray | None = None

    def masks(self) -> list[np.ndarray]:
        """One bool KJI mask per card label on the reference grid: the label's voxels (softmax) or
        its region (sigmoid; regions may overlap, so the label map alone cannot give them)."""
        return labelMasks(self.labelmap, self.card["labels"], self.regions)


def labelMasks(labelmap: sitk.Image, labels: Sequence[dict], regions: np.ndarray | None = None) -> list[np.ndarray]:
    """Per-label bool KJI masks: ``regions`` when given (sigmoid cards), else ``labelmap == value``."""
    if regions is not None:
        return [np.asarray(region, dtype=bool) for region in regions]
    array = sitk.GetArrayViewFromImage(labelmap)
    return [array == int(label["value"]) for label in labels]


def resolveROI(
    images: Sequence[sitk.Image],
    names: Sequence[str],
    roiImages: Sequence[sitk.Image] = (),
    roiNames: Sequence[str] = (),
    useROI: bool = True,
    marginMM: float = 0.0,
    boxes: Sequence[geometry.VolumeGeometry] = (),
) -> geometry.RegionOfInterest:
    """The ROI on the first image: intersection of all inputs, extra series and boxes, or the whole grid.

    Args:
        boxes: oriented boxes (a Slicer Markups ROI, :func:`geometry.boxGeometry`) that limit the ROI
            exactly like a series' extent. With ``useROI`` False, the boxes alone limit it. The
            margin grows the joint intersection, boxes included, then is clipped to the reference.
    """
    reference = geometry.VolumeGeometry.fromImage(images[0], names[0])
    if not useROI and not boxes:
        return geometry.fullROI(reference)
    others: list[geometry.VolumeGeometry] = []
    if useROI:
        others += [geometry.VolumeGeometry.fromImage(image, name) for image, name in zip(images[1:], names[1:])]
        others += [geometry.VolumeGeometry.fromImage(image, name) for image, name in zip(roiImages, roiNames)]
    return geometry.computeROI(reference, [*others, *boxes], marginMM=marginMM)


def _resampledClass(probabilities: np.ndarray, source: sitk.Image, target: sitk.Image) -> sitk.Image:
    """One class's ``I, J, K`` probabilities, read as the K, J, I array of an image on the IJK-ordered
    ``source`` grid (unchanged), resampled linearly onto ``target``."""
    classImage = sitk.GetImageFromArray(np.ascontiguousarray(probabilities))
    classImage.CopyInformation(source)
    return preprocessing.resampleOnto(classImage, target)


def probabilitiesToLabels(
    probabilities: np.ndarray,
    modelGrid: sitk.Image,
    roiGrid: sitk.Image,
    card: dict,
    progress: ProgressReporter | None = None,
    keep: list | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Label map (and, for sigmoid cards, region masks) on the ROI grid from model-grid probabilities.

    Each class is resampled (linear, float32) to the ROI grid in turn. Softmax: folded into a
    running argmax, so memory stays at two ROI-sized arrays. Sigmoid: each label is its own region
    (voxels at or above the threshold), kept as a mask, since regions may overlap (whole tumour ⊃
    tumour core ⊃ enhancing tumour); the label map paints them in card order, later labels over
    earlier ones.

    Args:
        probabilities: float32 ``C_out, I, J, K`` on the model grid.

        keep: when a list, each class's float32 KJI probabilities on the ROI grid are appended
            to it (``--probabilities``); otherwise none is kept.

    Returns:
        (uint8 KJI label map on the ROI grid, bool ``L, K, J, I`` region masks in card order or
        None for softmax cards).
    """
    card = cardView(card)
    values = [label.value for label in card.labels]
    # The usual card keeps the reference's grid: the probabilities are then read in place (a KJI
    # view of the IJK array), without an image copy per class. Otherwise each class is resampled
    # onto the ROI grid's voxels stored in the model grid's axis order (SimpleITK then walks both
    # grids in step, twice as fast), and the labels are put back in K, J, I order once at the end.
    sameGrid = preprocessing.sameGrid(modelGrid, roiGrid)
    source = None if sameGrid else preprocessing.ijkOrderedGrid(modelGrid)
    order = None if sameGrid else (preprocessing.parallelAxes(roiGrid, source) or [0, 1, 2])
    target = roiGrid if sameGrid else preprocessing.permutedGrid(roiGrid, order)
    shape = tuple(reversed(target.GetSize()))
    labels = np.zeros(shape, dtype=np.uint8)
    softmax = modelcard.exclusiveLabels(card)
    best = np.full(shape, -1.0, dtype=np.float32) if softmax else None
    regions = None if softmax else np.zeros((len(values), *shape), dtype=bool)
    channelValues = [0, *values] if softmax else values
    if softmax and len(values) == 1 and keep is None:
        # Background and one class sum to 1 (and resampling is linear): the class wins where it is
        # above 0.5, so the background channel need not be brought back (half the work).
        channelValues, best = [None, values[0]], np.full(shape, 0.5, dtype=np.float32)
    names = {label.value: label.name for label in card.labels}
    resampled = [value for value in channelValues if value is not None]
    for index, value in enumerate(channelValues):
        if value is None:
            continue
        if progress is not None:
            progress.checkCancel()
            # Counted in the model's labels (the background channel, when it is needed, is named).
            what = "background" if softmax and index == 0 and value == 0 else f"label {values.index(value) + 1} of {len(values)}"
            what += "" if what == "background" else f" ({names.get(int(value), value)})"
            progress.within(resampled.index(value) / len(resampled), f"Resampling to the reference grid: {what}")
        channel = None if sameGrid else _resampledClass(probabilities[index], source, target)
        channelArray = probabilities[index].transpose(2, 1, 0) if sameGrid else sitk.GetArrayViewFromImage(channel)
        if softmax:
            better = channelArray > best
            best[better] = channelArray[better]
            labels[better] = value
        else:
            regions[index] = channelArray >= card.threshold
            labels[regions[index]] = value
        if keep is not None:
            # Always a copy: the view of a class image dies with the image (next class), and an
            # identity permutation would hand it back uncopied.
            keep.append(
                np.array(channelArray if sameGrid else preprocessing.permutedToKJI(channelArray, order), dtype=np.float32, order="C")
            )
    if not sameGrid:
        labels = np.ascontiguousarray(preprocessing.permutedToKJI(labels, order))
        regions = None if regions is None else np.ascontiguousarray(preprocessing.permutedToKJI(regions, order))
    return labels, regions


@dataclass
class PreparedInputs:
    """A case ready for the network: what :func:`prepareImages` computes without the model.

    Args:
        reference: the reference volume (first input; LPS).
        roi: the ROI on the reference.
        roiGrid: the reference cropped to the ROI (geometry only): where labels are written.
        grid: the model grid (geometry only), covering ``networkROI``.
        networkROI: the ROI grown by the context the network sees (``roi`` without context).
        array: float32 ``C, I, J, K`` normalised inputs on the model grid.
        pendingImages: the inputs, kept when the card's localiser must run before the model grid
            is known (``grid`` and ``array`` are then None until :func:`segmentPrepared`).
        contextMM: the context the network sees around the ROI.
    """

    reference: sitk.Image
    roi: geometry.RegionOfInterest
    roiGrid: sitk.Image
    grid: sitk.Image | None
    array: np.ndarray | None
    networkROI: geometry.RegionOfInterest | None = None
    pendingImages: list | None = None
    contextMM: float = 0.0


def prepareImages(
    images: Sequence[sitk.Image],
    card: dict,
    names: Sequence[str] | None = None,
    roiImages: Sequence[sitk.Image] = (),
    roiNames: Sequence[str] | None = None,
    roi: geometry.RegionOfInterest | None = None,
    useROI: bool = True,
    marginMM: float = 0.0,
    progress: ProgressReporter | None = None,
    contextMM: float | None = None,
) -> PreparedInputs:
    """The ROI, the model grid and the normalised inputs: everything before the network.

    Needs only the card, so a batch can prepare the next case while the network runs on this one.
    Arguments as :func:`segmentImages`.
    """
    progress = progress or ProgressReporter()
    names = list(names or [f"input{index + 1}" for index in range(len(images))])
    card = cardView(card)
    if len(images) != len(card.inputs):
        expected = ", ".join(card.inputNames)
        raise VolumeError(
            f"Model '{card.name}' takes {len(card.inputs)} input volume(s) ({expected}) but {len(images)} were given: pass them in "
            "that order."
        )
    progress.stage(Stage.ROI)
    if roi is None:
        roi = resolveROI(
            images, names, roiImages, list(roiNames or [f"roi{index + 1}" for index in range(len(roiImages))]), useROI, marginMM
        )
    # The network may see more than the ROI (context it was trained with); labels stay inside it.
    from .request import SegmentationRequest

    context = SegmentationRequest(contextMM=contextMM).context(card)
    if card.get("nnunet") is not None:
        # nnU-Net prepares the whole reference in its own array space (engine/nnunet.py) when the network runs.
        roiGrid = geometry.cropToROI(preprocessing.emptyLike(images[0]), roi)
        progress.endStage()
        return PreparedInputs(reference=images[0], roi=roi, roiGrid=roiGrid, grid=None, array=None, pendingImages=list(images))
    if card.localizer:
        # The localiser's network runs with the model (segmentPrepared); only the series' ROI is known yet.
        roiGrid = geometry.cropToROI(preprocessing.emptyLike(images[0]), roi)
        progress.endStage()
        return PreparedInputs(
            reference=images[0], roi=roi, roiGrid=roiGrid, grid=None, array=None, pendingImages=list(images), contextMM=context
        )
    return prepareGrid(images, card, roi, context, progress)


def prepareGrid(
    images: Sequence[sitk.Image],
    card: dict,
    roi: geometry.RegionOfInterest,
    context: float,
    progress: ProgressReporter,
    volumeStatistics: dict | None = None,
) -> PreparedInputs:
    """The model grid over the ROI (grown by ``context`` mm) and the normalised inputs on it
    (``volumeStatistics``: those the localiser took on the same images, :func:`preprocessing.normalize`)."""
    reference = images[0]
    roiGrid = geometry.cropToROI(preprocessing.emptyLike(reference), roi)
    networkROI = roi.grown(context) if context > 0 else roi
    networkGrid = geometry.cropToROI(preprocessing.emptyLike(reference), networkROI) if context > 0 else roiGrid

    progress.stage(Stage.RESAMPLING)
    card = cardView(card)
    spec = card.grid
    grid = preprocessing.modelGrid(networkGrid, spec.spacing, spec.orientation, spec.shape)
    array = preprocessing.prepareInputs(images, grid, card["normalization"], card.roi.padding, spec.interpolation, volumeStatistics)
    progress.endStage()
    return PreparedInputs(reference=reference, roi=roi, roiGrid=roiGrid, grid=grid, array=array, networkROI=networkROI, contextMM=context)


def localizePrepared(prepared: PreparedInputs, model: LoadedModel, progress: ProgressReporter) -> PreparedInputs:
    """Run the card's localiser on the series' ROI, intersect its box with that ROI and prepare the
    model grid over the result (:mod:`localizer`)."""
    from .localizer import findRegion

    progress.stage(Stage.ROI)
    images, roi = prepared.pendingImages, prepared.roi
    volumeStatistics: dict = {}

    # The localiser's batches belong to this stage, before the inputs are resampled: named as its own,
    # not as the network's ("Inference: batch 1 of 1" before "Resampling inputs onto the model grid").
    def localiserProgress(fraction: float, message: str) -> None:
        progress.within(fraction, message.replace("Inference:", "Locating the region (localiser):", 1))

    box = findRegion(model, images, roi, localiserProgress, progress.cancelEvent, volumeStatistics)
    # The series' ROI as an extent (its voxel-edge box), so that only its voxels can stay in.
    seriesBox = geometry.VolumeGeometry.fromImage(prepared.roiGrid, "series ROI")
    located = geometry.computeROI(roi.reference, [seriesBox, box])
    located = geometry.RegionOfInterest(
        reference=roi.reference,
        ijkMin=located.ijkMin,
        ijkMax=located.ijkMax,
        volumeNames=[*roi.volumeNames, box.name],
        marginMM=roi.marginMM,
    )
    return prepareGrid(images, model.card, located, prepared.contextMM, progress, volumeStatistics)


def segmentNNUNet(prepared: PreparedInputs, model: LoadedModel, progress: ProgressReporter) -> SegmentationResult:
    """An nnU-Net model (card schema 4) on the whole reference, as ``nnUNetv2_predict`` runs it
    (:func:`nnunet.predictCase`); labels outside the ROI are cleared when the ROI is smaller."""
    from .nnunet import predictCase

    images, reference, roi = prepared.pendingImages, prepared.reference, prepared.roi
    card = cardView(model.card)
    for image, spec in zip(images, card.inputs):
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise VolumeError(
                f"Input '{spec.name}' has {image.GetNumberOfComponentsPerPixel()} components: give one scalar volume per input."
            )
    for image, spec in zip(images[1:], card.inputs[1:]):
        same = image.GetSize() == reference.GetSize() and np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-4)
        same = same and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-3)
        if not (same and np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-4)):
            raise VolumeError(
                f"Input '{spec.name}' is not on the first input's grid, which an nnU-Net model needs (as nnU-Net does): resample it "
                "onto the first input."
            )
    channels = np.stack([sitk.GetArrayFromImage(image).astype(np.float32) for image in images])  # C, K, J, I
    progress.stage(Stage.INFERENCE)

    def tick(done: int, total: int) -> None:
        if progress.cancelEvent is not None and progress.cancelEvent.is_set():
            raise ProcessingCancelled()
        progress.within(done / total, f"Inference: window {done} of {total}")

    heads = len(card.labels) + (0 if card["nnunet"].get("regions_class_order") is not None else 1)
    expected = (int(card["nnunet"]["folds"]), heads)
    labels, regions = predictCase(
        channels, list(reversed(reference.GetSpacing())), model.network, card.nnunet, tick, model.device, expected
    )
    progress.stage(Stage.POSTPROCESSING)
    inside = np.zeros(labels.shape, dtype=bool)
    inside[roi.slices()] = True
    labels[~inside] = 0
    if regions is not None:
        regions[:, ~inside] = False
    labelmap = sitk.GetImageFromArray(labels.astype(np.uint8))
    labelmap.CopyInformation(reference)
    progress.endStage()
    return SegmentationResult(
        labelmap=labelmap, roi=roi, card=model.card, device=str(model.device), timings=progress.timings, regions=regions
    )


def segmentPrepared(
    prepared: PreparedInputs, model: LoadedModel, progress: ProgressReporter | None = None, keepProbabilities: bool = False
) -> SegmentationResult:
    """Run the network on prepared inputs and bring the labels back onto the reference grid.

    The prepared array is released once the network has run. With ``keepProbabilities`` the
    result holds the per-class probabilities on the ROI grid (``probabilities``, float32 ``C, K, J,
    I``; softmax: background first).
    """
    progress = progress or ProgressReporter()
    card = model.card
    if card.get("nnunet") is not None:
        return segmentNNUNet(prepared, model, progress)
    if prepared.pendingImages is not None:
        prepared = localizePrepared(prepared, model, progress)
    reference, roi = prepared.reference, prepared.roi
    progress.stage(Stage.INFERENCE)
    array, prepared.array = prepared.array, None
    probabilities = predictProbabilities(model, array, progress.within, progress.cancelEvent)
    del array

    progress.stage(Stage.POSTPROCESSING)
    kept: list | None = [] if keepProbabilities else None
    roiLabels, roiRegions = probabilitiesToLabels(probabilities, prepared.grid, prepared.roiGrid, card, progress, kept)
    del probabilities
    roiLabels, roiRegions = postprocessLabels(roiLabels, roiRegions, card, prepared.roiGrid.GetSpacing())
    fullShape = tuple(reversed(reference.GetSize()))
    labels = np.zeros(fullShape, dtype=np.uint8)
    labels[roi.slices()] = roiLabels
    regions = None
    if roiRegions is not None:
        regions = np.zeros((len(roiRegions), *fullShape), dtype=bool)
        regions[(slice(None), *roi.slices())] = roiRegions
    labelmap = sitk.GetImageFromArray(labels)
    labelmap.CopyInformation(reference)
    progress.endStage()
    return SegmentationResult(
        labelmap=labelmap,
        roi=roi,
        card=card,
        device=str(model.device),
        timings=progress.timings,
        compiled=compiledSummary(model.compiled),
        regions=regions,
        networkROI=prepared.networkROI,
        probabilities=np.stack(kept) if kept else None,
    )


def compiledSummary(record: dict | None) -> dict | None:
    """An AOTInductor package's record as the statistics report it (None: uncompiled)."""
    if record is None:
        return None
    return {"speedup": round(float(record["speedup"]), 3), "torch": record.get("torch")}


def segmentImages(
    images: Sequence[sitk.Image],
    model: LoadedModel,
    names: Sequence[str] | None = None,
    roiImages: Sequence[sitk.Image] = (),
    roiNames: Sequence[str] | None = None,
    roi: geometry.RegionOfInterest | None = None,
    useROI: bool = True,
    marginMM: float = 0.0,
    progress: ProgressReporter | None = None,
    contextMM: float | None = None,
    keepProbabilities: bool = False,
) -> SegmentationResult:
    """Segment a set of co-registered volumes with a loaded model.

    Args:
        images: the model's inputs in card order; the first is the reference (LPS, any grids).
        model: from :func:`modelcard.loadModel` (kept between runs).
        names: display names of the inputs.
        roiImages: extra series whose extents limit the ROI (not fed to the network).
        roi: an ROI already computed on ``images[0]`` (e.g. from a Markups ROI); overrides the rest.
        useROI: False runs on the whole reference.
        marginMM: margin around the intersection.
        progress: progress and cancel reporting.
        contextMM: the network sees the ROI grown by this much (clipped to the reference) while
            labels are written inside the ROI only; None takes the card's ``roi.context_mm``.

    Returns:
        the label map on the reference grid and what produced it.

    Raises:
        MedSegUNetError: wrong number of inputs, no overlap, bad model output.
        ProcessingCancelled: the cancel event was set.
    """
    progress = progress or ProgressReporter()
    prepared = prepareImages(images, model.card, names, roiImages, roiNames, roi, useROI, marginMM, progress, contextMM)
    return segmentPrepared(prepared, model, progress, keepProbabilities)


__all__ = [
    "Stage",
    "ProgressReporter",
    "SegmentationResult",
    "labelMasks",
    "resolveROI",
    "probabilitiesToLabels",
    "PreparedInputs",
    "prepareImages",
    "prepareGrid",
    "localizePrepared",
    "segmentPrepared",
    "segmentNNUNet",
    "compiledSummary",
    "segmentImages",
]
