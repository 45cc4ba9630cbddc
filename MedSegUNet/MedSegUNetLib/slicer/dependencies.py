"""What a Slicer installation still needs, found without importing it, and how to install it safely.

The first Apply calls :func:`ensureInstalled` (in Slicer: it asks once, then installs PyTorch with
light-the-torch, as the PyTorch extension does, and the rest with ``slicer.packaging.pip_ensure`` or
``pip_install``). PyTorch is installed by a separate ``PythonSlicer`` process and never imported
here: ``PyTorchUtilsLogic.installTorch`` ends with ``import torch``, which would load torch into
Slicer's process, so the module runs the same light-the-torch command itself.

Slicer's process must stay light and must not be broken by a half-installed package, so nothing
here imports torch or MONAI: distributions are looked up in their metadata
(``importlib.metadata``), and whether PyTorch really works (``import torch``, ``torch.cuda``) is
asked of the worker process (:func:`torchDevices`). Installs never replace what Slicer and the
PyTorch extension provide: :func:`constraintsText` pins the torch, numpy, SimpleITK, VTK, pydicom
and Pillow versions already present, for ``pip -c`` (Slicer 5.6–5.10) or
``slicer.packaging.pip_ensure``'s ``constraints`` (later Slicer).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import itertools
import os
import tempfile

# Module → distribution, for what the first Apply installs besides PyTorch.
REQUIRED = {
    "monai": "monai",
    "scipy": "scipy",
    "slicerio": "slicerio",
    "tqdm": "tqdm",
    "skimage": "scikit-image",
    "packaging": "packaging",
    # The published ONNX catalog models (TAPS) are converted on pull, in the worker.
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
}
# Present in Slicer (or the PyTorch extension); pip must keep these exact versions. Slicer's DICOM
# module needs its own pydicom (2.4.4 in Slicer 5.10) and Pillow: a newer one breaks DICOM loading.
PINNED = ("torch", "numpy", "SimpleITK", "vtk", "pydicom", "Pillow")
# highdicom (DICOM SEG export) is installed on the first export only, in a release that works with
# the pydicom present: highdicom 0.23 and later need pydicom 3.
HIGHDICOM_FOR_PYDICOM2 = "highdicom>=0.22,<0.23"
HIGHDICOM_FOR_PYDICOM3 = "highdicom>=0.23"
# The oldest PyTorch the engine runs on (pyproject.toml says the same); an older one is upgraded.
TORCH_MINIMUM = "2.1"
# What light-the-torch installs when PyTorch is missing, broken or too old (it picks the build for the GPU's driver).
TORCH_REQUIREMENT = f"torch>={TORCH_MINIMUM}"
LIGHT_THE_TORCH = "light-the-torch>=0.5"


def versionTuple(version: str) -> tuple[int, ...]:
    """The leading release numbers of a version (``"2.13.0+cpu"`` → ``(2, 13, 0)``), for comparisons."""
    numbers = []
    for part in version.split("+")[0].split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def distributionVersion(name: str) -> str | None:
    """The installed version of a distribution, or None (read from metadata; nothing is imported)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def torchStatus() -> str:
    """``"missing"``, ``"ok"``, ``"broken"`` or ``"old"`` (below :data:`TORCH_MINIMUM`), from metadata
    and the package's files alone.

    ``find_spec("torch")`` also succeeds for an empty namespace folder left by a failed install, so
    the distribution's metadata and its ``__init__.py`` are both required.
    """
    version = distributionVersion("torch")
    spec = importlib.util.find_spec("torch")
    if version is None and spec is None:
        return "missing"
    if version is None or spec is None or spec.origin is None or not os.path.isfile(spec.origin):
        return "broken"
    if versionTuple(version) < versionTuple(TORCH_MINIMUM):
        return "old"
    return "ok"


def missingModules() -> list[str]:
    """The modules of :data:`REQUIRED` whose distribution or package is absent."""
    return [
        module
        for module, distribution in REQUIRED.items()
        if distributionVersion(distribution) is None or importlib.util.find_spec(module) is None
    ]


def constraintsText() -> str:
    """``name==version`` lines for the :data:`PINNED` distributions present, for ``pip -c``."""
    lines = []
    for name in PINNED:
        version = distributionVersion(name)
        if version is not None:
            lines.append(f"{name}=={version}")
    return "\n".join(lines) + ("\n" if lines else "")


def writeConstraints(folder: str | None = None) -> str:
    """A constraints file of :func:`constraintsText`; returns its path."""
    handle, path = tempfile.mkstemp(prefix="medsegunet-constraints-", suffix=".txt", dir=folder)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(constraintsText())
    return path


def devicesFromAnswer(answer: dict) -> dict[str, bool]:
    """The worker's answer to ``{"command": "devices"}`` as ``{"auto", "cuda", "mps", "cpu"}`` → usable."""
    return {"auto": True, "cuda": bool(answer["cuda"]), "mps": bool(answer["mps"]), "cpu": True}


def torchDevices(worker) -> dict[str, bool]:
    """The devices PyTorch can use, asked of the worker process (which imports torch, not Slicer).

    Blocks until the worker answers (scripts); the module's widget asks without blocking
    (``worker.PendingRequest``).

    Returns:
        ``{"auto": True, "cpu": True, "cuda": ..., "mps": ...}``.

    Raises:
        MedSegUNetError: PyTorch does not import or lacks ``torch.cuda`` (a broken install).
    """
    return devicesFromAnswer(worker.request({"command": "devices"}))


def highdicomRequirement() -> str:
    """The highdicom requirement that works with the pydicom installed (Slicer's own)."""
    version = distributionVersion("pydicom")
    major = int(version.split(".")[0]) if version and version.split(".")[0].isdigit() else 3
    return HIGHDICOM_FOR_PYDICOM2 if major < 3 else HIGHDICOM_FOR_PYDICOM3


def missingForSlicer() -> list[str]:
    """What the first Apply must install: ``torch`` (missing or broken) and the other packages."""
    return (["torch"] if torchStatus() != "ok" else []) + missingModules()


def ensureInstalled(requirementsPath: str, askConfirmation: bool = True, onTorchInstalled=None) -> bool:
    """Install what is missing, after one confirmation: PyTorch via the PyTorch extension, the rest from requirements.

    The torch, numpy, SimpleITK and VTK already present are pinned (a constraints file), so pip
    never replaces Slicer's or the PyTorch extension's builds. Runs in Slicer only.

    Args:
        requirementsPath: the module's ``Resources/requirements.txt``.
        onTorchInstalled: called after PyTorch was (re)installed (the module restarts its worker).

    Returns:
        True when everything is installed; False when the user declined.

    Raises:
        MedSegUNetError: an installation failed (one line saying what to do).
    """

    import slicer
    from slicer.i18n import tr as _

    from ..engine.errors import DependencyError

    missing = missingForSlicer()
    if not missing:
        return True
    status = torchStatus()
    words = {
        "broken": "PyTorch (reinstall: the installed one is broken)",
        "old": f"PyTorch {TORCH_MINIMUM} or newer (the installed {distributionVersion('torch')} is too old)",
    }
    names = ", ".join(words.get(status, "PyTorch") if name == "torch" else name for name in missing)
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
        _(
            "MedSegUNet needs these Python packages: {names}. Install them now? "
            "PyTorch is installed with light-the-torch, built for this computer's GPU; it may download a few GB."
        ).format(names=names),
        windowTitle=_("Install Python packages"),
    ):
        return False
    if "torch" in missing:
        installPyTorch(status)
        if onTorchInstalled is not None:  # a worker may hold the old (broken) PyTorch
            onTorchInstalled()
    if missingModules():
        installRequirements(["-r", requirementsPath])
    still = missingForSlicer()
    if still:
        raise DependencyError(f"{', '.join(still)} still cannot be imported: restart Slicer and retry.")
    return True


def installPyTorch(status: str) -> None:
    """Install PyTorch as the PyTorch extension does (light-the-torch picks the build for this GPU's
    driver), in a ``PythonSlicer`` process: Slicer's process never imports torch.

    Raises:
        MedSegUNetError: the installation failed, or left no working PyTorch (metadata and files).
    """
    import logging

    import slicer

    from ..engine.errors import DependencyError, MedSegUNetError

    try:
        if status == "broken":  # pip keeps a "installed" distribution as it is: remove the broken one first
            slicer.util.pip_uninstall("torch")
        if distributionVersion("light-the-torch") is None:
            installRequirements([LIGHT_THE_TORCH])
        process = slicer.util.launchConsoleProcess([pythonSlicerExecutable(), "-m", "light_the_torch", "install", TORCH_REQUIREMENT])
        slicer.util.logProcessOutput(process)
    except MedSegUNetError:
        raise
    except Exception as error:  # pip, network and process errors come in many types
        logging.exception("PyTorch installation failed")
        raise DependencyError(f"PyTorch could not be installed ({error}): install it from the PyTorch Utils module, then retry.") from None
    importlib.invalidate_caches()
    if torchStatus() != "ok":
        raise DependencyError("PyTorch could not be installed: install it from the PyTorch Utils module, then retry.")


def pythonSlicerExecutable() -> str:
    """Slicer's ``PythonSlicer`` (a launcher that runs Slicer's Python with its environment), as the
    AI extensions use it for their workers and installs; outside Slicer, this Python."""
    import shutil
    import sys

    return shutil.which("PythonSlicer") or sys.executable


def packagingModule():
    """Slicer's package installer with ``pip_ensure``/``load_requirements``, or None (Slicer 5.6–5.10).

    ``slicer.packaging`` is a submodule: it must be imported, not looked up as an attribute.
    """
    import importlib

    try:
        module = importlib.import_module("slicer.packaging")
    except ImportError:
        return None
    return module if hasattr(module, "pip_ensure") and hasattr(module, "load_requirements") else None


def ensureHighdicom(askConfirmation: bool = True) -> bool:
    """Install highdicom for the DICOM SEG export, once, in a release that keeps Slicer's pydicom.

    Returns:
        True when highdicom is importable; False when the user declined.

    Raises:
        MedSegUNetError: the installation failed.
    """
    import slicer
    from slicer.i18n import tr as _

    if distributionVersion("highdicom") is not None and importlib.util.find_spec("highdicom") is not None:
        return True
    requirement = highdicomRequirement()
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
        _("DICOM SEG export needs the Python package {requirement}. Install it now?").format(requirement=requirement),
        windowTitle=_("Install Python packages"),
    ):
        return False
    installRequirements([requirement])
    return True


def installRequirements(requirements: list[str]) -> None:
    """pip-install ``requirements`` (pip arguments: ``["-r", FILE]`` or requirement strings) with
    :data:`PINNED` held at their present versions by a constraints file (removed afterwards).

    Raises:
        MedSegUNetError: pip failed (one line saying what to do).
    """
    constraints = writeConstraints()
    try:
        _pipInstall(requirements, constraints)
    finally:
        os.remove(constraints)
    importlib.invalidate_caches()


def _pipInstall(requirements: list[str], constraints: str) -> None:
    import logging

    import slicer

    from ..engine.errors import DependencyError

    try:
        packaging = packagingModule()
        if packaging is not None:
            # The constraints hold Slicer's packages: no skip_packages (Slicer's discouraged
            # workaround, which installs with --no-deps and edits metadata).
            loaded = packaging.load_requirements(requirements[1]) if requirements[0] == "-r" else list(requirements)
            packaging.pip_ensure(loaded, constraints=constraints, prompt_install=False, requester="MedSegUNet")
        else:  # Slicer 5.6–5.10: pip with the constraints file keeps Slicer's packages as they are
            slicer.util.pip_install([*requirements, "-c", constraints])
    except Exception as error:  # pip reports failures as CalledProcessError or RuntimeError
        logging.exception("Installing MedSegUNet requirements failed")
        raise DependencyError(
            f"Installing the Python packages failed ({error}): check the network connection, or run "
            f"slicer.util.pip_install({list(requirements)!r}) in the Python console, then retry."
        ) from None


__all__ = [
    "REQUIRED",
    "PINNED",
    "TORCH_MINIMUM",
    "TORCH_REQUIREMENT",
    "versionTuple",
    "distributionVersion",
    "torchStatus",
    "missingModules",
    "constraintsText",
    "writeConstraints",
    "devicesFromAnswer",
    "torchDevices",
    "highdicomRequirement",
    "missingForSlicer",
    "ensureInstalled",
    "installPyTorch",
    "pythonSlicerExecutable",
    "packagingModule",
    "ensureHighdicom",
    "installRequirements",
]
