"""Validation during training and what a run leaves to read: per-case metrics on the model grid,
``metrics.csv``, the loss and Dice curves, and validation slices with the labels.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from typing import Sequence

import numpy as np

from .trainconfig import cardFromConfig
from .traindata import regionTargets

logger = logging.getLogger(__name__)


def predictCase(network, card: dict, image: np.ndarray, device) -> np.ndarray:
    """Probabilities of one ``C, I, J, K`` case with the inference code (sliding window / slices)."""
    from ..engine.inference import predictProbabilities
    from ..engine.modelcard import LoadedModel, validateCard

    loaded = LoadedModel(path="(training)", card=validateCard(card), network=network, device=device)
    return predictProbabilities(loaded, image)


def predictionToLabels(probabilities: np.ndarray, config: dict) -> np.ndarray:
    """Class-index (softmax) or region (sigmoid, ``C, …`` booleans) predictions."""
    if config["output"] == "softmax":
        return np.argmax(probabilities, axis=0).astype(np.uint8)
    return probabilities >= float(config.get("threshold", 0.5))


def caseMetrics(probabilities: np.ndarray, label: np.ndarray, config: dict) -> dict[str, np.ndarray]:
    """Per-label Dice, IoU, sensitivity, specificity (MONAI metrics) and the soft Dice loss.

    Args:
        probabilities: ``C_out, I, J, K`` from :func:`predictCase`.
        label: ``1, I, J, K`` class indices (softmax) or remapped values (sigmoid).

    Returns:
        ``{"dice": [L], "iou": [L], "sensitivity": [L], "specificity": [L], "precision": [L], "loss": float}``.
    """
    import torch
    from monai.losses import DiceLoss
    from monai.metrics import ConfusionMatrixMetric, DiceMetric, MeanIoU
    from monai.networks.utils import one_hot

    count = len(config["labels"])
    if config["output"] == "softmax":
        predicted = torch.from_numpy(np.argmax(probabilities, axis=0)[None, None].astype(np.int64))
        prediction = one_hot(predicted, count + 1, dim=1)[:, 1:]
        target = one_hot(torch.from_numpy(label[None].astype(np.int64)), count + 1, dim=1)
        softLoss = DiceLoss(include_background=False)(torch.from_numpy(probabilities[None]), target)
        target = target[:, 1:]
    else:
        prediction = torch.from_numpy((probabilities >= float(config.get("threshold", 0.5)))[None].astype(np.float32))
        target = torch.from_numpy(regionTargets(label, config)[None])
        softLoss = DiceLoss(include_background=True)(torch.from_numpy(probabilities[None]), target)
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(prediction, target)
    iou = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(prediction, target)
    confusion = ConfusionMatrixMetric(include_background=True, metric_name=["sensitivity", "specificity", "precision"], reduction="none")
    confusion(prediction, target)
    sensitivity, specificity, precision = confusion.aggregate()
    return {
        "dice": dice[0].numpy().astype(float),
        "iou": iou[0].numpy().astype(float),
        "sensitivity": sensitivity[0].numpy().astype(float),
        "specificity": specificity[0].numpy().astype(float),
        "precision": precision[0].numpy().astype(float),
        "loss": float(softLoss),
    }


def validate(network, config: dict, items: Sequence[dict], device) -> tuple[dict, list[np.ndarray]]:
    """Mean metrics over the validation cases (``summary["cases"]``: each case's own, with its
    ``id``) and each case's predicted labels."""
    import torch

    card = cardFromConfig(config)
    network.eval()
    perCase, predictions = [], []
    with torch.no_grad():
        for item in items:
            probabilities = predictCase(network, card, item["image"], device)
            perCase.append(caseMetrics(probabilities, item["label"], config) | {"id": item["id"]})
            predictions.append(predictionToLabels(probabilities, config))
    summary = {key: np.nanmean(np.stack([m[key] for m in perCase]), axis=0) for key in ("dice", "iou", "sensitivity", "specificity")}
    summary["loss"] = float(np.mean([m["loss"] for m in perCase]))
    summary["mean_dice"] = float(np.nanmean(summary["dice"]))
    summary["cases"] = perCase
    return summary, predictions


def caseTableCSV(perCase: Sequence[dict], config: dict) -> str:
    """One row per validation case (patient): Dice, IoU, precision and recall per label, on the model grid."""
    buffer = io.StringIO()
    columns = ["case"] + [f"{metric}_{label['name']}" for metric in ("dice", "iou", "precision", "recall") for label in config["labels"]]
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for case in perCase:
        values = [case[{"recall": "sensitivity"}.get(metric, metric)] for metric in ("dice", "iou", "precision", "recall")]
        writer.writerow([case["id"]] + ["" if not np.isfinite(v) else f"{v:.4f}" for series in values for v in series])
    return buffer.getvalue()


def metricColumns(config: dict) -> list[str]:
    columns = ["epoch", "train_loss", "val_soft_dice_loss", "val_mean_dice", "lr", "seconds"]
    for metric in ("dice", "iou", "sensitivity", "specificity"):
        columns += [f"{metric}_{label['name']}" for label in config["labels"]]
    return columns


def historyCSV(history: Sequence[dict], config: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=metricColumns(config), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)) for k, v in row.items()})
    return buffer.getvalue()


def writeHistory(history: Sequence[dict], config: dict, path: str) -> None:
    from ..engine.staging import writeText

    writeText(historyCSV(history, config), path)


def plotCurves(history: Sequence[dict], config: dict, path: str) -> None:
    """Loss and validation Dice per epoch (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..engine.staging import atomicOutput

    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [row["train_loss"] for row in history], label="training loss")
    validated = [row for row in history if row.get("val_mean_dice") is not None]
    if validated:
        left.plot([r["epoch"] for r in validated], [r["val_soft_dice_loss"] for r in validated], label="validation soft Dice loss")
        for label in config["labels"]:
            right.plot(
                [r["epoch"] for r in validated], [r[f"dice_{label['name']}"] for r in validated], label=label["name"], color=label["color"]
            )
        right.plot([r["epoch"] for r in validated], [r["val_mean_dice"] for r in validated], "k--", label="mean")
    from matplotlib.ticker import MaxNLocator

    for axis in (left, right):
        # Epochs are whole numbers; a resumed run of few epochs would otherwise get 1.5, 2.5, ...
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("epoch")
    left.set_title("Loss")
    left.legend()
    right.set_xlabel("epoch")
    right.set_ylim(0, 1)
    right.set_title("Validation Dice")
    if validated:
        right.legend()
    figure.suptitle(config["name"])
    figure.tight_layout()
    with atomicOutput(path) as temporary:
        figure.savefig(temporary, dpi=90, format="png")
    plt.close(figure)


def labelOverlay(labels: np.ndarray, config: dict) -> np.ndarray:
    """RGBA overlay of a 2D class-index (softmax) or ``C, …`` region (sigmoid) slice, transposed to rows=J."""
    rgba = np.zeros((*labels.shape[-2:], 4), dtype=float)
    for index, label in enumerate(config["labels"]):
        mask = labels == index + 1 if config["output"] == "softmax" else labels[index]
        rgba[mask] = [*label["color"], 0.45]
    return rgba.transpose(1, 0, 2)


def plotValidationSlices(items: Sequence[dict], predictions: Sequence[np.ndarray], config: dict, path: str) -> None:
    """For a few validation cases, the K slice with most labelled voxels: reference vs prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..engine.staging import atomicOutput

    count = min(len(items), int(config.get("figure_cases", 3)))
    if count == 0:
        return
    figure, axes = plt.subplots(count, 2, figsize=(8, 4 * count), squeeze=False)
    for row, (item, prediction) in enumerate(zip(items[:count], predictions[:count])):
        label = item["label"][0]
        k = int(np.argmax((label > 0).reshape(-1, label.shape[-1]).sum(axis=0)))
        image = item["image"][0, :, :, k].T
        truth = label[..., k] if config["output"] == "softmax" else regionTargets(item["label"], config)[..., k].astype(bool)
        predicted = prediction[..., k]
        for column, (labels, title) in enumerate(((truth, "reference"), (predicted, "prediction"))):
            axis = axes[row, column]
            axis.imshow(image, cmap="gray")
            axis.imshow(labelOverlay(labels, config))
            axis.set_title(f"{item['id']} k={k}: {title}")
            axis.axis("off")
    figure.tight_layout()
    with atomicOutput(path) as temporary:
        figure.savefig(temporary, dpi=80, format="png")
    plt.close(figure)


class ProgressBar:
    """An epoch's progress: a tqdm bar on stderr when it is a terminal, then one summary line."""

    def __init__(self, total: int, prefix: str, log=None) -> None:
        self.total, self.prefix = max(total, 1), prefix
        self.log = log or logger.info
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=prefix, file=sys.stderr, leave=False, unit="batch")

    def update(self, done: int, suffix: str = "") -> None:
        if self._bar is not None:
            self._bar.n = done
            self._bar.set_postfix_str(suffix, refresh=False)
            self._bar.refresh()

    def close(self, summary: str) -> None:
        if self._bar is not None:
            self._bar.close()
        self.log(f"{self.prefix} {summary}")


def remainingTime(history: Sequence[dict], epochs: int) -> str:
    """``", about 12 min left"`` from the mean of this run's epoch times (empty after the last epoch)."""
    left = epochs - len(history)
    times = [row["seconds"] for row in history if row.get("seconds")]
    if left <= 0 or not times:
        return ""
    seconds = left * float(np.mean(times))
    return f", about {seconds / 60:.0f} min left" if seconds >= 90 else f", about {seconds:.0f} s left"


__all__ = [
    "predictCase",
    "predictionToLabels",
    "caseMetrics",
    "validate",
    "caseTableCSV",
    "metricColumns",
    "historyCSV",
    "writeHistory",
    "plotCurves",
    "labelOverlay",
    "plotValidationSlices",
    "ProgressBar",
    "remainingTime",
]
