"""What the command line prints while it works: a tqdm bar on a terminal, plain lines in a log.

- Standard error carries errors and warnings, one line each, and, on a terminal, the ``tqdm``
  progress bar (drawn in place).
- Standard output carries the log: when stderr is not a terminal (a batch system's log, a pipe),
  one plain progress line per stage, with no carriage returns; then, always, a summary of what
  was written. ``roi`` prints its JSON there instead, and ``models pull`` the model's path (its
  plain progress lines go to stderr).
- ``-q/--quiet`` silences everything but errors, warnings and the commands' data.

So ``2>errors.txt`` collects exactly the error line of a failed run.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import TextIO


class BarDisplay:
    """What both progress displays share: a terminal bar (``_bar``, tqdm) or none, and warnings above it."""

    _bar = None

    def warn(self, text: str) -> None:
        """A warning: one line on stderr, kept even with ``--quiet``."""
        warnAbove(self._bar, text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ConsoleProgress(BarDisplay):
    """A ``(fraction, message)`` progress callback for the command line.

    Args:
        quiet: print nothing (errors are printed by the caller).
        stream: where log lines go (stdout by default).
        description: the bar's title on a terminal.
        barStream: where the bar is drawn, when it is a terminal (stderr by default).
    """

    def __init__(self, quiet: bool = False, stream: TextIO | None = None, description: str = "", barStream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.barStream = barStream or sys.stderr
        self.interactive = bool(getattr(self.barStream, "isatty", lambda: False)())
        self.description = description
        self._bar = None
        self._lastStage: str | None = None

    def __call__(self, fraction: float, message: str) -> None:
        if self.quiet:
            return
        if self.interactive:
            self._draw(fraction, message)
            return
        # Stage messages come once; per-batch ones ("Inference: batch 3 of 9") share a stem.
        stage = message.split(":")[0]
        if stage != self._lastStage:
            self._lastStage = stage
            self.line(f"[{fraction * 100:3.0f}%] {message}")

    def _draw(self, fraction: float, message: str) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=100,
                file=self.barStream,
                desc=self.description or None,
                bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
                leave=False,
            )
        self._bar.n = round(min(max(fraction, 0.0), 1.0) * 100, 1)
        self._bar.set_postfix_str(message[:60], refresh=False)
        self._bar.refresh()

    def line(self, text: str) -> None:
        """Print a line (progress or summary), above a terminal bar if one is drawn."""
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.clear()
        self.stream.write(text + "\n")
        self.stream.flush()
        if self._bar is not None:
            self._bar.refresh()


def caseOutcome(row: dict) -> str:
    """How a case ended, for its log line: ``ok, 3.1 s``; ``failed, 0.2 s (why)``; a case complete
    from an earlier run: ``skipped (done on 2026-12-05 18:02 UTC in 3.1 s)``, that run's time."""
    seconds = float(row.get("seconds") or 0.0)
    if row["status"] == "skipped":
        finished = str(row.get("finished") or "")
        when = f"on {finished[:10]} {finished[11:16]} UTC " if len(finished) >= 16 else ""
        return f"skipped (done {when}in {seconds:.1f} s)"
    message = f" ({row['message']})" if row.get("message") and row["status"] == "failed" else ""
    return f"{row['status']}, {seconds:.1f} s{message}"


class CaseProgress(BarDisplay):
    """A cohort's progress: a cases bar with ETA on a terminal, one plain line per case in a log."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total, self.quiet, self.done = total, quiet, 0
        self._bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, file=sys.stderr, unit="case", desc="cases")

    def update(self, row: dict) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.set_postfix_str(f"{row['case'][:24]}: {row['status']}", refresh=False)
            self._bar.update(1)
        elif not self.quiet:
            name = row["case"] if row["case"].isprintable() else repr(row["case"])  # a table's name cannot forge log lines
            sys.stdout.write(f"[{self.done}/{self.total}] {name}: {caseOutcome(row)}\n")
            sys.stdout.flush()

    def begun(self, caseId: str, workerNumber: int) -> None:
        """A log line when a worker (numbered 1…N) takes a case: which had which, if one dies."""
        if self._bar is None and not self.quiet:
            sys.stdout.write(f"case {caseId}: begun by worker {workerNumber}\n")
            sys.stdout.flush()


def warnAbove(bar, text: str) -> None:
    """``medsegunet: warning: TEXT`` on stderr, above a terminal bar if one is drawn (redrawn after)."""
    if bar is not None:
        bar.clear()
    sys.stderr.write(f"medsegunet: warning: {text}\n")
    sys.stderr.flush()
    if bar is not None:
        bar.refresh()


class LibraryLogHandler(logging.Handler):
    """The library's logged notes and warnings on the command line: a warning as the console's one
    warning line on stderr, a note as a log line (silenced by ``--quiet``)."""

    def __init__(self, console: ConsoleProgress) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.console.warn(text)
        else:
            self.console.line(text)


@contextlib.contextmanager
def libraryLogsOn(console: ConsoleProgress):
    """While a command runs, what ``MedSegUNetLib``'s loggers say goes to its console (and only there)."""
    logger = logging.getLogger("MedSegUNetLib")
    handler, level, propagate = LibraryLogHandler(console), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


__all__ = ["BarDisplay", "ConsoleProgress", "caseOutcome", "CaseProgress", "warnAbove", "LibraryLogHandler", "libraryLogsOn"]
