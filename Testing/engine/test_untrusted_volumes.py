"""Volumes that lie are refused before they are inflated or read as something else.

A header's announced voxel data is checked against the memory budget before any allocation or
decompression; compressed data is decoded up to the announced length and no further; an NRRD whose
header says gzip over raw bytes is refused (ITK would read it and segment garbage).
"""

from __future__ import annotations

import gzip
import struct
import time

import pytest
import SimpleITK as sitk

from MedSegUNetLib import cli


def _niftiBomb(path, size=(4000, 4000, 4000)) -> None:
    """A .nii.gz of ~100 KB whose header announces 4000³ float32 voxels (238 GiB)."""
    small = path.parent / "small.nii"
    sitk.WriteImage(sitk.Image(10, 10, 10, sitk.sitkFloat32), str(small))
    header = bytearray(small.read_bytes()[:352])
    struct.pack_into("<8h", header, 40, 3, *size, 1, 1, 1, 1)
    with gzip.open(path, "wb", compresslevel=9) as stream:
        stream.write(bytes(header))
        for _ in range(16):
            stream.write(bytes(1 << 24))


def _nrrdWithEncoding(path, compressed: bool, claimed: str | None = None, cut: int = 0) -> None:
    image = sitk.Image(40, 30, 12, sitk.sitkInt16) + 7
    sitk.WriteImage(image, str(path), compressed)
    data = path.read_bytes()
    if claimed is not None:
        data = data.replace(b"encoding: raw", f"encoding: {claimed}".encode()).replace(b"encoding: gzip", f"encoding: {claimed}".encode())
    path.write_bytes(data[: len(data) - cut] if cut else data)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: _niftiBomb(p / "v.nii.gz"), "announces 64,000,000,000 voxels"),
        (lambda p: _nrrdWithEncoding(p / "v.nrrd", compressed=False, claimed="gzip"), "says its data is gzip-compressed, but it is not"),
        (lambda p: _nrrdWithEncoding(p / "v.nrrd", compressed=True, cut=40), "does not decode to the size its header announces"),
        (lambda p: _nrrdWithEncoding(p / "v.nrrd", compressed=False, cut=100), "is cut short"),
    ],
    ids=["nifti-gzip-bomb", "nrrd-raw-labelled-gzip", "nrrd-gzip-cut", "nrrd-raw-cut"],
)
def test_a_lying_volume_is_one_line_and_fast(capsys, tmp_path, make, expected):
    make(tmp_path)
    volume = next(path for path in tmp_path.iterdir() if path.name.startswith("v."))
    started = time.monotonic()
    assert cli.main(["roi", str(volume)]) == 2
    assert time.monotonic() - started < 20  # nothing was inflated
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gzip"])
def test_honest_nrrd_files_still_read(capsys, tmp_path, compressed):
    _nrrdWithEncoding(tmp_path / "v.nrrd", compressed=compressed)
    assert cli.main(["roi", "-q", str(tmp_path / "v.nrrd"), "--json", str(tmp_path / "roi.json")]) == 0, capsys.readouterr().err
