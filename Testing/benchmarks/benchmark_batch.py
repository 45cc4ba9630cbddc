"""Benchmark: ``medsegunet batch`` against a shell loop of ``segment`` and against the bare network.

Not a test: run it by hand (figures in ``README.md`` beside it). Six cases (ProstateX-0000 and
-0001, each linked three times into a temporary cohort; axial T2 input, sagittal and coronal
limiting the ROI) with the 4.8 M-parameter MONAI UNet of ``benchmark_segment.py``:

1. A shell loop: one ``medsegunet segment`` process per case (imports, model load, reads each time).
2. ``medsegunet batch`` with 1 and 2 local workers, and with ``--engine ray`` (local Ray).
   Reported: wall time of the whole command; per case in the run (from the first case's end to
   the last's in ``summary.csv``'s ``finished`` column, over the five cases between: start-up,
   imports and the model load excluded); a case's own time (``seconds``: network,
   back-resampling, statistics and writes; reading runs ahead on the prefetch thread, statistics
   and writes behind on the writer thread); the peak RSS of the largest process (a worker).
3. The bare network: ``sliding_window_inference`` + softmax + argmax on each case's prepared array
   in one process, the model loaded once (its first two, profiling, calls not timed): the per-case
   floor. The 1-worker run and the bare network are measured in turn three times (medians), with
   the network on every core (the default), and with ``--threads 1`` (bare:
   ``torch.set_num_threads(1)``), the other core left to reading and writing as a GPU would leave
   the CPU to them.
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


def bareSeconds(model: str, cohort: Path, threads: int) -> list[float]:
    """The network alone on each case's prepared array, model loaded once (the per-case floor)."""
    import torch
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(threads)
    from MedSegUNetLib.cohorts.casejob import BatchOptions, prepareCase
    from MedSegUNetLib.cohorts.cases import casesFromSource
    from MedSegUNetLib.engine import modelcard

    card = modelcard.readCard(model)
    network = torch.jit.load(model, map_location="cpu").eval()
    options = BatchOptions(modelPath=model, modelSHA256="", outputDir=str(cohort))
    seconds = []
    cases = casesFromSource(str(cohort), card)
    for index, case in enumerate([cases[0], cases[0], *cases]):  # TorchScript profiles its first two calls: not timed
        _, _, prepared = prepareCase(case, card, options)
        started = time.perf_counter()
        with torch.inference_mode():
            probabilities = sliding_window_inference(
                torch.from_numpy(prepared.array)[None],
                roi_size=tuple(card["patch_size"]),
                sw_batch_size=card["sw_batch_size"],
                predictor=lambda x: torch.softmax(network(x), 1),
                overlap=card["overlap"],
                mode="gaussian",
            )
        probabilities[0].argmax(0).to(torch.uint8).numpy()
        if index >= 2:
            seconds.append(time.perf_counter() - started)
    return seconds


def steadySeconds(summary: Path) -> float:
    """Per case once a run is going: from the first case's end to the last's, over the cases between."""
    import datetime

    with open(summary, newline="") as stream:
        ends = sorted(datetime.datetime.fromisoformat(row["finished"]) for row in csv.DictReader(stream) if row["status"] == "ok")
    return (ends[-1] - ends[0]).total_seconds() / (len(ends) - 1)


def memoryScaling(folder: Path, environment: dict) -> list[dict]:
    import numpy as np
    import SimpleITK as sitk

    from MedSegUNetLib.models import phantoms

    model = phantoms.writeThresholdModel(
        folder / "threshold.pt", (0.5,), phantoms.thresholdCard([(1, "bright", (1, 1, 0))], patchSize=(128, 128, 32))
    )
    rows = []
    for slices in (100, 200, 400):
        array = (np.random.default_rng(0).random((slices, 512, 512)) * 1000).astype(np.int16)
        path = folder / f"volume-{slices}.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
        result = measure(
            [
                *medsegunet(),
                "segment",
                "-q",
                "--no-roi",
                "--device",
                "cpu",
                "--model",
                model,
                str(path),
                "--output",
                str(folder / f"seg-{slices}.nii.gz"),
            ],
            environment,
        )
        rows.append(
            {"voxels": int(array.size), "input_mb": array.nbytes / 2**20, "peak_rss_mb": result["peak_rss_mb"], "wall_s": result["wall_s"]}
        )
        print(
            f"512x512x{slices}: input {array.nbytes / 2**20:.0f} MB, peak RSS {result['peak_rss_mb']:.0f} MB, {result['wall_s']:.1f} s",
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding ProstateX-0000 and ProstateX-0001")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    from MedSegUNetLib.engine.modelcard import saveModel

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
            run = measure(
                [
                    *medsegunet(),
                    "segment",
                    "-q",
                    "--device",
                    "cpu",
                    "--model",
                    model,
                    str(base / tra),
                    "--roi-from",
                    str(base / sag),
                    str(base / cor),
                    "--output",
                    str(folder / f"{case}.seg.nrrd"),
                ],
                environment,
            )
            loop["peak_rss_mb"] = max(loop["peak_rss_mb"], run["peak_rss_mb"])
        loop["wall_s"] = time.perf_counter() - started
        results["shell_loop"] = loop
        print(f"shell loop of segment: {loop['wall_s']:.1f} s, peak RSS {loop['peak_rss_mb']:.0f} MB", flush=True)

        # Per case in a run: the time between the first and the last case's end (summary.csv's
        # "finished"), over the cases between them: start-up, imports and the model load excluded.
        # The machine's load varies from second to second, so the 1-worker runs and the bare
        # network are measured in turn three times and their medians compared. The network runs on
        # every core (the default), then on one core with --threads 1, the other left to reading
        # and writing, as a GPU leaves the CPU to them.
        cores = os.cpu_count() or 1
        engines = [("batch_1_worker", ["--workers", "1"], cores)]
        if cores > 1:
            engines.append(("batch_1_worker_1_thread", ["--workers", "1", "--threads", "1"], 1))
        engines.append(("batch_2_workers", ["--workers", "2"], None))
        if not args.skip_ray:
            engines.append(("batch_ray_2_actors", ["--engine", "ray", "--workers", "2"], None))
        bare: dict[int, list[float]] = {}
        for name, extra, threads in engines:
            runs = []
            for repeat in range(3 if threads else 1):
                out = folder / f"{name}-{repeat}"
                run = measure(
                    [
                        *medsegunet(),
                        "batch",
                        "-q",
                        "--device",
                        "cpu",
                        "--model",
                        model,
                        "--cases",
                        str(cohort),
                        "--output",
                        str(out),
                        *extra,
                    ],
                    environment,
                )
                runs.append(
                    {
                        **run,
                        "steady_s": steadySeconds(out / "summary.csv"),
                        "own_s": perCaseSeconds(out / "summary.csv"),
                        "network_s": networkThreadSeconds(out),
                    }
                )
                if threads:
                    seconds = bareSeconds(model, cohort, threads)
                    bare.setdefault(threads, []).append(sum(seconds) / len(seconds))
            run = sorted(runs, key=lambda r: r["steady_s"])[len(runs) // 2]
            results[name] = {
                "wall_s": run["wall_s"],
                "peak_rss_mb": run["peak_rss_mb"],
                "per_case_s": run["own_s"],
                "per_case_mean_s": sum(run["own_s"]) / len(run["own_s"]),
                "steady_per_case_s": [r["steady_s"] for r in runs],
                "network_thread_per_case_s": run["network_s"],
            }
            line = (
                f"{name}: {run['wall_s']:.1f} s ({run['wall_s'] / loop['wall_s']:.2f}x the loop), {run['steady_s']:.3f} s per case in the "
                "run, "
                f"a case's own time {results[name]['per_case_mean_s']:.3f} s, peak RSS of the largest process {run['peak_rss_mb']:.0f} MB"
            )
            if threads:
                floor = sorted(bare[threads])[len(bare[threads]) // 2]
                results[name].update(threads=threads, bare_network_means_s=bare[threads])
                network = sum(run["network_s"]) / len(run["network_s"])
                line += (
                    f"; bare network on {threads} thread(s) {floor:.3f} s per case: per case in the run {run['steady_s'] / floor:.2f}x, "
                    f"network thread {network / floor:.2f}x (runs {[round(r['steady_s'], 3) for r in runs]}, bare "
                    f"{[round(v, 3) for v in bare[threads]]})"
                )
            print(line, flush=True)
        if not args.skip_memory:
            results["memory_no_roi"] = memoryScaling(folder, environment)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
