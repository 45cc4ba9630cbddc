"""DICOM Segmentation objects (highdicom) for PACS and viewers, from a result on a DICOM series.

The reference input must be a DICOM series: its files are the SEG's source images, in the order
the series was read (GDCM's order along the slice normal, the K axis of the label map), so frame
k of the SEG references source image k and its geometry reproduces the label map exactly (rows =
J, columns = I). One segment per card label, with the card's name, colour and terminology codes
(a generic "Tissue" code when a label has none); the algorithm is identified by the card's name
and version. Sigmoid regions, which may overlap, are stored as such (one binary frame per segment
and slice); softmax labels as a label map.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .cardview import cardView
from .errors import DependencyError, OutputError, VolumeError
from .paths import splitSeriesSelector
from .volumes import DicomSeries, selectDicomSeries

GENERIC_CODE = ("SCT", "85756007", "Tissue")


def referenceSeries(path: str) -> DicomSeries:
    """The DICOM series a ``FOLDER`` or ``FOLDER::SERIES`` input reads, or a one-line refusal."""
    folder, series = splitSeriesSelector(str(path))
    if not os.path.isdir(folder):
        raise VolumeError(
            f"A DICOM SEG output needs a DICOM series as the reference input, and '{path}' is a file: write a .seg.nrrd or .nii.gz instead."
        )
    return selectDicomSeries(folder, series)


def _code(triplet: Sequence[str]):
    from pydicom.sr.coding import Code

    scheme, value, meaning = triplet
    return Code(value=str(value), scheme_designator=str(scheme), meaning=str(meaning))


def segmentDescriptions(card: dict) -> list:
    """highdicom segment descriptions for the card's labels, numbered 1… in card order."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=cardView(card).name[:64], family=codes.cid7162.ArtificialIntelligence, version=str(cardView(card).version or "unknown")[:64]
    )
    descriptions = []
    for number, label in enumerate(card["labels"], start=1):
        terminology = label.get("terminology") or {}
        regions = [_code(terminology["anatomic_region"])] if terminology.get("anatomic_region") else None
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label["name"][:64],
                segmented_property_category=_code(terminology.get("category") or GENERIC_CODE),
                segmented_property_type=_code(terminology.get("type") or GENERIC_CODE),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                anatomic_regions=regions,
                display_color=hd.color.CIELabColor.from_rgb(*[int(round(255 * float(c))) for c in label["color"]]),
            )
        )
    return descriptions


def buildSegmentation(series: DicomSeries, labelmap: sitk.Image, card: dict, regions: np.ndarray | None = None):
    """The DICOM SEG dataset of a result whose reference is ``series``.

    Args:
        labelmap: the result on the series' grid (KJI array; K in the series' file order).
        regions: sigmoid regions (``L, K, J, I``), stored as overlapping binary segments.

    Raises:
        MedSegUNetError: the label map does not have the series' grid.
    """
    import highdicom as hd
    import pydicom

    from .. import __version__

    sources = [pydicom.dcmread(path) for path in series.files]
    array = sitk.GetArrayViewFromImage(labelmap)
    if array.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise OutputError(
            f"The result's grid {array.shape[::-1]} is not the DICOM series' ({int(sources[0].Columns)}, {int(sources[0].Rows)}, "
            f"{len(sources)}): it cannot be stored as DICOM SEG."
        )
    if regions is not None:
        pixels = np.ascontiguousarray(np.moveaxis(np.asarray(regions, dtype=np.uint8), 0, -1))  # K, J, I, segment
    else:
        # Card label values → segment numbers 1… in card order.
        lookup = np.zeros(256, dtype=np.uint8)
        for number, label in enumerate(card["labels"], start=1):
            lookup[int(label["value"])] = number
        pixels = lookup[np.asarray(array, dtype=np.uint8)]
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segmentDescriptions(card),
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MedSegUNet",
        manufacturer_model_name=cardView(card).name[:64],
        software_versions=f"medsegunet {__version__}",
        device_serial_number="0",
        series_description=f"{cardView(card).name} (MedSegUNet)"[:64],
        omit_empty_frames=False,
    )


def segmentationVerifier(expected: int):
    """A check that a written SEG reads back (highdicom) with ``expected`` segments."""

    def verify(path: str) -> None:
        import highdicom as hd

        try:
            segmentation = hd.seg.segread(path)
        except Exception as error:  # pydicom raises several types on a cut-short file
            raise OutputError(
                f"The DICOM SEG '{os.path.basename(path)}' was written incompletely ({type(error).__name__}); nothing was kept."
            ) from None
        if len(segmentation.SegmentSequence) != expected:
            raise OutputError(f"The DICOM SEG '{os.path.basename(path)}' reads back with the wrong segments; nothing was kept.")

    return verify


def stageDicomSegmentation(
    outputs, reference: str | DicomSeries, labelmap: sitk.Image, card: dict, path: str, regions: np.ndarray | None = None
) -> None:
    """Write the result as a DICOM SEG into a run's staged outputs.

    Args:
        reference: the reference input's path (``FOLDER`` or ``FOLDER::SERIES``), or its series.

    Raises:
        MedSegUNetError: the reference is not a DICOM series (one line saying what to write instead).
    """
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise DependencyError("DICOM SEG output needs highdicom: pip install highdicom.") from None
    series = reference if isinstance(reference, DicomSeries) else referenceSeries(reference)
    dataset = buildSegmentation(series, labelmap, card, regions)
    temporary = outputs.stage(path, (".dcm",), verify=segmentationVerifier(len(card["labels"])))
    dataset.save_as(temporary)


__all__ = ["referenceSeries", "segmentDescriptions", "buildSegmentation", "segmentationVerifier", "stageDicomSegmentation"]
