"""A map model's calibration on healthy scans, as its card stores it (``"calibration"``).

A map in [0, 1] says little until one knows how much of a healthy brain it flags: the card's
``voxel_threshold`` flags a stated share of healthy brain voxels (``healthy_voxel_fpr``,
1 % by default), measured by ``medood-eval --calibrate`` on healthy scans. Every map a
calibrated model gives is then also read as a volume: the millilitres of brain above that
threshold (``flagged_ml``), beside the healthy scans' own flagged volumes.

The calibrated sample score follows from it. The raw score of a map model (the mean of its
100 highest voxels) rests on a handful of voxels and barely moves when one anomaly is added
to a brain (on the held-out IXI synthetic set brain-t1-unet separated anomalous from normal
copies with AUROC 0.70 by it, and 0.875 by the flagged volume). A card whose calibration
names ``"sample_score": "flagged_ml"`` scores a scan by its flagged volume ``v`` relative to
the healthy scans' mean ``h``: ``v / (v + h)``, in [0, 1] as the MOOD format wants; 0.5 is
an average healthy brain, 2/3 twice its volume, 0.9 nine times.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: the calibration entry's name for the flagged-volume sample score
FLAGGED_ML = "flagged_ml"


def calibrated_threshold(card: Mapping[str, Any] | None) -> float | None:
    """The card's calibrated voxel threshold, or None when the model was not calibrated."""
    entry = (card or {}).get("calibration")
    if not isinstance(entry, Mapping) or entry.get("voxel_threshold") is None:
        return None
    return float(entry["voxel_threshold"])


def calibrated_score_reference(card: Mapping[str, Any] | None) -> float | None:
    """The healthy flagged volume ``h`` (ml) a calibrated sample score is relative to, or
    None when the card's calibration does not name one (or its healthy scans flagged
    nothing, which leaves no scale)."""
    if calibrated_threshold(card) is None:
        return None
    entry = card["calibration"]
    healthy = [float(v) for v in entry.get("healthy_flagged_ml", [])]
    if entry.get("sample_score") != FLAGGED_ML or not healthy or np.mean(healthy) <= 0:
        return None
    return float(np.mean(healthy))


def calibrated_score(flagged: float, reference: float) -> float:
    """``flagged / (flagged + reference)``: 0 for nothing flagged, 0.5 for as much as the
    healthy reference, towards 1 for much more."""
    return float(flagged / (flagged + reference)) if flagged > 0 else 0.0


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
    flagged = flagged_ml(anomaly_map, affine, threshold, mask)
    extras = {
        "voxel_threshold": threshold,
        "healthy_voxel_fpr": entry.get("healthy_voxel_fpr"),
        "flagged_ml": round(flagged, 3),
        "healthy_flagged_ml": list(entry.get("healthy_flagged_ml", [])),
    }
    reference = calibrated_score_reference(card)
    if reference is not None:
        extras["sample_score"] = calibrated_score(flagged, reference)
    inside = np.asarray(mask, dtype=bool) if mask is not None else None
    counted = int(inside.sum()) if inside is not None else int(np.asarray(anomaly_map).size)
    if counted:
        extras["flagged_share"] = round(flagged / (counted * voxel_ml(affine)), 5)
    return extras


#: a map flagging this many times its calibration's healthy share is called widespread
WIDESPREAD = 10.0


def widespread_note(extras: Mapping[str, Any] | None) -> str | None:
    """A note for a map that flags far more of the brain than the healthy calibration scans
    (``WIDESPREAD`` times their share or more), else None. Focal disease rarely covers a
    tenth of a brain; a scan unlike the calibration scans (another scanner, resolution or
    preprocessing) often lifts the whole map above a threshold calibrated elsewhere."""
    if not extras or not extras.get("healthy_voxel_fpr") or "flagged_share" not in extras:
        return None
    share, healthy = float(extras["flagged_share"]), float(extras["healthy_voxel_fpr"])
    if share < WIDESPREAD * healthy:
        return None
    return (
        f"{extras['flagged_ml']:.0f} ml ({100 * share:.0f} % of the brain) lies above the "
        f"calibrated threshold, {share / healthy:.0f} times the share of the healthy scans it "
        "was calibrated on. A map this widespread more often means the scan differs from "
        "those scans (scanner, resolution, preprocessing) than disease of that extent: "
        "calibrate on healthy scans like it (medood-eval --calibrate) before reading volumes."
    )
