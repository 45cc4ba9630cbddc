"""Deprecated: the MRML logic moved to ``MedSegUNetLib.slicer.logic`` (this alias goes in the next release)."""

from __future__ import annotations

import warnings

from .slicer.logic import *  # noqa: F401,F403
from .slicer.logic import __all__  # noqa: F401

warnings.warn(
    "MedSegUNetLib.SegmentationLogic moved to MedSegUNetLib.slicer.logic; import it from there.",
    DeprecationWarning,
    stacklevel=2,
)
