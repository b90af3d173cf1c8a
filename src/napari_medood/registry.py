"""The one registry of detector families, and of the detectors that need no checkpoint.

A checkpoint's card names its family (``"detector": "unet3d"``). A :class:`Family` says,
for each layer of the core, where that family's code lives, as ``"module:attribute"``
references (or callables):

- ``architectures``: architecture type (the card's ``architecture.type``) -> a builder
  ``builder(architecture: dict) -> torch.nn.Module``, resolved by ``models.checkpoint``;
- ``detector``: ``factory(checkpoints, options) -> Detector``, resolved by ``detectors``;
- ``trainer``: a :class:`~napari_medood.training.registry.Trainer`, resolved by
  ``medood-train``.

This module sits below every other layer and imports none of them: a reference is resolved
only by the layer it belongs to, when it is first needed, so registering a family loads
neither torch nor the family's code. Adding a family is its own modules plus one
:func:`register_family` call (here for the built-in ones; anywhere for a plugin's or a
test's own family).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from napari_medood.errors import MedoodError, look_up_option

#: ``"package.module:attribute"``, or the object itself
Reference = str | Callable[..., Any] | Any


@dataclass(frozen=True)
class Family:
    """One detector family.

    Attributes:
        name: the family's name, as a card's ``"detector"`` entry gives it.
        description: one line for listings.
        detector: ``factory(checkpoints: list[Checkpoint], options: DetectorOptions)``.
        architectures: architecture type -> ``builder(architecture dict) -> nn.Module``.
        trainer: the family's :class:`~napari_medood.training.registry.Trainer` (None: the
            family is not trained by ``medood-train``).
        train_name: the ``medood-train`` method name (default: the family's name).
    """

    name: str
    description: str
    detector: Reference
    architectures: Mapping[str, Reference] = field(default_factory=dict)
    trainer: Reference | None = None
    train_name: str | None = None

    @property
    def method(self) -> str:
        return self.train_name or self.name


@dataclass(frozen=True)
class NamedDetector:
    """A detector that needs no checkpoint (a baseline): ``factory(options) -> Detector``."""

    name: str
    description: str
    factory: Reference


FAMILIES: dict[str, Family] = {}
NAMED_DETECTORS: dict[str, NamedDetector] = {}


def register_family(family: Family, replace: bool = False) -> Family:
    """Make a family known to checkpoints, detectors and ``medood-train``."""
    if not replace and family.name in FAMILIES and FAMILIES[family.name] != family:
        raise MedoodError(f"a detector family named {family.name!r} is registered already")
    methods = {f.method: f.name for f in FAMILIES.values() if f.name != family.name}
    if family.trainer is not None and family.method in methods:
        raise MedoodError(
            f"medood-train {family.method} belongs to the {methods[family.method]!r} family"
        )
    FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    FAMILIES.pop(name, None)


def register_detector(
    name: str, factory: Reference, description: str, replace: bool = False
) -> NamedDetector:
    """Make a checkpoint-free detector available under ``name`` (CLI and napari)."""
    if not replace and name in NAMED_DETECTORS:
        raise MedoodError(f"a detector named {name!r} is registered already")
    entry = NamedDetector(name, description, factory)
    NAMED_DETECTORS[name] = entry
    return entry


def get_family(name: str, where: str = "") -> Family:
    """The family called ``name``; an unknown name lists the known ones."""
    try:
        look_up_option(str(name), FAMILIES, "detector family")
    except ValueError as exc:
        raise MedoodError(f"{where}: {exc}" if where else str(exc)) from None
    return FAMILIES[name]


def family_of_architecture(architecture_type: str) -> Family | None:
    """The family that builds ``architecture_type``."""
    return next((f for f in FAMILIES.values() if architecture_type in f.architectures), None)


def architecture_types() -> list[str]:
    return [t for f in FAMILIES.values() for t in f.architectures]


def trainable_families() -> dict[str, Family]:
    """``medood-train`` method name -> family."""
    return {f.method: f for f in FAMILIES.values() if f.trainer is not None}


def declared_outputs(family: Family) -> tuple[str, ...]:
    """What a family's detectors give, as their class declares it (``outputs``), read
    without loading a checkpoint."""
    factory = resolve(family.detector)
    owner = getattr(factory, "__self__", factory)  # a classmethod's class
    return tuple(getattr(owner, "outputs", ("map", "score")))


def declared_flip_tta(family: Family) -> bool:
    """Whether a family's detectors use flip test-time augmentation (``flip_tta``)."""
    factory = resolve(family.detector)
    owner = getattr(factory, "__self__", factory)
    return bool(getattr(owner, "flip_tta", False))


def declared_variants(family: Family) -> tuple[str, ...]:
    """The anomaly maps a family's detectors can give (``DetectorOptions.variant``)."""
    factory = resolve(family.detector)
    owner = getattr(factory, "__self__", factory)
    return tuple(getattr(owner, "variants", ()))


def resolve(reference: Reference) -> Any:
    """The object a ``"package.module:attribute.path"`` reference names (or the object)."""
    if not isinstance(reference, str):
        return reference
    module_name, _, attribute = str(reference).partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else ():
        target = getattr(target, part)
    return target


def _register_builtins() -> None:
    register_family(
        Family(
            name="unet3d",
            description="self-supervised 3D U-Net on synthetic anomalies (MOOD 2022 winner)",
            detector="napari_medood.detectors.unet:UNetDetector.from_checkpoints",
            architectures={"UNet3DDeepSup": "napari_medood.models.unet:build_unet"},
            trainer="napari_medood.training.unet:TRAINER",
            train_name="unet",
        )
    )
    register_family(
        Family(
            name="seg3d",
            description="supervised 3D lesion segmenter (MONAI U-Net), with Med-OoD "
            "anomaly-free samples as supervision",
            detector="napari_medood.detectors.segmenter:SegmenterDetector.from_checkpoints",
            architectures={"MonaiUNet": "napari_medood.models.segmenter:build_segmenter"},
            trainer="napari_medood.training.segmenter:TRAINER",
            train_name="seg",
        )
    )
    register_family(
        Family(
            name="diffusion2d",
            description="slice diffusion reconstructions + pixel-wise Mahalanobis distance (MHD)",
            detector="napari_medood.detectors.diffusion:MHDDetector.from_checkpoints",
            architectures={
                "SliceDiffusionUNet": "napari_medood.models.diffusion:build_slice_diffusion"
            },
            trainer="napari_medood.training.diffusion:TRAINER",
            train_name="diffusion",
        )
    )
    register_family(
        Family(
            name="classifier3d",
            description="3D ResNet classifier: the frozen feature network of feature-OOD models",
            detector="napari_medood.detectors.feature_ood:ClassifierDetector.from_checkpoints",
            architectures={"ResNet3D": "napari_medood.models.features:build_classifier"},
            trainer="napari_medood.training.classifier:TRAINER",
            train_name="classifier",
        )
    )
    register_family(
        Family(
            name="feature-ood",
            description="normalizing flow (and OOD baselines) on a frozen network's features "
            "(MedOODFlow): is this scan like the training data?",
            detector="napari_medood.detectors.feature_ood:FeatureOODDetector.from_checkpoints",
            trainer="napari_medood.training.flow:TRAINER",
            train_name="flow",
        )
    )
    register_family(
        Family(
            name="fused",
            description="calibrated member maps (a lesion segmenter and an anomaly U-Net, "
            "say) fused into one map: is anything abnormal, lesion or otherwise?",
            detector="napari_medood.detectors.fused:FusedDetector.from_checkpoints",
        )
    )
    baselines = "napari_medood.detectors.baselines"
    register_detector(
        "intensity",
        f"{baselines}:IntensityDetector.from_options",
        "baseline: bright voxels are abnormal (percentile-normalised intensity in the mask)",
    )
    register_detector(
        "inverted-intensity",
        f"{baselines}:InvertedIntensityDetector.from_options",
        "baseline: dark voxels are abnormal (1 - normalised intensity in the mask)",
    )
    register_detector(
        "median-residual",
        f"{baselines}:MedianResidualDetector.from_options",
        "baseline: voxels unlike their 5 mm neighbourhood (|x - local median|)",
    )


_register_builtins()
