"""``medsegunet demo``: prostate zones of ProstateX-0000 with the zoo's prostate model.

The three T2 series (axial, sagittal, coronal) come from a local copy (``--data``: DICOM series
folders or the NRRD files) or are downloaded once from the public copies used by
SlicerMONAIAuto3DSeg's sample data (checked against their SHA256 sums) into a user cache folder.
The axial T2 is the model input and reference; the ROI is the intersection of the three series.

Outputs: the segmentation (``.seg.nrrd``), statistics (CSV and JSON) and a PNG overview (axial ROI
slices with the zones, and the ROI box drawn on the sagittal and coronal series).
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .engine.errors import MedSegUNetError
from .engine.volumes import sha256

CASE = "ProstateX-0000"
BASE_URL = "https://github.com/lassoan/SlicerMONAIAuto3DSeg/releases/download/TestingData/"
# From SlicerMONAIAuto3DSeg's registerSampleData (the "ProstateX-0000" sample data set).
FILES = {
    "axial": ("ProstateX-0000-t2-tse-tra.nrrd", "3940564b147b7bcda52b6b305be3d39f7c9fb901b81caa9863c72ef6ff113dfb"),
    "sagittal": ("ProstateX-0000-t2-tse-sag.nrrd", "774a3891a506f534b5d60ab9831587803e18da0f2daa343997d09221942bf329"),
    "coronal": ("ProstateX-0000-t2-tse-cor.nrrd", "628b928f818350acdb95952daa107d089a6c9101cf74d51fb129ab9b5d490e59"),
}
SERIES_WORDS = {"axial": ("tra", "ax"), "sagittal": ("sag",), "coronal": ("cor",)}
MODEL_NAME = "prostate-zones"
OFFLINE_HINT = (
    "run 'medsegunet demo --data DIR' with DIR holding ProstateX-0000's axial, sagittal and coronal T2 "
    "(DICOM series folders, e.g. ../shared/data/prostatex/ProstateX-0000, or the three ProstateX-0000-t2-tse-*.nrrd files)"
)


def defaultModelPath() -> Path:
    """The zoo model shipped as the module's resources (repository checkout or Slicer extension)."""
    from .models.catalog import ZOO_FOLDER

    return ZOO_FOLDER / MODEL_NAME / f"{MODEL_NAME}.pt"


def cacheFolder() -> Path:
    """``$MEDSEGUNET_CACHE`` or the user cache (``$XDG_CACHE_HOME`` or ``~/.cache``)/medsegunet."""
    from .models.catalog import cacheFolder as catalogCache

    return catalogCache()


def download(url: str, path: Path, checksum: str, timeout: float = 30.0, log=None) -> None:
    """Fetch ``url`` to ``path`` atomically (staged, checksum checked, then renamed).

    Raises:
        MedSegUNetError: no network (with how to use local data instead) or a wrong checksum.
    """
    from .models.catalog import download as fetch

    fetch(url, path, checksum, what="the demo data", offlineHint=f"to work offline, {OFFLINE_HINT}", log=log, timeout=timeout)


def fetchDemoData(folder: Path | None = None, log=None) -> dict[str, str]:
    """The three NRRD files in the cache, downloaded (and checked) only when missing or changed."""
    folder = Path(folder or cacheFolder() / CASE)
    paths = {}
    for role, (name, checksum) in FILES.items():
        path = folder / name
        if not path.is_file() or sha256(path) != checksum:
            download(BASE_URL + name, path, checksum, log=log)
        paths[role] = str(path)
    return paths


def _words(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _pick(role: str, candidates: dict[str, str]) -> str | None:
    """The candidate (key = description or file/folder name) that names a T2 series of this orientation."""
    matches = [path for name, path in candidates.items() if "t2" in _words(name) and any(w in _words(name) for w in SERIES_WORDS[role])]
    return sorted(matches)[0] if matches else None


def findLocalSeries(folder: str | os.PathLike) -> dict[str, str]:
    """The axial, sagittal and coronal T2 of a local copy, as readable paths.

    NRRD/NIfTI files are matched by file name; DICOM series by description or folder name (a
    multi-series folder yields ``FOLDER::UID`` paths).

    Raises:
        MedSegUNetError: missing folder or a series that cannot be found.
    """
    from .engine.volumes import VOLUME_SUFFIXES, findDicomSeries, pathSuffix

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise MedSegUNetError(f"Demo data folder '{folder}' does not exist: {OFFLINE_HINT}.")
    files = {name: os.path.join(folder, name) for name in sorted(os.listdir(folder)) if pathSuffix(name) in VOLUME_SUFFIXES}
    found = {role: _pick(role, files) for role in FILES}
    if not all(found.values()):
        series = findDicomSeries(folder)
        candidates = {}
        for item in series:
            path = item.folder if sum(s.folder == item.folder for s in series) == 1 else f"{item.folder}::{item.uid}"
            candidates[f"{item.description} {os.path.basename(item.folder)}"] = path
        found = {role: found[role] or _pick(role, candidates) for role in FILES}
    missing = [role for role, path in found.items() if not path]
    if missing:
        raise MedSegUNetError(f"No {' / '.join(missing)} T2 series found in '{folder}': {OFFLINE_HINT}.")
    return found


def boxOnSlice(cornersRAS: np.ndarray, image: sitk.Image, k: float) -> np.ndarray:
    """Where an oriented box cuts the plane ``index k`` of a series, as a polygon in (i, j) index units.

    Args:
        cornersRAS: the 8 corners of the box (``RegionOfInterest.cornersRAS``, RAS mm, in
            ``itertools.product`` order over the three axes).
        image: the series (LPS); its continuous index space is where the cut is computed.
        k: the slice index.

    Returns:
        M×2 (i, j) vertices in order around the polygon (empty when the plane misses the box).
    """
    from .engine.geometry import LPS_TO_RAS, ijkToLPSFromImage

    rasToIJK = np.linalg.inv(LPS_TO_RAS @ ijkToLPSFromImage(image))
    corners = (rasToIJK @ np.c_[cornersRAS, np.ones(8)].T).T[:, :3]
    points = []
    for a in range(8):
        for b in range(a + 1, 8):
            if bin(a ^ b).count("1") != 1:
                continue  # only the 12 edges: corners differing along one box axis
            ka, kb = corners[a, 2] - k, corners[b, 2] - k
            if ka == kb:
                continue
            t = ka / (ka - kb)
            if 0.0 <= t <= 1.0:
                points.append(corners[a, :2] + t * (corners[b, :2] - corners[a, :2]))
    if len(points) < 3:
        return np.zeros((0, 2))
    points = np.asarray(points)
    centre = points.mean(axis=0)
    order = np.argsort(np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0]))
    return points[order]


def _drawLabels(axis, masks: Sequence[np.ndarray], card: dict, aspect: float) -> None:
    """One slice's labels (``masks``: one bool J, I array per card label). Exclusive (softmax)
    labels are filled; regions that may overlap (sigmoid: tumour core inside whole tumour) are drawn
    as outlines, so an inner region never hides an outer one."""
    if not masks:
        return
    if card.get("output") == "sigmoid":
        for mask, label in zip(masks, card["labels"]):
            if mask.any():
                axis.contour(mask.astype(np.float32), levels=[0.5], colors=[tuple(label["color"])], linewidths=1.5)
        return
    rgba = np.zeros((*masks[0].shape, 4))
    for mask, label in zip(masks, card["labels"]):
        rgba[mask] = [*label["color"], 0.45]
    axis.imshow(rgba, aspect=aspect)


def shownSlices(masks: Sequence[np.ndarray], roi, count: int = 6) -> list[int]:
    """Up to ``count`` axial slices (K indices of the reference) through the labels, spread evenly
    over the slices where they are largest (at least a tenth of their largest area: a stray voxel
    far away does not take a tile); the ROI's own slices when nothing was found.

    Args:
        masks: bool KJI arrays on the reference grid, one per label.
    """
    low, high = int(roi.ijkMin[2]), int(roi.ijkMax[2])
    areas = sum(np.asarray(mask[low:high + 1]).sum(axis=(1, 2)) for mask in masks) if masks else np.zeros(high - low + 1)
    withLabels = [low + int(k) for k in np.flatnonzero(areas >= max(1, 0.1 * areas.max()))] if areas.any() else list(range(low, high + 1))
    return sorted({withLabels[int(round(i))] for i in np.linspace(0, len(withLabels) - 1, min(count, len(withLabels)))})


def overviewCrop(roi, size: Sequence[int], fraction: float = 0.2, least: int = 8) -> tuple[slice, slice]:
    """The in-plane window of the axial tiles: the ROI grown by ``fraction`` of its size per side (at
    least ``least`` voxels), inside the image, so a structure clipped by the ROI shows as clipped.

    Args:
        size: the reference's size in I, J, K order.

    Returns:
        (J slice, I slice) of the reference's K, J, I array.
    """
    ranges = []
    for axis in (1, 0):
        low, high = int(roi.ijkMin[axis]), int(roi.ijkMax[axis])
        margin = max(least, int(round(fraction * (high - low + 1))))
        ranges.append(slice(max(0, low - margin), min(int(size[axis]), high + margin + 1)))
    return ranges[0], ranges[1]


THUMBNAIL_INCHES = 3.4
OVERVIEW_DPI = 100


def writeOverview(reference: sitk.Image, labelmap: sitk.Image, roi, others: dict[str, sitk.Image], card: dict, path: str, case: str = CASE,
                  masks: Sequence[np.ndarray] | None = None) -> None:
    """PNG: up to 6 axial slices through the labels, each a little wider than the ROI (dashed: its
    edge), and the sagittal and coronal middle slices with the ROI box (its cut through each slice
    plane) and the labels resampled onto them.

    Args:
        masks: one bool KJI mask per card label on the reference grid (``result.masks()``: sigmoid
            regions may overlap); default: the label map's values.

    ``path`` is written as given (callers stage it with the run's other outputs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon, Rectangle

    from .engine import preprocessing
    from .engine.pipeline import labelMasks

    masks = list(masks) if masks is not None else labelMasks(labelmap, card["labels"])
    shown = shownSlices(masks, roi)
    rows_, columns_ = overviewCrop(roi, reference.GetSize())
    image = sitk.GetArrayViewFromImage(reference)
    columns = max(len(shown), 2)
    # Thumbnails of 3.4 in at 100 dpi (over 256 px); the row of other series only when there are any.
    rows = [THUMBNAIL_INCHES] + ([4.6] if others else [])
    figure = plt.figure(figsize=(THUMBNAIL_INCHES * columns, sum(rows) + 0.8))
    grid = figure.add_gridspec(len(rows), columns, height_ratios=rows, wspace=0.04, hspace=0.12, left=0.01, right=0.99, top=0.93, bottom=0.06)
    spacing = reference.GetSpacing()
    aspect = spacing[1] / spacing[0]
    low, high = np.percentile(image[int(roi.ijkMin[2]):int(roi.ijkMax[2]) + 1, rows_, columns_], [1, 99.5])
    for column, k in enumerate(shown):
        axis = figure.add_subplot(grid[0, column])
        axis.imshow(image[k, rows_, columns_], cmap="gray", vmin=low, vmax=high, aspect=aspect)
        _drawLabels(axis, [mask[k, rows_, columns_] for mask in masks], card, aspect)
        edge = (roi.ijkMin[0] - columns_.start - 0.5, roi.ijkMin[1] - rows_.start - 0.5)
        axis.add_patch(Rectangle(edge, roi.ijkMax[0] - roi.ijkMin[0] + 1, roi.ijkMax[1] - roi.ijkMin[1] + 1, fill=False, edgecolor="yellow", linestyle="--", linewidth=1.0))
        axis.set_title(f"axial k={k}", fontsize=8)
        axis.axis("off")
    corners = roi.cornersRAS()
    half = columns // 2
    for index, (name, volume) in enumerate(list(others.items())[:2]):
        axis = figure.add_subplot(grid[1, index * half:(index + 1) * half] if columns >= 2 else grid[1, index])
        # The two panels meet in the middle: no empty band between them.
        axis.set_anchor("E" if index == 0 else "W")
        k = volume.GetSize()[2] // 2
        array = sitk.GetArrayViewFromImage(volume)[k]
        # Each label is resampled onto the one slice shown, not onto the whole series.
        shownSlice = volume[:, :, k:k + 1]
        onVolume = []
        for mask in masks:
            maskImage = sitk.GetImageFromArray(mask.astype(np.uint8))
            maskImage.CopyInformation(reference)
            onVolume.append(sitk.GetArrayFromImage(preprocessing.resampleOnto(maskImage, shownSlice, sitk.sitkNearestNeighbor, sitk.sitkUInt8))[0] > 0)
        s = volume.GetSpacing()
        lo, hi = np.percentile(array, [1, 99.5])
        axis.imshow(array, cmap="gray", vmin=lo, vmax=hi, aspect=s[1] / s[0])
        _drawLabels(axis, onVolume, card, s[1] / s[0])
        polygon = boxOnSlice(corners, volume, k)
        if len(polygon):
            axis.add_patch(Polygon(polygon, closed=True, fill=False, edgecolor="yellow", linewidth=1.5))
        axis.set_title(f"{name} k={k}: ROI box (yellow)", fontsize=9)
        axis.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=label["color"]) for label in card["labels"]]
    figure.legend(handles, [label["name"] for label in card["labels"]], loc="lower center", ncol=len(handles), fontsize=9)
    figure.suptitle(f"{case}: {card['name']} (dashed: the ROI's edge)", fontsize=10)
    try:
        figure.savefig(path, dpi=OVERVIEW_DPI, format="png")
    finally:
        plt.close(figure)


def caseName(data: str | None) -> str:
    """The case the outputs are named after: the data folder's name, or ProstateX-0000 when downloaded."""
    if not data:
        return CASE
    return Path(os.path.abspath(data)).name or CASE


def runDemo(data: str | None, output: str, model: str | None = None, device: str = "auto", log=None, progress=None) -> dict:
    """Segment a prostate case's zones (ProstateX-0000 by default) and write the demo outputs.

    The four outputs (segmentation, CSV and JSON statistics, overview PNG) are named after the case
    and appear together or not at all.

    Returns:
        the output paths and the statistics report.

    Raises:
        MedSegUNetError: missing model, data that cannot be found or downloaded.
    """
    from .engine import modelcard, pipeline, statistics
    from .engine.volumes import checkDistinctPaths, readVolume

    log = log or (lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
    started = time.perf_counter()
    modelPath = Path(model) if model else defaultModelPath()
    if not modelPath.is_file():
        raise MedSegUNetError(f"The demo model '{modelPath}' is missing: pass --model PATH to a prostate zones model.")
    if os.path.exists(output) and not os.path.isdir(output):
        raise MedSegUNetError(f"--output '{output}' is a file: give a folder for the demo's outputs.")
    case = caseName(data)
    outputs = {
        "segmentation": os.path.join(output, f"{case}-zones.seg.nrrd"),
        "statistics_csv": os.path.join(output, f"{case}-statistics.csv"),
        "statistics_json": os.path.join(output, f"{case}-statistics.json"),
        "overview": os.path.join(output, f"{case}-overview.png"),
    }
    paths = findLocalSeries(data) if data else fetchDemoData(log=log)
    checkDistinctPaths({f"--output ({key})": path for key, path in outputs.items()}, {"--data": list(paths.values()), "--model": str(modelPath)})
    reporter = pipeline.ProgressReporter(progress) if progress is not None else None
    if reporter is not None:
        reporter.stage(pipeline.Stage.LOADING)
    images = {role: readVolume(path) for role, path in paths.items()}
    loaded = modelcard.loadModel(modelPath, device)
    card = loaded.card
    result = pipeline.segmentImages(
        [images["axial"]], loaded, names=["T2 axial"], roiImages=[images["sagittal"], images["coronal"]], roiNames=["T2 sagittal", "T2 coronal"],
        progress=reporter,
    )
    if reporter is not None:
        reporter.stage(pipeline.Stage.STATISTICS)
    report = statistics.computeStatistics(result.labelmap, card, {"T2": images["axial"]}, regions=result.regions)
    document = {
        **report,
        "case": case,
        "inputs": [{"name": role, "path": path} for role, path in paths.items()],
        "roi": result.roi.toDict(),
        "model": {"path": str(modelPath), "name": card["name"]},
        "device": result.device,
        "timing_s": {key: round(value, 4) for key, value in result.timings.items()},
    }
    writeDemoOutputs(output, outputs, document, result, report, card, images, case, reporter)
    if reporter is not None:
        reporter.finish()
    for segment in report["segments"]:
        log(f"{segment['name']}: {segment['volume_cm3']:.1f} cm3")
    log(f"ROI {' × '.join(f'{v:.1f}' for v in result.roi.sizeMM)} mm; wrote {', '.join(outputs.values())} in {time.perf_counter() - started:.1f} s")
    if case == CASE:
        log("Note: a demonstration model trained on this very case (ProstateX-0000); see MedSegUNet/Resources/Models/prostate-zones/README.md.")
    return {"outputs": outputs, "report": report, "roi": result.roi}


def writeDemoOutputs(output: str, outputs: dict, document: dict, result, report: dict, card: dict, images: dict, case: str, reporter) -> None:
    """The demo's four files, staged and verified, then renamed together (the folder made if missing)."""
    from .engine import pipeline, statistics
    from .engine.outputs import stageSegmentation
    from .engine.volumes import StagedOutputs, textVerifier, writeTextFile

    try:
        os.makedirs(output, exist_ok=True)
    except OSError as error:
        from .engine.errors import osErrorMessage

        raise MedSegUNetError(osErrorMessage(error, "create", output)) from None
    if reporter is not None:
        reporter.stage(pipeline.Stage.WRITING)
    with StagedOutputs() as staged:
        stageSegmentation(staged, result.labelmap, card["labels"], outputs["segmentation"], result.regions)
        for key, text in (
            ("statistics_csv", statistics.statisticsCSV(report["segments"], ["T2"], False)),
            ("statistics_json", statistics.statisticsJSON(document)),
        ):
            writeTextFile(text, staged.stage(outputs[key], verify=textVerifier(text)))
        writeOverview(
            images["axial"], result.labelmap, result.roi, {"sagittal T2": images["sagittal"], "coronal T2": images["coronal"]},
            card, staged.stage(outputs["overview"]), case, masks=result.masks(),
        )


def addParser(subparsers) -> None:
    """Register ``medsegunet demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="segment the prostate zones of ProstateX-0000 with the zoo model",
        description="Segment the prostate zones of ProstateX-0000 (axial T2, ROI from the axial/sagittal/coronal T2) and write "
        "the segmentation, statistics and a PNG overview. Without --data the three T2 series are downloaded once into a cache folder.",
    )
    parser.add_argument("--data", metavar="DIR", help="local copy: DICOM series folders (e.g. ../shared/data/prostatex/ProstateX-0000) or the NRRD files")
    parser.add_argument("--output", default="demo-output", metavar="DIR", help="output folder (default: demo-output)")
    parser.add_argument("--model", metavar="PATH", help="model file or catalog name (default: the zoo's prostate-zones model)")
    from .engine.modelcard import DEVICES

    parser.add_argument("--device", default="auto", choices=DEVICES, help="where the network runs")
    parser.set_defaults(func=run)


def run(args, console=None) -> int:
    """``medsegunet demo``: returns the exit status."""
    log = console.line if console is not None else None
    model = args.model
    if model:
        from .models.catalog import resolveModelOption

        model = resolveModelOption(model, console)
    runDemo(args.data, args.output, model, args.device, log=log, progress=console)
    return 0
