"""Lesions counted as lesions: what a reader reads of a map is its findings, not its voxels.

- A **lesion** is a 26-connected component of a case's label (inside its brain mask).
- A **finding** at a threshold is a 26-connected component of the map at or above it
  (inside the brain mask), as the findings table lists them (``detectors.findings``).
- A finding is **true** when at least a tenth of its voxels lie in lesions
  (``HIT_SHARE``): a brain-wide blob that happens to cover every lesion finds nothing.
- A lesion is **found** when a true finding overlaps it.

Per case, every threshold of a grid is read once (``lesion_counts``: one labelling of the
map per threshold, nothing of the map kept); over a cohort the counts add up to the FROC
curve (lesion sensitivity against the mean number of false findings per scan, lesion and
healthy scans alike), its points at 1, 2, 4 and 8 false findings per scan, lesion-wise F1,
and the false findings and millilitres a healthy scan gets (``cohort_lesion_figures``).

Written here rather than taken from panoptica or picai-eval: panoptica matches instances
one to one by IoU and picai-eval extracts its own candidates from the map (its dynamic
threshold) with an IoU hit criterion, while a reader's rule is the findings table's
components at the threshold the reader sets, with the share-inside rule above; both rules
take a labelling per threshold, which scipy does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: a finding is true when at least this share of its voxels lie in lesions
HIT_SHARE = 0.1
#: the FROC curve's points: mean false findings per scan
FALSE_FINDINGS_PER_SCAN = (1, 2, 4, 8)
#: the thresholds every case is read at (maps are in [0, 1]), finer where calibrated
#: thresholds of the shipped models lie
GRID = tuple(
    sorted({*np.round(np.linspace(0.05, 0.95, 19), 3), *np.round(np.linspace(0.2, 0.5, 13), 3)})
)


@dataclass
class LesionCounts:
    """One case's findings at each threshold of ``thresholds``."""

    thresholds: np.ndarray
    findings: np.ndarray  # findings per threshold
    true_findings: np.ndarray
    found: np.ndarray  # lesions found per threshold
    lesions: int
    finding_voxels: np.ndarray = field(default_factory=lambda: np.zeros(0))
    voxel_ml: float | None = None

    @property
    def false_findings(self) -> np.ndarray:
        return self.findings - self.true_findings


def _structure() -> np.ndarray:
    return np.ones((3, 3, 3), dtype=bool)


def lesion_components(label: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The 26-connected lesions of ``label`` (its voxels >= 1 after rounding) inside
    ``mask``: a labelled array and how many."""
    from scipy import ndimage

    lesion = np.rint(np.asarray(label, dtype=np.float32)) >= 1
    if mask is not None:
        lesion &= mask
    labelled, count = ndimage.label(lesion, structure=_structure())
    return labelled, int(count)


def lesion_counts(
    anomaly_map: np.ndarray,
    label: np.ndarray | None,
    mask: np.ndarray | None = None,
    thresholds: Sequence[float] = GRID,
    min_voxels: int = 1,
    voxel_ml: float | None = None,
) -> LesionCounts:
    """Read ``anomaly_map`` at each of ``thresholds``: its findings (components of at least
    ``min_voxels`` voxels), how many are true, and how many of ``label``'s lesions they find
    (no label: a healthy scan, every finding false)."""
    from scipy import ndimage

    values = np.asarray(anomaly_map, dtype=np.float32)
    inside = np.ones(values.shape, bool) if mask is None else np.asarray(mask, bool)
    if label is not None:
        lesions, count = lesion_components(label, inside)
    else:
        lesions, count = None, 0
    thresholds = np.asarray(sorted(float(t) for t in thresholds), dtype=np.float64)
    findings = np.zeros(len(thresholds), np.int64)
    true = np.zeros(len(thresholds), np.int64)
    found = np.zeros(len(thresholds), np.int64)
    voxels = np.zeros(len(thresholds), np.int64)
    in_lesion = lesions > 0 if lesions is not None else None
    for index, threshold in enumerate(thresholds):
        above = (values >= threshold) & inside
        if not above.any():
            continue  # higher thresholds flag nothing either
        components, n = ndimage.label(above, structure=_structure())
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        kept = sizes >= min_voxels
        kept[0] = False
        findings[index] = int(kept.sum())
        voxels[index] = int(sizes[kept].sum())
        if in_lesion is None or not count:
            continue
        overlap = np.bincount(components[in_lesion], minlength=n + 1)
        hits = kept & (overlap >= HIT_SHARE * np.maximum(sizes, 1))
        true[index] = int(hits.sum())
        if hits.any():
            hit_voxels = hits[components] & in_lesion
            found[index] = int(np.unique(lesions[hit_voxels]).size)
    return LesionCounts(thresholds, findings, true, found, count, voxels, voxel_ml)


def cohort_lesion_figures(
    counts: Sequence[LesionCounts],
    healthy: Sequence[bool],
    operating: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The cohort's lesion-level figures from its cases' counts (one grid): the FROC curve
    and its points, lesion-wise F1 (its best, and at each ``operating`` threshold, read at
    the nearest grid threshold at or above it), false findings and ml per healthy scan."""
    if not counts:
        return {}
    thresholds = counts[0].thresholds
    if any(not np.array_equal(c.thresholds, thresholds) for c in counts):
        raise ValueError("every case must be read at the same thresholds")
    lesions = sum(c.lesions for c in counts)
    findings = np.sum([c.findings for c in counts], axis=0)
    true = np.sum([c.true_findings for c in counts], axis=0)
    found = np.sum([c.found for c in counts], axis=0)
    false_per_scan = (findings - true) / len(counts)
    sensitivity = found / lesions if lesions else np.full(len(thresholds), np.nan)
    precision = np.where(findings > 0, true / np.maximum(findings, 1), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * sensitivity / (precision + sensitivity)
    figures: dict[str, Any] = {
        "rule": f"finding true when >= {HIT_SHARE:g} of it lies in lesions; 26-connected",
        "scans": len(counts),
        "lesion_scans": int(sum(c.lesions > 0 for c in counts)),
        "lesions": int(lesions),
        "curve": [
            {
                "threshold": float(t),
                "false_findings_per_scan": float(fp),
                "sensitivity": _none(s),
                "precision": _none(p),
                "f1": _none(f),
            }
            for t, fp, s, p, f in zip(
                thresholds, false_per_scan, sensitivity, precision, f1, strict=True
            )
        ],
    }
    if lesions:
        points = {}
        for k in FALSE_FINDINGS_PER_SCAN:
            within = false_per_scan <= k
            if within.any():
                best = int(np.argmax(np.where(within, sensitivity, -1.0)))
                points[str(k)] = {
                    "sensitivity": float(sensitivity[best]),
                    "threshold": float(thresholds[best]),
                }
            else:
                points[str(k)] = {"sensitivity": 0.0, "threshold": None}
        figures["froc"] = points
        if np.isfinite(f1).any():
            best = int(np.nanargmax(f1))
            figures["best_f1"] = {"f1": float(f1[best]), "threshold": float(thresholds[best])}
    healthy_counts = [c for c, h in zip(counts, healthy, strict=True) if h]
    figures["healthy_scans"] = len(healthy_counts)
    at = {}
    for name, value in (operating or {}).items():
        index = int(np.searchsorted(thresholds, float(value) - 1e-9))
        if index >= len(thresholds):
            continue
        entry: dict[str, Any] = {
            "threshold": float(value),
            "read_at": float(thresholds[index]),
            "false_findings_per_scan": float(false_per_scan[index]),
            "sensitivity": _none(sensitivity[index]),
            "f1": _none(f1[index]),
        }
        if healthy_counts:
            entry["healthy_false_findings"] = [int(c.findings[index]) for c in healthy_counts]
            entry["healthy_false_findings_mean"] = float(
                np.mean([c.findings[index] for c in healthy_counts])
            )
            ml = [
                c.finding_voxels[index] * c.voxel_ml
                for c in healthy_counts
                if c.voxel_ml is not None
            ]
            entry["healthy_flagged_ml_mean"] = float(np.mean(ml)) if ml else None
        at[name] = entry
    if at:
        figures["at"] = at
    return figures


def _none(value: float) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value
