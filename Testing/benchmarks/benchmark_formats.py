"""Benchmark: the same models as TorchScript (``.pt``), as ``torch.export`` archives (``.pt2``) and as
AOTInductor packages built from those (``segment --compile``).

Not a test: run it by hand (figures in ``README.md`` beside it). Each model of the zoo (and TAPS,
pulled fresh so that its card records its network's arguments) is converted with
``medsegunet convert``; then, in a fresh process per model and format (interleaved, median of
``--repeats``), it measures what a user waits for:

- **load**: ``modelcard.loadModel`` (the file's checks included: the operator walk of a
  TorchScript graph, the member checks of a ``.pt2`` archive);
- **first call**: one window of the card's patch;
- **sliding window**: MONAI's ``sliding_window_inference`` over a volume (3D: 192 × 192 × 40
  voxels; 2D: 24 slices of 256 × 256, as ``SliceInferer`` runs them), with the card's patch,
  overlap and ``sw_batch_size``, after the first call;
- **peak memory**: the process's ``ru_maxrss``.

The AOTInductor package of each ``.pt2`` is built once first (``compile s``: export, C++ build,
the check and the timing that decide whether it is used); its runs then load the cached package
(``engine.compiled.loadCompiledModel``). A model whose package is not faster, or does not build,
is reported as such and has no AOTInductor column.

Usage (from the repository root)::

    python Testing/benchmarks/benchmark_formats.py [--repeats 3] [--work /tmp/formats] [--json formats.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ZOO = ["prostate-zones", "brain-tumor-3d", "lgg-flair", "acdc-heart"]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
import torch
torch.set_num_threads(int(sys.argv[3]))
from monai.inferers import sliding_window_inference
from MedSegUNetLib.engine.modelcard import loadModel
from MedSegUNetLib.engine.compiled import loadCompiledModel
started = time.perf_counter()
if sys.argv[4] == "-":
    model = loadModel(sys.argv[1], "cpu")
else:
    warnings = []
    model = loadCompiledModel(sys.argv[1], "cpu", sys.argv[4], warnings.append)
    if model.compiled is None:
        print(json.dumps({"uncompiled": warnings}))
        sys.exit(0)
loaded = time.perf_counter()
card = model.card
dims = int(card["spatial_dims"])
patch = list(card.get("patch_size") or [64] * dims)
channels = len(card["inputs"])
with torch.no_grad():
    model.network(torch.randn(1, channels, *patch))
    first = time.perf_counter()
    if dims == 3:
        volume = torch.randn(1, channels, 192, 192, 40)
        sliding_window_inference(volume, patch, int(card.get("sw_batch_size") or 4), model.network,
                                 overlap=float(card.get("overlap") or 0.25), mode="gaussian")
    else:
        slices = torch.randn(24, channels, 256, 256)
        sliding_window_inference(slices, patch, int(card.get("sw_batch_size") or 16), model.network,
                                 overlap=float(card.get("overlap") or 0.25), mode="gaussian")
done = time.perf_counter()
print(json.dumps({"load": loaded - started, "first call": first - loaded, "sliding window": done - first,
                  "peak MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(path: str, threads: int, compiled: str = "-") -> dict:
    """One fresh process's figures for ``path`` (``compiled``: the package cache, ``-`` for none)."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, path, str(REPO_ROOT / "MedSegUNet"), str(threads), compiled],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def buildPackage(path: str, cache: str, threads: int) -> dict:
    """The AOTInductor package of ``path`` built once: its record and the seconds it took, or why not."""
    import time

    started = time.perf_counter()
    first = measure(path, threads, cache)
    from MedSegUNetLib.engine.compiled import packageKey, readRecord  # noqa: E402 (the parent imports torch only here)
    from MedSegUNetLib.engine.modelcard import resolveDevice

    record = readRecord(Path(cache) / packageKey(path, resolveDevice("cpu")))
    return {"compile s": time.perf_counter() - started, "record": record, "uncompiled": first.get("uncompiled")}


def medsegunet(*arguments: str, environment: dict | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "MedSegUNetLib.cli", *arguments],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "MedSegUNet"), **(environment or {})},
    )
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=tempfile.mkdtemp(prefix="formats-"))
    parser.add_argument("--json")
    parser.add_argument("--no-taps", action="store_true", help="skip TAPS (its pull needs the package index)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    models = {name: str(REPO_ROOT / "MedSegUNet" / "Resources" / "Models" / name / f"{name}.pt") for name in ZOO}
    if not args.no_taps:
        cache = work / "cache"
        models["prostate-gland-taps"] = medsegunet("models", "pull", "prostate-gland-taps", environment={"MEDSEGUNET_CACHE": str(cache)})
    results = {}
    for name, source in models.items():
        converted = str(work / f"{name}.pt2")
        if not os.path.exists(converted):
            print(medsegunet("convert", source, "--output", converted))
        cache = str(work / "compiled")
        package = buildPackage(converted, cache, args.threads)
        formats = [("TorchScript", source, "-"), (".pt2", converted, "-")]
        if package["record"] is not None and package["record"]["faster"]:
            formats.append(("AOTInductor", converted, cache))
        runs = {label: [] for label, _, _ in formats}
        for _ in range(args.repeats):
            for label, path, compiled in formats:
                runs[label].append(measure(path, args.threads, compiled))
        medians = {label: {key: statistics.median(run[key] for run in rows) for key in rows[0]} for label, rows in runs.items()}
        ratios = {
            label: {key: medians[label][key] / medians["TorchScript"][key] for key in medians[label]}
            for label in medians
            if label != "TorchScript"
        }
        results[name] = {
            "medians": medians,
            "/ TorchScript": ratios,
            "package": package,
            "MB": {"TorchScript": os.path.getsize(source) / 1e6, ".pt2": os.path.getsize(converted) / 1e6},
        }
        for label, ratio in ratios.items():
            print(
                f"\n{name} {label}: "
                + "; ".join(f"{key} {medians['TorchScript'][key]:.3g} vs {medians[label][key]:.3g} ({ratio[key]:.2f}×)" for key in ratio)
            )
        print(f"{name} package: {package['compile s']:.1f} s to build; {package['record'] or package['uncompiled']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
