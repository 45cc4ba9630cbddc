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

import csv
import io
import os
import sys
import threading
import time
from typing import Sequence

import numpy as np

from ..engine.errors import CohortError, Interrupted
from .cases import CaseSpec, casesFromSource, dryRunTable, shownCaseId
from .casejob import FORMATS, QC_TILE, BatchOptions, caseOutputNames, cardDigest, isCaseComplete, previousSummary, skippedRow, sweepStaging
from .pool import runLocal, workerDevices


# More worker processes or network threads than any machine runs are typing mistakes.
MAX_WORKERS = 256
MAX_THREADS = 1024
QC_TILES_PER_PAGE = 100


def summaryCSV(rows: Sequence[dict], card: dict) -> str:
    """One row per case: status, message, ROI size (mm), volume per label (cm³), QC flags, seconds, attempts, finished (UTC), notes.

    Numbers are formatted by the statistics table's own :func:`formatCell`, so a volume reads the
    same in the summary and in the case's statistics CSV.
    """
    from ..engine.statistics import formatCell

    labels = [label["name"] for label in card["labels"]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "status", "message", "roi_size_i_mm", "roi_size_j_mm", "roi_size_k_mm", *[f"volume_cm3 ({name})" for name in labels], "qc", "seconds", "attempts", "finished", "notes"])
    for row in rows:
        size = row.get("roi_size_mm") or [None, None, None]
        volumes = row.get("volumes_cm3") or {}
        cells = [row["case"], row["status"], row.get("message", ""), *size, *[volumes.get(name) for name in labels], row.get("qc", ""),
                 row.get("seconds"), row.get("attempts", ""), row.get("finished", ""), "; ".join(row.get("notes") or [])]
        writer.writerow([formatCell(cell) for cell in cells])
    return buffer.getvalue()


def writeMontage(rows: Sequence[dict], options: BatchOptions, path: str, card: dict | None = None) -> None:
    """A page of QC tiles (one per case, 256 px), captioned with the case and its QC state (flagged
    and failed cases in red), with a legend of the labels' colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    dpi, tile, caption, legend, gap = 100, QC_TILE / 100, 0.6, 0.5, 0.2  # inches
    columns = min(10, max(1, len(rows)))
    lines = int(np.ceil(len(rows) / columns))
    width, height = columns * (tile + gap), lines * (tile + caption) + legend
    figure = plt.figure(figsize=(width, height), dpi=dpi)
    for index, row in enumerate(rows):
        line, column = divmod(index, columns)
        # Each tile at its full QC_TILE pixels, its caption in the space above it.
        axis = figure.add_axes([(column * (tile + gap) + gap / 2) / width, (legend + (lines - 1 - line) * (tile + caption)) / height, tile / width, tile / height])
        axis.axis("off")
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
    try:
        figure.savefig(path, dpi=dpi, format="png")
    finally:
        plt.close(figure)


def preloadMontageLibrary() -> None:
    """Import matplotlib for the montage on a thread while the workers run: the driver idles then,
    and the import (about 1 s) would otherwise come after the last case. Not a daemon: the
    interpreter never stops it half-way."""

    def load() -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot  # noqa: F401
        except Exception:  # noqa: BLE001 - writeMontage imports it again and says what is wrong
            pass

    threading.Thread(target=load, name="medsegunet-montage-import").start()


def writeCohortFiles(rows: Sequence[dict], card: dict, options: BatchOptions) -> list[str]:
    """``summary.csv`` and the QC montage (``qc.png``, then ``qc-002.png`` … past 400 cases), together."""
    from ..engine.staging import StagedOutputs, textVerifier, writeTextFile

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


def addParser(subparsers) -> None:
    """Register ``medsegunet batch``."""
    from ..engine.settings import DEVICES

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
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="worker processes (default: one per GPU; on the CPU two, when the cases, cores and memory (4 GB each) allow, else one)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads of each worker's network (default: the CPU cores divided among the workers)")
    parser.add_argument("--engine", default="local", choices=["local", "ray"], help="local worker processes, or Ray actors (pip install -e '.[ray]')")
    parser.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (default: start a local Ray)")
    parser.add_argument("--compile", action="store_true",
                        help="a .pt2 model: every worker runs it as an AOTInductor package built once for this machine (cached), when it answers the same and is faster")
    parser.add_argument("--force", action="store_true", help="redo cases whose outputs are already complete")
    parser.add_argument("--dry-run", action="store_true", help="print the case × role → series table and change nothing")
    parser.add_argument("--resample-irregular", action="store_true", help="resample DICOM series with irregular slices instead of failing those cases")
    parser.set_defaults(func=run)


def run(args, console) -> int:
    """``medsegunet batch``: returns 0 when every case succeeded, 1 when some failed."""
    from ..engine.console import CaseProgress
    from ..engine.modelcard import readCard
    from ..models.catalog import resolveModelOption

    checkOptions(args)
    args.model = resolveModelOption(args.model, console)
    card = readCard(args.model)
    cases = casesFromSource(args.cases, card)
    if args.dry_run:
        sys.stdout.write(dryRunTable(cases, card))
        return 0 if not any(case.error for case in cases) else 1
    options, devices = prepareOutput(args, card, cases)
    if args.compile:
        options.compiledCache = compiledCacheFor(args, devices, console)
    progress = CaseProgress(len(cases), quiet=args.quiet)
    rows, todo = rowsBeforeTheRun(cases, options, args.force, progress)
    if devices and todo and len(todo) < len(devices):
        # Fewer cases to run than workers (a resumed run): the cores go to the workers started.
        devices = devices[: len(todo)]
        options.threads = threadsEach(args, devices)

    def onRow(index: int, row: dict) -> None:
        rows[index] = row
        progress.update(row)

    started = time.perf_counter()
    if todo:
        preloadMontageLibrary()
    try:
        if todo and args.engine == "ray":
            from .raybatch import runRay

            runRay(cases, todo, options, args.ray_address, args.workers, onRow)
        elif todo:
            runLocal(cases, todo, options, devices, onRow, onBegun=lambda index, number: progress.begun(cases[index].id, number), onWarning=progress.warn)
        progress.close()
        ordered = [rows[index] for index in range(len(cases))]
        written = writeCohortFiles(ordered, card, options)
    except (Interrupted, KeyboardInterrupt) as error:
        # Also while the summary and montage are written: the finished cases are on disk either way.
        progress.close()
        done = sum(1 for row in rows.values() if row["status"] == "ok")
        error.kept = f"{done} case(s) finished in this run are kept whole in {args.output}; rerun the same command to do the rest"  # type: ignore[attr-defined]
        raise
    return report(ordered, written, args.output, console, time.perf_counter() - started)


def checkOptions(args) -> None:
    """Refuse absurd or contradictory options before any work."""
    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        raise CohortError(f"--workers must be 1 to {MAX_WORKERS} (each worker holds the model and uses about 0.7 GB or more).")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise CohortError(f"--threads must be 1 to {MAX_THREADS} (this machine has {os.cpu_count() or 1} cores).")
    if args.ray_address and args.engine != "ray":
        raise CohortError("--ray-address needs --engine ray.")


def prepareOutput(args, card: dict, cases: Sequence[CaseSpec]) -> tuple[BatchOptions, list[str]]:
    """The output folder (never an input, nor inside one), swept of stale staging folders; the run's options and worker devices."""
    from ..engine.staging import checkDistinctPaths
    from ..engine.paths import sha256

    caseInputs = [path for case in cases for path in [*(p for p, _ in case.inputs), *case.roi]]
    checkDistinctPaths({"--output": args.output}, {"--cases": args.cases, "--model": [args.model, args.model + ".json"], "a case's input": caseInputs})
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise CohortError(f"--output '{args.output}' is a file: give a folder.")
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as error:
        from ..engine.errors import osErrorMessage

        raise CohortError(osErrorMessage(error, "create", args.output)) from None
    sweepStaging(args.output)
    devices = workerDevices(args.device, args.workers, len(cases)) if args.engine == "local" else []
    options = BatchOptions(
        modelPath=os.path.abspath(args.model), modelSHA256=sha256(args.model), cardSHA256=cardDigest(card), outputDir=os.path.abspath(args.output),
        format=args.format, device=args.device, resampleIrregular=args.resample_irregular, threads=threadsEach(args, devices),
    )
    return options, devices


def compiledCacheFor(args, devices: Sequence[str], console) -> str | None:
    """``--compile``: the model's AOTInductor package built (or found) once, here, before any
    worker starts; the cache folder the workers load it from, or None (one line said why)."""
    from ..engine.compiled import loadCompiledModel
    from ..models.catalog import cacheFolder

    cache = cacheFolder() / "compiled"
    loaded = loadCompiledModel(args.model, devices[0] if devices else args.device, cache, console.warn, console)
    if loaded.compiled is None:
        return None
    console.line(f"Workers run the AOTInductor package built for this machine ({loaded.compiled['speedup']:.2f}× the uncompiled speed on one patch)")
    return str(cache)


def threadsEach(args, devices: Sequence[str]) -> int:
    """Network threads of each worker: ``--threads``, or the cores shared among the local workers
    (``devices``) or the Ray workers asked for."""
    return args.threads or max(1, (os.cpu_count() or 1) // max(1, len(devices) or args.workers or 1))


def rowsBeforeTheRun(cases: Sequence[CaseSpec], options: BatchOptions, force: bool, progress) -> tuple[dict[int, dict], list[int]]:
    """Rows of the cases that fail before running (no input) or are complete already (skipped,
    as the run that made them said), and the indexes of the cases to run."""
    rows: dict[int, dict] = {}
    previous = previousSummary(options.outputDir)
    todo = []
    for index, case in enumerate(cases):
        if case.error:
            rows[index] = {"case": case.id, "status": "failed", "message": case.error, "seconds": 0.0, "roi_size_mm": None, "volumes_cm3": {}, "notes": case.notes}
        elif not force and isCaseComplete(case, options):
            rows[index] = skippedRow(case, options, previous.get(case.id))
        else:
            todo.append(index)
            continue
        progress.update(rows[index])
    return rows, todo


def report(ordered: Sequence[dict], written: Sequence[str], output: str, console, seconds: float) -> int:
    """The run's last lines: flagged cases as warnings, the counts, failed cases on stderr; the exit status."""
    for row in ordered:  # a flagged result is said where errors are, not only in the files
        if row["status"] in ("ok", "skipped") and str(row.get("qc", "ok")).startswith("flagged"):
            console.warn(f"case {shownCaseId(row['case'])}: {row['qc']}")
    counts = {status: sum(1 for row in ordered if row["status"] == status) for status in ("ok", "skipped", "failed")}
    console.line(f"Wrote {', '.join(written)} in {seconds:.1f} s")
    console.line(f"{len(ordered)} cases: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed")
    if not counts["failed"]:
        return 0
    for row in ordered:
        if row["status"] == "failed":
            sys.stderr.write(f"medsegunet: case {shownCaseId(row['case'])} failed: {row['message']}\n")
    sys.stderr.write(f"medsegunet: {counts['failed']} of {len(ordered)} cases failed (see {os.path.join(output, 'summary.csv')}).\n")
    return 1
