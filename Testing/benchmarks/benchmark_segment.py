"""Benchmark: ``medsegunet segment`` end to end vs plain MONAI sliding-window inference.

Not a test: run it by hand (see ``README.md`` beside it for the figures). On ProstateX-0000 (axial
T2 reference, sagittal and coronal limiting the ROI) with a 3D MONAI UNet of about 5 M parameters:

1. Whole processes, imports included, as a user waits for them:
   (a) ``medsegunet segment --model M.pt --roi-from SAG COR --output seg.seg.nrrd TRA`` and
   (b) a bare script that loads the same TorchScript network, ``np.load``s the same cropped,
   normalised array (saved beforehand) and runs MONAI's ``sliding_window_inference`` + argmax.
   Reported: wall time (median of ``--repeats``), their ratio, and peak RSS of each child.
2. In-process: ``pipeline.segmentImages`` timings (network vs everything else), on the ROI and on
   the whole axial volume (``--no-roi``).

Usage::

    python Testing/benchmarks/benchmark_segment.py [--data ../shared/data/prostatex/ProstateX-0000] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as pystats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "prostatex" / "ProstateX-0000"
SERIES = ("4-t2tsetra", "3-t2tsesag", "5-t2tsecor")

CARD = {
    "schema": "medsegunet.model/1",
    "name": "Benchmark UNet (untrained, ~5 M parameters)",
    "spatial_dims": 3,
    "inputs": [{"name": "T2"}],
    "labels": [
        {"value": 1, "name": "peripheral zone", "color": [0.9, 0.6, 0.3]},
        {"value": 2, "name": "transition zone", "color": [0.3, 0.6, 0.9]},
    ],
    "output": "softmax",
    "normalization": {"type": "zscore", "nonzero": True},
    "spacing": None,
    "orientation": None,
    "patch_size": [96, 96, 16],
    "overlap": 0.25,
    "sw_batch_size": 4,
}

# The bare run: only what plain MONAI needs to produce a label array from the same network and array.
BARE_SCRIPT = r"""
import sys
import numpy as np
import torch
from monai.inferers import sliding_window_inference
network = torch.jit.load(sys.argv[1], map_location="cpu").eval()
array = np.load(sys.argv[2])
with torch.inference_mode():
    probabilities = sliding_window_inference(torch.from_numpy(array)[None], roi_size=(96, 96, 16), sw_batch_size=4,
                                             predictor=lambda x: torch.softmax(network(x), 1), overlap=0.25, mode="gaussian")
labels = probabilities[0].argmax(0).to(torch.uint8).numpy()
np.save(sys.argv[3], labels)
"""

# Runs one command as a child and reports its wall time and peak RSS (ru_maxrss of that child only).
MEASURE_SCRIPT = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[1:])
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": code, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024.0}))
"""


def buildNetwork():
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    network = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    return network.eval(), sum(p.numel() for p in network.parameters())


def measure(command: list[str], environment: dict) -> dict:
    output = subprocess.run([sys.executable, "-c", MEASURE_SCRIPT, *command], capture_output=True, text=True, env=environment)
    result = json.loads(output.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"command failed ({result['rc']}): {' '.join(command)}\n{output.stderr}")
    return result


def summary(runs: list[dict]) -> dict:
    return {
        "wall_s_median": pystats.median(r["wall_s"] for r in runs),
        "wall_s_all": [round(r["wall_s"], 3) for r in runs],
        # CPU time (user + system) is less sensitive than wall time to other jobs on a shared machine.
        "cpu_s_median": pystats.median(r["cpu_s"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="ProstateX-0000 folder (series sub-folders)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every process (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    import numpy as np
    import torch

    from MedSegUNetLib.engine import geometry, modelcard, pipeline, preprocessing
    from MedSegUNetLib.engine.volumes import readVolume

    data = Path(args.data)
    if not data.exists():
        print(f"real data '{data}' is absent; nothing to benchmark", file=sys.stderr)
        return 1
    paths = [str(data / name) for name in SERIES]
    environment = dict(os.environ)
    if args.threads:
        torch.set_num_threads(args.threads)
        environment["OMP_NUM_THREADS"] = str(args.threads)
    results: dict = {"threads": torch.get_num_threads(), "python": sys.version.split()[0], "torch": torch.__version__}

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        network, parameters = buildNetwork()
        results["parameters"] = parameters
        modelPath = folder / "unet.pt"
        modelcard.saveModel(network, CARD, modelPath)

        # The same cropped, normalised arrays the engine hands to the network (ROI and whole volume).
        images = [readVolume(path) for path in paths]
        loaded = modelcard.loadModel(modelPath, "cpu")
        arrays = {}
        for name, useROI in (("roi", True), ("whole", False)):
            roi = pipeline.resolveROI(images[:1], SERIES[:1], images[1:], SERIES[1:], useROI=useROI)
            roiGrid = geometry.cropToROI(preprocessing.emptyLike(images[0]), roi)
            grid = preprocessing.modelGrid(roiGrid, CARD["spacing"], CARD["orientation"])
            arrays[name] = preprocessing.prepareInputs(images[:1], grid, loaded.card["normalization"])
            np.save(folder / f"{name}.npy", arrays[name])
            results[f"{name}_array_shape_cijk"] = list(arrays[name].shape)

        # 1. Whole processes.
        for name, extra in (("roi", ["--roi-from", paths[1], paths[2]]), ("whole", ["--no-roi"])):
            # The installed console script, as a user runs it.
            script = Path(sys.executable).with_name("medsegunet")
            launcher = [str(script)] if script.exists() else [sys.executable, "-m", "MedSegUNetLib.cli"]
            # INPUT before --roi-from: that option takes one or more values and would swallow it.
            segment = [
                *launcher,
                "segment",
                paths[0],
                "--model",
                str(modelPath),
                "--device",
                "cpu",
                "--output",
                str(folder / f"{name}.seg.nrrd"),
                *extra,
            ]
            results[f"command_segment_{name}"] = " ".join(["medsegunet", *segment[len(launcher) :]])
            bare = [sys.executable, "-c", BARE_SCRIPT, str(modelPath), str(folder / f"{name}.npy"), str(folder / f"{name}_labels.npy")]
            engineRuns, bareRuns = [], []
            for _ in range(args.repeats):
                # Interleaved so that load changes on the shared machine hit both alike.
                engineRuns.append(measure(segment, environment))
                bareRuns.append(measure(bare, environment))
            engine, plain = summary(engineRuns), summary(bareRuns)
            results[f"process_{name}"] = {
                "medsegunet_segment": engine,
                "bare_monai": plain,
                "ratio_wall": engine["wall_s_median"] / plain["wall_s_median"],
                "ratio_cpu": engine["cpu_s_median"] / plain["cpu_s_median"],
            }
            print(
                f"[process, {name}] medsegunet {engine['wall_s_median']:.2f} s ({engine['peak_rss_mb']:.0f} MB) vs bare MONAI "
                f"{plain['wall_s_median']:.2f} s ({plain['peak_rss_mb']:.0f} MB): ratio "
                f"{engine['wall_s_median'] / plain['wall_s_median']:.3f} "
                f"(CPU time {engine['cpu_s_median']:.1f} s vs {plain['cpu_s_median']:.1f} s, ratio "
                f"{engine['cpu_s_median'] / plain['cpu_s_median']:.3f})",
                flush=True,
            )

        # 2. In-process: network vs everything else, model loaded once (as in Slicer).
        for name, useROI in (("roi", True), ("whole", False)):
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = pipeline.segmentImages(
                    images[:1], loaded, names=SERIES[:1], roiImages=images[1:], roiNames=SERIES[1:], useROI=useROI
                )
                total = time.perf_counter() - start
                runs.append({"total_s": total, **result.timings})
            best = min(runs, key=lambda r: r["total_s"])
            # Bare in-process network time on the same array for comparison.
            from monai.inferers import sliding_window_inference

            start = time.perf_counter()
            with torch.inference_mode():
                probabilities = sliding_window_inference(
                    torch.from_numpy(arrays[name])[None],
                    roi_size=(96, 96, 16),
                    sw_batch_size=4,
                    predictor=lambda x: torch.softmax(loaded.network(x), 1),
                    overlap=0.25,
                    mode="gaussian",
                )
                probabilities[0].argmax(0)
            bareSeconds = time.perf_counter() - start
            results[f"inprocess_{name}"] = {
                "timings_s": {k: round(v, 4) for k, v in best.items()},
                "network_s": round(best["inference"], 4),
                "everything_else_s": round(best["total_s"] - best["inference"], 4),
                "bare_sliding_window_s": round(bareSeconds, 4),
                "roi_size": list(result.roi.size),
            }
            print(
                f"[in-process, {name}] total {best['total_s']:.2f} s = network {best['inference']:.2f} s + rest "
                f"{best['total_s'] - best['inference']:.2f} s; bare sliding window {bareSeconds:.2f} s",
                flush=True,
            )

    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
