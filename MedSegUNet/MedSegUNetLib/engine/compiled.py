"""Optional AOTInductor compilation of a ``.pt2`` model for this machine (``segment --compile``).

An AOTInductor package is native code that torch's own compiler builds, here, from a model whose
archive passed the checks of :mod:`exportedmodel`. It is built once per model file, torch version,
device and machine, kept in a cache folder with its SHA256, and used only when

- it answers a random patch as the uncompiled program does (within 1e-4 of the output range), and
- it is faster than the uncompiled program on that patch (medians of interleaved calls).

A package whose bytes no longer match the record is built again. Where compilation is not possible
(a TorchScript model, no C++ compiler, an operator Inductor cannot lower) or does not pay, one
warning line says so and the uncompiled network runs: ``--compile`` never stops a segmentation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from .errors import MedSegUNetError, ModelFileError, firstLine
from .exportedmodel import isExportedArchive
from .modelcard import LoadedModel

# Notes and warnings, for whoever attaches a handler (the command line prints them; Slicer logs them).
logger = logging.getLogger(__name__)

# Part of every package's key: a change to how packages are built or checked builds them again.
COMPILED_REVISION = "1"
RELATIVE_TOLERANCE = 1e-4
TIMED_CALLS = 3


def packageKey(modelPath: str, device) -> str:
    """The cache folder name of a model's package: the model file's SHA256, torch's version, the
    device type and the machine (native code for one CPU architecture and one torch)."""
    import torch

    from .paths import sha256

    parts = [sha256(modelPath), torch.__version__, device.type, platform.machine(), COMPILED_REVISION]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:24]


def loadCompiledModel(
    path: str | os.PathLike,
    device: str,
    cache: str | os.PathLike,
    warn: Callable[[str], None] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> LoadedModel:
    """A model to run, as its AOTInductor package when that works and is faster, else as
    :func:`modelcard.loadModel` gives it.

    A package built before is loaded without deserialising the archive's program again (the package
    was built from those very bytes, which its key names): about 3 s, most of it importing torch's
    Inductor, where the archive takes 5–6 s; only the card is read.

    Args:
        path: the model file (a ``.pt2``; TorchScript runs uncompiled, said in one line).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        cache: the folder that keeps packages (``<MEDSEGUNET_CACHE>/compiled``).
        warn: told, in one line, why the uncompiled network runs (default: this module's logger).
        progress: ``(fraction, message)`` while a package is built (once per model, a minute or less).

    Returns:
        a :class:`LoadedModel` whose ``network`` is the package's runner and ``compiled`` its
        record, or the uncompiled model.
    """
    warn = warn or logger.warning
    from .modelcard import loadModel, readCard, resolveDevice

    path = os.path.abspath(os.fspath(path))
    if not isExportedArchive(path):
        loaded = loadModel(path, device)  # a file that is no model at all is an error, not a fallback
        warn(
            f"--compile needs a .pt2 model ('{os.path.basename(path)}' is TorchScript; 'medsegunet convert' makes one): running it "
            "uncompiled"
        )
        return loaded
    torchDevice = resolveDevice(device)
    folder = Path(cache) / packageKey(path, torchDevice)
    record = readRecord(folder)
    if record is not None and not _packageIntact(folder, record):
        record = None  # a package whose bytes changed is built again, never loaded
    if record is not None and record["faster"]:
        card = readCard(path)
        localizer = _localizer(path, card, torchDevice)
        try:
            return LoadedModel(
                path=path,
                card=card,
                network=loadPackage(folder / "model.pt2", torchDevice),
                device=torchDevice,
                localizer=localizer,
                compiled=record,
            )
        except MedSegUNetError as error:
            warn(f"{error} Running it uncompiled.")
            return loadModel(path, device)
    # The model's own checks stay errors: only what compiling adds falls back to the uncompiled model.
    loaded = loadModel(path, device)
    try:
        if record is None:
            record = buildPackage(loaded, folder, progress)
        if not record["faster"]:
            warn(
                f"AOTInductor's build of '{loaded.card.name}' is not faster on this machine ({record['speedup']:.2f}× the uncompiled "
                "speed): running it uncompiled"
            )
            return loaded
        return dataclasses.replace(loaded, network=loadPackage(folder / "model.pt2", torchDevice), compiled=record)
    except MedSegUNetError as error:
        warn(f"{error} Running it uncompiled.")
    except OSError as error:  # the cache folder cannot be written
        from .errors import osErrorMessage

        warn(f"{osErrorMessage(error, 'write', folder)} Running it uncompiled.")
    return loaded


def _localizer(path: str, card: dict, device):
    """The archive's localiser program (uncompiled), for a card that has one."""
    if not card.get("localizer"):
        return None
    from .exportedmodel import loadCheckedExported

    return loadCheckedExported(path, device, f"Model '{path}'", "localizer")


def readRecord(folder: Path) -> dict | None:
    """A package's record (its SHA256, whether it is faster, the check's difference), or None."""
    try:
        record = json.loads((folder / "record.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fields = {"sha256": str, "faster": bool, "speedup": (int, float), "max_abs_difference": (int, float)}
    if not isinstance(record, dict) or not all(isinstance(record.get(name), kind) for name, kind in fields.items()):
        return None
    return record


def _packageIntact(folder: Path, record: dict) -> bool:
    """Whether the package is the one its record describes (a slower build keeps no package)."""
    from .paths import sha256

    package = folder / "model.pt2"
    if not record["faster"]:
        return True
    return package.is_file() and not package.is_symlink() and sha256(package) == record["sha256"]


def buildPackage(loaded: LoadedModel, folder: Path, progress=None) -> dict:
    """Export, compile, check and time a package, then move it and its record into ``folder``.

    Raises:
        MedSegUNetError: Inductor cannot build it, or it answers otherwise than the program.
    """
    import torch

    from .exportedmodel import exampleInput, exportNetwork

    if progress is not None:
        progress(0.0, f"Compiling '{loaded.card.name}' with AOTInductor (once for this machine and torch)")
    sample = exampleInput(loaded.card).to(loaded.device)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        try:
            # The windows of a patch or grid card all have its size (MONAI pads smaller volumes up):
            # compiled for that size, Inductor lowers what symbolic sizes can make it refuse.
            fixed = bool(loaded.card.window.patchSize or loaded.card.grid.shape)
            program = exportNetwork(loaded.network, sample, dynamicSpatial=not fixed)
            package = torch._inductor.aoti_compile_and_package(program, package_path=str(staging / "model.pt2"))
            runner = loadPackage(Path(package), loaded.device)
        except MedSegUNetError:
            raise
        except Exception as error:  # compilers, lowering and loading fail in many ways
            raise ModelFileError(f"AOTInductor could not compile '{loaded.card.name}' ({firstLine(str(error))[:140]}).") from None
        record = checkAndTime(loaded, runner, sample)
        from .paths import sha256

        record["sha256"] = sha256(package)
        if not record["faster"]:
            os.remove(package)  # kept: the record, so that it is not built again
        (staging / "record.json").write_text(json.dumps(record), encoding="utf-8")
        existing = readRecord(folder)
        if existing is not None and _packageIntact(folder, existing):
            return existing  # another process (a second segment, a batch) built it meanwhile
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if progress is not None:
        progress(1.0, f"Compiled '{loaded.card.name}' ({record['speedup']:.2f}× the uncompiled speed)")
    return record


def checkAndTime(loaded: LoadedModel, runner, sample) -> dict:
    """The package against the uncompiled program on ``sample``: the largest difference (refused
    beyond :data:`RELATIVE_TOLERANCE` of the output range), and the speed ratio of interleaved calls."""
    import torch

    with torch.inference_mode():
        expected, got = _first(loaded.network(sample)), _first(runner(sample))
        if tuple(got.shape) != tuple(expected.shape):
            raise ModelFileError(
                f"AOTInductor's build of '{loaded.card.name}' gives shape {tuple(got.shape)} instead of {tuple(expected.shape)}."
            )
        difference = float((got.float() - expected.float()).abs().max())
        scale = float(expected.max() - expected.min()) or 1.0
        if not difference <= RELATIVE_TOLERANCE * scale:
            raise ModelFileError(
                f"AOTInductor's build of '{loaded.card.name}' differs from the model by {difference:.3g} (output range {scale:.3g})."
            )
        times: dict[str, list[float]] = {"program": [], "package": []}
        for _ in range(TIMED_CALLS):
            for name, network in (("program", loaded.network), ("package", runner)):
                started = time.perf_counter()
                network(sample)
                times[name].append(time.perf_counter() - started)
    program, package = (sorted(values)[len(values) // 2] for values in (times["program"], times["package"]))
    return {
        "faster": package < program,
        "speedup": program / package if package > 0 else 0.0,
        "max_abs_difference": difference,
        "patch": [int(value) for value in sample.shape],
        "torch": torch.__version__,
    }


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def loadPackage(path: Path, device):
    """A package's runner (callable like the network) on ``device``."""
    import torch

    try:
        return torch._inductor.aoti_load_package(str(path), device_index=device.index if device.index is not None else -1)
    except Exception as error:  # a package built by another torch, or damaged
        raise ModelFileError(f"Cannot load the AOTInductor package '{path}' ({firstLine(str(error))[:140]}).") from None


__all__ = ["RELATIVE_TOLERANCE", "packageKey", "loadCompiledModel", "readRecord", "buildPackage", "checkAndTime", "loadPackage"]
