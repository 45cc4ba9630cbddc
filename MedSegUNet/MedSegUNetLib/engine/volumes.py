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

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .errors import VolumeError
from .filecheck import checkCompleteFile
from .paths import VOLUME_SUFFIXES, _nativeReason, checkRegularFile, nativeMessages, pathSuffix, splitSeriesSelector

_COMPLEX_PIXELS = {getattr(sitk, name) for name in ("sitkComplexFloat32", "sitkComplexFloat64") if hasattr(sitk, name)}
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
        raise VolumeError(f"No DICOM series found in folder '{folder}': point to a volume file or a DICOM series folder.")
    if series is None:
        if len(allSeries) == 1:
            return allSeries[0]
        choices = "; ".join(f"{s.description or '(no description)'} [{s.uid}]" for s in allSeries)
        example = allSeries[0].description or allSeries[0].uid
        raise VolumeError(
            f"Folder '{folder}' holds {len(allSeries)} DICOM series; pick one as FOLDER::SERIES (its UID, description or "
            f"sub-folder), such as '{os.fspath(folder)}::{example}': {choices}"
        )
    matches = [s for s in allSeries if series in (s.uid, s.description, os.path.basename(s.folder))]
    if len(matches) != 1:
        choices = "; ".join(f"{s.description or '(no description)'} [{s.uid}]" for s in allSeries)
        what = "matches no" if not matches else "matches several"
        raise VolumeError(f"Series '{series}' {what} DICOM series in '{folder}'; available: {choices}")
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
        raise VolumeError(
            f"The DICOM files of '{name}' are not on disk{f' (first missing: {missing[0]})' if missing else ''}: reload the series from "
            "the DICOM database."
        )
    uids, positions, description = set(), [], ""
    for path in files:
        try:
            reader = readHeader(path)
        except RuntimeError:
            raise VolumeError(f"'{path}' of '{name}' is not a readable DICOM file: reload the series from the DICOM database.") from None
        uids.add(headerTag(reader, "0020|000e"))
        description = description or headerTag(reader, "0008|103e")
        direction = np.array(reader.GetDirection(), dtype=float).reshape(3, 3)
        positions.append(float(np.dot(np.array(reader.GetOrigin(), dtype=float), direction[:, 2])))
    if len(uids) != 1:
        raise VolumeError(f"The files of '{name}' belong to {len(uids)} DICOM series: a DICOM SEG references one.")
    ordered = tuple(path for _, path in sorted(zip(positions, files)))
    return DicomSeries(uid=uids.pop(), description=description, files=ordered)


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
        raise VolumeError(
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
        return (
            f"slices {at + 1} and {at + 2} lie at the same position ({offsets[at]:.2f} mm along the normal): the series holds "
            "duplicated slices"
        )
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
        return (
            f"the slices are sheared ({drift.max():.2f} mm off the slice normal, e.g. a tilted gantry): the stack is not a regular volume"
        )
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
            raise VolumeError(
                f"Cannot read DICOM series '{name}' ({_nativeReason(error, captured)}): check that its files are complete."
            ) from None
    layout = _sliceLayout(reader, len(series.files), name)
    if layout is not None and image.GetSize()[2] == len(series.files):
        problem = checkSliceSpacing(layout, name)
        if problem is not None:
            if not resampleIrregular or "sheared" in problem:
                hint = "re-export the complete series" + (
                    "" if "sheared" in problem else ", or pass --resample-irregular to resample it from the true slice positions"
                )
                raise VolumeError(f"DICOM series '{name}': {problem}; {hint}.")
            resampled = resampleSlices(image, layout)
            if not image.HasMetaDataKey("0008|103e") and series.description:
                resampled.SetMetaData("0008|103e", series.description)
            return resampled
    if not image.HasMetaDataKey("0008|103e") and series.description:
        image.SetMetaData("0008|103e", series.description)
    return image


def readVolume(
    path: str | os.PathLike, series: str | None = None, resampleIrregular: bool = False, found: DicomSeries | None = None
) -> sitk.Image:
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
            raise VolumeError(f"'{path}' is not a volume file this tool reads ({', '.join(VOLUME_SUFFIXES)}) nor a DICOM folder.")
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
            raise VolumeError(
                f"Cannot read volume '{path}' ({_nativeReason(error, captured)}): check that it is a complete, valid image file."
            ) from None


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
            raise VolumeError(f"'{path}' has {image.GetNumberOfComponentsPerPixel()} channels; channel {channel} was asked for.")
        image = sitk.VectorIndexSelectionCast(image, channel)
    elif image.GetDimension() == 4:
        size = list(image.GetSize())
        if channel >= size[3]:
            raise VolumeError(f"'{path}' has {size[3]} channels along its 4th axis; channel {channel} was asked for.")
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, channel])
    elif channel:
        raise VolumeError(f"'{path}' is a 3D volume but input channel {channel} was asked for: store multi-channel images as 4D.")
    checkScalarVolume(image, path)
    return image


def checkScalarVolume(image: sitk.Image, name: str) -> None:
    """Refuse what a segmentation model cannot take as one channel.

    Raises:
        MedSegUNetError: a vector/4D volume, a 2D image, complex voxels, or NaN/Inf voxels.
    """
    if image.GetDimension() != 3:
        raise VolumeError(
            f"Volume '{name}' has {image.GetDimension()} dimensions; a 3D scalar volume is needed (split 4D series into 3D volumes first)."
        )
    if image.GetPixelID() in _COMPLEX_PIXELS:
        raise VolumeError(f"Volume '{name}' has complex voxels: save its magnitude (or real part) as a scalar volume first.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            f"Volume '{name}' has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar volume is needed (extract one "
            "component first)."
        )
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
            raise VolumeError(f"Volume '{name}' contains NaN or infinite voxels: fix or mask them before segmenting.")


def volumeName(path: str | os.PathLike) -> str:
    """A short display name for a volume path (file name without its suffix, or the folder name)."""
    path, series = splitSeriesSelector(str(path))
    base = Path(path.rstrip("/\\") or path).name
    suffix = pathSuffix(base)
    if suffix in VOLUME_SUFFIXES or suffix == ".seg.nrrd":
        base = base[: -len(suffix)]
    return f"{base}:{series}" if series else base


__all__ = [
    "DicomSeries",
    "findDicomSeries",
    "readHeader",
    "headerTag",
    "selectDicomSeries",
    "dicomSeriesFromFiles",
    "SliceLayout",
    "checkSliceSpacing",
    "resampleSlices",
    "readDicomSeries",
    "readVolume",
    "resolveTablePath",
    "readVolumeChannel",
    "checkScalarVolume",
    "volumeName",
]
