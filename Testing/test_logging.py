"""The library logs its notes and warnings; the command line prints them, in its own form."""

from __future__ import annotations

import io
import logging

from MedSegUNetLib.commands.console import ConsoleProgress, libraryLogsOn
from MedSegUNetLib.models import trainreports


def test_the_command_line_prints_what_the_library_logs(capsys):
    console = ConsoleProgress(stream=io.StringIO())
    with libraryLogsOn(console):
        logging.getLogger("MedSegUNetLib.models.training").info("epoch 1/2: loss 0.5")
        logging.getLogger("MedSegUNetLib.engine.compiled").warning("running it uncompiled")
        logging.getLogger("other.package").warning("not ours")
    assert console.stream.getvalue() == "epoch 1/2: loss 0.5\n"
    assert capsys.readouterr().err.strip().splitlines() == ["medsegunet: warning: running it uncompiled"]
    # Outside a command, the library's logger is as the application left it.
    assert logging.getLogger("MedSegUNetLib").handlers == [] and logging.getLogger("MedSegUNetLib").propagate


def test_quiet_silences_notes_not_warnings(capsys):
    console = ConsoleProgress(quiet=True, stream=io.StringIO())
    with libraryLogsOn(console):
        logging.getLogger("MedSegUNetLib.models.training").info("a note")
        logging.getLogger("MedSegUNetLib.models.training").warning("a warning")
    assert console.stream.getvalue() == "" and "medsegunet: warning: a warning" in capsys.readouterr().err


def test_library_defaults_log_instead_of_printing(caplog, capsys):
    caplog.set_level(logging.INFO, logger="MedSegUNetLib")
    bar = trainreports.ProgressBar(3, "epoch 1/1")
    bar.log("validation Dice 0.9")
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("MedSegUNetLib.models.trainreports", "validation Dice 0.9")]
    assert capsys.readouterr().out == ""
