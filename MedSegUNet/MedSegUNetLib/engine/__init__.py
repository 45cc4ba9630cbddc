"""The engine: volumes in, labels and statistics out. Imports nothing outside ``engine``.

- ``volumes``: reading (files, DICOM series) with every check; ``staging`` of outputs.
- ``geometry``: the exact multi-series ROI (IJK ↔ LPS/RAS, half-spaces).
- ``preprocessing``, ``inference``, ``pipeline``: the model grid, the network, back onto the reference.
- ``statistics``, ``outputs``, ``dicomseg``: tables, segmentation files, DICOM SEG.
- ``modelcard``: the card (schema, validation), loading TorchScript models, devices; ``cardview``: the
  card as a read-only, typed view with every default; ``terminology``:
  a label's DICOM codes in slicerio's and Slicer's forms.
- ``nnunet``: an nnU-Net v2 configuration's prediction, step for step as nnU-Net runs it.
- ``request``: one segmentation request; ``writer``: the one output step; ``preview``: the pictures;
  ``settings``: environment, devices, resources.
- ``errors``: typed one-line errors.

The package itself offers a small curated surface for scripts and Slicer's Python console, each name
imported from its module on first use (PEP 562), so that importing the package costs nothing and
Slicer's process loads only what it uses (``docs/api_example.py`` runs a case with it)::

    from MedSegUNetLib.engine import SegmentationRequest, loadModel, readVolume, segmentImages

    model = loadModel("prostate-zones.pt", device="cpu")
    images = [readVolume("t2-axial.nrrd")]
    result = segmentImages(images, model, **SegmentationRequest().pipelineOptions(model.card))

The library's own modules import every name from the module that defines it (its one address);
this surface only points there.
"""

from __future__ import annotations

import importlib

# The curated surface: name -> the engine module that defines it.
API = {
    "SegmentationRequest": "request",
    "ProgressCallback": "request",
    "readVolume": "volumes",
    "readCard": "modelcard",
    "ModelCard": "cardview",
    "loadModel": "modelcard",
    "LoadedModel": "modelcard",
    "segmentImages": "pipeline",
    "SegmentationResult": "pipeline",
    "ProgressReporter": "pipeline",
    "Stage": "pipeline",
    "computeROI": "geometry",
    "RegionOfInterest": "geometry",
    "VolumeGeometry": "geometry",
    "runReport": "writer",
    "statisticsDocument": "writer",
    "OutputPlan": "writer",
    "writeResults": "writer",
    "MedSegUNetError": "errors",
    "ProcessingCancelled": "errors",
}

MODULES = [
    "cardview",
    "dicomseg",
    "errors",
    "geometry",
    "inference",
    "modelcard",
    "nnunet",
    "outputs",
    "pipeline",
    "preprocessing",
    "preview",
    "request",
    "settings",
    "statistics",
    "terminology",
    "volumes",
    "writer",
]

__all__ = [*MODULES, *API]


def __getattr__(name: str):
    module = API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API))
