"""One case of a cohort, the job contract every engine runs (local workers, Ray actors): prepare, infer,
then the case folder's files, staged and renamed whole (``DIR/<case>/``), and its summary row.

A case folder is replaced only if a run wrote it (its manifest says so), inside ``--output``; staging
folders carry a marker so that a later run removes only its own leftovers.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import SimpleITK as sitk

from ..engine.errors import CohortError, MedSegUNetError, firstLine, outOfMemory
from ..engine.preview import qcTile, tileImage
from ..engine.request import SegmentationRequest
from ..engine.volumes import DicomSeries
from .cases import CaseSpec, checkCaseId

FORMATS = {"seg.nrrd": ".seg.nrrd", "nii.gz": ".nii.gz", "nrrd": ".nrrd", "nii": ".nii", "mha": ".mha", "dcm": ".dcm"}
STAGING_PREFIX = ".medsegunet-case-"
# Written in every staging folder while it is filled: what a later run's sweep recognises.
STAGING_MARKER = ".medsegunet-staging"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "medsegunet.batch-case/1"


@dataclass
class BatchOptions:
    """What every case of a run shares (picklable: it travels to worker processes and Ray actors)."""

    modelPath: str
    modelSHA256: str
    outputDir: str
    format: str = "seg.nrrd"
    # How every case is segmented: the run's one request (device, irregular series, ...); each case
    # brings its own inputs and ROI series.
    request: SegmentationRequest = field(default_factory=SegmentationRequest)
    threads: int | None = None
    # SHA256 of the effective card (embedded, or the sidecar that overrides it): a rerun redoes
    # cases made under another card even when the model file is the same.
    cardSHA256: str = ""
    # --compile: the folder of AOTInductor packages, where the driver built (and kept) this model's.
    compiledCache: str | None = None

    @property
    def device(self) -> str:
        return self.request.device


def loadCaseModel(options: BatchOptions, device: str):
    """The model a worker runs: loaded once, and as the driver's AOTInductor package when
    ``--compile`` made one. A worker that cannot load that package runs the model uncompiled and
    says why in each of its cases' notes (``compileFallback``)."""
    if options.compiledCache:
        import dataclasses

        from ..engine.compiled import loadCompiledModel

        said: list[str] = []
        loaded = loadCompiledModel(options.modelPath, device, options.compiledCache, warn=said.append)
        return dataclasses.replace(loaded, compileFallback=said[0]) if said else loaded  # it warns only when it runs uncompiled
    from ..engine.modelcard import loadModel

    return loadModel(options.modelPath, device)


def caseOutputNames(caseId: str, fmt: str) -> dict[str, str]:
    return {
        "segmentation": f"{caseId}{FORMATS[fmt]}",
        "statistics_csv": f"{caseId}-statistics.csv",
        "statistics_json": f"{caseId}-statistics.json",
        "qc": f"{caseId}-qc.png",
        "manifest": MANIFEST,
    }


def _seriesFiles(path: str, found: DicomSeries | None = None) -> list[str]:
    from ..engine.paths import splitSeriesSelector

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
        signature.append(
            {
                "path": canonicalPath(path),
                "files": len(stats),
                "bytes": sum(s.st_size for s in stats),
                "mtime": max((s.st_mtime for s in stats), default=0.0),
            }
        )
    return signature


def readManifest(folder: str) -> dict | None:
    """A case folder's manifest, or None when it is missing, damaged or not a regular file (never blocks)."""
    from ..engine.paths import readRegularText

    try:
        manifest = json.loads(readRegularText(os.path.join(folder, MANIFEST), "The case manifest", limit=2**20))
    except (MedSegUNetError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def outputRecords(folder: str, names: dict[str, str]) -> dict[str, dict]:
    """Size and SHA256 of each output a case folder holds (the manifest aside): what a rerun checks."""
    from ..engine.paths import sha256

    return {
        name: {"bytes": os.path.getsize(os.path.join(folder, name)), "sha256": sha256(os.path.join(folder, name))}
        for key, name in sorted(names.items())
        if key != "manifest"
    }


def outputsIntact(folder: str, records: object) -> bool:
    """Whether every output the manifest records is still a regular file of its size and SHA256."""
    import stat

    from ..engine.paths import sha256

    if not isinstance(records, dict) or not records:
        return False
    for name, record in records.items():
        path = os.path.join(folder, str(name))
        try:
            mode = os.lstat(path)
        except OSError:
            return False
        if not (
            stat.S_ISREG(mode.st_mode)
            and isinstance(record, dict)
            and record.get("bytes") == mode.st_size
            and record.get("sha256") == sha256(path)
        ):
            return False
    return True


def isCaseComplete(case: CaseSpec, options: BatchOptions) -> bool:
    """Whether ``DIR/<case>`` holds every output, made by the same model file from the same inputs,
    each still of the size and SHA256 its manifest recorded (a file cut short or edited is redone)."""
    folder = os.path.join(options.outputDir, case.id)
    manifest = readManifest(folder)
    if manifest is None:
        return False
    names = caseOutputNames(case.id, options.format)
    records = manifest.get("output_files")
    return (
        manifest.get("format") == MANIFEST_FORMAT
        and (manifest.get("model") or {}).get("sha256") == options.modelSHA256
        and manifest.get("card_sha256") == options.cardSHA256
        and manifest.get("inputs") == inputSignature(case)
        and isinstance(records, dict)
        and set(records) == {name for key, name in names.items() if key != "manifest"}
        and outputsIntact(folder, records)
    )


def readCaseImages(case: CaseSpec, options: BatchOptions) -> tuple[list[sitk.Image], list[sitk.Image]]:
    from ..engine.volumes import readVolume, readVolumeChannel

    irregular = options.request.resampleIrregular
    images = [readVolumeChannel(path, channel, irregular, case.found.get(path)) for path, channel in case.inputs]
    roiImages = [readVolume(path, resampleIrregular=irregular, found=case.found.get(path)) for path in case.roi]
    return images, roiImages


def prepareCase(case: CaseSpec, card: dict, options: BatchOptions):
    """Read a case and prepare it for the network (runs on a worker's prefetch thread).

    Returns:
        (input images, ROI images, :class:`pipeline.PreparedInputs`).
    """
    from ..engine import pipeline
    from ..engine.volumes import volumeName

    if case.error:
        raise CohortError(case.error)
    images, roiImages = readCaseImages(case, options)
    run = options.request.pipelineOptions(card)
    prepared = pipeline.prepareImages(
        images,
        card,
        names=[volumeName(p) for p, _ in case.inputs],
        roiImages=roiImages,
        roiNames=[volumeName(p) for p in case.roi],
        useROI=run["useROI"],
        marginMM=run["marginMM"],
        contextMM=run["contextMM"],
    )
    return images, roiImages, prepared


def _madeByARun(folder: str) -> bool:
    """Whether ``folder`` is a case folder a batch run wrote: its manifest says so or, when the
    manifest is damaged or gone, it holds nothing but a case's outputs and its statistics name
    the case (such a folder is redone, not refused forever)."""
    if os.path.islink(folder) or not os.path.isdir(folder):
        return False
    manifest = readManifest(folder)
    if manifest is not None:
        return manifest.get("format") == MANIFEST_FORMAT
    return _holdsOnlyCaseOutputs(folder)


def _holdsOnlyCaseOutputs(folder: str) -> bool:
    from ..engine.paths import readRegularText

    caseId = os.path.basename(os.path.normpath(folder))
    outputs = {name for fmt in FORMATS for name in caseOutputNames(caseId, fmt).values()}
    entries = os.listdir(folder)
    if not entries or not set(entries) <= outputs:
        return False
    try:
        report = json.loads(readRegularText(os.path.join(folder, f"{caseId}-statistics.json"), "The case statistics", limit=16 * 2**20))
    except (MedSegUNetError, ValueError):
        return False
    return isinstance(report, dict) and report.get("case") == caseId


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
    from ..engine.staging import signalsDeferred

    why = checkCaseId(caseId)
    if why is not None:
        raise CohortError(why)
    final = os.path.join(outputDir, caseId)
    if os.path.lexists(final) and not (_madeByARun(final) and _insideOutput(outputDir, final)):
        raise CohortError(
            f"'{final}' exists and is not a case folder written by medsegunet batch: it is left as it is; move it away or choose another "
            "--output."
        )
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


def markNetworkBegun(case: CaseSpec) -> None:
    """A test hook (settings.TEST_NETWORK_BEGUN): a case entering the network leaves ``<pid>-<case>``
    there, so that a test can end that process at that very moment instead of guessing it with a clock."""
    from ..engine import settings

    folder = settings.TEST_NETWORK_BEGUN.text()
    if folder and os.path.isdir(folder):
        open(os.path.join(folder, f"{os.getpid()}-{case.id}"), "w").close()


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
            markNetworkBegun(case)
            images, result = inferCase(prepared, loaded)
    except Exception as error:  # noqa: BLE001 - the row says what it was, as finishCase does
        return failedRow(case, error, started)
    return finishCase(withWorkerNotes(case, loaded), images, result, loaded.card, options, started)


def withWorkerNotes(case: CaseSpec, loaded) -> CaseSpec:
    """The case with what its worker's model loading said (a ``--compile`` package it could not
    load) among its notes, so that the summary and the statistics say that it ran uncompiled."""
    import dataclasses

    if not loaded.compileFallback:
        return case
    return dataclasses.replace(case, notes=[*case.notes, f"ran uncompiled: {loaded.compileFallback}"])


def inferCase(prepared, loaded):
    """The network's part of a case :func:`prepareCase` prepared: (input images, :class:`pipeline.SegmentationResult`)."""
    from ..engine import pipeline

    images, _, preparedInputs = prepared
    return images, pipeline.segmentPrepared(preparedInputs, loaded)


def failedRow(case: CaseSpec, error: BaseException, started: float) -> dict:
    """The summary row of a case that failed, with its one-line reason."""
    if isinstance(error, MedSegUNetError):
        message = firstLine(error.forSurface("batch"))
    elif isinstance(error, MemoryError):
        message = firstLine(outOfMemory("in this case").forSurface("batch"))
    else:
        message = f"internal error: {type(error).__name__}: {firstLine(error)}"
    return {
        "case": case.id,
        "status": "failed",
        "message": message,
        "seconds": round(time.perf_counter() - started, 3),
        "roi_size_mm": None,
        "volumes_cm3": {},
        "notes": list(case.notes),
        "finished": finishedNow(),
    }


def finishCase(case: CaseSpec, images, result, card: dict, options: BatchOptions, started: float) -> dict:
    """Statistics and the case folder's files (staged, verified, renamed whole); the summary row.

    Runs on a worker's writer thread while the network runs on the next case.
    """
    from ..engine.staging import textVerifier, writeTextFile
    from ..engine.writer import OutputPlan, runReport, statisticsDocument, writeResults

    row = {
        "case": case.id,
        "status": "failed",
        "message": "",
        "seconds": 0.0,
        "roi_size_mm": None,
        "volumes_cm3": {},
        "notes": list(case.notes),
    }
    try:
        report, _ = runReport(result, card, images)
        names = caseOutputNames(case.id, options.format)
        document = statisticsDocument(
            report,
            result,
            card,
            options.modelPath,
            [(spec["name"], path, channel) for spec, (path, channel) in zip(card["inputs"], case.inputs)],
            roiSeries=case.roi,
            case=case.id,
            notes=case.notes,
            modelSHA256=options.modelSHA256,
        )
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
        tile = tileImage(qcTile(images[0], result.labelmap, result.roi, card, result.regions))

        def write(folder: str) -> None:
            inFolder = {key: os.path.join(folder, name) for key, name in names.items()}
            plan = OutputPlan(
                segmentation=inFolder["segmentation"],
                dicomSeries=case.inputs[0][0] if options.format == "dcm" else None,
                statisticsCSV=inFolder["statistics_csv"],
                statisticsJSON=inFolder["statistics_json"],
                pictures={inFolder["qc"]: tile},
            )
            writeResults(plan, result, card, report, document, images)
            # Last, so that it can record what the others are.
            text = json.dumps({**manifest, "output_files": outputRecords(folder, names)}, indent=2)
            manifestPath = os.path.join(folder, MANIFEST)
            writeTextFile(text, manifestPath)
            textVerifier(text)(manifestPath)

        writeCaseFolder(options.outputDir, case.id, write)
        row.update(
            status="ok",
            roi_size_mm=[round(float(v), 3) for v in result.roi.sizeMM],
            # Unrounded: the summary formats them once, as the case's statistics table does.
            volumes_cm3={segment["name"]: segment["volume_cm3"] for segment in report["segments"]},
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
    flagged = [
        f"{segment['name']} {segment['qc'].removeprefix('flagged: ')}"
        for segment in report.get("segments", [])
        if segment.get("qc", "ok") != "ok"
    ]
    return "flagged: " + "; ".join(flagged) if flagged else "ok"


def skippedRow(case: CaseSpec, options: BatchOptions, previous: dict | None = None) -> dict:
    """The summary row of a case whose outputs are complete (read back from its statistics and
    manifest), with the seconds, attempts and finishing time of the run that made it.

    Args:
        previous: the case's row in the earlier ``summary.csv``, if any (its attempts).
    """
    from ..engine.paths import readRegularText

    folder = os.path.join(options.outputDir, case.id)
    names = caseOutputNames(case.id, options.format)
    report = json.loads(readRegularText(os.path.join(folder, names["statistics_json"]), "The case statistics"))
    manifest = readManifest(folder) or {}
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
    import io

    from ..engine.paths import readRegularText

    try:
        text = readRegularText(os.path.join(outputDir, "summary.csv"), "The earlier summary")
        return {row.get("case", ""): row for row in csv.DictReader(io.StringIO(text, newline=""))}
    except (MedSegUNetError, ValueError, csv.Error):
        return {}


def warmUp(card: dict | None = None) -> None:
    """Set a worker process up once: what every case's outputs need is imported now, not during
    the first case, and ITK's warnings are off. MONAI (3 s to import) only when the card's
    inference or normalisation uses it (:func:`inference.usesMONAI`); no plotting library (the
    QC tile is written by SimpleITK, the montage by the driver).

    A worker reads on a thread, where :func:`volumes.nativeMessages` cannot capture what ITK prints
    on the shared stderr, so its warnings (e.g. "Non uniform sampling" for a series with a missing
    slice) would land between the run's one-line messages; the checks they duplicate fail the case
    with their own line, and errors still raise.
    """
    from ..engine.inference import usesMONAI

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    if card is None or usesMONAI(card):
        import monai.inferers  # noqa: F401
        import monai.transforms  # noqa: F401
    import slicerio  # noqa: F401 (the segmentation file)


# Cases handed to a worker at a time: the one the network runs, the one read ahead, and the next,
# already in the worker's queue when its network finishes a case: with two, the parent handed the
# next case only after the previous case's files were written, the worker picked it up only after
# its network ended, and that case was read while the network waited.
CASES_IN_HAND = 3


def sweepStaging(outputDir: str) -> None:
    """Remove staging folders that killed workers or earlier runs left: only folders holding a
    run's marker file (never a finished case's folder, nor a folder someone named alike)."""
    if not os.path.isdir(outputDir):
        return
    for entry in os.scandir(outputDir):
        if (
            entry.name.startswith(STAGING_PREFIX)
            and entry.is_dir(follow_symlinks=False)
            and os.path.isfile(os.path.join(entry.path, STAGING_MARKER))
        ):
            shutil.rmtree(entry.path, ignore_errors=True)


__all__ = [
    "FORMATS",
    "BatchOptions",
    "loadCaseModel",
    "caseOutputNames",
    "canonicalPath",
    "cardDigest",
    "inputSignature",
    "readManifest",
    "outputRecords",
    "outputsIntact",
    "isCaseComplete",
    "readCaseImages",
    "prepareCase",
    "makeStagingFolder",
    "writeCaseFolder",
    "markNetworkBegun",
    "processCase",
    "withWorkerNotes",
    "inferCase",
    "failedRow",
    "finishCase",
    "finishedNow",
    "qualityNotes",
    "skippedRow",
    "previousSummary",
    "warmUp",
    "CASES_IN_HAND",
    "sweepStaging",
]
