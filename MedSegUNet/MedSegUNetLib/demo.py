"""``medsegunet demo``: prostate zones of ProstateX-0000 with the zoo's prostate model.

The three T2 series (axial, sagittal, coronal) come from a local copy (``--data``: DICOM series
folders or the NRRD files) or are downloaded once from the public copies used by
SlicerMONAIAuto3DSeg's sample data (checked against their SHA256 sums) into a user cache folder.
The axial T2 is the model input and reference; the ROI is the intersection of the three series.

Outputs: the segmentation (``.seg.nrrd``), statistics (CSV and JSON) and a PNG overview (axial ROI
slices with the zones, and the ROI box drawn on the sagittal and coronal series).
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from .engine import settings
from .engine.errors import OutputError, UsageError, VolumeError
from .engine.paths import sha256

# Notes and warnings, for whoever attaches a handler (the command line prints them; Slicer logs them).
logger = logging.getLogger(__name__)

CASE = "ProstateX-0000"
SERIES_WORDS = {"axial": ("tra", "ax"), "sagittal": ("sag",), "coronal": ("cor",)}
MODEL_NAME = "prostate-zones"
OFFLINE_HINT = (
    "run 'medsegunet demo --data DIR' with DIR holding ProstateX-0000's axial, sagittal and coronal T2 "
    "(DICOM series folders, e.g. ../shared/data/prostatex/ProstateX-0000, or the three ProstateX-0000-t2-tse-*.nrrd files)"
)


def defaultModelPath() -> Path:
    """The zoo model shipped as the module's resources (repository checkout or Slicer extension)."""
    return settings.ZOO_FOLDER / MODEL_NAME / f"{MODEL_NAME}.pt"


def cacheFolder() -> Path:
    """``$MEDSEGUNET_CACHE`` or the user cache (``$XDG_CACHE_HOME`` or ``~/.cache``)/medsegunet."""
    from .models.catalog import cacheFolder as catalogCache

    return catalogCache()


def download(url: str, path: Path, checksum: str, timeout: float = 30.0, log=None) -> None:
    """Fetch ``url`` to ``path`` atomically (staged, checksum checked, then renamed).

    Raises:
        MedSegUNetError: no network (with how to use local data instead) or a wrong checksum.
    """
    from .models.downloads import download as fetch

    fetch(url, path, checksum, what="the demo data", offlineHint=f"to work offline, {OFFLINE_HINT}", log=log, timeout=timeout)


def fetchDemoData(folder: Path | None = None, log=None) -> dict[str, str]:
    """The three NRRD files in the cache, downloaded (and checked) only when missing or changed."""
    folder = Path(folder or cacheFolder() / CASE)
    paths = {}
    for role, (name, checksum) in settings.SAMPLE_DATA_FILES.items():
        path = folder / name
        if not path.is_file() or sha256(path) != checksum:
            download(settings.SAMPLE_DATA_URL + name, path, checksum, log=log)
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
    from .engine.paths import VOLUME_SUFFIXES, pathSuffix
    from .engine.volumes import findDicomSeries

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise VolumeError(f"Demo data folder '{folder}' does not exist: {OFFLINE_HINT}.")
    files = {name: os.path.join(folder, name) for name in sorted(os.listdir(folder)) if pathSuffix(name) in VOLUME_SUFFIXES}
    found = {role: _pick(role, files) for role in settings.SAMPLE_DATA_FILES}
    if not all(found.values()):
        series = findDicomSeries(folder)
        candidates = {}
        for item in series:
            path = item.folder if sum(s.folder == item.folder for s in series) == 1 else f"{item.folder}::{item.uid}"
            candidates[f"{item.description} {os.path.basename(item.folder)}"] = path
        found = {role: found[role] or _pick(role, candidates) for role in settings.SAMPLE_DATA_FILES}
    missing = [role for role, path in found.items() if not path]
    if missing:
        raise VolumeError(f"No {' / '.join(missing)} T2 series found in '{folder}': {OFFLINE_HINT}.")
    return found


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
    from .engine import modelcard, pipeline
    from .engine.staging import checkDistinctPaths
    from .engine.volumes import readVolume
    from .engine.writer import runReport, statisticsDocument

    log = log or logger.info
    started = time.perf_counter()
    modelPath = Path(model) if model else defaultModelPath()
    if not modelPath.is_file():
        raise UsageError(f"The demo model '{modelPath}' is missing: pass --model PATH to a prostate zones model.")
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output '{output}' is a file: give a folder for the demo's outputs.")
    case = caseName(data)
    outputs = {
        "segmentation": os.path.join(output, f"{case}-zones.seg.nrrd"),
        "statistics_csv": os.path.join(output, f"{case}-statistics.csv"),
        "statistics_json": os.path.join(output, f"{case}-statistics.json"),
        "overview": os.path.join(output, f"{case}-overview.png"),
    }
    paths = findLocalSeries(data) if data else fetchDemoData(log=log)
    checkDistinctPaths(
        {f"--output ({key})": path for key, path in outputs.items()}, {"--data": list(paths.values()), "--model": str(modelPath)}
    )
    reporter = pipeline.ProgressReporter(progress) if progress is not None else None
    if reporter is not None:
        reporter.stage(pipeline.Stage.LOADING)
    images = {role: readVolume(path) for role, path in paths.items()}
    loaded = modelcard.loadModel(modelPath, device)
    card = loaded.card
    result = pipeline.segmentImages(
        [images["axial"]],
        loaded,
        names=["T2 axial"],
        roiImages=[images["sagittal"], images["coronal"]],
        roiNames=["T2 sagittal", "T2 coronal"],
        progress=reporter,
    )
    if reporter is not None:
        reporter.stage(pipeline.Stage.STATISTICS)
    report, _ = runReport(result, card, [images["axial"]])
    document = statisticsDocument(
        report,
        result,
        card,
        str(modelPath),
        [(card["inputs"][0]["name"], paths["axial"], None)],
        roiSeries=[paths["sagittal"], paths["coronal"]],
        case=case,
        modelSHA256=sha256(modelPath),
    )
    writeDemoOutputs(output, outputs, document, result, report, card, images, case, reporter)
    if reporter is not None:
        reporter.finish()
    for segment in report["segments"]:
        log(f"{segment['name']}: {segment['volume_cm3']:.1f} cm3")
    log(
        f"ROI {' × '.join(f'{v:.1f}' for v in result.roi.sizeMM)} mm; wrote {', '.join(outputs.values())} in "
        f"{time.perf_counter() - started:.1f} s"
    )
    if case == CASE:
        log(
            "Note: a demonstration model trained on this very case (ProstateX-0000); see "
            "MedSegUNet/Resources/Models/prostate-zones/README.md."
        )
    return {"outputs": outputs, "report": report, "roi": result.roi}


def writeDemoOutputs(
    output: str, outputs: dict, document: dict, result, report: dict, card: dict, images: dict, case: str, reporter
) -> None:
    """The demo's four files, staged and verified, then renamed together (the folder made if missing)."""
    from .engine import pipeline
    from .engine.writer import OutputPlan, writeResults

    try:
        os.makedirs(output, exist_ok=True)
    except OSError as error:
        from .engine.errors import osErrorMessage

        raise OutputError(osErrorMessage(error, "create", output)) from None
    if reporter is not None:
        reporter.stage(pipeline.Stage.WRITING)
    plan = OutputPlan(
        segmentation=outputs["segmentation"],
        statisticsCSV=outputs["statistics_csv"],
        statisticsJSON=outputs["statistics_json"],
        preview=outputs["overview"],
    )
    writeResults(
        plan, result, card, report, document, [images["axial"]], {"sagittal T2": images["sagittal"], "coronal T2": images["coronal"]}, case
    )


__all__ = [
    "CASE",
    "defaultModelPath",
    "cacheFolder",
    "download",
    "fetchDemoData",
    "findLocalSeries",
    "caseName",
    "runDemo",
    "writeDemoOutputs",
]
