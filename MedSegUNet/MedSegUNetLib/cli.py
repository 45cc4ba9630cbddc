"""The ``medsegunet`` command: roi, segment, info, train, export, demo.

Every option that takes several paths may be repeated (``--roi-from B --roi-from C``) or given a
list (``--roi-from B C``); options may come before or after the INPUTs, and ``--`` ends an
option's list (``--roi-from B C -- A``). A single-value option given twice is refused rather than
silently taking the last value.

User errors print one line on stderr (no traceback unless ``--verbose``) and exit with status 2;
SIGINT and SIGTERM remove temporaries and exit with 130 and 143. Outputs are staged, verified and
renamed together only once everything succeeded (:class:`volumes.StagedOutputs`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from typing import Sequence

from .engine.errors import firstLine, Interrupted, MedSegUNetError, outOfMemory, ProcessingCancelled, UsageError
from .engine.settings import DEVICES
from .models.catalog import resolveModelOption

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130
EXIT_TERMINATED = 143
# 128 + SIGPIPE, as a shell reports a command whose reader went away.
EXIT_BROKEN_PIPE = 141
# The largest margin the ROI options take: far beyond any organ, small enough to catch a typo.
MAX_MARGIN_MM = 1000.0


# ---------------------------------------------------------------------------------------------
# Argument parsing that cannot lose a value
# ---------------------------------------------------------------------------------------------


class StoreOnce(argparse.Action):
    """``store``, but a second occurrence of the option is an error instead of replacing the first."""

    def __call__(self, parser, namespace, values, option_string=None):
        marker = f"_seen_{self.dest}"
        if getattr(namespace, marker, False):
            parser.error(f"{option_string} was given twice: give it once")
        setattr(namespace, marker, True)
        setattr(namespace, self.dest, values)


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, and whose plain options refuse repeats."""

    def __init__(self, *arguments, **keywords) -> None:
        super().__init__(*arguments, **keywords)
        self.register("action", "store", StoreOnce)
        self.register("action", None, StoreOnce)

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help').\n")


def finiteNumber(low: float = 0.0, high: float = math.inf, unit: str = "mm"):
    """An argparse type: a finite float in ``[low, high]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"'{text}' must be a finite number of {unit} from {low:g} to {high:g}")
        return value

    return parse


def addCommonOptions(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` and ``-q/--quiet``, accepted after the command too."""
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="print nothing but errors")


def addCommonOptionsEverywhere(parser: argparse.ArgumentParser) -> None:
    """:func:`addCommonOptions` on a command and on each of its actions (``models list -q``, as
    ``models -q list`` and ``-q models list``)."""
    addCommonOptions(parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                addCommonOptionsEverywhere(sub)


def moveInputsAfterDoubleDash(arguments: Sequence[str]) -> list[str]:
    """``--`` ends an option's list: the words after it, up to the next option, are INPUTs.

    They are moved to the front, where no option can take them.
    """
    arguments = list(arguments)
    inputs: list[str] = []
    while "--" in arguments:
        cut = arguments.index("--")
        end = cut + 1
        while end < len(arguments) and not (arguments[end].startswith("-") and len(arguments[end]) > 1):
            end += 1
        inputs += arguments[cut + 1 : end]
        arguments = arguments[:cut] + arguments[end:]
    return inputs + arguments


# ---------------------------------------------------------------------------------------------
# roi
# ---------------------------------------------------------------------------------------------


def _addRoiParser(subparsers) -> None:
    parser = subparsers.add_parser(
        "roi",
        help="region of interest shared by several series (exact oriented-box intersection)",
        description="Print the ROI: the reference voxels whose centres lie inside every volume's extent.",
        usage="medsegunet roi [--reference PATH] [--margin MM] [--json OUT|-] [--resample-irregular] VOLUME [VOLUME ...]",
    )
    parser.add_argument("volumes", nargs="*", metavar="VOLUME", help="volume files or DICOM folders (FOLDER::SERIES picks a series)")
    parser.add_argument("--reference", metavar="PATH", help="which VOLUME the ROI is expressed on (default: the first)")
    parser.add_argument(
        "--margin", type=finiteNumber(0.0, MAX_MARGIN_MM), default=0.0, metavar="MM", help=f"grow the ROI by this many mm per side (0–{MAX_MARGIN_MM:g}; clipped)"
    )
    parser.add_argument("--json", metavar="OUT", default="-", help="write the JSON here ('-' = standard output, the default)")
    _addResampleIrregular(parser)
    parser.set_defaults(func=runRoi)


def _addResampleIrregular(parser) -> None:
    parser.add_argument(
        "--resample-irregular",
        action="store_true",
        help="resample a DICOM series with missing, duplicated or unevenly spaced slices onto a regular grid built from the true slice positions (default: refuse it)",
    )


def compactJSON(document) -> str:
    """JSON indented by object, with lists of numbers on one line (a corner is one line, not five)."""
    import re

    text = json.dumps(document, indent=2)
    return re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]", lambda match: "[" + ", ".join(part.strip() for part in match.group(1).split(",")) + "]", text)


def runRoi(args, console) -> int:
    from .engine import geometry
    from .engine.staging import checkDistinctPaths, checkOutputPath, writeText
    from .engine.volumes import readVolume, volumeName

    if not args.volumes:
        raise UsageError("Give the VOLUMEs whose common region to compute (files or DICOM folders).")
    paths = list(args.volumes)
    if args.reference is not None:
        matches = [p for p in paths if os.path.realpath(p) == os.path.realpath(args.reference)]
        if not matches:
            raise UsageError(f"--reference '{args.reference}' is not one of the VOLUMEs given: repeat it among them.")
        paths.remove(matches[0])
        paths.insert(0, matches[0])
    if args.json != "-":
        checkOutputPath(args.json)
        checkDistinctPaths({"--json": args.json}, {"VOLUME": paths})
    images = [readVolume(path, resampleIrregular=args.resample_irregular) for path in paths]
    geometries = [geometry.VolumeGeometry.fromImage(image, volumeName(path)) for image, path in zip(images, paths)]
    roi = geometry.computeROI(geometries[0], geometries[1:], marginMM=args.margin)
    report = roi.toDict()
    report["reference_path"] = paths[0]
    text = compactJSON(report) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    else:
        writeText(text, args.json)
        console.line(f"Wrote {args.json}")
    return 0


# ---------------------------------------------------------------------------------------------
# segment
# ---------------------------------------------------------------------------------------------


def _addSegmentParser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment volumes with a TorchScript U-Net",
        description="Segment INPUTs (the model's channels in card order; the first is the reference).",
        usage="medsegunet segment --model M.pt [options] INPUT [INPUT ...] [--roi-from VOLUME [VOLUME ...]]",
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="volume files or DICOM folders (FOLDER::SERIES picks a series)")
    parser.add_argument("--model", required=True, metavar="M.pt", help="TorchScript model with a MedSegUNet card, or a catalog name (medsegunet models list)")
    parser.add_argument(
        "--roi-from",
        nargs="+",
        action="extend",
        default=[],
        metavar="VOLUME",
        help="extra series whose extents limit the ROI; repeat the option or give a list (end a list before INPUTs with --)",
    )
    parser.add_argument("--no-roi", action="store_true", help="run on the whole reference volume")
    parser.add_argument(
        "--margin", type=finiteNumber(0.0, MAX_MARGIN_MM), default=None, metavar="MM", help=f"grow the ROI by this many mm (0–{MAX_MARGIN_MM:g}; default: the card's)"
    )
    parser.add_argument(
        "--context", type=finiteNumber(0.0, MAX_MARGIN_MM), default=None, metavar="MM",
        help="the network sees the ROI grown by this many mm; labels stay inside the ROI (default: the card's roi.context_mm)",
    )
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where the network runs")
    parser.add_argument("--compile", action="store_true",
                        help="a .pt2 model: run it as an AOTInductor package built for this machine (once, about a minute; cached), when it answers the same and is faster")
    parser.add_argument("--output", metavar="SEG", help=".seg.nrrd (Slicer segmentation), .dcm (DICOM SEG; the reference must be a DICOM series) or .nrrd/.nii.gz/.nii/.mha/.mhd label map")
    parser.add_argument("--stats", metavar="STATS.csv", help="statistics table (CSV)")
    parser.add_argument("--stats-json", metavar="STATS.json", help="statistics, ROI, model and timings (JSON)")
    parser.add_argument("--reference-seg", metavar="REF", help="reference label map or .seg.nrrd for overlap metrics")
    parser.add_argument("--probabilities", metavar="FILE", help="per-class probabilities on the reference grid (.nrrd/.mha/.nii.gz, one vector component per class)")
    parser.add_argument("--probabilities-uint8", action="store_true", help="store the probabilities as 0–255 (scale 1/255 in the header; .nrrd or .mha)")
    parser.add_argument("--preview", metavar="FILE.png", help="a picture of the result: axial slices through the ROI with the labels, and the ROI box on the --roi-from series")
    _addResampleIrregular(parser)
    parser.set_defaults(func=runSegment)


def checkCardROI(card: dict, hasROISeries: bool, noROI: bool) -> None:
    """Refuse to run a model trained on a multi-series ROI without those series (or ``--no-roi``).

    Raises:
        MedSegUNetError: the card names ``roi.from_series`` and neither was given.
    """
    series = (card.get("roi") or {}).get("from_series") or []
    if series and not hasROISeries and not noROI:
        names = " and ".join(f"the {name} series" for name in series)
        raise UsageError(
            f"This model was trained on the region covered by {names}: add --roi-from with them "
            f"(e.g. --roi-from SAG COR), or --no-roi to run on the whole volume."
        )


def warnAboutContext(card: dict, margin: float | None, context: float | None, console) -> None:
    """One warning line when --margin or --context differ from what the model was trained with."""
    roi = card.get("roi") or {}
    for option, given, trained in (("--margin", margin, roi.get("margin_mm", 0.0)), ("--context", context, roi.get("context_mm", 0.0))):
        if given is not None and abs(float(given) - float(trained or 0.0)) > 1e-9:
            console.warn(f"{option} {given:g} mm differs from the {float(trained or 0.0):g} mm this model was trained with: results may be worse (the model sheet says why)")


def runSegment(args, console) -> int:
    """``medsegunet segment``: every option checked first, then read, segment, measure and write together."""
    from .engine import modelcard, pipeline
    from .engine.volumes import readVolume, volumeName

    started = time.perf_counter()
    args.model = resolveModelOption(args.model, console)
    outputs = checkSegmentOptions(args)
    progress = pipeline.ProgressReporter(console)
    progress.stage(pipeline.Stage.LOADING)
    card = modelcard.readCard(args.model)
    if len(args.inputs) != len(card["inputs"]):
        expected = ", ".join(i["name"] for i in card["inputs"])
        raise UsageError(
            f"Model '{card['name']}' takes {len(card['inputs'])} input volume(s) ({expected}) but {len(args.inputs)} were given: pass them in that order."
        )
    checkCardROI(card, bool(args.roi_from), args.no_roi)
    warnAboutContext(card, args.margin, args.context, console)
    images = [readVolume(path, resampleIrregular=args.resample_irregular) for path in args.inputs]
    roiImages = [readVolume(path, resampleIrregular=args.resample_irregular) for path in args.roi_from]
    if args.compile:
        from .engine.compiled import loadCompiledModel
        from .models.catalog import cacheFolder

        model = loadCompiledModel(args.model, args.device, cacheFolder() / "compiled", console.warn, progress.within)
        if model.compiled is not None:
            console.line(f"Running the AOTInductor package built for this machine ({model.compiled['speedup']:.2f}× the uncompiled speed on one patch)")
    else:
        model = modelcard.loadModel(args.model, args.device)
    result = pipeline.segmentImages(
        images, model, names=[volumeName(path) for path in args.inputs], roiImages=roiImages, roiNames=[volumeName(path) for path in args.roi_from],
        useROI=not args.no_roi, marginMM=args.margin if args.margin is not None else float(card.get("roi", {}).get("margin_mm", 0.0)),
        progress=progress, contextMM=args.context, keepProbabilities=bool(args.probabilities),
    )
    progress.stage(pipeline.Stage.STATISTICS)
    report, referenceMasks, warnings = segmentStatistics(args, card, result, images, console)
    progress.stage(pipeline.Stage.WRITING)
    writeSegmentOutputs(args, card, result, images, roiImages, report, referenceMasks, warnings, progress.timings, started)
    progress.finish("Done")
    console.close()
    for segment in report.get("segments", []):
        console.line(f"{segment['name']}: {segment['volume_cm3']:.2f} cm3")
    console.line(f"Wrote {', '.join(path for path in outputs.values() if path)} in {time.perf_counter() - started:.1f} s")
    return 0


def checkSegmentOptions(args) -> dict:
    """Every output path (of a kind it can hold, none an input or another output) before any work."""
    from .engine.outputs import SEGMENTATION_SUFFIXES
    from .engine.staging import checkDistinctPaths, checkOutputPath
    from .engine.paths import checkRegularFile, pathSuffix

    if not args.inputs:
        raise UsageError("Give the INPUT volumes (the model's inputs in card order), e.g. 'medsegunet segment --model M.pt T2 --output seg.seg.nrrd'.")
    outputs = {"--output": args.output, "--stats": args.stats, "--stats-json": args.stats_json, "--probabilities": args.probabilities, "--preview": args.preview}
    if not any(outputs.values()):
        raise UsageError("Nothing to write: give --output, --stats, --stats-json, --probabilities or --preview.")
    if args.probabilities:
        checkOutputPath(args.probabilities, (".nrrd", ".nii.gz", ".nii", ".mha"))
        if args.probabilities_uint8 and pathSuffix(args.probabilities) in (".nii", ".nii.gz"):
            raise UsageError("--probabilities-uint8 needs a .nrrd or .mha file: NIfTI has no place for the 1/255 scale.")
    elif args.probabilities_uint8:
        raise UsageError("--probabilities-uint8 goes with --probabilities FILE.")
    if args.preview:
        checkOutputPath(args.preview, (".png",))
    if args.reference_seg and not (args.stats or args.stats_json):
        raise UsageError("--reference-seg fills the overlap columns of the statistics: give --stats or --stats-json too.")
    if args.output:
        checkOutputPath(args.output, SEGMENTATION_SUFFIXES)
        if pathSuffix(args.output) == ".dcm":
            from .engine.dicomseg import referenceSeries

            referenceSeries(args.inputs[0])  # a DICOM SEG needs the DICOM source images: refuse early
    for path in (args.stats, args.stats_json):
        if path:
            checkOutputPath(path)
    checkDistinctPaths(
        outputs,
        {"INPUT": args.inputs, "--roi-from": args.roi_from, "--model": [args.model, args.model + ".json"], "--reference-seg": args.reference_seg},
    )
    if args.reference_seg:
        checkRegularFile(args.reference_seg, "Reference segmentation")
    return outputs


def segmentStatistics(args, card: dict, result, images: list, console) -> tuple[dict, list | None, list[str]]:
    """The statistics (with the reference's overlap), when asked for or when the card has quality
    ranges (a flagged result is said on every run); the warnings, each also on stderr."""
    from .engine import statistics
    from .engine.writer import runReport

    referenceMasks, warnings, report = None, [], {}
    if not (args.stats or args.stats_json or args.preview or any(label.get("qc") for label in card["labels"])):
        return report, referenceMasks, warnings
    if args.reference_seg:
        referenceMasks, warnings = statistics.readReferenceMasks(args.reference_seg, result.labelmap, card["labels"])
    report, notes = runReport(result, card, images, referenceMasks)
    warnings += notes
    for warning in warnings:
        console.warn(warning)
    return report, referenceMasks, warnings


def writeSegmentOutputs(args, card, result, images, roiImages, report, referenceMasks, warnings, timings: dict, started: float) -> None:
    """Every output asked for, staged and verified, then renamed together (the engine's one writer)."""
    from .engine.paths import pathSuffix, sha256
    from .engine.volumes import volumeName
    from .engine.writer import OutputPlan, statisticsDocument, writeResults

    dicom = bool(args.output) and pathSuffix(args.output) == ".dcm"
    plan = OutputPlan(segmentation=args.output, dicomSeries=args.inputs[0] if dicom else None, probabilities=args.probabilities,
                      probabilitiesUInt8=args.probabilities_uint8, statisticsCSV=args.stats, statisticsJSON=args.stats_json, preview=args.preview)
    document = statisticsDocument(
        report, result, card, args.model, [(spec["name"], path, None) for spec, path in zip(card["inputs"], args.inputs)], roiSeries=args.roi_from,
        modelSHA256=sha256(args.model), warnings=warnings, timings={**timings, "total": time.perf_counter() - started},
    ) if args.stats_json else {}
    others = {volumeName(path): image for path, image in list(zip(args.roi_from, roiImages))[:2]}
    writeResults(plan, result, card, report, document, images, others, volumeName(args.inputs[0]))


def buildParser() -> argparse.ArgumentParser:
    from . import __version__, demo
    from .cohorts import batch
    from .models import catalog, datasets, exporting, importing, training

    parser = OneLineParser(
        prog="medsegunet",
        description="MedSegUNet: U-Net segmentation of MRI with a multi-series region of interest (the engine of the 3D Slicer extension).",
    )
    parser.add_argument("--version", action="version", version=f"medsegunet {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (and the commands' data on stdout)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    subparsers.required = True
    _addRoiParser(subparsers)
    _addSegmentParser(subparsers)
    batch.addParser(subparsers)
    catalog.addParser(subparsers)
    importing.addParser(subparsers)
    exporting.addParser(subparsers)
    training.addParser(subparsers)
    datasets.addParser(subparsers)
    demo.addParser(subparsers)
    for sub in subparsers.choices.values():
        addCommonOptionsEverywhere(sub)
    parser.subcommands = subparsers.choices  # type: ignore[attr-defined]
    return parser


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    """Global options, the command, then the command's options and INPUTs in any order."""
    parser = buildParser()
    argv = list(argv)
    index = 0
    while index < len(argv) and argv[index] in ("--verbose", "-q", "--quiet"):
        index += 1
    if index >= len(argv) or argv[index] not in parser.subcommands:
        return parser.parse_args(argv)  # help, version, or a missing or unknown command
    sub = parser.subcommands[argv[index]]
    if any(isinstance(action, argparse._SubParsersAction) for action in sub._actions):
        args = sub.parse_args(argv[index + 1 :])  # 'models list|pull': no INPUTs to move
    else:
        args = sub.parse_intermixed_args(moveInputsAfterDoubleDash(argv[index + 1 :]))
    args.command = argv[index]
    args.verbose = getattr(args, "verbose", False) or "--verbose" in argv[:index]
    args.quiet = getattr(args, "quiet", False) or any(a in ("-q", "--quiet") for a in argv[:index])
    return args


def _raiseInterrupted(signalNumber, frame) -> None:
    raise Interrupted(signalNumber)


def _setSignalHandlers(handlers: dict) -> dict:
    """Install ``{signal: handler}``; returns the previous handlers (empty off the main thread)."""
    previous = {}
    for number, handler in handlers.items():
        try:
            previous[number] = signal.signal(number, handler)
        except (ValueError, OSError):  # not the main thread (an embedding host): keep its handlers
            pass
    return previous


def _interruptionBehind(error: BaseException) -> BaseException | None:
    """The SIGINT or SIGTERM behind an error, if any: a signal that lands while Python 3.11 builds a
    class (a module imported mid-run) comes out wrapped in a RuntimeError ("Error calling
    __set_name__"), which is still the user's interruption, not an internal error."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (Interrupted, KeyboardInterrupt)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _endAtOnceIfANetworkRuns(code: int) -> None:
    """End the console script now when an interruption left a network call running on its thread
    (:func:`engine.inference.callInterruptibly`): the interpreter's shutdown would wait on it or abort.
    Outputs were already removed on the way here; only the streams are left to flush."""
    inference = sys.modules.get("MedSegUNetLib.engine.inference")
    if inference is not None and inference.ABANDONED_CALLS.is_set():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medsegunet`` console script; returns the exit status.

    SIGINT and SIGTERM raise :class:`Interrupted` while the command runs, so staged outputs are
    removed on the way out. Called in-process (``argv`` given), the caller's handlers come back
    afterwards; as the console script, a signal that arrives after the work is done is ignored.
    """
    previous = _setSignalHandlers({signal.SIGINT: _raiseInterrupted, signal.SIGTERM: _raiseInterrupted})
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except (Interrupted, KeyboardInterrupt) as error:
        number = getattr(error, "signalNumber", signal.SIGINT)
        kept = getattr(error, "kept", None)
        name = "terminated" if number == signal.SIGTERM else "interrupted"
        sys.stderr.write(f"medsegunet: {name}; {kept or 'nothing was written'}.\n")
        code = EXIT_TERMINATED if number == signal.SIGTERM else EXIT_CANCELLED
        if argv is None:
            _endAtOnceIfANetworkRuns(code)
        return code
    finally:
        if argv is None:
            _setSignalHandlers({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN})
            from .engine.console import spareTheExitCollection

            spareTheExitCollection()
        else:
            _setSignalHandlers(previous)


def _main(argv: Sequence[str]) -> int:
    from .engine.console import ConsoleProgress

    try:
        args = parseArguments(argv)
    except SystemExit as done:  # --help, --version, or a usage error already printed in one line
        return done.code if isinstance(done.code, int) else EXIT_USER_ERROR
    console = ConsoleProgress(quiet=args.quiet)
    if args.verbose:
        return int(args.func(args, console) or 0)
    import warnings

    # Library deprecation notices are for developers; users get results or one error line.
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.simplefilter("ignore", category)
    try:
        return int(args.func(args, console) or 0)
    except ProcessingCancelled as error:
        console.close()
        sys.stderr.write(f"medsegunet: {error}\n")
        return EXIT_CANCELLED
    except MedSegUNetError as error:
        console.close()
        sys.stderr.write(f"medsegunet: error: {firstLine(error)}\n")
        return EXIT_USER_ERROR
    except MemoryError:
        console.close()
        sys.stderr.write(f"medsegunet: error: {outOfMemory('while running')}\n")
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # The reader of the output went away (``| head``): stop quietly, as Unix tools do, and keep
        # the interpreter from failing again when it flushes stdout on exit.
        console.close()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as error:
        from .engine.errors import osErrorMessage

        console.close()
        sys.stderr.write(f"medsegunet: error: {osErrorMessage(error, 'use', error.filename or '?')}\n")
        return EXIT_USER_ERROR
    except Exception as error:  # an unexpected failure still gets one line; --verbose shows the traceback
        console.close()
        interruption = _interruptionBehind(error)
        if interruption is not None:
            raise interruption from None
        sys.stderr.write(f"medsegunet: internal error: {type(error).__name__}: {firstLine(error)} (rerun with --verbose for details)\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
