"""Which series of a study is which input: matching a case folder's series to a model card.

A cohort comes as study folders holding DICOM series (at any depth) or volume files. Each
series is a :class:`SeriesCandidate`: a readable path, the words of its DICOM SeriesDescription,
folder and file names, and its acquisition plane measured from the direction cosines (the slice
normal in LPS: along L → sagittal, P → coronal, S → axial). A card's *roles* are its inputs
(``inputs[].match`` words, else the input's name) and its ROI series (``roi.from_series``, one
role per entry).

Matching scores each role against each candidate: 2 per role word found as a whole word of the
candidate, 1 per word found inside a longer word (``t2`` in ``t2tsetra``). A role that names a
plane (``tra``, ``sag``, ``cor``, ...) only matches series acquired in that plane, whatever their
names say. Roles are assigned greedily, the best-scoring role first, each series used once, so
``t1`` goes to ``t1n`` once ``t1c`` has been taken by the T1c input. A tie for a role's best
series is ambiguous: an input then fails the case with one line naming the candidates; a missing
or ambiguous ROI series is reported and the case runs with the series it has.

The command line's ``batch``, the Ray engine and Slicer's console batch (``docs/batch_example.py``)
use this one matcher, so they pick the same series.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..engine.cardview import cardView
from ..engine.errors import CohortError
from ..engine.volumes import DicomSeries, readHeader

PLANE_WORDS = {"tra": ("tra", "ax", "axi", "axial", "transverse", "transversal"), "sag": ("sag", "sagittal"), "cor": ("cor", "coronal")}


def words(text: str) -> tuple[str, ...]:
    """Lower-case alphanumeric words of a name (``t2_tse_tra`` → ``t2``, ``tse``, ``tra``)."""
    return tuple(w for w in re.split(r"[^a-z0-9]+", text.lower()) if w)


def planeOfDirection(direction: Sequence[float]) -> str:
    """``tra``, ``sag`` or ``cor`` from a 3×3 LPS direction (columns i, j, k; k is the slice normal)."""
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    normal = np.cross(matrix[:, 0], matrix[:, 1])
    return ("sag", "cor", "tra")[int(np.argmax(np.abs(normal)))]


@dataclass(frozen=True)
class SeriesCandidate:
    """One series of a case: where to read it, its words and its plane.

    Args:
        path: readable by :func:`volumes.readVolume` (file, DICOM folder, or ``FOLDER::UID``).
        name: a short label for tables and messages (description or file name).
        words: the words searched (description, folder and file names).
        plane: ``tra``, ``sag``, ``cor``, or None when unknown.
        found: the DICOM series (its sorted files), None for a volume file.
    """

    path: str
    name: str
    words: tuple[str, ...]
    plane: str | None = None
    found: DicomSeries | None = None


@dataclass(frozen=True)
class Role:
    """What a card asks a case for: an input (required) or an ROI series (optional)."""

    kind: str  # "input" or "roi"
    name: str
    words: tuple[str, ...]

    @property
    def planes(self) -> set[str]:
        return {plane for plane, names in PLANE_WORDS.items() if set(self.words) & set(names)}


@dataclass
class SeriesMatch:
    """The series chosen for a case.

    Args:
        inputs: one candidate per card input, in card order.
        roi: the ROI series found, in card order.
        notes: one line per ROI series not found or ambiguous.
    """

    inputs: list[SeriesCandidate]
    roi: list[SeriesCandidate]
    notes: list[str] = field(default_factory=list)


def rolesOfCard(card: dict) -> list[Role]:
    """The card's inputs (``match`` words, else the name) then its ``roi.from_series`` entries."""
    card = cardView(card)
    roles = [Role("input", spec.name, tuple(w for term in (spec.match or [spec.name]) for w in words(term))) for spec in card.inputs]
    for entry in card.roi.fromSeries:
        roles.append(Role("roi", entry, words(entry)))
    return roles


def score(role: Role, candidate: SeriesCandidate) -> int:
    """How well a candidate's words fit a role (0: not at all, or acquired in another plane)."""
    planes = role.planes
    if planes and candidate.plane is not None and candidate.plane not in planes:
        return 0
    total = 0
    for word in role.words:
        if word in candidate.words:
            total += 2
        elif any(word in other for other in candidate.words):
            total += 1
    return total


def assignRoles(roles: Sequence[Role], candidates: Sequence[SeriesCandidate]) -> tuple[dict[int, SeriesCandidate], dict[int, str]]:
    """Greedy assignment: the best-scoring role first (inputs before ROI series), each series once.

    Returns:
        ({role index: chosen candidate}, {role index: why none was chosen}).
    """
    chosen: dict[int, SeriesCandidate] = {}
    failed: dict[int, str] = {}
    used: set[str] = set()
    pending = list(range(len(roles)))
    while pending:
        best: tuple[int, int, list[SeriesCandidate]] | None = None
        for index in pending:
            scored = [(score(roles[index], c), c) for c in candidates if c.path not in used]
            top = max((s for s, _ in scored), default=0)
            rank = (roles[index].kind == "input", top)
            if best is None or rank > (roles[best[0]].kind == "input", best[1]):
                best = (index, top, [c for s, c in scored if s == top and top > 0])
        index, top, tied = best
        pending.remove(index)
        if len(tied) == 1:
            chosen[index] = tied[0]
            used.add(tied[0].path)
        elif not tied:
            failed[index] = "no series matches"
        else:
            failed[index] = "several series match equally: " + "; ".join(f"{c.name} ({c.path})" for c in tied)
    return chosen, failed


def suggestSeries(card: dict, candidates: Sequence[SeriesCandidate]) -> tuple[list[SeriesCandidate | None], list[SeriesCandidate]]:
    """The best guess for each input (None where none or several fit) and the ROI series found.

    For pre-filling selectors (the Slicer module): never raises.
    """
    roles = rolesOfCard(card)
    chosen, _ = assignRoles(roles, candidates)
    inputs = [chosen.get(i) for i, role in enumerate(roles) if role.kind == "input"]
    roi = [chosen[i] for i, role in enumerate(roles) if role.kind == "roi" and i in chosen]
    return inputs, roi


def matchSeries(card: dict, candidates: Sequence[SeriesCandidate], case: str = "case") -> SeriesMatch:
    """Assign a case's series to the card's inputs and ROI series.

    Raises:
        MedSegUNetError: an input with no matching series, or with several equally good ones
            (the line names them).
    """
    roles = rolesOfCard(card)
    chosen, failed = assignRoles(roles, candidates)
    available = "; ".join(f"{c.name} [{c.plane or '?'}]" for c in candidates) or "none"
    for index, role in enumerate(roles):
        if role.kind == "input" and index in failed:
            raise CohortError(
                f"Case '{case}': input '{role.name}' (words {', '.join(role.words)}): {failed[index]}; series found: {available}. "
                "Rename the series, or list the case in a CSV."
            )
    notes = [f"ROI series '{role.name}': {failed[i]}" for i, role in enumerate(roles) if role.kind == "roi" and i in failed]
    return SeriesMatch(
        inputs=[chosen[i] for i, role in enumerate(roles) if role.kind == "input"],
        roi=[chosen[i] for i, role in enumerate(roles) if role.kind == "roi" and i in chosen],
        notes=notes,
    )


def _fileDirection(path: str) -> tuple[float, ...] | None:
    try:
        reader = readHeader(path)
    except RuntimeError:
        return None
    return reader.GetDirection() if reader.GetDimension() == 3 else None


def findCaseSeries(folder: str | os.PathLike) -> list[SeriesCandidate]:
    """Every series of a study folder: DICOM series at any depth, and volume files.

    Returns:
        candidates sorted by path; a folder holding several DICOM series gives ``FOLDER::UID``
        paths.
    """
    from ..engine.paths import VOLUME_SUFFIXES, pathSuffix
    from ..engine.volumes import findDicomSeries

    folder = os.fspath(folder)
    candidates = []
    series = findDicomSeries(folder)
    for item in series:
        shared = sum(other.folder == item.folder for other in series) > 1
        path = f"{item.folder}::{item.uid}" if shared else item.folder
        relative = os.path.relpath(item.folder, folder)
        direction = _fileDirection(item.files[0])
        # A single slice reads with the slice normal as its third axis.
        plane = planeOfDirection(direction) if direction is not None else None
        candidates.append(
            SeriesCandidate(path, item.description or os.path.basename(item.folder), words(f"{item.description} {relative}"), plane, item)
        )
    for directory, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            suffix = pathSuffix(name)
            if suffix not in VOLUME_SUFFIXES or name.startswith("."):
                continue
            path = os.path.join(directory, name)
            direction = _fileDirection(path)
            stem = name[: -len(suffix)]
            candidates.append(
                SeriesCandidate(
                    path, stem, words(f"{os.path.relpath(directory, folder)} {stem}"), planeOfDirection(direction) if direction else None
                )
            )
    return sorted(candidates, key=lambda c: c.path)


__all__ = [
    "words",
    "planeOfDirection",
    "SeriesCandidate",
    "Role",
    "SeriesMatch",
    "rolesOfCard",
    "score",
    "assignRoles",
    "suggestSeries",
    "matchSeries",
    "findCaseSeries",
]
