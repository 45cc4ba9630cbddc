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
import os
import signal
import sys
from typing import Sequence

from .commands.options import EXIT_USER_ERROR, OneLineParser, addCommonOptionsEverywhere, moveInputsAfterDoubleDash
from .engine.errors import Interrupted, MedSegUNetError, ProcessingCancelled, firstLine, outOfMemory

EXIT_CANCELLED = 130
EXIT_TERMINATED = 143
# 128 + SIGPIPE, as a shell reports a command whose reader went away.
EXIT_BROKEN_PIPE = 141


# ---------------------------------------------------------------------------------------------
# Argument parsing that cannot lose a value
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# roi
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# segment
# ---------------------------------------------------------------------------------------------


def buildParser() -> argparse.ArgumentParser:
    from . import __version__
    from .commands import batch, data, demo, export, importing, models, train
    from .commands.segment import addRoiParser, addSegmentParser

    parser = OneLineParser(
        prog="medsegunet",
        description="MedSegUNet: U-Net segmentation of MRI with a multi-series region of interest (the engine of the 3D Slicer extension).",
    )
    parser.add_argument("--version", action="version", version=f"medsegunet {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (and the commands' data on stdout)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    subparsers.required = True
    addRoiParser(subparsers)
    addSegmentParser(subparsers)
    for command in (batch, models, importing, export, train, data, demo):
        command.addParser(subparsers)
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
            from .cohorts.pool import spareTheExitCollection

            spareTheExitCollection()
        else:
            _setSignalHandlers(previous)


def _main(argv: Sequence[str]) -> int:
    from .commands.console import ConsoleProgress, libraryLogsOn

    try:
        args = parseArguments(argv)
    except SystemExit as done:  # --help, --version, or a usage error already printed in one line
        return done.code if isinstance(done.code, int) else EXIT_USER_ERROR
    console = ConsoleProgress(quiet=args.quiet)
    with libraryLogsOn(console):
        return _run(args, console)


def _run(args, console) -> int:
    """The command, its failures each turned into one line on stderr and an exit status."""
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


__all__ = ["buildParser", "parseArguments", "main"]
