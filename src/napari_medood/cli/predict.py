"""``medood-predict``: an anomaly map or a sample score per scan, MOOD-style, at any scale."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_medood.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    add_device_option,
    add_gate_option,
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

PROG = "medood-predict"
EPILOG = """\
at scale: under torchrun each rank takes its share of the cases (one output per case, written
atomically); --part-id/--num-parts does the same for scheduler arrays. Finished cases are
skipped (an output that does not load is redone), so an interrupted run resumes; a failing
case is reported and the others go on; the exit status is 2 if any case failed. Two runs
into one OUTPUT folder share it: each case is claimed by one process. A file in OUTPUT that
napari-medood did not write (OUTPUT/.medood keeps the record) is never overwritten.
  torchrun --nproc_per_node 4 $(which medood-predict) scans/ maps/
  medood-predict --part-id $SLURM_ARRAY_TASK_ID --num-parts 100 cohort.csv maps/

outputs (MOOD conventions):
  --task pixel   OUTPUT/<input name>      anomaly map on the input's grid and affine, in [0, 1]
                                          (non-NIfTI inputs: <name>.nii.gz)
  --task sample  OUTPUT/<input name>.txt  one number: the sample's abnormality score
a map's header (NIfTI descrip) says which model wrote it, on which device, at which precision,
with which test-time augmentation (--tta)

examples:
  medood-predict scan.nii.gz out/
  medood-predict --model intensity --mask brain_mask.nii.gz scan.nii.gz out/
  medood-predict --task sample --mask masks/ scans/ scores/
  medood-predict --tta --mask brain_mask.nii.gz scan.nii.gz out/
  medood-predict --findings --mask brain_mask.nii.gz scan.nii.gz out/   # + out/scan.nii.gz.findings.csv
"""


def build_parser() -> argparse.ArgumentParser:
    from napari_medood.io.formats import SUPPORTED_DESCRIPTION

    parser = make_parser(
        PROG,
        "Detect anomalies in 3D scans and write an anomaly map or a score per scan.\n\n"
        f"INPUT is one scan, one DICOM series folder, a folder of scans ({SUPPORTED_DESCRIPTION}), "
        "a CSV with a Path column, or a BIDS dataset.",
        EPILOG,
    )
    parser.add_argument("input", metavar="INPUT", nargs="?", help="scan file or folder")
    parser.add_argument("output", metavar="OUTPUT", nargs="?", help="folder for the results")
    from napari_medood.detectors import PREFERRED_DEFAULT

    add_model_option(parser, f"; default: {PREFERRED_DEFAULT}")
    add_device_option(parser)
    add_precision_option(parser)
    add_variant_option(parser)
    add_gate_option(parser)
    add_tta_option(parser)
    parser.add_argument(
        "--overlap", type=float, default=None, help="sliding-window overlap (default: the card's)"
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
    add_mask_option(parser)
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
        "--num-parts", type=int, metavar="N", help="split the cases into N parts (K, K+N, ...)"
    )
    parser.add_argument(
        "--no-prefetch",
        dest="prefetch",
        action="store_false",
        help="read each case only when its turn comes (by default the next case is read "
        "while the model computes this one)",
    )
    parser.add_argument(
        "--findings",
        action="store_true",
        help="also write OUTPUT/<input name>.findings.csv beside each map: the connected "
        "regions above the threshold (size in ml, peak, mean, where the peak lies in voxels "
        "and mm), largest first",
    )
    parser.add_argument(
        "--findings-threshold",
        type=float,
        metavar="T",
        default=None,
        help="the threshold of --findings (default: the model's calibrated threshold, else 0.5)",
    )
    parser.add_argument("--verbose", action="store_true", help="print each case written")
    parser.add_argument("--list-models", action="store_true", help="list the detectors and exit")
    return parser


def _list_models() -> int:
    from napari_medood.detectors import available_models, default_model

    default = default_model()
    for name, description in available_models().items():
        print(f"{name}{' (default)' if name == default else ''}: {description}")
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    if args.list_models:
        return _list_models()
    if args.input is None or args.output is None:
        raise MedoodError("give an INPUT scan or folder and an OUTPUT folder (see --help)")

    if args.findings and args.task != "pixel":
        raise MedoodError("--findings lists the regions of a map: it goes with --task pixel")
    if args.findings_threshold is not None and not 0 <= args.findings_threshold < 1:
        raise MedoodError(
            f"--findings-threshold takes a map value in [0, 1), got {args.findings_threshold:g}"
        )
    if args.findings_threshold is not None and not args.findings:
        raise MedoodError("--findings-threshold sets the threshold of --findings: give it too")

    from tqdm import tqdm

    from napari_medood.batch import CohortOptions, run_cohort
    from napari_medood.detectors import DetectorOptions, default_model, get_detector

    detector = get_detector(
        args.model or default_model(),
        DetectorOptions(
            args.device,
            args.overlap,
            args.batch_size,
            args.precision,
            args.variant,
            extra_maps=False,  # only the map and the score are written
            gate=args.gate,
            tta=args.tta,
        ),
    )
    options = CohortOptions(
        task=args.task,
        masks=args.mask,
        overwrite=args.overwrite,
        part_id=args.part_id,
        num_parts=args.num_parts,
        prefetch=args.prefetch,
        findings=args.findings,
        findings_threshold=args.findings_threshold,
    )
    prefix, bar = PROG, None

    def on_start(start) -> None:
        nonlocal prefix, bar
        work, shard = start.plan, start.shard
        prefix = f"{PROG}[{shard.label}]" if shard.world > 1 else PROG
        if work.done:
            say(
                prefix,
                f"{len(work.done)} of {len(work.todo) + len(work.done)} cases already have "
                f"outputs in {start.out_dir}; skipped (use --overwrite to recompute)",
            )
        for case, problem in work.redo:
            say(prefix, f"redoing {case.name}: its output {problem}")
        record = start.record
        if shard.rank == 0 and work.todo and record["precision"]:
            # maps also carry it in their header (NIfTI descrip)
            tta = f" with {record['tta']} test-time augmentation" if record["tta"] else ""
            say(prefix, f"{detector.name} on {record['device']} at {record['precision']}{tta}")
        bar = tqdm(
            total=len(work.todo) + len(work.foreign),
            desc=f"{detector.name} ({args.task}) {shard.label}".strip(),
            unit="scan",
            disable=not (work.todo or work.foreign),
            file=sys.stderr,
        )

    def on_case(case, error, notes) -> None:
        bar.update()
        for note in notes:
            tqdm.write(f"{prefix}: note: {case.name}: {note}", file=sys.stderr)
        if error is not None:
            tqdm.write(f"{prefix}: failed: {case.name}: {error}", file=sys.stderr)
        elif args.verbose:
            tqdm.write(f"{prefix}: wrote {case.name}", file=sys.stderr)

    try:
        result = run_cohort(
            args.input, detector, args.output, options, on_start=on_start, on_case=on_case
        )
    finally:
        if bar is not None:
            bar.close()
    for name, holder in result.busy:
        say(
            prefix,
            f"not done: {name}: {holder} is computing it into the same OUTPUT folder; run "
            "again once it has finished (if that process is gone, delete its claim in "
            f"{result.out_dir / '.medood'})",
        )
    if result.reporting:
        failed = result.failed
        scope = "" if result.whole else f" ({result.shard.label})"
        names = f": {', '.join(f.name for f in failed)}" if failed else ""
        busy = f", {len(result.busy)} left to other processes" if result.busy else ""
        say(
            PROG,
            f"{len(result.written)} written, {len(result.skipped)} skipped, {len(failed)} failed"
            f"{names}{busy}{scope} -> {result.out_dir}",
        )
    return EXIT_OK if result.ok else EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-predict``."""
    return run_command(PROG, build_parser(), _predict, argv)
