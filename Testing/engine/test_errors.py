"""Typed one-line errors: the class says what is wrong, the remedy is worded by the surface."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

from MedSegUNetLib.engine import errors
from MedSegUNetLib.engine.errors import CardError, DeviceError, MedSegUNetError, OutOfMemoryError, Remedy, outOfMemory, unavailableDevice

LIB = Path(__file__).resolve().parents[2] / "MedSegUNet" / "MedSegUNetLib"
# Where a bare MedSegUNetError stays: the worker protocol's own faults (no user input is wrong), and
# a job used without its worker (a programming error a script can meet).
BARE_ALLOWED = {"slicer/worker.py", "slicer/job.py"}


def test_every_raise_names_what_kind_of_thing_is_wrong():
    bare = []
    for path in LIB.rglob("*.py"):
        relative = path.relative_to(LIB).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Raise)
                and isinstance(node.exc, ast.Call)
                and ast.unparse(node.exc.func) == "MedSegUNetError"
                and relative not in BARE_ALLOWED
            ):
                bare.append(f"{relative}:{node.lineno}")
    assert bare == []
    kinds = [
        cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, MedSegUNetError) and cls is not MedSegUNetError
    ]
    assert len(kinds) >= 15 and all(cls.__doc__ for cls in kinds)


def test_the_engine_never_names_a_command_line_flag_in_its_messages():
    # A remedy that names a control is a Remedy, worded by each surface; engine text stays surface-free.
    for path in (LIB / "engine").rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert "--device" not in node.value and "--workers" not in node.value, f"{path.name}: {node.value[:80]}"


@pytest.mark.parametrize("surface, words", [("cli", "--device cpu"), ("slicer", "the cpu device"), ("batch", "fewer --workers")])
def test_the_remedy_is_worded_by_the_surface(surface, words):
    error = outOfMemory("on cuda while running the network")
    assert isinstance(error, OutOfMemoryError) and isinstance(error, MedSegUNetError)
    text = error.forSurface(surface)
    assert (
        text.startswith("Out of memory on cuda while running the network: ") and words in text and text.endswith(".") and "\n" not in text
    )
    assert str(error) == error.forSurface("cli")


def test_device_errors_speak_of_the_panel_in_slicer():
    error = unavailableDevice("MPS was asked for but is not available")
    assert isinstance(error, DeviceError)
    assert str(error) == "MPS was asked for but is not available: use --device cpu or auto."
    assert error.forSurface("slicer") == "MPS was asked for but is not available: choose the cpu or auto device."
    assert error.forSurface("batch") == str(error)


@pytest.mark.parametrize(
    "error",
    [
        outOfMemory("in the worker"),
        CardError("Invalid card: field 'labels' is empty."),
        MedSegUNetError("plain"),
        errors.ProcessingCancelled(),
    ],
)
def test_errors_cross_processes_whole(error):
    # Batch workers and Ray actors send errors back pickled: class, text and remedy survive.
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)
    assert copy.forSurface("slicer") == error.forSurface("slicer")
    assert isinstance(pickle.loads(pickle.dumps(Remedy("a", "b"))), Remedy)
