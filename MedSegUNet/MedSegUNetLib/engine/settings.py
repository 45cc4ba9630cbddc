"""What the environment and the installation decide, in one place: environment variables (their
defaults and meaning), device names, where the package's resources are, and the sample data.

Nothing else in the library reads ``os.environ`` for a setting of its own or walks up from
``__file__`` to find a resource. Standard library only: Slicer's process imports this at start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Variable:
    """An environment variable MedSegUNet reads.

    Args:
        name: the variable.
        default: its value when unset or empty, as text ("" for none).
        meaning: one line for the documentation.
    """

    name: str
    default: str
    meaning: str

    def text(self) -> str:
        """The variable's value (whitespace stripped), or its default when unset or empty."""
        return os.environ.get(self.name, "").strip() or self.default


CACHE = Variable(
    "MEDSEGUNET_CACHE",
    "",
    "the cache folder of catalog models (default: medsegunet in $XDG_CACHE_HOME, else in ~/.cache; the Slicer module: in its cache folder)",
)
CATALOG = Variable(
    "MEDSEGUNET_CATALOG",
    "",
    "a model catalog (path or URL, schema medsegunet.catalog/1) replacing the shipped one: an institution's mirror",
)
DOWNLOAD_TIMEOUT = Variable("MEDSEGUNET_DOWNLOAD_TIMEOUT", "3600", "the most seconds one download may take")
DOWNLOAD_MIN_RATE = Variable(
    "MEDSEGUNET_DOWNLOAD_MIN_RATE",
    "1024/60",
    "BYTES or BYTES/SECONDS: a download slower than this over the window is a stall; 0 turns it off",
)
DOWNLOAD_MAX_BYTES = Variable(
    "MEDSEGUNET_DOWNLOAD_MAX_BYTES", str(4 * 2**30), "the most a download may bring when its catalog entry gives no size"
)
TEST_NETWORK_BEGUN = Variable(
    "MEDSEGUNET_TEST_NETWORK_BEGUN_DIR",
    "",
    "tests only: a folder where a network call about to begin leaves a file PID-network (a batch case: PID-CASE)",
)
VARIABLES = (CACHE, CATALOG, DOWNLOAD_TIMEOUT, DOWNLOAD_MIN_RATE, DOWNLOAD_MAX_BYTES, TEST_NETWORK_BEGUN)

# Where the network runs, in the order the Slicer panel lists them (auto: CUDA, else MPS, else the CPU).
DEVICES = ("auto", "cuda", "mps", "cpu")

# MedSegUNetLib, and the module folder around it: ``MedSegUNet/`` of a checkout, ``qt-scripted-modules``
# of an installed Slicer extension (the module's resources are in its ``Resources``).
PACKAGE_FOLDER = Path(__file__).resolve().parents[1]
MODULE_FOLDER = PACKAGE_FOLDER.parent
ZOO_FOLDER = MODULE_FOLDER / "Resources" / "Models"
CATALOG_PATH = PACKAGE_FOLDER / "models" / "catalog.json"

# ProstateX-0000's three T2 series as SlicerMONAIAuto3DSeg publishes them (its "TestingData" release):
# the demo's download and the Slicer module's Sample Data entry. Series → (file, SHA256).
SAMPLE_DATA_URL = "https://github.com/lassoan/SlicerMONAIAuto3DSeg/releases/download/TestingData/"
SAMPLE_DATA_FILES = {
    "axial": ("ProstateX-0000-t2-tse-tra.nrrd", "3940564b147b7bcda52b6b305be3d39f7c9fb901b81caa9863c72ef6ff113dfb"),
    "sagittal": ("ProstateX-0000-t2-tse-sag.nrrd", "774a3891a506f534b5d60ab9831587803e18da0f2daa343997d09221942bf329"),
    "coronal": ("ProstateX-0000-t2-tse-cor.nrrd", "628b928f818350acdb95952daa107d089a6c9101cf74d51fb129ab9b5d490e59"),
}


def userCacheFolder() -> Path:
    """The user's cache folder for MedSegUNet: ``$XDG_CACHE_HOME`` or ``~/.cache``, then ``medsegunet``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "medsegunet"


__all__ = [
    "Variable",
    "CACHE",
    "CATALOG",
    "DOWNLOAD_TIMEOUT",
    "DOWNLOAD_MIN_RATE",
    "DOWNLOAD_MAX_BYTES",
    "TEST_NETWORK_BEGUN",
    "VARIABLES",
    "DEVICES",
    "MODULE_FOLDER",
    "ZOO_FOLDER",
    "CATALOG_PATH",
    "SAMPLE_DATA_URL",
    "SAMPLE_DATA_FILES",
    "userCacheFolder",
]
