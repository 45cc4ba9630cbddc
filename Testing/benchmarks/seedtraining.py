"""Shared steps of ``train_lgg.py`` and ``train_acdc.py``: prepare, train, export and evaluate one of
the seeds' tasks end to end from its fetched folder, timing each step (not a test)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "MedSegUNet"))

from MedSegUNetLib.models import datasets, evaluation, exporting, trainconfig, training  # noqa: E402


def arguments(description: str, sourceHelp: str):
    """``--source``, ``--work`` and ``--json``, as both benchmarks take them."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--source", required=True, help=sourceHelp)
    parser.add_argument("--work", required=True, help="a folder for the prepared set, the run and the model")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    return args, Path(args.work).resolve(), {}


def step(name: str, timings: dict):
    """Context manager: time a step into ``timings[name]`` and say when it starts and ends."""

    class Timer:
        def __enter__(self):
            print(f"== {name}", flush=True)
            self.started = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.started, 1)
            print(f"== {name}: {timings[name]:.0f} s", flush=True)

    return Timer()


def prepareTrainExport(kind: str, source: str, work: Path, recipes: list[str], timings: dict) -> Path:
    """``data prepare`` (once), ``train`` each recipe in turn (stage 2 on from stage 1's best weights
    with ``--init``; a cut stage is resumed, a finished one kept), ``export`` the last stage's best."""
    prepared, model = work / "prepared", work / f"{Path(recipes[0]).stem}.pt"
    if not (prepared / "dataset.json").is_file():
        with step("prepare", timings):
            document = datasets.prepare(kind, source, prepared, progress=print)
            for line in datasets.summary(document, prepared):
                print(line)
    init = None
    for number, recipe in enumerate(recipes, start=1):
        run = work / ("run" if number == 1 else f"run-{number}")
        config = yaml.safe_load((REPO_ROOT / "Resources" / "Training" / recipe).read_text(encoding="utf-8"))
        config["data"]["msd"] = str(prepared)
        config = trainconfig.validateConfig(config, recipe)
        last = run / "checkpoint_last.pt"
        done = last.is_file() and int(training.loadCheckpoint(last)["epoch"]) >= int(config["epochs"])
        if not done:
            with step(f"train stage {number} ({recipe})", timings):
                resume = last if last.is_file() else None
                training.train(config, run, resume=resume, init=None if resume else init, device="cpu")
        init = run / "checkpoint_best.pt"
    with step("export", timings):
        # The card from the last recipe as it stands (name, version, description), as the sheet's
        # 'medsegunet export --config' makes it.
        exporting.exportCheckpoint(init, model, REPO_ROOT / "Resources" / "Training" / recipes[-1])
    return model


def evaluateTest(model: Path, prepared: Path, columns: list[str], timings: dict) -> tuple[list[dict], dict]:
    """Per-case figures on the prepared set's test patients and their mean, SD and median."""
    with step("evaluate test patients", timings):
        rows = evaluation.evaluateCases(model, evaluation.testEntries(prepared), device="cpu", progress=print)
    return rows, evaluation.summarize(rows, columns)


def report(name: str, results: dict, jsonPath: str | None) -> None:
    print(f"\n## {name}\n")
    for key, value in results.items():
        print(f"- {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    if jsonPath:
        Path(jsonPath).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def modelSize(model: Path) -> dict:
    from MedSegUNetLib.engine.modelcard import loadModel

    network = loadModel(model, "cpu").network
    return {"bytes": os.path.getsize(model), "parameters": int(sum(p.numel() for p in network.parameters()))}


def torchThreads() -> int:
    import torch

    return torch.get_num_threads()
