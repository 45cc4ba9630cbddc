"""Small real nnU-Net v2 results folders, made by nnU-Net itself, for the import tests (issue 37).

nnU-Net never enters the project's environment: this script drives ``nnunetv2`` 2.8.1 in a
virtual environment of its own (made here when ``--venv`` does not exist), with the project's torch
kept (``--no-deps`` for nnunetv2 and dynamic_network_architectures, their other requirements pinned
beside it). For each dataset it writes a synthetic training set, plans it, narrows the network's
features (a few MB in all), trains folds briefly and writes ``nnUNetv2_predict``'s outputs for held-out
cases, with and without test-time mirroring, with one and with two folds.

Written under ``OUTPUT/<dataset>/`` (default ``Testing/data/nnunet``)::

    results/DatasetNNN_<name>/nnUNetTrainer__nnUNetPlans__<configuration>/
                        the results folder as nnU-Net writes it: dataset.json, plans.json, fold_N/checkpoint_final.pth
    imagesTs/           the held-out cases (CASE_0000.nii.gz: channel 0)
    predictions/<run>/  nnUNetv2_predict's label maps for each run (f0, f0-notta, f01)
    reference.json      the commands, versions and the datasets' geometry

Arrays: the synthetic images are written with SimpleITK (LPS; arrays K, J, I), as nnU-Net reads them.

Usage::

    python Testing/benchmarks/nnunet_reference.py --venv /tmp/nnunet-venv [--output Testing/data/nnunet] [--datasets aniso3d]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

NNUNET = "nnunetv2==2.8.1"
DNA = "dynamic_network_architectures==0.4.4"
# nnunetv2 2.8.1's requirements but torch and dynamic_network_architectures (installed without theirs).
REQUIREMENTS = [
    "acvl-utils>=0.2.6,<0.3",
    "batchgenerators>=0.25.1",
    "batchgeneratorsv2>=0.3.2",
    "blosc2>=3.3.2",
    "einops",
    "graphviz",
    "imagecodecs",
    "matplotlib",
    "nibabel",
    "pandas",
    "requests",
    "scikit-image>=0.19.3",
    "scikit-learn",
    "scipy",
    "seaborn",
    "SimpleITK>=2.2.1",
    "tifffile",
    "tqdm",
    "yacs",
]

# name -> dataset id, image size I, J, K, spacing (mm), configuration, first stage's features, planner
# and plans name (default: nnU-Net's own), and whether the labels are regions.
DATASETS = {
    # 0.6 × 0.6 × 3.6 mm: a spacing ratio of 6 (> 3), so nnU-Net resamples the z axis on its own (order 0).
    "aniso3d": {"id": 901, "size": (56, 52, 14), "spacing": (0.6, 0.6, 3.6), "configuration": "3d_fullres", "features": 4},
    # The 2D configuration: windows over each slice of the first array axis.
    "slices2d": {"id": 902, "size": (56, 52, 10), "spacing": (0.6, 0.6, 3.6), "configuration": "2d", "features": 4},
    # Region-based labels (sigmoid per region, painted in regions_class_order) with the residual encoder.
    "regions3d": {
        "id": 903,
        "size": (40, 40, 24),
        "spacing": (1.0, 1.0, 1.2),
        "configuration": "3d_fullres",
        "features": 2,  # the residual encoder's blocks hold four times the plain U-Net's weights
        "planner": "nnUNetPlannerResEncM",
        "plans": "nnUNetResEncUNetMPlans",
        "regions": True,
    },
    # Two channels: a CT-like one (nnU-Net's CT normalisation, by the dataset's percentiles) and a
    # z-scored one whose wide zero border makes nnU-Net normalise inside the non-zero mask only.
    "channels3d": {
        "id": 904,
        "size": (48, 48, 12),
        "spacing": (0.8, 0.8, 2.0),
        "configuration": "3d_fullres",
        "features": 4,
        "channels": ["T2", "CT"],
        "border": 10,
    },
}
LABELS = {"background": 0, "gland": 1, "lesion": 2}
REGIONS = {"background": 0, "gland": [1, 2], "lesion": 2}
TRAINER = "nnUNetTrainer"
ITERATIONS = 500  # two epochs' worth of nnU-Net's default length, in one epoch
# nnUNetv2_train finds its trainer by importing every trainer module, and 2.8.1's Primus ones need
# timm (and so torchvision, which this index has for no CPU torch): train the default trainer from
# Python instead, for one epoch; the checkpoint is the one nnUNetv2_train writes.
TRAIN = """
import sys, torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
plans, dataset, configuration, fold, iterations = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(fold)
plans = {**load_json(plans), "continue_training": False}  # what nnUNetv2_train adds (run_training.py)
trainer = nnUNetTrainer(plans, configuration, fold, load_json(dataset), device=torch.device("cpu"))
trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, iterations, 10
trainer.run_training()
"""


def makeVenv(venv: Path) -> None:
    """nnunetv2 beside this project's torch, in a virtual environment of its own."""
    import torch

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={torch.__version__}", *REQUIREMENTS], check=True)
    subprocess.run([*pip, "--no-deps", NNUNET, DNA], check=True)


def syntheticCase(rng: np.random.Generator, size, spacing, border: int = 3, ct: bool = False) -> tuple[list[sitk.Image], sitk.Image]:
    """One case's channels and its labels: a bright ellipsoid (gland) holding a brighter sphere
    (lesion), in noise, with a zero border (as a skull-stripped or masked series has) that nnU-Net
    crops away; with ``ct``, a second channel in Hounsfield-like units (nnU-Net's CT normalisation)."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in reversed(size)), indexing="ij")
    centre = [rng.uniform(0.4, 0.6) * n for n in size]
    radii = [rng.uniform(0.18, 0.26) * size[0] * spacing[0]] * 2 + [rng.uniform(0.25, 0.35) * size[2] * spacing[2]]
    mm = [(i - centre[0]) * spacing[0], (j - centre[1]) * spacing[1], (k - centre[2]) * spacing[2]]
    gland = sum((axis / radius) ** 2 for axis, radius in zip(mm, radii)) <= 1
    offset = [rng.uniform(-0.3, 0.3) * radius for radius in radii]
    lesion = sum(((axis - shift) / (0.6 * radii[0])) ** 2 for axis, shift in zip(mm, offset)) <= 1
    labels = np.where(gland, np.where(lesion & gland, 2, 1), 0).astype(np.uint8)
    image = rng.normal(100, 15, labels.shape) + 120 * (labels == 1) + 260 * (labels == 2)
    channels = [image]
    if ct:
        channels.append(rng.normal(-100, 10, labels.shape) + 80 * (labels == 1) + 150 * (labels == 2))
    for array in (*channels, labels):
        array[:, :border, :] = 0
        array[:, :, -border:] = 0
    result = []
    for array in (*(channel.astype(np.float32) for channel in channels), labels):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing(spacing)
        volume.SetOrigin((-12.5, 30.0, -7.0))
        result.append(volume)
    return result[:-1], result[-1]


def writeRaw(raw: Path, name: str, spec: dict, cases: int = 6, held: int = 2) -> Path:
    """nnU-Net's raw dataset folder: imagesTr, labelsTr, imagesTs, dataset.json. The training cases'
    spacings vary by up to ±8 % around ``spec['spacing']`` and the held-out ones are finer (× 0.85), so
    that nnU-Net resamples every case (and, anisotropic, each z on its own)."""
    folder = raw / f"Dataset{spec['id']:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec["id"])
    for index in range(cases + held):
        scale = rng.uniform(0.92, 1.08) if index < cases else 0.85
        spacing = tuple(scale * value for value in spec["spacing"])
        images, labels = syntheticCase(rng, spec["size"], spacing, spec.get("border", 3), len(spec.get("channels", "T")) > 1)
        case = f"{name}_{index:03d}"
        for channel, image in enumerate(images):
            sitk.WriteImage(image, str(folder / ("imagesTr" if index < cases else "imagesTs") / f"{case}_{channel:04d}.nii.gz"))
        if index < cases:
            sitk.WriteImage(labels, str(folder / "labelsTr" / f"{case}.nii.gz"))
    names = {str(index): channel for index, channel in enumerate(spec.get("channels", ["T2"]))}
    dataset = {"channel_names": names, "labels": LABELS, "numTraining": cases, "file_ending": ".nii.gz", "name": name}
    if spec.get("regions"):
        dataset.update(labels=REGIONS, regions_class_order=[1, 2])
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def nnunet(venv: Path, environment: dict, *arguments: str) -> list[str]:
    """Run one nnU-Net command of the side environment; returns the command as run."""
    command = [str(venv / "bin" / arguments[0]), *arguments[1:]]
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
    return [arguments[0], *arguments[1:]]


def narrowPlans(preprocessed: Path, spec: dict) -> None:
    """Features per stage from ``spec['features']`` (doubling, at most 32): a few MB of weights."""
    plansPath = next(preprocessed.glob(f"Dataset{spec['id']:03d}_*/{spec.get('plans', 'nnUNetPlans')}.json"))
    plans = json.loads(plansPath.read_text())
    kwargs = plans["configurations"][spec["configuration"]]["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [min(spec["features"] * 2**stage, 32) for stage in range(kwargs["n_stages"])]
    plansPath.write_text(json.dumps(plans, indent=2))


def build(name: str, spec: dict, venv: Path, output: Path, work: Path) -> dict:
    raw, preprocessed, results = work / "raw", work / "preprocessed", work / "results"
    environment = {
        **os.environ,
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(preprocessed),
        "nnUNet_results": str(results),
        "nnUNet_n_proc_DA": "1",
        "nnUNet_compile": "f",
        "OMP_NUM_THREADS": "2",
    }
    folder = writeRaw(raw, name, spec)
    dataset, configuration, plansName = str(spec["id"]), spec["configuration"], spec.get("plans", "nnUNetPlans")
    planner = ["-pl", spec["planner"]] if spec.get("planner") else []
    commands = [
        nnunet(venv, environment, "nnUNetv2_extract_fingerprint", "-d", dataset, "-np", "1"),
        nnunet(venv, environment, "nnUNetv2_plan_experiment", "-d", dataset, *planner),
    ]
    narrowPlans(preprocessed, spec)
    commands.append(
        nnunet(venv, environment, "nnUNetv2_preprocess", "-d", dataset, "-c", configuration, "-plans_name", plansName, "-np", "1")
    )
    plans = next(preprocessed.glob(f"Dataset{spec['id']:03d}_*/{plansName}.json"))
    for fold in ("0", "1"):
        arguments = [str(plans), str(plans.with_name("dataset.json")), configuration, fold, str(ITERATIONS)]
        commands.append(nnunet(venv, environment, "python", "-c", TRAIN, *arguments))
    target = output / name
    shutil.rmtree(target, ignore_errors=True)
    trained = next(results.glob(f"Dataset{spec['id']:03d}_*/{TRAINER}__{plansName}__{configuration}"))
    # The results folder as nnU-Net names it (TRAINER__PLANS__CONFIGURATION), without its logs and
    # validation outputs: what nnUNetv2_export_model_to_zip keeps.
    kept = target / "results" / trained.parent.name / trained.name
    kept.mkdir(parents=True)
    for file in ("dataset.json", "plans.json", "dataset_fingerprint.json"):
        shutil.copy(trained / file, kept / file)
    for fold in ("0", "1"):
        (kept / f"fold_{fold}").mkdir()
        shutil.copy(trained / f"fold_{fold}" / "checkpoint_final.pth", kept / f"fold_{fold}" / "checkpoint_final.pth")
    shutil.copytree(folder / "imagesTs", target / "imagesTs")
    for run, extra in (("f0", ["-f", "0"]), ("f0-notta", ["-f", "0", "--disable_tta"]), ("f01", ["-f", "0", "1"])):
        arguments = ["-i", str(target / "imagesTs"), "-o", str(target / "predictions" / run), "-d", dataset, "-c", configuration]
        arguments += ["-tr", TRAINER, "-p", plansName, *extra, "-device", "cpu"]
        commands.append(nnunet(venv, environment, "nnUNetv2_predict", *arguments))
        for junk in ("dataset.json", "plans.json", "predict_from_raw_data_args.json"):
            (target / "predictions" / run / junk).unlink(missing_ok=True)
    return {
        "dataset": spec,
        "trainer": f"{TRAINER}, {ITERATIONS} iterations",
        "commands": [" ".join("TRAIN" if part == TRAIN else part for part in command) for command in commands],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, required=True, help="nnU-Net's own virtual environment (made when absent)")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "nnunet")
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    args = parser.parse_args(argv)
    if not (args.venv / "bin" / "nnUNetv2_predict").exists():
        makeVenv(args.venv)
    versions = subprocess.run(
        [
            str(args.venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('nnunetv2', 'dynamic_network_architectures', 'torch', 'numpy', 'SimpleITK', 'scikit-image')}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    recordPath = args.output / "reference.json"
    record = json.loads(recordPath.read_text()) if recordPath.exists() else {"datasets": {}}
    record["versions"] = json.loads(versions)
    with tempfile.TemporaryDirectory() as work:
        for name in args.datasets:
            record["datasets"][name] = build(name, DATASETS[name], args.venv, args.output, Path(work) / name)
    recordPath.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
