"""``medsegunet data prepare``: a public training set as a Decathlon folder."""

from __future__ import annotations

from ..engine.errors import TrainingError
from ..models.datasets import prepare, summary


def addParser(subparsers) -> None:
    """Register ``medsegunet data prepare lgg|acdc``."""
    parser = subparsers.add_parser(
        "data",
        help="prepare a public training set for 'train'",
        description="Turn a fetched public training set into the Decathlon folder 'medsegunet train' reads.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    prepareParser = actions.add_parser(
        "prepare",
        help="convert kaggle_3m (LGG) or ACDC into a training folder with a patient-level split",
        description="Convert the fetched LGG (kaggle_3m) or ACDC (SSL4MIS HDF5) set into imagesTr/labelsTr/imagesTs/labelsTs and "
        "dataset.json with a patient-level split, checking counts and checksums.",
    )
    prepareParser.add_argument("kind", choices=("lgg", "acdc"), help="which set")
    prepareParser.add_argument(
        "source", metavar="FOLDER", help="kaggle_3m folder (lgg), or the folder with train.list, val.list, test.list and data/ (acdc)"
    )
    prepareParser.add_argument("--output", required=True, help="a new folder for the prepared set")
    prepareParser.add_argument("--seed", type=int, default=0, help="lgg: the split's seed (default 0)")
    prepareParser.add_argument("--validation", type=int, default=10, help="lgg: validation patients (default 10)")
    prepareParser.add_argument("--test", type=int, default=22, help="lgg: test patients, TCGA-FG-6692 among them (default 22)")
    prepareParser.set_defaults(func=run)


def run(args, console=None) -> int:
    """``medsegunet data prepare``: returns the exit status."""
    if args.validation < 0 or args.test < 1:
        raise TrainingError("--validation must be 0 or more and --test 1 or more.")
    say = console.line if console is not None else print
    document = prepare(args.kind, args.source, args.output, args.seed, args.validation, args.test, progress=say)
    for line in summary(document, args.output):
        say(line)
    return 0


__all__ = ["addParser", "run"]
