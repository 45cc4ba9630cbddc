"""Benchmark: an imported ONNX model through ``medsegunet segment`` against its source runtime.

Not a test: run it by hand (figures in ``README.md`` beside it). A MONAI SegResNetDS (untrained,
weights fixed by a seed) is exported to ONNX with ``torch.onnx.export``'s defaults (the dynamo
exporter; its optimiser folds the batch norms into the convolutions) and imported with
``medsegunet import``. On ProstateX-0000's axial T2:

1. ``segment`` on the whole volume (``--no-roi``), on the three-series ROI, and on the ROI with 10 mm
   of context: wall time and peak RSS of the process (imports included).
2. The source runtime on the same case: a process that reads the axial T2, normalises it the same
   way and runs onnxruntime over MONAI's sliding window on the whole volume.
3. Dice between ``segment``'s whole-volume labels and onnxruntime's (1.0 = the same answer).

Usage::

    python Testing/benchmarks/benchmark_import.py [--data ../shared/data/prostatex/ProstateX-0000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_segment import DEFAULT_DATA, SERIES, measure  # noqa: E402

SOURCE_RUNTIME = r"""
import sys
import numpy as np
import onnxruntime
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from MedSegUNetLib.engine.preprocessing import imageToIJK, normalize
from MedSegUNetLib.engine.volumes import readVolume
image = readVolume(sys.argv[2])
array = normalize(np.asarray(imageToIJK(image), dtype=np.float32)[None], {"type": "zscore", "nonzero": True})
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
predict = lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
with torch.inference_mode():
    logits = sliding_window_inference(torch.from_numpy(array)[None], roi_size=(64, 64, 16), sw_batch_size=2, predictor=predict,
                                      overlap=0.25, mode="gaussian")
labels = logits[0].argmax(0).numpy().astype(np.uint8).transpose(2, 1, 0)
out = sitk.GetImageFromArray(labels)
out.CopyInformation(image)
sitk.WriteImage(out, sys.argv[3])
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    args = parser.parse_args()
    import os

    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.networks.nets import SegResNetDS

    environment = dict(os.environ)
    medsegunet = [sys.executable, "-c", "import sys; from MedSegUNetLib.cli import main; sys.exit(main())"]
    tra, sag, cor = (str(Path(args.data) / name) for name in SERIES)
    results = {}
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        torch.manual_seed(0)
        network = SegResNetDS(spatial_dims=3, in_channels=1, out_channels=2, init_filters=16, blocks_down=(1, 2, 2, 4)).eval()
        torch.onnx.export(
            network,
            (torch.randn(2, 1, 64, 64, 16),),
            str(folder / "model.onnx"),
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes={"x": {0: "n", 2: "i", 3: "j", 4: "k"}},
        )
        card = {
            "schema": "medsegunet.model/2",
            "name": "Imported SegResNetDS (benchmark)",
            "spatial_dims": 3,
            "inputs": [{"name": "T2"}],
            "labels": [{"value": 1, "name": "foreground", "color": [0.9, 0.5, 0.2]}],
            "output": "softmax",
            "normalization": {"type": "zscore", "nonzero": True},
            "patch_size": [64, 64, 16],
            "overlap": 0.25,
            "sw_batch_size": 2,
            "blend": "logits",
            "network": {
                "_target_": "monai.networks.nets.SegResNetDS",
                "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 16, "blocks_down": [1, 2, 2, 4]},
            },
        }
        (folder / "card.json").write_text(json.dumps(card))
        measure(
            [
                *medsegunet,
                "import",
                str(folder / "model.onnx"),
                "--card",
                str(folder / "card.json"),
                "--output",
                str(folder / "imported.pt"),
                "-q",
            ],
            environment,
        )
        runs = {
            "whole volume": ["--no-roi"],
            "ROI": ["--roi-from", sag, cor],
            "ROI + 10 mm context": ["--roi-from", sag, cor, "--context", "10"],
        }
        for name, extra in runs.items():
            output = folder / f"{name.replace(' ', '_').replace('+', '')}.nii.gz"
            run = measure(
                [
                    *medsegunet,
                    "segment",
                    "-q",
                    "--device",
                    "cpu",
                    "--model",
                    str(folder / "imported.pt"),
                    tra,
                    *extra,
                    "--output",
                    str(output),
                ],
                environment,
            )
            results[name] = {"wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "peak_rss_mb": run["peak_rss_mb"], "output": str(output)}
            print(
                f"segment, {name}: {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU, peak RSS {run['peak_rss_mb']:.0f} MB", flush=True
            )
        source = measure(
            [sys.executable, "-c", SOURCE_RUNTIME, str(folder / "model.onnx"), tra, str(folder / "source.nii.gz")], environment
        )
        print(
            f"onnxruntime, whole volume: {source['wall_s']:.1f} s wall, {source['cpu_s']:.1f} s CPU, peak RSS {source['peak_rss_mb']:.0f} "
            "MB",
            flush=True,
        )
        ours = sitk.GetArrayFromImage(sitk.ReadImage(results["whole volume"]["output"])) == 1
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "source.nii.gz"))) == 1
        dice = 2 * np.logical_and(ours, theirs).sum() / max(ours.sum() + theirs.sum(), 1)
        print(f"Dice, segment vs onnxruntime on the whole volume: {dice:.4f} ({int(ours.sum())} vs {int(theirs.sum())} voxels)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
