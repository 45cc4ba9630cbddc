"""``medsegunet export``, ``info`` and ``convert``: model files on the command line."""

from __future__ import annotations

import sys

from ..models.exporting import exportCheckpoint, usageLines, validationWording


def addParser(subparsers) -> None:
    """Register ``medsegunet export``, ``medsegunet info`` and ``medsegunet convert``."""
    parser = subparsers.add_parser(
        "export",
        help="script a training checkpoint to a TorchScript model with its card",
        description="Script the checkpoint's network to TorchScript, check it against the eager network, and embed the model card "
        "made from the training config (so inference preprocessing equals training's).",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint_best.pt written by 'medsegunet train'")
    parser.add_argument("--config", help="training config (default: the one stored in the checkpoint)")
    parser.add_argument("--output", required=True, help="model file to write, e.g. model.pt")
    parser.add_argument(
        "--format",
        choices=("torchscript", "pt2"),
        default="torchscript",
        help="TorchScript (default; every Slicer's torch loads it) or a torch.export archive (.pt2)",
    )
    parser.set_defaults(func=run)

    info = subparsers.add_parser("info", help="show a model's card", description="Show the card of a MedSegUNet TorchScript model.")
    info.add_argument("model", metavar="MODEL.pt", help="TorchScript model file, or a catalog name")
    info.add_argument("--json", action="store_true", help="print the full card as JSON")
    info.set_defaults(func=runInfo)

    convert = subparsers.add_parser(
        "convert",
        help="convert a TorchScript model to a torch.export (.pt2) model",
        description="Rebuild the eager network the card records, export it with torch.export, and check it against the "
        "TorchScript network on random inputs of three sizes before writing MODEL.pt2 with the same card.",
    )
    convert.add_argument("model", metavar="MODEL.pt", help="TorchScript model file, or a catalog name")
    convert.add_argument("--output", required=True, help="the .pt2 file to write")
    convert.set_defaults(func=runConvert)


def run(args, console=None) -> int:
    """``medsegunet export``: returns the exit status."""
    from ..engine.modelcard import cardSummary
    from ..engine.staging import checkDistinctPaths

    checkDistinctPaths({"--output": args.output}, {"--checkpoint": args.checkpoint, "--config": args.config})
    card = exportCheckpoint(args.checkpoint, args.output, args.config, args.format)
    sys.stdout.write(f"Wrote {args.output}\n{cardSummary(card)}\n")
    validation = card.get("validation")
    if validation:
        sys.stdout.write(
            f"{validationWording(card)}: mean Dice {validation['mean_dice']:.4f} on {', '.join(validation['cases'])} (epoch "
            f"{validation['epoch']})\n"
        )
    return 0


def runConvert(args, console=None) -> int:
    """``medsegunet convert`` (:func:`converting.convertModel`): returns the exit status."""
    from ..engine.modelcard import readCard
    from ..engine.staging import checkDistinctPaths
    from ..models.catalog import resolveModelOption
    from ..models.converting import checkSizes, convertModel

    source = resolveModelOption(args.model, console)
    checkDistinctPaths({"--output": args.output}, {"MODEL": source})
    differences = convertModel(source, args.output)
    sizes = ", ".join("×".join(str(size) for size in shape[2:]) for shape in checkSizes(readCard(args.output)))
    sys.stdout.write(f"Wrote {args.output}: it answers as '{source}' does on {sizes} inputs (max |difference| {max(differences):.3g})\n")
    return 0


def runInfo(args, console=None) -> int:
    """``medsegunet info``: returns the exit status."""
    import json

    from ..engine.modelcard import cardSummary, readCard
    from ..models.catalog import resolveModelOption

    path = resolveModelOption(args.model, console)
    card = readCard(path)
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(card, indent=2) + "\n")
    else:
        from ..engine.exportedmodel import formatLine

        sys.stdout.write(cardSummary(card) + "\n" + formatLine(path) + "\n")
        provenance = card.get("provenance")
        if isinstance(provenance, dict):
            verified = provenance.get("verified") or {}
            sys.stdout.write(
                f"Imported from {provenance.get('format')} {provenance.get('source')} (SHA256 "
                f"{str(provenance.get('source_sha256'))[:12]}…), "
                f"verified against {verified.get('runtime')}: max difference {verified.get('max_abs_difference')}\n"
            )
        validation = card.get("validation")
        if isinstance(validation, dict) and validation.get("mean_dice") is not None:
            cases = validation.get("cases", [])
            shown = ", ".join(cases[:6]) + (f", … ({len(cases)} cases)" if len(cases) > 6 else "")
            sys.stdout.write(f"{validationWording(card)}: mean Dice {validation['mean_dice']:.4f} ({shown})\n")
        sys.stdout.write("\n".join(usageLines(card, args.model)) + "\n")
    return 0


__all__ = ["addParser", "run", "runConvert", "runInfo"]
