"""The quick-start install (``pip install -e .`` and nothing else) runs every shipped catalog model.

The published ones (pulled from their packages on a local index, imported, then segmenting the
real series) are in ``models/test_published_models.py``, on the same environment.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from MedSegUNetLib.models import catalog, phantoms

ZOO = [entry["name"] for entry in catalog.loadCatalog(catalog.CATALOG_PATH)["models"] if "source" not in entry]


def test_the_base_install_holds_the_base_dependencies_only(a_base_install):
    """What a user's fresh environment has: onnxruntime for TAPS, and none of the extras' packages."""
    names = set(a_base_install["distributions"])
    assert {"torch", "monai", "onnx", "onnxruntime", "simpleitk", "highdicom", "tqdm"} <= names
    assert not names & {"ray", "h5py", "deepbet", "pytest", "mkdocs", "slicer-core", "nibabel"}
    done = subprocess.run([a_base_install["python"], "-c", "import ray"], capture_output=True, text=True)
    assert done.returncode != 0 and "No module named 'ray'" in done.stderr


def writeExampleInputs(command: str, card: dict, folder) -> None:
    """A small bright-sphere volume for each input file named in an example command, on the card's
    spacing (2D models: a 5 mm slab of slices), all on one grid."""
    spacing = [float(value) if value else 5.0 for value in card["spacing"]]
    size = [48, 48, 12] if card["spatial_dims"] == 3 else [64, 64, 3]
    grid = phantoms.makeGrid(size, spacing, phantoms.rotationMatrix((0, 0, 1), 0))
    image = phantoms.paintSpheres(grid, [((0, 0, 0), 0.25 * min(s * n for s, n in zip(spacing, size)), 400.0)])
    for word in shlex.split(command):
        if word.endswith(".nii.gz") or word.endswith(".nrrd") and not word.endswith(".seg.nrrd"):
            sitk.WriteImage(image, str(folder / word))


@pytest.mark.parametrize("name", ZOO)
def test_each_zoo_model_pulls_and_runs_its_info_example_as_printed(tmp_path, a_base_install, name):
    """``models pull`` gives the shipped file offline, and the ``segment`` command that ``info``
    prints runs as printed, in the fresh environment, from another working directory."""
    environment = {**{key: value for key, value in os.environ.items() if not key.startswith("MEDSEGUNET_")},
                   "PATH": a_base_install["bin"] + os.pathsep + os.environ["PATH"], "MEDSEGUNET_CACHE": str(tmp_path / "cache")}

    def run(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-e", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=environment)

    pulled = run(f"medsegunet models pull {name}")
    assert pulled.returncode == 0 and pulled.stdout.strip().endswith(f"Resources/Models/{name}/{name}.pt"), pulled.stderr
    assert not (tmp_path / "cache").exists()  # shipped: nothing downloaded or copied
    info = run(f"medsegunet info {name}")
    example = re.search(r"^Example: (medsegunet segment .*)$", info.stdout, re.MULTILINE).group(1)
    from MedSegUNetLib.engine.modelcard import readCard

    card = readCard(pulled.stdout.strip())
    writeExampleInputs(example, card, tmp_path)
    done = run(example)
    assert done.returncode == 0, done.stderr
    import slicerio

    segmentation = slicerio.read_segmentation(str(tmp_path / "segmentation.seg.nrrd"))
    assert [segment["name"] for segment in segmentation["segments"]] == [label["name"] for label in card["labels"]]
    reference = sitk.ReadImage(str(tmp_path / shlex.split(example)[4]))
    assert list(segmentation["voxels"].shape[-3:]) == list(reference.GetSize())  # slicerio: IJK, after the layer axis of overlapping segments
    assert np.allclose(segmentation["ijkToLPS"][:3, 3], reference.GetOrigin(), atol=1e-3)
