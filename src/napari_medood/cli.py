"""Command-line faces of napari-medood: ``medood-predict``, ``medood-train``, ``medood-eval``,
``medood-synth``.

Each command only translates arguments into calls of the headless core. An error prints one
line naming the file and the problem and exits with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

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
        f"INPUT is one scan, one DICOM series folder, or a folder of scans ({SUPPORTED_DESCRIPTION}).",
        PREDICT_EPILOG,
    )
    parser.add_argument("input", metavar="INPUT", nargs="?", help="scan file or folder")
    parser.add_argument("output", metavar="OUTPUT", nargs="?", help="folder for the results")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="detector name (see --list-models)")
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
    parser.add_argument("--list-models", action="store_true", help="list the detectors and exit")
    return parser


DEFAULT_MODEL = "intensity"


def _predict(args: argparse.Namespace) -> int:
    from napari_medood.detectors import DETECTORS, get_detector

    if args.list_models:
        for name, (_, description) in DETECTORS.items():
            default = " (default)" if name == DEFAULT_MODEL else ""
            print(f"{name}{default}: {description}")
        return EXIT_OK
    if args.input is None or args.output is None:
        raise MedoodError("give an INPUT scan or folder and an OUTPUT folder (see --help)")

    from tqdm import tqdm

    from napari_medood.io import find_volumes, output_name, read_volume, write_nifti
    from napari_medood.io.atomic import write_text_atomic
    from napari_medood.io.cohort import find_mask
    from napari_medood.preprocessing import load_mask

    detector = get_detector(args.model)
    cases = find_volumes(args.input)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise MedoodError(f"{out_dir}: the output must be a folder, and this is a file")
    mask_arg = Path(args.mask) if args.mask else None
    if mask_arg is not None and mask_arg.is_file() and len(cases) > 1:
        raise MedoodError(
            f"{mask_arg}: one mask file for {len(cases)} scans; pass a folder "
            "with one mask per scan"
        )

    def target_of(case: Path) -> Path:
        name = output_name(case)
        return out_dir / (name + ".txt" if args.task == "sample" else name)

    todo, skipped = [], 0
    for case in cases:
        target = target_of(case)
        if target.resolve() == case.resolve():
            raise MedoodError(
                f"{case}: the output would overwrite this input; choose another OUTPUT folder"
            )
        if target.exists() and not args.overwrite:
            skipped += 1
        else:
            todo.append(case)
    if skipped:
        print(
            f"medood-predict: {skipped} of {len(cases)} cases already have outputs in "
            f"{out_dir}; skipped (use --overwrite to recompute)",
            file=sys.stderr,
        )

    failures: list[tuple[Path, str]] = []
    for case in tqdm(
        todo, desc=f"{detector.name} ({args.task})", unit="scan", disable=not todo, file=sys.stderr
    ):
        try:
            volume = read_volume(case)
            mask = load_mask(find_mask(mask_arg, case), volume.grid) if mask_arg else None
            result = detector.predict(volume, mask)
            target = target_of(case)
            if args.task == "pixel":
                if result.anomaly_map is None:
                    raise MedoodError(
                        f"the {detector.name} detector gives no voxel-wise map; use --task sample"
                    )
                write_nifti(result.anomaly_map, target)
            else:
                if result.score is None:
                    raise MedoodError(f"the {detector.name} detector gives no sample score")
                write_text_atomic(target, f"{result.score:.6f}\n")
        except Exception as exc:  # noqa: BLE001 - one bad case must not sink the batch
            if args.debug:
                traceback.print_exc()
            failures.append((case, _one_line(exc)))
            tqdm.write(f"medood-predict: failed: {_one_line(exc)}", file=sys.stderr)
    done = len(todo) - len(failures)
    print(
        f"medood-predict: {done} written, {skipped} skipped, {len(failures)} failed -> {out_dir}",
        file=sys.stderr,
    )
    return EXIT_ERROR if failures else EXIT_OK


def predict_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-predict``."""
    return _run("medood-predict", build_predict_parser(), _predict, argv)


# --------------------------------------------------------------- commands still to come
def _not_yet(prog: str, what: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        print(
            f"{prog}: nothing to run yet: {what} napari-medood {__version__} has none. "
            "See `medood-predict --help` for what works today.",
            file=sys.stderr,
        )
        return EXIT_ERROR

    return handler


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-train``."""
    parser = _parser(
        "medood-train",
        "Train a detector on normal (healthy) scans, e.g. the self-supervised 3D U-Net.\n"
        "Runs unchanged under torchrun for several GPUs or machines.",
    )
    parser.add_argument("method", nargs="?", metavar="METHOD", help="the detector family to train")
    parser.add_argument("--config", metavar="YAML", help="training configuration")
    return _run(
        "medood-train",
        parser,
        _not_yet("medood-train", "no training method is available yet;"),
        argv,
    )


def eval_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-eval``."""
    parser = _parser(
        "medood-eval",
        "Score anomaly maps or sample scores against ground truth (MOOD pixel/sample AP, "
        "AUROC, AUPRC, Dice) and write a report.",
    )
    parser.add_argument("predictions", nargs="?", metavar="PREDICTIONS", help="predictions folder")
    parser.add_argument("labels", nargs="?", metavar="LABELS", help="labels folder")
    return _run(
        "medood-eval",
        parser,
        _not_yet("medood-eval", "the evaluation harness is not built yet;"),
        argv,
    )


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
