"""``medood-eval``: score maps and sample scores against ground truth, or run a model and score
it in one go."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from napari_medood.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    add_device_option,
    add_mask_option,
    add_model_option,
    add_precision_option,
    add_tta_option,
    add_variant_option,
    make_parser,
    run_command,
    say,
)
from napari_medood.errors import MedoodError

PROG = "medood-eval"
EPILOG = """\
sets (LABELS): a MOOD-layout folder (pixel/data, pixel/label, sample/label, as medood-synth
writes), a CSV with a Path column (and Label, Mask, Anomalous columns), a BIDS dataset
(UAD-IMAG labels: <prefix>_seg-anomaly_mask.nii.gz beside <prefix>_T1w.nii.gz), or, with a
predictions folder, a plain folder of label maps named like the maps (<case>.nii.gz) and/or
sample labels (<case>.nii.gz.txt), as MOOD's own evaluator takes them.

predictions: <case file name> maps and <case file name>.txt scores (MOOD); a missing or
unreadable file counts as zeros, as in MOOD's evaluator, and is reported by name.

writes REPORT/metrics.json, REPORT/cases.csv, REPORT/report.md and PNG plots.

examples:
  medood-eval predictions/ valset/ -o report/
  medood-eval predictions/ labels/ -o report/
  medood-eval --model intensity valset/ -o report/
  medood-eval --model intensity --healthy ixi_t1/ --healthy-mask ixi_masks/ ms.csv -o r/
  medood-eval --model my_checkpoint/ --calibrate 0.01 --healthy ixi_t1/ --healthy-mask m/
"""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        PROG,
        "Score anomaly maps and sample scores against ground truth: MOOD pixel and sample AP, "
        "AUROC, AUPRC, Dice at the best threshold and at thresholds calibrated on healthy "
        "scans, OOD metrics with bootstrap intervals, bias tables; or run a model and score "
        "it in one go.",
        EPILOG,
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="PREDICTIONS LABELS",
        help="a predictions folder and a labelled set (with --model: the labelled set only)",
    )
    parser.add_argument("-o", "--out", metavar="REPORT", help="folder for the report")
    add_model_option(
        parser,
        "; it runs on the set's scans and its maps and scores are kept in REPORT/predictions",
    )
    add_device_option(parser)
    add_precision_option(parser)
    add_variant_option(parser)
    add_tta_option(parser)
    add_mask_option(parser, what="the set")
    parser.add_argument(
        "--sample-score",
        metavar="NAME",
        default=None,
        help="with --model: evaluate this one of its sample scores instead of its own "
        "(topk_mean, mean_in_mask, fpi_slices; uncalibrated: a calibrated model's own score "
        "before calibration)",
    )
    parser.add_argument(
        "--healthy",
        metavar="SCANS",
        help="healthy scans to calibrate thresholds on (default: the set's normal cases)",
    )
    add_mask_option(parser, "--healthy-mask", what="the --healthy scans")
    parser.add_argument(
        "--healthy-predictions",
        metavar="DIR",
        help="maps of the healthy scans (when not running a model)",
    )
    parser.add_argument(
        "--participants",
        metavar="TABLE",
        action="append",
        default=[],
        help="participants CSV/TSV with age, sex, site (repeatable)",
    )
    parser.add_argument(
        "--fprs",
        default="0.01,0.05,0.1",
        help="voxel false-positive rates for calibrated thresholds",
    )
    parser.add_argument(
        "--thresholds",
        metavar="T[,T...]",
        default="",
        help="fixed voxel thresholds (e.g. 0.5 for a segmenter, or another model's calibrated "
        "threshold) at which to report Dice on lesions and the ml flagged in each healthy scan",
    )
    parser.add_argument(
        "--calibrate",
        metavar="FPR",
        type=float,
        default=None,
        help="store in the --model checkpoint folder's card the voxel threshold that flags "
        "this share of the --healthy scans' brain voxels (e.g. 0.01) and their volumes above "
        "it; the model's maps are then read against it (Detect panel, flagged ml). No "
        "labelled set needed",
    )
    parser.add_argument(
        "--all-voxels",
        action="store_true",
        help="count every voxel even where a brain mask is given (MOOD)",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for sample-level intervals"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--title", default="napari-medood evaluation", help="report title")
    return parser


def _eval(args: argparse.Namespace) -> int:
    from napari_medood.batch import output_folder

    if args.bootstrap < 0:
        raise MedoodError(
            f"--bootstrap takes a number of resamples, 0 or more; got {args.bootstrap}"
        )
    if args.variant and not args.model:
        raise MedoodError("--variant chooses the map of a detector to run: give --model too")
    if args.tta and not args.model:
        raise MedoodError("--tta is how a detector runs: give --model too")
    if args.sample_score and not args.model:
        raise MedoodError("--sample-score chooses a score of a detector to run: give --model too")
    if args.sample_score and args.calibrate is not None:
        raise MedoodError("--calibrate scores no labelled set: --sample-score has no use there")
    if args.calibrate is not None:
        return _calibrate(args)
    fixed = _fixed_thresholds(args.thresholds)
    fprs = _fprs(args.fprs)
    expected = 1 if args.model else 2
    if len(args.inputs) != expected or not args.out:
        what = "a labelled set" if args.model else "a predictions folder and a labelled set"
        raise MedoodError(f"give {what} and -o REPORT (see --help)")
    with output_folder(args.out) as out:  # a run that fails leaves no empty folder
        return _evaluate(args, out, fixed, fprs)


def _evaluate(args: argparse.Namespace, out, fixed: tuple[float, ...], fprs) -> int:
    from tqdm import tqdm

    from napari_medood.evaluation import DetectorPredictions, EvalOptions, FolderPredictions
    from napari_medood.evaluation import evaluate as run_evaluation
    from napari_medood.evaluation.bias import bias_tables
    from napari_medood.evaluation.participants import read_participants
    from napari_medood.evaluation.report import write_report
    from napari_medood.io.cohort import discover_cases, discover_labels

    if args.model:
        detector = _detector(args)
        _check_sample_score(detector, args.sample_score)
        predict = DetectorPredictions(detector, out / "predictions", args.sample_score)
        labels = args.inputs[0]
        cases = discover_cases(labels, masks=args.mask)
    else:
        predict = FolderPredictions(args.inputs[0])
        labels = args.inputs[1]
        cases = discover_labels(labels, masks=args.mask)
    healthy, healthy_predict = [], None
    if args.healthy:
        healthy = discover_cases(args.healthy, masks=args.healthy_mask)
        if args.model:
            healthy_predict = DetectorPredictions(
                detector, out / "predictions_healthy", args.sample_score
            )
        elif args.healthy_predictions:
            healthy_predict = FolderPredictions(args.healthy_predictions)
        else:
            raise MedoodError("--healthy needs --healthy-predictions (or --model)")
    options = EvalOptions(
        fprs=fprs,
        bootstrap=args.bootstrap,
        seed=args.seed,
        use_masks=not args.all_voxels,
        thresholds=fixed,
    )
    participants: dict = {}
    for table in args.participants:
        participants.update(read_participants(table))
    with tqdm(
        total=len(cases) + len(healthy), desc="evaluating", unit="case", file=sys.stderr
    ) as bar:

        def progress(done: int, total: int, message: str) -> None:
            bar.n = done
            bar.set_postfix_str(message[-30:], refresh=False)
            bar.refresh()

        result = run_evaluation(
            cases, predict, healthy, healthy_predict, options, participants, progress
        )
    dice_key = (
        "fpr5%"
        if "fpr5%" in result.pixel.get("dice", {})
        else ("sweep" if result.pixel.get("dice") else None)
    )
    fpr_key = next(iter(result.calibration.get("thresholds", {})), None)
    bias = bias_tables(result.cases, dice_key, "fpr5%" if fpr_key else None)
    written = write_report(result, out, args.title, bias, np.asarray(options.sweep))
    pixel, sample = result.pixel, result.sample
    parts = []
    if pixel.get("ap") is not None:
        parts.append(f"pixel AP {pixel['ap']:.3f}")
    if pixel.get("dice"):
        parts.append(f"best Dice {pixel['dice']['sweep']['dice_mean']:.3f}")
    froc = result.lesion.get("froc", {}).get("1")
    if froc is not None:
        parts.append(
            f"lesion sensitivity {froc['sensitivity']:.2f} at 1 false finding per scan "
            f"({result.lesion['lesions']} lesions)"
        )
    if sample.get("auroc") is not None:
        parts.append(f"sample AUROC {sample['auroc']:.3f}")
    failed = result.settings["failed"]
    problems = result.settings["prediction_problems"]
    scored = ", ".join(parts) or (
        "nothing scored: no case had both a prediction and a label (LABELS must be a MOOD "
        "layout, a CSV with Label/Anomalous columns, a BIDS dataset with UAD-IMAG labels, or "
        "a folder of label maps named like the predictions; see --help)"
    )
    unusable = f", {len(problems)} with unusable predictions" if problems else ""
    say(PROG, f"{scored}; {len(failed)} failed{unusable} -> {written['markdown']}")
    for failure in failed:
        say(PROG, f"failed: {failure['case']}: {failure['error']}")
    if problems:
        say(
            PROG,
            f"{len(problems)} of {len(result.cases)} cases were scored with predictions counted "
            "as MOOD's evaluator counts them (missing or unreadable maps as zeros, unreadable "
            "scores as 0):",
        )
        for entry in problems:
            say(PROG, f"  {entry['case']}: {'; '.join(entry['problems'])}")
    if not parts:
        return EXIT_ERROR  # nothing scored is no result
    if problems and len(problems) == len(result.cases):
        say(PROG, f"error: no case had a usable prediction in {args.inputs[0]}")
        return EXIT_ERROR
    return EXIT_ERROR if failed else EXIT_OK


def _check_sample_score(detector, name: str | None) -> None:
    """Refuse before any case runs a --sample-score the detector cannot give: one it does
    not declare a score at all, or ``uncalibrated`` for a model without a calibrated score
    (other names are checked against each result's scores)."""
    from napari_medood.detectors.calibration import calibrated_score_reference

    if name is None:
        return
    if "score" not in getattr(detector, "outputs", ()):
        raise MedoodError(f"{detector.name} gives no sample score; --sample-score has none to pick")
    if name == "uncalibrated" and calibrated_score_reference(detector.card) is None:
        raise MedoodError(
            f"{detector.name} has no calibrated sample score, so 'uncalibrated' is its own "
            "score: leave --sample-score out (or calibrate it with --calibrate)"
        )


def _detector(args: argparse.Namespace, gate: bool = True):
    """The --model detector as the options ask, maps only (no by-product maps)."""
    from napari_medood.detectors import DetectorOptions, get_detector

    options = DetectorOptions(
        args.device,
        precision=args.precision,
        variant=args.variant,
        extra_maps=False,
        gate=gate,
        tta=args.tta,
    )
    return get_detector(args.model, options)


def _calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from napari_medood.evaluation.calibration import calibrate_on_healthy, write_calibration
    from napari_medood.io.cohort import discover_cases
    from napari_medood.models.checkpoint import Checkpoint

    if not args.model or not args.healthy:
        raise MedoodError("--calibrate needs --model (a checkpoint folder) and --healthy SCANS")
    if "," in args.model or not Path(args.model).is_dir():
        raise MedoodError(
            f"--calibrate writes into the card of one checkpoint folder, and {args.model!r} is "
            "not one (copy a shipped model's folder to calibrate it)"
        )
    checkpoint = Checkpoint.open(args.model)
    detector = _detector(args, gate=False)  # the gate's verdicts are no part of a threshold
    cases = discover_cases(args.healthy, masks=args.healthy_mask)
    with tqdm(total=len(cases), desc="calibrating", unit="scan", file=sys.stderr) as bar:

        def progress(done: int, total: int, message: str) -> None:
            bar.n = done
            bar.set_postfix_str(message[-30:], refresh=False)
            bar.refresh()

        entry = calibrate_on_healthy(detector, cases, args.calibrate, progress)
    command = "medood-eval --model <this folder> --calibrate {} --healthy {}{}".format(
        args.calibrate,
        args.healthy,
        f" --healthy-mask {args.healthy_mask}" if args.healthy_mask else "",
    )
    card = write_calibration(checkpoint, entry, command)
    flagged = ", ".join(f"{v:g}" for v in entry["healthy_flagged_ml"])
    say(
        PROG,
        f"voxel threshold {entry['voxel_threshold']:.4f} flags {entry['healthy_fpr_pooled']:.2%} "
        f"of {entry['healthy_voxels']:,} healthy brain voxels ({len(entry['healthy_scans'])} "
        f"scans; flagged ml: {flagged}); {len(entry['failed'])} failed -> {card}",
    )
    for failure in entry["failed"]:
        say(PROG, f"failed: {failure['case']}: {failure['error']}")
    return EXIT_ERROR if entry["failed"] else EXIT_OK


def _fprs(text: str) -> tuple[float, ...]:
    """``--fprs``: false-positive rates in (0, 1), checked before any case runs."""
    try:
        values = tuple(float(f) for f in text.split(",") if f.strip())
    except ValueError:
        values = ()
    if not values or any(not 0 < v < 1 for v in values):
        raise MedoodError(
            f"--fprs takes false-positive rates between 0 and 1, comma-separated (e.g. "
            f"0.01,0.05); got {text!r}"
        )
    return values


def _fixed_thresholds(text: str) -> tuple[float, ...]:
    """``--thresholds``: numbers in [0, 1], checked before any case runs."""
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise MedoodError(f"--thresholds takes numbers in [0, 1], got {text!r}") from None
    if any(not 0 <= v <= 1 for v in values):
        raise MedoodError(f"--thresholds takes numbers in [0, 1], got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-eval``."""
    return run_command(PROG, build_parser(), _eval, argv)
