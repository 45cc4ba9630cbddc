"""``medsegunet train``: train a MONAI U-Net with the preprocessing used at inference.

Every case goes through the engine's own inference preprocessing, so a trained model sees at
inference exactly what it saw in training:

1. ROI on the first input = intersection of all inputs' and extra ROI series' extents
   (:func:`pipeline.resolveROI`), cropped with :func:`geometry.cropToROI`.
2. Model grid from the card's spacing and orientation (:func:`preprocessing.modelGrid`); inputs
   resampled in physical space (linear) and normalised by :func:`preprocessing.prepareInputs`;
   the label resampled nearest-neighbour onto the same grid.

Arrays are MONAI's layout: ``C, I, J, K`` for 3D cases (SimpleITK arrays are ``K, J, I``); 2D
models train on ``C, I, J`` slices along K, as MONAI's ``SliceInferer`` runs them at inference.
Patches, augmentation, losses, metrics and the sliding-window validation are MONAI's.

Reproducibility: all random generators are re-seeded from ``(seed, epoch)`` at the start of every
epoch, so a run resumed from a checkpoint continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..engine.errors import Interrupted, MedSegUNetError, TrainingError, firstLine
from .trainconfig import cardFromConfig, validateConfig
from .traindata import buildTransforms, prepareCase, readCases, seedEverything, splitCases, toSlices
from .trainreports import ProgressBar, caseTableCSV, historyCSV, plotCurves, plotValidationSlices, remainingTime, validate

# Notes and warnings, for whoever attaches a handler (the command line prints them; Slicer logs them).
logger = logging.getLogger(__name__)


CHECKPOINT_FORMAT = "medsegunet.checkpoint/1"


def buildNetwork(config: dict):
    """The MONAI network a config describes (output channels from the card's labels)."""
    from monai.networks import nets

    from ..engine.modelcard import outputChannels

    spec, dims = config["network"], config["spatial_dims"]
    inChannels, outChannels = len(config["inputs"]), outputChannels(cardFromConfig(config))
    norm = "INSTANCE" if spec.get("norm", "instance") == "instance" else "BATCH"
    dropout = float(spec.get("dropout", 0.0))
    kind = spec["type"]
    if kind == "UNet":
        return nets.UNet(
            spatial_dims=dims,
            in_channels=inChannels,
            out_channels=outChannels,
            channels=spec["channels"],
            strides=spec["strides"],
            num_res_units=int(spec.get("num_res_units", 1)),
            norm=norm,
            dropout=dropout,
        )
    if kind == "AttentionUNet":
        return nets.AttentionUnet(
            spatial_dims=dims,
            in_channels=inChannels,
            out_channels=outChannels,
            channels=spec["channels"],
            strides=spec["strides"],
            dropout=dropout,
        )
    if kind == "BasicUNet":
        return nets.BasicUNet(
            spatial_dims=dims,
            in_channels=inChannels,
            out_channels=outChannels,
            features=tuple(spec.get("features") or (16, 16, 32, 64, 128, 16)),
            norm=norm.lower(),
            dropout=dropout,
        )
    return nets.SegResNet(
        spatial_dims=dims,
        in_channels=inChannels,
        out_channels=outChannels,
        init_filters=int(spec.get("init_filters", 8)),
        blocks_down=tuple(spec.get("blocks_down") or (1, 2, 2, 4)),
        blocks_up=tuple(spec.get("blocks_up") or (1, 1, 1)),
        dropout_prob=dropout or None,
        norm=norm.lower(),
    )


def buildLoss(config: dict):
    """MONAI loss: soft Dice, Dice+CE, Dice+BCE (sigmoid) or softmax focal."""
    from monai.losses import DiceCELoss, DiceLoss, FocalLoss

    spec = config["loss"]
    sigmoid = config["output"] == "sigmoid"
    includeBackground = True if sigmoid else bool(spec.get("include_background", False))
    kind = spec["type"]
    batch = bool(spec.get("batch_dice", False))
    if kind == "dice":
        return DiceLoss(include_background=includeBackground, to_onehot_y=not sigmoid, softmax=not sigmoid, sigmoid=sigmoid, batch=batch)
    if kind == "dice_ce" and not sigmoid:
        return DiceCELoss(include_background=includeBackground, to_onehot_y=True, softmax=True, batch=batch)
    if kind in ("dice_ce", "dice_bce"):
        # MONAI's DiceCELoss applies softmax cross-entropy to multi-channel inputs, which is wrong
        # for overlapping sigmoid regions (WT/TC/ET): pair its DiceLoss with per-channel BCE instead.
        import torch

        dice = DiceLoss(include_background=True, sigmoid=True, batch=batch)
        bce = torch.nn.BCEWithLogitsLoss()
        return lambda logits, target: dice(logits, target) + bce(logits, target)
    return FocalLoss(include_background=True, to_onehot_y=not sigmoid, gamma=float(spec.get("gamma", 2.0)), use_softmax=not sigmoid)


def _buildOptimizer(network, config: dict):
    import torch

    spec = config["optimizer"]
    if spec["type"] == "sgd":
        optimizer = torch.optim.SGD(
            network.parameters(), lr=spec["lr"], momentum=spec.get("momentum", 0.9), weight_decay=spec.get("weight_decay", 0.0)
        )
    elif spec["type"] == "adamw":
        optimizer = torch.optim.AdamW(network.parameters(), lr=spec["lr"], weight_decay=spec.get("weight_decay", 0.0))
    else:
        optimizer = torch.optim.Adam(network.parameters(), lr=spec["lr"], weight_decay=spec.get("weight_decay", 0.0))
    scheduler = None
    if spec.get("scheduler") == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(config["epochs"]))
    return optimizer, scheduler


def loadCheckpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint.

    Raises:
        MedSegUNetError: missing or not a MedSegUNet checkpoint.
    """
    import torch

    from ..engine.paths import checkRegularFile

    path = os.fspath(path)
    checkRegularFile(path, "Checkpoint")
    if not os.path.isfile(path):
        raise TrainingError(f"Checkpoint '{path}' is a folder: give the checkpoint file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for non-checkpoint files
        raise TrainingError(f"Cannot read checkpoint '{path}' ({firstLine(str(error))[:120]}).") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"'{path}' is not a 'medsegunet train' checkpoint.")
    return checkpoint


def loadNetworkWeights(network, checkpoint: dict, source: str | os.PathLike) -> None:
    """Put a checkpoint's weights into ``network``.

    Raises:
        MedSegUNetError: the checkpoint was made for another network than the config builds.
    """
    try:
        network.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise TrainingError(
            f"Checkpoint '{os.fspath(source)}' holds another network than the config builds ({firstLine(error)[:100]}): use the training "
            "config."
        ) from None


def _saveCheckpoint(state: dict, path: str) -> None:
    import torch

    from ..engine.staging import atomicOutput

    with atomicOutput(path) as temporary:
        torch.save(state, temporary)


def _saveEpoch(state: dict, lastPath: str, bestPath: str | None, metricsText: str, metricsPath: str) -> None:
    """One epoch's checkpoint(s) and metrics, staged and renamed together (all or none)."""
    import torch

    from ..engine.staging import StagedOutputs, textVerifier, writeTextFile

    with StagedOutputs() as staged:
        torch.save(state, staged.stage(lastPath))
        if bestPath is not None:
            torch.save(state, staged.stage(bestPath))
        writeTextFile(metricsText, staged.stage(metricsPath, verify=textVerifier(metricsText)))


def _stretchedSchedule(optimizer, scheduler, history: Sequence[dict], doneEpochs: int, totalEpochs: int):
    """A cosine schedule for the epochs a resumed run adds, falling from the last epoch's rate.

    The stored schedule ended at the old total (often at rate 0, or about to rise again); the new
    one goes on from the rate of the last completed epoch down to ``eta_min`` just after the new
    total, so every added epoch trains at a lower rate than the one before.
    """
    import torch

    previous = [float(history[-1]["lr"])] * len(optimizer.param_groups) if history and history[-1].get("lr") else list(scheduler.base_lrs)
    for group, rate in zip(optimizer.param_groups, previous):
        group["lr"] = rate
        group["initial_lr"] = rate
    stretched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=totalEpochs - doneEpochs + 1, eta_min=scheduler.eta_min)
    with warnings.catch_warnings():
        # The step is the schedule's first position, not a skipped optimiser step.
        warnings.simplefilter("ignore", UserWarning)
        stretched.step()
    return stretched


def _keptMessage(lastPath: str) -> str | None:
    """What an interrupted run leaves: the last complete epoch's checkpoint, and how to go on."""
    if not os.path.isfile(lastPath):
        return None
    try:
        epoch = int(loadCheckpoint(lastPath)["epoch"])
    except MedSegUNetError:
        return None
    return (
        f"{os.path.basename(lastPath)} (epoch {epoch}) kept in {os.path.dirname(os.path.abspath(lastPath))}; resume with --resume "
        f"{lastPath}"
    )


def _plain(value):
    """Checkpoint-safe Python values (``torch.load(weights_only=True)`` takes no NumPy scalars)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    return value


@dataclass
class TrainingResult:
    """What :func:`train` leaves in the output folder."""

    outputDir: str
    bestCheckpoint: str
    lastCheckpoint: str
    history: list[dict]
    bestEpoch: int | None
    bestMeanDice: float | None
    trainCases: list[str]
    validationCases: list[str]


def train(
    config: dict,
    outputDir: str | os.PathLike,
    resume: str | os.PathLike | None = None,
    device: str = "auto",
    log=None,
    init: str | os.PathLike | None = None,
) -> TrainingResult:
    """Train a network as the (validated) config says, writing checkpoints, metrics and figures.

    Args:
        config: from :func:`readConfig` / :func:`validateConfig` (absolute data paths).
        outputDir: created if missing; receives ``config.json``, ``checkpoint_last.pt``,
            ``checkpoint_best.pt``, ``metrics.csv``, ``curves.png``, ``validation.png``.
        resume: a ``checkpoint_last.pt`` to continue from (its epoch count, weights, optimiser).
        device: ``auto``, ``cpu`` or ``cuda``.
        log: callable taking one line (default: this module's logger, at INFO).
        init: a checkpoint of the same network whose weights this run starts from (fine-tuning),
            with a fresh optimiser, schedule and history; not with ``resume``.

    Returns:
        where things were written and the best validation Dice.

    Raises:
        MedSegUNetError: bad data, or a checkpoint from another network.
    """
    from ..engine.staging import writeText

    if resume is not None and init is not None:
        raise TrainingError("--resume continues a run and --init starts a new one from its weights: give one of them.")
    # The checkpoint a run starts from is read first: a damaged one stops the run before the output
    # folder is made or the data are prepared.
    start = loadCheckpoint(resume if resume is not None else init) if resume is not None or init is not None else None
    trainer = Trainer(config, outputDir, device, log)
    trainer.prepareData()
    trainer.buildModel()
    if resume is not None:
        trainer.resumeFrom(resume, start)
    elif init is not None:
        trainer.initFrom(init, start)
    writeText(json.dumps(config, indent=2), os.path.join(trainer.outputDir, "config.json"))
    try:
        for epoch in range(trainer.startEpoch, int(config["epochs"])):
            if trainer.runEpoch(epoch):
                break
    except (KeyboardInterrupt, Interrupted) as error:
        error.kept = _keptMessage(trainer.lastPath)  # type: ignore[attr-defined]
        raise
    return trainer.finish(resume)


class Trainer:
    """One training run's state: data, network, optimiser, history and where it writes."""

    def __init__(self, config: dict, outputDir: str | os.PathLike, device: str, log) -> None:
        from ..engine.modelcard import resolveDevice

        self.config = config
        self.log = log or logger.info
        self.outputDir = os.fspath(outputDir)
        os.makedirs(self.outputDir, exist_ok=True)
        self.seed = int(config["seed"])
        self.device = resolveDevice(device)
        self.amp = bool(config.get("amp", True)) and self.device.type == "cuda"
        self.startEpoch, self.history, self.best = 0, [], {"dice": None, "epoch": None, "stale": 0}
        self.initialisedFrom: dict | None = None
        self.lastPath = os.path.join(self.outputDir, "checkpoint_last.pt")
        self.bestPath = os.path.join(self.outputDir, "checkpoint_best.pt")
        self.started = time.perf_counter()

    def prepareData(self) -> None:
        """The cases on the model grid and the training samples (slices for 2D)."""
        config, log = self.config, self.log
        self.trainCases, self.validationCases = splitCases(readCases(config), config)
        log(
            f"{len(self.trainCases)} training case(s): {', '.join(c.id for c in self.trainCases)}; "
            f"{len(self.validationCases)} validation case(s): {', '.join(c.id for c in self.validationCases) or 'none'}"
        )
        trainItems = [prepareCase(case, config) for case in self.trainCases]
        self.validationItems = [prepareCase(case, config) for case in self.validationCases]
        for item in trainItems + self.validationItems:
            item["grid_size"] = list(item["image"].shape[1:])
        log(
            f"Prepared cases on the model grid in {time.perf_counter() - self.started:.1f} s: "
            + "; ".join(f"{item['id']} {'×'.join(map(str, item['image'].shape[1:]))}" for item in trainItems + self.validationItems)
        )
        if config["spatial_dims"] == 2:
            samples = toSlices(trainItems)
        else:
            samples = [{"image": item["image"], "label": item["label"], "id": item["id"]} for item in trainItems]
        self.samples = samples * int(config["sampling"].get("repeats", 1))

    def buildModel(self) -> None:
        """Network, optimiser, loss and the cached dataset, in the seeded order a run reproduces."""
        import torch
        from monai.data import CacheDataset

        config = self.config
        seedEverything(self.seed, config.get("deterministic", True))
        self.network = buildNetwork(config).to(self.device)
        self.optimizer, self.scheduler = _buildOptimizer(self.network, config)
        # torch.amp.GradScaler is torch >= 2.3; Slicer's PyTorch may be older.
        self.scaler = (
            torch.amp.GradScaler("cuda", enabled=self.amp)
            if hasattr(torch.amp, "GradScaler")
            else torch.cuda.amp.GradScaler(enabled=self.amp)
        )
        self.lossFunction = buildLoss(config)
        self.transforms = buildTransforms(config)
        self.dataset = CacheDataset(
            data=[{"image": s["image"], "label": s["label"]} for s in self.samples],
            transform=self.transforms,
            cache_rate=float(config["data"].get("cache_rate", 1.0)),
            num_workers=0,
            progress=False,
            copy_cache=True,
        )
        self.generator = torch.Generator()

    def resumeFrom(self, resume: str | os.PathLike, checkpoint: dict) -> None:
        """Weights, optimiser, schedule, history and best of a ``checkpoint_last.pt`` (``checkpoint``:
        :func:`loadCheckpoint` of it)."""
        config = self.config
        loadNetworkWeights(self.network, checkpoint, resume)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scheduler is not None and checkpoint.get("scheduler"):
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.startEpoch = int(checkpoint["epoch"])
        self.initialisedFrom = checkpoint.get("initialised_from")
        self.history = list(checkpoint.get("history") or [])
        self.best = dict(checkpoint.get("best") or self.best)
        if self.startEpoch > int(config["epochs"]):
            raise TrainingError(
                f"'{resume}' already ran {self.startEpoch} epochs but the config asks for {config['epochs']}: give 'epochs' above "
                f"{self.startEpoch} to continue."
            )
        if self.scheduler is not None and hasattr(self.scheduler, "T_max") and self.scheduler.T_max != int(config["epochs"]):
            self.scheduler = _stretchedSchedule(self.optimizer, self.scheduler, self.history, self.startEpoch, int(config["epochs"]))
            self.log(f"The learning-rate schedule is stretched from {checkpoint['config']['epochs']} to {config['epochs']} epochs.")
        self.log(f"Resuming from '{resume}' after epoch {self.startEpoch}.")

    def initFrom(self, init: str | os.PathLike, checkpoint: dict) -> None:
        """Start from the weights of another run's checkpoint (fine-tuning; ``checkpoint``:
        :func:`loadCheckpoint` of it): the optimiser, schedule, history and best stay new, and the
        checkpoints record where the weights came from."""
        from ..engine.paths import sha256

        loadNetworkWeights(self.network, checkpoint, init)
        self.initialisedFrom = {
            "file": os.path.basename(os.fspath(init)),
            "sha256": sha256(init),
            "epoch": int(checkpoint.get("epoch", 0)),
            "earlier": checkpoint.get("initialised_from"),
        }
        self.log(
            f"Starting from the weights of '{os.fspath(init)}' (epoch {self.initialisedFrom['epoch']}), with a new optimiser and schedule."
        )

    def state(self, epoch: int) -> dict:
        return _plain(
            {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch,
                "history": self.history,
                "best": self.best,
                "config": self.config,
                "initialised_from": self.initialisedFrom,
                "train_cases": [c.id for c in self.trainCases],
                "validation_cases": [c.id for c in self.validationCases],
            }
        ) | {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
        }

    def trainOneEpoch(self, epoch: int) -> tuple[list[float], "ProgressBar"]:
        """The epoch's batches; its randomness depends only on (seed, epoch), so resume == uninterrupted."""
        import torch
        from monai.data import DataLoader

        epochSeed = (self.seed * 100003 + epoch) % (2**31)
        seedEverything(epochSeed, self.config.get("deterministic", True))
        self.transforms.set_random_state(seed=epochSeed)
        self.generator.manual_seed(epochSeed)
        workers = int(self.config["data"].get("num_workers", 0))
        loader = DataLoader(
            self.dataset, batch_size=int(self.config["batch_size"]), shuffle=True, num_workers=workers, generator=self.generator
        )
        self.network.train()
        bar = ProgressBar(len(loader), f"epoch {epoch + 1}/{self.config['epochs']}", self.log)
        losses = []
        for step, batch in enumerate(loader):
            images, labels = batch["image"].to(self.device), batch["label"].to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.amp):
                loss = self.lossFunction(self.network(images), labels)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            losses.append(float(loss.detach()))
            bar.update(step + 1, f"loss {np.mean(losses):.4f}")
        return losses, bar

    def validateEpoch(self, epoch: int, row: dict) -> tuple[bool, bool]:
        """Validation when due (its figures into ``row``); (validated, improved on the best)."""
        config, best = self.config, self.best
        minDelta = float((config.get("early_stopping") or {}).get("min_delta", 0.0))
        validated = bool(self.validationItems) and ((epoch + 1) % int(config["val_interval"]) == 0 or epoch + 1 == int(config["epochs"]))
        if not validated:
            if not self.validationItems:
                best.update(epoch=epoch + 1)
            return False, not self.validationItems
        summary, _ = validate(self.network, config, self.validationItems, self.device)
        row["val_soft_dice_loss"], row["val_mean_dice"] = summary["loss"], summary["mean_dice"]
        for metric in ("dice", "iou", "sensitivity", "specificity"):
            for label, value in zip(config["labels"], summary[metric]):
                row[f"{metric}_{label['name']}"] = float(value)
        if best["dice"] is None or summary["mean_dice"] > best["dice"] + minDelta:
            best.update(dice=summary["mean_dice"], epoch=epoch + 1, stale=0)
            return True, True
        best["stale"] = int(best["stale"]) + 1
        return True, False

    def runEpoch(self, epoch: int) -> bool:
        """Train, validate, save the epoch's checkpoint(s) and metrics together; True to stop early."""
        config = self.config
        epochStart = time.perf_counter()
        losses, bar = self.trainOneEpoch(epoch)
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self.scheduler is not None:
            self.scheduler.step()
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)) if losses else None,
            "lr": lr,
            "val_soft_dice_loss": None,
            "val_mean_dice": None,
        }
        validated, improved = self.validateEpoch(epoch, row)
        row["seconds"] = time.perf_counter() - epochStart
        self.history.append(row)
        text = f"loss {row['train_loss']:.4f}" + (f", validation mean Dice {row['val_mean_dice']:.4f}" if validated else "")
        bar.close(
            text
            + (" (best)" if improved and validated else "")
            + f", {row['seconds']:.1f} s"
            + remainingTime(self.history, int(config["epochs"]))
        )
        _saveEpoch(
            self.state(epoch + 1),
            self.lastPath,
            self.bestPath if improved else None,
            historyCSV(self.history, config),
            os.path.join(self.outputDir, "metrics.csv"),
        )
        patience = (config.get("early_stopping") or {}).get("patience")
        if patience and validated and int(self.best["stale"]) >= int(patience):
            self.log(
                f"Early stopping: no better validation Dice for {patience} validation(s); best {self.best['dice']:.4f} at epoch "
                f"{self.best['epoch']}."
            )
            return True
        return False

    def finish(self, resume: str | os.PathLike | None) -> TrainingResult:
        """Checkpoints in place (also when no epoch was left to run), curves, validation slices."""
        import shutil

        if not os.path.exists(self.lastPath):  # resumed into a new folder with no epoch left to run
            _saveCheckpoint(self.state(len(self.history)), self.lastPath)
        if not os.path.exists(self.bestPath) and resume is not None:
            previousBest = os.path.join(os.path.dirname(os.path.abspath(resume)), "checkpoint_best.pt")
            if os.path.exists(previousBest):
                shutil.copyfile(previousBest, self.bestPath)
        if not os.path.exists(self.bestPath):
            shutil.copyfile(self.lastPath, self.bestPath)
        plotCurves(self.history, self.config, os.path.join(self.outputDir, "curves.png"))
        if self.validationItems and os.path.exists(self.bestPath):
            self.network.load_state_dict(loadCheckpoint(self.bestPath)["model"])
            from ..engine.staging import writeText

            summary, predictions = validate(self.network, self.config, self.validationItems, self.device)
            writeText(caseTableCSV(summary["cases"], self.config), os.path.join(self.outputDir, "validation_cases.csv"))
            plotValidationSlices(self.validationItems, predictions, self.config, os.path.join(self.outputDir, "validation.png"))
        best = self.best
        self.log(
            f"Done in {time.perf_counter() - self.started:.0f} s. Best checkpoint: {self.bestPath}"
            + (f" (epoch {best['epoch']}, validation mean Dice {best['dice']:.4f})" if best.get("dice") is not None else "")
        )
        return TrainingResult(
            outputDir=self.outputDir,
            bestCheckpoint=self.bestPath,
            lastCheckpoint=self.lastPath,
            history=self.history,
            bestEpoch=best.get("epoch"),
            bestMeanDice=best.get("dice"),
            trainCases=[c.id for c in self.trainCases],
            validationCases=[c.id for c in self.validationCases],
        )


def withDataSource(config: dict, source: str) -> dict:
    """The config with ``--data`` as its source: a folder is a Decathlon folder, a file a case CSV."""
    kind = "msd" if os.path.isdir(source) else "csv"
    if kind == "csv" and not os.path.isfile(source):
        raise TrainingError(f"--data '{source}' is neither a folder nor a file: give a prepared folder or a case CSV.")
    data = {key: value for key, value in config["data"].items() if key not in ("msd", "csv")}
    return validateConfig({**config, "data": {**data, kind: os.path.abspath(source)}}, f"config with --data '{source}'")


__all__ = [
    "CHECKPOINT_FORMAT",
    "buildNetwork",
    "buildLoss",
    "loadCheckpoint",
    "loadNetworkWeights",
    "TrainingResult",
    "train",
    "Trainer",
    "withDataSource",
]
