"""What a Slicer installation still needs, found without importing it, and how to install it safely.

Slicer's process must stay light and must not be broken by a half-installed package, so nothing
here imports torch or MONAI: distributions are looked up in their metadata
(``importlib.metadata``), and whether PyTorch really works (``import torch``, ``torch.cuda``) is
asked of the worker process (:func:`torchDevices`). Installs never replace what Slicer and the
PyTorch extension provide: :func:`constraintsText` pins the torch, numpy, SimpleITK and VTK
versions already present, for ``pip -c`` (Slicer 5.6–5.10) or ``slicer.packaging.pip_ensure``'s
``constraints`` (later Slicer).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import tempfile

# Module → distribution, for what the first Apply installs besides PyTorch.
REQUIRED = {"monai": "monai", "scipy": "scipy", "slicerio": "slicerio", "tqdm": "tqdm"}
# Present in Slicer (or the PyTorch extension); pip must keep these exact versions.
PINNED = ("torch", "numpy", "SimpleITK", "vtk")


def distributionVersion(name: str) -> str | None:
    """The installed version of a distribution, or None (read from metadata; nothing is imported)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def torchStatus() -> str:
    """``"missing"``, ``"ok"`` or ``"broken"``, from metadata and the package's files alone.

    ``find_spec("torch")`` also succeeds for an empty namespace folder left by a failed install, so
    the distribution's metadata and its ``__init__.py`` are both required.
    """
    version = distributionVersion("torch")
    spec = importlib.util.find_spec("torch")
    if version is None and spec is None:
        return "missing"
    if version is None or spec is None or spec.origin is None or not os.path.isfile(spec.origin):
        return "broken"
    return "ok"


def missingModules() -> list[str]:
    """The modules of :data:`REQUIRED` whose distribution or package is absent."""
    return [module for module, distribution in REQUIRED.items() if distributionVersion(distribution) is None or importlib.util.find_spec(module) is None]


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


def torchDevices(worker) -> dict[str, bool]:
    """The devices PyTorch can use, asked of the worker process (which imports torch, not Slicer).

    Returns:
        ``{"auto": True, "cpu": True, "cuda": ..., "mps": ...}``.

    Raises:
        MedSegUNetError: PyTorch does not import or lacks ``torch.cuda`` (a broken install).
    """
    answer = worker.request({"command": "devices"})
    return {"auto": True, "cuda": bool(answer["cuda"]), "mps": bool(answer["mps"]), "cpu": True}
