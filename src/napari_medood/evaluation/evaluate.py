"""Score a detector's predictions on a cohort, one case at a time.

Voxel metrics (MOOD pixel AP over all voxels, AUROC, per-volume AUPRC mean, Dice at the best
threshold by Zimmerer bisection and by sweep, Dice at thresholds calibrated on healthy scans
for 1 %, 5 % and 10 % voxel false-positive rates) come from float16-bin histograms, so no
cohort is ever held in memory and no voxel is subsampled. Lesion-level figures (lesions and
findings as connected components: FROC points, lesion-wise F1, false findings per healthy
scan) come from each case's findings at a grid of thresholds (``evaluation.lesions``). Sample metrics (MOOD sample AP,
AUROC, FPR at 95 % TPR, AUPR-In/Out) come with seeded bootstrap intervals. A case that fails
is recorded with its error and the others go on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback, check_cancelled, report
from napari_medood.errors import MedoodError
from napari_medood.evaluation.lesions import GRID, lesion_counts
from napari_medood.evaluation.metrics import (
    CaseCounts,
    VoxelHistogram,
    average_precision,
    best_dice_bisection,
    best_dice_sweep,
    bootstrap_ci,
    ood_metrics,
    threshold_at_fpr,
)
from napari_medood.evaluation.predictions import Prediction
from napari_medood.io.cohort import Case

DEFAULT_FPRS = (0.01, 0.05, 0.10)


@dataclass(frozen=True)
class EvalOptions:
    """How to score.

    Attributes:
        fprs: voxel false-positive rates to calibrate thresholds for on healthy scans.
        sweep: thresholds of the Dice sweep.
        bisection_steps: steps of the Zimmerer search.
        bootstrap: resamples for the sample-level confidence intervals (0: none).
        seed: seed of the bootstrap.
        use_masks: count only voxels inside each case's brain mask when it has one.
        thresholds: fixed voxel thresholds (a segmenter's 0.5, or one model's calibrated
            threshold applied to another) at which Dice on lesions and the volume flagged
            in each healthy scan are reported (``pixel["fixed"]``), and the lesion-level
            figures too (``lesion["at"]``).
        lesions: also count lesions and findings (``evaluation.lesions``).
    """

    fprs: Sequence[float] = DEFAULT_FPRS
    thresholds: Sequence[float] = ()
    sweep: Sequence[float] = tuple(np.round(np.arange(0.0, 1.0, 0.01), 2))
    bisection_steps: int = 10
    bootstrap: int = 1000
    seed: int = 0
    use_masks: bool = True
    lesions: bool = True


@dataclass
class CaseResult:
    """One case's numbers (voxel counts are kept for thresholds chosen after the pass)."""

    name: str
    anomalous: bool | None = None
    lesion_voxels: int | None = None
    counted_voxels: int = 0
    score: float | None = None
    ap: float | None = None
    auroc: float | None = None
    dice: dict[str, float] = field(default_factory=dict)
    fpr: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    voxel_ml: float | None = None
    counts: CaseCounts | None = field(default=None, repr=False)
    lesion_counts: Any = field(default=None, repr=False)
    lesions: int | None = None

    def row(self) -> dict[str, Any]:
        """A flat dict for the CSV table."""
        row = {
            key: value
            for key, value in asdict(self).items()
            if key not in ("counts", "dice", "fpr", "notes", "problems", "info", "lesion_counts")
        }
        row.update({f"dice@{k}": v for k, v in self.dice.items()})
        row.update({f"fpr@{k}": v for k, v in self.fpr.items()})
        row.update({k: v for k, v in self.info.items() if k in ("age", "sex", "site")})
        row["notes"] = "; ".join(self.notes)
        return row


@dataclass
class EvaluationResult:
    """Everything a report shows."""

    cases: list[CaseResult]
    pixel: dict[str, Any]
    sample: dict[str, Any]
    calibration: dict[str, Any]
    settings: dict[str, Any]
    histogram: VoxelHistogram | None = field(default=None, repr=False)
    sweep_curve: np.ndarray | None = field(default=None, repr=False)
    lesion: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "pixel": self.pixel,
            "lesion": self.lesion,
            "sample": self.sample,
            "calibration": self.calibration,
        }


def _read_array(path, voxel_ml: list | None = None) -> np.ndarray:
    """The file's voxels; ``voxel_ml`` (a list) receives a voxel's volume in ml."""
    from napari_medood.detectors.calibration import voxel_ml as volume_of_a_voxel
    from napari_medood.io.readers import read_volume

    volume = read_volume(path)
    if voxel_ml is not None:
        voxel_ml.append(volume_of_a_voxel(volume.affine))
    return volume.data


def _case_arrays(
    case: Case, prediction: Prediction, use_masks: bool, pixel: bool, voxel_ml: list | None = None
):
    """The case's label and mask arrays, and its map read as MOOD reads it (missing or of the
    wrong shape: zeros). The map is None when no voxel metric can be computed."""
    label = _read_array(case.label, voxel_ml) if case.label is not None else None
    mask = _read_array(case.mask, voxel_ml) > 0 if use_masks and case.mask is not None else None
    if not pixel:
        return label, mask, None
    if voxel_ml is not None and not voxel_ml:  # neither file read: the scan's own voxels
        _read_array(case.image, voxel_ml)
    anomaly_map = prediction.anomaly_map
    shape = (
        label.shape
        if label is not None
        else (
            mask.shape if mask is not None else (None if anomaly_map is None else anomaly_map.shape)
        )
    )
    if anomaly_map is not None and shape is not None and anomaly_map.shape != shape:
        prediction.problem(
            f"map of shape {anomaly_map.shape} on a label of shape {shape}: counted as zeros"
        )
        anomaly_map = None
    if anomaly_map is None:
        anomaly_map = None if shape is None else np.zeros(shape, np.float16)
    if mask is not None and anomaly_map is not None and mask.shape != anomaly_map.shape:
        raise MedoodError(
            f"{case.mask}: brain mask of shape {mask.shape} for a map of shape {anomaly_map.shape}"
        )
    return label, mask, anomaly_map


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def score_cases(
    cases: Sequence[Case],
    predict: Callable[[Case], Prediction],
    histogram: VoxelHistogram,
    options: EvalOptions,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
    offset: int = 0,
    total: int | None = None,
    healthy: bool = False,
) -> list[CaseResult]:
    """Score each case; its voxels go into ``histogram`` and its counts into the result.
    ``healthy``: every case is known to be normal (calibration scans)."""
    results = []
    total = total or len(cases)
    pixel = getattr(predict, "has_maps", True)
    # every case read at the same thresholds: the lesion grid and the fixed ones
    grid = sorted({*GRID, *(float(t) for t in options.thresholds)})
    for index, case in enumerate(cases):
        check_cancelled(cancelled)
        result = CaseResult(case.name, info=dict(case.info))
        try:
            prediction = predict(case)
            voxel_ml: list[float] = []
            label, mask, anomaly_map = _case_arrays(
                case, prediction, options.use_masks, pixel, voxel_ml
            )
            result.voxel_ml = voxel_ml[0] if voxel_ml else None
            result.notes.extend(prediction.notes)
            result.problems.extend(prediction.problems)
            result.score = prediction.score
            if label is not None:
                inside = label if mask is None else np.where(mask, label, 0)
                result.lesion_voxels = int(np.count_nonzero(np.rint(inside) >= 1))
            if healthy:
                result.anomalous = False
            elif case.anomalous is not None:
                result.anomalous = case.anomalous
            elif result.lesion_voxels is not None:
                result.anomalous = result.lesion_voxels > 0
            if anomaly_map is not None and (label is not None or result.anomalous is False):
                counts = histogram.add(anomaly_map, label, mask)
                result.counts = counts
                result.counted_voxels = counts.n_pos + counts.n_neg
                if counts.n_pos:
                    result.ap = counts.average_precision()
                    result.auroc = _nan_to_none(counts.auroc())
                if options.lesions:
                    result.lesion_counts = lesion_counts(
                        anomaly_map,
                        label if result.anomalous is not False else None,
                        mask,
                        grid,
                        voxel_ml=result.voxel_ml,
                    )
                    result.lesions = result.lesion_counts.lesions
        except MedoodError as exc:
            result.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad case must not sink the evaluation
            result.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        results.append(result)
        report(progress, offset + index + 1, total, case.name)
    return results


def evaluate(
    cases: Sequence[Case],
    predict: Callable[[Case], Prediction],
    healthy_cases: Sequence[Case] = (),
    healthy_predict: Callable[[Case], Prediction] | None = None,
    options: EvalOptions | None = None,
    participants: dict[str, dict[str, str]] | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> EvaluationResult:
    """Score ``cases``; calibrate thresholds on ``healthy_cases`` (else on the cohort's own
    normal cases, and say so); attach participants' age, sex and site for the bias tables."""
    from napari_medood.evaluation.participants import match_participant

    options = options or EvalOptions()
    total = len(cases) + len(healthy_cases)
    histogram = VoxelHistogram()
    results = score_cases(cases, predict, histogram, options, progress, cancelled, 0, total)
    healthy_histogram = VoxelHistogram()
    healthy_results = score_cases(
        healthy_cases,
        healthy_predict or predict,
        healthy_histogram,
        options,
        progress,
        cancelled,
        len(cases),
        total,
        healthy=True,
    )
    if participants:
        for result in results + healthy_results:
            row = match_participant(result.name, participants)
            if row:
                result.info.update({k: row[k] for k in ("age", "sex", "site") if k in row})

    lesion_cases = [r for r in results if r.counts is not None and r.counts.n_pos > 0]
    normal_cases = [r for r in results if r.counts is not None and r.anomalous is False]
    if healthy_results:
        calibration_cases, source = (
            [r for r in healthy_results if r.counts is not None],
            (f"{len(healthy_results)} healthy scans given for calibration"),
        )
    else:
        calibration_cases = normal_cases
        source = f"the {len(normal_cases)} normal cases of the evaluated set"
    calibration = _calibrate(calibration_cases, options.fprs, source)
    thresholds = dict(calibration.get("thresholds", {}))
    fixed = {f"at{float(t):g}": float(t) for t in options.thresholds}
    thresholds.update(fixed)

    pixel: dict[str, Any] = {
        "cases_counted": sum(r.counts is not None for r in results),
        "cases_with_lesions": len(lesion_cases),
    }
    sweep_curve = None
    if histogram.n_pos + histogram.n_neg:
        pixel["ap"] = _nan_to_none(histogram.average_precision())
        pixel["auroc"] = _nan_to_none(histogram.auroc())
        per_volume = [r.ap for r in lesion_cases if r.ap is not None]
        pixel["auprc_per_volume_mean"] = float(np.mean(per_volume)) if per_volume else None
        pixel["abnormal_voxels"], pixel["normal_voxels"] = histogram.n_pos, histogram.n_neg
    if lesion_cases:
        lesion_hist = VoxelHistogram()
        for r in lesion_cases:
            lesion_hist.pos[r.counts.bins] += r.counts.pos
            lesion_hist.neg[r.counts.bins] += r.counts.neg
        t_bis, d_bis = best_dice_bisection(lesion_hist, options.bisection_steps)
        t_sweep, d_sweep, sweep_curve = best_dice_sweep(
            [r.counts for r in lesion_cases], options.sweep
        )
        thresholds = {"bisection": t_bis, "sweep": t_sweep, **thresholds}
        pixel["dice"] = {
            "bisection": {"threshold": t_bis, "dice_pooled": d_bis},
            "sweep": {"threshold": t_sweep, "dice_mean": d_sweep},
        }
        for name, value in {**calibration.get("thresholds", {}), **fixed}.items():
            pixel["dice"][name] = {"threshold": value}
    for r in results + healthy_results:
        if r.counts is None:
            continue
        names = list(thresholds)
        values = np.array([thresholds[n] for n in names], dtype=np.float64)
        if r.counts.n_pos:
            r.dice = {n: float(d) for n, d in zip(names, r.counts.dice_at(values), strict=True)}
        if r.anomalous is False:
            r.fpr = {
                n: float(f)
                for n, f in zip(names, r.counts.fpr_at(values), strict=True)
                if n.startswith("fpr") or n in fixed
            }
    if lesion_cases:
        for name in thresholds:
            scores = [r.dice[name] for r in lesion_cases if name in r.dice]
            pixel["dice"][name]["dice_mean"] = float(np.mean(scores))
            if name.startswith("fpr") or name in fixed:
                pixel["dice"][name]["dice_std"] = float(np.std(scores))
    if calibration.get("thresholds"):
        fpr_rows = [r for r in normal_cases + healthy_results if r.fpr]
        calibration["healthy_fpr_mean_per_scan"] = (
            {n: float(np.mean([r.fpr[n] for r in fpr_rows])) for n in calibration["thresholds"]}
            if fpr_rows
            else {}
        )

    if fixed:
        healthy_rows = [r for r in normal_cases + healthy_results if r.fpr]
        pixel["fixed"] = {
            name: _at_fixed_threshold(name, value, lesion_cases, healthy_rows)
            for name, value in fixed.items()
        }
    lesion: dict[str, Any] = {}
    read = [r for r in results + healthy_results if r.lesion_counts is not None]
    if read:
        from napari_medood.evaluation.lesions import cohort_lesion_figures

        lesion = cohort_lesion_figures(
            [r.lesion_counts for r in read], [r.anomalous is False for r in read], thresholds
        )
    sample = _sample_metrics(results, options)
    settings = {
        "cases": len(cases),
        "healthy_cases": len(healthy_cases),
        "voxels": "inside each case's brain mask where given, else all voxels"
        if options.use_masks
        else "all voxels",
        "subsampling": "none: every voxel is counted (float16 histograms, as MOOD reads maps)",
        "failed": [
            {"case": r.name, "error": r.error} for r in results + healthy_results if r.error
        ],
        "prediction_problems": [
            {"case": r.name, "problems": list(r.problems)}
            for r in results + healthy_results
            if r.problems and not r.error
        ],
        "sweep": [float(options.sweep[0]), float(options.sweep[-1]), len(options.sweep)],
        "bootstrap": {"resamples": options.bootstrap, "seed": options.seed},
    }
    record = getattr(predict, "record", None)
    if callable(record):  # a detector run here: which one, and how it ran
        settings["predictions"] = record()
    return EvaluationResult(
        results + healthy_results,
        pixel,
        sample,
        calibration,
        settings,
        histogram,
        sweep_curve,
        lesion,
    )


def _at_fixed_threshold(
    name: str, value: float, lesion_cases: Sequence[CaseResult], healthy: Sequence[CaseResult]
) -> dict[str, Any]:
    """Dice on the lesion cases and the volume each healthy scan has above ``value``."""
    flagged = {
        r.name: round(r.fpr[name] * r.counted_voxels * r.voxel_ml, 3)
        for r in healthy
        if r.voxel_ml is not None
    }
    dice = [r.dice[name] for r in lesion_cases if name in r.dice]
    return {
        "threshold": value,
        "dice_mean": float(np.mean(dice)) if dice else None,
        "healthy_flagged_ml": flagged,
        "healthy_flagged_ml_mean": float(np.mean(list(flagged.values()))) if flagged else None,
        "healthy_fpr_mean": float(np.mean([r.fpr[name] for r in healthy])) if healthy else None,
    }


def _calibrate(cases: Sequence[CaseResult], fprs: Sequence[float], source: str) -> dict:
    healthy = VoxelHistogram()
    for r in cases:
        healthy.neg[r.counts.bins] += r.counts.neg + r.counts.pos
    if healthy.n_neg == 0:
        return {"source": source, "note": "no healthy voxels: no calibrated thresholds"}
    thresholds = {f"fpr{round(100 * f):g}%": threshold_at_fpr(healthy, f) for f in fprs}
    pooled = {name: healthy.counts_at(t)[1] / healthy.n_neg for name, t in thresholds.items()}
    return {
        "source": source,
        "healthy_voxels": healthy.n_neg,
        "thresholds": thresholds,
        "healthy_fpr_pooled": pooled,
    }


def _sample_metrics(results: Sequence[CaseResult], options: EvalOptions) -> dict[str, Any]:
    rows = [r for r in results if r.score is not None and r.anomalous is not None]
    if not rows:
        return {"note": "no sample scores with known sample labels"}
    scores = np.array([r.score for r in rows], dtype=np.float64)
    labels = np.array([bool(r.anomalous) for r in rows])
    # MOOD's sample AP reads scores clipped to [0, 1]
    out: dict[str, Any] = {
        "cases": len(rows),
        "abnormal": int(labels.sum()),
        "ap_mood": _nan_to_none(average_precision(np.clip(scores, 0, 1), labels)),
    }
    metrics = ood_metrics(scores, labels)
    out.update({k: _nan_to_none(v) for k, v in metrics.items()})
    if options.bootstrap and 0 < labels.sum() < len(labels):
        from napari_medood.evaluation.metrics import auroc, fpr_at_tpr

        functions = {
            "auroc": auroc,
            "fpr_at_95_tpr": fpr_at_tpr,
            "aupr_in": lambda s, y: average_precision(-s, ~y),
            "aupr_out": average_precision,
        }
        out["ci95"] = {
            name: list(bootstrap_ci(fn, scores, labels, options.bootstrap, 0.95, options.seed))
            for name, fn in functions.items()
        }
    return out
