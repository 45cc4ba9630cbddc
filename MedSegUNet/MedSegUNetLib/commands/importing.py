"""``medsegunet import``: a network from ONNX, TorchScript, Auto3DSeg, a MONAI bundle or an nnU-Net v2 results
folder, checked, with its card."""

from __future__ import annotations

from ..engine.errors import ModelImportError
from ..models.importing import detectFormat, importAuto3DSeg, importBundle
from ..models.onnximport import importONNX


def addParser(subparsers) -> None:
    """Register ``medsegunet import``."""
    parser = subparsers.add_parser(
        "import",
        help="import an ONNX, TorchScript or Auto3DSeg model, a MONAI bundle or an nnU-Net v2 results folder as a verified MedSegUNet "
        "model",
        description="Convert a model from another ecosystem to a TorchScript MedSegUNet model with its card, verified against the source "
        "runtime.",
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="an .onnx file, a published TorchScript .pt, an Auto3DSeg checkpoint (.pt), a MONAI bundle folder or an nnU-Net v2 results "
        "folder (dataset.json, plans.json, fold_N/)",
    )
    parser.add_argument("--output", required=True, metavar="MODEL.pt", help="the model file to write")
    parser.add_argument(
        "--card",
        metavar="CARD.json",
        help='the model card; for ONNX with "network": {"_target_", "args"} naming the network of the weights',
    )
    parser.add_argument(
        "--localizer",
        metavar="TORCHSCRIPT.pt",
        help='TorchScript: the localiser network the card\'s "localizer" describes, stored in the same model file',
    )
    parser.add_argument("--labels", metavar="LABELS.csv", help="labels (value,name) for Auto3DSeg checkpoints")
    parser.add_argument(
        "--format",
        choices=("torchscript", "pt2"),
        default="torchscript",
        help="write TorchScript (default, MODEL.pt) or a torch.export archive (MODEL.pt2; not for a published TorchScript network)",
    )
    nnunet = parser.add_argument_group("nnU-Net results folders")
    nnunet.add_argument(
        "--configuration", metavar="NAME", help="3d_fullres, 3d_lowres, 2d, ... (default: the one the folder is named after)"
    )
    nnunet.add_argument(
        "--folds", nargs="+", metavar="FOLD", help="the folds to average (default: every fold_N present; 'all' for fold_all)"
    )
    nnunet.add_argument("--checkpoint", choices=("final", "best"), help="checkpoint_final.pth (default) or checkpoint_best.pth")
    nnunet.add_argument("--no-tta", action="store_true", help="no test-time mirroring (nnUNetv2_predict --disable_tta)")
    parser.set_defaults(func=run)


NNUNET_OPTIONS = ("configuration", "folds", "checkpoint", "no_tta")


def runNNUNet(args, console) -> int:
    from ..models.nnunetimport import importNNUNet

    if args.card or args.labels or args.localizer:
        raise ModelImportError("An nnU-Net folder carries its own labels and pipeline: import it without --card, --labels or --localizer.")
    card = importNNUNet(
        args.source,
        args.output,
        args.configuration,
        args.folds,
        args.checkpoint or "final",
        not args.no_tta,
        progress=console,
        format=args.format,
    )
    record = card["provenance"]["nnunet"]
    return finish(
        card,
        console,
        f"Wrote {args.output}: nnU-Net {record['configuration']}, folds {', '.join(record['folds'])} of {record['trainer']}; the written "
        f"folds answer as the eager networks within {card['provenance']['verified']['max_abs_difference']:.2g}",
    )


def finish(card, console, written: str) -> int:
    """The import's notes, then the line saying what was written."""
    console.close()
    for note in card["provenance"].get("notes", []):
        console.line(f"Note: {note}")
    console.line(written)
    return 0


def run(args, console) -> int:
    from ..engine.staging import checkDistinctPaths, checkOutputPath

    checkOutputPath(args.output, (".pt2",) if args.format == "pt2" else (".pt",))
    checkDistinctPaths(
        {"--output": args.output}, {"SOURCE": args.source, "--card": args.card, "--labels": args.labels, "--localizer": args.localizer}
    )
    kind = detectFormat(args.source)
    if kind == "nnunet":
        return runNNUNet(args, console)
    given = [f"--{name.replace('_', '-')}" for name in NNUNET_OPTIONS if getattr(args, name)]
    if given:
        raise ModelImportError(f"{', '.join(given)} go with an nnU-Net results folder, not with this source.")
    if args.localizer and kind == "auto3dseg":
        from ..models.torchscriptimport import loadScripted

        loadScripted(args.source, "Model")  # a .pt that is not TorchScript (cut short, or a checkpoint): said as such
    if args.localizer and kind != "torchscript":
        raise ModelImportError(
            "--localizer goes with a published TorchScript model, not with "
            f"{'a MONAI bundle' if kind == 'bundle' else kind.upper() if kind == 'onnx' else 'an Auto3DSeg checkpoint'}."
        )
    if kind == "torchscript":
        from ..models.torchscriptimport import importTorchScript

        if args.format == "pt2":
            raise ModelImportError(
                "A published TorchScript network exists only as TorchScript (no eager network to export): import it without --format pt2."
            )
        if not args.card:
            raise ModelImportError(
                "Importing a TorchScript model needs --card CARD.json (how its pipeline prepares the input and reads the output)."
            )
        card = importTorchScript(args.source, args.card, args.output, args.localizer, progress=console)
        console.line(
            f"Wrote {args.output}: the written model answers a random {card['provenance']['verified']['patch']} input as the published one "
            "does" + (" (localiser included)" if args.localizer else "")
        )
        return 0
    if kind == "bundle":
        card = importBundle(args.source, args.output, format=args.format, progress=console)
    elif kind == "onnx":
        card = importONNX(args.source, args.card, args.output, format=args.format, progress=console)
    else:
        card = importAuto3DSeg(args.source, args.labels, args.output, format=args.format, progress=console)
    verified = card["provenance"]["verified"]
    return finish(
        card,
        console,
        f"Wrote {args.output}: matches {verified['runtime']} within {verified['max_abs_difference']:.2g} (output range "
        f"{verified['output_range']:.3g})",
    )


__all__ = ["addParser", "run"]
