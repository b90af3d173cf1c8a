"""Detectors: one interface, the families behind it, and the names users can pick.

A name is a checkpoint-free detector (``intensity``, ``inverted-intensity``,
``median-residual``), a model shipped in ``models/`` (``brain-any-unet-gpu``), a checkpoint
folder, or several of the last two separated by commas (an ensemble). A checkpoint's card
names its family (``"detector": "unet3d"``), and :func:`get_detector` builds the detector
through that family's factory (``napari_medood.registry``).
"""

from __future__ import annotations

from napari_medood.detectors.base import (
    MAP,
    OUTPUT_KINDS,
    SCORE,
    AnomalyResult,
    BaseDetector,
    Detector,
    DetectorOptions,
    DetectorOutput,
    ScoreInfo,
    detector_from_checkpoints,
    sample_scores,
    topk_mean,
)
from napari_medood.errors import MedoodError, look_up_option
from napari_medood.registry import NAMED_DETECTORS, register_detector

#: the default model: brain-any, the lesion segmenter and the GPU-trained U-Net fused, which
#: had the highest pixel AP averaged over the IXI synthetic set and MS patients in four
#: contrasts, and flagged the least healthy tissue of the three candidates (README, "Lesions in
#: any contrast"; brain-any-unet-gpu and brain-t1-unet stay by name)
PREFERRED_DEFAULT = "brain-any"


def available_models() -> dict[str, str]:
    """Every name a user can pick, with a one-line description (shipped models first)."""
    from napari_medood.models.checkpoint import bundled_models, read_card

    names = {
        name: read_card(folder).get("description", "shipped model")
        for name, folder in bundled_models().items()
    }
    names.update({name: entry.description for name, entry in NAMED_DETECTORS.items()})
    return names


def default_model() -> str:
    """The default shipped model when it is installed, else the intensity baseline."""
    from napari_medood.models.checkpoint import bundled_models

    return PREFERRED_DEFAULT if PREFERRED_DEFAULT in bundled_models() else "intensity"


def get_detector(name: str, options: DetectorOptions | None = None, **option_values) -> Detector:
    """Build the detector called ``name`` (see the module docstring) with ``options`` (or
    the same given as keywords: ``device``, ``overlap``, ``batch_size``, ``precision``,
    ``variant``, ``extra_maps``, ``gate``, ``tta``)."""
    from pathlib import Path

    from napari_medood.models.checkpoint import Checkpoint, bundled_models
    from napari_medood.registry import resolve

    options = options or DetectorOptions(**option_values)
    if name in NAMED_DETECTORS:
        if options.variant is not None:
            raise MedoodError(f"the {name} detector has no variants (got {options.variant!r})")
        if options.device not in ("auto", "cpu"):
            from napari_medood.device import choose_device

            # one rule for every detector: a device that is not there is an error, even for
            # a baseline that computes on the CPU whatever is asked
            choose_device(options.device)
        return resolve(NAMED_DETECTORS[name].factory)(options)
    parts = [part.strip() for part in str(name).split(",") if part.strip()]
    shipped = bundled_models()
    if len(parts) > 1:
        baselines = [part for part in parts if part in NAMED_DETECTORS]
        if baselines:
            raise MedoodError(
                f"{baselines[0]} is a baseline and cannot be part of an ensemble; an ensemble "
                "averages checkpoints of one family (comma-separated shipped models or folders)"
            )
    missing = [part for part in parts if part not in shipped and not Path(part).exists()]
    if not parts or missing:
        ensemble = len(parts) > 1
        what = (
            "ensemble member (a shipped model or checkpoint folder)"
            if ensemble
            else ("detector (or checkpoint path)")
        )
        known = [*shipped] if ensemble else [*shipped, *NAMED_DETECTORS]
        try:
            look_up_option(missing[0] if missing else str(name), known, what)
        except ValueError as exc:
            raise MedoodError(str(exc)) from None
    return detector_from_checkpoints([Checkpoint.open(part) for part in parts], options, name)


__all__ = [
    "MAP",
    "OUTPUT_KINDS",
    "SCORE",
    "AnomalyResult",
    "BaseDetector",
    "Detector",
    "DetectorOptions",
    "DetectorOutput",
    "ScoreInfo",
    "available_models",
    "default_model",
    "get_detector",
    "register_detector",
    "sample_scores",
    "topk_mean",
]
