"""MedSegUNet engine: multi-series ROI, TorchScript U-Net inference, segmentation files and statistics.

Importable without Qt or the Slicer application; torch and MONAI are imported lazily inside the
functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"
