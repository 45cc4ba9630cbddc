"""``medsegunet batch``: a cohort of cases, one case in and its files out, on workers that keep the model.

The job contract (the same for ``segment``, this command's local workers, the Ray engine and
Slicer's console batch): a :class:`CaseSpec` (the case's inputs in card order and its ROI series)
goes to :func:`processCase` with a loaded model; the case's files come out in ``DIR/<case>/`` and a
summary row comes back.

Per case, ``DIR/<case>/`` holds ``<case>.seg.nrrd`` (or ``--format``), ``<case>-statistics.csv``
and ``.json`` (what ``segment`` writes, ROI included), ``<case>-qc.png`` (the mid-ROI slice with
the labels) and ``manifest.json`` (the model's SHA256, the inputs' sizes and times). A case's
files are written in a hidden staging folder and renamed into place as one folder, so a case is
there whole or not at all. For the cohort, ``DIR/summary.csv`` has one row per case and
``DIR/qc.png`` is a montage of the cases' QC tiles.

Local workers are processes (``spawn``) that import torch and load the model once, and prepare the
next case (reading, ROI, resampling) on a thread while the network runs on the current one. A
worker that dies (out of memory, a crash in a native library) is replaced and its cases are
retried once. The parent process never imports torch.
"""

from __future__ import annotations

import csv
import io
import os
import threading
from typing import Sequence

import numpy as np

from ..engine.preview import QC_TILE
from .casejob import BatchOptions, caseOutputNames, isCaseComplete, previousSummary, skippedRow
from .cases import CaseSpec, shownCaseId

# More worker processes or network threads than any machine runs are typing mistakes.
MAX_WORKERS = 256
MAX_THREADS = 1024
QC_TILES_PER_PAGE = 100


def summaryCSV(rows: Sequence[dict], card: dict) -> str:
    """One row per case: status, message, ROI size (mm), volume per label (cm³), QC flags, seconds, attempts, finished (UTC), notes.

    Numbers are formatted by the statistics table's own :func:`formatCell`, so a volume reads the
    same in the summary and in the case's statistics CSV.
    """
    from ..engine.statistics import formatCell

    labels = [label["name"] for label in card["labels"]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "case",
            "status",
            "message",
            "roi_size_i_mm",
            "roi_size_j_mm",
            "roi_size_k_mm",
            *[f"volume_cm3 ({name})" for name in labels],
            "qc",
            "seconds",
            "attempts",
            "finished",
            "notes",
        ]
    )
    for row in rows:
        size = row.get("roi_size_mm") or [None, None, None]
        volumes = row.get("volumes_cm3") or {}
        cells = [
            row["case"],
            row["status"],
            row.get("message", ""),
            *size,
            *[volumes.get(name) for name in labels],
            row.get("qc", ""),
            row.get("seconds"),
            row.get("attempts", ""),
            row.get("finished", ""),
            "; ".join(row.get("notes") or []),
        ]
        writer.writerow([formatCell(cell) for cell in cells])
    return buffer.getvalue()


def writeMontage(rows: Sequence[dict], options: BatchOptions, path: str, card: dict | None = None) -> None:
    """A page of QC tiles (one per case, 256 px), captioned with the case and its QC state (flagged
    and failed cases in red), with a legend of the labels' colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    dpi, tile, caption, legend, gap = 100, QC_TILE / 100, 0.6, 0.5, 0.2  # inches
    columns = min(10, max(1, len(rows)))
    lines = int(np.ceil(len(rows) / columns))
    width, height = columns * (tile + gap), lines * (tile + caption) + legend
    figure = plt.figure(figsize=(width, height), dpi=dpi)
    for index, row in enumerate(rows):
        line, column = divmod(index, columns)
        # Each tile at its full QC_TILE pixels, its caption in the space above it.
        axis = figure.add_axes(
            [
                (column * (tile + gap) + gap / 2) / width,
                (legend + (lines - 1 - line) * (tile + caption)) / height,
                tile / width,
                tile / height,
            ]
        )
        axis.axis("off")
        tilePath = os.path.join(options.outputDir, row["case"], caseOutputNames(row["case"], options.format)["qc"])
        if row["status"] in ("ok", "skipped") and os.path.isfile(tilePath):
            axis.imshow(plt.imread(tilePath))
        else:
            axis.imshow(np.full((QC_TILE, QC_TILE, 3), (0.55, 0.1, 0.1)))
            axis.text(QC_TILE / 2, QC_TILE / 2, "failed", color="white", ha="center", va="center", fontsize=12)
        flagged = str(row.get("qc", "")).startswith("flagged")
        state = "failed" if row["status"] == "failed" else ("QC flagged" if flagged else f"{row['status']}, QC ok")
        axis.set_title(
            f"{shownCaseId(row['case'])[:28]}\n{state}", fontsize=9, color="red" if flagged or row["status"] == "failed" else "black"
        )
    if card is not None:
        handles = [Patch(color=label["color"], label=label["name"]) for label in card["labels"]]
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    try:
        figure.savefig(path, dpi=dpi, format="png")
    finally:
        plt.close(figure)


def preloadMontageLibrary() -> None:
    """Import matplotlib for the montage on a thread while the workers run: the driver idles then,
    and the import (about 1 s) would otherwise come after the last case. Not a daemon: the
    interpreter never stops it half-way."""

    def load() -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot  # noqa: F401
        except Exception:  # noqa: BLE001 - writeMontage imports it again and says what is wrong
            pass

    threading.Thread(target=load, name="medsegunet-montage-import").start()


def writeCohortFiles(rows: Sequence[dict], card: dict, options: BatchOptions) -> list[str]:
    """``summary.csv`` and the QC montage (``qc.png``, then ``qc-002.png`` … past 400 cases), together."""
    from ..engine.staging import StagedOutputs, textVerifier, writeTextFile

    written = []
    with StagedOutputs() as staged:
        text = summaryCSV(rows, card)
        path = os.path.join(options.outputDir, "summary.csv")
        writeTextFile(text, staged.stage(path, verify=textVerifier(text)))
        written.append(path)
        for page, start in enumerate(range(0, len(rows), QC_TILES_PER_PAGE)):
            path = os.path.join(options.outputDir, "qc.png" if page == 0 else f"qc-{page + 1:03d}.png")
            writeMontage(rows[start : start + QC_TILES_PER_PAGE], options, staged.stage(path), card)
            written.append(path)
    return written


def rowsBeforeTheRun(cases: Sequence[CaseSpec], options: BatchOptions, force: bool, progress) -> tuple[dict[int, dict], list[int]]:
    """Rows of the cases that fail before running (no input) or are complete already (skipped,
    as the run that made them said), and the indexes of the cases to run."""
    rows: dict[int, dict] = {}
    previous = previousSummary(options.outputDir)
    todo = []
    for index, case in enumerate(cases):
        if case.error:
            rows[index] = {
                "case": case.id,
                "status": "failed",
                "message": case.error,
                "seconds": 0.0,
                "roi_size_mm": None,
                "volumes_cm3": {},
                "notes": case.notes,
            }
        elif not force and isCaseComplete(case, options):
            rows[index] = skippedRow(case, options, previous.get(case.id))
        else:
            todo.append(index)
            continue
        progress.update(rows[index])
    return rows, todo


__all__ = ["MAX_WORKERS", "MAX_THREADS", "summaryCSV", "writeMontage", "preloadMontageLibrary", "writeCohortFiles", "rowsBeforeTheRun"]
