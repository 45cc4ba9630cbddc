"""The README's shell examples run as written, and do what the README says they do.

The README is the short guide: its quick start and test command. Each ``bash`` block runs as it
stands by ``bash -e`` in a scratch folder laid out like a checkout (``Resources`` and
``../shared`` beside it), with stderr not a terminal (a log). The site's pages are tested in
``test_docs.py``.
"""

from __future__ import annotations

import re

from conftest import REPO_ROOT, bashBlocks, runBlock

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def blockWith(words: str) -> str:
    found = [block for block in bashBlocks(README) if words in block]
    assert len(found) == 1, f"the README has {len(found)} bash blocks with {words!r}"
    return found[0]


def test_the_readme_has_exactly_its_two_commands():
    """The quick start and the test command, which ``.ci/run`` runs: nothing else to keep true."""
    assert [block.split()[:4] for block in bashBlocks(README)] == [["python", "-m", "pip", "install"], ["python", "-m", "pip", "install"]]
    assert 'python -m pip install -e ".[test]" && python -m pytest' in (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert blockWith("pytest").strip() == 'python -m pip install -e ".[test]" && python -m pytest'


def test_the_readme_links_resolve():
    """Every relative link of the README names a file or folder of the repository."""
    links = [link for link in re.findall(r"\]\(([^)#\s]+)", README) if "://" not in link]
    assert len(links) >= 10
    assert [link for link in links if not (REPO_ROOT / link).exists()] == []


def test_the_quick_start_demo_prints_progress_in_a_log(a_checkout):
    command = next(line for line in blockWith("medsegunet demo").splitlines() if line.strip())
    demo = command[command.index("medsegunet demo") :]
    done = runBlock(demo, a_checkout)
    assert done.returncode == 0, done.stderr
    assert "[  0%] Loading model and volumes" in done.stdout and "[100%] Done" in done.stdout
    # The ROI as roi reports it: 68.5 mm along i.
    assert "ROI 68.5 × 45.0 × 57.0 mm" in done.stdout, done.stdout
    assert len(list((a_checkout / "demo-output").iterdir())) == 4
