"""A cohort's cases: from a folder of study folders (series matched to the card's inputs), a CSV table or a
Decathlon ``dataset.json``; every case name checked to be one plain path component, every path to exist.

Tables are untrusted input, read as UTF-8 with or without a byte-order mark.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

from ..engine.errors import CohortError, MedSegUNetError, firstLine
from ..engine.volumes import DicomSeries

# A case name that is one plain path component (it becomes DIR/<case>).
MAX_CASE_ID = 128
SAFE_CASE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,%d}" % (MAX_CASE_ID - 1))


@dataclass
class CaseSpec:
    """One case of a cohort.

    Args:
        id: the case's name (sub-folder, CSV ``case`` column, or image file name).
        inputs: per card input, ``(path, channel)``; ``channel`` picks a volume of a 4D file.
        roi: extra series whose extents limit the ROI.
        series: role → the series chosen, for ``--dry-run``'s table.
        notes: ROI series that were not found (the case runs without them).
        error: why the case cannot run (no or ambiguous input series), or None.
        found: path → the DICOM series the matching scan found there, so that reading the case
            does not scan its folders again.
    """

    id: str
    inputs: list[tuple[str, int | None]] = field(default_factory=list)
    roi: list[str] = field(default_factory=list)
    series: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    found: dict[str, DicomSeries] = field(default_factory=dict)


def _caseFromFolder(folder: str, card: dict) -> CaseSpec:
    from .seriesmatch import findCaseSeries, matchSeries, rolesOfCard

    case = CaseSpec(id=os.path.basename(os.path.normpath(folder)))
    try:
        match = matchSeries(card, findCaseSeries(folder), case.id)
    except MedSegUNetError as error:
        case.error = firstLine(error)
        return case
    roles = rolesOfCard(card)
    case.inputs = [(candidate.path, None) for candidate in match.inputs]
    case.roi = [candidate.path for candidate in match.roi]
    for role, candidate in zip([r for r in roles if r.kind == "input"], match.inputs):
        case.series[role.name] = candidate.path
    for role, candidate in zip([r for r in roles if r.kind == "roi" and not any(r.name in note for note in match.notes)], match.roi):
        case.series[f"ROI {role.name}"] = candidate.path
    case.notes = match.notes
    case.found = {candidate.path: candidate.found for candidate in [*match.inputs, *match.roi] if candidate.found is not None}
    return case


def readTableText(path: str, what: str) -> str:
    """A table's text: UTF-8 with or without a byte-order mark (as Excel saves "CSV UTF-8").

    Raises:
        MedSegUNetError: another encoding, or a file that cannot be read (one line naming it).
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as error:
        from ..engine.errors import osErrorMessage

        raise CohortError(osErrorMessage(error, "read", path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CohortError(f"{what} '{path}' is not UTF-8 text (byte {error.start}): save it as UTF-8 (in Excel: CSV UTF-8).") from None


def _caseFromFile(path: str, card: dict) -> CaseSpec:
    """A volume file directly in a cohort folder: a case of its own (one-input models)."""
    from ..engine.paths import pathSuffix

    name = os.path.basename(path)
    case = CaseSpec(id=name[: -len(pathSuffix(name))])
    if len(card["inputs"]) != 1:
        case.error = (
            f"'{name}' is a single volume file, but the model takes {len(card['inputs'])} inputs: put each case's volumes in a "
            "folder of its own."
        )
        return case
    case.inputs = [(path, None)]
    case.series = {card["inputs"][0]["name"]: path}
    return case


def _casesFromCSV(table: str, card: dict) -> list[CaseSpec]:
    base = os.path.dirname(os.path.abspath(table))
    try:
        rows = list(csv.DictReader(io.StringIO(readTableText(table, "Case table"), newline="")))
    except csv.Error as error:
        raise CohortError(f"Case table '{table}' is not a CSV table ({firstLine(error)}).") from None
    if not rows:
        raise CohortError(f"Case table '{table}' has no rows.")
    columns = {c.strip().lower(): c for c in rows[0].keys() if c}
    inputNames = [spec["name"] for spec in card["inputs"]]
    missing = [name for name in ["case", *inputNames] if name.lower() not in columns]
    if missing:
        raise CohortError(
            f"Case table '{table}' lacks column(s) {', '.join(missing)}: it needs 'case' and one column per card input "
            f"({', '.join(inputNames)})."
        )
    roiColumns = [columns[c] for c in columns if c.startswith("roi")]
    from .seriesmatch import rolesOfCard

    roiRoles = [role.name for role in rolesOfCard(card) if role.kind == "roi"]

    def resolve(value: str) -> str:
        from ..engine.volumes import resolveTablePath

        return resolveTablePath(base, value)

    cases = []
    for index, row in enumerate(rows):
        case = CaseSpec(id=(row.get(columns["case"]) or "").strip() or f"case{index + 1:03d}")
        empty = [name for name in inputNames if not (row.get(columns[name.lower()]) or "").strip()]
        if empty:
            case.error = f"Case '{case.id}': no path for input(s) {', '.join(empty)} in '{table}'."
        else:
            case.inputs = [(resolve(row[columns[name.lower()]]), None) for name in inputNames]
            case.roi = [resolve(row[c]) for c in roiColumns if (row.get(c) or "").strip()]
            case.series = {name: path for name, (path, _) in zip(inputNames, case.inputs)}
            # The table's roi columns in order stand for the card's ROI series (then any extra ones).
            case.series.update(
                {f"ROI {roiRoles[index] if index < len(roiRoles) else index + 1}": path for index, path in enumerate(case.roi)}
            )
        cases.append(case)
    return cases


def _casesFromDecathlon(description: str, card: dict) -> list[CaseSpec]:
    folder = os.path.dirname(os.path.abspath(description))
    try:
        dataset = json.loads(readTableText(description, "Dataset description"))
    except json.JSONDecodeError as error:
        raise CohortError(f"'{description}' is not valid JSON ({error.msg}).") from None
    if not isinstance(dataset, dict):
        raise CohortError(
            f"'{description}' is not a Decathlon dataset.json: its top level is a {type(dataset).__name__}, not an object with 'test' or "
            "'training'."
        )
    modalities = dataset.get("modality") or {"0": card["inputs"][0]["name"]}
    if not isinstance(modalities, dict):
        raise CohortError(f"'{description}': 'modality' is not an object of index → name.")
    for key in ("test", "training"):
        entries = dataset.get(key) or []
        if not isinstance(entries, list) or not all(
            isinstance(entry, str) or (isinstance(entry, dict) and isinstance(entry.get("image"), str)) for entry in entries
        ):
            raise CohortError(f"'{description}': '{key}' is not a list of image paths or of {{\"image\": path}} entries.")
    count = len(card["inputs"])
    if len(modalities) != count:
        raise CohortError(
            f"'{description}' has {len(modalities)} modalities but the model takes {count} inputs: use a model for these images."
        )
    from ..engine.paths import pathSuffix

    images = [
        entry if isinstance(entry, str) else entry.get("image") for entry in (dataset.get("test") or []) + (dataset.get("training") or [])
    ]
    cases = []
    for image in images:
        if not image:
            continue
        path = os.path.normpath(os.path.join(folder, image))
        name = os.path.basename(path)
        suffix = pathSuffix(name)
        case = CaseSpec(id=name[: -len(suffix)] if suffix else name)
        case.inputs = [(path, index if count > 1 else None) for index in range(count)]
        case.series = {spec["name"]: f"{path}[{index}]" if count > 1 else path for index, spec in enumerate(card["inputs"])}
        cases.append(case)
    return cases


def casesFromSource(source: str, card: dict) -> list[CaseSpec]:
    """The cases of a cohort: a folder of case folders, a CSV, or a Decathlon ``dataset.json``.

    Raises:
        MedSegUNetError: a missing source, a CSV without the needed columns, duplicate case names,
            or no case at all. Cases whose series cannot be matched come back with ``error`` set.
    """
    from ..engine.paths import VOLUME_SUFFIXES, checkRegularFile, pathSuffix

    checkRegularFile(source, "Cases source")
    if os.path.isdir(source):
        description = os.path.join(source, "dataset.json")
        if os.path.isfile(description):
            cases = _casesFromDecathlon(description, card)
        else:
            entries = sorted((entry for entry in os.scandir(source) if not entry.name.startswith(".")), key=lambda entry: entry.name)
            cases = [
                _caseFromFolder(entry.path, card) if entry.is_dir() else _caseFromFile(entry.path, card)
                for entry in entries
                if entry.is_dir() or pathSuffix(entry.name) in VOLUME_SUFFIXES
            ]
    elif source.lower().endswith(".csv"):
        cases = _casesFromCSV(source, card)
    elif source.lower().endswith(".json"):
        cases = _casesFromDecathlon(source, card)
    else:
        raise CohortError(f"--cases '{source}' is neither a folder of case folders, a .csv table nor a Decathlon dataset.json.")
    if not cases:
        raise CohortError(f"No case found in '{source}': give a folder with one sub-folder per case, a CSV or a dataset.json.")
    for case in cases:
        why = checkCaseId(case.id)
        if why is not None:
            case.error = why[0].upper() + why[1:] + "."
        missing = [path for path in [*(p for p, _ in case.inputs), *case.roi] if not os.path.exists(path.partition("::")[0])]
        if missing and case.error is None:
            case.error = f"'{missing[0]}' does not exist: check the path (a table's relative paths start from the table's folder)."
    ids = [case.id for case in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise CohortError(f"Case names must be unique; repeated: {', '.join(duplicates)}.")
    return cases


def checkCaseId(caseId: str) -> str | None:
    """Why a case name cannot be a folder name under ``--output`` (None when it can).

    A case name becomes ``DIR/<case>``: only one plain path component is safe (no ``/``, ``..``,
    absolute path or hidden name, which could write or replace files outside ``DIR`` or collide
    with the run's staging folders).
    """
    if not SAFE_CASE_ID.fullmatch(caseId) or caseId in (".", ".."):
        shown = caseId if len(caseId) <= 60 else caseId[:57] + "..."
        return (
            f"the case name {shown!r} cannot be a folder name: use letters, digits, '-', '_' and '.' "
            f"(not first), at most {MAX_CASE_ID} characters; rename the case"
        )
    return None


def shownCaseId(caseId: str) -> str:
    """A case name for a one-line message: as it is when safe, else quoted with escapes (no newline)."""
    return caseId if SAFE_CASE_ID.fullmatch(caseId) else repr(caseId)


def dryRunTable(cases: Sequence[CaseSpec], card: dict) -> str:
    """The case × role → series table that ``--dry-run`` prints."""
    from .seriesmatch import rolesOfCard

    roles = [role.name if role.kind == "input" else f"ROI {role.name}" for role in rolesOfCard(card)]
    # A table's roi columns beyond the card's ROI series get columns of their own.
    roles += sorted({key for case in cases for key in case.series if key.startswith("ROI ") and key not in roles})
    lines = ["\t".join(["case", *roles, "status"])]
    for case in cases:
        cells = [case.series.get(role, "-") for role in roles]
        status = f"error: {case.error}" if case.error else ("; ".join(case.notes) or "ok")
        lines.append("\t".join([case.id, *cells, status]))
    return "\n".join(lines) + "\n"


__all__ = ["CaseSpec", "readTableText", "casesFromSource", "checkCaseId", "shownCaseId", "dryRunTable"]
