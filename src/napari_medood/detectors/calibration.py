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
names ``"sample_score": "relative_flagged_volume"`` scores a scan by its flagged volume ``v``
relative to the healthy scans' mean ``h``: ``v / (v + h)``, in [0, 1] as the MOOD format
wants; 0.5 is an average healthy brain, 2/3 twice its volume, 0.9 nine times.

A calibration holds for maps made as it was measured: ``made_with`` records the test-time
augmentation, the variant and whether brain masks were given (else the detector's own
foreground mask); a map made otherwise is not read against it. A skull-stripped scan given
without a mask counts as given one (``BaseDetector.made_with``): its non-background voxels
are its brain (``detectors.base.working_mask``), the region a brain mask file would have
held.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: the calibration entry's name for the flagged-volume sample score
RELATIVE_FLAGGED_VOLUME = "relative_flagged_volume"


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
    if entry.get("sample_score") != RELATIVE_FLAGGED_VOLUME or not healthy or np.mean(healthy) <= 0:
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


def calibration_applies(card: Mapping[str, Any] | None, made_with: Mapping[str, Any]) -> bool:
    """Was the card's calibration measured on maps made as ``made_with`` says (``tta``,
    ``variant``, ``mask``: ``given`` (a brain mask, or a skull-stripped scan's own brain)
    or ``foreground``)? Keys the entry does not record are not compared."""
    if calibrated_threshold(card) is None:
        return False
    measured = card["calibration"].get("made_with") or {}
    return all(measured[key] == value for key, value in made_with.items() if key in measured)


def calibration_extras(
    card: Mapping[str, Any] | None,
    anomaly_map: np.ndarray,
    affine: np.ndarray,
    mask,
    made_with: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """What a calibrated model adds to a result's extras: the threshold, the volume and
    share of the mask above it, the healthy scans' volumes above it and, when the card
    names it, the calibrated sample score. None for an uncalibrated model, or for a map
    made otherwise than the calibration's (``made_with``, see :func:`calibration_applies`)."""
    if not calibration_applies(card, made_with or {}):
        return None
    threshold = calibrated_threshold(card)
    entry = card["calibration"]
    above = np.asarray(anomaly_map) > threshold
    inside = np.ones(above.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    flagged_voxels = int(np.count_nonzero(above & inside))
    flagged = flagged_voxels * voxel_ml(affine)
    extras = {
        "voxel_threshold": threshold,
        "healthy_voxel_fpr": entry.get("healthy_voxel_fpr"),
        "healthy_fpr_pooled": entry.get("healthy_fpr_pooled"),
        "flagged_ml": round(flagged, 3),
        "flagged_share": round(flagged_voxels / max(int(inside.sum()), 1), 5),
        "healthy_flagged_ml": list(entry.get("healthy_flagged_ml", [])),
    }
    reference = calibrated_score_reference(card)
    if reference is not None:
        extras["sample_score"] = calibrated_score(flagged, reference)
    return extras


#: a map flagging this many times its calibration's healthy share is called widespread
WIDESPREAD = 10.0


def widespread_note(extras: Mapping[str, Any] | None, where: str = "the brain") -> str | None:
    """A note for a map that flags far more of ``where`` (the mask) than of the healthy
    calibration scans (``WIDESPREAD`` times their measured share or more), else None. Focal
    disease rarely covers a tenth of a brain; a scan unlike the calibration scans (another
    scanner, resolution or preprocessing) often lifts the whole map above a threshold
    calibrated elsewhere."""
    if not extras or "flagged_share" not in extras:
        return None
    healthy = extras.get("healthy_fpr_pooled") or extras.get("healthy_voxel_fpr")
    if not healthy:
        return None
    share, healthy = float(extras["flagged_share"]), float(healthy)
    if share < WIDESPREAD * healthy:
        return None
    return (
        f"{extras['flagged_ml']:.0f} ml ({100 * share:.0f} % of {where}) lies above the "
        f"calibrated threshold, {share / healthy:.0f} times the share of the healthy scans it "
        "was calibrated on. A map this widespread more often means the scan differs from "
        "those scans (scanner, resolution, preprocessing) than disease of that extent: "
        "calibrate on healthy scans like it (medood-eval --calibrate) before reading volumes."
    )
