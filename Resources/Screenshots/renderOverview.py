"""Render Resources/Screenshots/MedSegUNet-overview-rendering.png (matplotlib, not a Slicer screenshot).

Shows ProstateX-0000's axial, sagittal and coronal T2 series with the region of interest that
MedSegUNet computes from their overlap (yellow) and a whole-gland segmentation (orange; the
PI-CAI "Bosma22b" AI label, resampled onto each series). Needs ../shared/data beside the repository.

Usage: python Resources/Screenshots/renderOverview.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedSegUNet"))
from MedSegUNetLib.engine import geometry, preprocessing  # noqa: E402
from MedSegUNetLib.engine.volumes import readVolume  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "prostatex"
SERIES = (("4-t2tsetra", "Axial T2 (reference)"), ("3-t2tsesag", "Sagittal T2"), ("5-t2tsecor", "Coronal T2"))


def main() -> None:
    images = [readVolume(DATA / "ProstateX-0000" / name) for name, _ in SERIES]
    gland = sitk.ReadImage(str(DATA / "labels" / "ProstateX-0000_gland_AI-Bosma22b.nii.gz"))
    gland.CopyInformation(images[0])  # labels share the axial grid (same size, origin, direction)
    geometries = [geometry.VolumeGeometry.fromImage(image, name) for image, (name, _) in zip(images, SERIES)]
    roi = geometry.computeROI(geometries[0], geometries[1:])
    roiMask = preprocessing.emptyLike(images[0])
    roiMask = sitk.Paste(
        roiMask,
        sitk.Image([int(s) for s in roi.size], sitk.sitkUInt8) + 1,
        [int(s) for s in roi.size],
        [0, 0, 0],
        [int(v) for v in roi.ijkMin],
    )

    figure, axes = plt.subplots(1, 3, figsize=(12, 4.6), facecolor="#202020")
    for axis, image, (_, title) in zip(axes, images, SERIES):
        labels = sitk.GetArrayFromImage(preprocessing.resampleOnto(gland, image, sitk.sitkNearestNeighbor, sitk.sitkUInt8))
        box = sitk.GetArrayFromImage(preprocessing.resampleOnto(roiMask, image, sitk.sitkNearestNeighbor, sitk.sitkUInt8))
        voxels = sitk.GetArrayFromImage(image).astype(float)
        k = int(np.argmax(labels.sum(axis=(1, 2)))) if labels.any() else voxels.shape[0] // 2
        axis.imshow(voxels[k], cmap="gray", vmin=np.percentile(voxels, 1), vmax=np.percentile(voxels, 99.5))
        axis.contour(box[k], levels=[0.5], colors="#ffd23f", linewidths=1.5)
        overlay = np.ma.masked_where(labels[k] == 0, labels[k])
        axis.imshow(overlay, cmap="autumn", alpha=0.45, vmin=0, vmax=1)
        axis.contour(labels[k], levels=[0.5], colors="#f08a4b", linewidths=1.2)
        axis.set_title(title, color="white", fontsize=11)
        axis.axis("off")
    figure.suptitle(
        f"MedSegUNet on ProstateX-0000: ROI = overlap of 3 oblique series ({' × '.join(str(s) for s in roi.size)} voxels), prostate gland\n"
        "rendered with matplotlib for the extension catalogue — not a Slicer screenshot",
        color="white",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.9))
    out = Path(__file__).with_name("MedSegUNet-overview-rendering.png")
    figure.savefig(out, dpi=100, facecolor=figure.get_facecolor())
    print(os.fspath(out))


if __name__ == "__main__":
    main()
