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


def topk_mean(anomaly_map: np.ndarray, k: int = 100, mask: np.ndarray | None = None) -> float:
    """Sample score: the mean of the ``k`` highest voxels (inside ``mask`` if given)."""
    values = np.asarray(
        anomaly_map if mask is None else anomaly_map[mask], dtype=np.float64
    ).ravel()
    if values.size == 0:
        return 0.0
    k = max(1, min(int(k), values.size))
    return float(np.partition(values, values.size - k)[values.size - k :].mean())
