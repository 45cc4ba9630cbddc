"""Segment a folder of cases with MedSegUNet in Slicer, without the main window.

Usage::

    Slicer --no-main-window --python-script docs/batch_example.py MODEL.pt CASES_FOLDER OUTPUT_FOLDER

Each sub-folder of CASES_FOLDER is one case (one study) holding DICOM series folders or volume
files. The series are matched to the card's inputs and ROI series by ``MedSegUNetLib.cohorts.seriesmatch``,
the matcher ``medsegunet batch`` uses (descriptions, folder and file names, the plane checked from
the direction cosines), so Slicer's console batch and the command line pick the same series. For
each case the script writes ``<case>.seg.nrrd`` and ``<case>-statistics.csv`` to OUTPUT_FOLDER and
clears the scene; at the end it writes ``summary.csv`` with the command line's columns.
``segmentCase`` has no Qt or application dependency (pytest runs it against slicer-core).
"""

from __future__ import annotations

import os
import sys
import time

import slicer


def loadCase(scene, folder, card):
    """The case's matched series as scalar volume nodes (read with SimpleITK, full geometry).

    Returns:
        (input nodes in card order, ROI series nodes, notes on ROI series not found).

    Raises:
        MedSegUNetError: an input with no matching series, or several equally good ones.
    """
    from MedSegUNetLib.cohorts.seriesmatch import findCaseSeries, matchSeries
    from MedSegUNetLib.engine.volumes import readVolume
    from MedSegUNetLib.slicer.nodes import addVolumeFromImage

    match = matchSeries(card, findCaseSeries(folder), os.path.basename(os.path.normpath(folder)))
    inputs = [addVolumeFromImage(scene, readVolume(series.path), series.name) for series in match.inputs]
    roiVolumes = [addVolumeFromImage(scene, readVolume(series.path), series.name) for series in match.roi]
    return inputs, roiVolumes, match.notes


def segmentCase(scene, logic, modelPath, card, folder):
    """Load one case into ``scene`` and segment it with ``logic`` (anything with ``process``).

    Returns:
        the result of ``logic.process`` (nodes, ROI, report, timings), with ``notes`` added.
    """
    inputs, roiVolumes, notes = loadCase(scene, folder, card)
    result = logic.process(inputs, modelPath, roiVolumes=roiVolumes)
    result.notes = notes
    return result


def summaryRow(case, result=None, error=None, seconds=0.0):
    """A row of ``medsegunet batch``'s summary for one case."""
    if result is None:
        return {
            "case": case,
            "status": "failed",
            "message": str(error).splitlines()[0] if str(error) else type(error).__name__,
            "seconds": seconds,
            "roi_size_mm": None,
            "volumes_cm3": {},
            "notes": [],
        }
    return {
        "case": case,
        "status": "ok",
        "message": "",
        "seconds": round(seconds, 3),
        "roi_size_mm": [round(float(v), 3) for v in result.roi.sizeMM],
        "volumes_cm3": {s["name"]: s["volume_cm3"] for s in result.report["segments"]},
        "notes": getattr(result, "notes", []),
    }


def main(modelPath, casesFolder, outputFolder):
    from MedSegUNet import MedSegUNetLogic
    from MedSegUNetLib.cohorts.batch import summaryCSV
    from MedSegUNetLib.engine import modelcard
    from MedSegUNetLib.engine.staging import writeText

    # The logic class directly: slicer.util.getModuleLogic would build the module's widget first.
    logic = MedSegUNetLogic()
    card = modelcard.readCard(modelPath)
    os.makedirs(outputFolder, exist_ok=True)
    rows = []
    for case in sorted(os.listdir(casesFolder)):
        folder = os.path.join(casesFolder, case)
        if not os.path.isdir(folder) or case.startswith("."):
            continue
        started = time.perf_counter()
        try:
            result = segmentCase(slicer.mrmlScene, logic, modelPath, card, folder)
            slicer.util.saveNode(result.segmentationNode, os.path.join(outputFolder, f"{case}.seg.nrrd"))
            slicer.util.saveNode(result.statisticsTableNode, os.path.join(outputFolder, f"{case}-statistics.csv"))
            rows.append(summaryRow(case, result, seconds=time.perf_counter() - started))
        except Exception as error:  # one case's failure is recorded; the others go on
            rows.append(summaryRow(case, error=error, seconds=time.perf_counter() - started))
        finally:
            slicer.mrmlScene.Clear()
        print(f"{case}: {rows[-1]['status']} {rows[-1]['message']}")
    writeText(summaryCSV(rows, card), os.path.join(outputFolder, "summary.csv"))
    return sum(1 for row in rows if row["status"] == "failed")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__)
        slicer.util.exit(2)
    else:
        slicer.util.exit(1 if main(*sys.argv[1:4]) else 0)
