"""The quick-start install (``pip install -e .`` and nothing else), as the tests build it.

That environment runs every shipped catalog model: the zoo's ``info`` examples as printed in
``models/test_exporting.py``; the published ones pulled from their packages on a local index,
imported, and segmenting the real series by name in ``models/test_published_models.py``.
"""

from __future__ import annotations

import subprocess


def test_the_base_install_holds_the_base_dependencies_only(a_base_install):
    """What a user's fresh environment has: onnxruntime for TAPS, and none of the extras' packages."""
    names = set(a_base_install["distributions"])
    assert {"torch", "monai", "onnx", "onnxruntime", "simpleitk", "highdicom", "tqdm"} <= names
    assert not names & {"ray", "h5py", "deepbet", "pytest", "mkdocs", "slicer-core", "nibabel"}
    done = subprocess.run([a_base_install["python"], "-c", "import ray"], capture_output=True, text=True)
    assert done.returncode != 0 and "No module named 'ray'" in done.stderr
