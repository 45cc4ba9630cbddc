"""Slicer's packages are never replaced: a real pip run into an environment holding Slicer 5.10's pydicom.

Slicer 5.10 bundles pydicom 2.4.4, which its DICOM module needs; highdicom 0.23 and later need
pydicom 3. The environment here is a virtual environment that sees this test environment's packages
(monai, scipy, ...: what Slicer would have after the first Apply) with pydicom 2.4.4 of its own. The
wheels come from a local folder (``pip --no-index --find-links``), downloaded once into a cache
folder; offline without that cache the test skips with a message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from conftest import REPO_ROOT

WHEELS = ("pydicom==2.4.4", "highdicom==0.22.0", "pillow-jpls")


def _wheelFolder() -> Path:
    cacheBase = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cacheBase / "medsegunet-tests" / f"wheels-py{sys.version_info[0]}{sys.version_info[1]}"
    marker = folder / "complete"
    if not marker.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder), *WHEELS],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            pytest.skip(f"the wheels {WHEELS} could not be downloaded (offline?) and are not cached in {folder}")
        marker.write_text("\n".join(WHEELS))
    return folder


def _run(python: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *arguments], capture_output=True, text=True, timeout=600)


def _versions(python: Path) -> dict:
    code = "import json, importlib.metadata as m; print(json.dumps({n: m.version(n) for n in ('pydicom', 'highdicom')}))"
    return json.loads(_run(python, "-c", code).stdout)


@pytest.fixture(scope="module")
def a_slicer_like_environment(tmp_path_factory) -> Path:
    """A venv seeing this environment's packages, with pydicom 2.4.4 of its own (as Slicer 5.10)."""
    wheels = _wheelFolder()
    folder = tmp_path_factory.mktemp("slicer-like") / "venv"
    venv.EnvBuilder(with_pip=False).create(folder)
    python = folder / ("Scripts" if os.name == "nt" else "bin") / "python"
    # This environment's packages after the venv's own (a .pth file): whether this test runs in a
    # virtual environment or not, the new one sees monai, scipy, torch, ... as Slicer would.
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    ours = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    Path(purelib, "medsegunet-test-environment.pth").write_text("\n".join(ours) + "\n")
    done = _run(
        Path(sys.executable),
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "-q",
        "--no-index",
        "--find-links",
        str(wheels),
        "pydicom==2.4.4",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return python


def _constraints(python: Path, tmp_path: Path) -> Path:
    """The constraints file the module writes, written by the module's code inside that environment."""
    code = "import sys; from MedSegUNetLib.slicer import dependencies; print(dependencies.writeConstraints(sys.argv[1]))"
    done = subprocess.run(
        [str(python), "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "MedSegUNet")},
    )
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def _requirement(python: Path) -> str:
    code = "from MedSegUNetLib.slicer import dependencies; print(dependencies.highdicomRequirement())"
    done = subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "MedSegUNet")},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_constraints_pin_pydicom_and_pillow_as_present(a_slicer_like_environment, tmp_path):
    lines = _constraints(a_slicer_like_environment, tmp_path).read_text().splitlines()
    assert "pydicom==2.4.4" in lines
    assert any(line.lower().startswith("pillow==") for line in lines), lines
    assert {line.split("==")[0].lower() for line in lines} >= {"torch", "numpy", "simpleitk", "pydicom", "pillow"}


def test_installing_the_requirements_and_highdicom_keeps_slicers_pydicom(a_slicer_like_environment, tmp_path):
    python = a_slicer_like_environment
    constraints = _constraints(python, tmp_path)
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--no-index",
        "--find-links",
        str(_wheelFolder()),
        "-c",
        str(constraints),
    ]
    # The first Apply's requirements (satisfied here by what this environment already has).
    requirements = REPO_ROOT / "MedSegUNet" / "Resources" / "requirements.txt"
    done = subprocess.run([*pip, "-r", str(requirements)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _versions(python)["pydicom"] == "2.4.4"
    # The first DICOM SEG export: the highdicom that works with pydicom 2.
    requirement = _requirement(python)
    assert requirement == "highdicom>=0.22,<0.23"
    done = subprocess.run([*pip, requirement], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    versions = _versions(python)
    assert versions == {"pydicom": "2.4.4", "highdicom": "0.22.0"}
    # And it works: highdicom imports against Slicer's pydicom.
    check = _run(python, "-c", "import highdicom, pydicom; print(pydicom.__version__, highdicom.__version__)")
    assert check.returncode == 0 and check.stdout.split() == ["2.4.4", "0.22.0"], check.stderr[-1000:]


def test_the_requirements_file_holds_no_package_that_slicer_ships():
    names = [
        line.split(">")[0].split("=")[0].split("<")[0].strip().lower()
        for line in (REPO_ROOT / "MedSegUNet" / "Resources" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not set(names) & {"torch", "numpy", "simpleitk", "vtk", "pydicom", "pillow", "highdicom"}
