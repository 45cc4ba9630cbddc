"""Benchmark: an nnU-Net v2 results folder run by ``nnUNetv2_predict`` and, imported, by ``medsegunet``.

Not a test: run it by hand (figures in ``README.md`` beside it). Whole processes, imports included,
each measured alone (wall, CPU = user + system, peak RSS of that child), in rounds (nnU-Net, then
ours, ``--repeat`` times), each figure the median of its rounds (:mod:`benchmark_published`).

The folder is ``Testing/data/nnunet/aniso3d`` (made by nnU-Net 2.8.1, ``nnunet_reference.py``), fold
0 with mirroring (``nnUNetv2_predict_from_modelfolder -f 0``, mirroring on by default; one fold keeps
a round within minutes on two cores); nnU-Net runs from its own virtual environment (``--venv``, made
by ``nnunet_reference.py``):

- one case (ProstateX-0000's axial T2, as NIfTI): ``nnUNetv2_predict_from_modelfolder`` on a folder
  holding it vs ``medsegunet segment``;
- a folder of six (ProstateX-0000 and -0001's axial and coronal T2, the fixture's two held-out
  cases): ``nnUNetv2_predict_from_modelfolder`` on the folder vs ``medsegunet batch``.

Both write label maps; the voxels on which they differ are counted.

Usage::

    python Testing/benchmarks/benchmark_nnunet.py --venv /tmp/nnunet-venv [--repeat 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from benchmark_published import inRounds

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT.parent / "shared" / "data"
FIXTURE = REPO_ROOT / "Testing" / "data" / "nnunet" / "aniso3d"
CASES = {
    "prostatex0000": DATA / "prostatex" / "ProstateX-0000" / "4-t2tsetra",
    "prostatex0001": DATA / "prostatex" / "ProstateX-0001" / "10-t2tsetra",
    "prostatex0000cor": DATA / "prostatex" / "ProstateX-0000" / "5-t2tsecor",
    "prostatex0001cor": DATA / "prostatex" / "ProstateX-0001" / "5-t2tsecor",
}


def writeCases(folder: Path) -> list[str]:
    """The six cases as nnU-Net reads them (``CASE_0000.nii.gz``, float32); returns their names."""
    from MedSegUNetLib.engine.volumes import readVolume

    folder.mkdir(parents=True)
    for name, source in CASES.items():
        sitk.WriteImage(sitk.Cast(readVolume(str(source)), sitk.sitkFloat32), str(folder / f"{name}_0000.nii.gz"))
    for image in sorted((FIXTURE / "imagesTs").glob("*_0000.nii.gz")):
        shutil.copy(image, folder / image.name)
    return sorted(path.name.replace("_0000.nii.gz", "") for path in folder.glob("*_0000.nii.gz"))


def differing(ours: Path, theirs: Path) -> int:
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(ours)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(theirs)))
    return int(np.count_nonzero(a.reshape(b.shape) != b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, required=True, help="nnU-Net's virtual environment (nnunet_reference.py makes one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    medsegunet = [str(Path(sys.executable).with_name("medsegunet"))]
    predict = str(args.venv / "bin" / "nnUNetv2_predict_from_modelfolder")
    model = next((FIXTURE / "results").glob("*/*__*__*"))
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        imported = work / "aniso3d.pt"
        subprocess.run([*medsegunet, "import", str(model), "--folds", "0", "--output", str(imported)], check=True, capture_output=True)
        names = writeCases(work / "six")
        (work / "one").mkdir()
        shutil.copy(work / "six" / "prostatex0000_0000.nii.gz", work / "one")
        nnunet = [predict, "-m", str(model), "-f", "0", "-device", "cpu", "--disable_progress_bar"]
        results = {
            "one case": inRounds(
                {
                    "nnUNetv2_predict": {"command": [*nnunet, "-i", str(work / "one"), "-o", str(work / "nnunet-one")]},
                    "medsegunet segment": {
                        "command": [
                            *medsegunet,
                            "segment",
                            "-q",
                            "--model",
                            str(imported),
                            str(work / "one" / "prostatex0000_0000.nii.gz"),
                            "--output",
                            str(work / "ours-one.nii.gz"),
                            "--device",
                            "cpu",
                        ]
                    },
                },
                args.repeat,
            ),
            "six cases": inRounds(
                {
                    "nnUNetv2_predict": {"command": [*nnunet, "-i", str(work / "six"), "-o", str(work / "nnunet-six")]},
                    "medsegunet batch": {
                        "command": [
                            *medsegunet,
                            "batch",
                            "-q",
                            "--model",
                            str(imported),
                            "--cases",
                            str(work / "six"),
                            "--output",
                            str(work / "ours-six"),
                            "--device",
                            "cpu",
                            "--force",
                        ]
                    },
                },
                args.repeat,
            ),
        }
        results["differing voxels"] = {
            "one case": differing(work / "ours-one.nii.gz", work / "nnunet-one" / "prostatex0000.nii.gz"),
            **{
                name: differing(work / "ours-six" / f"{name}_0000" / f"{name}_0000.seg.nrrd", work / "nnunet-six" / f"{name}.nii.gz")
                for name in names
            },
        }
    for group in ("one case", "six cases"):
        (peer, peerFigures), (ours, ourFigures) = results[group].items()
        results[group]["ratio (ours / nnU-Net)"] = {key: ourFigures[key] / peerFigures[key] for key in ("wall_s", "cpu_s", "peak_rss_mb")}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
