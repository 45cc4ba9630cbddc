"""``medsegunet batch``: a cohort of cases, one case in and its files out, on workers that keep the model.

The job contract (the same for ``segment``, this command's local workers, the Ray engine and
Slicer's console batch): a :class:`CaseSpec` (the case's inputs in card order and its ROI series)
goes to :func:`processCase` with a loaded model; the case's files come out in ``DIR/<case>/`` and a
summary row comes back.

Per case, ``DIR/<case>/`` holds ``<case>.seg.nrrd`` (or ``--format``), ``<case>-statistics.csv``
and ``.json`` (what ``segment`` writes, ROI included), ``<case>-qc.png`` (the mid-ROI slice with
the labels) and ``manifest.json`` (the model's SHA256, the inputs' sizes and times). A case's
files are written in a hidden staging folder and renamed into place as one folder, so a case is
there whole or not at all. For the cohort, ``DIR/summary.csv`` has one row per case and
``DIR/qc.png`` is a montage of the cases' QC tiles.

Local workers are processes (``spawn``) that import torch and load the model once, and prepare the
next case (reading, ROI, resampling) on a thread while the network runs on the current one. A
worker that dies (out of memory, a crash in a native library) is replaced and its cases are
retried once. The parent process never imports torch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import multiprocessing
import os
import re
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from ..engine.errors import Interrupted, MedSegUNetError, firstLine
from ..engine.volumes import DicomSeries

FORMATS = {"seg.nrrd": ".seg.nrrd", "nii.gz": ".nii.gz", "nrrd": ".nrrd", "nii": ".nii", "mha": ".mha", "dcm": ".dcm"}
STAGING_PREFIX = ".medsegunet-case-"
# Written in every staging folder while it is filled: what a later run's sweep recognises.
STAGING_MARKER = ".medsegunet-staging"
# A case name that is one plain path component (it becomes DIR/<case>).
MAX_CASE_ID = 128
SAFE_CASE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,%d}" % (MAX_CASE_ID - 1))
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "medsegunet.batch-case/1"
# More worker processes or network threads than any machine runs are typing mistakes.
MAX_WORKERS = 256
MAX_THREADS = 1024
# Tiles of 256 px (readable at 100 %), 10 × 10 per montage page.
QC_TILE = 256
QC_TILES_PER_PAGE = 100


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


@dataclass
class CaseSpec:
    """One case of a cohort.

    Args:
        id: the case's name (sub-folder, CSV ``case`` column, or image file name).
        inputs: per card input, ``(path, channel)``; ``channel`` picks a volume of a 4D file.
        roi: extra series whose extents limit the ROI.
        series: role → the series chosen, for ``--dry-run``'s table.
        notes: ROI series that were not found (the case runs without them).
        error: why the case cannot run (no or ambiguous input series), or None.
        found: path → the DICOM series the matching scan found there, so that reading the case
            does not scan its folders again.
    """

    id: str
    inputs: list[tuple[str, int | None]] = field(default_factory=list)
    roi: list[str] = field(default_factory=list)
    series: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    found: dict[str, DicomSeries] = field(default_factory=dict)


def _caseFromFolder(folder: str, card: dict) -> CaseSpec:
    from .seriesmatch import findCaseSeries, matchSeries, rolesOfCard

    case = CaseSpec(id=os.path.basename(os.path.normpath(folder)))
    try:
        match = matchSeries(card, findCaseSeries(folder), case.id)
    except MedSegUNetError as error:
        case.error = firstLine(error)
        return case
    roles = rolesOfCard(card)
    case.inputs = [(candidate.path, None) for candidate in match.inputs]
    case.roi = [candidate.path for candidate in match.roi]
    for role, candidate in zip([r for r in roles if r.kind == "input"], match.inputs):
        case.series[role.name] = candidate.path
    for role, candidate in zip([r for r in roles if r.kind == "roi" and not any(r.name in note for note in match.notes)], match.roi):
        case.series[f"ROI {role.name}"] = candidate.path
    case.notes = match.notes
    case.found = {candidate.path: candidate.found for candidate in [*match.inputs, *match.roi] if candidate.found is not None}
    return case


def readTableText(path: str, what: str) -> str:
    """A table's text: UTF-8 with or without a byte-order mark (as Excel saves "CSV UTF-8").

    Raises:
        MedSegUNetError: another encoding, or a file that cannot be read (one line naming it).
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as error:
        from ..engine.errors import osErrorMessage

        raise MedSegUNetError(osErrorMessage(error, "read", path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise MedSegUNetError(f"{what} '{path}' is not UTF-8 text (byte {error.start}): save it as UTF-8 (in Excel: CSV UTF-8).") from None


def _caseFromFile(path: str, card: dict) -> CaseSpec:
    """A volume file directly in a cohort folder: a case of its own (one-input models)."""
    from ..engine.volumes import pathSuffix

    name = os.path.basename(path)
    case = CaseSpec(id=name[: -len(pathSuffix(name))])
    if len(card["inputs"]) != 1:
        case.error = f"'{name}' is a single volume file, but the model takes {len(card['inputs'])} inputs: put each case's volumes in a folder of its own."
        return case
    case.inputs = [(path, None)]
    case.series = {card["inputs"][0]["name"]: path}
    return case


def _casesFromCSV(table: str, card: dict) -> list[CaseSpec]:
    base = os.path.dirname(os.path.abspath(table))
    try:
        rows = list(csv.DictReader(io.StringIO(readTableText(table, "Case table"), newline="")))
    except csv.Error as error:
        raise MedSegUNetError(f"Case table '{table}' is not a CSV table ({firstLine(error)}).") from None
    if not rows:
        raise MedSegUNetError(f"Case table '{table}' has no rows.")
    columns = {c.strip().lower(): c for c in rows[0].keys() if c}
    inputNames = [spec["name"] for spec in card["inputs"]]
    missing = [name for name in ["case", *inputNames] if name.lower() not in columns]
    if missing:
        raise MedSegUNetError(f"Case table '{table}' lacks column(s) {', '.join(missing)}: it needs 'case' and one column per card input ({', '.join(inputNames)}).")
    roiColumns = [columns[c] for c in columns if c.startswith("roi")]
    from .seriesmatch import rolesOfCard

    roiRoles = [role.name for role in rolesOfCard(card) if role.kind == "roi"]

    def resolve(value: str) -> str:
        from ..engine.volumes import resolveTablePath

        return resolveTablePath(base, value)

    cases = []
    for index, row in enumerate(rows):
        case = CaseSpec(id=(row.get(columns["case"]) or "").strip() or f"case{index + 1:03d}")
        empty = [name for name in inputNames if not (row.get(columns[name.lower()]) or "").strip()]
        if empty:
            case.error = f"Case '{case.id}': no path for input(s) {', '.join(empty)} in '{table}'."
        else:
            case.inputs = [(resolve(row[columns[name.lower()]]), None) for name in inputNames]
            case.roi = [resolve(row[c]) for c in roiColumns if (row.get(c) or "").strip()]
            case.series = {name: path for name, (path, _) in zip(inputNames, case.inputs)}
            # The table's roi columns in order stand for the card's ROI series (then any extra ones).
            case.series.update({f"ROI {roiRoles[index] if index < len(roiRoles) else index + 1}": path for index, path in enumerate(case.roi)})
        cases.append(case)
    return cases


def _casesFromDecathlon(description: str, card: dict) -> list[CaseSpec]:
    folder = os.path.dirname(os.path.abspath(description))
    try:
        dataset = json.loads(readTableText(description, "Dataset description"))
    except json.JSONDecodeError as error:
        raise MedSegUNetError(f"'{description}' is not valid JSON ({error.msg}).") from None
    if not isinstance(dataset, dict):
        raise MedSegUNetError(f"'{description}' is not a Decathlon dataset.json: its top level is a {type(dataset).__name__}, not an object with 'test' or 'training'.")
    modalities = dataset.get("modality") or {"0": card["inputs"][0]["name"]}
    if not isinstance(modalities, dict):
        raise MedSegUNetError(f"'{description}': 'modality' is not an object of index → name.")
    for key in ("test", "training"):
        entries = dataset.get(key) or []
        if not isinstance(entries, list) or not all(isinstance(entry, str) or (isinstance(entry, dict) and isinstance(entry.get("image"), str)) for entry in entries):
            raise MedSegUNetError(f"'{description}': '{key}' is not a list of image paths or of {{\"image\": path}} entries.")
    count = len(card["inputs"])
    if len(modalities) != count:
        raise MedSegUNetError(f"'{description}' has {len(modalities)} modalities but the model takes {count} inputs: use a model for these images.")
    from ..engine.volumes import pathSuffix

    images = [entry if isinstance(entry, str) else entry.get("image") for entry in (dataset.get("test") or []) + (dataset.get("training") or [])]
    cases = []
    for image in images:
        if not image:
            continue
        path = os.path.normpath(os.path.join(folder, image))
        name = os.path.basename(path)
        suffix = pathSuffix(name)
        case = CaseSpec(id=name[: -len(suffix)] if suffix else name)
        case.inputs = [(path, index if count > 1 else None) for index in range(count)]
        case.series = {spec["name"]: f"{path}[{index}]" if count > 1 else path for index, spec in enumerate(card["inputs"])}
        cases.append(case)
    return cases


def casesFromSource(source: str, card: dict) -> list[CaseSpec]:
    """The cases of a cohort: a folder of case folders, a CSV, or a Decathlon ``dataset.json``.

    Raises:
        MedSegUNetError: a missing source, a CSV without the needed columns, duplicate case names,
            or no case at all. Cases whose series cannot be matched come back with ``error`` set.
    """
    from ..engine.volumes import VOLUME_SUFFIXES, checkRegularFile, pathSuffix

    checkRegularFile(source, "Cases source")
    if os.path.isdir(source):
        description = os.path.join(source, "dataset.json")
        if os.path.isfile(description):
            cases = _casesFromDecathlon(description, card)
        else:
            entries = sorted((entry for entry in os.scandir(source) if not entry.name.startswith(".")), key=lambda entry: entry.name)
            cases = [_caseFromFolder(entry.path, card) if entry.is_dir() else _caseFromFile(entry.path, card)
                     for entry in entries if entry.is_dir() or pathSuffix(entry.name) in VOLUME_SUFFIXES]
    elif source.lower().endswith(".csv"):
        cases = _casesFromCSV(source, card)
    elif source.lower().endswith(".json"):
        cases = _casesFromDecathlon(source, card)
    else:
        raise MedSegUNetError(f"--cases '{source}' is neither a folder of case folders, a .csv table nor a Decathlon dataset.json.")
    if not cases:
        raise MedSegUNetError(f"No case found in '{source}': give a folder with one sub-folder per case, a CSV or a dataset.json.")
    for case in cases:
        why = checkCaseId(case.id)
        if why is not None:
            case.error = why[0].upper() + why[1:] + "."
        missing = [path for path in [*(p for p, _ in case.inputs), *case.roi] if not os.path.exists(path.partition("::")[0])]
        if missing and case.error is None:
            case.error = f"'{missing[0]}' does not exist: check the path (a table's relative paths start from the table's folder)."
    ids = [case.id for case in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise MedSegUNetError(f"Case names must be unique; repeated: {', '.join(duplicates)}.")
    return cases


# ---------------------------------------------------------------------------------------------
# One case: the job contract
# ---------------------------------------------------------------------------------------------


@dataclass
class BatchOptions:
    """What every case of a run shares (picklable: it travels to worker processes and Ray actors)."""

    modelPath: str
    modelSHA256: str
    outputDir: str
    format: str = "seg.nrrd"
    device: str = "auto"
    resampleIrregular: bool = False
    threads: int | None = None
    # SHA256 of the effective card (embedded, or the sidecar that overrides it): a rerun redoes
    # cases made under another card even when the model file is the same.
    cardSHA256: str = ""


def caseOutputNames(caseId: str, fmt: str) -> dict[str, str]:
    return {
        "segmentation": f"{caseId}{FORMATS[fmt]}",
        "statistics_csv": f"{caseId}-statistics.csv",
        "statistics_json": f"{caseId}-statistics.json",
        "qc": f"{caseId}-qc.png",
        "manifest": MANIFEST,
    }


def _seriesFiles(path: str, found: DicomSeries | None = None) -> list[str]:
    from ..engine.volumes import splitSeriesSelector

    path, series = splitSeriesSelector(path)
    if os.path.isdir(path):
        if found is not None and series is not None:
            return list(found.files)
        if series is not None:
            from ..engine.volumes import selectDicomSeries

            return list(selectDicomSeries(path, series).files)
        return sorted(entry.path for entry in os.scandir(path) if entry.is_file())
    return [path]


def canonicalPath(path: str) -> str:
    """A case input's real path (``FOLDER::SERIES`` keeps its series part), however it was typed."""
    folder, separator, series = path.partition("::")
    return os.path.realpath(folder) + separator + series


def cardDigest(card: dict) -> str:
    """SHA256 of a card's content (key order aside)."""
    import hashlib

    return hashlib.sha256(json.dumps(card, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def inputSignature(case: CaseSpec) -> list[dict]:
    """Real path, size and modification time of every file a case reads (a rerun compares them):
    what the inputs are, not how their paths were typed (relative, absolute, through links)."""
    signature = []
    for path in [p for p, _ in case.inputs] + list(case.roi):
        files = _seriesFiles(path, case.found.get(path))
        stats = [os.stat(f) for f in files if os.path.exists(f)]
        signature.append({"path": canonicalPath(path), "files": len(stats), "bytes": sum(s.st_size for s in stats), "mtime": max((s.st_mtime for s in stats), default=0.0)})
    return signature


def isCaseComplete(case: CaseSpec, options: BatchOptions) -> bool:
    """Whether ``DIR/<case>`` holds every output, made by the same model file from the same inputs."""
    folder = os.path.join(options.outputDir, case.id)
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as stream:
            manifest = json.load(stream)
    except (OSError, ValueError):
        return False
    names = caseOutputNames(case.id, options.format)
    return (
        manifest.get("format") == MANIFEST_FORMAT
        and manifest.get("model", {}).get("sha256") == options.modelSHA256
        and manifest.get("card_sha256") == options.cardSHA256
        and manifest.get("inputs") == inputSignature(case)
        and all(os.path.isfile(os.path.join(folder, name)) and os.path.getsize(os.path.join(folder, name)) > 0 for name in names.values())
    )


def readCaseImages(case: CaseSpec, options: BatchOptions) -> tuple[list[sitk.Image], list[sitk.Image]]:
    from ..engine.volumes import readVolume, readVolumeChannel

    images = [readVolumeChannel(path, channel, options.resampleIrregular, case.found.get(path)) for path, channel in case.inputs]
    roiImages = [readVolume(path, resampleIrregular=options.resampleIrregular, found=case.found.get(path)) for path in case.roi]
    return images, roiImages


def prepareCase(case: CaseSpec, card: dict, options: BatchOptions):
    """Read a case and prepare it for the network (runs on a worker's prefetch thread).

    Returns:
        (input images, ROI images, :class:`pipeline.PreparedInputs`).
    """
    from ..engine import pipeline
    from ..engine.volumes import volumeName

    if case.error:
        raise MedSegUNetError(case.error)
    images, roiImages = readCaseImages(case, options)
    margin = float((card.get("roi") or {}).get("margin_mm", 0.0))
    prepared = pipeline.prepareImages(
        images, card, names=[volumeName(p) for p, _ in case.inputs], roiImages=roiImages, roiNames=[volumeName(p) for p in case.roi], marginMM=margin
    )
    return images, roiImages, prepared


def qcTile(reference: sitk.Image, labelmap: sitk.Image, roi, card: dict, regions=None) -> np.ndarray:
    """The mid-ROI slice (along K) with the labels, as a QC_TILE² RGB uint8 tile, physical aspect kept.

    Args:
        reference: the reference volume (KJI arrays, LPS).
        labelmap: the result on the reference grid.
        regions: sigmoid regions (their outlines are all drawn by painting in card order).
    """
    k = int((roi.ijkMin[2] + roi.ijkMax[2]) // 2)
    rows = slice(int(roi.ijkMin[1]), int(roi.ijkMax[1]) + 1)
    columns = slice(int(roi.ijkMin[0]), int(roi.ijkMax[0]) + 1)
    image = sitk.GetArrayViewFromImage(reference)[k, rows, columns].astype(np.float32)
    labels = sitk.GetArrayViewFromImage(labelmap)[k, rows, columns]
    low, high = np.percentile(image, [1, 99.5]) if image.size else (0.0, 1.0)
    gray = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for label in card["labels"]:
        mask = labels == int(label["value"])
        rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.asarray(label["color"], dtype=np.float32)
    spacing = reference.GetSpacing()
    heightMM, widthMM = rgb.shape[0] * spacing[1], rgb.shape[1] * spacing[0]
    scale = QC_TILE / max(heightMM, widthMM, 1e-6)
    height, width = max(1, int(round(heightMM * scale))), max(1, int(round(widthMM * scale)))
    rowIndex = np.minimum((np.arange(height) / height * rgb.shape[0]).astype(int), rgb.shape[0] - 1)
    columnIndex = np.minimum((np.arange(width) / width * rgb.shape[1]).astype(int), rgb.shape[1] - 1)
    tile = np.zeros((QC_TILE, QC_TILE, 3), dtype=np.float32)
    top, left = (QC_TILE - height) // 2, (QC_TILE - width) // 2
    tile[top : top + height, left : left + width] = rgb[rowIndex][:, columnIndex]
    return (tile * 255).astype(np.uint8)


def _pngWriter(array: np.ndarray):
    def write(path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.imsave(path, array, format="png")

    return write


def checkCaseId(caseId: str) -> str | None:
    """Why a case name cannot be a folder name under ``--output`` (None when it can).

    A case name becomes ``DIR/<case>``: only one plain path component is safe (no ``/``, ``..``,
    absolute path or hidden name, which could write or replace files outside ``DIR`` or collide
    with the run's staging folders).
    """
    if not SAFE_CASE_ID.fullmatch(caseId) or caseId in (".", ".."):
        shown = caseId if len(caseId) <= 60 else caseId[:57] + "..."
        return (f"the case name {shown!r} cannot be a folder name: use letters, digits, '-', '_' and '.' "
                f"(not first), at most {MAX_CASE_ID} characters; rename the case")
    return None


def shownCaseId(caseId: str) -> str:
    """A case name for a one-line message: as it is when safe, else quoted with escapes (no newline)."""
    return caseId if SAFE_CASE_ID.fullmatch(caseId) else repr(caseId)


def _madeByARun(folder: str) -> bool:
    """Whether ``folder`` is a case folder a batch run wrote (its manifest says so)."""
    if os.path.islink(folder) or not os.path.isdir(folder):
        return False
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as stream:
            return json.load(stream).get("format") == MANIFEST_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _insideOutput(outputDir: str, path: str) -> bool:
    return os.path.dirname(os.path.realpath(path)) == os.path.realpath(outputDir)


def makeStagingFolder(outputDir: str) -> str:
    """A hidden staging folder in ``outputDir`` with the run's marker file, so that a later run
    removes it only if a run made it."""
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=outputDir)
    with open(os.path.join(staging, STAGING_MARKER), "w", encoding="utf-8") as stream:
        stream.write("medsegunet batch staging folder\n")
    return staging


def writeCaseFolder(outputDir: str, caseId: str, write: Callable[[str], None]) -> None:
    """Write a case's files into a hidden staging folder, then rename it to ``DIR/<case>`` whole.

    ``write(folder)`` writes and verifies the files. A previous ``DIR/<case>`` (``--force``) is
    replaced in one step, but only a case folder a run wrote, lying in ``DIR`` itself: anything
    else of that name is refused, never removed. On any error or interruption the staging folder
    is removed.
    """
    from ..engine.volumes import signalsDeferred

    why = checkCaseId(caseId)
    if why is not None:
        raise MedSegUNetError(why)
    final = os.path.join(outputDir, caseId)
    if os.path.lexists(final) and not (_madeByARun(final) and _insideOutput(outputDir, final)):
        raise MedSegUNetError(f"'{final}' exists and is not a case folder written by medsegunet batch: it is left as it is; move it away or choose another --output.")
    staging = makeStagingFolder(outputDir)
    try:
        write(staging)
        os.remove(os.path.join(staging, STAGING_MARKER))
        # mkdtemp makes the folder private; the case folder gets a plain mkdir's permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        with signalsDeferred():
            old = None
            if os.path.exists(final):
                old = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=outputDir)
                os.rmdir(old)
                os.rename(final, old)
                open(os.path.join(old, STAGING_MARKER), "w").close()  # a later sweep may finish removing it
            os.rename(staging, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def processCase(case: CaseSpec, loaded, options: BatchOptions, prepared=None, networkLock=None) -> dict:
    """Segment one case and write its files: the job contract of every batch engine.

    Args:
        case: the case (its ``error`` makes it fail at once).
        loaded: the model, loaded once per worker.
        prepared: what :func:`prepareCase` returned, when a prefetch thread already read it.
        networkLock: held around the network only, when several cases of one worker run at once
            (a Ray actor's threads): one case is read and another written while a third uses the
            network.

    Returns:
        the summary row: ``case``, ``status`` (ok / failed), ``message``, ``seconds``,
        ``roi_size_mm``, ``volumes_cm3`` {label: cm³}, ``qc``, ``notes``.
    """
    started = time.perf_counter()
    try:
        prepared = prepared if prepared is not None else prepareCase(case, loaded.card, options)
        with networkLock if networkLock is not None else contextlib.nullcontext():
            images, result = inferCase(prepared, loaded)
    except Exception as error:  # noqa: BLE001 - the row says what it was, as finishCase does
        return failedRow(case, error, started)
    return finishCase(case, images, result, loaded.card, options, started)


def inferCase(prepared, loaded):
    """The network's part of a case :func:`prepareCase` prepared: (input images, :class:`pipeline.SegmentationResult`)."""
    from ..engine import pipeline

    images, _, preparedInputs = prepared
    return images, pipeline.segmentPrepared(preparedInputs, loaded)


def failedRow(case: CaseSpec, error: BaseException, started: float) -> dict:
    """The summary row of a case that failed, with its one-line reason."""
    if isinstance(error, MedSegUNetError):
        message = firstLine(error)
    elif isinstance(error, MemoryError):
        message = "out of memory: use a smaller sw_batch_size or patch_size, fewer --workers, or --device cpu"
    else:
        message = f"internal error: {type(error).__name__}: {firstLine(error)}"
    return {"case": case.id, "status": "failed", "message": message, "seconds": round(time.perf_counter() - started, 3),
            "roi_size_mm": None, "volumes_cm3": {}, "notes": list(case.notes), "finished": finishedNow()}


def finishCase(case: CaseSpec, images, result, card: dict, options: BatchOptions, started: float) -> dict:
    """Statistics and the case folder's files (staged, verified, renamed whole); the summary row.

    Runs on a worker's writer thread while the network runs on the next case.
    """
    from ..engine import statistics
    from ..engine.outputs import stageSegmentation
    from ..engine.volumes import StagedOutputs, textVerifier, writeTextFile

    row = {"case": case.id, "status": "failed", "message": "", "seconds": 0.0, "roi_size_mm": None, "volumes_cm3": {}, "notes": list(case.notes)}
    try:
        inputNames = [spec["name"] for spec in card["inputs"]]
        report = statistics.computeStatistics(result.labelmap, card, dict(zip(inputNames, images)), regions=result.regions)
        names = caseOutputNames(case.id, options.format)
        document = {
            **report,
            "case": case.id,
            "inputs": [{"name": name, "path": path, "channel": channel} for name, (path, channel) in zip(inputNames, case.inputs)],
            "roi_series": list(case.roi),
            "notes": list(case.notes),
            "roi": result.roi.toDict(),
            "model": {"path": os.path.abspath(options.modelPath), "name": card["name"], "sha256": options.modelSHA256},
            "device": result.device,
            "timing_s": {key: round(value, 4) for key, value in result.timings.items()},
        }
        finished, seconds = finishedNow(), round(time.perf_counter() - started, 3)
        manifest = {
            "format": MANIFEST_FORMAT,
            "case": case.id,
            "model": {"path": os.path.abspath(options.modelPath), "sha256": options.modelSHA256},
            "card_sha256": options.cardSHA256,
            "inputs": inputSignature(case),
            "outputs": sorted(names.values()),
            # A rerun that skips the case reports these, as the run that made it did.
            "seconds": seconds,
            "finished": finished,
        }
        tile = qcTile(images[0], result.labelmap, result.roi, card, result.regions)

        def write(folder: str) -> None:
            with StagedOutputs() as staged:
                if options.format == "dcm":
                    from ..engine.dicomseg import stageDicomSegmentation

                    stageDicomSegmentation(staged, case.inputs[0][0], result.labelmap, card, os.path.join(folder, names["segmentation"]), result.regions)
                else:
                    stageSegmentation(staged, result.labelmap, card["labels"], os.path.join(folder, names["segmentation"]), result.regions)
                for key, text in (
                    ("statistics_csv", statistics.statisticsCSV(report["segments"], inputNames, False)),
                    ("statistics_json", statistics.statisticsJSON(document)),
                    ("manifest", json.dumps(manifest, indent=2)),
                ):
                    writeTextFile(text, staged.stage(os.path.join(folder, names[key]), verify=textVerifier(text)))
                _pngWriter(tile)(staged.stage(os.path.join(folder, names["qc"])))

        writeCaseFolder(options.outputDir, case.id, write)
        row.update(
            status="ok",
            roi_size_mm=[round(float(v), 3) for v in result.roi.sizeMM],
            volumes_cm3={segment["name"]: round(segment["volume_cm3"], 6) for segment in report["segments"]},
            qc=qualityNotes(report),
            network_s=round(float(result.timings.get("network_thread", 0.0)), 4),
        )
    except Exception as error:  # one case's bug must not stop the cohort; the row says what it was
        return failedRow(case, error, started)
    row["seconds"], row["finished"] = seconds, finished
    return row


def finishedNow() -> str:
    """When a case ended (UTC, ISO 8601 to the millisecond): the summary's audit trail, and the
    cohort's throughput (cases per second between the first and the last)."""
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def qualityNotes(report: dict) -> str:
    """A case's QC state for the summary: ``ok``, or ``flagged:`` and each segment outside the card's ranges."""
    flagged = [f"{segment['name']} {segment['qc'].removeprefix('flagged: ')}" for segment in report.get("segments", []) if segment.get("qc", "ok") != "ok"]
    return "flagged: " + "; ".join(flagged) if flagged else "ok"


def skippedRow(case: CaseSpec, options: BatchOptions, previous: dict | None = None) -> dict:
    """The summary row of a case whose outputs are complete (read back from its statistics and
    manifest), with the seconds, attempts and finishing time of the run that made it.

    Args:
        previous: the case's row in the earlier ``summary.csv``, if any (its attempts).
    """
    folder = os.path.join(options.outputDir, case.id)
    names = caseOutputNames(case.id, options.format)
    with open(os.path.join(folder, names["statistics_json"]), encoding="utf-8") as stream:
        report = json.load(stream)
    with open(os.path.join(folder, MANIFEST), encoding="utf-8") as stream:
        manifest = json.load(stream)
    attempts = (previous or {}).get("attempts") or 1
    return {
        "case": case.id,
        "status": "skipped",
        "message": "outputs complete, same model, card and inputs (use --force to redo)",
        "seconds": float(manifest.get("seconds", 0.0)),
        "finished": manifest.get("finished", ""),
        "attempts": int(attempts) if str(attempts).isdigit() else 1,
        "roi_size_mm": report.get("roi", {}).get("size_mm"),
        "volumes_cm3": {segment["name"]: segment["volume_cm3"] for segment in report.get("segments", [])},
        "notes": report.get("notes", []),
        "qc": qualityNotes(report),
    }


def previousSummary(outputDir: str) -> dict[str, dict]:
    """The rows of an earlier run's ``summary.csv`` by case ({} when there is none or it is unreadable)."""
    try:
        with open(os.path.join(outputDir, "summary.csv"), encoding="utf-8", newline="") as stream:
            return {row.get("case", ""): row for row in csv.DictReader(stream)}
    except (OSError, ValueError, csv.Error):
        return {}


# ---------------------------------------------------------------------------------------------
# Local engine: worker processes that keep the model
# ---------------------------------------------------------------------------------------------


class ResultSender:
    """A worker's end of its own results pipe, shared by its threads (a lock of this process only)."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.lock = threading.Lock()

    def put(self, message) -> None:
        with self.lock:
            self.connection.send(message)


def _workerMain(workerId: int, cases: list[CaseSpec], options: BatchOptions, device: str, tasks, connection) -> None:
    """A worker process: load the model once, then take cases until told to stop.

    The next case is read and prepared on one thread, and the previous case's statistics and files
    are written on another, while the network runs on the current one. Messages go to the parent
    through this worker's own pipe (``connection``).
    """
    results = ResultSender(connection)
    from concurrent.futures import ThreadPoolExecutor

    # Ctrl-C reaches the whole process group; the parent decides, and ends the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exitWithParent()
    import warnings

    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.simplefilter("ignore", category)
    import torch

    from ..engine.modelcard import loadModel

    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        loaded = loadModel(options.modelPath, device)
    except MedSegUNetError as error:
        results.put(("fatal", workerId, firstLine(error)))
        return
    warmUp()
    card = loaded.card

    def prepare(index: int):
        return prepareCase(cases[index], card, options)

    pending: list = []
    stopping = False
    finishing = None
    # Reads run ahead on one thread, statistics and writes behind on another: the network (this
    # thread) goes from case to case without waiting for the disk.
    with ThreadPoolExecutor(max_workers=1, initializer=_yieldToTheNetwork) as pool, ThreadPoolExecutor(max_workers=1, initializer=_yieldToTheNetwork) as writer:
        while True:
            if not pending:
                if stopping:
                    break
                index = tasks.get()
                if index is None:
                    break
                results.put(("begun", workerId, index))
                pending.append((index, pool.submit(prepare, index)))
            if len(pending) < 2 and not stopping:
                try:
                    following = tasks.get(timeout=0.01)
                except queue.Empty:
                    following = -1
                if following is None:
                    stopping = True
                elif following >= 0:
                    results.put(("begun", workerId, following))
                    pending.append((following, pool.submit(prepare, following)))
            index, future = pending.pop(0)
            try:
                prepared = future.result()
            except Exception as error:  # noqa: BLE001 - the row says what it was
                results.put(("done", workerId, index, failedRow(cases[index], error, time.perf_counter())))
                continue
            started = time.perf_counter()
            try:
                images, result = inferCase(prepared, loaded)
            except Exception as error:  # noqa: BLE001 - the row says what it was
                results.put(("done", workerId, index, failedRow(cases[index], error, started)))
                continue
            result.timings["network_thread"] = time.perf_counter() - started
            if finishing is not None:
                finishing.result()  # one case's files in flight at a time
            finishing = writer.submit(_finishAndReport, workerId, index, cases[index], images, result, card, options, started, results)
        if finishing is not None:
            finishing.result()


def exitWithParent() -> None:
    """End this worker process when the batch's driver dies (even by SIGKILL): no orphan keeps a GPU.

    Linux: the kernel's parent-death signal; elsewhere, and as a second guard, a thread that sees
    the parent PID change (a worker's parent is the driver itself, never a launcher).
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the driver died before the signal was set
            os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="medsegunet-parent-watch").start()


def _yieldToTheNetwork() -> None:
    """Lower this thread's CPU priority by 10 (Linux: a thread's nice value), so that on a CPU-only
    machine the reading and writing threads take the cores the network leaves idle rather than
    slowing it down."""
    if hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        try:
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, min(os.getpriority(os.PRIO_PROCESS, thread) + 10, 19))
        except OSError:  # not allowed here: the thread keeps the normal priority
            pass


def _finishAndReport(workerId: int, index: int, case: CaseSpec, images, result, card: dict, options: BatchOptions, started: float, results) -> None:
    results.put(("done", workerId, index, finishCase(case, images, result, card, options, started)))


def warmUp() -> None:
    """Set a worker process up once: what every case's outputs need is imported now, not during
    the first case, and ITK's warnings are off.

    A worker reads on a thread, where :func:`volumes.nativeMessages` cannot capture what ITK prints
    on the shared stderr, so its warnings (e.g. "Non uniform sampling" for a series with a missing
    slice) would land between the run's one-line messages; the checks they duplicate fail the case
    with their own line, and errors still raise.
    """
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    import monai.transforms  # noqa: F401 (normalisation)
    import slicerio  # noqa: F401 (the segmentation file)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401 (the QC tile; imported last: its font library marks a warm worker)


def _deathMessage(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.Signals._value2member_map_ else str(-exitcode)
        why = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"the worker process was killed by {name}{why}"
    return f"the worker process ended with status {exitcode}"


def gpuCount() -> int:
    """GPUs visible to this machine, without importing torch in this process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    executable = shutil.which("nvidia-smi")
    if not executable:
        return 0
    import subprocess

    try:
        done = subprocess.run([executable, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in done.stdout.splitlines() if line.startswith("GPU "))


def workerDevices(device: str, workers: int | None) -> list[str]:
    """The device of each worker: one per GPU by default (``cuda:k``), else one CPU worker."""
    gpus = gpuCount() if device in ("auto", "cuda") else 0
    if device == "cuda" and gpus == 0:
        raise MedSegUNetError("CUDA was asked for but no NVIDIA GPU is visible: use --device cpu or auto.")
    count = workers or max(gpus, 1)
    if gpus and device in ("auto", "cuda"):
        return [f"cuda:{index % gpus}" for index in range(count)]
    return ["cpu" if device == "auto" else device] * count


# Cases handed to a worker at a time: the one the network runs, the one read ahead, and the next,
# already in the worker's queue when its network finishes a case: with two, the parent handed the
# next case only after the previous case's files were written, the worker picked it up only after
# its network ended, and that case was read while the network waited.
CASES_IN_HAND = 3


# A case lost this many times with a dead worker without having begun (its "begun" message may
# not have left a worker killed at once) is then counted as an attempt, so a run always ends.
FREE_LOSSES = 2


def lostCases(lost: set[int], begun: set[int], freeLosses: dict[int, int]) -> tuple[list[int], list[int]]:
    """Of a dead worker's unfinished cases, those to hand out again as they were and those that
    count an attempt.

    Args:
        lost: the cases the worker held and had not finished.
        begun: the cases it said it had begun (read or segmented).
        freeLosses: per case, how often it was lost without having begun (updated).

    Returns:
        (cases to hand out again without an attempt: still waiting in the worker's queue, they
        cannot have killed it; cases that count an attempt), each sorted.
    """
    again, suspects = [], []
    for index in sorted(lost):
        if index not in begun:
            freeLosses[index] = freeLosses.get(index, 0) + 1
            if freeLosses[index] <= FREE_LOSSES:
                again.append(index)
                continue
        suspects.append(index)
    return again, suspects


def runLocal(
    cases: list[CaseSpec], todo: Sequence[int], options: BatchOptions, devices: Sequence[str], onRow: Callable[[int, dict], None],
    onBegun: Callable[[int, int], None] | None = None, onWarning: Callable[[str], None] | None = None,
) -> None:
    """Run cases ``todo`` on worker processes; ``onRow(index, row)`` as each case ends,
    ``onBegun(index, workerPid)`` when a worker says it has begun a case (read or segmented), and
    ``onWarning(text)`` when a dead worker is replaced.

    Each worker has its own task queue and the parent hands it cases, so the parent always knows
    which cases a worker holds, and the worker says when it begins one: a dead worker is replaced,
    the cases it had begun (read or segmented) are tried once more, and those still waiting in its
    queue are handed out again without counting an attempt (they cannot have killed it).
    """
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")
    # One results pipe per worker: a shared Queue has one cross-process write lock, and a worker
    # killed while holding it would silence every other worker for ever.
    receivers: dict[int, object] = {}
    attempts = {index: 0 for index in todo}
    pending = list(todo)
    remaining = set(todo)
    workers: dict[int, tuple] = {}  # id → (process, device, task queue)
    held: dict[int, set[int]] = {}
    begun: dict[int, set[int]] = {}
    freeLosses: dict[int, int] = {}
    nextId = 0

    def start(device: str) -> None:
        nonlocal nextId
        tasks = context.Queue()
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_workerMain, args=(nextId, cases, options, device, tasks, sender), daemon=True)
        process.start()
        sender.close()  # the worker holds the only write end
        workers[nextId] = (process, device, tasks)
        receivers[nextId] = receiver
        held[nextId], begun[nextId] = set(), set()
        nextId += 1

    def handOut() -> None:
        for workerId, (_, _, tasks) in workers.items():
            while pending and len(held[workerId]) < CASES_IN_HAND:
                index = pending.pop(0)
                held[workerId].add(index)
                tasks.put(index)

    for device in devices[: max(1, min(len(devices), len(todo)))]:
        start(device)
    handOut()
    try:
        while remaining:
            messages = []
            for receiver in wait(list(receivers.values()), timeout=0.5):
                try:
                    messages.append(receiver.recv())
                except (EOFError, OSError):  # the worker is gone; its death is handled below
                    receivers.pop(next(key for key, value in receivers.items() if value is receiver)).close()
            for message in messages:
                kind, workerId = message[0], message[1]
                if kind == "begun":
                    begun.get(workerId, set()).add(message[2])
                    if onBegun is not None and workerId in workers:
                        onBegun(message[2], workers[workerId][0].pid)
                elif kind == "done":
                    index, row = message[2], message[3]
                    held.get(workerId, set()).discard(index)
                    begun.get(workerId, set()).discard(index)
                    if index in remaining:
                        remaining.discard(index)
                        row["attempts"] = attempts[index] + 1
                        onRow(index, row)
                    handOut()
                elif kind == "fatal":
                    raise MedSegUNetError(message[2])
            if messages:
                continue
            for workerId, (process, device, tasks) in list(workers.items()):
                if process.is_alive():
                    continue
                again, suspects = lostCases(held.pop(workerId) & remaining, begun.pop(workerId), freeLosses)
                del workers[workerId]
                if workerId in receivers:
                    receivers.pop(workerId).close()
                tasks.cancel_join_thread()
                tasks.close()
                why = _deathMessage(process.exitcode)
                if onWarning is not None:
                    retried = [cases[index].id for index in suspects if attempts[index] < 1]
                    onWarning(f"{why} (PID {process.pid}); a new one takes its place"
                              + (f", and its case(s) {', '.join(retried)} are tried once more" if retried else ""))
                for index in reversed(again):
                    pending.insert(0, index)
                for index in suspects:
                    attempts[index] += 1
                    if attempts[index] > 1:
                        remaining.discard(index)
                        onRow(index, {"case": cases[index].id, "status": "failed", "message": f"{why}, twice", "seconds": 0.0,
                                      "roi_size_mm": None, "volumes_cm3": {}, "notes": list(cases[index].notes), "attempts": attempts[index]})
                    else:
                        pending.insert(0, index)
                if remaining:
                    start(device)
                    handOut()
    finally:
        for _, _, tasks in workers.values():
            tasks.put(None)
        deadline = time.monotonic() + 5
        for process, _, tasks in workers.values():
            process.join(timeout=max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            tasks.cancel_join_thread()
            tasks.close()
        for receiver in receivers.values():
            receiver.close()
        sweepStaging(options.outputDir)


def sweepStaging(outputDir: str) -> None:
    """Remove staging folders that killed workers or earlier runs left: only folders holding a
    run's marker file (never a finished case's folder, nor a folder someone named alike)."""
    if not os.path.isdir(outputDir):
        return
    for entry in os.scandir(outputDir):
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir(follow_symlinks=False) and os.path.isfile(os.path.join(entry.path, STAGING_MARKER)):
            shutil.rmtree(entry.path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Summary and QC montage
# ---------------------------------------------------------------------------------------------


def summaryCSV(rows: Sequence[dict], card: dict) -> str:
    """One row per case: status, message, ROI size (mm), volume per label (cm³), QC flags, seconds, attempts, finished (UTC), notes."""
    labels = [label["name"] for label in card["labels"]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "status", "message", "roi_size_i_mm", "roi_size_j_mm", "roi_size_k_mm", *[f"volume_cm3 ({name})" for name in labels], "qc", "seconds", "attempts", "finished", "notes"])
    for row in rows:
        size = row.get("roi_size_mm") or [None, None, None]
        volumes = row.get("volumes_cm3") or {}
        cells = [row["case"], row["status"], row.get("message", ""), *size, *[volumes.get(name) for name in labels], row.get("qc", ""),
                 row.get("seconds"), row.get("attempts", ""), row.get("finished", ""), "; ".join(row.get("notes") or [])]
        writer.writerow(["" if cell is None else (f"{cell:.6g}" if isinstance(cell, float) else cell) for cell in cells])
    return buffer.getvalue()


def writeMontage(rows: Sequence[dict], options: BatchOptions, path: str, card: dict | None = None) -> None:
    """A page of QC tiles (one per case, 256 px), captioned with the case and its QC state (flagged
    and failed cases in red), with a legend of the labels' colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    dpi = 100
    columns = min(10, max(1, len(rows)))
    lines = int(np.ceil(len(rows) / columns))
    tileInches = QC_TILE / dpi
    figure, axes = plt.subplots(lines, columns, figsize=(tileInches * columns, (tileInches + 0.45) * lines + 0.5), squeeze=False, dpi=dpi)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, row in zip(axes.ravel(), rows):
        tilePath = os.path.join(options.outputDir, row["case"], caseOutputNames(row["case"], options.format)["qc"])
        if row["status"] in ("ok", "skipped") and os.path.isfile(tilePath):
            axis.imshow(plt.imread(tilePath))
        else:
            axis.imshow(np.full((QC_TILE, QC_TILE, 3), (0.55, 0.1, 0.1)))
            axis.text(QC_TILE / 2, QC_TILE / 2, "failed", color="white", ha="center", va="center", fontsize=12)
        flagged = str(row.get("qc", "")).startswith("flagged")
        state = "failed" if row["status"] == "failed" else ("QC flagged" if flagged else f"{row['status']}, QC ok")
        axis.set_title(f"{shownCaseId(row['case'])[:28]}\n{state}", fontsize=9, color="red" if flagged or row["status"] == "failed" else "black")
    if card is not None:
        handles = [Patch(color=label["color"], label=label["name"]) for label in card["labels"]]
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    figure.tight_layout(rect=(0, 0.5 / ((tileInches + 0.45) * lines + 0.5) if card is not None else 0, 1, 1))
    try:
        figure.savefig(path, dpi=dpi, format="png")
    finally:
        plt.close(figure)


def writeCohortFiles(rows: Sequence[dict], card: dict, options: BatchOptions) -> list[str]:
    """``summary.csv`` and the QC montage (``qc.png``, then ``qc-002.png`` … past 400 cases), together."""
    from ..engine.volumes import StagedOutputs, textVerifier, writeTextFile

    written = []
    with StagedOutputs() as staged:
        text = summaryCSV(rows, card)
        path = os.path.join(options.outputDir, "summary.csv")
        writeTextFile(text, staged.stage(path, verify=textVerifier(text)))
        written.append(path)
        for page, start in enumerate(range(0, len(rows), QC_TILES_PER_PAGE)):
            path = os.path.join(options.outputDir, "qc.png" if page == 0 else f"qc-{page + 1:03d}.png")
            writeMontage(rows[start : start + QC_TILES_PER_PAGE], options, staged.stage(path), card)
            written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def addParser(subparsers) -> None:
    """Register ``medsegunet batch``."""
    from ..engine.modelcard import DEVICES

    parser = subparsers.add_parser(
        "batch",
        help="segment a cohort: a folder of cases, a CSV or a Decathlon dataset.json",
        description="Segment every case of a cohort with one model loaded once per worker. Writes DIR/<case>/ (segmentation, "
        "statistics, QC tile, manifest), DIR/summary.csv and DIR/qc.png. A failing case is recorded and the rest go on; "
        "exit status 1 when any case failed. A rerun skips cases whose outputs are complete and made by the same model from the same inputs.",
    )
    parser.add_argument("--model", required=True, metavar="MODEL", help="TorchScript model with a MedSegUNet card, or a catalog name")
    parser.add_argument("--cases", required=True, metavar="SOURCE", help="folder of case folders, a CSV (case, one column per input, roi… columns) or dataset.json")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (created if missing; on a cluster, a path every node can write)")
    parser.add_argument("--format", default="seg.nrrd", choices=list(FORMATS), help="segmentation file format (default seg.nrrd)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where the network runs")
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="worker processes (default: one per GPU, or one on the CPU)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads of each worker's network (default: the CPU cores divided among the workers)")
    parser.add_argument("--engine", default="local", choices=["local", "ray"], help="local worker processes, or Ray actors (pip install -e '.[ray]')")
    parser.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (default: start a local Ray)")
    parser.add_argument("--force", action="store_true", help="redo cases whose outputs are already complete")
    parser.add_argument("--dry-run", action="store_true", help="print the case × role → series table and change nothing")
    parser.add_argument("--resample-irregular", action="store_true", help="resample DICOM series with irregular slices instead of failing those cases")
    parser.set_defaults(func=run)


def dryRunTable(cases: Sequence[CaseSpec], card: dict) -> str:
    """The case × role → series table that ``--dry-run`` prints."""
    from .seriesmatch import rolesOfCard

    roles = [role.name if role.kind == "input" else f"ROI {role.name}" for role in rolesOfCard(card)]
    # A table's roi columns beyond the card's ROI series get columns of their own.
    roles += sorted({key for case in cases for key in case.series if key.startswith("ROI ") and key not in roles})
    lines = ["\t".join(["case", *roles, "status"])]
    for case in cases:
        cells = [case.series.get(role, "-") for role in roles]
        status = f"error: {case.error}" if case.error else ("; ".join(case.notes) or "ok")
        lines.append("\t".join([case.id, *cells, status]))
    return "\n".join(lines) + "\n"


def run(args, console) -> int:
    """``medsegunet batch``: returns 0 when every case succeeded, 1 when some failed."""
    from ..engine.console import CaseProgress
    from ..engine.modelcard import readCard
    from ..engine.volumes import checkDistinctPaths, sha256

    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        raise MedSegUNetError(f"--workers must be 1 to {MAX_WORKERS} (each worker holds the model and uses about 0.7 GB or more).")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise MedSegUNetError(f"--threads must be 1 to {MAX_THREADS} (this machine has {os.cpu_count() or 1} cores).")
    if args.ray_address and args.engine != "ray":
        raise MedSegUNetError("--ray-address needs --engine ray.")
    from ..models.catalog import resolveModelOption

    args.model = resolveModelOption(args.model, console)
    card = readCard(args.model)
    cases = casesFromSource(args.cases, card)
    if args.dry_run:
        sys.stdout.write(dryRunTable(cases, card))
        return 0 if not any(case.error for case in cases) else 1
    caseInputs = [path for case in cases for path in [*(p for p, _ in case.inputs), *case.roi]]
    checkDistinctPaths({"--output": args.output}, {"--cases": args.cases, "--model": [args.model, args.model + ".json"], "a case's input": caseInputs})
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise MedSegUNetError(f"--output '{args.output}' is a file: give a folder.")
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as error:
        from ..engine.errors import osErrorMessage

        raise MedSegUNetError(osErrorMessage(error, "create", args.output)) from None
    sweepStaging(args.output)
    devices = workerDevices(args.device, args.workers) if args.engine == "local" else []
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, len(devices) or args.workers or 1))
    options = BatchOptions(
        modelPath=os.path.abspath(args.model), modelSHA256=sha256(args.model), cardSHA256=cardDigest(card), outputDir=os.path.abspath(args.output), format=args.format,
        device=args.device, resampleIrregular=args.resample_irregular, threads=threads,
    )
    rows: dict[int, dict] = {}
    previous = previousSummary(options.outputDir)
    progress = CaseProgress(len(cases), quiet=args.quiet)
    todo = []
    for index, case in enumerate(cases):
        if case.error:
            rows[index] = {"case": case.id, "status": "failed", "message": case.error, "seconds": 0.0, "roi_size_mm": None, "volumes_cm3": {}, "notes": case.notes}
            progress.update(rows[index])
        elif not args.force and isCaseComplete(case, options):
            rows[index] = skippedRow(case, options, previous.get(case.id))
            progress.update(rows[index])
        else:
            todo.append(index)

    def onRow(index: int, row: dict) -> None:
        rows[index] = row
        progress.update(row)

    started = time.perf_counter()
    try:
        if todo and args.engine == "ray":
            from .raybatch import runRay

            runRay(cases, todo, options, args.ray_address, args.workers, onRow)
        elif todo:
            runLocal(cases, todo, options, devices, onRow, onBegun=lambda index, pid: progress.begun(cases[index].id, pid), onWarning=progress.warn)
        progress.close()
        ordered = [rows[index] for index in range(len(cases))]
        written = writeCohortFiles(ordered, card, options)
    except (Interrupted, KeyboardInterrupt) as error:
        # Also while the summary and montage are written: the finished cases are on disk either way.
        progress.close()
        done = sum(1 for row in rows.values() if row["status"] == "ok")
        error.kept = f"{done} case(s) finished in this run are kept whole in {args.output}; rerun the same command to do the rest"  # type: ignore[attr-defined]
        raise
    for row in ordered:  # a flagged result is said where errors are, not only in the files
        if row["status"] in ("ok", "skipped") and str(row.get("qc", "ok")).startswith("flagged"):
            console.warn(f"case {shownCaseId(row['case'])}: {row['qc']}")
    counts = {status: sum(1 for row in ordered if row["status"] == status) for status in ("ok", "skipped", "failed")}
    console.line(f"Wrote {', '.join(written)} in {time.perf_counter() - started:.1f} s")
    console.line(f"{len(ordered)} cases: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed")
    if counts["failed"]:
        for row in ordered:
            if row["status"] == "failed":
                sys.stderr.write(f"medsegunet: case {shownCaseId(row['case'])} failed: {row['message']}\n")
        sys.stderr.write(f"medsegunet: {counts['failed']} of {len(ordered)} cases failed (see {os.path.join(args.output, 'summary.csv')}).\n")
        return 1
    return 0
