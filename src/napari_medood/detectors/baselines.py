"""Reference detectors that need no training: every learned detector is compared with them.

``intensity`` calls bright voxels abnormal (hyperintense lesions on FLAIR/T2), ``inverted
intensity`` dark ones (hypointense lesions on T1), ``median-residual`` voxels that differ from
the median of their neighbourhood (small focal changes of either sign). Intensities are
normalised by the 1st-99th percentiles inside the mask, and maps are zero outside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from napari_medood._progress import CancelledPredicate, Stages, check_cancelled
from napari_medood.detectors.base import (
    BaseDetector,
    DetectorOptions,
    DetectorOutput,
    ScoreInfo,
    topk_mean,
)
from napari_medood.io.volume import Volume
from napari_medood.preprocessing.intensity import percentile_bounds, percentile_in_mask

BASELINE_SCORE = ScoreInfo("mean of the 100 highest unclipped voxels, squashed by x / (1 + x)")


def squash(value: float) -> float:
    """Map a score in [0, inf) into [0, 1) keeping its order (x / (1 + x)): the sample score
    of a baseline is the mean of its top-k *unclipped* values, so that scans whose extremes go
    beyond the map's [0, 1] range still rank above others, and MOOD's [0, 1] clip keeps them."""
    value = max(float(value), 0.0)
    return value / (1.0 + value)


@dataclass
class IntensityDetector(BaseDetector):
    """Anomaly map = normalised intensity (or 1 minus it) inside the foreground mask.

    Attributes:
        invert: score dark voxels instead of bright ones.
        lower, upper: percentiles mapped to 0 and 1.
        top_k: voxels averaged for the sample score.
    """

    invert: bool = False
    lower: float = 1.0
    upper: float = 99.0
    top_k: int = 100
    score_info: ClassVar[ScoreInfo] = BASELINE_SCORE
    stages: ClassVar[tuple[str, ...]] = ("normalising",)

    @classmethod
    def from_options(cls, options: DetectorOptions | None = None) -> IntensityDetector:
        return cls()

    @property
    def name(self) -> str:
        return "inverted-intensity" if self.invert else "intensity"

    def run(
        self, volume: Volume, mask: np.ndarray, stages: Stages, cancelled: CancelledPredicate | None
    ) -> DetectorOutput:
        stages.report("normalising")
        low, high = percentile_bounds(volume.data, mask, self.lower, self.upper)
        raw = (volume.data.astype(np.float32) - np.float32(low)) / np.float32(high - low)
        if self.invert:
            raw = 1.0 - raw
        return DetectorOutput(raw, squash(topk_mean(raw, self.top_k, mask)))


@dataclass
class InvertedIntensityDetector(IntensityDetector):
    """Anomaly map = 1 - normalised intensity: dark voxels are abnormal."""

    invert: bool = True


@dataclass
class MedianResidualDetector(BaseDetector):
    """Anomaly map = |x - median(x over a ``size_mm`` cube)|, scaled so the 99.9th
    percentile inside the mask maps to 1 and clipped to [0, 1].

    Attributes:
        size_mm: side of the median neighbourhood (rounded to an odd number of voxels).
        top_k: voxels averaged for the sample score.
    """

    size_mm: float = 5.0
    top_k: int = 100
    name: str = "median-residual"
    score_info: ClassVar[ScoreInfo] = BASELINE_SCORE
    stages: ClassVar[tuple[str, ...]] = ("median filter", "scaling")

    @classmethod
    def from_options(cls, options: DetectorOptions | None = None) -> MedianResidualDetector:
        return cls()

    def run(
        self, volume: Volume, mask: np.ndarray, stages: Stages, cancelled: CancelledPredicate | None
    ) -> DetectorOutput:
        from scipy import ndimage

        from napari_medood.preprocessing.crop import foreground_box, paste

        values = percentile_in_mask(volume.data, mask)
        size = [max(1, int(round(self.size_mm / s)) // 2 * 2 + 1) for s in volume.spacing]
        box = foreground_box(mask, margin=max(size))  # the filter only runs over the brain
        stages.report("median filter")
        local = values[box.slices]
        residual = np.abs(local - ndimage.median_filter(local, size=size, mode="nearest"))
        residual = paste(residual, box)
        check_cancelled(cancelled)
        stages.report("scaling")
        scale = float(np.percentile(residual[mask], 99.9)) or 1.0
        raw = residual / np.float32(scale)
        return DetectorOutput(raw, squash(topk_mean(raw, self.top_k, mask)))
