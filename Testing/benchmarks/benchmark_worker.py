"""Benchmark: the Slicer logic with the network in a worker process vs in Slicer's process.

Not a test: run it by hand (figures in ``README.md`` beside it). On a real ``vtkMRMLScene``
(slicer-core) holding ProstateX-0000's three T2 series, with the 4.8 M-parameter UNet of
``benchmark_segment.py``: the first Apply (the worker starts, imports torch and MONAI, loads the
model), the second Apply (warm worker), and the same run in-process with the model already loaded
(what a thread in Slicer's process would cost at best, without the GIL starvation).

Usage::

    python Testing/benchmarks/benchmark_worker.py [--data ../shared/data/prostatex/ProstateX-0000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_segment import CARD, DEFAULT_DATA, SERIES, buildNetwork  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import slicer

    from MedSegUNetLib.engine.modelcard import saveModel
    from MedSegUNetLib.engine.volumes import readVolume
    from MedSegUNetLib.slicer.logic import SegmentationLogic
    from MedSegUNetLib.slicer.nodes import addVolumeFromImage

    with tempfile.TemporaryDirectory() as folder:
        network, _ = buildNetwork()
        model = str(Path(folder) / "unet.pt")
        saveModel(network, CARD, model)
        scene = slicer.vtkMRMLScene()
        nodes = [addVolumeFromImage(scene, readVolume(Path(args.data) / name), name) for name in SERIES]
        worker = SegmentationLogic(scene, useWorker=True)
        started = time.perf_counter()
        worker.process([nodes[0]], model, roiVolumes=nodes[1:], device="cpu")
        first = time.perf_counter() - started
        warm, local = [], []
        inProcess = SegmentationLogic(scene)
        inProcess.process([nodes[0]], model, roiVolumes=nodes[1:], device="cpu")  # loads the model once
        for _ in range(args.repeats):
            started = time.perf_counter()
            worker.process([nodes[0]], model, roiVolumes=nodes[1:], device="cpu")
            warm.append(time.perf_counter() - started)
            started = time.perf_counter()
            inProcess.process([nodes[0]], model, roiVolumes=nodes[1:], device="cpu")
            local.append(time.perf_counter() - started)
        worker.close()
    print(f"first Apply (worker start, imports, model load): {first:.2f} s")
    print(
        f"second and later Applies (warm worker): median {statistics.median(warm):.2f} s ({statistics.median(warm) / first:.2f}x the first)"
    )
    print(
        f"in-process, model loaded: median {statistics.median(local):.2f} s; worker overhead "
        f"{statistics.median(warm) - statistics.median(local):+.2f} s "
        f"({statistics.median(warm) / statistics.median(local):.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
