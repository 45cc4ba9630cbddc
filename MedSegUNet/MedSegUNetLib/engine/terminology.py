"""A card label's ``terminology`` (DICOM codes: ``scheme, value, meaning``) in the forms others write:
slicerio's segment fields (``.seg.nrrd``) and Slicer's ``TerminologyEntry`` segment tag, and back.

Pure Python: Slicer's process uses it before slicerio is installed.
"""

from __future__ import annotations

# The context names Slicer's terminology files use for these codes.
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_TERMINOLOGY_KEYS = (
    ("category", "category"),
    ("type", "type"),
    ("type_modifier", "typeModifier"),
    ("anatomic_region", "anatomicRegion"),
    ("anatomic_region_modifier", "anatomicRegionModifier"),
)


def slicerioTerminology(label: dict) -> dict | None:
    """A card label's ``terminology`` in slicerio's segment form (``category``, ``type``, ... lists)."""
    terminology = label.get("terminology")
    if not terminology:
        return None
    entry = {"contextName": TERMINOLOGY_CONTEXT, "anatomicContextName": ANATOMIC_CONTEXT}
    for cardKey, slicerioKey in _TERMINOLOGY_KEYS:
        if terminology.get(cardKey):
            entry[slicerioKey] = [str(v) for v in terminology[cardKey]]
    return entry


def terminologyEntry(label: dict) -> str | None:
    """Slicer's ``TerminologyEntry`` segment tag for a card label, or None without terminology.

    ``context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier``,
    each code ``scheme^value^meaning`` (empty ``^^`` when absent), as slicerio writes it into
    ``.seg.nrrd`` files; built here too because Slicer's process may not have slicerio yet.
    """
    entry = slicerioTerminology(label)
    if entry is None:
        return None
    codes = ["^".join(entry.get(key, ["", "", ""])) for key in ("category", "type", "typeModifier")]
    region = ["^".join(entry.get(key, ["", "", ""])) for key in ("anatomicRegion", "anatomicRegionModifier")]
    return "~".join([entry["contextName"], *codes, entry["anatomicContextName"], *region])


def terminologyFromEntry(entry: str | None) -> dict | None:
    """A card label's ``terminology`` from Slicer's ``TerminologyEntry`` segment tag (see
    :func:`terminologyEntry`), or None when the tag has no category and type codes."""
    fields = (entry or "").split("~")
    if len(fields) < 3:
        return None
    # The tag's order: context, three type codes, anatomic context, two region codes.
    cardKeys = [cardKey for cardKey, _ in _TERMINOLOGY_KEYS]
    terminology = {}
    for key, field in zip([*cardKeys[:3], None, *cardKeys[3:]], fields[1:]):
        code = field.split("^")
        if key is not None and len(code) == 3 and code[0] and code[1]:
            terminology[key] = code
    return terminology if "category" in terminology and "type" in terminology else None


__all__ = ["ANATOMIC_CONTEXT", "TERMINOLOGY_CONTEXT", "slicerioTerminology", "terminologyEntry", "terminologyFromEntry"]
