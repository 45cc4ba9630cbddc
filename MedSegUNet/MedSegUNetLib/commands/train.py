"""``medsegunet train``: a model from a config and a data set."""

from __future__ import annotations

import os

from ..engine.errors import TrainingError
from ..models.trainconfig import readConfig, validateConfig
from ..models.training import loadCheckpoint, train, withDataSource


def addParser(subparsers) -> None:
    """Register ``medsegunet train``."""
    parser = subparsers.add_parser(
        "train",
        help="train a MONAI U-Net from a Decathlon folder or a case CSV",
        description="Train a MONAI U-Net with the same ROI, resampling and normalisation as inference. "
        "Writes checkpoints, metrics.csv, curves.png and validation.png to --output; then run 'medsegunet export'.",
    )
    parser.add_argument(
        "--config", help="training config, YAML or JSON (see trainconfig.schema.json); with --resume, defaults to the checkpoint's"
    )
    parser.add_argument("--output", required=True, help="output folder (created if missing)")
    parser.add_argument("--resume", help="checkpoint_last.pt of an interrupted run, to continue it")
    parser.add_argument(
        "--init", help="a checkpoint of the same network to start from (fine-tuning: new optimiser and schedule); not with --resume"
    )
    parser.add_argument(
        "--data", help="a Decathlon folder (such as 'data prepare' writes) or a case CSV, instead of the config's data source"
    )
    from ..engine.settings import DEVICES

    parser.add_argument("--device", default="auto", choices=DEVICES, help="where to train (default auto: CUDA when present)")
    parser.set_defaults(func=run)


def run(args, console=None) -> int:
    """``medsegunet train``: returns the exit status."""
    if args.config:
        config = readConfig(args.config)
    elif args.resume:
        config = validateConfig(loadCheckpoint(args.resume)["config"], f"config stored in '{args.resume}'")
    else:
        raise TrainingError("Give --config CONFIG (YAML or JSON), or --resume CHECKPOINT to continue a run.")
    if args.data:
        config = withDataSource(config, args.data)
    from ..engine.staging import checkDistinctPaths

    checkDistinctPaths(
        {"--output": args.output, "--output (config.json)": os.path.join(args.output, "config.json")},
        {"--config": args.config, "--resume": args.resume, "--init": args.init},
    )
    # --resume continues in place over its own checkpoint; a run from --init is a new one, whose
    # checkpoints must never replace the one it starts from.
    checkDistinctPaths(
        {f"--output ({name})": os.path.join(args.output, name) for name in ("checkpoint_last.pt", "checkpoint_best.pt")},
        {"--init": args.init},
    )
    log = console.line if console is not None else None
    train(config, args.output, resume=args.resume, device=args.device, log=log, init=args.init)
    return 0


__all__ = ["addParser", "run"]
