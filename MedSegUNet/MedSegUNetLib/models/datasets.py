"""``medsegunet data prepare``: the seeds' public training sets turned into the layout ``train`` reads.

Two sources, as their public copies hold them:

- ``lgg``: kaggle_3m (Buda et al., Comput Biol Med 2019; TCIA TCGA-LGG): one folder per patient
  and date, ``<folder>_<n>.tif`` 256 × 256 × 3 uint8 (pre-contrast, FLAIR, post-contrast) and
  ``<folder>_<n>_mask.tif`` (0/255). The FLAIR channel of the slices, in slice order, becomes one
  volume per folder.
- ``acdc``: ACDC (Bernard et al., IEEE TMI 2018) in SSL4MIS's HDF5 layout: ``data/patientNNN_frameNN.h5``
  volumes (``image`` float32 K, J, I in [0, 1], ``label`` uint8 0 background, 1 RV, 2 myocardium,
  3 LV cavity) or ``..._slice_N.h5`` single slices (J, I), and ``train.list``/``val.list``/``test.list``.

Neither copy keeps the scanner geometry, so the volumes get a stated nominal one
(:data:`LGG_GEOMETRY`, :data:`ACDC_GEOMETRY`, recorded in ``dataset.json``): axes I → patient left,
J → posterior, K → superior (LPS identity), as the slices are displayed radiologically. The
prepared folder is a Decathlon folder (``imagesTr/``, ``labelsTr/``, ``imagesTs/``, ``labelsTs/``,
``dataset.json``) whose ``validation`` list and ``test`` entries fix a patient-level split: no
patient has images in two parts, and ``train`` never reads ``test``.

The folder is built under a temporary name beside ``--output`` and renamed once every file is
written and its SHA256 recorded, so a failed run leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from ..engine.errors import TrainingError

DATASET_FORMAT = "medsegunet.dataset/1"
# Matched on TCGA-FG-6692: its kaggle_3m slices are its native FLAIR's (0.898 mm) scaled by 1.084
# in plane, so kaggle_3m pixels are about 0.83 mm; slice thickness is not kept (TCGA-LGG FLAIR is
# mostly 5–6 mm).
LGG_GEOMETRY = {"spacing": [0.83, 0.83, 5.0], "axes": "LPS", "nominal": True}
# ACDC's in-plane spacing is 1.37–1.68 mm and its slices 5–10 mm; the HDF5 copy keeps neither.
ACDC_GEOMETRY = {"spacing": [1.5, 1.5, 10.0], "axes": "LPS", "nominal": True}
# The patient of the shared data (``../shared/data/brain-tumor/TCGA-FG-6692``): never trained on.
LGG_HELD_OUT = "TCGA_FG_6692"
# What the public copies hold: a prepared set that differs says so.
LGG_PUBLISHED = {
    "patients": 110,
    "slices": 3929,
    "slices_with_abnormality": 1373,
    "digest": "9b1fe7a19b418a45422d443f7836aead9be0c47c95c8694e93f60709537b8bf6",
}
ACDC_PUBLISHED = {"patients": 100, "frames": 200, "digest": "f501d99e944ff4741dca0c50853db472747cd079ae97a7b4bde4466461eee854"}
LGG_LABELS = {"0": "background", "1": "FLAIR abnormality"}
ACDC_LABELS = {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle cavity"}


@dataclass
class SourceCase:
    """One volume read from a source: ``image`` and ``label`` are K, J, I arrays."""

    id: str
    patient: str
    image: np.ndarray
    label: np.ndarray
    split: str = ""


@dataclass
class SourceSet:
    """What a reader found: the cases, what it dropped and why, and the counts to verify."""

    cases: list[SourceCase] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    digest: str = ""


def sourceDigest(folder: Path, names: Iterable[Path]) -> str:
    """SHA256 over ``relative path TAB sha256`` lines of the files, in sorted order."""
    from ..engine.paths import sha256

    lines = [f"{path.relative_to(folder).as_posix()}\t{sha256(path)}\n" for path in sorted(names)]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _sliceNumber(path: Path, stem: str) -> int | None:
    match = re.fullmatch(re.escape(stem) + r"_(\d+)", path.stem)
    return int(match.group(1)) if match else None


def readLGGFolder(folder: Path) -> tuple[np.ndarray, np.ndarray] | str:
    """One kaggle_3m folder's FLAIR volume and mask (K, J, I uint8; mask 0/1), or why it is dropped."""
    stem = folder.name
    numbers = sorted(n for n in (_sliceNumber(p, stem) for p in folder.glob(f"{stem}_*.tif")) if n is not None)
    if not numbers:
        return "no slices"
    if numbers != list(range(1, len(numbers) + 1)):
        missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
        return f"slice(s) {', '.join(map(str, missing[:5]))} missing"
    images, masks = [], []
    for number in numbers:
        maskPath = folder / f"{stem}_{number}_mask.tif"
        if not maskPath.is_file():
            return f"slice {number} has no mask"
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{stem}_{number}.tif")))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(maskPath)))
        if image.shape != (256, 256, 3) or image.dtype != np.uint8:
            return f"slice {number} is {image.shape} {image.dtype}, not 256 × 256 × 3 uint8"
        if mask.ndim == 3:
            mask = mask[..., 0]
        if mask.shape != (256, 256) or not np.isin(mask, (0, 255)).all():
            return f"mask {number} is not a 256 × 256 mask of 0 and 255"
        images.append(image[..., 1])  # channel 1 is FLAIR (copied into a missing sequence's channel)
        masks.append(mask > 0)
    return np.stack(images), np.stack(masks).astype(np.uint8)


def readLGG(source: Path, progress: Callable[[str], None]) -> SourceSet:
    """The kaggle_3m set: one case per patient folder (patient = the ``TCGA_XX_NNNN`` prefix)."""
    if (source / "kaggle_3m").is_dir() and not list(source.glob("TCGA_*")):
        source = source / "kaggle_3m"
    folders = sorted(p for p in source.iterdir() if p.is_dir() and re.fullmatch(r"TCGA_[A-Z0-9]{2}_[A-Z0-9]{4}_\d{8}", p.name))
    if not folders:
        raise TrainingError(f"'{source}' holds no kaggle_3m patient folders (TCGA_XX_NNNN_YYYYMMDD): give the kaggle_3m folder.")
    found = SourceSet()
    for index, folder in enumerate(folders):
        read = readLGGFolder(folder)
        if isinstance(read, str):
            found.dropped.append({"item": folder.name, "why": read})
            continue
        image, label = read
        found.cases.append(SourceCase(id=folder.name, patient=folder.name[:12], image=image, label=label))
        if (index + 1) % 20 == 0:
            progress(f"read {index + 1} of {len(folders)} folders")
    slices = sum(c.image.shape[0] for c in found.cases)
    found.counts = {
        "patients": len({c.patient for c in found.cases}),
        "slices": slices,
        "slices_with_abnormality": int(sum(c.label.any(axis=(1, 2)).sum() for c in found.cases)),
    }
    found.digest = sourceDigest(source, [p for p in source.rglob("*.tif") if p.is_file()])
    return found


def _frameVolume(data: Path, frame: str, h5py) -> tuple[np.ndarray, np.ndarray] | str:
    """One ACDC frame's image (float32) and label (uint8), K, J, I, from a volume or its slices."""
    volume = data / f"{frame}.h5"
    if volume.is_file():
        parts = [volume]
    else:
        numbered = [
            (int(m.group(1)), p)
            for p in data.glob(f"{frame}_slice_*.h5")
            if (m := re.fullmatch(re.escape(frame) + r"_slice_(\d+)", p.stem))
        ]
        if not numbered:
            return "no volume or slices"
        numbers = sorted(n for n, _ in numbered)
        if numbers != list(range(1, len(numbers) + 1)):
            return f"slices {numbers} are not 1 to {len(numbers)}"
        parts = [p for _, p in sorted(numbered)]
    images, labels = [], []
    for part in parts:
        try:
            with h5py.File(part, "r") as stream:
                image, label = np.asarray(stream["image"], dtype=np.float32), np.asarray(stream["label"])
        except (OSError, KeyError) as error:
            return f"{part.name} is not an HDF5 file with 'image' and 'label' ({error})"
        if image.shape != label.shape or image.ndim != (3 if part == volume else 2):
            return f"{part.name}: image {image.shape} and label {label.shape} do not match"
        if not np.isfinite(image).all() or not np.isin(label, (0, 1, 2, 3)).all():
            return f"{part.name}: non-finite intensities or labels outside 0–3"
        images.append(image if image.ndim == 3 else image[None])
        labels.append(label if label.ndim == 3 else label[None])
    shapes = {i.shape[1:] for i in images}
    if len(shapes) != 1:
        return f"slices of different sizes {sorted(shapes)}"
    return np.concatenate(images), np.concatenate(labels).astype(np.uint8)


def readACDC(source: Path, progress: Callable[[str], None]) -> SourceSet:
    """ACDC frames named by the repository's lists; the lists' split is kept (patient-level)."""
    try:
        import h5py
    except ImportError:
        raise TrainingError("Preparing ACDC needs h5py: pip install h5py (or medsegunet[data]).") from None
    for candidate in (source, source / "ACDC", source / "data" / "ACDC"):
        if (candidate / "train.list").is_file():
            source = candidate
            break
    lists = {split: source / f"{name}.list" for split, name in (("train", "train"), ("validation", "val"), ("test", "test"))}
    missing = [p.name for p in lists.values() if not p.is_file()]
    if missing or not (source / "data").is_dir():
        raise TrainingError(
            f"'{source}' is not the ACDC folder of SSL4MIS's layout (it lacks {', '.join(missing) or 'data/'}): give the folder holding "
            "train.list, val.list, test.list and data/."
        )
    frames = {
        split: [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] for split, path in lists.items()
    }
    checkSplit({split: [frame[:10] for frame in names] for split, names in frames.items()}, "ACDC's list files")
    found = SourceSet()
    for split, names in frames.items():
        for frame in names:
            if not re.fullmatch(r"patient\d{3}_frame\d{2}", frame):
                found.dropped.append({"item": frame, "why": "not a patientNNN_frameNN name"})
                continue
            read = _frameVolume(source / "data", frame, h5py)
            if isinstance(read, str):
                found.dropped.append({"item": frame, "why": read})
                continue
            found.cases.append(SourceCase(id=frame, patient=frame[:10], image=read[0], label=read[1], split=split))
        progress(f"read the {split} frames")
    found.counts = {"patients": len({c.patient for c in found.cases}), "frames": len(found.cases)}
    found.digest = sourceDigest(source, [*lists.values(), *(p for p in (source / "data").glob("*.h5") if p.is_file())])
    return found


def checkSplit(split: dict[str, Sequence[str]], where: str) -> None:
    """Refuse a split in which a patient appears in more than one part.

    Raises:
        MedSegUNetError: naming the patient and the parts.
    """
    seen: dict[str, str] = {}
    for part, patients in split.items():
        for patient in dict.fromkeys(patients):
            if patient in seen and seen[patient] != part:
                raise TrainingError(
                    f"{where} put patient {patient} in both {seen[patient]} and {part}: a patient's images must stay in one part of the "
                    "split."
                )
            seen[patient] = part


def splitLGG(cases: list[SourceCase], seed: int, validation: int, test: int) -> None:
    """Seeded patient-level split; TCGA-FG-6692 (the shared data's patient) always in test."""
    patients = sorted({c.patient for c in cases})
    if validation + test >= len(patients):
        raise TrainingError(
            f"{len(patients)} patients cannot give {validation} validation and {test} test patients and leave any to train: ask for fewer."
        )
    heldOut = [p for p in patients if p == LGG_HELD_OUT]
    others = [p for p in patients if p != LGG_HELD_OUT]
    order = [others[i] for i in np.random.default_rng(seed).permutation(len(others))]
    testPatients = set(heldOut + order[: max(test - len(heldOut), 0)])
    rest = [p for p in order if p not in testPatients]
    validationPatients = set(rest[:validation])
    for case in cases:
        case.split = "test" if case.patient in testPatients else "validation" if case.patient in validationPatients else "train"


def _image(array: np.ndarray, geometry: dict) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in geometry["spacing"]])
    size = np.asarray(image.GetSize(), dtype=float)
    # Centred on the origin: the copies keep no position, and a centred box is the least surprising.
    image.SetOrigin([float(v) for v in -(size - 1) / 2 * np.asarray(geometry["spacing"])])
    return image


def checkNewOutput(output: str | os.PathLike) -> Path:
    """The absolute output folder, refused when it exists with anything in it (nothing is replaced)."""
    output = Path(os.path.abspath(output))
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise TrainingError(f"'{output}' already exists and is not an empty folder: give a new --output folder.")
    return output


def writeDataset(found: SourceSet, description: dict, geometry: dict, output: Path, progress: Callable[[str], None]) -> dict:
    """Write the Decathlon folder at ``output`` (staged beside it, renamed when complete).

    Returns:
        the ``dataset.json`` document.

    Raises:
        MedSegUNetError: ``output`` exists and is not empty, or a write fails.
    """
    checkSplit({part: [c.patient for c in found.cases if c.split == part] for part in ("train", "validation", "test")}, "The split")
    output = checkNewOutput(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        document = _writeCases(found, description, geometry, staging, progress)
        (staging / "dataset.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        if output.exists():
            output.rmdir()
        os.replace(staging, output)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise TrainingError(f"Cannot write the prepared set under '{output.parent}': {error.strerror or error}.") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return document


def _writeCases(found: SourceSet, description: dict, geometry: dict, folder: Path, progress: Callable[[str], None]) -> dict:
    from ..engine.paths import sha256
    from ..engine.staging import imageVerifier, writeImageFile

    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir()
    training, test, files = [], [], {}
    for index, case in enumerate(found.cases):
        suffix = "Ts" if case.split == "test" else "Tr"
        entry = {"image": f"./images{suffix}/{case.id}.nii.gz", "label": f"./labels{suffix}/{case.id}.nii.gz"}
        for key, array in (("image", case.image), ("label", case.label)):
            path, image = str(folder / entry[key]), _image(array, geometry)
            writeImageFile(image, path)
            imageVerifier(image)(path)
            files[entry[key][2:]] = sha256(path)
        (test if case.split == "test" else training).append(entry | {"patient": case.patient})
        if (index + 1) % 25 == 0:
            progress(f"wrote {index + 1} of {len(found.cases)} volumes")
    parts = {part: sorted({c.patient for c in found.cases if c.split == part}) for part in ("train", "validation", "test")}
    return description | {
        "format": DATASET_FORMAT,
        "geometry": geometry,
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
        "validation": [c.id for c in found.cases if c.split == "validation"],
        "split": parts,
        "dropped": found.dropped,
        "counts": found.counts,
        "source_digest": found.digest,
        "files": files,
    }


def prepare(
    kind: str,
    source: str | os.PathLike,
    output: str | os.PathLike,
    seed: int = 0,
    validation: int = 10,
    test: int = 22,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Read a fetched set, verify it, split it by patient and write it for ``medsegunet train``.

    Args:
        kind: ``"lgg"`` or ``"acdc"``.
        source: the kaggle_3m folder, or ACDC's folder (``train.list``… and ``data/``).
        output: a new folder.
        seed, validation, test: the LGG split (patients); ACDC keeps its lists.

    Returns:
        the ``dataset.json`` document (its ``published`` block says whether counts and digest match).
    """
    say = progress or (lambda line: None)
    checkNewOutput(output)
    folder = Path(source)
    if not folder.is_dir():
        raise TrainingError(f"'{folder}' is not a folder: give the fetched {kind.upper()} folder.")
    if kind == "lgg":
        found, published, geometry = readLGG(folder, say), LGG_PUBLISHED, LGG_GEOMETRY
        splitLGG(found.cases, seed, validation, test)
        description = {
            "name": "LGG FLAIR abnormality (kaggle_3m, Buda et al. 2019)",
            "modality": {"0": "FLAIR"},
            "labels": LGG_LABELS,
            "licence": "CC BY-NC-SA 4.0",
            "reference": "Buda M, Saha A, Mazurowski MA. Comput Biol Med 2019;109:218-225",
            "split_rule": f"patient-level, seed {seed}, {validation} validation and {test} test patients; {LGG_HELD_OUT} always in test",
        }
    elif kind == "acdc":
        found, published, geometry = readACDC(folder, say), ACDC_PUBLISHED, ACDC_GEOMETRY
        description = {
            "name": "ACDC cine MRI (Bernard et al. 2018, SSL4MIS HDF5 copy)",
            "modality": {"0": "cine MRI"},
            "labels": ACDC_LABELS,
            "licence": "CC BY-NC-SA 4.0 (cite Bernard et al.)",
            "reference": "Bernard O, et al. IEEE TMI 2018;37(11):2514-2525",
            "split_rule": "the repository's train.list, val.list and test.list (patient-level)",
        }
    else:
        raise TrainingError(f"Unknown data set '{kind}': choose lgg or acdc.")
    if not found.cases:
        raise TrainingError(
            f"No usable case in '{folder}' ({len(found.dropped)} dropped, first: {found.dropped[0]['why'] if found.dropped else 'none'})."
        )
    matches = {key: found.counts.get(key) == value for key, value in published.items() if key != "digest"}
    matches["digest"] = found.digest == published["digest"]
    description["published"] = {"expected": published, "matches": matches}
    return writeDataset(found, description, geometry, Path(output), say)


def summary(document: dict, output: str | os.PathLike) -> list[str]:
    """What ``data prepare`` says: the split, the counts against the published set, what was dropped."""
    split = document["split"]
    lines = [
        f"Prepared {document['numTraining'] + document['numTest']} volumes in '{output}': "
        f"{len(split['train'])} training, {len(split['validation'])} validation and {len(split['test'])} test patients."
    ]
    published = document["published"]
    differ = [key for key, same in published["matches"].items() if not same]
    counts = ", ".join(f"{key} {value}" for key, value in document["counts"].items())
    if differ:
        expected = ", ".join(f"{k} {v}" for k, v in published["expected"].items() if k in differ and k != "digest")
        lines.append(
            f"Counts: {counts}. This copy differs from the published set in {', '.join(differ)} "
            f"(expected {expected or 'its file digest'}): figures will not match the model sheets."
        )
    else:
        lines.append(f"Counts: {counts}, as published; the files' digest matches.")
    for item in document["dropped"]:
        lines.append(f"Dropped {item['item']}: {item['why']}.")
    return lines


__all__ = [
    "SourceCase",
    "SourceSet",
    "sourceDigest",
    "readLGGFolder",
    "readLGG",
    "readACDC",
    "checkSplit",
    "splitLGG",
    "checkNewOutput",
    "writeDataset",
    "prepare",
    "summary",
]
