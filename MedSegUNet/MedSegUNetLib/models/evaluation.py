"""Figures of a trained model on a prepared set's held-out patients, through the inference engine.

Each test volume of a ``data prepare`` folder is segmented exactly as ``medsegunet segment`` would
(the card's grid, normalisation and slices), and compared with its label on the volume's own grid
(KJI arrays, LPS) with :func:`engine.statistics.overlapMetrics`: per patient Dice, IoU, precision
and recall for every label, and over the patients the mean, standard deviation and median.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

METRICS = ("dice", "jaccard", "precision", "recall")


def testEntries(folder: str | os.PathLike) -> list[dict]:
    """The prepared folder's ``test`` entries, with their case ids and absolute paths."""
    from .traindata import _stripSuffix, readDecathlonDocument

    dataset = readDecathlonDocument(folder)
    return [
        {
            **e,
            "id": _stripSuffix(os.path.basename(e["image"])),
            "image": os.path.join(os.fspath(folder), e["image"]),
            "label": os.path.join(os.fspath(folder), e["label"]),
        }
        for e in dataset.get("test") or []
    ]


def evaluateCases(
    modelPath: str | os.PathLike, entries: Sequence[dict], device: str = "cpu", progress: Callable[[str], None] | None = None
) -> list[dict]:
    """Segment each entry's image and compare it with its label.

    Returns:
        one row per entry: ``case``, ``patient``, ``seconds`` and ``<metric>_<label name>`` for
        :data:`METRICS`, plus ``volume_ml_<label name>`` and ``reference_ml_<label name>``.
    """
    from ..engine import pipeline, statistics
    from ..engine.modelcard import loadModel

    model = loadModel(modelPath, device)
    labels = model.card["labels"]
    rows = []
    for index, entry in enumerate(entries):
        image = sitk.ReadImage(entry["image"])
        started = time.perf_counter()
        result = pipeline.segmentImages([image], model, useROI=False)
        seconds = time.perf_counter() - started
        reference = sitk.GetArrayFromImage(sitk.ReadImage(entry["label"]))
        masks = [np.isin(reference, statistics.referenceValues(label)) for label in labels]
        predictedMasks = result.masks()
        metrics, _ = statistics.overlapMetrics(predictedMasks, masks, labels, image.GetSpacing())
        voxel = float(np.prod(image.GetSpacing())) / 1000.0
        row = {"case": entry["id"], "patient": entry.get("patient", entry["id"]), "seconds": round(seconds, 3)}
        for label, predicted, expected in zip(labels, predictedMasks, masks):
            for metric in METRICS:
                row[f"{metric}_{label['name']}"] = metrics[int(label["value"])][metric]
            row[f"volume_ml_{label['name']}"] = round(float(predicted.sum()) * voxel, 3)
            row[f"reference_ml_{label['name']}"] = round(float(expected.sum()) * voxel, 3)
        rows.append(row)
        if progress is not None:
            progress(
                f"{index + 1}/{len(entries)} {entry['id']}: "
                + ", ".join(f"Dice {label['name']} {row['dice_' + label['name']]:.3f}" for label in labels)
            )
    return rows


def summarize(rows: Sequence[dict], columns: Sequence[str]) -> dict[str, dict]:
    """Mean, standard deviation (sample) and median of each column over the rows (None ignored)."""
    result = {}
    for column in columns:
        values = np.array([row[column] for row in rows if row.get(column) is not None], dtype=float)
        result[column] = {
            "mean": float(values.mean()) if values.size else None,
            "sd": float(values.std(ddof=1)) if values.size > 1 else None,
            "median": float(np.median(values)) if values.size else None,
            "n": int(values.size),
        }
    return result


__all__ = ["testEntries", "evaluateCases", "summarize"]
