"""Benchmark: ``medsegunet batch`` against a shell loop of ``segment`` and against the bare network.

Not a test: run it by hand (figures in ``README.md`` beside it). Six cases (ProstateX-0000 and
-0001, each linked three times into a temporary cohort; axial T2 input, sagittal and coronal
limiting the ROI) with the 4.8 M-parameter MONAI UNet of ``benchmark_segment.py``:

1. A shell loop: one ``medsegunet segment`` process per case (imports, model load, reads each time).
2. ``medsegunet batch`` with 1 and 2 local workers, and with ``--engine ray`` (local Ray).
   Reported: wall time of the whole command, per-case seconds from ``summary.csv`` (network,
   back-resampling, statistics and writes of that case; reading runs ahead on the prefetch
   thread, statistics and writes behind on the writer thread), the marginal cost of a case (the
   6-case run minus a 1-case run, over 5), and the peak RSS of the largest process (a worker).
3. The bare network: ``sliding_window_inference`` + softmax + argmax on each case's prepared array
   in one process, the model loaded once: the per-case floor.
4. Memory against input size: ``segment --no-roi`` on synthetic volumes of 512 × 512 × K voxels
   (K = 100, 200, 400) with a known-answer threshold model; peak RSS of the process.

Usage::

    python Testing/benchmarks/benchmark_batch.py [--data ../shared/data/prostatex] [--json OUT] [--skip-ray] [--skip-memory]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_segment import CARD, buildNetwork, measure  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "prostatex"
STUDIES = {"ProstateX-0000": ("4-t2tsetra", "3-t2tsesag", "5-t2tsecor"), "ProstateX-0001": ("10-t2tsetra", "4-t2tsesag", "5-t2tsecor")}


def medsegunet() -> list[str]:
    return [sys.executable, "-c", "import sys; from MedSegUNetLib.cli import main; sys.exit(main())"]


def perCaseSeconds(summary: Path) -> list[float]:
    with open(summary, newline="") as stream:
        return [float(row["seconds"]) for row in csv.DictReader(stream) if row["status"] == "ok"]


def networkThreadSeconds(output: Path) -> list[float]:
    """Per case, the time the worker's network thread spent on it (network + back to the reference grid)."""
    import json

    seconds = []
    for statistics in sorted(output.glob("*/*-statistics.json")):
        timings = json.loads(statistics.read_text())["timing_s"]
        seconds.append(timings.get("inference", 0.0) + timings.get("postprocessing", 0.0))
    return seconds


def bareSeconds(model: str, cohort: Path) -> list[float]:
    """The network alone on each case's prepared array, model loaded once (the per-case floor)."""
    import torch
    from monai.inferers import sliding_window_inference

    from MedSegUNetLib import modelcard
    from MedSegUNetLib.batch import BatchOptions, casesFromSource, prepareCase

    card = modelcard.readCard(model)
    network = torch.jit.load(model, map_location="cpu").eval()
    options = BatchOptions(modelPath=model, modelSHA256="", outputDir=str(cohort))
    seconds = []
    for case in casesFromSource(str(cohort), card):
        _, _, prepared = prepareCase(case, card, options)
        started = time.perf_counter()
        with torch.inference_mode():
            probabilities = sliding_window_inference(torch.from_numpy(prepared.array)[None], roi_size=tuple(card["patch_size"]), sw_batch_size=card["sw_batch_size"],
                                                     predictor=lambda x: torch.softmax(network(x), 1), overlap=card["overlap"], mode="gaussian")
        probabilities[0].argmax(0).to(torch.uint8).numpy()
        seconds.append(time.perf_counter() - started)
    return seconds


def memoryScaling(folder: Path, environment: dict) -> list[dict]:
    import numpy as np
    import SimpleITK as sitk

    from MedSegUNetLib import phantoms

    model = phantoms.writeThresholdModel(folder / "threshold.pt", (0.5,), phantoms.thresholdCard([(1, "bright", (1, 1, 0))], patchSize=(128, 128, 32)))
    rows = []
    for slices in (100, 200, 400):
        array = (np.random.default_rng(0).random((slices, 512, 512)) * 1000).astype(np.int16)
        path = folder / f"volume-{slices}.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
        result = measure([*medsegunet(), "segment", "-q", "--no-roi", "--device", "cpu", "--model", model, str(path), "--output", str(folder / f"seg-{slices}.nii.gz")], environment)
        rows.append({"voxels": int(array.size), "input_mb": array.nbytes / 2**20, "peak_rss_mb": result["peak_rss_mb"], "wall_s": result["wall_s"]})
        print(f"512x512x{slices}: input {array.nbytes / 2**20:.0f} MB, peak RSS {result['peak_rss_mb']:.0f} MB, {result['wall_s']:.1f} s", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding ProstateX-0000 and ProstateX-0001")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    from MedSegUNetLib.modelcard import saveModel

    environment = dict(os.environ)
    results: dict = {}
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        network, parameters = buildNetwork()
        card = {**CARD, "inputs": [{"name": "T2", "match": ["t2", "tra"]}], "roi": {"from_series": ["t2 sag", "t2 cor"]}}
        model = str(folder / "unet.pt")
        saveModel(network, card, model)
        cohort = folder / "cohort"
        cohort.mkdir()
        for copy in range(3):
            for study in STUDIES:
                os.symlink(Path(args.data) / study, cohort / f"{study}-{copy + 1}")
        print(f"UNet {parameters / 1e6:.2f} M parameters; {len(os.listdir(cohort))} cases", flush=True)

        started = time.perf_counter()
        loop = {"wall_s": 0.0, "peak_rss_mb": 0.0}
        for case in sorted(os.listdir(cohort)):
            tra, sag, cor = STUDIES[case.rsplit("-", 1)[0]]
            base = cohort / case
            run = measure([*medsegunet(), "segment", "-q", "--device", "cpu", "--model", model, str(base / tra), "--roi-from", str(base / sag), str(base / cor),
                           "--output", str(folder / f"{case}.seg.nrrd")], environment)
            loop["peak_rss_mb"] = max(loop["peak_rss_mb"], run["peak_rss_mb"])
        loop["wall_s"] = time.perf_counter() - started
        results["shell_loop"] = loop
        print(f"shell loop of segment: {loop['wall_s']:.1f} s, peak RSS {loop['peak_rss_mb']:.0f} MB", flush=True)

        engines = [("batch_1_worker", ["--workers", "1"]), ("batch_2_workers", ["--workers", "2"])]
        if not args.skip_ray:
            engines.append(("batch_ray_2_actors", ["--engine", "ray", "--workers", "2"]))
        for name, extra in engines:
            out = folder / name
            run = measure([*medsegunet(), "batch", "-q", "--device", "cpu", "--model", model, "--cases", str(cohort), "--output", str(out), *extra], environment)
            seconds = perCaseSeconds(out / "summary.csv")
            results[name] = {"wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"], "per_case_s": seconds, "per_case_mean_s": sum(seconds) / len(seconds)}
            print(f"{name}: {run['wall_s']:.1f} s ({run['wall_s'] / loop['wall_s']:.2f}x the loop), per case {results[name]['per_case_mean_s']:.2f} s, "
                  f"peak RSS of the largest process {run['peak_rss_mb']:.0f} MB", flush=True)

        # The marginal cost of a case: the same command on one case, subtracted (start-up, imports
        # and the model load are paid once per run).
        single = folder / "single"
        single.mkdir()
        first = sorted(os.listdir(cohort))[0]
        os.symlink(os.readlink(cohort / first), single / first)
        one = measure([*medsegunet(), "batch", "-q", "--device", "cpu", "--model", model, "--cases", str(single), "--output", str(folder / "one"), "--workers", "1"], environment)
        cases = len(os.listdir(cohort))
        results["batch_1_worker"]["marginal_per_case_s"] = (results["batch_1_worker"]["wall_s"] - one["wall_s"]) / (cases - 1)
        bare = bareSeconds(model, cohort)
        results["bare_network_per_case_s"] = bare
        mean = sum(bare) / len(bare)
        marginal = results["batch_1_worker"]["marginal_per_case_s"]
        network = networkThreadSeconds(folder / "batch_1_worker")
        results["batch_1_worker"]["network_thread_per_case_s"] = network
        print(f"batch (1 worker) network thread per case: {sum(network) / len(network):.2f} s ({sum(network) / len(network) / mean:.2f}x the bare network); "
              "reading runs ahead and statistics and writes behind on other threads", flush=True)
        print(f"bare network per case: {mean:.2f} s; batch (1 worker): {results['batch_1_worker']['per_case_mean_s'] / mean:.2f}x in a case's own time, "
              f"{marginal:.2f} s per added case ({marginal / mean:.2f}x the bare network)", flush=True)
        if not args.skip_memory:
            results["memory_no_roi"] = memoryScaling(folder, environment)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
