"""``medsegunet roi`` and ``medsegunet segment``: every option checked first, then read, segment, measure and write together."""

from __future__ import annotations

import json
import os
import sys
import time

from ..engine.cardview import cardView
from ..engine.errors import UsageError
from ..engine.request import SegmentationRequest
from ..engine.settings import DEVICES
from ..models.catalog import resolveModelOption
from .options import MAX_MARGIN_MM, finiteNumber


def addRoiParser(subparsers) -> None:
    parser = subparsers.add_parser(
        "roi",
        help="region of interest shared by several series (exact oriented-box intersection)",
        description="Print the ROI: the reference voxels whose centres lie inside every volume's extent.",
        usage="medsegunet roi [--reference PATH] [--margin MM] [--json OUT|-] [--resample-irregular] VOLUME [VOLUME ...]",
    )
    parser.add_argument("volumes", nargs="*", metavar="VOLUME", help="volume files or DICOM folders (FOLDER::SERIES picks a series)")
    parser.add_argument("--reference", metavar="PATH", help="which VOLUME the ROI is expressed on (default: the first)")
    parser.add_argument(
        "--margin",
        type=finiteNumber(0.0, MAX_MARGIN_MM),
        default=0.0,
        metavar="MM",
        help=f"grow the ROI by this many mm per side (0–{MAX_MARGIN_MM:g}; clipped)",
    )
    parser.add_argument("--json", metavar="OUT", default="-", help="write the JSON here ('-' = standard output, the default)")
    _addResampleIrregular(parser)
    parser.set_defaults(func=runRoi)


def _addResampleIrregular(parser) -> None:
    parser.add_argument(
        "--resample-irregular",
        action="store_true",
        help="resample a DICOM series with missing, duplicated or unevenly spaced slices onto a regular grid built from the true slice "
        "positions (default: refuse it)",
    )


def compactJSON(document) -> str:
    """JSON indented by object, with lists of numbers on one line (a corner is one line, not five)."""
    import re

    text = json.dumps(document, indent=2)
    return re.sub(
        r"\[\s*([-+0-9.eE,\s]+?)\s*\]", lambda match: "[" + ", ".join(part.strip() for part in match.group(1).split(",")) + "]", text
    )


def runRoi(args, console) -> int:
    from ..engine import geometry
    from ..engine.staging import checkDistinctPaths, checkOutputPath, writeText
    from ..engine.volumes import readVolume, volumeName

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


def addSegmentParser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment volumes with a TorchScript U-Net",
        description="Segment INPUTs (the model's channels in card order; the first is the reference).",
        usage="medsegunet segment --model M.pt [options] INPUT [INPUT ...] [--roi-from VOLUME [VOLUME ...]]",
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="volume files or DICOM folders (FOLDER::SERIES picks a series)")
    parser.add_argument(
        "--model",
        required=True,
        metavar="M.pt",
        help="TorchScript model with a MedSegUNet card, or a catalog name (medsegunet models list)",
    )
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
        "--margin",
        type=finiteNumber(0.0, MAX_MARGIN_MM),
        default=None,
        metavar="MM",
        help=f"grow the ROI by this many mm (0–{MAX_MARGIN_MM:g}; default: the card's)",
    )
    parser.add_argument(
        "--context",
        type=finiteNumber(0.0, MAX_MARGIN_MM),
        default=None,
        metavar="MM",
        help="the network sees the ROI grown by this many mm; labels stay inside the ROI (default: the card's roi.context_mm)",
    )
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where the network runs")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="a .pt2 model: run it as an AOTInductor package built for this machine (once, about a minute; cached), when it answers the "
        "same and is faster",
    )
    parser.add_argument(
        "--output",
        metavar="SEG",
        help=".seg.nrrd (Slicer segmentation), .dcm (DICOM SEG; the reference must be a DICOM series) or .nrrd/.nii.gz/.nii/.mha/.mhd "
        "label map",
    )
    parser.add_argument("--stats", metavar="STATS.csv", help="statistics table (CSV)")
    parser.add_argument("--stats-json", metavar="STATS.json", help="statistics, ROI, model and timings (JSON)")
    parser.add_argument("--reference-seg", metavar="REF", help="reference label map or .seg.nrrd for overlap metrics")
    parser.add_argument(
        "--probabilities",
        metavar="FILE",
        help="per-class probabilities on the reference grid (.nrrd/.mha/.nii.gz, one vector component per class)",
    )
    parser.add_argument(
        "--probabilities-uint8", action="store_true", help="store the probabilities as 0–255 (scale 1/255 in the header; .nrrd or .mha)"
    )
    parser.add_argument(
        "--preview",
        metavar="FILE.png",
        help="a picture of the result: axial slices through the ROI with the labels, and the ROI box on the --roi-from series",
    )
    _addResampleIrregular(parser)
    parser.set_defaults(func=runSegment)


def checkCardROI(card: dict, hasROISeries: bool, noROI: bool) -> None:
    """Refuse to run a model trained on a multi-series ROI without those series (or ``--no-roi``).

    Raises:
        MedSegUNetError: the card names ``roi.from_series`` and neither was given.
    """
    series = cardView(card).roi.fromSeries
    if series and not hasROISeries and not noROI:
        names = " and ".join(f"the {name} series" for name in series)
        raise UsageError(
            f"This model was trained on the region covered by {names}: add --roi-from with them "
            f"(e.g. --roi-from SAG COR), or --no-roi to run on the whole volume."
        )


def warnAboutContext(card: dict, margin: float | None, context: float | None, console) -> None:
    """One warning line when --margin or --context differ from what the model was trained with."""
    roi = cardView(card).roi
    for option, given, trained in (("--margin", margin, roi.marginMM), ("--context", context, roi.contextMM)):
        if given is not None and abs(float(given) - trained) > 1e-9:
            console.warn(
                f"{option} {given:g} mm differs from the {trained:g} mm this model was trained with: results may be worse "
                "(the model sheet says why)"
            )


def runSegment(args, console) -> int:
    """``medsegunet segment``: every option checked first, then read, segment, measure and write together."""
    from ..engine import modelcard, pipeline
    from ..engine.volumes import readVolume, volumeName

    started = time.perf_counter()
    args.model = resolveModelOption(args.model, console)
    outputs = checkSegmentOptions(args)
    progress = pipeline.ProgressReporter(console)
    progress.stage(pipeline.Stage.LOADING)
    card = modelcard.readCard(args.model)
    if len(args.inputs) != len(card.inputs):
        expected = ", ".join(card.inputNames)
        raise UsageError(
            f"Model '{card.name}' takes {len(card.inputs)} input volume(s) ({expected}) but {len(args.inputs)} were given: pass them "
            "in that order."
        )
    checkCardROI(card, bool(args.roi_from), args.no_roi)
    warnAboutContext(card, args.margin, args.context, console)
    request = SegmentationRequest(
        modelPath=args.model,
        inputs=args.inputs,
        roiSeries=args.roi_from,
        device=args.device,
        useROI=not args.no_roi,
        marginMM=args.margin,
        contextMM=args.context,
        keepProbabilities=bool(args.probabilities),
        compile=args.compile,
        resampleIrregular=args.resample_irregular,
    )
    images = [readVolume(path, resampleIrregular=request.resampleIrregular) for path in request.inputs]
    roiImages = [readVolume(path, resampleIrregular=request.resampleIrregular) for path in request.roiSeries]
    if request.compile:
        from ..engine.compiled import loadCompiledModel
        from ..models.catalog import cacheFolder

        model = loadCompiledModel(request.modelPath, request.device, cacheFolder() / "compiled", console.warn, progress.within)
        if model.compiled is not None:
            console.line(
                f"Running the AOTInductor package built for this machine ({model.compiled['speedup']:.2f}× the uncompiled speed on one "
                "patch)"
            )
    else:
        model = modelcard.loadModel(request.modelPath, request.device)
    result = pipeline.segmentImages(
        images,
        model,
        names=[volumeName(path) for path in request.inputs],
        roiImages=roiImages,
        roiNames=[volumeName(path) for path in request.roiSeries],
        progress=progress,
        **request.pipelineOptions(card),
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
    from ..engine.outputs import SEGMENTATION_SUFFIXES
    from ..engine.paths import checkRegularFile, pathSuffix
    from ..engine.staging import checkDistinctPaths, checkOutputPath

    if not args.inputs:
        raise UsageError(
            "Give the INPUT volumes (the model's inputs in card order), e.g. 'medsegunet segment --model M.pt T2 --output seg.seg.nrrd'."
        )
    outputs = {
        "--output": args.output,
        "--stats": args.stats,
        "--stats-json": args.stats_json,
        "--probabilities": args.probabilities,
        "--preview": args.preview,
    }
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
            from ..engine.dicomseg import referenceSeries

            referenceSeries(args.inputs[0])  # a DICOM SEG needs the DICOM source images: refuse early
    for path in (args.stats, args.stats_json):
        if path:
            checkOutputPath(path)
    checkDistinctPaths(
        outputs,
        {
            "INPUT": args.inputs,
            "--roi-from": args.roi_from,
            "--model": [args.model, args.model + ".json"],
            "--reference-seg": args.reference_seg,
        },
    )
    if args.reference_seg:
        checkRegularFile(args.reference_seg, "Reference segmentation")
    return outputs


def segmentStatistics(args, card: dict, result, images: list, console) -> tuple[dict, list | None, list[str]]:
    """The statistics (with the reference's overlap), when asked for or when the card has quality
    ranges (a flagged result is said on every run); the warnings, each also on stderr."""
    from ..engine import statistics
    from ..engine.writer import runReport

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
    from ..engine.paths import pathSuffix, sha256
    from ..engine.volumes import volumeName
    from ..engine.writer import OutputPlan, statisticsDocument, writeResults

    dicom = bool(args.output) and pathSuffix(args.output) == ".dcm"
    plan = OutputPlan(
        segmentation=args.output,
        dicomSeries=args.inputs[0] if dicom else None,
        probabilities=args.probabilities,
        probabilitiesUInt8=args.probabilities_uint8,
        statisticsCSV=args.stats,
        statisticsJSON=args.stats_json,
        preview=args.preview,
    )
    document = (
        statisticsDocument(
            report,
            result,
            card,
            args.model,
            [(spec["name"], path, None) for spec, path in zip(card["inputs"], args.inputs)],
            roiSeries=args.roi_from,
            modelSHA256=sha256(args.model),
            warnings=warnings,
            timings={**timings, "total": time.perf_counter() - started},
        )
        if args.stats_json
        else {}
    )
    others = {volumeName(path): image for path, image in list(zip(args.roi_from, roiImages))[:2]}
    writeResults(plan, result, card, report, document, images, others, volumeName(args.inputs[0]))


__all__ = [
    "addRoiParser",
    "compactJSON",
    "runRoi",
    "addSegmentParser",
    "checkCardROI",
    "warnAboutContext",
    "runSegment",
    "checkSegmentOptions",
    "segmentStatistics",
    "writeSegmentOutputs",
]
