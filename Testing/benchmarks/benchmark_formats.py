"""Benchmark: the same models as TorchScript (``.pt``) and as ``torch.export`` archives (``.pt2``).

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
started = time.perf_counter()
model = loadModel(sys.argv[1], "cpu")
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
        sliding_window_inference(volume, patch, int(card.get("sw_batch_size") or 4), model.network, overlap=float(card.get("overlap") or 0.25), mode="gaussian")
    else:
        slices = torch.randn(24, channels, 256, 256)
        sliding_window_inference(slices, patch, int(card.get("sw_batch_size") or 16), model.network, overlap=float(card.get("overlap") or 0.25), mode="gaussian")
done = time.perf_counter()
print(json.dumps({"load": loaded - started, "first call": first - loaded, "sliding window": done - first,
                  "peak MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(path: str, threads: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, path, str(REPO_ROOT / "MedSegUNet"), str(threads)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def medsegunet(*arguments: str, environment: dict | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "MedSegUNetLib.cli", *arguments], capture_output=True, text=True, check=True,
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "MedSegUNet"), **(environment or {})})
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
    models = {name: str(REPO_ROOT / "Resources" / "Models" / name / f"{name}.pt") for name in ZOO}
    if not args.no_taps:
        cache = work / "cache"
        models["prostate-gland-taps"] = medsegunet("models", "pull", "prostate-gland-taps", environment={"MEDSEGUNET_CACHE": str(cache)})
    results = {}
    for name, source in models.items():
        converted = str(work / f"{name}.pt2")
        if not os.path.exists(converted):
            print(medsegunet("convert", source, "--output", converted))
        runs = {"TorchScript": [], ".pt2": []}
        for _ in range(args.repeats):
            for label, path in (("TorchScript", source), (".pt2", converted)):
                runs[label].append(measure(path, args.threads))
        medians = {label: {key: statistics.median(run[key] for run in rows) for key in rows[0]} for label, rows in runs.items()}
        ratios = {key: medians[".pt2"][key] / medians["TorchScript"][key] for key in medians[".pt2"]}
        results[name] = {"medians": medians, ".pt2 / TorchScript": ratios,
                         "MB": {"TorchScript": os.path.getsize(source) / 1e6, ".pt2": os.path.getsize(converted) / 1e6}}
        print(f"\n{name}: " + "; ".join(f"{key} {medians['TorchScript'][key]:.3g} vs {medians['.pt2'][key]:.3g} ({ratios[key]:.2f}×)" for key in ratios))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
