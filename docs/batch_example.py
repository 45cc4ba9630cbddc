"""Segment a folder of cases with MedSegUNet in Slicer, without the main window.

Usage::

    Slicer --no-main-window --python-script docs/batch_example.py MODEL.pt CASES_FOLDER OUTPUT_FOLDER

Each sub-folder of CASES_FOLDER is one case (one study) holding the model's inputs and any extra
series (DICOM series folders or .nrrd/.nii.gz files). Volumes are matched to the card's inputs by
name (the card's ``match`` words, else the input names); all other volumes of the case limit the
ROI. For each case the script writes ``<case>.seg.nrrd`` and ``<case>-statistics.csv`` to
OUTPUT_FOLDER and clears the scene. ``segmentCase`` has no Qt or application dependency (pytest
runs it against slicer-core).
"""

from __future__ import annotations

import os
import sys
import traceback

import slicer


def loadCase(scene, folder):
    """Every volume of a case folder as scalar volume nodes (read with SimpleITK, full geometry)."""
    from MedSegUNetLib.SegmentationLogic import addVolumeFromImage
    from MedSegUNetLib.volumes import VOLUME_SUFFIXES, findDicomSeries, pathSuffix, readVolume, volumeName

    nodes = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if os.path.isdir(path) and findDicomSeries(path):
            nodes.append(addVolumeFromImage(scene, readVolume(path), entry))
        elif os.path.isfile(path) and pathSuffix(path) in VOLUME_SUFFIXES:
            nodes.append(addVolumeFromImage(scene, readVolume(path), volumeName(path)))
    return nodes


def segmentCase(scene, logic, modelPath, card, folder):
    """Load one case into ``scene`` and segment it with ``logic`` (anything with ``process``).

    Returns:
        the result of ``logic.process`` (nodes, ROI, timings).
    """
    from MedSegUNetLib.SegmentationLogic import suggestInputVolumes

    nodes = loadCase(scene, folder)
    inputs = suggestInputVolumes(card, nodes)
    missing = [spec["name"] for spec, node in zip(card["inputs"], inputs) if node is None]
    if missing:
        raise RuntimeError(f"no volume in '{folder}' matches input(s) {missing}: rename the files after the card's inputs")
    roiVolumes = [node for node in nodes if node not in inputs]
    return logic.process(inputs, modelPath, roiVolumes=roiVolumes)


def main(modelPath, casesFolder, outputFolder):
    from MedSegUNetLib import modelcard

    from MedSegUNet import MedSegUNetLogic

    # The logic class directly: slicer.util.getModuleLogic would build the module's widget first.
    logic = MedSegUNetLogic()
    card = modelcard.readCard(modelPath)
    os.makedirs(outputFolder, exist_ok=True)
    failures = 0
    for case in sorted(os.listdir(casesFolder)):
        folder = os.path.join(casesFolder, case)
        if not os.path.isdir(folder):
            continue
        try:
            result = segmentCase(slicer.mrmlScene, logic, modelPath, card, folder)
            slicer.util.saveNode(result.segmentationNode, os.path.join(outputFolder, f"{case}.seg.nrrd"))
            slicer.util.saveNode(result.statisticsTableNode, os.path.join(outputFolder, f"{case}-statistics.csv"))
            print(f"{case}: ROI {result.roi.size} voxels, {sum(result.timings.values()):.1f} s")
        except Exception:
            failures += 1
            print(f"{case}: FAILED")
            traceback.print_exc()
        finally:
            slicer.mrmlScene.Clear()
    return failures


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__)
        slicer.util.exit(2)
    else:
        slicer.util.exit(1 if main(*sys.argv[1:4]) else 0)
