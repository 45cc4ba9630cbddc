"""The extension description file passes the Slicer Extensions Index's checks.

The rules are those of ``scripts/check_description_files.py`` in Slicer/ExtensionsIndex (read at
commit 07f1d1b, 2026), written again here without the checks that need the network: downloading
the schema (the schema is kept in ``Testing/data``), fetching the icon and screenshot URLs (they are
checked to name files of this repository at the repository's raw URL instead), cloning, and the
GitHub topic (``3d-slicer-extension``, a repository setting: docs/slicer-module.md lists it among
the publishing steps).
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse as urlparse
from pathlib import Path

import pytest

from conftest import REPO_ROOT

DESCRIPTION = REPO_ROOT / "MedSegUNet.json"
CMAKE = REPO_ROOT / "CMakeLists.txt"
SCHEMA = REPO_ROOT / "Testing" / "data" / "slicer-extension-catalog-entry-schema-v1.0.1.json"
# The index's ACCEPTED_EXTENSION_CATEGORIES (those that could fit this extension are enough to
# check against, but the whole list is kept so a typo in another category is caught too).
ACCEPTED_CATEGORIES = {
    "Active Learning",
    "Analysis",
    "Auto3dgm",
    "BigImage",
    "Cardiac",
    "Chest Imaging Platform",
    "Conda",
    "Converters",
    "DICOM",
    "DSCI",
    "Developer Tools",
    "Diffusion",
    "Examples",
    "Exporter",
    "FTV Segmentation",
    "Filtering",
    "Filtering.Morphology",
    "Filtering.Vesselness",
    "Holographic Display",
    "Image Synthesis",
    "IGT",
    "Informatics",
    "Netstim",
    "Neuroimaging",
    "Nuclear Medicine",
    "Orthodontics",
    "Osteotomy Planning",
    "Otolaryngology",
    "Photogrammetry",
    "Pipelines",
    "Planning",
    "Printing",
    "Quantification",
    "Radiotherapy",
    "Registration",
    "Remote",
    "Rendering",
    "SPHARM",
    "Segmentation",
    "Sequences",
    "Shape Analysis",
    "Shape Regression",
    "Shape Visualization",
    "Simulation",
    "SlicerCMF",
    "SlicerMorph",
    "Spectral Imaging",
    "Supervisely",
    "Surface Models",
    "SurfaceLearner",
    "Tomographic Reconstruction",
    "Tracking",
    "Tractography",
    "Training",
    "Ultrasound",
    "Utilities",
    "Vascular Modeling Toolkit",
    "Virtual Reality",
    "VisSimTools",
    "Web System Tools",
    "Wizards",
}
REPOSITORY_PREFIXES = ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
# Extensions of the index this one needs (PyTorch.json is in the index).
KNOWN_DEPENDENCIES = {"PyTorch"}
SIZE_LIMIT_MB = 100


@pytest.fixture(scope="module")
def description() -> dict:
    return json.loads(DESCRIPTION.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def cmake() -> str:
    return CMAKE.read_text(encoding="utf-8")


def extensionName() -> str:
    return DESCRIPTION.stem


def repositoryName(description: dict) -> str:
    url = description["scm_url"].strip().strip("/")
    return Path(urlparse.urlsplit(url).path.split("/")[-1]).stem


def repositoryRawPrefix(description: dict) -> str:
    """``https://raw.githubusercontent.com/OWNER/REPO/`` of the scm_url."""
    parts = urlparse.urlsplit(description["scm_url"]).path.strip("/").split("/")
    return f"https://raw.githubusercontent.com/{parts[0]}/{Path(parts[1]).stem}/"


def test_json_schema(description):
    jsonschema = pytest.importorskip("jsonschema")
    assert description["$schema"].split("#")[0].endswith("/" + SCHEMA.name)
    jsonschema.validate(description, json.loads(SCHEMA.read_text(encoding="utf-8")))


def test_json_file_format():
    content = DESCRIPTION.read_bytes()
    json.loads(content)
    assert b"\r" not in content, "the index wants LF-only line endings"


def test_extension_name_does_not_start_with_slicer():
    assert not extensionName().lower().startswith("slicer")


def test_category(description):
    assert description["category"] in ACCEPTED_CATEGORIES


def test_git_repository_name_starts_with_slicer(description):
    name = repositoryName(description)
    assert name == "SlicerMedSegUNet"
    assert name.startswith(REPOSITORY_PREFIXES)


def test_scm_url_syntax(description):
    url = description["scm_url"]
    assert "://" in url and urlparse.urlsplit(url).scheme in ("git", "https")


def test_cmakelists_project_name_and_urls(description, cmake):
    project = re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", cmake, re.IGNORECASE | re.MULTILINE)
    assert project and project[0].strip().strip('"').strip("'") == extensionName()
    icons = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', cmake, re.IGNORECASE | re.MULTILINE)
    screenshots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake, re.IGNORECASE | re.MULTILINE)
    assert icons and screenshots, "the index's patterns find no EXTENSION_ICONURL or EXTENSION_SCREENSHOTURLS"
    prefix = repositoryRawPrefix(description)
    for url in [icons[0].strip(), *screenshots[0].split()]:
        # The index fetches each URL and wants an image: here, the file in this repository it names.
        assert url.startswith(prefix + "main/"), f"{url} is not a file of {prefix}"
        path = REPO_ROOT / url[len(prefix + "main/") :]
        assert path.is_file() and path.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif"), url
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" or path.suffix.lower() != ".png"
    homepage = re.findall(r'set\s*\(EXTENSION_HOMEPAGE\s*"([^"]+)"', cmake)
    assert homepage and homepage[0].startswith(f"https://github.com/{prefix.split('/')[3]}/{repositoryName(description)}")


def test_license_file():
    assert any((REPO_ROOT / name).is_file() for name in LICENSE_NAMES)


def test_repository_size():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    total = sum((REPO_ROOT / name).stat().st_size for name in files if name and (REPO_ROOT / name).is_file())
    assert total / (1024 * 1024) < SIZE_LIMIT_MB


def test_build_dependencies_are_extensions_of_the_index(description):
    assert set(description.get("build_dependencies", [])) <= KNOWN_DEPENDENCIES


def test_every_url_of_the_project_names_the_slicer_repository():
    """Homepage, icon, screenshot, catalog and schema ids all point at SlicerMedSegUNet."""
    texts = [
        CMAKE,
        DESCRIPTION,
        REPO_ROOT / "pyproject.toml",
        REPO_ROOT / "MedSegUNet" / "MedSegUNet.py",
        REPO_ROOT / "MedSegUNet" / "MedSegUNetLib" / "models" / "catalog.json",
    ]
    for path in texts:
        urls = re.findall(
            r"https://(?:raw\.githubusercontent\.com|github\.com)/medsegunet/([A-Za-z0-9_.-]+)", path.read_text(encoding="utf-8")
        )
        assert urls and all(Path(name).stem == "SlicerMedSegUNet" for name in urls), (path.name, urls)


@pytest.mark.parametrize(
    "rule, bad, message",
    [
        ("repository", {"scm_url": "https://github.com/medsegunet/MedSegUNet.git"}, "Slicer"),
        ("category", {"category": "Segmentations"}, "category"),
        ("scheme", {"scm_url": "ftp://github.com/medsegunet/SlicerMedSegUNet.git"}, "scheme"),
    ],
)
def test_the_checks_can_fail(description, rule, bad, message):
    broken = {**description, **bad}
    failures = []
    if not repositoryName(broken).startswith(REPOSITORY_PREFIXES):
        failures.append("repository name should start with Slicer")
    if broken["category"] not in ACCEPTED_CATEGORIES:
        failures.append("unknown category")
    if urlparse.urlsplit(broken["scm_url"]).scheme not in ("git", "https"):
        failures.append("scm_url scheme")
    assert len(failures) == 1 and message in failures[0]
