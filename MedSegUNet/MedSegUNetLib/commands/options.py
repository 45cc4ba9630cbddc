"""Argument parsing of the ``medsegunet`` command that cannot lose a value: one-line errors, options given once, finite numbers."""

from __future__ import annotations

import argparse
import math
from typing import Sequence

EXIT_USER_ERROR = 2


# The largest margin the ROI options take: far beyond any organ, small enough to catch a typo.
MAX_MARGIN_MM = 1000.0


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


__all__ = [
    "EXIT_USER_ERROR",
    "MAX_MARGIN_MM",
    "StoreOnce",
    "OneLineParser",
    "finiteNumber",
    "addCommonOptions",
    "addCommonOptionsEverywhere",
    "moveInputsAfterDoubleDash",
]
