"""An nnU-Net v2 results folder, read safely: ``dataset.json``, ``plans.json`` and the folds'
checkpoints, checked against each other before any network is built.

What is read, and how (issue 37, part 2):

- ``dataset.json`` and ``plans.json`` as JSON (never ``*.pkl``: nnU-Net's ``postprocessing.pkl``
  and pickled plans could run code when read, and are never opened);
- each ``fold_N/checkpoint_<final|best>.pth`` with ``torch.load(weights_only=True)`` and only the
  NumPy scalars and dtypes nnU-Net's training log holds (:func:`importing.loadCheckpointAsData`);
- the network class and the classes its keyword arguments name (``_kw_requires_import``) from the
  allow-lists below, checked as strings before anything is imported; the network is then built
  with dynamic_network_architectures (``pip install -e '.[nnunet]'``: 0.3.1 and later, or the 0.4.x
  a user's nnunetv2 brought) and its weights loaded strictly.

Axis orders: nnU-Net works in SimpleITK's array order (K, J, I for a 3D image) and never
re-orients; ``patch_size`` and ``spacing`` of a configuration are in that order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ..engine.errors import ModelImportError
from ..engine.nnunet import ChannelNormalization, NNUNetPlan

# The networks nnU-Net v2 plans name, as dynamic_network_architectures spells them.
NETWORKS = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": ("dynamic_network_architectures.architectures.unet", "PlainConvUNet"),
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": (
        "dynamic_network_architectures.architectures.unet",
        "ResidualEncoderUNet",
    ),
}
# What a plan's ``_kw_requires_import`` entries may name: torch.nn's convolutions, norms, dropouts and
# activations, and DNA's residual blocks (by either spelling nnU-Net writes).
_TORCH_CLASSES = [
    *(f"Conv{d}d" for d in (1, 2, 3)),
    *(f"InstanceNorm{d}d" for d in (1, 2, 3)),
    *(f"BatchNorm{d}d" for d in (1, 2, 3)),
    "GroupNorm",
    "LayerNorm",
    "Dropout",
    *(f"Dropout{d}d" for d in (1, 2, 3)),
    "LeakyReLU",
    "ReLU",
    "PReLU",
    "ELU",
    "GELU",
    "SiLU",
]
_TORCH_MODULES = {"Conv": "conv", "InstanceNorm": "instancenorm", "BatchNorm": "batchnorm", "GroupNorm": "normalization"}
_TORCH_MODULES.update({"LayerNorm": "normalization", "Dropout": "dropout"})


def _torchSpellings(name: str) -> list[str]:
    module = next((module for prefix, module in _TORCH_MODULES.items() if name.startswith(prefix)), "activation")
    return [f"torch.nn.{name}", f"torch.nn.modules.{module}.{name}"]


OPERATIONS = {spelling: ("torch.nn", name) for name in _TORCH_CLASSES for spelling in _torchSpellings(name)}
OPERATIONS.update(
    {
        f"dynamic_network_architectures.building_blocks.residual.{name}": ("dynamic_network_architectures.building_blocks.residual", name)
        for name in ("BasicBlockD", "BottleneckD")
    }
)
CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
NORMALIZATIONS = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization", "RGBTo01Normalization")
RESAMPLING = "resample_data_or_seg_to_shape"


@dataclass(frozen=True)
class NNUNetFolder:
    """A checked results folder.

    Args:
        path: the folder holding ``dataset.json``, ``plans.json`` and ``fold_N/``.
        dataset: ``dataset.json`` as read.
        plans: ``plans.json`` as read.
        configuration: the configuration chosen (``3d_fullres``, ``2d``, ...).
        folds: the fold names in use (``"0"``, ..., or ``"all"``), in order.
        checkpoints: each fold's checkpoint file.
        trainer: the trainer class that wrote the checkpoints.
        mirroringAxes: the spatial axes test-time mirroring may flip (array order), or ().
    """

    path: str
    dataset: dict
    plans: dict
    configuration: str
    folds: tuple[str, ...]
    checkpoints: tuple[str, ...]
    trainer: str
    mirroringAxes: tuple[int, ...]

    @property
    def architecture(self) -> dict:
        return resolvedConfiguration(self.plans, self.configuration)["architecture"]

    @property
    def channelNames(self) -> list[str]:
        """The inputs in channel order (``dataset.json``'s ``channel_names``)."""
        names = self.dataset["channel_names"]
        return [str(names[key]) for key in sorted(names, key=int)]

    @property
    def outputChannels(self) -> int:
        """Background and one channel per label, or one channel per region (region-based training)."""
        labels = self.dataset["labels"]
        regions = any(isinstance(value, (list, tuple)) for value in labels.values())
        return len(labels) - 1 if regions else len(labels)


def resolvedConfiguration(plans: dict, name: str) -> dict:
    """A configuration with what it ``inherits_from`` filled in (as nnU-Net's ``PlansManager`` does)."""
    configurations, chain, configuration = plans["configurations"], [name], dict(plans["configurations"][name])
    while "inherits_from" in configuration:
        parent = configuration.pop("inherits_from")
        if parent in chain or parent not in configurations:
            raise ModelImportError(f"plans.json's {name} inherits from {str(parent)[:60]!r}, which is missing or circular.")
        chain.append(parent)
        configuration = {**configurations[parent], **configuration}
    return configuration


def _readJSON(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise ModelImportError(
            f"'{os.path.dirname(path)}' has no {what}: give the nnU-Net results folder that holds dataset.json, plans.json and fold_N/."
        )
    try:
        with open(path, encoding="utf-8") as stream:
            value = json.load(stream)
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelImportError(f"'{path}' is not valid JSON ({str(error)[:100]}).") from None
    if not isinstance(value, dict):
        raise ModelImportError(f"'{path}' is not a JSON object: it is not nnU-Net's {what}.")
    return value


def _checkArchitecture(architecture: Any, source: str) -> None:
    """The network class and every class its arguments name are on the allow-lists (checked as text)."""
    if not isinstance(architecture, dict) or not isinstance(architecture.get("arch_kwargs"), dict):
        raise ModelImportError(
            f"{source} has no 'architecture' with 'arch_kwargs' (plans of nnU-Net before 2.4): plan it again with a current nnU-Net."
        )
    network = architecture.get("network_class_name")
    if network not in NETWORKS:
        raise ModelImportError(
            f"{source} names network class {str(network)[:80]!r}, which is not one of {', '.join(NETWORKS)}: not imported."
        )
    kwargs = architecture["arch_kwargs"]
    for key in architecture.get("_kw_requires_import") or []:
        value = kwargs.get(key)
        if value is not None and value not in OPERATIONS:
            raise ModelImportError(
                f"{source} names {str(value)[:80]!r} for '{key}', which is not an allowed torch.nn or network class: not imported."
            )


def readFolder(path: str, configuration: str | None = None, folds: list[str] | None = None, checkpoint: str = "final") -> NNUNetFolder:
    """Check a results folder and pick its configuration and folds; reads no checkpoint yet.

    Args:
        path: the folder holding ``dataset.json``, ``plans.json`` and ``fold_N/``.
        configuration: a configuration of the plans; None: the one the folder is named after
            (nnU-Net's ``TRAINER__PLANS__CONFIGURATION``), or the plans' only one.
        folds: fold names (``0`` ... or ``all``); None: every ``fold_N`` present.
        checkpoint: ``final`` or ``best``.

    Raises:
        ModelImportError: not nnU-Net's folder, a class off the allow-lists, a missing fold.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ModelImportError(f"'{path}' is not a folder: give the nnU-Net results folder (dataset.json, plans.json, fold_N/).")
    dataset = _readJSON(os.path.join(path, "dataset.json"), "dataset.json")
    plans = _readJSON(os.path.join(path, "plans.json"), "plans.json")
    for key, owner, what in (
        ("channel_names", dataset, "dataset.json"),
        ("labels", dataset, "dataset.json"),
        ("configurations", plans, "plans.json"),
    ):
        if not isinstance(owner.get(key), dict) or not owner[key]:
            raise ModelImportError(f"'{os.path.join(path, what)}' has no '{key}': it is not nnU-Net v2's {what}.")
    configurations = plans["configurations"]
    if configuration is None:
        # nnU-Net names a results folder TRAINER__PLANS__CONFIGURATION.
        named = os.path.basename(os.path.normpath(path)).split("__")
        configuration = named[2] if len(named) == 3 else (next(iter(configurations)) if len(configurations) == 1 else None)
    if configuration not in configurations:
        which = "Say which configuration" if configuration is None else f"The plans have no configuration {configuration!r}"
        raise ModelImportError(f"{which}: choose one of {', '.join(configurations)} (--configuration).")
    resolved = resolvedConfiguration(plans, configuration)
    if resolved.get("previous_stage"):
        raise ModelImportError(
            f"{configuration} is a cascade stage: it needs {resolved['previous_stage']}'s segmentation as an input, which this import does "
            "not run; import another configuration (--configuration)."
        )
    _checkArchitecture(resolved.get("architecture"), f"plans.json's {configuration}")
    if checkpoint not in CHECKPOINTS:
        raise ModelImportError(f"Checkpoint {checkpoint!r} is not final or best.")
    present = sorted(name[5:] for name in os.listdir(path) if name.startswith("fold_") and os.path.isdir(os.path.join(path, name)))
    folds = [str(fold) for fold in (folds or present)]
    if not folds:
        raise ModelImportError(f"'{path}' has no fold_N folder: it holds no trained network.")
    files = []
    for fold in folds:
        file = os.path.join(path, f"fold_{fold}", CHECKPOINTS[checkpoint])
        if not os.path.isfile(file):
            raise ModelImportError(
                f"Fold {fold} has no {CHECKPOINTS[checkpoint]} in '{path}': choose the folds it has ({', '.join(present)})."
            )
        files.append(file)
    return NNUNetFolder(path, dataset, plans, configuration, tuple(folds), tuple(files), "", ())


def readCheckpoints(folder: NNUNetFolder) -> tuple[NNUNetFolder, list[dict]]:
    """Each fold's weights, read as data, checked against the plans and the dataset.

    Returns:
        the folder with ``trainer`` and ``mirroringAxes`` filled in, and one state dict per fold.

    Raises:
        ModelImportError: a checkpoint that holds code or is not nnU-Net's, or that disagrees with
            the folder's plans, dataset or configuration, or with the other folds.
    """
    from .importing import loadCheckpointAsData

    states, trainers, axes = [], set(), set()
    for fold, file in zip(folder.folds, folder.checkpoints):
        checkpoint = loadCheckpointAsData(file)
        weights = checkpoint.get("network_weights") if isinstance(checkpoint, dict) else None
        if not isinstance(weights, dict) or not weights:
            raise ModelImportError(f"'{file}' has no 'network_weights': it is not an nnU-Net v2 checkpoint.")
        arguments = checkpoint.get("init_args") or {}
        if arguments.get("configuration") not in (None, folder.configuration):
            raise ModelImportError(
                f"'{file}' was trained as {arguments.get('configuration')!r}, not {folder.configuration!r}: choose that configuration."
            )
        trained = arguments.get("plans") or {}
        for key in ("dataset_name", "plans_name"):
            if key in trained and trained[key] != folder.plans.get(key):
                raise ModelImportError(
                    f"'{file}' was trained with {key} {trained[key]!r} but plans.json says {folder.plans.get(key)!r}: the folder mixes "
                    "two models."
                )
        if arguments.get("dataset_json") is not None and arguments["dataset_json"].get("labels") != folder.dataset["labels"]:
            raise ModelImportError(f"'{file}' was trained with other labels than dataset.json's: the folder mixes two models.")
        trainers.add(str(checkpoint.get("trainer_name") or "nnUNetTrainer"))
        axes.add(tuple(int(axis) for axis in checkpoint.get("inference_allowed_mirroring_axes") or ()))
        states.append(weights)
    if len(trainers) > 1 or len(axes) > 1:
        raise ModelImportError(f"The folds were trained differently ({', '.join(sorted(trainers))}): import them one at a time.")
    return NNUNetFolder(**{**folder.__dict__, "trainer": trainers.pop(), "mirroringAxes": axes.pop()}), states


def predictionPlan(folder: NNUNetFolder, mirroring: bool = True, stepSize: float = 0.5) -> NNUNetPlan:
    """What the configuration decides at prediction time, from plans.json and dataset.json.

    Args:
        folder: from :func:`readCheckpoints` (its mirror axes are the checkpoints').
        mirroring: average the flips of the allowed axes (``nnUNetv2_predict`` without ``--disable_tta``).
        stepSize: the tile step as a fraction of the patch.

    Raises:
        ModelImportError: a plan this reader does not know (a normalisation scheme, a resampling function).
    """
    configuration = resolvedConfiguration(folder.plans, folder.configuration)
    properties = folder.plans.get("foreground_intensity_properties_per_channel") or {}
    schemes, masks = configuration.get("normalization_schemes") or [], configuration.get("use_mask_for_norm") or []
    if len(schemes) != len(folder.channelNames) or len(masks) != len(schemes):
        raise ModelImportError(
            f"plans.json's {folder.configuration} normalises {len(schemes)} channels but dataset.json names {len(folder.channelNames)}: "
            "the folder mixes two models."
        )
    normalization = []
    for channel, (scheme, useMask) in enumerate(zip(schemes, masks)):
        if scheme not in NORMALIZATIONS:
            raise ModelImportError(f"Normalisation {str(scheme)[:60]!r} of channel {channel} is not one of {', '.join(NORMALIZATIONS)}.")
        stats = properties.get(str(channel)) or {}
        if scheme == "CTNormalization" and not all(key in stats for key in ("mean", "std", "percentile_00_5", "percentile_99_5")):
            raise ModelImportError(
                f"CT normalisation of channel {channel} needs the plans' foreground intensity statistics, which are missing."
            )
        normalization.append(
            ChannelNormalization(
                scheme,
                bool(useMask),
                float(stats.get("mean", 0.0)),
                float(stats.get("std", 1.0)),
                float(stats.get("percentile_00_5", 0.0)),
                float(stats.get("percentile_99_5", 0.0)),
            )
        )
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if configuration.get(key, RESAMPLING) != RESAMPLING:
            raise ModelImportError(
                f"plans.json's {key} {str(configuration[key])[:60]!r} is not nnU-Net's default {RESAMPLING}: not imported."
            )
    data, probabilities = (
        configuration.get("resampling_fn_data_kwargs") or {},
        configuration.get("resampling_fn_probabilities_kwargs") or {},
    )
    regions = folder.dataset.get("regions_class_order")
    return NNUNetPlan(
        patchSize=tuple(int(v) for v in configuration["patch_size"]),
        spacing=tuple(float(v) for v in configuration["spacing"]),
        transposeForward=tuple(int(v) for v in folder.plans.get("transpose_forward", range(3))),
        normalization=tuple(normalization),
        dataOrder=int(data.get("order", 3)),
        dataOrderZ=int(data.get("order_z", 0)),
        probabilitiesOrder=int(probabilities.get("order", 1)),
        probabilitiesOrderZ=int(probabilities.get("order_z", 0)),
        forceSeparateZ=data.get("force_separate_z"),
        mirrorAxes=folder.mirroringAxes if mirroring else (),
        stepSize=float(stepSize),
        regionsClassOrder=tuple(int(v) for v in regions) if regions is not None else None,
    )


def buildNetwork(folder: NNUNetFolder, weights: dict | None = None):
    """The eager network of the folder's configuration (dynamic_network_architectures), weights loaded strictly.

    Raises:
        ModelImportError: dynamic_network_architectures missing, or weights that do not fit the plans.
    """
    import importlib

    architecture = folder.architecture
    _checkArchitecture(architecture, f"plans.json's {folder.configuration}")
    try:
        module, name = NETWORKS[architecture["network_class_name"]]
        network = getattr(importlib.import_module(module), name)
        kwargs = dict(architecture["arch_kwargs"])
        for key in architecture.get("_kw_requires_import") or []:
            if kwargs.get(key) is not None:
                owner, attribute = OPERATIONS[kwargs[key]]
                kwargs[key] = getattr(importlib.import_module(owner), attribute)
    except ImportError:
        raise ModelImportError(
            "nnU-Net models need the dynamic_network_architectures package: install 'dynamic_network_architectures>=0.3.1,<0.4' "
            "(pip install -e '.[nnunet]'; in Slicer, slicer.util.pip_install), or use the 0.4 that nnunetv2 brings."
        ) from None
    try:
        model = network(input_channels=len(folder.channelNames), num_classes=folder.outputChannels, deep_supervision=False, **kwargs)
    except TypeError as error:
        raise ModelImportError(f"plans.json's {folder.configuration} arguments do not build {name} ({str(error)[:120]}).") from None
    if weights is not None:
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            raise ModelImportError(
                f"The checkpoint's weights do not fit the plans' network ({str(error).splitlines()[0][:140]})."
            ) from None
    return model.eval()


__all__ = [
    "CHECKPOINTS",
    "NETWORKS",
    "NORMALIZATIONS",
    "NNUNetFolder",
    "OPERATIONS",
    "buildNetwork",
    "predictionPlan",
    "readCheckpoints",
    "readFolder",
    "resolvedConfiguration",
]
