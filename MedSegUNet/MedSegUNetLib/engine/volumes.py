"""Reading and writing volumes with SimpleITK, keeping their full geometry; checked, never assumed.

A volume is a ``SimpleITK.Image``: physical space is ITK's LPS (mm), the image index is IJK, and
``SimpleITK.GetArrayFromImage`` returns a KJI array. Files (``.nrrd``, ``.nhdr``, ``.nii``,
``.nii.gz``, ``.mha``, ``.mhd``) and DICOM series folders are accepted; a folder holding several
series (directly or in sub-folders) needs a SeriesInstanceUID or a series description to pick one.

Inputs are checked before they are trusted: only regular files and folders are opened (a FIFO or a
device would block), NIfTI files must hold all the data their header announces (ITK reads a
cut-short NIfTI without complaint), and a DICOM series must have evenly spaced, parallel slices
(ITK spreads the slices of a series with a gap evenly, which silently changes its geometry).

Outputs are staged in a hidden folder beside their destination, verified (an image is read back),
then renamed into place together (:class:`StagedOutputs`), so that an error, a full disk or an
interruption never leaves a partial or cut-short file behind.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import signal
import stat
import struct
import sys
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import MedSegUNetError, osErrorMessage

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
LABELMAP_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".mhd", ".seg.nrrd")
# Data files that a header-only format (.mhd, .nhdr) may name beside it.
_COMPANION_SUFFIXES = {".mhd": (".raw", ".zraw"), ".nhdr": (".raw", ".raw.gz")}
_COMPLEX_PIXELS = {getattr(sitk, name) for name in ("sitkComplexFloat32", "sitkComplexFloat64") if hasattr(sitk, name)}
# Slice positions of a DICOM series count as regular when they differ from the median step by at
# most this share of it (scanners round positions to 0.01 mm or better).
# ITK and numpy index voxels with 64-bit integers, but a volume of more than 2^31 voxels is no MRI.
MAX_VOLUME_VOXELS = 2**31 - 1
SLICE_SPACING_TOLERANCE = 0.01
SLICE_DIRECTION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found on disk."""

    uid: str
    description: str
    files: tuple[str, ...]

    @property
    def folder(self) -> str:
        return os.path.dirname(self.files[0])


def pathSuffix(path: str | os.PathLike) -> str:
    """The file type suffix, with the double suffixes ``.nii.gz`` and ``.seg.nrrd`` kept whole."""
    name = Path(path).name.lower()
    for double in (".nii.gz", ".seg.nrrd"):
        if name.endswith(double):
            return double
    return Path(name).suffix


@contextlib.contextmanager
def nativeMessages() -> Iterator[list[str]]:
    """Capture what ITK, GDCM and MetaIO print on the process's stderr (file descriptor 2).

    Their C++ code writes warnings and errors straight to the descriptor, which would break the
    command line's one-line errors. The captured lines are appended to the yielded list, so a
    caller can put the relevant one into its own message. Outside the main thread nothing is
    captured (the descriptor is shared by the whole process).
    """
    lines: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield lines
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield lines
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def _nativeReason(error: Exception | None, captured: Sequence[str]) -> str:
    """The most telling line of a native library's complaint, for a one-line message."""
    text = str(error).strip().splitlines() if error is not None else []
    lines = [line.replace("sitk::ERROR:", "").strip() for line in [*captured, *text]]
    candidates = [line for line in lines if line and "Reason: No such file" not in line and not line.startswith("Exception thrown in SimpleITK")]
    for line in candidates:
        lowered = line.lower()
        if any(word in lowered for word in ("not read completely", "expected", "fread", "wrote only", "error", "cannot", "failed", "unable")):
            return line.strip()[:160]
    return (candidates[-1] if candidates else "unknown reason").strip()[:160]


def checkRegularFile(path: str | os.PathLike, what: str = "Volume") -> os.stat_result:
    """Refuse a path that is missing or is neither a regular file nor a folder (FIFO, device, socket).

    Opening a FIFO blocks until some other process writes to it, so it is refused before any read.

    Raises:
        MedSegUNetError: missing path or special file.
    """
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise MedSegUNetError(f"{what} '{os.fspath(path)}' does not exist: check the path.") from None
    except OSError as error:
        raise MedSegUNetError(osErrorMessage(error, "read", path)) from None
    if not (stat.S_ISREG(status.st_mode) or stat.S_ISDIR(status.st_mode)):
        raise MedSegUNetError(f"{what} '{os.fspath(path)}' is not a regular file or folder (a pipe or device): give a file or a DICOM folder.")
    return status


def _niftiDataBytes(header: bytes) -> tuple[int, int] | None:
    """``(vox_offset, data bytes)`` from a NIfTI-1 or NIfTI-2 header, or None when it is not one."""
    for order in ("<", ">"):
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = max(int(struct.unpack(order + "f", header[108:112])[0]), 352)
        elif len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = max(struct.unpack(order + "q", header[168:176])[0], 544)
        else:
            continue
        count = 1
        for size in dims[1 : 1 + max(0, min(int(dims[0]), 7))]:
            count *= max(int(size), 1)
        return offset, count * max(int(bitpix), 0) // 8
    return None


def memoryBudgetBytes() -> int:
    """How many bytes of voxel data one volume may hold: half the memory free now (Linux, macOS),
    since reading, resampling and the network need copies of it; 8 GiB where it cannot be known."""
    available = _availableMemoryLinux()
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 8 << 30
    return max(int(available) // 2, 1 << 28)


def _availableMemoryLinux() -> int | None:
    """MemAvailable (free plus reclaimable caches), which SC_AVPHYS_PAGES understates."""
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def checkDataBudget(name: str, voxels: int, dataBytes: int) -> None:
    """Refuse a volume whose header announces more voxel data than memory can hold, before any read.

    Raises:
        MedSegUNetError: one line with the announced size and the budget.
    """
    budget = memoryBudgetBytes()
    if dataBytes > budget or voxels > MAX_VOLUME_VOXELS:
        raise MedSegUNetError(
            f"Volume '{name}' announces {voxels:,} voxels ({dataBytes / 2**30:.1f} GiB of data), more than this computer can take "
            f"(half its free memory: {budget / 2**30:.1f} GiB; at most {MAX_VOLUME_VOXELS:,} voxels): check the file, or crop or downsample it first."
        )


_NRRD_TYPE_BYTES = {
    "signed char": 1, "int8": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1, "uint8": 1, "uint8_t": 1,
    "short": 2, "short int": 2, "signed short": 2, "signed short int": 2, "int16": 2, "int16_t": 2, "ushort": 2,
    "unsigned short": 2, "unsigned short int": 2, "uint16": 2, "uint16_t": 2, "int": 4, "signed int": 4, "int32": 4,
    "int32_t": 4, "uint": 4, "unsigned int": 4, "uint32": 4, "uint32_t": 4, "longlong": 8, "long long": 8, "int64": 8,
    "int64_t": 8, "ulonglong": 8, "unsigned long long": 8, "uint64": 8, "uint64_t": 8, "float": 4, "double": 8,
}


def _nrrdHeader(name: str) -> tuple[dict, int] | None:
    """An NRRD file's header fields and where its attached data starts (None: not an NRRD)."""
    fields: dict[str, str] = {}
    with open(name, "rb") as stream:
        magic = stream.readline(64)
        if not magic.startswith(b"NRRD000"):
            return None
        for _ in range(10000):
            line = stream.readline(1 << 16)
            if line in (b"\n", b"\r\n", b""):
                break
            text = line.decode("latin-1").strip()
            if text.startswith("#") or ":=" in text or ":" not in text:
                continue
            key, value = text.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        return fields, stream.tell()


def _checkNrrd(name: str) -> None:
    """An NRRD's announced size within the budget, and its attached data as long as announced
    (raw) or decoding to that length (gzip): ITK reads raw bytes labelled gzip without an error."""
    parsed = _nrrdHeader(name)
    if parsed is None:
        return
    fields, start = parsed
    try:
        sizes = [int(v) for v in fields.get("sizes", "").split()]
        itemBytes = _NRRD_TYPE_BYTES[fields.get("type", "").lower()]
    except (ValueError, KeyError):
        return  # ITK's reader says what is wrong with such a header
    voxels = 1
    for size in sizes:
        voxels *= max(size, 1)
    checkDataBudget(name, voxels, voxels * itemBytes)
    if "data file" in fields or "datafile" in fields:
        return
    encoding = fields.get("encoding", "raw").lower()
    needed = voxels * itemBytes
    if encoding == "raw" and os.path.getsize(name) - start < needed:
        raise MedSegUNetError(f"Volume '{name}' is cut short (it holds less data than its header announces): copy or export it again.")
    if encoding in ("gzip", "gz"):
        with open(name, "rb") as stream:
            stream.seek(start)
            if stream.read(2) != b"\x1f\x8b":
                raise MedSegUNetError(f"Volume '{name}' says its data is gzip-compressed, but it is not: the file is damaged; export it again.")
        _checkStream(name, lambda: gzip.open(_openAt(name, start), "rb"), needed)


def _openAt(name: str, offset: int):
    stream = open(name, "rb")
    stream.seek(offset)
    return stream


def _checkStream(name: str, opener, needed: int) -> int:
    """Decode a compressed stream up to ``needed`` bytes (never further: a bomb stays small);
    returns the bytes decoded. Raises the cut-short error when it ends early or does not decode."""
    cut = MedSegUNetError(f"Volume '{name}' is cut short or damaged (its data does not decode to the size its header announces): copy or export it again.")
    total = 0
    try:
        with opener() as stream:
            while total < needed:
                block = stream.read(min(1 << 22, needed - total))
                if not block:
                    break
                total += len(block)
    except (EOFError, gzip.BadGzipFile, struct.error, zlib.error):
        raise cut from None
    except OSError as error:
        if "crc" in str(error).lower() or "compressed" in str(error).lower() or "gzip" in str(error).lower():
            raise cut from None
        raise MedSegUNetError(osErrorMessage(error, "read", name)) from None
    if total < needed:
        raise cut
    return total


def checkCompleteFile(path: str | os.PathLike) -> None:
    """Refuse a volume file whose data is not what its header announces, before ITK reads it.

    ITK's NIfTI reader fills a cut-short file with zeros (or garbage) without an error, and its NRRD
    reader takes raw bytes labelled gzip. The announced voxel data is first checked against the
    memory budget (:func:`checkDataBudget`), so a small ``.nii.gz`` that would inflate to tens of
    GiB is refused without inflating it; compressed data is then decoded up to the announced length
    only.

    Raises:
        MedSegUNetError: a cut-short, damaged or over-budget NIfTI or NRRD file.
    """
    suffix = pathSuffix(path)
    name = os.fspath(path)
    if suffix == ".nrrd":
        _checkNrrd(name)
        return
    if suffix not in (".nii", ".nii.gz"):
        return
    cut = MedSegUNetError(f"Volume '{name}' is cut short (it holds less data than its header announces): copy or export it again.")
    try:
        if suffix == ".nii":
            with open(name, "rb") as stream:
                header = stream.read(544)
        else:
            with gzip.open(name, "rb") as stream:
                header = stream.read(544)
    except (EOFError, gzip.BadGzipFile, struct.error, zlib.error):
        raise cut from None
    except OSError as error:
        if "crc" in str(error).lower() or "compressed" in str(error).lower():
            raise cut from None
        raise MedSegUNetError(osErrorMessage(error, "read", name)) from None
    needed = _niftiDataBytes(header)
    if needed is None:
        return
    offset, dataBytes = needed
    checkDataBudget(name, _niftiVoxels(header) or 0, dataBytes)
    if suffix == ".nii":
        if os.path.getsize(name) < offset + dataBytes:
            raise cut
        return
    _checkStream(name, lambda: gzip.open(name, "rb"), offset + dataBytes)


def _niftiVoxels(header: bytes) -> int | None:
    for order in ("<", ">"):
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
        elif len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            dims = struct.unpack(order + "8q", header[16:80])
        else:
            continue
        count = 1
        for size in dims[1 : 1 + max(0, min(int(dims[0]), 7))]:
            count *= max(int(size), 1)
        return count
    return None


def findDicomSeries(folder: str | os.PathLike) -> list[DicomSeries]:
    """All DICOM series in a folder and its sub-folders, sorted by folder then description.

    Args:
        folder: a folder of DICOM files, or a patient folder with one sub-folder per series.

    Returns:
        the series found, each with its SeriesInstanceUID, description and sorted file names.
    """
    found: list[DicomSeries] = []
    # GDCM warns on stderr for every folder without DICOM files; a patient folder has several.
    warningsShown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        for directory, _, files in sorted(os.walk(folder)):
            # GDCM opens every file of a folder: a FIFO there would block the scan for ever.
            for name in files:
                checkRegularFile(os.path.join(directory, name), "A file in the DICOM folder")
            found.extend(_seriesInFolder(directory))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warningsShown)
    return found


def readHeader(path: str) -> sitk.ImageFileReader:
    """A file's header read without its pixels: geometry, and public tags for :func:`headerTag`.

    Raises:
        RuntimeError: ITK cannot read the file.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return reader


def headerTag(reader: sitk.ImageFileReader, tag: str) -> str:
    """A DICOM tag (``"0008|103e"``) of a header read by :func:`readHeader`, stripped; "" when absent."""
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def _seriesInFolder(directory: str) -> list[DicomSeries]:
    """The DICOM series directly inside one folder."""
    found = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory) or ():
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid))
        found.append(DicomSeries(uid=uid, description=headerTag(readHeader(files[0]), "0008|103e"), files=files))
    return found


def selectDicomSeries(folder: str | os.PathLike, series: str | None = None) -> DicomSeries:
    """Pick one series of a DICOM folder.

    Args:
        folder: folder searched recursively.
        series: SeriesInstanceUID, series description, or sub-folder name; needed only when the
            folder holds more than one series.

    Raises:
        MedSegUNetError: no series, no match, or several series and no choice.
    """
    allSeries = findDicomSeries(folder)
    if not allSeries:
        raise MedSegUNetError(f"No DICOM series found in folder '{folder}': point to a volume file or a DICOM series folder.")
    if series is None:
        if len(allSeries) == 1:
            return allSeries[0]
        choices = "; ".join(f"{s.description or '(no description)'} [{s.uid}]" for s in allSeries)
        raise MedSegUNetError(f"Folder '{folder}' holds {len(allSeries)} DICOM series; pick one by UID or description: {choices}")
    matches = [s for s in allSeries if series in (s.uid, s.description, os.path.basename(s.folder))]
    if len(matches) != 1:
        choices = "; ".join(f"{s.description or '(no description)'} [{s.uid}]" for s in allSeries)
        what = "matches no" if not matches else "matches several"
        raise MedSegUNetError(f"Series '{series}' {what} DICOM series in '{folder}'; available: {choices}")
    return matches[0]


def dicomSeriesFromFiles(files: Sequence[str], name: str) -> DicomSeries:
    """The DICOM series made of exactly these files (a DICOM database's files of one loaded volume).

    The files are put in GDCM's order, along the slice normal, as :func:`findDicomSeries` gives
    them, so that reading the series gives the same grid as reading its folder.

    Raises:
        MedSegUNetError: no files, missing or unreadable ones, or files of several series.
    """
    missing = [path for path in files if not os.path.isfile(path)]
    if not files or missing:
        raise MedSegUNetError(f"The DICOM files of '{name}' are not on disk{f' (first missing: {missing[0]})' if missing else ''}: reload the series from the DICOM database.")
    uids, positions, description = set(), [], ""
    for path in files:
        try:
            reader = readHeader(path)
        except RuntimeError:
            raise MedSegUNetError(f"'{path}' of '{name}' is not a readable DICOM file: reload the series from the DICOM database.") from None
        uids.add(headerTag(reader, "0020|000e"))
        description = description or headerTag(reader, "0008|103e")
        direction = np.array(reader.GetDirection(), dtype=float).reshape(3, 3)
        positions.append(float(np.dot(np.array(reader.GetOrigin(), dtype=float), direction[:, 2])))
    if len(uids) != 1:
        raise MedSegUNetError(f"The files of '{name}' belong to {len(uids)} DICOM series: a DICOM SEG references one.")
    ordered = tuple(path for _, path in sorted(zip(positions, files)))
    return DicomSeries(uid=uids.pop(), description=description, files=ordered)


def splitSeriesSelector(spec: str) -> tuple[str, str | None]:
    """``FOLDER::SERIES`` on the command line picks a series of a multi-series DICOM folder."""
    if "::" in spec:
        path, series = spec.split("::", 1)
        return path, series
    return spec, None


def _sliceTag(reader: sitk.ImageSeriesReader, index: int, key: str) -> list[float] | None:
    if not reader.HasMetaDataKey(index, key):
        return None
    try:
        return [float(v) for v in reader.GetMetaData(index, key).replace(",", "\\").split("\\") if v.strip()]
    except ValueError:
        return None


@dataclass(frozen=True)
class SliceLayout:
    """Where the slices of a DICOM series lie (LPS mm), in the reader's order.

    Args:
        positions: N×3 ImagePositionPatient of each slice.
        rowColumn: 3×2 in-plane unit axes (ImageOrientationPatient of the first slice).
        normal: unit vector from the first slice towards the last.
    """

    positions: np.ndarray
    rowColumn: np.ndarray
    normal: np.ndarray

    @property
    def offsets(self) -> np.ndarray:
        """Each slice's distance from the first along ``normal`` (mm)."""
        return (self.positions - self.positions[0]) @ self.normal


def _sliceLayout(reader: sitk.ImageSeriesReader, count: int, name: str) -> SliceLayout | None:
    """Slice positions and orientations of a series read with its metadata; None when absent."""
    positions, orientations = [], []
    for index in range(count):
        position = _sliceTag(reader, index, "0020|0032")
        orientation = _sliceTag(reader, index, "0020|0037")
        if position is None or orientation is None or len(position) != 3 or len(orientation) != 6:
            return None
        positions.append(position)
        orientations.append(orientation)
    orientations = np.asarray(orientations)
    if np.abs(orientations - orientations[0]).max() > SLICE_DIRECTION_TOLERANCE:
        bad = int(np.argmax(np.abs(orientations - orientations[0]).max(axis=1)))
        raise MedSegUNetError(
            f"DICOM series '{name}' mixes slice orientations (slice {bad + 1} of {count} differs from the first): "
            "it is not one volume; split it by orientation."
        )
    positions = np.asarray(positions, dtype=float)
    rowColumn = orientations[0].reshape(2, 3).T
    span = positions[-1] - positions[0]
    normal = np.cross(rowColumn[:, 0], rowColumn[:, 1])
    if np.linalg.norm(span) > 0:
        normal = normal * (1.0 if span @ normal >= 0 else -1.0)
    return SliceLayout(positions=positions, rowColumn=rowColumn, normal=normal / np.linalg.norm(normal))


def checkSliceSpacing(layout: SliceLayout, name: str) -> str | None:
    """Why a series' slices do not form a regular grid (one line), or None when they do.

    Checks, along the slice normal: no two slices at one position, no gap or uneven step, and each
    slice's origin on the line through the first (a tilted-gantry stack is not a volume either).
    """
    offsets = layout.offsets
    if len(offsets) < 2:
        return None
    steps = np.diff(offsets)
    duplicate = np.flatnonzero(np.abs(steps) < 1e-3)
    if duplicate.size:
        at = int(duplicate[0])
        return f"slices {at + 1} and {at + 2} lie at the same position ({offsets[at]:.2f} mm along the normal): the series holds duplicated slices"
    step = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - step) > max(SLICE_SPACING_TOLERANCE * abs(step), 1e-3))
    if uneven.size:
        at = int(uneven[0])
        kind = "a gap" if steps[at] > step else "an uneven step"
        return (
            f"{kind} of {steps[at]:.2f} mm between slices {at + 1} and {at + 2} (at {offsets[at]:.2f}–{offsets[at + 1]:.2f} mm "
            f"along the normal) where the other slices are {step:.2f} mm apart: slices are missing or unevenly spaced"
        )
    lateral = (layout.positions - layout.positions[0]) - np.outer(offsets, layout.normal)
    drift = np.linalg.norm(lateral, axis=1)
    if drift.max() > max(SLICE_SPACING_TOLERANCE * abs(step), 1e-2):
        return f"the slices are sheared ({drift.max():.2f} mm off the slice normal, e.g. a tilted gantry): the stack is not a regular volume"
    return None


def resampleSlices(image: sitk.Image, layout: SliceLayout) -> sitk.Image:
    """The series on a regular grid built from its true slice positions (linear between slices).

    The step is the median distance between neighbouring slices; a slice that falls in a gap is
    interpolated from the slices on both sides. Duplicated positions keep their first slice.

    Args:
        image: the series as read (K, J, I array; slices in ``layout`` order).
        layout: the true positions.

    Returns:
        an image with origin at the first slice, the series' in-plane axes and the slice normal.
    """
    offsets = layout.offsets
    keep = np.concatenate([[True], np.diff(offsets) > 1e-3])
    offsets, array = offsets[keep], sitk.GetArrayFromImage(image)[keep].astype(np.float32)
    step = float(np.median(np.diff(offsets)))
    count = int(round(offsets[-1] / step)) + 1
    targets = np.arange(count) * step
    upper = np.clip(np.searchsorted(offsets, targets, side="left"), 1, len(offsets) - 1)
    lower = upper - 1
    weight = np.clip((targets - offsets[lower]) / (offsets[upper] - offsets[lower]), 0.0, 1.0)[:, None, None]
    resampled = (1.0 - weight) * array[lower] + weight * array[upper]
    out = sitk.GetImageFromArray(resampled.astype(np.float32))
    spacing = image.GetSpacing()
    out.SetSpacing((spacing[0], spacing[1], step))
    out.SetOrigin(tuple(float(v) for v in layout.positions[0]))
    out.SetDirection(tuple(float(v) for v in np.column_stack([layout.rowColumn, layout.normal]).ravel()))
    return out


def readDicomSeries(series: DicomSeries, name: str, resampleIrregular: bool = False) -> sitk.Image:
    """Read a DICOM series, refusing slices that do not form a regular grid.

    Args:
        series: the series' files, sorted along the slice normal by GDCM.
        name: display name for messages.
        resampleIrregular: resample a series with gaps, duplicates or uneven steps onto a regular
            grid built from the true slice positions (:func:`resampleSlices`) instead of refusing it.

    Raises:
        MedSegUNetError: unreadable files, mixed orientations, or irregular slices (unless resampled).
    """
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    reader.MetaDataDictionaryArrayUpdateOn()
    with nativeMessages() as captured:
        try:
            image = reader.Execute()
        except RuntimeError as error:
            raise MedSegUNetError(f"Cannot read DICOM series '{name}' ({_nativeReason(error, captured)}): check that its files are complete.") from None
    layout = _sliceLayout(reader, len(series.files), name)
    if layout is not None and image.GetSize()[2] == len(series.files):
        problem = checkSliceSpacing(layout, name)
        if problem is not None:
            if not resampleIrregular or "sheared" in problem:
                hint = "re-export the complete series" + ("" if "sheared" in problem else ", or pass --resample-irregular to resample it from the true slice positions")
                raise MedSegUNetError(f"DICOM series '{name}': {problem}; {hint}.")
            resampled = resampleSlices(image, layout)
            if not image.HasMetaDataKey("0008|103e") and series.description:
                resampled.SetMetaData("0008|103e", series.description)
            return resampled
    if not image.HasMetaDataKey("0008|103e") and series.description:
        image.SetMetaData("0008|103e", series.description)
    return image


def readVolume(path: str | os.PathLike, series: str | None = None, resampleIrregular: bool = False, found: DicomSeries | None = None) -> sitk.Image:
    """Read a scalar volume from a file or a DICOM series folder, after checking it is whole.

    Args:
        path: volume file or DICOM folder. ``FOLDER::SERIES`` selects a series by UID or description.
        series: the series to pick in a multi-series DICOM folder (overrides the ``::`` form).
        resampleIrregular: see :func:`readDicomSeries`.
        found: the DICOM series at ``path`` when a scan already found it (a cohort's series
            matching): its files are read without scanning the folder again.

    Returns:
        the image with origin, spacing and direction in LPS mm; a single-component scalar volume.

    Raises:
        MedSegUNetError: missing, special or unreadable file, cut-short data, irregular DICOM
            slices, 4D, vector or complex data, or NaN/Inf voxels.
    """
    path, fromSpec = splitSeriesSelector(str(path))
    series = series or fromSpec
    status = checkRegularFile(path)
    if stat.S_ISDIR(status.st_mode):
        chosen = found if found is not None else selectDicomSeries(path, series)
        image = readDicomSeries(chosen, volumeName(path if series is None else f"{path}::{series}"), resampleIrregular)
    else:
        if pathSuffix(path) not in VOLUME_SUFFIXES:
            raise MedSegUNetError(f"'{path}' is not a volume file this tool reads ({', '.join(VOLUME_SUFFIXES)}) nor a DICOM folder.")
        image = _readImageFile(path)
    checkScalarVolume(image, path)
    return image


def _readImageFile(path: str) -> sitk.Image:
    """An image file read whole (cut-short NIfTI refused), ITK's complaints in one line."""
    checkCompleteFile(path)
    with nativeMessages() as captured:
        try:
            return sitk.ReadImage(path)
        except RuntimeError as error:
            raise MedSegUNetError(f"Cannot read volume '{path}' ({_nativeReason(error, captured)}): check that it is a complete, valid image file.") from None


def resolveTablePath(base: str, value: str) -> str:
    """A path from a case table (CSV), relative to the table's folder; ``::SERIES`` kept."""
    path, _, series = value.strip().partition("::")
    path = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
    return f"{path}::{series}" if series else path


def readVolumeChannel(path: str, channel: int | None, resampleIrregular: bool = False, found: DicomSeries | None = None) -> sitk.Image:
    """One channel of a multi-channel file (a 4D Decathlon image or a vector image), or a volume.

    Args:
        channel: index along the 4th axis or of the vector components; None reads a 3D volume.
        found: see :func:`readVolume`.

    Raises:
        MedSegUNetError: as :func:`readVolume`, or a channel the file does not have.
    """
    if channel is None:
        return readVolume(path, resampleIrregular=resampleIrregular, found=found)
    checkRegularFile(path)
    image = _readImageFile(path)
    if image.GetNumberOfComponentsPerPixel() > 1:
        if channel >= image.GetNumberOfComponentsPerPixel():
            raise MedSegUNetError(f"'{path}' has {image.GetNumberOfComponentsPerPixel()} channels; channel {channel} was asked for.")
        image = sitk.VectorIndexSelectionCast(image, channel)
    elif image.GetDimension() == 4:
        size = list(image.GetSize())
        if channel >= size[3]:
            raise MedSegUNetError(f"'{path}' has {size[3]} channels along its 4th axis; channel {channel} was asked for.")
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, channel])
    elif channel:
        raise MedSegUNetError(f"'{path}' is a 3D volume but input channel {channel} was asked for: store multi-channel images as 4D.")
    checkScalarVolume(image, path)
    return image


def checkScalarVolume(image: sitk.Image, name: str) -> None:
    """Refuse what a segmentation model cannot take as one channel.

    Raises:
        MedSegUNetError: a vector/4D volume, a 2D image, complex voxels, or NaN/Inf voxels.
    """
    if image.GetDimension() != 3:
        raise MedSegUNetError(
            f"Volume '{name}' has {image.GetDimension()} dimensions; a 3D scalar volume is needed (split 4D series into 3D volumes first)."
        )
    if image.GetPixelID() in _COMPLEX_PIXELS:
        raise MedSegUNetError(f"Volume '{name}' has complex voxels: save its magnitude (or real part) as a scalar volume first.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise MedSegUNetError(
            f"Volume '{name}' has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar volume is needed (extract one component first)."
        )
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
            raise MedSegUNetError(f"Volume '{name}' contains NaN or infinite voxels: fix or mask them before segmenting.")


def volumeName(path: str | os.PathLike) -> str:
    """A short display name for a volume path (file name without its suffix, or the folder name)."""
    path, series = splitSeriesSelector(str(path))
    base = Path(path.rstrip("/\\") or path).name
    suffix = pathSuffix(base)
    if suffix in VOLUME_SUFFIXES or suffix == ".seg.nrrd":
        base = base[: -len(suffix)]
    return f"{base}:{series}" if series else base


def sha256(path: str | os.PathLike) -> str:
    """The SHA256 of a file, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def companionPaths(path: str | os.PathLike) -> list[str]:
    """Data files that a header-only output (``.mhd``) writes beside itself."""
    path = os.fspath(path)
    suffix = pathSuffix(path)
    stem = path[: -len(suffix)] if suffix else path
    return [stem + extra for extra in _COMPANION_SUFFIXES.get(suffix, ())]


def checkOutputPath(path: str | os.PathLike, allowed: Sequence[str] | None = None) -> None:
    """Fail early, before any work, on an output path that cannot be written.

    Raises:
        MedSegUNetError: missing or read-only folder, a folder where the file should go, or an
            unsupported suffix.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise MedSegUNetError(f"Output folder '{folder}' does not exist: create it first or choose another path.")
    if os.path.isdir(path):
        raise MedSegUNetError(f"Output '{path}' is a folder: give a file name inside it.")
    if allowed is not None and pathSuffix(path) not in allowed:
        raise MedSegUNetError(f"Output '{path}' must end with one of {', '.join(allowed)}.")
    if not os.access(folder, os.W_OK):
        raise MedSegUNetError(f"Cannot write to output folder '{folder}': it is read-only for you; choose another folder.")


def _realPath(path: str | os.PathLike) -> str:
    return os.path.realpath(splitSeriesSelector(os.fspath(path))[0])


def checkDistinctPaths(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, str | os.PathLike | Sequence | None]) -> None:
    """Refuse outputs that would overwrite an input or each other, comparing real paths.

    Args:
        outputs: option → path (None for an output not asked for).
        inputs: option → path or list of paths (volumes, DICOM folders, model, checkpoint, ...);
            an output inside an input folder is refused too, since it would change that input.

    Raises:
        MedSegUNetError: one line naming both options.
    """
    inputPaths: list[tuple[str, str]] = []
    for option, value in inputs.items():
        for item in [value] if isinstance(value, (str, os.PathLike)) else list(value or ()):
            if item:
                inputPaths.append((option, _realPath(item)))
    seen: dict[str, str] = {}
    for option, value in outputs.items():
        if not value:
            continue
        for candidate in [os.fspath(value), *companionPaths(value)]:
            real = _realPath(candidate)
            for inputOption, inputPath in inputPaths:
                if real == inputPath or (os.path.isdir(inputPath) and real.startswith(inputPath.rstrip(os.sep) + os.sep)):
                    where = "is" if real == inputPath else "lies inside"
                    raise MedSegUNetError(
                        f"{option} '{os.fspath(value)}' {where} the input given as {inputOption}: writing it would change that input; choose another output path."
                    )
            if real in seen and seen[real] != option:
                raise MedSegUNetError(f"{option} and {seen[real]} name the same file '{os.fspath(value)}': give each output its own path.")
            seen[real] = option


@contextlib.contextmanager
def signalsDeferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while outputs are renamed, so that a run's outputs appear together."""
    blockable = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held) if blockable else None
    try:
        yield
    finally:
        if blockable:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StagedOutputs:
    """Outputs of one run, written under hidden staging folders and renamed into place together.

    Each output gets its own staging folder beside its destination, holding the file under its
    final name (so that multi-file formats such as ``.mhd`` keep valid references). On success
    every output is verified, then all are renamed with SIGINT/SIGTERM held; on any error or
    interruption every staging folder is removed and no destination is touched.

    Example::

        with StagedOutputs() as outputs:
            writeImageFile(image, outputs.stage("seg.nii.gz", verify=imageVerifier(image)))
            writeTextFile(csvText, outputs.stage("stats.csv"))
    """

    def __init__(self) -> None:
        self._staged: list[tuple[str, str, str, Callable[[str], None] | None]] = []

    def stage(self, path: str | os.PathLike, allowed: Sequence[str] | None = None, verify: Callable[[str], None] | None = None) -> str:
        """The temporary path to write ``path`` to.

        Args:
            verify: called with the temporary path before anything is renamed; raises when the
                written file is not what was meant.
        """
        path = os.fspath(path)
        checkOutputPath(path, allowed)
        folder = os.path.dirname(os.path.abspath(path))
        try:
            staging = tempfile.mkdtemp(prefix=".medsegunet-", dir=folder)
        except OSError as error:
            raise MedSegUNetError(osErrorMessage(error, "write", path)) from None
        temporary = os.path.join(staging, os.path.basename(path))
        self._staged.append((path, staging, temporary, verify))
        return temporary

    def commit(self) -> None:
        """Verify every staged output, then rename all into place."""
        for path, _, temporary, verify in self._staged:
            if not os.path.isfile(temporary):
                raise MedSegUNetError(f"Output '{path}' was not written: nothing was kept.")
            if verify is not None:
                verify(temporary)
        with signalsDeferred():
            for path, staging, temporary, _ in self._staged:
                folder = os.path.dirname(os.path.abspath(path))
                try:
                    for name in sorted(os.listdir(staging)):
                        if name != os.path.basename(temporary):
                            os.replace(os.path.join(staging, name), os.path.join(folder, name))
                    os.replace(temporary, path)
                except OSError as error:
                    raise MedSegUNetError(osErrorMessage(error, "write", path)) from None

    def discard(self) -> None:
        for _, staging, _, _ in self._staged:
            shutil.rmtree(staging, ignore_errors=True)
        self._staged = []

    def __enter__(self) -> "StagedOutputs":
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        try:
            if kind is None:
                self.commit()
            elif issubclass(kind, OSError) and self._staged:
                raise MedSegUNetError(osErrorMessage(error, "write", self._staged[-1][0])) from None
        finally:
            self.discard()
        return False


@contextlib.contextmanager
def atomicOutput(path: str | os.PathLike, verify: Callable[[str], None] | None = None) -> Iterator[str]:
    """Yield a temporary path for ``path``; it replaces ``path`` only if the block succeeds.

    The temporary path has the final file name (inside a hidden staging folder), so writers that
    pick a format by suffix, and multi-file formats, work unchanged.
    """
    with StagedOutputs() as outputs:
        yield outputs.stage(path, verify=verify)


def imageVerifier(expected: sitk.Image) -> Callable[[str], None]:
    """A check that a written image file reads back whole, with ``expected``'s size and voxels."""

    def verify(path: str) -> None:
        try:
            checkCompleteFile(path)
            with nativeMessages() as captured:
                try:
                    written = sitk.ReadImage(path)
                except RuntimeError as error:
                    raise MedSegUNetError(f"'{os.path.basename(path)}' cannot be read back ({_nativeReason(error, captured)})") from None
        except MedSegUNetError as error:
            raise MedSegUNetError(f"The output '{os.path.basename(path)}' was written incompletely ({str(error).rstrip('.')}); nothing was kept: check the free disk space.") from None
        if written.GetSize() != expected.GetSize() or sitk.Hash(sitk.Cast(written, expected.GetPixelID())) != sitk.Hash(expected):
            raise MedSegUNetError(f"The output '{os.path.basename(path)}' reads back different from what was written; nothing was kept: check the disk.")

    return verify


_WRITE_FAILED = "the disk is full, a file-size limit was reached, or the folder is not writable; nothing was kept: free space, check 'ulimit -f' and the folder's permissions."


def writeImageFile(image: sitk.Image, path: str, compress: bool = True) -> None:
    """``sitk.WriteImage`` that raises on a short write (ITK's NIfTI writer only prints it)."""
    with nativeMessages() as captured:
        try:
            sitk.WriteImage(image, path, compress)
        except RuntimeError:
            # ITK does not say why (its message names only the staging path).
            raise MedSegUNetError(f"Cannot write '{os.path.basename(path)}': {_WRITE_FAILED}") from None
    short = [line for line in captured if "wrote only" in line.lower()]
    if short:
        raise MedSegUNetError(f"Cannot write '{os.path.basename(path)}': only part of it was written; {_WRITE_FAILED}")


def textVerifier(text: str) -> Callable[[str], None]:
    """A check that a written text file holds all of ``text``."""
    size = len(text.encode("utf-8"))

    def verify(path: str) -> None:
        if os.path.getsize(path) != size:
            raise MedSegUNetError(f"The output '{os.path.basename(path)}' was written incompletely; nothing was kept: check the free disk space.")

    return verify


def writeTextFile(text: str, path: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as stream:
        stream.write(text)


def writeVolume(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write an image atomically (staged, read back, then renamed)."""
    with atomicOutput(path, verify=imageVerifier(image)) as temporary:
        writeImageFile(image, temporary, compress)


def writeText(text: str, path: str | os.PathLike) -> None:
    """Write a text file atomically."""
    with atomicOutput(path, verify=textVerifier(text)) as temporary:
        writeTextFile(text, temporary)
