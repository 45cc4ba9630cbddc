"""Where Slicer's own Python layer comes from: ``Base/Python/slicer`` of a Slicer release.

The layer needs the release's ``ScriptedLoadableModule.py``, ``i18n.py``, ``util.py`` and
``parameterNodeWrapper/``. They are Slicer's code (3D Slicer licence), which this repository does
not carry; they are found, in this order:

1. ``$MEDSEGUNET_SLICER_PYTHON/<release>/slicer/`` (a folder per release, e.g. ``5.8.1``);
2. ``../shared/tools/slicer-python/<release>/slicer/`` beside the repository;
3. ``$MEDSEGUNET_SLICER_GIT``: a clone of ``Slicer/Slicer`` (bare or not), read at the release's tag
   with ``git`` into a cache folder once.

Tests that need them skip, saying so, when none is there.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
RELEASES = {"5.6.2": "v5.6.2", "5.8.1": "v5.8.1", "main": "main"}
FILES = ("ScriptedLoadableModule.py", "i18n.py", "util.py")
PACKAGE = "parameterNodeWrapper"


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES) and (folder / PACKAGE / "__init__.py").is_file()


def _fromGit(gitDir: str, release: str) -> Path | None:
    revision = RELEASES[release]
    git = (
        ["git", "--git-dir", gitDir]
        if (Path(gitDir) / "HEAD").is_file() and not (Path(gitDir) / ".git").exists()
        else ["git", "-C", gitDir]
    )
    resolved = subprocess.run([*git, "rev-parse", f"{revision}^{{commit}}"], capture_output=True, text=True)
    if resolved.returncode != 0 and revision == "main":
        resolved = subprocess.run([*git, "rev-parse", "HEAD^{commit}"], capture_output=True, text=True)
    if resolved.returncode != 0:
        return None
    commit = resolved.stdout.strip()
    cache = (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "medsegunet-tests"
        / "slicer-python"
        / hashlib.sha256(commit.encode()).hexdigest()[:16]
    )
    folder = cache / "slicer"
    if _complete(folder):
        return folder
    listing = subprocess.run(
        [*git, "ls-tree", "-r", "--name-only", commit, "Base/Python/slicer/"], capture_output=True, text=True, check=True
    ).stdout.split()
    for path in listing:
        relative = Path(path).relative_to("Base/Python/slicer")
        if relative.parts[0] not in (*FILES, PACKAGE) or relative.suffix != ".py":
            continue
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(subprocess.run([*git, "show", f"{commit}:{path}"], capture_output=True, check=True).stdout)
    license = subprocess.run([*git, "show", f"{commit}:License.txt"], capture_output=True)
    if license.returncode == 0:
        (cache / "License.txt").write_bytes(license.stdout)
    return folder if _complete(folder) else None


def slicerPython(release: str) -> Path | None:
    """The folder holding the release's ``slicer`` Python files, or None."""
    for base in (os.environ.get("MEDSEGUNET_SLICER_PYTHON"), str(REPO_ROOT.parent / "shared" / "tools" / "slicer-python")):
        if base and _complete(Path(base) / release / "slicer"):
            return Path(base) / release / "slicer"
    gitDir = os.environ.get("MEDSEGUNET_SLICER_GIT")
    if gitDir:
        return _fromGit(gitDir, release)
    return None


MISSING = (
    "Slicer's Python layer ({release}) is not available: set MEDSEGUNET_SLICER_GIT to a clone of Slicer/Slicer, or put its "
    "Base/Python/slicer files in ../shared/tools/slicer-python/{release}/slicer/ (see Testing/slicer/upstream/README.md)"
)
