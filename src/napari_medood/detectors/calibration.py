"""A map model's calibration on healthy scans, as its card stores it (``"calibration"``).

A map in [0, 1] says little until one knows how much of a healthy brain it flags: the card's
``voxel_threshold`` flags a stated share of healthy brain voxels (``healthy_voxel_fpr``,
1 % by default), measured by ``medood-eval --calibrate`` on healthy scans. Every map a
calibrated model gives is then also read as a volume: the millilitres of brain above that
threshold (``flagged_ml``), beside the healthy scans' own flagged volumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def calibrated_threshold(card: Mapping[str, Any] | None) -> float | None:
    """The card's calibrated voxel threshold, or None when the model was not calibrated."""
    entry = (card or {}).get("calibration")
    if not isinstance(entry, Mapping) or entry.get("voxel_threshold") is None:
        return None
    return float(entry["voxel_threshold"])


def voxel_ml(affine: np.ndarray) -> float:
    """The volume of one voxel in millilitres."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def flagged_ml(
    anomaly_map: np.ndarray, affine: np.ndarray, threshold: float, mask: np.ndarray | None = None
) -> float:
    """Millilitres of ``anomaly_map`` above ``threshold`` (inside ``mask`` when given)."""
    above = np.asarray(anomaly_map) > threshold
    if mask is not None:
        above &= np.asarray(mask, dtype=bool)
    return float(np.count_nonzero(above)) * voxel_ml(affine)


def calibration_extras(
    card: Mapping[str, Any] | None, anomaly_map: np.ndarray, affine: np.ndarray, mask
) -> dict[str, Any] | None:
    """What a calibrated model adds to a result's extras: the threshold, the volume above
    it and the healthy scans' volumes above it (None for an uncalibrated model)."""
    threshold = calibrated_threshold(card)
    if threshold is None:
        return None
    entry = card["calibration"]
    return {
        "voxel_threshold": threshold,
        "healthy_voxel_fpr": entry.get("healthy_voxel_fpr"),
        "flagged_ml": round(flagged_ml(anomaly_map, affine, threshold, mask), 3),
        "healthy_flagged_ml": list(entry.get("healthy_flagged_ml", [])),
    }
