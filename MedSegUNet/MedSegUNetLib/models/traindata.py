"""Training data: the cases of a config (volumes and labels), split into training and validation,
prepared on the model grid (the same grid as inference: :func:`engine.preprocessing.modelGrid`), and
MONAI's training transforms with seed 000's sampling (patches with at most a share of background).

Arrays are K, J, I on the model grid (SimpleITK's order); tensors ``C, I, J, K`` as MONAI takes them.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..engine.errors import TrainingError


@dataclass
class Case:
    """One training case.

    Args:
        id: case name (CSV ``case`` column, or the MSD image file name without suffix).
        inputs: per model input, ``(path, channel)``; ``channel`` picks a volume of a 4D file.
        label: label map path.
        roi: extra series limiting the ROI.
    """

    id: str
    inputs: list[tuple[str, int | None]]
    label: str
    roi: list[str] = field(default_factory=list)


def _stripSuffix(name: str) -> str:
    from ..engine.paths import pathSuffix

    suffix = pathSuffix(name)
    return name[: -len(suffix)] if suffix else name


def readDecathlonDocument(folder: str | os.PathLike) -> dict:
    """A Decathlon folder's ``dataset.json`` (``data prepare`` writes one): read by :func:`readCases`,
    :func:`preparedValidation` and the evaluation of the test entries.

    Raises:
        MedSegUNetError: no ``dataset.json``, not JSON, or not an object.
    """
    description = os.path.join(os.fspath(folder), "dataset.json")
    if not os.path.isfile(description):
        raise TrainingError(f"'{os.fspath(folder)}' is not a Decathlon folder: it has no dataset.json.")
    with open(description, encoding="utf-8") as stream:
        try:
            dataset = json.load(stream)
        except json.JSONDecodeError as error:
            raise TrainingError(f"'{description}' is not valid JSON ({error.msg}).") from None
    if not isinstance(dataset, dict):
        raise TrainingError(f"'{description}' is not a Decathlon dataset.json: its top level is a {type(dataset).__name__}, not an object.")
    return dataset


def readCases(config: dict) -> list[Case]:
    """The cases of a Decathlon folder or a CSV table.

    Raises:
        MedSegUNetError: missing files, columns or inconsistent channel counts.
    """
    data = config["data"]
    inputNames = [i["name"] for i in config["inputs"]]
    cases: list[Case] = []
    if "msd" in data:
        folder = data["msd"]
        dataset = readDecathlonDocument(folder)
        modalities = dataset.get("modality") or {"0": inputNames[0]}
        if len(modalities) != len(inputNames):
            raise TrainingError(
                f"Decathlon folder '{folder}' has {len(modalities)} modalities ({', '.join(modalities.values())}) but the config lists "
                f"{len(inputNames)} inputs: make them match."
            )
        for entry in dataset.get("training") or []:
            image = os.path.normpath(os.path.join(folder, entry["image"]))
            label = os.path.normpath(os.path.join(folder, entry["label"]))
            channels = [(image, index if len(inputNames) > 1 else None) for index in range(len(inputNames))]
            cases.append(Case(id=_stripSuffix(os.path.basename(image)), inputs=channels, label=label))
    else:
        table = data["csv"]
        if not os.path.isfile(table):
            raise TrainingError(f"Case table '{table}' does not exist: check data/csv in the config.")
        base = os.path.dirname(table)
        with open(table, encoding="utf-8", newline="") as stream:
            rows = list(csv.DictReader(stream))
        if not rows:
            raise TrainingError(f"Case table '{table}' has no rows.")
        columns = {c.strip().lower(): c for c in rows[0].keys() if c}
        missing = [name for name in [*inputNames, "label"] if name.lower() not in columns]
        if missing:
            raise TrainingError(f"Case table '{table}' lacks column(s) {', '.join(missing)}: it needs one column per input, and 'label'.")
        roiColumns = [columns[c] for c in columns if c.startswith("roi")]

        def resolve(value: str) -> str:
            from ..engine.volumes import resolveTablePath

            return resolveTablePath(base, value)

        for index, row in enumerate(rows):
            caseId = (row.get(columns.get("case", ""), "") or "").strip() or f"case{index + 1:03d}"
            inputs = [(resolve(row[columns[name.lower()]]), None) for name in inputNames]
            roi = [resolve(row[c]) for c in roiColumns if (row.get(c) or "").strip()]
            cases.append(Case(id=caseId, inputs=inputs, label=resolve(row[columns["label"]]), roi=roi))
    if not cases:
        raise TrainingError("The training data holds no cases.")
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise TrainingError(f"Case ids must be unique, got {ids}.")
    return cases


def splitCases(cases: Sequence[Case], config: dict) -> tuple[list[Case], list[Case]]:
    """Training and validation cases: explicit ids, else a prepared folder's own split (its
    ``dataset.json`` ``validation`` list, from ``data prepare``), else a seeded random split."""
    data = config["data"]
    wanted = data.get("validation_cases") or (preparedValidation(data["msd"]) if "msd" in data and "validation_split" not in data else None)
    if wanted:
        wanted = list(wanted)
        known = {c.id for c in cases}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise TrainingError(f"Validation case(s) {', '.join(unknown)} are not in the data (cases: {', '.join(sorted(known))}).")
        validation = [c for c in cases if c.id in wanted]
    else:
        fraction = float(data.get("validation_split", 0.2))
        count = int(round(fraction * len(cases))) if len(cases) > 1 else 0
        count = max(count, 1) if fraction > 0 and len(cases) > 1 else count
        order = np.random.default_rng(int(config["seed"])).permutation(len(cases))
        validation = [cases[i] for i in sorted(order[:count])]
    training = [c for c in cases if c not in validation]
    if not training:
        raise TrainingError("No training cases are left after the validation split: use fewer validation cases.")
    return training, validation


def preparedValidation(folder: str) -> list[str] | None:
    """The validation case ids a prepared Decathlon folder fixes (``data prepare``), if any."""
    ids = readDecathlonDocument(folder).get("validation")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise TrainingError(f"'{folder}/dataset.json' has a 'validation' that is not a list of case ids: prepare the folder again.")
    return ids


def prepareCase(case: Case, config: dict) -> dict:
    """One case on its model grid, through the same steps as :func:`pipeline.segmentImages`.

    Returns:
        ``{"id", "image": float32 C,I,J,K, "label": uint8 1,I,J,K, "grid": sitk model grid}``;
        the label holds class indices (softmax: position in the card's labels, 0 background) or,
        for sigmoid models, the remapped label values (turned into region channels later).

    Raises:
        MedSegUNetError: unreadable volumes, no overlap.
    """
    from ..engine import geometry, pipeline, preprocessing
    from ..engine.cardview import ROISettings
    from ..engine.volumes import readVolume, readVolumeChannel, volumeName

    images = [readVolumeChannel(path, channel) for path, channel in case.inputs]
    names = [f"{case.id}:{i['name']}" for i in config["inputs"]]
    roiImages = [readVolume(path) for path in case.roi]
    roiSettings = config.get("roi") or {}
    margin = float(roiSettings.get("margin_mm", ROISettings.marginMM))
    roi = pipeline.resolveROI(images, names, roiImages, [volumeName(p) for p in case.roi], roiSettings.get("use", True), margin)
    roiGrid = geometry.cropToROI(preprocessing.emptyLike(images[0]), roi)
    grid = preprocessing.modelGrid(roiGrid, config.get("spacing"), config.get("orientation"))
    array = preprocessing.prepareInputs(images, grid, config["normalization"])
    labelImage = readVolume(case.label)
    if labelImage.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        labelImage = sitk.Cast(sitk.Round(labelImage), sitk.sitkUInt16)
    label = np.array(preprocessing.imageToIJK(preprocessing.resampleOnto(labelImage, grid, sitk.sitkNearestNeighbor, sitk.sitkUInt8)))
    label = remapLabels(label, config)
    return {"id": case.id, "image": array, "label": label[None].astype(np.uint8), "grid": grid}


def remapLabels(label: np.ndarray, config: dict) -> np.ndarray:
    """Apply ``label_remap``, then (softmax) turn label values into class indices."""
    lookup = np.arange(256, dtype=np.uint8)
    for source, target in (config.get("label_remap") or {}).items():
        lookup[int(source)] = int(target)
    remapped = lookup[label]
    if config["output"] == "sigmoid":
        return remapped
    classes = np.zeros(256, dtype=np.uint8)
    for index, item in enumerate(config["labels"]):
        classes[int(item["value"])] = index + 1
    return classes[remapped]


def regionTargets(label: np.ndarray, config: dict) -> np.ndarray:
    """Sigmoid targets: one binary channel per label (its ``region`` values, or its own value).

    Args:
        label: remapped label values, ``1, spatial…``.

    Returns:
        float32 ``C_labels, spatial…``.
    """
    channels = [np.isin(np.asarray(label[0]), item.get("region", [item["value"]])) for item in config["labels"]]
    return np.stack(channels).astype(np.float32)


def toSlices(items: Sequence[dict]) -> list[dict]:
    """2D training items: every K slice of every case as ``C, I, J``."""
    slices = []
    for item in items:
        for k in range(item["image"].shape[-1]):
            slices.append({"image": item["image"][..., k], "label": item["label"][..., k], "id": f"{item['id']}:k{k}"})
    return slices


def _defineMaxBackgroundCrop():
    """Define :class:`RandCropMaxBackgroundd` on first use (MONAI is imported lazily).

    It is registered as a module attribute (and served by the module ``__getattr__``), so that
    DataLoader workers started with ``spawn`` can unpickle it.
    """
    cached = globals().get("_MAX_BACKGROUND_CROP")
    if cached is not None:
        return cached
    from monai.transforms import MapTransform, Randomizable

    class RandCropMaxBackgroundd(Randomizable, MapTransform):
        """Random patches with at most ``maxBackground`` of background voxels (seed 000's sampling).

        Up to ``maxTries`` uniformly placed patches are drawn per sample; the first whose background
        fraction is small enough is kept (else the one with the least background), so patches
        concentrate around the labels without always centring on them.
        """

        def __init__(self, keys, labelKey, spatialSize, maxBackground, numSamples, maxTries):
            MapTransform.__init__(self, keys)
            self.labelKey, self.spatialSize = labelKey, [int(s) for s in spatialSize]
            self.maxBackground, self.numSamples, self.maxTries = float(maxBackground), int(numSamples), int(maxTries)

        def randomize(self, data=None):
            pass

        def __call__(self, data):
            label = np.asarray(data[self.labelKey])
            shape = label.shape[1:]
            samples = []
            for _ in range(self.numSamples):
                best, bestFraction = None, 2.0
                for _ in range(self.maxTries):
                    start = [int(self.R.randint(0, s - p + 1)) for s, p in zip(shape, self.spatialSize)]
                    window = tuple(slice(b, b + p) for b, p in zip(start, self.spatialSize))
                    fraction = float(np.mean(label[(slice(None), *window)] == 0))
                    if fraction < bestFraction:
                        best, bestFraction = window, fraction
                    if fraction <= self.maxBackground:
                        break
                sample = dict(data)
                for key in self.key_iterator(sample):
                    sample[key] = sample[key][(slice(None), *best)]
                samples.append(sample)
            return samples

    RandCropMaxBackgroundd.__module__ = __name__
    RandCropMaxBackgroundd.__qualname__ = "RandCropMaxBackgroundd"
    globals()["_MAX_BACKGROUND_CROP"] = RandCropMaxBackgroundd
    return RandCropMaxBackgroundd


def headStrippedMask(image: np.ndarray, label: np.ndarray, widthVoxels: int, level: float = 0.05) -> np.ndarray:
    """What a skull-stripped copy of a training image keeps: the head eroded by ``widthVoxels``.

    The head is the normalised first channel above ``level`` with its holes filled; eroding it
    removes the scalp and the skull as brain extraction does (roughly), so a model trained on heads
    with the skull also sees brains without it. The labels and 2 voxels around them are always kept,
    so a lesion at the cortex never becomes a label over zeros.

    Args:
        image: ``C, I, J[, K]`` normalised intensities (the model grid's axis order).
        label: ``1, I, J[, K]`` label values.
        widthVoxels: how deep to erode, in voxels of the model grid.

    Returns:
        bool ``I, J[, K]``: True where the image is kept.
    """
    from scipy import ndimage

    head = ndimage.binary_fill_holes(np.asarray(image[0]) > level)
    kept = ndimage.binary_erosion(head, iterations=max(1, int(widthVoxels)))
    labelled = np.asarray(label[0]) > 0
    if labelled.any():
        kept |= ndimage.binary_dilation(labelled, iterations=2)
    return kept


def skullStripWidth(config: dict) -> list[float]:
    """``augmentation.skull_strip_mm`` in voxels of the model grid (its finest in-plane spacing)."""
    spacing = [float(v) for v in (config.get("spacing") or []) if v]
    return [mm / (min(spacing) if spacing else 1.0) for mm in config["augmentation"].get("skull_strip_mm", [8.0, 16.0])]


def _defineSkullStrip():
    """Define :class:`RandSkullStripd` on first use, registered like :class:`RandCropMaxBackgroundd`."""
    cached = globals().get("_SKULL_STRIP")
    if cached is not None:
        return cached
    from monai.transforms import MapTransform, Randomizable

    class RandSkullStripd(Randomizable, MapTransform):
        """With probability ``prob``, zero the image outside :func:`headStrippedMask` (eroded by a
        random width in ``widthVoxels``): a model for heads with the skull also sees skull-stripped
        ones, as a user's brain-extracted or BraTS-space volume is."""

        def __init__(self, keys, labelKey, prob, widthVoxels):
            MapTransform.__init__(self, keys)
            self.labelKey, self.prob = labelKey, float(prob)
            self.widthVoxels = [int(round(w)) for w in widthVoxels]
            self.apply, self.width = False, self.widthVoxels[0]

        def randomize(self, data=None):
            self.apply = self.R.random_sample() < self.prob
            self.width = int(self.R.randint(self.widthVoxels[0], self.widthVoxels[1] + 1))

        def __call__(self, data):
            self.randomize()
            if not self.apply:
                return data
            import torch

            sample = dict(data)
            kept = headStrippedMask(np.asarray(sample["image"]), np.asarray(sample[self.labelKey]), self.width)
            for key in self.key_iterator(sample):
                value = sample[key]
                mask = torch.from_numpy(kept) if isinstance(value, torch.Tensor) else kept
                sample[key] = value * mask
            return sample

    RandSkullStripd.__module__ = __name__
    RandSkullStripd.__qualname__ = "RandSkullStripd"
    globals()["_SKULL_STRIP"] = RandSkullStripd
    return RandSkullStripd


def __getattr__(name: str):
    if name == "RandCropMaxBackgroundd":
        return _defineMaxBackgroundCrop()
    if name == "RandSkullStripd":
        return _defineSkullStrip()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def buildTransforms(config: dict):
    """The training transforms (MONAI ``Compose``) for ``{"image", "label"}`` items.

    Deterministic steps first (typing, padding to the patch, foreground indices), so
    ``CacheDataset`` caches them; then patch sampling, augmentation and, for sigmoid models, the
    region channels. Items are ``C, I, J[, K]`` arrays; each yields ``samples_per_case`` patches.
    """
    from monai.transforms import Compose, EnsureTyped, Lambdad, SpatialPadd

    keys = ["image", "label"]
    patch = list(config["patch_size"])
    augmentation = config["augmentation"]
    transforms = [EnsureTyped(keys=keys, data_type="tensor", track_meta=False), SpatialPadd(keys=keys, spatial_size=patch, mode="constant")]
    if augmentation.get("skull_strip_prob", 0) > 0:
        # Before cropping: the head's outline is whole only in the whole slice or volume.
        transforms.append(_defineSkullStrip()(["image"], "label", augmentation["skull_strip_prob"], skullStripWidth(config)))
    transforms += _samplingTransforms(config["sampling"], keys, patch)
    transforms += _augmentationTransforms(augmentation, keys, patch, config["spatial_dims"])
    if config["output"] == "sigmoid":
        transforms.append(Lambdad(keys="label", func=functools.partial(_regionTensor, config=config)))
    transforms.append(EnsureTyped(keys=keys, data_type="tensor", dtype=(np.float32, np.float32), track_meta=False))
    return Compose(transforms)


def _samplingTransforms(sampling: dict, keys: list, patch: list) -> list:
    """How patches are drawn from each (padded) item: ``samples_per_case`` of them, except ``center``."""
    from monai.transforms import CenterSpatialCropd, DeleteItemsd, FgBgToIndicesd, RandCropByPosNegLabeld, RandSpatialCropSamplesd

    samples = int(sampling["samples_per_case"])
    if sampling["mode"] == "posneg":
        # Foreground/background indices are deterministic, so CacheDataset computes them once.
        return [
            FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg"),
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=patch,
                pos=sampling["pos"],
                neg=sampling["neg"],
                num_samples=samples,
                fg_indices_key="label_fg",
                bg_indices_key="label_bg",
                allow_smaller=False,
            ),
            DeleteItemsd(keys=["label_fg", "label_bg"]),
        ]
    if sampling["mode"] == "max_background":
        return [_defineMaxBackgroundCrop()(keys, "label", patch, sampling["max_background"], samples, sampling["max_tries"])]
    if sampling["mode"] == "center":
        return [CenterSpatialCropd(keys=keys, roi_size=patch)]
    return [RandSpatialCropSamplesd(keys=keys, roi_size=patch, num_samples=samples, random_size=False)]


def _augmentationTransforms(augmentation: dict, keys: list, patch: list, dims: int) -> list:
    """Flips, affine, elastic and intensity augmentation, each only when its probability is above 0."""
    from monai.transforms import Rand2DElasticd, Rand3DElasticd, RandAffined, RandFlipd, RandScaleIntensityd, RandShiftIntensityd

    transforms = []
    for axis in augmentation["flip_axes"]:
        if axis < dims:
            transforms.append(RandFlipd(keys=keys, prob=augmentation["flip_prob"], spatial_axis=axis))
    rotate = augmentation["rotate_deg"]
    rotate = [rotate] * (1 if dims == 2 else 3) if not isinstance(rotate, list) else rotate
    interpolation = {"mode": ("bilinear", "nearest"), "padding_mode": "zeros"}
    if augmentation["affine_prob"] > 0 and (any(rotate) or augmentation["scale"] > 0):
        transforms.append(
            RandAffined(
                keys=keys,
                prob=augmentation["affine_prob"],
                rotate_range=[math.radians(r) for r in rotate],
                scale_range=[augmentation["scale"]] * dims,
                **interpolation,
            )
        )
    if augmentation["elastic_prob"] > 0 and dims == 2:
        transforms.append(
            Rand2DElasticd(
                keys=keys,
                spacing=[max(4, p // 4) for p in patch],
                magnitude_range=augmentation.get("elastic_magnitude", [1.0, 2.0]),
                prob=augmentation["elastic_prob"],
                **interpolation,
            )
        )
    elif augmentation["elastic_prob"] > 0:
        transforms.append(
            Rand3DElasticd(
                keys=keys,
                sigma_range=augmentation.get("elastic_sigma", [5.0, 7.0]),
                magnitude_range=augmentation.get("elastic_magnitude", [50.0, 150.0]),
                prob=augmentation["elastic_prob"],
                **interpolation,
            )
        )
    if augmentation["intensity_prob"] > 0 and augmentation["intensity_shift"] > 0:
        transforms.append(RandShiftIntensityd(keys="image", offsets=augmentation["intensity_shift"], prob=augmentation["intensity_prob"]))
    if augmentation["intensity_prob"] > 0 and augmentation["intensity_scale"] > 0:
        transforms.append(RandScaleIntensityd(keys="image", factors=augmentation["intensity_scale"], prob=augmentation["intensity_prob"]))
    return transforms


def _regionTensor(label, config):
    import torch

    return torch.from_numpy(regionTargets(np.rint(np.asarray(label)).astype(np.uint8), config))


def seedEverything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy, torch and MONAI (``monai.utils.set_determinism``)."""
    from monai.utils import set_determinism

    set_determinism(seed=int(seed) % (2**32), use_deterministic_algorithms=None)
    if deterministic:
        import torch

        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


__all__ = [
    "Case",
    "readDecathlonDocument",
    "readCases",
    "splitCases",
    "preparedValidation",
    "prepareCase",
    "remapLabels",
    "regionTargets",
    "toSlices",
    "headStrippedMask",
    "skullStripWidth",
    "buildTransforms",
    "seedEverything",
]
