"""Reading and writing volumes with SimpleITK, keeping their full geometry.

A volume is a ``SimpleITK.Image``: physical space is ITK's LPS (mm), the image index is IJK, and
``SimpleITK.GetArrayFromImage`` returns a KJI array. Files (``.nrrd``, ``.nhdr``, ``.nii``,
``.nii.gz``, ``.mha``, ``.mhd``) and DICOM series folders are accepted; a folder holding several
series (directly or in sub-folders) needs a SeriesInstanceUID or a series description to pick one.

Outputs are written to a temporary name in the destination folder and renamed at the end, so an
error never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import MedSegUNetError

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
LABELMAP_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".mhd", ".seg.nrrd")


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
        for directory, _, _ in sorted(os.walk(folder)):
            found.extend(_seriesInFolder(directory))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warningsShown)
    return found


def _seriesInFolder(directory: str) -> list[DicomSeries]:
    """The DICOM series directly inside one folder."""
    found = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory) or ():
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid))
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        reader.LoadPrivateTagsOff()
        reader.ReadImageInformation()
        description = reader.GetMetaData("0008|103e").strip() if reader.HasMetaDataKey("0008|103e") else ""
        found.append(DicomSeries(uid=uid, description=description, files=files))
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


def splitSeriesSelector(spec: str) -> tuple[str, str | None]:
    """``FOLDER::SERIES`` on the command line picks a series of a multi-series DICOM folder."""
    if "::" in spec:
        path, series = spec.split("::", 1)
        return path, series
    return spec, None


def readVolume(path: str | os.PathLike, series: str | None = None) -> sitk.Image:
    """Read a scalar volume from a file or a DICOM series folder.

    Args:
        path: volume file or DICOM folder. ``FOLDER::SERIES`` selects a series by UID or description.
        series: the series to pick in a multi-series DICOM folder (overrides the ``::`` form).

    Returns:
        the image with origin, spacing and direction in LPS mm; a single-component scalar volume.

    Raises:
        MedSegUNetError: missing or unreadable file, 4D or vector data, or NaN/Inf voxels.
    """
    path, fromSpec = splitSeriesSelector(str(path))
    series = series or fromSpec
    if not os.path.exists(path):
        raise MedSegUNetError(f"Volume '{path}' does not exist: check the path.")
    try:
        if os.path.isdir(path):
            chosen = selectDicomSeries(path, series)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(list(chosen.files))
            image = reader.Execute()
            if not image.HasMetaDataKey("0008|103e") and chosen.description:
                image.SetMetaData("0008|103e", chosen.description)
        else:
            if pathSuffix(path) not in VOLUME_SUFFIXES:
                raise MedSegUNetError(
                    f"'{path}' is not a volume file this tool reads ({', '.join(VOLUME_SUFFIXES)}) nor a DICOM folder."
                )
            image = sitk.ReadImage(path)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
        raise MedSegUNetError(f"Cannot read volume '{path}' ({reason}): check that it is a valid image file.") from None
    checkScalarVolume(image, path)
    return image


def checkScalarVolume(image: sitk.Image, name: str) -> None:
    """Refuse what a segmentation model cannot take as one channel.

    Raises:
        MedSegUNetError: a vector/4D volume, a 2D image, or NaN/Inf voxels.
    """
    if image.GetDimension() != 3:
        raise MedSegUNetError(
            f"Volume '{name}' has {image.GetDimension()} dimensions; a 3D scalar volume is needed (split 4D series into 3D volumes first)."
        )
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
    base = Path(path).name
    suffix = pathSuffix(base)
    if suffix in VOLUME_SUFFIXES or suffix == ".seg.nrrd":
        base = base[: -len(suffix)]
    return f"{base}:{series}" if series else base


def checkOutputPath(path: str | os.PathLike, allowed: Sequence[str] | None = None) -> None:
    """Fail early, before any work, on an output path that cannot be written.

    Raises:
        MedSegUNetError: missing folder or unsupported suffix.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise MedSegUNetError(f"Output folder '{folder}' does not exist: create it first or choose another path.")
    if allowed is not None and pathSuffix(path) not in allowed:
        raise MedSegUNetError(f"Output '{path}' must end with one of {', '.join(allowed)}.")


@contextlib.contextmanager
def atomicOutput(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The temporary name keeps the suffix, so writers that pick a format by suffix still work.
    """
    path = os.fspath(path)
    checkOutputPath(path)
    folder = os.path.dirname(os.path.abspath(path))
    suffix = pathSuffix(path)
    handle, temporary = tempfile.mkstemp(prefix=".medsegunet-", suffix=suffix, dir=folder)
    os.close(handle)
    try:
        yield temporary
        # mkstemp makes the file private; the result gets the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def writeVolume(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write an image atomically (temporary name, then rename)."""
    with atomicOutput(path) as temporary:
        sitk.WriteImage(image, temporary, compress)


def writeText(text: str, path: str | os.PathLike) -> None:
    """Write a text file atomically."""
    with atomicOutput(path) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
