"""Calibrate a map model on healthy scans and store it in its card (``medood-eval
--calibrate``): the voxel threshold that flags a chosen share of healthy brain voxels, the
volume each healthy scan has above it, and the sample score that volume defines
(``detectors.calibration`` reads them back)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback, check_cancelled, report
from napari_medood.errors import MedoodError


def calibrate_on_healthy(
    detector,
    cases: Sequence[Any],
    fpr: float = 0.01,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> dict[str, Any]:
    """The card's ``calibration`` entry of ``detector`` on healthy ``cases`` (every one with
    its brain mask or skull-stripped, or none: an Otsu mask): the threshold above which
    ``fpr`` of their brain voxels lie (pooled), each scan's share and millilitres above it,
    and the failures.
    A scan that fails is reported and skipped; if every scan fails, nothing is calibrated."""
    from napari_medood.detectors.base import MASK_FOREGROUND, working_mask
    from napari_medood.detectors.calibration import RELATIVE_FLAGGED_VOLUME, flagged_ml
    from napari_medood.io.readers import read_volume
    from napari_medood.preprocessing.masks import load_mask

    if not 0 < fpr < 1:
        raise MedoodError(f"the healthy voxel false-positive rate must be within (0, 1), not {fpr}")
    if not cases:
        raise MedoodError("calibration needs healthy scans (none were found)")
    maps, failed, brains = [], [], {}
    for index, case in enumerate(cases):
        report(progress, index, len(cases), case.name)
        check_cancelled(cancelled)
        try:
            volume = read_volume(case.image)
            mask = load_mask(case.mask, volume.grid) if case.mask is not None else None
            mask, how = working_mask(volume, mask)
        except MedoodError as exc:
            failed.append({"case": case.name, "error": str(exc)})
            continue
        # a skull-stripped scan without a mask file is read in its brain, as if given one
        brains[case.name] = how != MASK_FOREGROUND
        if len(set(brains.values())) > 1:
            raise MedoodError(
                "give a brain mask (or a skull-stripped scan) for every healthy scan or for "
                f"none: a calibration holds for maps read in one kind of mask, and {case.name} "
                "differs from the scans before it"
            )
        try:
            result = detector.predict(volume, mask, cancelled=cancelled)
            if result.anomaly_map is None:
                raise MedoodError(f"{detector.name} gives no map to calibrate")
            maps.append((case.name, result.anomaly_map.data, mask, volume.affine))
        except MedoodError as exc:
            failed.append({"case": case.name, "error": str(exc)})
    report(progress, len(cases), len(cases), "calibrated")
    if not maps:
        raise MedoodError(
            f"calibration failed on every healthy scan (first: {failed[0]['case']}: "
            f"{failed[0]['error']})"
        )
    pooled = np.concatenate([values[mask] for _, values, mask, _ in maps])
    # the smallest threshold with at most fpr of the healthy voxels above it
    threshold = float(np.quantile(pooled, 1.0 - fpr, method="higher"))
    entry = {
        "voxel_threshold": threshold,
        "healthy_voxel_fpr": float(fpr),
        "healthy_fpr_pooled": float(np.mean(pooled > threshold)),
        "healthy_voxels": int(pooled.size),
        "healthy_scans": [name for name, *_ in maps],
        "healthy_fpr_per_scan": [
            round(float(np.mean(values[mask] > threshold)), 5) for _, values, mask, _ in maps
        ],
        "healthy_flagged_ml": [
            round(flagged_ml(values, affine, threshold, mask), 3)
            for _, values, mask, affine in maps
        ],
        "failed": failed,
        # how the maps were made: a map made otherwise is not read against this entry
        "made_with": detector.made_with(any(brains.values())),
    }
    if "score" in getattr(detector, "outputs", ()) and np.mean(entry["healthy_flagged_ml"]) > 0:
        # the sample score becomes the flagged volume relative to these scans'
        entry["sample_score"] = RELATIVE_FLAGGED_VOLUME
    return entry


def write_calibration(checkpoint, entry: dict[str, Any], command: str = "") -> Path:
    """Store ``entry`` as the ``calibration`` of a checkpoint folder's card (atomically;
    the weights and their sha256 are untouched)."""
    from napari_medood.io.atomic import write_text_atomic

    card_path = Path(checkpoint.folder) / "card.json"
    card = json.loads(card_path.read_text())
    card["calibration"] = {**entry, **({"command": command} if command else {})}
    write_text_atomic(card_path, json.dumps(card, indent=1) + "\n")
    return card_path
