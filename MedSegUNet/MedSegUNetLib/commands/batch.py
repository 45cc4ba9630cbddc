"""``medsegunet batch``: a cohort's options checked, its cases run, the run's last lines and exit status."""

from __future__ import annotations

import os
import sys
import time
from typing import Sequence

from ..cohorts.batch import MAX_THREADS, MAX_WORKERS, preloadMontageLibrary, rowsBeforeTheRun, writeCohortFiles
from ..cohorts.casejob import FORMATS, BatchOptions, cardDigest, sweepStaging
from ..cohorts.cases import CaseSpec, casesFromSource, dryRunTable, shownCaseId
from ..cohorts.pool import runLocal, workerDevices
from ..engine.errors import CohortError, Interrupted
from ..engine.request import SegmentationRequest


def addParser(subparsers) -> None:
    """Register ``medsegunet batch``."""
    from ..engine.settings import DEVICES

    parser = subparsers.add_parser(
        "batch",
        help="segment a cohort: a folder of cases, a CSV or a Decathlon dataset.json",
        description="Segment every case of a cohort with one model loaded once per worker. Writes DIR/<case>/ (segmentation, "
        "statistics, QC tile, manifest), DIR/summary.csv and DIR/qc.png. A failing case is recorded and the rest go on; "
        "exit status 1 when any case failed. A rerun skips cases whose outputs are complete and made by the same model from the same "
        "inputs.",
    )
    parser.add_argument("--model", required=True, metavar="MODEL", help="TorchScript model with a MedSegUNet card, or a catalog name")
    parser.add_argument(
        "--cases",
        required=True,
        metavar="SOURCE",
        help="folder of case folders, a CSV (case, one column per input, roi… columns) or dataset.json",
    )
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="output folder (created if missing; on a cluster, a path every node can write)"
    )
    parser.add_argument("--format", default="seg.nrrd", choices=list(FORMATS), help="segmentation file format (default seg.nrrd)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where the network runs")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes (default: one per GPU; on the CPU two, when the cases, cores and memory (4 GB each) allow, else one)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads of each worker's network (default: the CPU cores divided among the workers)",
    )
    parser.add_argument(
        "--engine", default="local", choices=["local", "ray"], help="local worker processes, or Ray actors (pip install -e '.[ray]')"
    )
    parser.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (default: start a local Ray)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="a .pt2 model: every worker runs it as an AOTInductor package built once for this machine (cached), when it answers the same "
        "and is faster",
    )
    parser.add_argument("--force", action="store_true", help="redo cases whose outputs are already complete")
    parser.add_argument("--dry-run", action="store_true", help="print the case × role → series table and change nothing")
    parser.add_argument(
        "--resample-irregular", action="store_true", help="resample DICOM series with irregular slices instead of failing those cases"
    )
    parser.set_defaults(func=run)


def run(args, console) -> int:
    """``medsegunet batch``: returns 0 when every case succeeded, 1 when some failed."""
    from ..engine.modelcard import readCard
    from ..models.catalog import resolveModelOption
    from .console import CaseProgress

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
            from ..cohorts.raybatch import runRay

            runRay(cases, todo, options, args.ray_address, args.workers, onRow)
        elif todo:
            runLocal(
                cases,
                todo,
                options,
                devices,
                onRow,
                onBegun=lambda index, number: progress.begun(cases[index].id, number),
                onWarning=progress.warn,
            )
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
    from ..engine.paths import sha256
    from ..engine.staging import checkDistinctPaths

    caseInputs = [path for case in cases for path in [*(p for p, _ in case.inputs), *case.roi]]
    checkDistinctPaths(
        {"--output": args.output}, {"--cases": args.cases, "--model": [args.model, args.model + ".json"], "a case's input": caseInputs}
    )
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
        modelPath=os.path.abspath(args.model),
        modelSHA256=sha256(args.model),
        cardSHA256=cardDigest(card),
        outputDir=os.path.abspath(args.output),
        format=args.format,
        request=SegmentationRequest(modelPath=os.path.abspath(args.model), device=args.device, resampleIrregular=args.resample_irregular),
        threads=threadsEach(args, devices),
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
    console.line(
        f"Workers run the AOTInductor package built for this machine ({loaded.compiled['speedup']:.2f}× the uncompiled speed on one patch)"
    )
    return str(cache)


def threadsEach(args, devices: Sequence[str]) -> int:
    """Network threads of each worker: ``--threads``, or the cores shared among the local workers
    (``devices``) or the Ray workers asked for."""
    return args.threads or max(1, (os.cpu_count() or 1) // max(1, len(devices) or args.workers or 1))


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


__all__ = ["addParser", "run", "checkOptions", "prepareOutput", "compiledCacheFor", "threadsEach", "report"]
