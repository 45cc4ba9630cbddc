"""The code is formatted and linted with ruff, with the repository's configuration (pyproject.toml):
pyflakes, pycodestyle and isort at 140 characters; the naming rules are off (Slicer's camelCase,
docs/architecture.md, "Code style")."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from conftest import REPO_ROOT

ruff = pytest.importorskip("ruff", reason="ruff is one of the test needs: python -m pip install -e '.[test]'")


def runRuff(*arguments: str, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([ruff.find_ruff_bin(), *arguments], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_repository_passes_ruff_check():
    result = runRuff("check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_repository_is_formatted():
    result = runRuff("format", "--check", "--no-cache", ".")
    assert result.returncode == 0, "run 'ruff format .':\n" + result.stdout + result.stderr


@pytest.mark.parametrize(
    "source, code",
    [
        ("import os\n", "F401"),  # unused import
        ("x = '" + "a" * 150 + "'\n", "E501"),  # over 140 characters
        ("import sys\nimport os\n\nprint(os, sys)\n", "I001"),  # unsorted imports
        ("def f():\n    return undefinedName\n", "F821"),
    ],
)
def test_ruff_catches_a_planted_fault(tmp_path, source, code):
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    result = runRuff("check", "--no-cache", "--config", str(REPO_ROOT / "pyproject.toml"), "--output-format", "concise", str(planted))
    assert result.returncode == 1 and f" {code} " in result.stdout, result.stdout + result.stderr


def test_slicer_naming_is_allowed(tmp_path):
    # camelCase functions and arguments and acronyms in one case are the project's convention.
    planted = tmp_path / "slicerstyle.py"
    planted.write_text(
        textwrap.dedent(
            """
            def ijkToRAS(volumeNode, rasToIJK=None):
                markupsROINode = volumeNode
                return markupsROINode, rasToIJK
            """
        ).lstrip()
    )
    result = runRuff("check", "--no-cache", "--config", str(REPO_ROOT / "pyproject.toml"), str(planted))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_configuration_keeps_slicers_oldest_python_and_camel_case():
    tomllib = pytest.importorskip("tomllib")
    settings = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    assert settings["target-version"] == "py39" and 120 <= settings["line-length"] <= 140
    assert set(settings["lint"]["select"]) == {"E", "F", "W", "I"}
