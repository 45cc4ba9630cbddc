"""``medsegunet demo``: the prostate zones of ProstateX-0000 with the zoo model."""

from __future__ import annotations

from ..demo import runDemo


def addParser(subparsers) -> None:
    """Register ``medsegunet demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="segment the prostate zones of ProstateX-0000 with the zoo model",
        description="Segment the prostate zones of ProstateX-0000 (axial T2, ROI from the axial/sagittal/coronal T2) and write "
        "the segmentation, statistics and a PNG overview. Without --data the three T2 series are downloaded once into a cache folder.",
    )
    parser.add_argument(
        "--data", metavar="DIR", help="local copy: DICOM series folders (e.g. ../shared/data/prostatex/ProstateX-0000) or the NRRD files"
    )
    parser.add_argument("--output", default="demo-output", metavar="DIR", help="output folder (default: demo-output)")
    parser.add_argument("--model", metavar="PATH", help="model file or catalog name (default: the zoo's prostate-zones model)")
    from ..engine.settings import DEVICES

    parser.add_argument("--device", default="auto", choices=DEVICES, help="where the network runs")
    parser.set_defaults(func=run)


def run(args, console=None) -> int:
    """``medsegunet demo``: returns the exit status."""
    log = console.line if console is not None else None
    model = args.model
    if model:
        from ..models.catalog import resolveModelOption

        model = resolveModelOption(model, console)
    runDemo(args.data, args.output, model, args.device, log=log, progress=console)
    return 0


__all__ = ["addParser", "run"]
