"""What every detector is and returns.

A detector takes one :class:`~napari_medood.io.Volume` (and optionally a brain/foreground
mask on its grid) and returns an :class:`AnomalyResult`: an anomaly map on the input's own
grid with values in [0, 1], a sample-level score, or both. The CLI, the napari widgets and
the evaluation code call only this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback
from napari_medood.io.volume import Volume


@dataclass(frozen=True, eq=False)
class AnomalyResult:
    """A detector's answer for one volume.

    Attributes:
        anomaly_map: per-voxel abnormality in [0, 1] on the input's grid (None for
            image-level-only detectors).
        score: sample-level abnormality (higher = more abnormal), or None.
        extras: named by-products (reconstructions, residuals, ...), each a Volume or array.
    """

    anomaly_map: Volume | None = None
    score: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Detector(Protocol):
    """The interface every anomaly detector implements."""

    name: str

    def predict(
        self,
        volume: Volume,
        mask: np.ndarray | None = None,
        progress: ProgressCallback | None = None,
        cancelled: CancelledPredicate | None = None,
    ) -> AnomalyResult:
        """Score ``volume``; ``mask`` (bool, on the volume's grid) limits where anomalies count."""
        ...


def foreground_of(volume: Volume, mask: np.ndarray | None) -> np.ndarray:
    """The mask a detector works in: the given one (checked against the scan's grid), else
    an Otsu head/body mask of the scan."""
    from napari_medood.preprocessing.masks import check_mask, mask_from_threshold

    if mask is None:
        return mask_from_threshold(volume.data, "otsu")
    return check_mask(mask, volume.grid, volume.source)


def topk_mean(anomaly_map: np.ndarray, k: int = 100, mask: np.ndarray | None = None) -> float:
    """Sample score: the mean of the ``k`` highest voxels (inside ``mask`` if given)."""
    values = np.asarray(
        anomaly_map if mask is None else anomaly_map[mask], dtype=np.float64
    ).ravel()
    if values.size == 0:
        return 0.0
    k = max(1, min(int(k), values.size))
    return float(np.partition(values, values.size - k)[values.size - k :].mean())


def fpi_slice_score(anomaly_map: np.ndarray, axis: int = 2) -> float:
    """FPI's sample score: per-slice mean along ``axis``, smoothed by a Savitzky-Golay filter
    (window 10 % of the slices, odd, order 3), then the mean of the top quartile."""
    from scipy.signal import savgol_filter

    means = np.asarray(anomaly_map, dtype=np.float64).mean(
        axis=tuple(a for a in range(anomaly_map.ndim) if a != axis)
    )
    window = max(int(round(0.1 * means.size)) // 2 * 2 + 1, 5)
    if means.size >= window:
        means = savgol_filter(means, window, 3)
    top = np.sort(means)[-max(means.size // 4, 1) :]
    return float(np.clip(top.mean(), 0.0, 1.0))


def sample_scores(
    anomaly_map: np.ndarray, mask: np.ndarray | None = None, k: int = 100
) -> dict[str, float]:
    """The sample scores of methods.md R13 for a map in [0, 1]: ``topk_mean`` (mean of the k
    highest voxels), ``mean_in_mask`` (cDDPM/MHD) and ``fpi_slices`` (FPI)."""
    inside = anomaly_map[mask] if mask is not None else anomaly_map.ravel()
    return {
        "topk_mean": topk_mean(anomaly_map, k, mask),
        "mean_in_mask": float(inside.mean()) if inside.size else 0.0,
        "fpi_slices": fpi_slice_score(anomaly_map),
    }
