"""One segmentation request, whichever surface makes it: a model, its inputs, the series and box that
limit the ROI, and how to run it.

The command line, a cohort's cases (``BatchOptions.request``), the Slicer logic and the worker's
protocol all carry a :class:`SegmentationRequest`; its defaults (the card's margin and context) are
resolved here and nowhere else, and :meth:`SegmentationRequest.fromDict` checks a request that
arrives as JSON, naming the first field that is wrong.

Frames: ``roiBox`` is RAS (mm), as a Slicer Markups ROI gives it: its centre, its unit axes as the
columns of a 3×3 matrix, its radius along each axis.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Sequence

from .cardview import cardView
from .errors import UsageError
from .settings import DEVICES

ProgressCallback = Callable[[float, str], None]
"""How every run reports progress: ``(fraction, message)``, the fraction done in [0, 1] and what it
is doing; it is called from the thread that runs the work."""


@dataclass(frozen=True)
class SegmentationRequest:
    """Segment ``inputs`` with ``modelPath``, and how.

    Args:
        modelPath: the model file (a catalog name is resolved before a request is made).
        inputs: the model's input volumes in card order (paths: files or DICOM folders); empty where
            the volumes travel as images (the Slicer logic).
        roiSeries: other series whose extents limit the ROI (paths, likewise).
        device: ``auto``, ``cuda``, ``mps`` or ``cpu``.
        useROI: False segments the whole reference volume (a box, when given, still limits it).
        marginMM: the ROI's margin per side; None takes the card's ``roi.margin_mm`` (else 0).
        contextMM: the network sees the ROI grown by this; None takes the card's ``roi.context_mm``.
        roiBox: a Markups ROI box limiting the ROI: ``(centre[3], axes[3][3], radius[3])``, RAS mm.
        keepProbabilities: keep the per-class probabilities (``--probabilities``).
        compile: run a ``.pt2`` model as its AOTInductor package when that is faster.
        resampleIrregular: resample DICOM series with irregular slices instead of refusing them.
    """

    modelPath: str = ""
    inputs: tuple = ()
    roiSeries: tuple = ()
    device: str = "auto"
    useROI: bool = True
    marginMM: float | None = None
    contextMM: float | None = None
    roiBox: tuple | None = None
    keepProbabilities: bool = False
    compile: bool = False
    resampleIrregular: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "roiSeries", tuple(self.roiSeries))
        if self.roiBox is not None:  # plain floats: a request is a value, hashable and JSON-safe
            centre, axes, radius = self.roiBox
            object.__setattr__(
                self,
                "roiBox",
                (tuple(float(v) for v in centre), tuple(tuple(float(v) for v in row) for row in axes), tuple(float(v) for v in radius)),
            )
        if self.device not in DEVICES:
            raise UsageError(f"Unknown device '{self.device}': use {', '.join(DEVICES)}.")
        for name in ("marginMM", "contextMM"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UsageError(f"The {name[:-2]} must be a finite number of mm, zero or more (got {value}).")

    def margin(self, card: dict) -> float:
        """The ROI margin in mm: the request's, else the card's ``roi.margin_mm``, else 0."""
        return float(self.marginMM if self.marginMM is not None else cardView(card).roi.marginMM)

    def context(self, card: dict) -> float:
        """The context in mm: the request's, else the card's ``roi.context_mm``, else 0."""
        return float(self.contextMM if self.contextMM is not None else cardView(card).roi.contextMM)

    def pipelineOptions(self, card: dict) -> dict:
        """The keyword arguments of :func:`pipeline.segmentImages` this request gives."""
        return {
            "useROI": self.useROI,
            "marginMM": self.margin(card),
            "contextMM": self.context(card),
            "keepProbabilities": self.keepProbabilities,
        }

    def toDict(self) -> dict:
        """The request as JSON-safe values (the worker's protocol)."""
        data = asdict(self)
        data["inputs"], data["roiSeries"] = list(self.inputs), list(self.roiSeries)
        if self.roiBox is not None:
            centre, axes, radius = self.roiBox
            data["roiBox"] = [list(centre), [list(row) for row in axes], list(radius)]
        return data

    @classmethod
    def fromDict(cls, data: object) -> "SegmentationRequest":
        """A request from :meth:`toDict`'s form, every field checked.

        Raises:
            UsageError: a field of another type or shape, or an unknown field, named in one line.
        """
        if not isinstance(data, dict):
            raise UsageError("A segmentation request must be a JSON object.")
        known = {field.name: field for field in fields(cls)}
        for name, value in data.items():
            if name not in known:
                raise UsageError(f"A segmentation request has an unknown field '{name}'.")
            if not _fits(name, value):
                raise UsageError(f"A segmentation request has a '{name}' of the wrong type ({type(value).__name__}).")
        return cls(**data)


# The JSON type each field takes (None allowed where the field's default is None).
_TYPES = {
    "modelPath": str,
    "inputs": list,
    "roiSeries": list,
    "device": str,
    "useROI": bool,
    "marginMM": (int, float),
    "contextMM": (int, float),
    "roiBox": list,
    "keepProbabilities": bool,
    "compile": bool,
    "resampleIrregular": bool,
}


def _fits(name: str, value) -> bool:
    if value is None:
        return name in ("marginMM", "contextMM", "roiBox")
    kind = _TYPES[name]
    if isinstance(value, bool) and kind is not bool:
        return False
    if not isinstance(value, kind):
        return False
    if name in ("inputs", "roiSeries"):
        return all(isinstance(item, str) for item in value)
    if name == "roiBox":
        return _isBox(value)
    return True


def _isBox(value: Sequence) -> bool:
    def numbers(items, count):
        return (
            isinstance(items, list)
            and len(items) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in items)
        )

    return (
        len(value) == 3
        and numbers(value[0], 3)
        and isinstance(value[1], list)
        and len(value[1]) == 3
        and all(numbers(row, 3) for row in value[1])
        and numbers(value[2], 3)
    )


__all__ = ["ProgressCallback", "SegmentationRequest"]
