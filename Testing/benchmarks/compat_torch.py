"""Forward and backward compatibility of ``.pt2`` model files across torch versions.

Not a test: run it by hand with the Pythons of several virtual environments, each with its own
torch (and MONAI, SimpleITK, jsonschema, PyYAML, SciPy, tqdm, packaging); figures in ``README.md``
beside it. Every environment writes a small MONAI UNet as a ``.pt2`` model (through
``modelcard.saveModel``, checks included) with its answer to the card's example input; then every
environment loads every other one's file through ``modelcard.loadModel`` (the archive checks, the
operator allow-list) and compares its answer, and loads the zoo's ``prostate-zones.pt2`` against
its TorchScript file. A file an environment cannot read must be refused in one line.

Usage (from the repository root)::

    python Testing/benchmarks/compat_torch.py --python /venvs/torch28/bin/python --python /venvs/torch214/bin/python [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, os, sys
sys.path.insert(0, sys.argv[2])
import numpy as np, torch
from monai.networks.nets import UNet
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.engine.exportedmodel import exampleInput
from MedSegUNetLib.engine.modelcard import loadModel, saveModel
work, zoo, tag = sys.argv[1], sys.argv[3], torch.__version__
if sys.argv[4] == "write":
    torch.manual_seed(0)
    network = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    card = {"schema": "medsegunet.model/1", "name": f"written by torch {tag}", "spatial_dims": 3, "inputs": [{"name": "T2"}],
            "labels": [{"value": 1, "name": "gland", "color": [0.9, 0.6, 0.4]}], "output": "softmax", "normalization": {"type": "zscore"},
            "patch_size": [16, 16, 8], "overlap": 0.25, "sw_batch_size": 2}
    saveModel(network, card, os.path.join(work, f"written-{tag}.pt2"), format="pt2")
    with torch.no_grad():
        np.save(os.path.join(work, f"answer-{tag}.npy"), network(exampleInput(card)).numpy())
    sys.exit(0)
results = {}
for name in sorted(os.listdir(work)):
    if name.startswith("written-") and name.endswith(".pt2"):
        writer = name[len("written-"):-len(".pt2")]
        try:
            loaded = loadModel(os.path.join(work, name), "cpu")
            with torch.no_grad():
                got = loaded.network(exampleInput(loaded.card)).numpy()
            results[writer] = {"max_abs_difference": float(np.abs(got - np.load(os.path.join(work, f"answer-{writer}.npy"))).max())}
        except MedSegUNetError as error:
            results[writer] = {"refused": str(error)}
try:
    archive, script = loadModel(zoo + ".pt2", "cpu"), loadModel(zoo + ".pt", "cpu")
    sample = exampleInput(archive.card)
    with torch.no_grad():
        difference = (archive.network(sample) - script.network(sample)).abs().max()
        results["zoo prostate-zones"] = {"max_abs_difference_to_torchscript": float(difference)}
except MedSegUNetError as error:
    results["zoo prostate-zones"] = {"refused": str(error)}
print(json.dumps({"torch": tag, "read": results}))
"""


def runChild(python: str, work: Path, action: str) -> tuple[bool, str]:
    """(succeeded, its output or its last error line)."""
    zoo = REPO_ROOT / "MedSegUNet" / "Resources" / "Models" / "prostate-zones" / "prostate-zones"
    done = subprocess.run([python, "-c", CHILD, str(work), str(REPO_ROOT / "MedSegUNet"), str(zoo), action], capture_output=True, text=True)
    if done.returncode != 0:
        return False, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
    return True, done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", required=True, help="a Python whose environment has a torch to test (repeat)")
    parser.add_argument("--work", default=tempfile.mkdtemp(prefix="compat-"))
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    written = {python: runChild(python, work, "write") for python in args.python}
    for python, (ok, message) in written.items():
        if not ok:
            print(f"{python} could not write its .pt2: {message}")
    matrix = []
    for python in args.python:
        ok, output = runChild(python, work, "read")
        matrix.append(json.loads(output.splitlines()[-1]) if ok else {"python": python, "failed": output})
    for row in matrix:
        for writer, outcome in row.get("read", {}).items():
            print(f"torch {row['torch']} reads {writer}: {outcome}")
        if "failed" in row:
            print(f"{row['python']} failed to read: {row['failed']}")
    if args.json:
        Path(args.json).write_text(json.dumps(matrix, indent=1))


if __name__ == "__main__":
    sys.exit(main())
