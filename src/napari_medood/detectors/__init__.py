"""Detectors: one protocol, its implementations, and a registry of names users can pick."""

from __future__ import annotations

from collections.abc import Callable

from napari_medood.detectors.base import AnomalyResult, Detector, topk_mean
from napari_medood.errors import look_up_option

#: Name -> (factory, one-line description). Learned detectors add themselves here.
DETECTORS: dict[str, tuple[Callable[[], Detector], str]] = {}


def register_detector(name: str, factory: Callable[[], Detector], description: str) -> None:
    """Make a detector available to the CLI and the napari widgets under ``name``."""
    DETECTORS[name] = (factory, description)


def get_detector(name: str) -> Detector:
    """Build the detector registered as ``name``; unknown names list the valid ones."""
    look_up_option(name, DETECTORS, "detector")
    return DETECTORS[name][0]()


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
    "get_detector",
    "register_detector",
    "topk_mean",
]
