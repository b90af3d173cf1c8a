"""Command-line faces of napari-medood: ``medood-predict``, ``medood-train``, ``medood-eval``,
``medood-synth``.

Each command only translates arguments into calls of the headless core. An error prints one
line naming the file and the problem and exits with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from napari_medood import __version__
from napari_medood.errors import MedoodError

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=_HelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _run(
    prog: str,
    parser: argparse.ArgumentParser,
    handler: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    args = parser.parse_args(argv)  # usage errors: argparse prints them and exits 2
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into a line
        if args.debug:
            traceback.print_exc()
        else:
            print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, MedoodError | ValueError) and text:
        return text
    hint = " (run again with --debug for the traceback)"
    return f"{type(exc).__name__}: {text}{hint}" if text else f"{type(exc).__name__}{hint}"


# ------------------------------------------------------------------------------ predict
PREDICT_EPILOG = """\
at scale: under torchrun each rank takes its share of the cases (one output per case, written
atomically); --part-id/--num-parts does the same for scheduler arrays. Finished cases are
skipped, so an interrupted run resumes; a failing case is reported and the others go on; the
exit status is 2 if any case failed.
  torchrun --nproc_per_node 4 $(which medood-predict) scans/ maps/
  medood-predict --part-id $SLURM_ARRAY_TASK_ID --num-parts 100 cohort.csv maps/

outputs (MOOD conventions):
  --task pixel   OUTPUT/<input name>      anomaly map on the input's grid and affine, in [0, 1]
                                          (non-NIfTI inputs: <name>.nii.gz)
  --task sample  OUTPUT/<input name>.txt  one number: the sample's abnormality score

examples:
  medood-predict scan.nii.gz out/
  medood-predict --model intensity --mask brain_mask.nii.gz scan.nii.gz out/
  medood-predict --task sample --mask masks/ scans/ scores/
"""


def build_predict_parser() -> argparse.ArgumentParser:
    from napari_medood.io.formats import SUPPORTED_DESCRIPTION

    parser = _parser(
        "medood-predict",
        "Detect anomalies in 3D scans and write an anomaly map or a score per scan.\n\n"
        f"INPUT is one scan, one DICOM series folder, a folder of scans ({SUPPORTED_DESCRIPTION}), "
        "a CSV with a Path column, or a BIDS dataset.",
        PREDICT_EPILOG,
    )
    parser.add_argument("input", metavar="INPUT", nargs="?", help="scan file or folder")
    parser.add_argument("output", metavar="OUTPUT", nargs="?", help="folder for the results")
    parser.add_argument(
        "--model",
        default=None,
        help="a shipped model or baseline name (see --list-models), a checkpoint "
        "folder, or several comma-separated checkpoints (an ensemble); "
        "default: brain-t1-unet",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda", "mps"),
        help="where checkpoint models run (auto: cuda, else mps, else cpu; a "
        "CUDA out-of-memory error falls back to the CPU)",
    )
    parser.add_argument(
        "--overlap",
        type=float,
        default=None,
        help="sliding-window overlap (default: the model card's, 0.5)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="windows per forward pass (default: 1 on the CPU, 8 on a GPU)",
    )
    parser.add_argument(
        "--task",
        choices=("pixel", "sample"),
        default="pixel",
        help="what to write: a voxel-wise map or a sample score",
    )
    parser.add_argument(
        "--mask",
        metavar="PATH",
        help="brain/foreground mask: a file for one scan, or a folder with one mask "
        "per scan named like it (same name, or the scan's name + '_...'); "
        "default: an Otsu threshold of the scan",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute cases whose output already exists (default: skip them)",
    )
    parser.add_argument(
        "--part-id",
        type=int,
        metavar="K",
        help="with --num-parts: do only part K (0-based) of the cases, e.g. $SLURM_ARRAY_TASK_ID",
    )
    parser.add_argument(
        "--num-parts",
        type=int,
        metavar="N",
        help="split the cases into N parts (cases K, K+N, K+2N, ...)",
    )
    parser.add_argument("--verbose", action="store_true", help="print each case written")
    parser.add_argument("--list-models", action="store_true", help="list the detectors and exit")
    return parser


def _predict(args: argparse.Namespace) -> int:
    from napari_medood.detectors import available_models, default_model, get_detector

    if args.list_models:
        default = default_model()
        for name, description in available_models().items():
            print(f"{name}{' (default)' if name == default else ''}: {description}")
        return EXIT_OK
    if args.input is None or args.output is None:
        raise MedoodError("give an INPUT scan or folder and an OUTPUT folder (see --help)")

    from tqdm import tqdm

    from napari_medood.distributed import finish, gather, shard_from
    from napari_medood.inference.batch import plan, predict_cases, remove_partial_writes
    from napari_medood.io.cohort import discover_cases

    detector = get_detector(
        args.model or default_model(), args.device, args.overlap, args.batch_size
    )
    cases = discover_cases(args.input)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise MedoodError(f"{out_dir}: the output must be a folder, and this is a file")
    mask_arg = Path(args.mask) if args.mask else None
    if mask_arg is not None and mask_arg.is_file() and len(cases) > 1:
        raise MedoodError(
            f"{mask_arg}: one mask file for {len(cases)} scans; pass a folder "
            "with one mask per scan"
        )
    shard = shard_from(args.part_id, args.num_parts)
    prefix = f"medood-predict[{shard.label}]" if shard.world > 1 else "medood-predict"
    try:
        # shard the full, sorted case list: the same case always goes to the same part,
        # whatever was finished before
        mine, mine_done = plan(shard.take(cases), out_dir, args.task, args.overwrite)
        if mine_done:
            print(
                f"{prefix}: {len(mine_done)} of {len(mine) + len(mine_done)} cases already "
                f"have outputs in {out_dir}; skipped (use --overwrite to recompute)",
                file=sys.stderr,
            )
        remove_partial_writes(out_dir, mine, args.task)
        bar = tqdm(
            total=len(mine),
            desc=f"{detector.name} ({args.task}) {shard.label}".strip(),
            unit="scan",
            disable=not mine,
            file=sys.stderr,
        )

        def on_case(case, error) -> None:
            bar.update()
            if error is not None:
                tqdm.write(f"{prefix}: failed: {case.name}: {error}", file=sys.stderr)
            elif args.verbose:
                tqdm.write(f"{prefix}: wrote {case.name}", file=sys.stderr)

        summary = predict_cases(mine, detector, out_dir, args.task, mask_arg, on_case=on_case)
        bar.close()
        everyone = gather((len(summary.written), len(mine_done), summary.failed), shard)
    finally:
        finish(shard)
    written = sum(w for w, _, _ in everyone)
    skipped = sum(s for _, s, _ in everyone)
    failed = [f for _, _, fs in everyone for f in fs]
    if shard.rank == 0 or not shard.process_group:
        scope = "" if shard.process_group or shard.world == 1 else f" ({shard.label})"
        print(
            f"medood-predict: {written} written, {skipped} skipped, {len(failed)} failed"
            f"{scope} -> {out_dir}",
            file=sys.stderr,
        )
    return EXIT_ERROR if failed else EXIT_OK


def predict_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-predict``."""
    return _run("medood-predict", build_predict_parser(), _predict, argv)


# ---------------------------------------------------------------------------------- train
TRAIN_EPILOG = """\
the configuration is YAML (see configs/brain-t1-unet.yaml); --set overrides any key:
  medood-train unet --config configs/brain-t1-unet.yaml --set steps=200 --set device=cpu

OUT/best holds the checkpoint with the best validation pixel AP (model.safetensors + card.json,
usable with medood-predict --model OUT/best); OUT/last and OUT/state.pt let an interrupted run
resume: run the same command again. Logs: OUT/train_log.csv, OUT/val_log.csv.

several GPUs or machines (DDP), the same command under torchrun:
  torchrun --nproc_per_node 4 $(which medood-train) unet --config cfg.yaml
"""


def _train(args: argparse.Namespace) -> int:
    if args.method is None:
        raise MedoodError("give the method to train: unet (see --help)")
    from tqdm import tqdm

    from napari_medood.training.config import load_config
    from napari_medood.training.unet import train_unet

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"out={args.out}")
    config = load_config(args.config, overrides)
    rank = int(os.environ.get("RANK", "0"))
    bar = tqdm(
        total=config.steps,
        desc=f"training {config.name}",
        unit="step",
        file=sys.stderr,
        disable=rank != 0,
    )

    def progress(done: int, total: int, message: str) -> None:
        bar.n = done
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    try:
        result = train_unet(config, progress)
    except KeyboardInterrupt:
        bar.close()
        print(
            f"medood-train: interrupted; run the same command to resume from {config.out}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    bar.close()
    if rank == 0:
        best = (
            f"best validation pixel AP {result.best_ap:.4f}"
            if result.best_ap is not None
            else "no validation set"
        )
        print(
            f"medood-train: {result.last_step} steps in {result.seconds:.0f} s, {best}; "
            f"checkpoint: {result.best}",
            file=sys.stderr,
        )
    return EXIT_OK


def build_train_parser() -> argparse.ArgumentParser:
    parser = _parser(
        "medood-train",
        "Train a detector on normal (healthy) scans. unet: the self-supervised 3D U-Net of the "
        "MOOD 2022 winner, on synthetic anomalies (foreign patches in random and real-lesion "
        "shapes, FPI-style outliers), with validation AP on a labelled synthetic set.",
        TRAIN_EPILOG,
    )
    parser.add_argument(
        "method", nargs="?", choices=("unet",), metavar="METHOD", help="what to train: unet"
    )
    parser.add_argument("--config", metavar="YAML", help="training configuration")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a configuration key (repeatable)",
    )
    parser.add_argument("--out", metavar="DIR", help="run folder (overrides the config's out)")
    return parser


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-train``."""
    return _run("medood-train", build_train_parser(), _train, argv)


EVAL_EPILOG = """\
sets (LABELS): a MOOD-layout folder (pixel/data, pixel/label, sample/label, as medood-synth
writes), a CSV with a Path column (and Label, Mask, Anomalous columns), or a BIDS dataset
(UAD-IMAG labels: <prefix>_seg-anomaly_mask.nii.gz beside <prefix>_T1w.nii.gz).

predictions: <case file name> maps and <case file name>.txt scores (MOOD); a missing file
counts as zeros, as in MOOD's evaluator.

writes REPORT/metrics.json, REPORT/cases.csv, REPORT/report.md and PNG plots.

examples:
  medood-eval predictions/ valset/ -o report/
  medood-eval --detector intensity valset/ -o report/
  medood-eval --detector intensity --healthy ixi_t1/ --healthy-masks ixi_masks/ ms.csv -o r/
"""


def build_eval_parser() -> argparse.ArgumentParser:
    parser = _parser(
        "medood-eval",
        "Score anomaly maps and sample scores against ground truth: MOOD pixel and sample AP, "
        "AUROC, AUPRC, Dice at the best threshold and at thresholds calibrated on healthy "
        "scans, OOD metrics with bootstrap intervals, bias tables; or run a detector and "
        "score it in one go.",
        EVAL_EPILOG,
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="PREDICTIONS LABELS",
        help="a predictions folder and a labelled set (with --detector: the labelled set only)",
    )
    parser.add_argument("-o", "--out", metavar="REPORT", help="folder for the report")
    parser.add_argument(
        "--detector",
        metavar="NAME",
        help="run this detector (a name from medood-predict --list-models, or checkpoint "
        "folders) on the set's scans (maps and scores are kept in REPORT/predictions)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda", "mps"),
        help="where checkpoint models run",
    )
    parser.add_argument(
        "--masks",
        metavar="PATH",
        help="brain masks for the set (file or folder named like the scans)",
    )
    parser.add_argument(
        "--healthy",
        metavar="SCANS",
        help="healthy scans to calibrate thresholds on (default: the set's normal cases)",
    )
    parser.add_argument("--healthy-masks", metavar="PATH", help="brain masks of --healthy")
    parser.add_argument(
        "--healthy-predictions",
        metavar="DIR",
        help="maps of the healthy scans (when not running a detector)",
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
    from tqdm import tqdm

    from napari_medood.detectors import get_detector
    from napari_medood.evaluation import DetectorPredictions, EvalOptions, FolderPredictions
    from napari_medood.evaluation import evaluate as run_evaluation
    from napari_medood.evaluation.bias import bias_tables
    from napari_medood.evaluation.participants import read_participants
    from napari_medood.evaluation.report import write_report
    from napari_medood.io.cohort import discover_cases

    expected = 1 if args.detector else 2
    if len(args.inputs) != expected or not args.out:
        what = "a labelled set" if args.detector else "a predictions folder and a labelled set"
        raise MedoodError(f"give {what} and -o REPORT (see --help)")
    out = Path(args.out)
    if args.detector:
        detector = get_detector(args.detector, args.device)
        predict = DetectorPredictions(detector, out / "predictions")
        labels = args.inputs[0]
    else:
        predict = FolderPredictions(args.inputs[0])
        labels = args.inputs[1]
    cases = discover_cases(labels, masks=args.masks)
    healthy, healthy_predict = [], None
    if args.healthy:
        healthy = discover_cases(args.healthy, masks=args.healthy_masks)
        if args.detector:
            healthy_predict = DetectorPredictions(detector, out / "predictions_healthy")
        elif args.healthy_predictions:
            healthy_predict = FolderPredictions(args.healthy_predictions)
        else:
            raise MedoodError("--healthy needs --healthy-predictions (or --detector)")
    fprs = tuple(float(f) for f in args.fprs.split(",") if f.strip())
    options = EvalOptions(
        fprs=fprs, bootstrap=args.bootstrap, seed=args.seed, use_masks=not args.all_voxels
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
    if sample.get("auroc") is not None:
        parts.append(f"sample AUROC {sample['auroc']:.3f}")
    failed = result.settings["failed"]
    print(
        f"medood-eval: {', '.join(parts) or 'nothing scored'}; {len(failed)} failed -> "
        f"{written['markdown']}",
        file=sys.stderr,
    )
    for failure in failed:
        print(f"medood-eval: failed: {failure['case']}: {failure['error']}", file=sys.stderr)
    return EXIT_ERROR if failed else EXIT_OK


def eval_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-eval``."""
    return _run("medood-eval", build_eval_parser(), _eval, argv)


SYNTH_EPILOG = """\
layout written (MOOD):
  OUTPUT/pixel/data/<case>.nii.gz        scan with or without an outlier, on the source grid
  OUTPUT/pixel/label/<case>.nii.gz       binary label map
  OUTPUT/sample/data/<case>.nii.gz       the same scan
  OUTPUT/sample/label/<case>.nii.gz.txt  1 (outlier) or 0 (normal)
  OUTPUT/manifest.json                   kind, parameters and seed of every case

Cases are named <scan>_<kind> and <scan>_normal. The same --seed gives the same set; an
interrupted run resumes where it stopped.

examples:
  medood-synth --masks brain_masks/ healthy_t1/ valset/
  medood-synth --kinds shift,reflection --repeats 3 --normal 2 --seed 7 cohort.csv valset/
"""


def build_synth_parser() -> argparse.ArgumentParser:
    from napari_medood.synth.validation import OUTLIER_KINDS

    parser = _parser(
        "medood-synth",
        "Build a labelled validation set of synthetic outliers (FPI/MOOD style: uniform and "
        "local noise, deformation, shift, reflection) from normal scans.\n\n"
        "INPUT is a scan, a folder of scans, a CSV file with a Path column (and optionally "
        "a Mask column), or a BIDS dataset.",
        SYNTH_EPILOG,
    )
    parser.add_argument("input", nargs="?", metavar="INPUT", help="normal scans")
    parser.add_argument("output", nargs="?", metavar="OUTPUT", help="folder for the set")
    parser.add_argument(
        "--masks",
        metavar="PATH",
        help="brain/foreground masks: a file (one scan) or a folder of masks "
        "named like the scans; outliers are centred and cut inside them "
        "(default: CSV/BIDS masks, else an Otsu head mask)",
    )
    parser.add_argument(
        "--kinds", default=",".join(OUTLIER_KINDS), help="comma-separated outlier kinds"
    )
    parser.add_argument("--repeats", type=int, default=1, help="outliers of each kind per scan")
    parser.add_argument("--normal", type=int, default=1, help="unchanged copies per scan")
    parser.add_argument(
        "--edges",
        choices=("hard", "smooth", "mixed"),
        default="mixed",
        help="outlier edges; mixed draws one per case",
    )
    parser.add_argument(
        "--edge-width", type=float, default=2.0, help="width (voxels) of smooth edges"
    )
    parser.add_argument("--bids-suffix", default="T1w", help="BIDS suffix of the images")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def _synth(args: argparse.Namespace) -> int:
    if args.input is None or args.output is None:
        raise MedoodError("give an INPUT (scans, CSV or BIDS) and an OUTPUT folder (see --help)")
    from tqdm import tqdm

    from napari_medood.io.cohort import discover_cases
    from napari_medood.synth.dataset import ValidationSetConfig, build_validation_set

    config = ValidationSetConfig(
        kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()),
        repeats=args.repeats,
        normal=args.normal,
        edges=args.edges,
        edge_width=args.edge_width,
        seed=args.seed,
    )
    cases = discover_cases(args.input, masks=args.masks, bids_suffix=args.bids_suffix)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise MedoodError(f"{out}: the output must be a folder, and this is a file")
    with tqdm(total=1, desc="synthesising", unit="case", file=sys.stderr) as bar:

        def progress(done: int, total: int, message: str) -> None:
            bar.total = total
            bar.n = done
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        summary = build_validation_set(cases, out, config, progress=progress)
    for name, problem in summary.failed:
        print(f"medood-synth: failed: {name}: {problem}", file=sys.stderr)
    print(
        f"medood-synth: {len(summary.written)} cases written, {len(summary.kept)} kept, "
        f"{len(summary.failed)} scans failed -> {out} (manifest: {summary.manifest})",
        file=sys.stderr,
    )
    return EXIT_ERROR if summary.failed else EXIT_OK


def synth_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-synth``."""
    return _run("medood-synth", build_synth_parser(), _synth, argv)
