"""The ``medsegunet`` command: roi, segment, info, train, export, demo.

User errors print one line on stderr (no traceback unless ``--verbose``) and exit with status 2;
outputs are written to temporary names and renamed only once everything succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Sequence

from .errors import MedSegUNetError, firstLine

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130


def _addRoiParser(subparsers) -> None:
    parser = subparsers.add_parser(
        "roi",
        help="region of interest shared by several series (exact oriented-box intersection)",
        description="Print the ROI: the reference voxels whose centres lie inside every volume's extent.",
    )
    parser.add_argument("volumes", nargs="+", metavar="VOLUME", help="volume files or DICOM folders (FOLDER::SERIES picks a series)")
    parser.add_argument("--reference", metavar="PATH", help="which VOLUME the ROI is expressed on (default: the first)")
    parser.add_argument("--margin", type=float, default=0.0, metavar="MM", help="grow the ROI by this many mm per side (clipped)")
    parser.add_argument("--json", metavar="OUT", default="-", help="write the JSON here ('-' = standard output, the default)")
    parser.set_defaults(func=runRoi)


def runRoi(args) -> int:
    from . import geometry
    from .volumes import readVolume, volumeName, writeText

    if args.reference is not None and args.reference not in args.volumes:
        raise MedSegUNetError(f"--reference '{args.reference}' is not one of the VOLUMEs given: repeat it among them.")
    if args.margin < 0:
        raise MedSegUNetError("--margin must be zero or positive (mm).")
    paths = list(args.volumes)
    if args.reference is not None:
        paths.remove(args.reference)
        paths.insert(0, args.reference)
    if args.json != "-":
        from .volumes import checkOutputPath

        checkOutputPath(args.json)
    geometries = [geometry.VolumeGeometry.fromImage(readVolume(path), volumeName(path)) for path in paths]
    roi = geometry.computeROI(geometries[0], geometries[1:], marginMM=args.margin)
    report = roi.toDict()
    report["reference_path"] = paths[0]
    text = json.dumps(report, indent=2) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    else:
        writeText(text, args.json)
    return 0


def _addSegmentParser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment volumes with a TorchScript U-Net",
        description="Segment INPUTs (the model's channels in card order; the first is the reference).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="volume files or DICOM folders (FOLDER::SERIES picks a series)")
    parser.add_argument("--model", required=True, metavar="M.pt", help="TorchScript model with a MedSegUNet card")
    parser.add_argument(
        "--roi-from",
        nargs="+",
        default=[],
        metavar="VOLUME",
        help="extra series whose extents limit the ROI (put the INPUTs first, or end this list with --)",
    )
    parser.add_argument("--no-roi", action="store_true", help="run on the whole reference volume")
    parser.add_argument("--margin", type=float, default=None, metavar="MM", help="grow the ROI by this many mm (default: the card's)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where the network runs")
    parser.add_argument("--output", metavar="SEG", help=".seg.nrrd (Slicer segmentation) or .nrrd/.nii.gz label map")
    parser.add_argument("--stats", metavar="STATS.csv", help="statistics table (CSV)")
    parser.add_argument("--stats-json", metavar="STATS.json", help="statistics, ROI, model and timings (JSON)")
    parser.add_argument("--reference-seg", metavar="REF", help="reference label map or .seg.nrrd for overlap metrics")
    parser.set_defaults(func=runSegment)


def _reportProgress(fraction: float, message: str) -> None:
    # Only on a terminal: scripts that read stderr get the single error line and nothing else.
    if sys.stderr.isatty():
        sys.stderr.write(f"\r[{fraction * 100:5.1f}%] {message[:70]:<70}")
        sys.stderr.flush()
        if fraction >= 1.0:
            sys.stderr.write("\n")


def runSegment(args) -> int:
    from . import modelcard, pipeline, statistics
    from .outputs import SEGMENTATION_SUFFIXES, writeSegmentation
    from .volumes import atomicOutput, checkOutputPath, readVolume, volumeName

    started = time.perf_counter()
    if args.output:
        checkOutputPath(args.output, SEGMENTATION_SUFFIXES)
    for path in (args.stats, args.stats_json):
        if path:
            checkOutputPath(path)
    if args.margin is not None and args.margin < 0:
        raise MedSegUNetError("--margin must be zero or positive (mm).")
    if not (args.output or args.stats or args.stats_json):
        raise MedSegUNetError("Nothing to write: give --output, --stats or --stats-json.")

    progress = pipeline.ProgressReporter(_reportProgress)
    progress.stage(pipeline.Stage.LOADING)
    card = modelcard.readCard(args.model)
    if len(args.inputs) != len(card["inputs"]):
        expected = ", ".join(i["name"] for i in card["inputs"])
        raise MedSegUNetError(
            f"Model '{card['name']}' takes {len(card['inputs'])} input volume(s) ({expected}) but {len(args.inputs)} were given: pass them in that order."
        )
    images = [readVolume(path) for path in args.inputs]
    roiImages = [readVolume(path) for path in args.roi_from]
    model = modelcard.loadModel(args.model, args.device)
    inputNames = [i["name"] for i in card["inputs"]]
    margin = args.margin if args.margin is not None else float(card.get("roi", {}).get("margin_mm", 0.0))
    result = pipeline.segmentImages(
        images,
        model,
        names=[volumeName(path) for path in args.inputs],
        roiImages=roiImages,
        roiNames=[volumeName(path) for path in args.roi_from],
        useROI=not args.no_roi,
        marginMM=margin,
        progress=progress,
    )

    progress.stage(pipeline.Stage.STATISTICS)
    reference = None
    report: dict = {}
    if args.stats or args.stats_json:
        if args.reference_seg:
            reference = statistics.readReferenceSegmentation(args.reference_seg, result.labelmap, card["labels"])
        report = statistics.computeStatistics(result.labelmap, card, dict(zip(inputNames, images)), reference)

    progress.stage(pipeline.Stage.WRITING)
    # Every output goes to a temporary name; the renames happen together once all are written.
    with contextlib.ExitStack() as outputs:
        if args.output:
            temporary = outputs.enter_context(atomicOutput(args.output))
            writeSegmentation(result.labelmap, card["labels"], temporary)
        if args.stats:
            temporary = outputs.enter_context(atomicOutput(args.stats))
            with open(temporary, "w", encoding="utf-8", newline="") as stream:
                stream.write(statistics.statisticsCSV(report["segments"], inputNames, reference is not None))
        if args.stats_json:
            temporary = outputs.enter_context(atomicOutput(args.stats_json))
            timings = dict(progress.finish("Done"))
            timings["total"] = time.perf_counter() - started
            document = {
                **report,
                "inputs": [{"name": name, "path": path} for name, path in zip(inputNames, args.inputs)],
                "roi": result.roi.toDict(),
                "model": {"path": os.path.abspath(args.model), "name": card["name"], "card": card},
                "device": result.device,
                "timing_s": {key: round(value, 4) for key, value in timings.items()},
            }
            with open(temporary, "w", encoding="utf-8") as stream:
                stream.write(statistics.statisticsJSON(document))
    progress.finish("Done")
    return 0


def buildParser() -> argparse.ArgumentParser:
    from . import __version__, demo, exporting, training

    parser = argparse.ArgumentParser(
        prog="medsegunet",
        description="MedSegUNet: U-Net segmentation of MRI with a multi-series region of interest (the engine of the 3D Slicer extension).",
    )
    parser.add_argument("--version", action="version", version=f"medsegunet {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    _addRoiParser(subparsers)
    _addSegmentParser(subparsers)
    exporting.addParser(subparsers)
    training.addParser(subparsers)
    demo.addParser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medsegunet`` console script; returns the exit status."""
    parser = buildParser()
    args = parser.parse_args(argv)
    if args.verbose:
        return int(args.func(args) or 0)
    import warnings

    from .errors import ProcessingCancelled

    # Library deprecation notices are for developers; users get results or one error line.
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.simplefilter("ignore", category)
    try:
        return int(args.func(args) or 0)
    except ProcessingCancelled as error:
        sys.stderr.write(f"medsegunet: {error}\n")
        return EXIT_CANCELLED
    except MedSegUNetError as error:
        sys.stderr.write(f"medsegunet: error: {error}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("medsegunet: interrupted; nothing was written.\n")
        return EXIT_CANCELLED
    except MemoryError:
        sys.stderr.write("medsegunet: error: out of memory: use a smaller patch_size, --device cpu, or a smaller ROI.\n")
        return 1
    except Exception as error:  # an unexpected failure still gets one line; --verbose shows the traceback
        sys.stderr.write(f"medsegunet: internal error: {type(error).__name__}: {firstLine(error)} (rerun with --verbose for details)\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
