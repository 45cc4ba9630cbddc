"""The documentation site: it builds with ``mkdocs build --strict``, and every example runs.

Every ``bash`` block of ``docs/`` runs as written by ``bash -e`` in a scratch folder laid out like a
checkout (``Resources`` and ``../shared`` beside it), stderr a log, and the test checks what the
page says it makes. Blocks that need what the tests cannot have (a fetched training set, a
cluster, hours) are fenced as ``text`` on their page; :func:`test_every_example_is_checked`
fails on a ``bash`` block that no case here checks.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROSTATEX_0000_ROI, REPO_ROOT, bashBlocks, runBlock

DOCS = REPO_ROOT / "docs"


def pageBlocks(page: str) -> list[str]:
    return bashBlocks((DOCS / page).read_text(encoding="utf-8"))


def buildSite(config: Path, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


@pytest.fixture(scope="module")
def a_built_site(tmp_path_factory) -> Path:
    """The site, built strictly from another working directory."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    built = buildSite(REPO_ROOT / "mkdocs.yml", elsewhere / "site", elsewhere)
    assert built.returncode == 0, built.stderr
    return elsewhere / "site"


@pytest.mark.parametrize(
    "page",
    [
        "index.html",
        "getting-started/index.html",
        "slicer-module/index.html",
        *(f"commands/{name}/index.html" for name in ("roi", "segment", "batch", "models", "import", "convert", "train", "demo")),
        "commands/index.html",
        "models/index.html",
        "models/lgg-flair/index.html",
        "models/acdc-heart/index.html",
        "card-reference/index.html",
        "cohorts/index.html",
        "architecture/index.html",
        "api/index.html",
        "benchmarks/index.html",
        "images/demo-overview.png",
    ],
)
def test_the_site_has_every_page(a_built_site, page):
    assert (a_built_site / page).stat().st_size > 1000


def test_the_card_reference_lists_every_field_of_the_schema(a_built_site):
    schema = json.loads((REPO_ROOT / "MedSegUNet" / "MedSegUNetLib" / "engine" / "modelcard.schema.json").read_text(encoding="utf-8"))
    page = (a_built_site / "card-reference" / "index.html").read_text(encoding="utf-8")
    assert "generated from modelcard.schema.json" not in page  # the marker was replaced
    for field in [*schema["properties"], *schema["properties"]["roi"]["properties"], *schema["properties"]["postprocessing"]["properties"]]:
        assert f"<td><code>{field}</code></td>" in page, field
    # Bounds come from the schema: overlap 0 to 0.95.
    assert "number (≥ 0, ≤ 0.95)" in page


def test_links_outside_the_site_point_at_the_repository(a_built_site):
    models = (a_built_site / "models" / "index.html").read_text(encoding="utf-8")
    assert 'href="https://github.com/medsegunet/SlicerMedSegUNet/blob/main/MedSegUNet/Resources/Models/prostate-zones/README.md"' in models
    assert 'href="../../Resources' not in models
    benchmarks = (a_built_site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "benchmark_published.py" in benchmarks and "--8&lt;--" not in benchmarks  # the included README


@pytest.mark.parametrize("target, built", [("../present.txt", True), ("../absent.txt", False)])
def test_a_link_to_a_missing_repository_file_fails_the_build(tmp_path, target, built):
    project = tmp_path / "project"
    (project / "docs").mkdir(parents=True)
    (project / "present.txt").write_text("here\n")
    (project / "docs" / "index.md").write_text(f"# Page\n\nSee [the file]({target}).\n")
    (project / "mkdocs.yml").write_text(f"site_name: t\nrepo_url: https://example.org/r\nhooks:\n  - {DOCS / 'hooks.py'}\n")
    done = buildSite(project / "mkdocs.yml", tmp_path / "site", tmp_path)
    assert (done.returncode == 0) is built, done.stderr
    if built:
        assert 'href="https://example.org/r/blob/main/present.txt"' in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    else:
        assert "index.md links to ../absent.txt, which the repository does not have" in done.stderr


# [page, block, files under the checkout it must make, words its output must hold]
EXAMPLES = [
    (
        "getting-started.md",
        0,
        ["out/getting-started/ProstateX-0000-zones.seg.nrrd", "out/getting-started/ProstateX-0000-overview.png"],
        ["ROI 68.5 × 45.0 × 57.0 mm"],
    ),
    (
        "getting-started.md",
        1,
        ["out/first.seg.nrrd", "out/first.csv", "out/first.png"],
        ["Example: medsegunet segment --model prostate-zones"],
    ),
    ("commands/roi.md", 0, ["out/roi.json"], []),
    ("commands/models.md", 0, [], ["prostate-gland-taps", "shipped", "Licence:"]),
    ("commands/convert.md", 0, ["out/prostate-zones.pt2"], ["Format: torch.export (.pt2), written with torch"]),
    (
        "commands/import.md",
        0,
        ["out/zones-card.json", "out/zones-imported.pt"],
        ["Wrote out/zones-imported.pt", "Prostate zones (demonstration, 3D)"],
    ),
    (
        "commands/train.md",
        0,
        ["out/quick-run/checkpoint_best.pt", "out/quick-run/curves.png", "out/quick.pt", "out/quick.seg.nrrd"],
        ["epoch 2/2", "Wrote out/quick.pt"],
    ),
    (
        "commands/demo.md",
        0,
        [
            "out/demo/ProstateX-0000-zones.seg.nrrd",
            "out/demo/ProstateX-0000-statistics.csv",
            "out/demo/ProstateX-0000-statistics.json",
            "out/demo/ProstateX-0000-overview.png",
        ],
        [],
    ),
]
# Checked in detail by their own tests below.
DETAILED = [("commands/segment.md", 0), ("commands/batch.md", 0)]


def test_every_example_is_checked():
    pages = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))
    found = {(page, index) for page in pages for index in range(len(pageBlocks(page)))}
    assert found == {(page, index) for page, index, *_ in EXAMPLES} | set(DETAILED)


@pytest.mark.parametrize("page, index, files, words", EXAMPLES, ids=[f"{page}#{index}" for page, index, *_ in EXAMPLES])
def test_the_example_runs(a_checkout, tmp_path, page, index, files, words):
    done = runBlock(pageBlocks(page)[index], a_checkout, {"MEDSEGUNET_CACHE": str(tmp_path / "cache"), "MEDSEGUNET_CATALOG": ""})
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr, done.stderr
    assert [name for name in files if not (a_checkout / name).is_file()] == []
    assert [word for word in words if word not in done.stdout] == []
    if page == "commands/roi.md":
        document = json.loads((a_checkout / "out" / "roi.json").read_text(encoding="utf-8"))
        assert [document["ijk_min"], document["ijk_max"]] == [list(PROSTATEX_0000_ROI[0]), list(PROSTATEX_0000_ROI[1])]
    assert not (tmp_path / "cache").exists()  # every example runs offline from the checkout


def test_the_prostate_example(a_checkout, tmp_path):
    done = runBlock(
        pageBlocks("commands/segment.md")[0], a_checkout, {"MEDSEGUNET_CACHE": str(tmp_path / "cache"), "MEDSEGUNET_CATALOG": ""}
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # no warning on the documentation's own example
    # roi: its JSON, compact (lists of numbers on one line), with the exact three-series ROI.
    start = done.stdout.index("{")
    document, end = json.JSONDecoder().raw_decode(done.stdout[start:])
    assert [document["ijk_min"], document["ijk_max"]] == [list(PROSTATEX_0000_ROI[0]), list(PROSTATEX_0000_ROI[1])]
    assert done.stdout[start : start + end].count("\n") < 30
    # segment: progress lines in the log, then the outputs under out/ (which git ignores).
    log = done.stdout[start + end :]
    assert "[  0%] Loading model and volumes" in log and "[100%] Done" in log
    out = a_checkout / "out"
    assert sorted(path.name for path in out.iterdir()) == [
        "zones-by-name.seg.nrrd",
        "zones.csv",
        "zones.json",
        "zones.png",
        "zones.seg.nrrd",
    ]
    report = json.loads((out / "zones.json").read_text())
    assert [segment["name"] for segment in report["segments"]] == ["peripheral zone", "transition zone"]
    assert all(segment["qc"] == "ok" and segment["dice"] > 0.5 for segment in report["segments"]), report["segments"]
    rows = list(csv.DictReader((out / "zones.csv").open(encoding="utf-8")))
    assert [row["Segment"] for row in rows] == ["peripheral zone", "transition zone"]
    assert subprocess.run(["git", "check-ignore", "-q", "out/zones.csv"], cwd=REPO_ROOT).returncode == 0
    # By name: the catalog's prostate-zones is the zoo file, offline, with the same labels.
    import slicerio

    assert [s["name"] for s in slicerio.read_segmentation(str(out / "zones-by-name.seg.nrrd"))["segments"]] == [
        "peripheral zone",
        "transition zone",
    ]
    assert not (tmp_path / "cache").exists()


def test_the_batch_example(a_checkout):
    done = runBlock(pageBlocks("commands/batch.md")[0], a_checkout)
    assert done.returncode == 0, done.stderr
    table = [line.split("\t") for line in done.stdout.splitlines() if line.startswith(("case\t", "ProstateX-"))]
    assert table[0][:2] == ["case", "T2"] and {row[0] for row in table[1:3]} == {"ProstateX-0000", "ProstateX-0001"}
    assert done.stdout.strip().splitlines()[-1] == "2 cases: 2 ok, 0 skipped, 0 failed"
    summary = list(csv.DictReader((a_checkout / "out" / "cohort-output" / "summary.csv").open(encoding="utf-8")))
    assert [row["qc"] for row in summary] == ["ok", "ok"]
    assert subprocess.run(["git", "check-ignore", "-q", "out/cohort-output/summary.csv"], cwd=REPO_ROOT).returncode == 0


def test_every_environment_variable_is_documented_with_its_default():
    from MedSegUNetLib.engine import settings

    page = (REPO_ROOT / "docs" / "commands" / "index.md").read_text(encoding="utf-8")
    for variable in settings.VARIABLES:
        default = f"`{variable.default}`" if variable.default else "(none)"
        assert f"| `{variable.name}` | {default} | {variable.meaning} |" in page, variable.name
