"""Benchmark: published models run by their home tools and by ``medsegunet segment``, in one run.

Not a test: run it by hand (figures in ``README.md`` beside it). Whole processes, imports included,
each measured alone (wall, CPU = user + system, peak RSS of that child):

- TAPS (``lavlab-taps`` 1.1.2): its own command (``taps segment --device cpu``, run from its
  unpacked wheel) on the axial T2 of ProstateX-0000 and -0001, vs ``medsegunet segment --model
  prostate-gland-taps`` on the whole volume (``--no-roi``, the same field of view) and with the three
  series' ROI and the card's context. Dice: ours vs home (same field of view), and each vs the two AI
  gland readers of ``../shared/data/prostatex/labels``.
- deepbet 1.0.2: its own ``run_bet`` (one process per case, and its folder mode: one process for
  all) on TCGA-FG-6692's native T1 and BraTS-GLI-00001's t1n, vs ``medsegunet segment --model
  brain-mask-deepbet`` (one process per case) and ``medsegunet batch`` over the same two cases.
  Dice: ours vs home, and each vs the BraTS t1n's non-zero region (the BraTS pipeline's brain).

The catalog models must be pulled first (``medsegunet models pull prostate-gland-taps`` and
``brain-mask-deepbet``); TAPS's wheel is fetched with ``pip download --no-deps`` when absent.

Usage::

    python Testing/benchmarks/benchmark_published.py [--json results.json] [--only taps|deepbet]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT.parent / "shared" / "data"

MEASURE_SCRIPT = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": code, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024.0}))
"""

TAPS_COMMAND = "import sys; from taps.cli import main; sys.exit(main(sys.argv[1:]))"
DEEPBET_COMMAND = "import sys; from deepbet import run_bet; n = len(sys.argv) // 2; run_bet(sys.argv[1:n + 1], mask_paths=sys.argv[n + 1:], no_gpu=True)"


def measure(command: list[str], environment: dict | None = None, cwd: str | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE_SCRIPT, *command], capture_output=True, text=True, env=environment, cwd=cwd)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"command failed ({result['rc']}): {' '.join(command)}")
    return result


def mask(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(2 * (a & b).sum() / (a.sum() + b.sum())), 4)


def tapsPackage(folder: Path) -> Path:
    """TAPS's wheel unpacked (pip download --no-deps), for its own command."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder), "lavlab-taps==1.1.2"], check=True)
    with zipfile.ZipFile(next(folder.glob("*.whl"))) as archive:
        archive.extractall(folder / "pkg")
    return folder / "pkg"


def seriesFolder(case: str, name: str) -> str:
    return glob.glob(str(DATA / "prostatex" / case / f"*{name}"))[0]


def benchmarkTAPS(work: Path) -> list[dict]:
    package = tapsPackage(work)
    rows = []
    for case in ("ProstateX-0000", "ProstateX-0001"):
        tra, sag, cor = (seriesFolder(case, name) for name in ("t2tsetra", "t2tsesag", "t2tsecor"))
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(tra))
        sitk.WriteImage(reader.Execute(), str(work / f"{case}.nii.gz"))
        home = work / f"{case}-taps.nii.gz"
        runs = {"home": measure([sys.executable, "-c", TAPS_COMMAND, "segment", f"{case}.nii.gz", home.name, "--device", "cpu", "--exact"],
                                dict(os.environ, PYTHONPATH=str(package)), cwd=str(work))}
        for kind, extra in (("whole volume", ["--no-roi"]), ("three-series ROI", ["--roi-from", sag, cor])):
            out = work / f"{case}-{kind.split()[0]}.nii.gz"
            runs[kind] = measure([sys.executable, "-m", "MedSegUNetLib.cli", "segment", "-q", "--device", "cpu", "--model", "prostate-gland-taps", tra, *extra, "--output", str(out)])
            runs[kind]["path"] = out
        readers = {name: mask(DATA / "prostatex" / "labels" / f"{case}_gland_AI-{name}.nii.gz") for name in ("Bosma22b", "Guerbet23")}
        homeMask = mask(home)
        for kind, run in runs.items():
            ours = homeMask if kind == "home" else mask(run.pop("path"))
            row = {"model": "TAPS", "case": case, "run": kind, **{k: round(v, 2) for k, v in run.items() if k != "rc"},
                   "dice_vs_home": 1.0 if kind == "home" else dice(ours, homeMask), **{f"dice_{n}": dice(ours, r) for n, r in readers.items()}}
            row["wall_ratio_to_home"] = round(run["wall_s"] / runs["home"]["wall_s"], 3)
            rows.append(row)
    return rows


def benchmarkDeepbet(work: Path) -> list[dict]:
    cases = {"TCGA-FG-6692 T1": DATA / "brain-tumor" / "TCGA-FG-6692" / "native" / "t1.nii.gz",
             "BraTS-GLI-00001 t1n": DATA / "brain-tumor" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz"}
    folder = work / "cohort"
    for index, path in enumerate(cases.values()):
        (folder / f"case{index}").mkdir(parents=True)
        os.symlink(path, folder / f"case{index}" / "t1.nii.gz")
    brain = mask(cases["BraTS-GLI-00001 t1n"])
    rows = []
    for index, (case, path) in enumerate(cases.items()):
        home, ours = work / f"deepbet{index}.nii.gz", work / f"ours{index}.nii.gz"
        runs = {"home": measure([sys.executable, "-c", DEEPBET_COMMAND, str(path), str(home)]),
                "segment": measure([sys.executable, "-m", "MedSegUNetLib.cli", "segment", "-q", "--device", "cpu", "--model", "brain-mask-deepbet", str(path), "--output", str(ours)])}
        for kind, run in runs.items():
            result = mask(home if kind == "home" else ours)
            row = {"model": "deepbet", "case": case, "run": kind, **{k: round(v, 2) for k, v in run.items() if k != "rc"},
                   "dice_vs_home": 1.0 if kind == "home" else dice(result, mask(home)), "volume_ml": round(float(result.sum()) * float(np.prod(sitk.ReadImage(str(path)).GetSpacing())) / 1000, 1),
                   "wall_ratio_to_home": round(run["wall_s"] / runs["home"]["wall_s"], 3)}
            if "BraTS" in case:
                row["dice_brats_brain"] = dice(result, brain)
            rows.append(row)
    homeFolder = measure([sys.executable, "-c", DEEPBET_COMMAND, *map(str, cases.values()), *[str(work / f"folder{i}.nii.gz") for i in range(len(cases))]])
    batch = measure([sys.executable, "-m", "MedSegUNetLib.cli", "batch", "--cases", str(folder), "--model", "brain-mask-deepbet", "--device", "cpu", "--output", str(work / "batch")])
    for kind, run in (("home folder mode", homeFolder), ("batch", batch)):
        rows.append({"model": "deepbet", "case": f"{len(cases)} cases", "run": kind, **{k: round(v, 2) for k, v in run.items() if k != "rc"},
                     "per_case_s": round(run["wall_s"] / len(cases), 2), "wall_ratio_to_home": round(run["wall_s"] / homeFolder["wall_s"], 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--only", choices=["taps", "deepbet"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="medsegunet-published-") as folder:
        if args.only != "deepbet":
            rows += benchmarkTAPS(Path(folder))
        if args.only != "taps":
            rows += benchmarkDeepbet(Path(folder))
    for row in rows:
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
