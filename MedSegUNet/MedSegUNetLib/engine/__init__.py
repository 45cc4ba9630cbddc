"""The engine: volumes in, labels and statistics out. Imports nothing outside ``engine``.

- ``volumes``: reading (files, DICOM series) with every check; ``staging`` of outputs.
- ``geometry``: the exact multi-series ROI (IJK ↔ LPS/RAS, half-spaces).
- ``preprocessing``, ``inference``, ``pipeline``: the model grid, the network, back onto the reference.
- ``statistics``, ``outputs``, ``dicomseg``: tables, segmentation files, DICOM SEG.
- ``modelcard``: the card (schema, validation), loading TorchScript models, devices.
- ``writer``: the one output step; ``preview``: the overview picture; ``settings``: environment, devices, resources.
- ``errors``: typed one-line errors.

Modules are imported by name (``from MedSegUNetLib.engine import geometry``); nothing is imported
here, so that importing the package costs nothing (Slicer's process loads only what it uses).
"""

__all__ = ["dicomseg", "errors", "geometry", "inference", "modelcard", "outputs", "pipeline", "preprocessing", "preview", "settings", "statistics", "volumes", "writer"]
