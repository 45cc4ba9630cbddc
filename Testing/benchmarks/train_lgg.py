"""Benchmark: the LGG FLAIR model (``Resources/Training/lgg-flair.yaml``, then ``lgg-flair-finetune.yaml``) end to end from kaggle_3m.

Not a test: ``data prepare lgg``, ``train`` in two stages on 2 CPU cores, ``export``, then the figures of the
model sheet (``docs/models/lgg-flair.md``):

- per-patient Dice, IoU, precision and recall (mean, SD, median) on the 22 held-out test patients,
  each volume segmented by the inference engine on its own grid;
- TCGA-FG-6692 from ``../shared/data`` (a test patient, never trained on): Dice of the result on its
  skull-stripped BraTS-space FLAIR against the five-algorithm fusion's whole tumour (labels 1, 2, 4),
  and the abnormality's volume on its native FLAIR (5.5 mm, tilted, skull on) against it;
- training time, model size and inference time on the CPU.

Usage (kaggle_3m fetched with the search tool's ``fetch`` of ``hua2980/brain-tumor-segmentation``)::

    python Testing/benchmarks/train_lgg.py --source KAGGLE_3M_FOLDER --work runs/bench-lgg [--json lgg.json]

A second run reuses the prepared folder and the finished training (or resumes a cut one).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from seedtraining import REPO_ROOT, arguments, evaluateTest, modelSize, prepareTrainExport, report, step, torchThreads

FG6692 = REPO_ROOT.parent / "shared" / "data" / "brain-tumor" / "TCGA-FG-6692"
LABEL = "FLAIR abnormality"


def segmentFLAIR(model: Path, path: Path) -> tuple[np.ndarray, sitk.Image, float]:
    """The abnormality mask (KJI bool on the volume's grid), the volume, and the seconds it took."""
    from MedSegUNetLib.engine import pipeline
    from MedSegUNetLib.engine.modelcard import loadModel

    image = sitk.ReadImage(str(path))
    started = time.perf_counter()
    result = pipeline.segmentImages([image], loadModel(model, "cpu"))
    return result.masks()[0], image, time.perf_counter() - started


def millilitres(mask: np.ndarray, image: sitk.Image) -> float:
    return float(mask.sum()) * float(np.prod(image.GetSpacing())) / 1000.0


def fg6692Figures(model: Path) -> dict:
    """Dice in BraTS space against the fusion's whole tumour; native volume against it."""
    brats, bratsImage, bratsSeconds = segmentFLAIR(model, FG6692 / "brats-space" / "fla_bet.nii.gz")
    native, nativeImage, nativeSeconds = segmentFLAIR(model, FG6692 / "native" / "flair.nii.gz")
    fusion = sitk.GetArrayFromImage(sitk.ReadImage(str(FG6692 / "brats-space" / "seg_fusion_mav.nii.gz")))
    wholeTumour = np.isin(fusion, (1, 2, 4))
    dice = 2.0 * float((brats & wholeTumour).sum()) / float(brats.sum() + wholeTumour.sum())
    bratsML, nativeML = millilitres(brats, bratsImage), millilitres(native, nativeImage)
    return {
        "dice_brats_space_vs_fusion_whole_tumour": round(dice, 4),
        "fusion_whole_tumour_ml": round(millilitres(wholeTumour, bratsImage), 2),
        "brats_space_ml": round(bratsML, 2),
        "native_ml": round(nativeML, 2),
        "native_vs_brats_space_ratio": round(nativeML / bratsML, 3) if bratsML else None,
        "seconds_brats_space": round(bratsSeconds, 2),
        "seconds_native": round(nativeSeconds, 2),
    }


def main() -> None:
    args, work, timings = arguments(__doc__.splitlines()[0], "the fetched kaggle_3m folder")
    model = prepareTrainExport("lgg", args.source, work, ["lgg-flair.yaml", "lgg-flair-finetune.yaml"], timings)
    columns = [f"{metric}_{LABEL}" for metric in ("dice", "jaccard", "precision", "recall")]
    rows, summary = evaluateTest(model, work / "prepared", columns, timings)
    with step("TCGA-FG-6692", timings):
        fg = fg6692Figures(model)
    report(
        "LGG FLAIR abnormality",
        {
            "test patients": len(rows),
            "test summary": summary,
            "TCGA-FG-6692": fg,
            "per patient": [{k: row[k] for k in ("case", *columns)} for row in rows],
            "model": modelSize(model),
            "seconds": timings,
            "torch threads": torchThreads(),
            "mean inference seconds per test volume": round(float(np.mean([row["seconds"] for row in rows])), 2),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
