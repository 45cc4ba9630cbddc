"""A model card as a frozen, typed view of its JSON, as nnU-Net's ``PlansManager`` and
``ConfigurationManager`` wrap ``plans.json``.

:func:`modelcard.validateCard` returns a :class:`ModelCard`: the card's JSON with every optional
field present (so ``json.dumps(card)`` writes what the file holds, and ``card["labels"]`` still
reads), read-only at every depth, and typed views of its parts with every default here and nowhere
else (``card.roi.marginMM``, ``card.window.batchSize``, ``card.grid.spacing``). The JSON on disk
does not change. Edit a copy: ``card.toJSON()`` is a plain, deep copy.

Axis orders: ``patchSize``, ``grid.spacing`` and ``grid.shape`` are in the model grid's I, J, K
order (2D models: I, J); ``grid.orientation`` names the model grid's axes in the RAS frame (as
SimpleITK's ``DICOMOrient`` codes, e.g. ``"RAS"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

READ_ONLY = "a model card is read-only: edit card.toJSON(), a plain copy, and validate it again"


class FrozenDict(dict):
    """A ``dict`` that refuses every change (JSON, ``==`` and ``isinstance(x, dict)`` still work)."""

    def __init__(self, *args, **kwargs) -> None:
        dict.__init__(self, {key: freeze(value) for key, value in dict(*args, **kwargs).items()})

    def _refuse(self, *args, **kwargs):
        raise TypeError(READ_ONLY)

    __setitem__ = __delitem__ = update = setdefault = pop = popitem = clear = __ior__ = _refuse

    def __reduce__(self):
        return (type(self), (dict(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self  # nothing in it can change

    def toJSON(self) -> dict:
        """A plain, editable deep copy."""
        return thaw(self)


class FrozenList(list):
    """A ``list`` that refuses every change."""

    def __init__(self, items=()) -> None:
        list.__init__(self, [freeze(item) for item in items])

    def _refuse(self, *args, **kwargs):
        raise TypeError(READ_ONLY)

    __setitem__ = __delitem__ = __iadd__ = __imul__ = append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __reduce__(self):
        return (type(self), (list(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def freeze(value: Any) -> Any:
    """JSON values with every dict and list made read-only."""
    if isinstance(value, (FrozenDict, FrozenList)):
        return value
    if isinstance(value, dict):
        return FrozenDict(value)
    if isinstance(value, (list, tuple)):
        return FrozenList(value)
    return value


def thaw(value: Any) -> Any:
    """A plain, editable deep copy of JSON values (frozen or not)."""
    if isinstance(value, dict):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(item) for item in value]
    return value


@dataclass(frozen=True)
class InputSpec:
    """One input volume of the model, in card order.

    Args:
        name: what the input is (``T2``, ``FLAIR``); the statistics name their columns with it.
        description: free text shown to the user.
        match: case-insensitive words that pick a volume by its name (Slicer, a cohort's series).
    """

    name: str
    description: str = ""
    match: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSpec:
    """One label (segment) of the model, in card order.

    Args:
        value: the voxel value in label maps (1-255).
        name: the segment's name.
        color: RGB in [0, 1].
        terminology: DICOM code triplets (``category``, ``type``, ...), or None.
        qcVolumeML: the volume range outside which a result is flagged, or None.
    """

    value: int
    name: str
    color: tuple[float, float, float]
    terminology: Mapping | None = None
    qcVolumeML: tuple[float, float] | None = None


@dataclass(frozen=True)
class ROISettings:
    """How the region of interest is found by default (each one a request may override).

    Args:
        fromSeries: descriptions of other series whose extents limit the ROI.
        marginMM: the margin per side around the exact intersection, mm.
        contextMM: the network sees the ROI grown by this (clipped to the reference), mm.
        padding: inputs outside their own extent: ``zero`` (0 after normalisation) or ``edge``.
    """

    fromSeries: tuple[str, ...] = ()
    marginMM: float = 0.0
    contextMM: float = 0.0
    padding: str = "zero"


@dataclass(frozen=True)
class WindowSettings:
    """How the network is run over the model grid (MONAI's sliding window).

    Args:
        patchSize: the window (I, J[, K]); None runs the whole grid at once (padded to ``sizeDivisible``).
        batchSize: windows per forward pass (MONAI's ``sw_batch_size``).
        overlap: the windows' overlap, 0 to < 1.
        sizeDivisible: a whole-grid run pads each axis to a multiple of this.
        blend: overlapping windows are blended as ``probabilities`` or as ``logits``.
        tta: ``"flips"`` averages over every flip of the spatial axes; None: no test-time augmentation.
    """

    patchSize: tuple[int, ...] | None = None
    batchSize: int = 4
    overlap: float = 0.25
    sizeDivisible: int = 16
    blend: str = "probabilities"
    tta: str | None = None


@dataclass(frozen=True)
class GridSettings:
    """The model grid the inputs are resampled onto.

    Args:
        spacing: mm per axis (I, J, K; None on an axis keeps the reference's); None: the reference's.
        orientation: the grid's axes as RAS codes; None: the reference's.
        shape: a fixed grid shape (I, J, K), or None.
        interpolation: how the inputs are resampled (``linear``, ...).
    """

    spacing: tuple[float | None, ...] | None = None
    orientation: str | None = None
    shape: tuple[int, ...] | None = None
    interpolation: str = "linear"


# The JSON defaults validateCard fills in, from the typed views' own defaults.
DEFAULTS: dict[str, Any] = {
    "threshold": 0.5,
    "spacing": GridSettings.spacing,
    "orientation": GridSettings.orientation,
    "normalization": {"type": "zscore", "nonzero": True},
    "patch_size": WindowSettings.patchSize,
    "overlap": WindowSettings.overlap,
    "sw_batch_size": WindowSettings.batchSize,
}


# A localiser's defaults (the card's "localizer" object).
LOCALIZER_DEFAULTS: dict[str, Any] = {
    "orientation": None,
    "normalization": {"type": "none"},
    "output": "probabilities",
    "channels": 2,
    "channel": 1,
    "threshold": 0.5,
    "largest_component": True,
    "margin_fraction": 0.0,
}


class ModelCard(FrozenDict):
    """A validated model card: its JSON, read-only, with typed views of its parts.

    Made by :func:`modelcard.validateCard` (and :func:`modelcard.readCard`); never edited in place.
    """

    def replaced(self, **fields) -> ModelCard:
        """A new card with these top-level fields replaced (not validated again: for the fields a card
        only records, such as ``provenance``, ``training`` and ``validation``)."""
        return ModelCard({**self, **fields})

    @property
    def name(self) -> str:
        return self["name"]

    @property
    def version(self) -> str | None:
        return self.get("version")

    @property
    def spatialDims(self) -> int:
        return int(self["spatial_dims"])

    @property
    def output(self) -> str:
        """``softmax``, ``sigmoid`` or ``probabilities`` (already activated by the network)."""
        return self["output"]

    @property
    def exclusive(self) -> bool:
        """Whether the channels are a background and one exclusive class per label (softmax, or
        probabilities after a softmax) rather than one independent region per label (sigmoid)."""
        return self["output"] == "softmax" or (self["output"] == "probabilities" and self.get("activation", "softmax") == "softmax")

    @property
    def threshold(self) -> float:
        """Sigmoid regions: the probability at or above which a voxel is in the region."""
        return float(self.get("threshold", DEFAULTS["threshold"]))

    @property
    def inputs(self) -> tuple[InputSpec, ...]:
        return tuple(InputSpec(i["name"], i.get("description", ""), tuple(i.get("match") or ())) for i in self["inputs"])

    @property
    def inputNames(self) -> list[str]:
        return [spec["name"] for spec in self["inputs"]]

    @property
    def labels(self) -> tuple[LabelSpec, ...]:
        return tuple(
            LabelSpec(
                int(label["value"]),
                label["name"],
                tuple(float(c) for c in label["color"]),
                label.get("terminology"),
                tuple((label.get("qc") or {}).get("volume_ml")) if (label.get("qc") or {}).get("volume_ml") else None,
            )
            for label in self["labels"]
        )

    @property
    def roi(self) -> ROISettings:
        roi = self.get("roi") or {}
        return ROISettings(
            tuple(roi.get("from_series") or ()),
            float(roi.get("margin_mm", ROISettings.marginMM)),
            float(roi.get("context_mm", ROISettings.contextMM)),
            roi.get("padding", ROISettings.padding),
        )

    @property
    def window(self) -> WindowSettings:
        patch = self.get("patch_size")
        return WindowSettings(
            tuple(int(v) for v in patch) if patch else None,
            int(self.get("sw_batch_size", WindowSettings.batchSize)),
            float(self.get("overlap", WindowSettings.overlap)),
            int(self.get("size_divisible", WindowSettings.sizeDivisible)),
            self.get("blend") or WindowSettings.blend,
            self.get("tta"),
        )

    @property
    def grid(self) -> GridSettings:
        spec = self.get("grid") or {}
        spacing = self.get("spacing")
        return GridSettings(
            tuple(spacing) if spacing is not None else None,
            self.get("orientation"),
            tuple(int(v) for v in spec["shape"]) if spec.get("shape") is not None else None,
            spec.get("interpolation", GridSettings.interpolation),
        )

    @property
    def postprocessing(self) -> Mapping:
        return self.get("postprocessing") or FrozenDict()

    @property
    def localizer(self) -> Mapping | None:
        return self.get("localizer")

    @property
    def provenance(self) -> Mapping:
        return self.get("provenance") or FrozenDict()

    @property
    def nnunet(self):
        """Schema 4: the nnU-Net configuration as an :class:`nnunet.NNUNetPlan`, or None."""
        spec = self.get("nnunet")
        if spec is None:
            return None
        from .nnunet import NNUNetPlan

        return NNUNetPlan.fromJSON(spec)


def cardView(card: Mapping) -> ModelCard:
    """``card`` as a :class:`ModelCard`: itself when it is one, else a read-only copy (not validated:
    for the cards tests and importers build by hand)."""
    return card if isinstance(card, ModelCard) else ModelCard(card)


__all__ = [
    "DEFAULTS",
    "LOCALIZER_DEFAULTS",
    "FrozenDict",
    "FrozenList",
    "GridSettings",
    "InputSpec",
    "LabelSpec",
    "ModelCard",
    "ROISettings",
    "WindowSettings",
    "cardView",
    "freeze",
    "thaw",
]
