"""Benchmark: the heart model (``Resources/Training/acdc-heart.yaml``, then ``acdc-heart-finetune.yaml``) end to end from ACDC.

Not a test: ``data prepare acdc``, ``train`` in two stages on 2 CPU cores, ``export``, then the figures of the
model sheet (``docs/models/acdc-heart.md``): Dice, IoU, precision and recall of the left-ventricle
cavity, myocardium and right ventricle (mean, SD, median) on ACDC's 20 test patients (the
repository's ``test.list``, never trained on), at end-diastole (``frame01``) and end-systole
(``frame02``) apart, each volume segmented by the inference engine; training time, model size and
inference time on the CPU.

Usage (ACDC fetched with the search tool's ``fetch`` of ``antares0811/3DCardiac``; the folder
holding ``train.list``, ``val.list``, ``test.list`` and ``data/``)::

    python Testing/benchmarks/train_acdc.py --source ACDC_FOLDER --work runs/bench-acdc [--json acdc.json]
"""

from __future__ import annotations

import numpy as np
from seedtraining import arguments, evaluateTest, modelSize, prepareTrainExport, report, torchThreads

from MedSegUNetLib.models import evaluation

LABELS = ("left ventricle cavity", "myocardium", "right ventricle")


def main() -> None:
    args, work, timings = arguments(__doc__.splitlines()[0], "the fetched ACDC folder (train.list, val.list, test.list, data/)")
    model = prepareTrainExport("acdc", args.source, work, ["acdc-heart.yaml", "acdc-heart-finetune.yaml"], timings)
    columns = [f"{metric}_{label}" for label in LABELS for metric in ("dice", "jaccard", "precision", "recall")]
    rows, summary = evaluateTest(model, work / "prepared", columns, timings)
    phases = {
        phase: evaluation.summarize([row for row in rows if row["case"].endswith(frame)], columns)
        for phase, frame in (("end-diastole", "frame01"), ("end-systole", "frame02"))
    }
    report(
        "Heart on short-axis cine (ACDC)",
        {
            "test frames": len(rows),
            "test summary": summary,
            "by phase": phases,
            "per frame": [{k: row[k] for k in ("case", *(f"dice_{label}" for label in LABELS))} for row in rows],
            "model": modelSize(model),
            "seconds": timings,
            "torch threads": torchThreads(),
            "mean inference seconds per test volume": round(float(np.mean([row["seconds"] for row in rows])), 2),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
