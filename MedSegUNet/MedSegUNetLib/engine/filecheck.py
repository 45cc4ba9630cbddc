"""What a volume file's header announces, checked before ITK reads it.

ITK's NIfTI reader fills a cut-short file with zeros without an error, and its NRRD reader takes raw
bytes labelled gzip; a small ``.nii.gz`` can announce tens of GiB. The announced voxel data is held
to a memory budget before anything is read, and compressed data is decoded to the announced length
only.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

from .errors import VolumeError, osErrorMessage
from .paths import pathSuffix

# Slice positions of a DICOM series count as regular when they differ from the median step by at
# most this share of it (scanners round positions to 0.01 mm or better).
# ITK and numpy index voxels with 64-bit integers, but a volume of more than 2^31 voxels is no MRI.
MAX_VOLUME_VOXELS = 2**31 - 1


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
        raise VolumeError(
            f"Volume '{name}' announces {voxels:,} voxels ({dataBytes / 2**30:.1f} GiB of data), more than this computer can take "
            f"(half its free memory: {budget / 2**30:.1f} GiB; at most {MAX_VOLUME_VOXELS:,} voxels): check the file, or crop or "
            "downsample it first."
        )


def checkTensorBudget(what: str, shape, copies: int = 4) -> None:
    """Refuse a float32 tensor of ``shape`` that would not fit, with ``copies`` like it (the input,
    the network's activations, its output), in the memory budget, before it is allocated.

    Raises:
        MedSegUNetError: one line with the tensor's size and the budget.
    """
    voxels = 1
    for size in shape:
        voxels *= max(int(size), 1)
    needed, budget = voxels * 4 * copies, memoryBudgetBytes()
    if needed > budget:
        raise VolumeError(
            f"{what} of shape {' × '.join(str(int(n)) for n in shape)} needs about {needed / 2**30:.1f} GiB, more than this computer's "
            "memory budget "
            f"(half its free memory: {budget / 2**30:.1f} GiB): check the card's grid or patch size."
        )


_NRRD_TYPE_BYTES = {
    "signed char": 1,
    "int8": 1,
    "int8_t": 1,
    "uchar": 1,
    "unsigned char": 1,
    "uint8": 1,
    "uint8_t": 1,
    "short": 2,
    "short int": 2,
    "signed short": 2,
    "signed short int": 2,
    "int16": 2,
    "int16_t": 2,
    "ushort": 2,
    "unsigned short": 2,
    "unsigned short int": 2,
    "uint16": 2,
    "uint16_t": 2,
    "int": 4,
    "signed int": 4,
    "int32": 4,
    "int32_t": 4,
    "uint": 4,
    "unsigned int": 4,
    "uint32": 4,
    "uint32_t": 4,
    "longlong": 8,
    "long long": 8,
    "int64": 8,
    "int64_t": 8,
    "ulonglong": 8,
    "unsigned long long": 8,
    "uint64": 8,
    "uint64_t": 8,
    "float": 4,
    "double": 8,
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
        raise VolumeError(f"Volume '{name}' is cut short (it holds less data than its header announces): copy or export it again.")
    if encoding in ("gzip", "gz"):
        with open(name, "rb") as stream:
            stream.seek(start)
            if stream.read(2) != b"\x1f\x8b":
                raise VolumeError(f"Volume '{name}' says its data is gzip-compressed, but it is not: the file is damaged; export it again.")
        _checkStream(name, lambda: gzip.open(_openAt(name, start), "rb"), needed)


def _openAt(name: str, offset: int):
    stream = open(name, "rb")
    stream.seek(offset)
    return stream


def _checkStream(name: str, opener, needed: int) -> int:
    """Decode a compressed stream up to ``needed`` bytes (never further: a bomb stays small);
    returns the bytes decoded. Raises the cut-short error when it ends early or does not decode."""
    cut = VolumeError(
        f"Volume '{name}' is cut short or damaged (its data does not decode to the size its header announces): copy or export it again."
    )
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
        raise VolumeError(osErrorMessage(error, "read", name)) from None
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
    cut = VolumeError(f"Volume '{name}' is cut short (it holds less data than its header announces): copy or export it again.")
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
        raise VolumeError(osErrorMessage(error, "read", name)) from None
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


__all__ = ["memoryBudgetBytes", "checkDataBudget", "checkTensorBudget", "checkCompleteFile"]
