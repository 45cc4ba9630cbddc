"""The model catalog: named models to download once, checked by SHA256, into a cache folder.

The catalog is a JSON file (schema ``"medsegunet.catalog/1"``)::

    {"schema": "medsegunet.catalog/1",
     "models": [{"name": "prostate-zones", "url": "https://.../prostate-zones.pt",
                 "sha256": "…", "description": "…", "license": "…", "version": "0.1.0", "bytes": 123}]}

The one shipped beside this module lists the zoo models. ``MEDSEGUNET_CATALOG`` (a path or a URL)
replaces it, for an institution's mirror or offline use; ``MEDSEGUNET_CACHE`` names the cache
folder (default: the user cache, ``$XDG_CACHE_HOME`` or ``~/.cache``, then ``medsegunet``; the
Slicer module passes Slicer's cache folder). A model is downloaded to a staging name, its SHA256
checked, and only then renamed into the cache, so the cache never holds a partial or wrong file.

Anywhere a model path is taken (``--model``), a catalog name works too: :func:`resolveModel`.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Callable

from ..engine import settings
from ..engine.errors import CatalogError, firstLine
from ..engine.request import ProgressCallback
from .downloads import download

SCHEMA = "medsegunet.catalog/1"


# A name becomes a folder and a file name in the cache: one line of safe characters, matched whole
# (``re.match`` with ``$`` would take a trailing newline), and short enough for any file system.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def cacheFolder(base: str | os.PathLike | None = None) -> Path:
    """``$MEDSEGUNET_CACHE``, else ``base``/medsegunet, else the user cache folder/medsegunet."""
    if settings.CACHE.text():
        return Path(settings.CACHE.text())
    if base is not None:
        return Path(base) / "medsegunet"
    return settings.userCacheFolder()


def _readSource(source: str, timeout: float = 30.0) -> str:
    if re.match(r"^https?://", source):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(source, timeout=timeout) as response:
                return response.read().decode("utf-8")
        except (urllib.error.URLError, OSError, TimeoutError, UnicodeDecodeError) as error:
            raise CatalogError(
                f"Cannot read the model catalog '{source}' ({getattr(error, 'reason', error)}): check MEDSEGUNET_CATALOG or the network."
            ) from None
    try:
        with open(source, encoding="utf-8") as stream:
            return stream.read()
    except (OSError, UnicodeDecodeError) as error:
        raise CatalogError(f"Cannot read the model catalog '{source}' ({firstLine(error)}): check MEDSEGUNET_CATALOG.") from None


def loadCatalog(source: str | os.PathLike | None = None) -> dict:
    """The catalog: ``source``, else ``$MEDSEGUNET_CATALOG``, else the shipped one; checked.

    Raises:
        MedSegUNetError: unreadable, not JSON, or entries without a valid name, URL or SHA256.
    """
    source = os.fspath(source) if source is not None else settings.CATALOG.text() or str(settings.CATALOG_PATH)
    try:
        catalog = json.loads(_readSource(source))
    except json.JSONDecodeError as error:
        raise CatalogError(f"The model catalog '{source}' is not valid JSON ({error.msg}, line {error.lineno}).") from None
    if not isinstance(catalog, dict) or catalog.get("schema") != SCHEMA or not isinstance(catalog.get("models"), list):
        raise CatalogError(f"'{source}' is not a MedSegUNet model catalog (schema '{SCHEMA}' with a 'models' list).")
    names = set()
    for index, entry in enumerate(catalog["models"]):
        if not isinstance(entry, dict):
            raise CatalogError(f"Model catalog '{source}': entry {index} is not an object.")
        name, url, checksum = entry.get("name"), entry.get("url"), entry.get("sha256")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise CatalogError(f"Model catalog '{source}': entry {index} needs a 'name' of up to 100 letters, digits, '.', '_' or '-'.")
        if name in names:
            raise CatalogError(f"Model catalog '{source}': the name '{name}' is listed twice.")
        names.add(name)
        for field in ("description", "version", "license", "citation", "sheet"):
            if field in entry and not isinstance(entry[field], str):
                raise CatalogError(f"Model catalog '{source}': '{name}' has a '{field}' that is not text.")
        if "bytes" in entry and not (type(entry["bytes"]) is int and entry["bytes"] > 0):
            raise CatalogError(
                f"Model catalog '{source}': '{name}' has 'bytes' {str(entry['bytes'])[:40]!r}, which is not a whole number of bytes above "
                "0."
            )
        if "pt2" in entry:
            _checkPt2Entry(entry, f"Model catalog '{source}': '{name}'")
        if "source" in entry:  # a published file, imported on pull (see models.sources)
            from .sources import checkSourceEntry

            checkSourceEntry(entry, f"Model catalog '{source}': '{name}'")
            continue
        if not isinstance(url, str) or not url:
            raise CatalogError(f"Model catalog '{source}': '{name}' has no 'url'.")
        if not isinstance(checksum, str) or not re.fullmatch(r"[0-9a-f]{64}", checksum):
            raise CatalogError(f"Model catalog '{source}': '{name}' needs a 64-digit lower-case hexadecimal 'sha256'.")
    catalog["source"] = source
    return catalog


def _checkPt2Entry(entry: dict, where: str) -> None:
    """An entry's ``"pt2": {"url", "sha256", "bytes"}``: the same model as a ``torch.export`` archive."""
    pt2 = entry["pt2"]
    if "source" in entry or not isinstance(pt2, dict) or set(pt2) - {"url", "sha256", "bytes"}:
        raise CatalogError(
            f'{where} has a \'pt2\' that is not {{"url", "sha256", "bytes"}} of a model file (and a published source has none).'
        )
    if (
        not isinstance(pt2.get("url"), str)
        or not pt2["url"]
        or not isinstance(pt2.get("sha256"), str)
        or not re.fullmatch(r"[0-9a-f]{64}", pt2["sha256"])
    ):
        raise CatalogError(f"{where} needs a 'pt2' with a 'url' and a 64-digit lower-case hexadecimal 'sha256'.")
    if "bytes" in pt2 and not (type(pt2["bytes"]) is int and pt2["bytes"] > 0):
        raise CatalogError(f"{where} has a 'pt2' whose 'bytes' is not a whole number of bytes above 0.")


def inFormat(entry: dict, format: str) -> dict:
    """The entry of one file of a catalog model: its TorchScript file (the entry itself), or its
    ``.pt2`` file (``url``, ``sha256`` and ``bytes`` from ``"pt2"``, cached as ``NAME.pt2``; for a
    published source, its import converted on pull, :func:`sources.pullExportedSource`).

    Raises:
        MedSegUNetError: ``pt2`` asked of a zoo entry that has none.
    """
    if format != "pt2":
        return entry
    if "source" in entry:  # converted from its import on pull (sources.pullExportedSource)
        return {**entry, "suffix": ".pt2"}
    if "pt2" not in entry:
        raise CatalogError(f"The catalog has no .pt2 file of '{entry['name']}': pull it, then make one with 'medsegunet convert'.")
    derived = {key: value for key, value in entry.items() if key not in ("pt2", "bytes")}
    return {**derived, **entry["pt2"], "suffix": ".pt2"}


# Part of an imported source's cache key: changed when an import writes a different model file from
# the same source and card, so caches import again ("2": the network's arguments are recorded, which
# 'medsegunet convert' needs).
IMPORTER_REVISION = "2"


def findModel(name: str, catalog: dict | None = None) -> dict | None:
    catalog = catalog or loadCatalog()
    return next((entry for entry in catalog["models"] if entry["name"] == name), None)


def cachedPath(entry: dict, cache: Path | None = None) -> Path:
    """Where a catalog model lives in the cache: ``<cache>/models/<name>/<sha256[:12]>/<name>.pt``.

    The checksum in the path keeps two versions of a model apart; an imported source's folder also
    carries a digest of the card it is imported with (and :data:`IMPORTER_REVISION`), so a catalog
    that changes the card (a model's context, say) imports it again instead of serving the old card.
    """
    folder = (entry["source"]["sha256"] if "source" in entry else entry["sha256"])[:12]
    if "source" in entry and isinstance(entry.get("card"), dict):
        import hashlib

        folder += "-" + hashlib.sha256((json.dumps(entry["card"], sort_keys=True) + IMPORTER_REVISION).encode("utf-8")).hexdigest()[:8]
    return (cache or cacheFolder()) / "models" / entry["name"] / folder / f"{entry['name']}{entry.get('suffix', '.pt')}"


def pullModel(
    name: str,
    catalog: dict | None = None,
    cache: Path | None = None,
    progress: ProgressCallback | None = None,
    cancelEvent: threading.Event | None = None,
    log: Callable[[str], None] | None = None,
    python: str | None = None,
    format: str = "torchscript",
) -> Path:
    """The cached file of catalog model ``name`` (``format="pt2"``: its ``.pt2`` file), downloaded
    and checked when missing.

    A cached file is trusted only if its SHA256 still matches the catalog's.

    Raises:
        MedSegUNetError: unknown name, offline, or a checksum mismatch.
    """
    from ..engine.paths import sha256

    catalog = catalog or loadCatalog()
    entry = findModel(name, catalog)
    if entry is None:
        known = ", ".join(e["name"] for e in catalog["models"]) or "none"
        raise CatalogError(f"'{name}' is neither a model file nor a model of the catalog '{catalog['source']}' (it has: {known}).")
    entry = inFormat(entry, format)
    path = cachedPath(entry, cache)
    if "source" in entry:
        from .sources import isCachedIntact, pullExportedSource, pullFromSource

        if not isCachedIntact(path, entry["source"]):
            pull = pullExportedSource if entry.get("suffix") == ".pt2" else pullFromSource
            pull(entry, path, log=log, python=python, progress=progress)
        return path
    from .sources import checkCachePath

    checkCachePath(path)
    if path.is_file() and sha256(path) == entry["sha256"]:
        return path
    bundled = bundledModel(entry)
    if bundled is not None:
        return bundled
    hint = "set MEDSEGUNET_CATALOG to a reachable mirror, or give --model a local file"
    download(
        entry["url"],
        path,
        entry["sha256"],
        what=f"model '{name}' from {entry['url']}",
        offlineHint=hint,
        progress=progress,
        cancelEvent=cancelEvent,
        log=log,
        maxBytes=entry.get("bytes"),
    )
    return path


def bundledModel(entry: dict) -> Path | None:
    """The zoo's file of a catalog entry when this package ships it (same name and SHA256), else None."""
    from ..engine.paths import sha256

    # The zoo ships as the module's resources (settings.ZOO_FOLDER): a model with the catalog's SHA256 is used from there.
    candidate = settings.ZOO_FOLDER / entry["name"] / f"{entry['name']}{entry.get('suffix', '.pt')}"
    if candidate.is_file() and sha256(candidate) == entry["sha256"]:
        return candidate
    return None


def resolveModel(spec: str | os.PathLike, **pullArguments) -> str:
    """A model path from ``--model``: an existing file as it is, else a catalog name pulled once.

    Raises:
        MedSegUNetError: neither a file nor a catalog name (the line lists the catalog's names).
    """
    spec = os.fspath(spec)
    if os.path.exists(spec) or os.sep in spec or spec.endswith((".pt", ".pt2", ".ts", ".json")):
        return spec
    return str(pullModel(spec, **pullArguments))


def localCopy(entry: dict, cache: Path | None = None) -> tuple[Path | None, str]:
    """Where a catalog model is on this machine without a download: ``(path, "cached")`` in the
    cache, ``(path, "shipped")`` in this package's zoo, else ``(None, "-")``."""
    path = cachedPath(entry, cache)
    if path.is_file():
        return path, "cached"
    bundled = bundledModel(entry) if "sha256" in entry and "source" not in entry else None
    return (bundled, "shipped") if bundled is not None else (None, "-")


def discardPartialPull(name: str, cache: Path | None = None) -> None:
    """Remove what an interrupted pull of ``name`` left in the cache (a worker ended mid-download):
    its staging folders, and the model's folders if they hold nothing else. A finished file stays."""
    import shutil

    root = cache or cacheFolder()
    folder = root / "models" / name
    if not NAME_PATTERN.fullmatch(name) or not folder.is_dir() or folder.is_symlink():
        return
    for version in [folder, *[p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]]:
        for staging in version.glob(".medsegunet-*"):
            if staging.is_dir() and not staging.is_symlink():
                shutil.rmtree(staging, ignore_errors=True)
    for version in [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]:
        if not any(version.iterdir()):
            version.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


# How the Slicer panel's catalog list says where a model is (see :func:`localCopy`).
PANEL_WHERE = {"cached": "downloaded", "shipped": "included", "-": "download on first use"}


def catalogChoices(catalog: dict | None = None, cache: Path | None = None) -> list[tuple[str, str]]:
    """The Slicer panel's catalog list: ``(text, name)`` per model, the text with the model's
    version, where it is on this computer and its description."""
    catalog = catalog or loadCatalog()
    choices = []
    for entry in catalog["models"]:
        version = f" {entry['version']}" if entry.get("version") else ""
        where = PANEL_WHERE[localCopy(entry, cache)[1]]
        choices.append((f"{entry['name']}{version} ({where}): {entry.get('description', '')}", entry["name"]))
    return choices


def modelsTable(catalog: dict, cache: Path | None = None) -> str:
    """``medsegunet models list``: name, version, size, where it is offline (cached, shipped with
    this package, or ``-``: downloaded on first use), description."""
    lines = []
    for entry in catalog["models"]:
        cached = localCopy(entry, cache)[1]
        size = f"{entry['bytes'] / 2**20:.1f} MB" if entry.get("bytes") else "?"
        lines.append("\t".join([entry["name"], str(entry.get("version", "")), size, cached, entry.get("description", "")]))
    return "\n".join(["name\tversion\tsize\toffline\tdescription", *lines]) + "\n"


def resolveModelOption(model: str, console) -> str:
    """``--model``: a file, or a catalog name downloaded once into the cache, its progress shown
    by the command's console (a bar on a terminal, plain lines in its log)."""
    return resolveModel(model, progress=console)


__all__ = [
    "SCHEMA",
    "cacheFolder",
    "loadCatalog",
    "inFormat",
    "findModel",
    "cachedPath",
    "pullModel",
    "bundledModel",
    "resolveModel",
    "localCopy",
    "discardPartialPull",
    "catalogChoices",
    "modelsTable",
    "resolveModelOption",
]
