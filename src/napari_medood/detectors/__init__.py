"""Detectors: one protocol, its implementations, and the names users can pick.

A name is a built-in baseline (``intensity``, ``inverted-intensity``, ``median-residual``), a
model shipped in ``models/`` (``brain-t1-unet``), a checkpoint folder, or several of the last
two separated by commas (an ensemble whose probabilities are averaged).
"""

from __future__ import annotations

from collections.abc import Callable

from napari_medood.detectors.base import AnomalyResult, Detector, sample_scores, topk_mean
from napari_medood.errors import look_up_option

#: Name -> (factory, one-line description) of the detectors that need no checkpoint.
DETECTORS: dict[str, tuple[Callable[[], Detector], str]] = {}
PREFERRED_DEFAULT = "brain-t1-unet"


def register_detector(name: str, factory: Callable[[], Detector], description: str) -> None:
    """Make a detector available to the CLI and the napari widgets under ``name``."""
    DETECTORS[name] = (factory, description)


def available_models() -> dict[str, str]:
    """Every name a user can pick, with a one-line description (shipped models first)."""
    from napari_medood.models.checkpoint import bundled_models, read_card

    names = {
        name: read_card(folder).get("description", "shipped model")
        for name, folder in bundled_models().items()
    }
    names.update({name: description for name, (_, description) in DETECTORS.items()})
    return names


def default_model() -> str:
    """The shipped U-Net when it is installed, else the intensity baseline."""
    from napari_medood.models.checkpoint import bundled_models

    return PREFERRED_DEFAULT if PREFERRED_DEFAULT in bundled_models() else "intensity"


def get_detector(
    name: str, device: str = "auto", overlap: float | None = None, batch_size: int | None = None
) -> Detector:
    """Build the detector called ``name`` (see the module docstring); the options apply to
    checkpoint-based detectors."""
    from pathlib import Path

    from napari_medood.models.checkpoint import bundled_models

    if name in DETECTORS:
        return DETECTORS[name][0]()
    parts = [part.strip() for part in str(name).split(",") if part.strip()]
    shipped = bundled_models()
    if parts and all(part in shipped or Path(part).exists() for part in parts):
        from napari_medood.detectors.unet import UNetDetector

        return UNetDetector(parts, device=device, overlap=overlap, batch_size=batch_size)
    look_up_option(str(name), [*shipped, *DETECTORS], "detector (or checkpoint path)")
    raise AssertionError("unreachable")


def _register_builtins() -> None:
    from napari_medood.detectors.baselines import IntensityDetector, MedianResidualDetector

    register_detector(
        "intensity",
        IntensityDetector,
        "baseline: bright voxels are abnormal (percentile-normalised intensity in the mask)",
    )
    register_detector(
        "inverted-intensity",
        lambda: IntensityDetector(invert=True),
        "baseline: dark voxels are abnormal (1 - normalised intensity in the mask)",
    )
    register_detector(
        "median-residual",
        MedianResidualDetector,
        "baseline: voxels unlike their 5 mm neighbourhood (|x - local median|)",
    )


_register_builtins()

__all__ = [
    "DETECTORS",
    "AnomalyResult",
    "Detector",
    "available_models",
    "default_model",
    "get_detector",
    "register_detector",
    "sample_scores",
    "topk_mean",
]
