"""Two models on one scan: both maps, their difference, and where they disagree.

:func:`compare_models` runs two detectors' ``predict`` on the same scan and mask and hands
their maps to :func:`compare_maps`, which works on plain arrays: the difference A - B
(float32, on the scan's grid), a label volume of which model flags each voxel
(:data:`DISAGREEMENT_LABELS`), and a summary of the volumes flagged by each, by one only and
by both, the Dice between the two flagged sets and the Pearson correlation of the maps.

A model flags the voxels above its own threshold: its card's calibrated threshold when the
calibration holds for maps made as this run makes them (``detectors.calibration``), else
the threshold the caller gives (0.5 by default). The counts run over the brain mask, or,
without one, over the brain of a skull-stripped scan or the Otsu foreground, where the
detectors themselves work. The ``medood-compare`` command and the napari "Compare two
models" panel are faces of this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medood._progress import (
    CancelledPredicate,
    ProgressCallback,
    check_cancelled,
    report,
)
from napari_medood.errors import MedoodError
from napari_medood.io.volume import Volume

#: a voxel neither model flags, or one outside the compared region
NEITHER = 0
#: a voxel only model A flags
A_ONLY = 1
#: a voxel only model B flags
B_ONLY = 2
#: a voxel both models flag
BOTH = 3
DISAGREEMENT_LABELS = {
    NEITHER: "neither model flags it (or outside the mask)",
    A_ONLY: "flagged by A only",
    B_ONLY: "flagged by B only",
    BOTH: "flagged by both",
}
#: the threshold of a model without a calibration that applies, unless the caller gives one
DEFAULT_THRESHOLD = 0.5
#: where a threshold came from
FROM_CALIBRATION, FROM_CALLER, FROM_DEFAULT = "calibration", "given", "default"
COMPARING = "comparing the maps"


@dataclass(frozen=True, eq=False)
class MapComparison:
    """What :func:`compare_maps` finds.

    Attributes:
        difference: ``map_a - map_b``, float32.
        disagreement: uint8 labels (:data:`DISAGREEMENT_LABELS`), 0 outside the mask.
        summary: the volumes, Dice and correlation (see :func:`compare_maps`).
    """

    difference: np.ndarray
    disagreement: np.ndarray
    summary: dict[str, Any]


@dataclass(frozen=True, eq=False)
class Comparison:
    """What :func:`compare_models` returns: four volumes on the scan's grid and a summary.

    Attributes:
        map_a, map_b: each model's anomaly map, as its ``predict`` returned it.
        difference: A - B (float32).
        disagreement: which model flags each voxel (:data:`DISAGREEMENT_LABELS`).
        summary: JSON-ready: each model's name, threshold and its origin, flagged volume;
            the volumes flagged by A only, B only and both; Dice; Pearson correlation.
        notes: what the user should know about the scan, from each model (``"A (name): ..."``).
        results: the two detectors' full results (scores, calibration, trust reports).
    """

    map_a: Volume
    map_b: Volume
    difference: Volume
    disagreement: Volume
    summary: dict[str, Any]
    notes: tuple[str, ...] = ()
    results: tuple[Any, ...] = field(default=())


def _checked_threshold(value: float, which: str) -> float:
    value = float(value)
    if not np.isfinite(value) or not 0.0 <= value <= 1.0:
        raise MedoodError(f"the threshold of model {which} must be within [0, 1], got {value}")
    return value


def compare_maps(
    map_a: np.ndarray,
    map_b: np.ndarray,
    threshold_a: float,
    threshold_b: float,
    mask: np.ndarray | None,
    affine: np.ndarray,
) -> MapComparison:
    """Compare two maps of one scan voxel by voxel.

    A map flags the voxels strictly above its threshold (as calibrations count them); only
    voxels inside ``mask`` (all, when None) are flagged and counted. Volumes are in
    millilitres of the voxel size ``affine`` gives.

    Returns:
        :class:`MapComparison` whose ``summary`` holds ``model_a`` / ``model_b``
        (``threshold``, ``flagged_ml``), ``a_only_ml``, ``b_only_ml``, ``both_ml``,
        ``compared_ml`` (the mask's volume), ``voxel_ml``, ``voxels`` (the same as voxel
        counts), ``dice`` (2 both / (flagged by A + flagged by B); 1 when neither flags
        anything) and ``pearson`` (correlation of the two maps inside the mask; None when
        either is constant there).

    Raises:
        MedoodError: the maps (or the mask) differ in shape, or a threshold is not in [0, 1].
    """
    from napari_medood.detectors.calibration import voxel_ml
    from napari_medood.evaluation.metrics import dice_from_counts

    a = np.asarray(map_a)
    b = np.asarray(map_b)
    if a.shape != b.shape:
        raise MedoodError(f"the two maps differ in shape: A {a.shape}, B {b.shape}")
    if mask is None:
        inside = np.ones(a.shape, dtype=bool)
    else:
        inside = np.asarray(mask).astype(bool, copy=False)
        if inside.shape != a.shape:
            raise MedoodError(f"the mask has shape {inside.shape}, the maps {a.shape}")
    threshold_a = _checked_threshold(threshold_a, "A")
    threshold_b = _checked_threshold(threshold_b, "B")
    flagged_a = (a > threshold_a) & inside
    flagged_b = (b > threshold_b) & inside
    disagreement = np.zeros(a.shape, dtype=np.uint8)
    disagreement[flagged_a] += A_ONLY
    disagreement[flagged_b] += B_ONLY  # A_ONLY + B_ONLY == BOTH
    counts = np.bincount(disagreement.ravel(), minlength=BOTH + 1)
    a_only, b_only, both = (int(counts[label]) for label in (A_ONLY, B_ONLY, BOTH))
    compared = int(np.count_nonzero(inside))
    unit = voxel_ml(affine)
    summary: dict[str, Any] = {
        "model_a": {"threshold": threshold_a, "flagged_ml": (a_only + both) * unit},
        "model_b": {"threshold": threshold_b, "flagged_ml": (b_only + both) * unit},
        "a_only_ml": a_only * unit,
        "b_only_ml": b_only * unit,
        "both_ml": both * unit,
        "compared_ml": compared * unit,
        "voxel_ml": unit,
        "voxels": {
            "a": a_only + both,
            "b": b_only + both,
            "a_only": a_only,
            "b_only": b_only,
            "both": both,
            "compared": compared,
        },
        "dice": dice_from_counts(both, a_only, b_only),
        "pearson": pearson_in(a, b, inside),
    }
    difference = a.astype(np.float32) - b.astype(np.float32)
    return MapComparison(difference, disagreement, summary)


def pearson_in(a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> float | None:
    """The Pearson correlation of ``a`` and ``b`` over the voxels ``inside``; None when
    fewer than two voxels are inside or either map is constant there (undefined)."""
    x = np.asarray(a, dtype=np.float64)[inside]
    y = np.asarray(b, dtype=np.float64)[inside]
    if x.size < 2:
        return None
    x = x - x.mean()
    y = y - y.mean()
    spread = float(np.sqrt(np.dot(x, x) * np.dot(y, y)))
    if spread == 0.0:
        return None
    return float(np.clip(np.dot(x, y) / spread, -1.0, 1.0))


def threshold_of(detector: Any, mask_given: bool | str, given: float | None) -> tuple[float, str]:
    """The threshold a model flags voxels above, and where it came from: its card's
    calibrated threshold when that calibration holds for maps made as this run makes
    them (:func:`~napari_medood.detectors.calibration.calibration_applies`; ``mask_given``:
    whether a mask was given, or how ``detectors.base.working_mask`` found it), else
    ``given``, else :data:`DEFAULT_THRESHOLD`."""
    from napari_medood.detectors.calibration import calibrated_threshold, calibration_applies

    card = getattr(detector, "card", None)
    made_with = getattr(detector, "made_with", None)
    how = made_with(mask_given) if callable(made_with) else {}
    if calibration_applies(card, how):
        return float(calibrated_threshold(card)), FROM_CALIBRATION
    if given is not None:
        return float(given), FROM_CALLER
    return DEFAULT_THRESHOLD, FROM_DEFAULT


def _gives_a_map(detector: Any) -> bool:
    from napari_medood.detectors.base import MAP

    return MAP in tuple(getattr(detector, "outputs", (MAP,)))


def _within(progress: ProgressCallback | None, which: str, name: str) -> ProgressCallback | None:
    """``progress`` with each report said to be about model ``which``."""
    if progress is None:
        return None
    return lambda done, total, message="": progress(
        done, total, f"model {which} ({name}): {message}"
    )


def compare_models(
    detector_a: Any,
    detector_b: Any,
    volume: Volume,
    mask: np.ndarray | None = None,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> Comparison:
    """Run ``detector_a`` and ``detector_b`` on ``volume`` (and ``mask``) and compare maps.

    Progress reports come from each detector's own stages, said to be about model A or B
    (``"model A (intensity): normalising (step 1 of 1)"``), then ``"comparing the maps"``;
    ``cancelled()`` is checked before, between and inside the two predictions.
    ``threshold_a`` / ``threshold_b`` apply to a model without a calibration that holds for
    this run (see :func:`threshold_of`).

    Raises:
        MedoodError: a detector gives no map (a score-only model), the maps differ in shape,
            a threshold is outside [0, 1]; the detectors' own errors (a mask on another grid).
        Cancelled: the caller asked to stop.
    """
    from napari_medood.detectors.base import MASK_GIVEN, MASK_SKULL_STRIPPED, working_mask

    detectors = (("A", detector_a), ("B", detector_b))
    for which, detector in detectors:
        if not _gives_a_map(detector):
            name = getattr(detector, "name", "detector")
            raise MedoodError(
                f"model {which}, {name}, gives a sample score but no anomaly map; "
                "compare two models that make maps"
            )
    given = {"A": threshold_a, "B": threshold_b}
    for which, value in given.items():
        if value is not None:
            _checked_threshold(value, which)
    # the region counted: the given mask (checked against the scan before any model runs),
    # else the same brain of a skull-stripped scan, or Otsu foreground, the detectors use
    region, how = working_mask(volume, mask)
    results = []
    for which, detector in detectors:
        check_cancelled(cancelled)
        result = detector.predict(
            volume, mask, progress=_within(progress, which, detector.name), cancelled=cancelled
        )
        if result.anomaly_map is None:
            raise MedoodError(
                f"model {which}, {detector.name}, returned no anomaly map for {volume.name}"
            )
        results.append(result)
    check_cancelled(cancelled)
    report(progress, 0, 0, COMPARING)
    map_a, map_b = (r.anomaly_map for r in results)
    if map_a.shape != map_b.shape:
        raise MedoodError(
            f"the two maps of {volume.name} differ in shape: {detector_a.name} gives "
            f"{map_a.shape}, {detector_b.name} {map_b.shape}"
        )
    if map_a.shape != volume.shape:
        raise MedoodError(
            f"the maps have shape {map_a.shape}, the scan {volume.name} {volume.shape}"
        )
    thresholds = {which: threshold_of(detector, how, given[which]) for which, detector in detectors}
    compared = compare_maps(
        map_a.data,
        map_b.data,
        thresholds["A"][0],
        thresholds["B"][0],
        region,
        volume.affine,
    )
    summary = dict(compared.summary)
    for which, detector in detectors:
        key = f"model_{which.lower()}"
        summary[key] = {
            "name": detector.name,
            "threshold": thresholds[which][0],
            "threshold_from": thresholds[which][1],
            "flagged_ml": summary[key]["flagged_ml"],
        }
    summary["region"] = {
        MASK_GIVEN: "mask",
        MASK_SKULL_STRIPPED: "brain of the skull-stripped scan",
    }.get(how, "foreground (Otsu)")
    summary["difference"] = "A - B"
    summary["labels"] = {str(k): v for k, v in DISAGREEMENT_LABELS.items()}
    notes = tuple(
        f"{which} ({detector.name}): {note}"
        for (which, detector), result in zip(detectors, results, strict=True)
        for note in result.notes
    )
    name_a, name_b = detector_a.name, detector_b.name
    difference = Volume(
        compared.difference,
        volume.affine,
        volume.source,
        {"description": f"napari-medood {name_a} - {name_b}"},
    )
    disagreement = Volume(
        compared.disagreement,
        volume.affine,
        volume.source,
        {"description": f"napari-medood 1 {name_a} only, 2 {name_b} only, 3 both"},
    )
    return Comparison(map_a, map_b, difference, disagreement, summary, notes, tuple(results))


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary in a few lines for people (the CLI prints them, the panel shows them)."""
    lines = []
    for which in ("a", "b"):
        model = summary[f"model_{which}"]
        origin = {
            FROM_CALIBRATION: "calibrated",
            FROM_CALLER: "given",
            FROM_DEFAULT: "default",
        }.get(model.get("threshold_from"), "given")
        lines.append(
            f"{which.upper()}: {model.get('name', which.upper())} flags "
            f"{model['flagged_ml']:.1f} ml above {model['threshold']:.3f} ({origin})"
        )
    lines.append(
        f"A only {summary['a_only_ml']:.1f} ml, B only {summary['b_only_ml']:.1f} ml, "
        f"both {summary['both_ml']:.1f} ml"
    )
    pearson = summary.get("pearson")
    correlation = "n/a (a map is constant)" if pearson is None else f"{pearson:.3f}"
    region = summary.get("region", "mask")
    lines.append(
        f"Dice {summary['dice']:.3f}; Pearson r {correlation} "
        f"(in the {region}, {summary['compared_ml']:.1f} ml)"
    )
    return lines


def map_models(names: Sequence[str] | None = None) -> list[str]:
    """The model names (``names``, else every available one) whose detectors give an
    anomaly map, read from their classes and cards without loading any weights; a name
    whose card cannot be read is left out."""
    from napari_medood.detectors import available_models
    from napari_medood.detectors.base import MAP
    from napari_medood.models.checkpoint import read_card, resolve_model
    from napari_medood.registry import FAMILIES, NAMED_DETECTORS, declared_outputs, resolve

    kept = []
    for name in available_models() if names is None else names:
        if name in NAMED_DETECTORS:
            factory = resolve(NAMED_DETECTORS[name].factory)
            owner = getattr(factory, "__self__", factory)  # a classmethod's class
            outputs = tuple(getattr(owner, "outputs", (MAP,)))
        else:
            try:
                family = FAMILIES.get(read_card(resolve_model(name)).get("detector"))
            except (ValueError, OSError, MedoodError):
                continue
            outputs = declared_outputs(family) if family is not None else ()
        if MAP in outputs:
            kept.append(name)
    return kept
