"""Benchmark: published models run by their home tools and by ``medsegunet segment``, in one run.

Not a test: run it by hand (figures in ``README.md`` beside it). Whole processes, imports included,
each measured alone (wall, CPU = user + system, peak RSS of that child). A machine's speed drifts
by 20–30 % over minutes, so the runs to be compared go in rounds (home tool, then ours, ``--repeat``
times) and each figure is the median of its rounds:

- TAPS (``lavlab-taps`` 1.1.2): its own command (``taps segment --device cpu``, run from its
  unpacked wheel) on the axial T2 of ProstateX-0000 and -0001, vs ``medsegunet segment --model
  prostate-gland-taps`` on the whole volume (``--no-roi``, the same field of view) and with the three
  series' ROI and the card's context. Dice: ours vs home (same field of view), and each vs the two AI
  gland readers of ``../shared/data/prostatex/labels``.
- deepbet 1.0.2: its own ``run_bet`` (one process per case, and its folder mode: one process for
  all) on TCGA-FG-6692's native T1 and BraTS-GLI-00001's t1n, vs ``medsegunet segment --model
  brain-mask-deepbet`` (one process per case) and ``medsegunet batch`` over the same two cases,
  and over a folder of six (each case three times), where the per-case cost outweighs the start.
  Dice: ours vs home, and each vs the BraTS t1n's non-zero region (the BraTS pipeline's brain).

The catalog models must be pulled first (``medsegunet models pull prostate-gland-taps`` and
``brain-mask-deepbet``); TAPS's wheel is fetched with ``pip download --no-deps`` when absent.

Usage::

    python Testing/benchmarks/benchmark_published.py [--json results.json] [--only taps|deepbet] [--repeat 3]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
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
DEEPBET_COMMAND = (
    "import sys; from deepbet import run_bet; n = len(sys.argv) // 2; run_bet(sys.argv[1:n + 1], mask_paths=sys.argv[n + 1:], no_gpu=True)"
)


def measure(command: list[str], environment: dict | None = None, cwd: str | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE_SCRIPT, *command], capture_output=True, text=True, env=environment, cwd=cwd)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"command failed ({result['rc']}): {' '.join(command)}")
    return result


def inRounds(commands: dict[str, dict], repeat: int) -> dict[str, dict]:
    """Each command (``{"command": [...], "environment": ..., "cwd": ...}``) run once per round, in
    order, ``repeat`` rounds; per command the median wall, CPU and peak memory of its rounds."""
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, spec in commands.items():
            runs[name].append(measure(spec["command"], spec.get("environment"), spec.get("cwd")))
    return {
        name: {key: statistics.median(run[key] for run in done) for key in ("wall_s", "cpu_s", "peak_rss_mb")}
        for name, done in runs.items()
    }


def mask(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(2 * (a & b).sum() / (a.sum() + b.sum())), 4)


def tapsPackage(folder: Path) -> Path:
    """TAPS's wheel unpacked (pip download --no-deps), for its own command."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder), "lavlab-taps==1.1.2"],
        check=True,
    )
    with zipfile.ZipFile(next(folder.glob("*.whl"))) as archive:
        archive.extractall(folder / "pkg")
    return folder / "pkg"


def seriesFolder(case: str, name: str) -> str:
    return glob.glob(str(DATA / "prostatex" / case / f"*{name}"))[0]


def benchmarkTAPS(work: Path, repeat: int) -> list[dict]:
    package = tapsPackage(work)
    rows = []
    for case in ("ProstateX-0000", "ProstateX-0001"):
        tra, sag, cor = (seriesFolder(case, name) for name in ("t2tsetra", "t2tsesag", "t2tsecor"))
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(tra))
        sitk.WriteImage(reader.Execute(), str(work / f"{case}.nii.gz"))
        home = work / f"{case}-taps.nii.gz"
        commands = {
            "home": {
                "command": [sys.executable, "-c", TAPS_COMMAND, "segment", f"{case}.nii.gz", home.name, "--device", "cpu", "--exact"],
                "environment": dict(os.environ, PYTHONPATH=str(package)),
                "cwd": str(work),
            }
        }
        outputs = {}
        for kind, extra in (("whole volume", ["--no-roi"]), ("three-series ROI", ["--roi-from", sag, cor])):
            outputs[kind] = work / f"{case}-{kind.split()[0]}.nii.gz"
            commands[kind] = {
                "command": [
                    sys.executable,
                    "-m",
                    "MedSegUNetLib.cli",
                    "segment",
                    "-q",
                    "--device",
                    "cpu",
                    "--model",
                    "prostate-gland-taps",
                    tra,
                    *extra,
                    "--output",
                    str(outputs[kind]),
                ]
            }
        runs = inRounds(commands, repeat)
        readers = {name: mask(DATA / "prostatex" / "labels" / f"{case}_gland_AI-{name}.nii.gz") for name in ("Bosma22b", "Guerbet23")}
        homeMask = mask(home)
        for kind, run in runs.items():
            ours = homeMask if kind == "home" else mask(outputs[kind])
            row = {
                "model": "TAPS",
                "case": case,
                "run": kind,
                **{k: round(v, 2) for k, v in run.items()},
                "dice_vs_home": 1.0 if kind == "home" else dice(ours, homeMask),
                **{f"dice_{n}": dice(ours, r) for n, r in readers.items()},
            }
            row["wall_ratio_to_home"] = round(run["wall_s"] / runs["home"]["wall_s"], 3)
            rows.append(row)
    return rows


def benchmarkDeepbet(work: Path, repeat: int) -> list[dict]:
    cases = {
        "TCGA-FG-6692 T1": DATA / "brain-tumor" / "TCGA-FG-6692" / "native" / "t1.nii.gz",
        "BraTS-GLI-00001 t1n": DATA / "brain-tumor" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz",
    }
    brain = mask(cases["BraTS-GLI-00001 t1n"])
    rows = []
    for index, (case, path) in enumerate(cases.items()):
        home, ours = work / f"deepbet{index}.nii.gz", work / f"ours{index}.nii.gz"
        runs = inRounds(
            {
                "home": {"command": [sys.executable, "-c", DEEPBET_COMMAND, str(path), str(home)]},
                "segment": {
                    "command": [
                        sys.executable,
                        "-m",
                        "MedSegUNetLib.cli",
                        "segment",
                        "-q",
                        "--device",
                        "cpu",
                        "--model",
                        "brain-mask-deepbet",
                        str(path),
                        "--output",
                        str(ours),
                    ]
                },
            },
            repeat,
        )
        for kind, run in runs.items():
            result = mask(home if kind == "home" else ours)
            row = {
                "model": "deepbet",
                "case": case,
                "run": kind,
                **{k: round(v, 2) for k, v in run.items()},
                "dice_vs_home": 1.0 if kind == "home" else dice(result, mask(home)),
                "volume_ml": round(float(result.sum()) * float(np.prod(sitk.ReadImage(str(path)).GetSpacing())) / 1000, 1),
                "wall_ratio_to_home": round(run["wall_s"] / runs["home"]["wall_s"], 3),
            }
            if "BraTS" in case:
                row["dice_brats_brain"] = dice(result, brain)
            rows.append(row)
    for copies in (1, 3):
        rows += deepbetFolder(work / f"folder{copies}", list(cases.values()) * copies, repeat)
    return rows


def deepbetFolder(work: Path, paths: list[Path], repeat: int) -> list[dict]:
    """deepbet's folder mode (one process for all) against ``medsegunet batch`` on a folder of these cases."""
    for index, path in enumerate(paths):
        (work / "cases" / f"case{index}").mkdir(parents=True)
        os.symlink(path, work / "cases" / f"case{index}" / "t1.nii.gz")
    homeOutputs = [str(work / f"home{index}.nii.gz") for index in range(len(paths))]
    runs = inRounds(
        {
            "home folder mode": {"command": [sys.executable, "-c", DEEPBET_COMMAND, *map(str, paths), *homeOutputs]},
            # A fresh output folder each round: a rerun would skip the finished cases.
            "batch": {
                "command": [
                    "sh",
                    "-c",
                    'rm -rf "$1" && exec "$0" -m MedSegUNetLib.cli batch -q --cases "$2" --model brain-mask-deepbet --device cpu --output '
                    '"$1"',
                    sys.executable,
                    str(work / "batch"),
                    str(work / "cases"),
                ]
            },
        },
        repeat,
    )
    agreement = [
        dice(mask(home), mask(work / "batch" / f"case{index}" / f"case{index}.seg.nrrd")) for index, home in enumerate(homeOutputs)
    ]
    return [
        {
            "model": "deepbet",
            "case": f"{len(paths)} cases",
            "run": kind,
            **{k: round(v, 2) for k, v in run.items()},
            "per_case_s": round(run["wall_s"] / len(paths), 2),
            "wall_ratio_to_home": round(run["wall_s"] / runs["home folder mode"]["wall_s"], 3),
            "dice_vs_home": 1.0 if kind != "batch" else round(min(agreement), 4),
        }
        for kind, run in runs.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--only", choices=["taps", "deepbet"])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each comparison (medians reported)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="medsegunet-published-") as folder:
        if args.only != "deepbet":
            rows += benchmarkTAPS(Path(folder), args.repeat)
        if args.only != "taps":
            rows += benchmarkDeepbet(Path(folder), args.repeat)
    for row in rows:
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
