"""Reference detectors that need no training: every learned detector is compared with them.

``intensity`` calls bright voxels abnormal (hyperintense lesions on FLAIR/T2), ``inverted
intensity`` dark ones (hypointense lesions on T1). Intensities are normalised by the 1st-99th
percentiles inside the mask, and the map is zero outside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback, check_cancelled, report
from napari_medood.detectors.base import AnomalyResult, topk_mean
from napari_medood.io.volume import Volume
from napari_medood.preprocessing.intensity import percentile_in_mask
from napari_medood.preprocessing.masks import check_mask, mask_from_threshold


@dataclass
class IntensityDetector:
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

    @property
    def name(self) -> str:
        return "inverted-intensity" if self.invert else "intensity"

    def predict(
        self,
        volume: Volume,
        mask: np.ndarray | None = None,
        progress: ProgressCallback | None = None,
        cancelled: CancelledPredicate | None = None,
    ) -> AnomalyResult:
        report(progress, 0, 2, "masking")
        if mask is None:
            mask = mask_from_threshold(volume.data, "otsu")
        else:
            mask = check_mask(mask, volume.grid, volume.source)
        check_cancelled(cancelled)
        report(progress, 1, 2, "normalising")
        values = percentile_in_mask(volume.data, mask, self.lower, self.upper)
        if self.invert:
            values = 1.0 - values
        values[~mask] = 0.0
        report(progress, 2, 2, "done")
        return AnomalyResult(
            anomaly_map=Volume(values, volume.affine, volume.source, {"detector": self.name}),
            score=topk_mean(values, self.top_k, mask),
        )
