"""``medood-train zoo``: the brain detector suite trained on a healthy cohort in one budgeted
command (``training.zoo``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_medood.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_device_option,
    add_precision_option,
    make_parser,
    run_command,
    say,
)

PROG = "medood-train zoo"
EPILOG = """\
what it trains, each with its share of --budget (in this order): the synthetic-anomaly U-Net
(40 %), the lesion segmenter on real lesion shapes implanted into the healthy scans (15 %),
MHD's slice diffusion model (25 %) and the trust gate on the U-Net's features (10 %); then
it calibrates each map model on the held-out healthy scans and evaluates it (not counted in
the budget). With
parcellations (DLMUSE, say) as masks, every model also learns random MR contrasts drawn from
them. The U-Net and the segmenter start from the shipped brain models (brain-any-unet-gpu,
or brain-t1-unet without parcellations, and brain-t1-seg; --from-scratch: not).

OUT holds unet/best, seg/best, diffusion/best and gate/best (each usable with medood-predict
--model OUT/unet/best, its gate found beside it), each stage's logs, summary.md and
summary.json. --pack adds OUT/pack: summary.md and the suite as parts of at most 16 MiB
(8 files at most; restore with: cat OUT/pack/zoo.tar.gz.part* | tar -xz -C FOLDER).

run the same command again to resume; with a larger --budget every model trains on.

examples:
  medood-train zoo --mask dlmuse/ --budget 540 --device cuda healthy_t1/ zoo/
  medood-train zoo --mask dlmuse/ --lesions ms.csv --budget 3600 --pack cohort.csv zoo/
  medood-train zoo --mask dlmuse/ --set unet.batch_size=2 --set valset.kinds=[shift] t1/ zoo/
"""


def build_parser() -> argparse.ArgumentParser:
    from napari_medood.training.zoo import DEFAULT_BUDGET_S

    parser = make_parser(
        PROG,
        "Train the brain detector suite (U-Net, lesion segmenter, MHD diffusion model, trust "
        "gate) on healthy scans in one time budget, then calibrate and evaluate each.\n\n"
        "HEALTHY is a folder of scans, a CSV file with Path and Mask columns, or a BIDS "
        "dataset.",
        EPILOG,
    )
    parser.add_argument("healthy", nargs="?", metavar="HEALTHY", help="healthy scans")
    parser.add_argument("out", nargs="?", metavar="OUT", help="the run folder")
    parser.add_argument(
        "--mask",
        metavar="PATH",
        help="the healthy scans' parcellations (DLMUSE, say: then random contrasts are drawn "
        "from them) or brain masks: a folder with one per scan named like it; default: the "
        "CSV/BIDS mask column",
    )
    parser.add_argument(
        "--lesions",
        metavar="COHORT",
        help="scans with lesion labels (a CSV with Path and Label columns, or BIDS) to "
        "evaluate every model on; never trained on",
    )
    parser.add_argument("--lesion-mask", metavar="PATH", help="brain masks of --lesions")
    parser.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        metavar="SECONDS",
        help=f"seconds the four models train, their preparation included (default "
        f"{DEFAULT_BUDGET_S:.0f}: about 9 minutes, sized for one H200-class GPU); the validation "
        "sets, calibration and evaluation come on top",
    )
    add_device_option(parser)
    add_precision_option(parser)
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="data loader processes per stage (default: the CPU's cores less two, at most 14)",
    )
    parser.add_argument(
        "--held-out",
        type=float,
        default=0.2,
        metavar="SHARE",
        help="share of the healthy subjects kept for calibration and validation (at least one; "
        "default 0.2)",
    )
    parser.add_argument(
        "--fpr",
        type=float,
        default=0.01,
        help="healthy voxel false-positive rate each map model is calibrated at (default 0.01)",
    )
    parser.add_argument(
        "--eval-scans",
        type=int,
        default=4,
        metavar="N",
        help="held-out scans the validation sets are built from (default 4; calibration "
        "reads every held-out scan)",
    )
    parser.add_argument(
        "--contrast",
        default="T1w",
        help="what the scans are (T1w, T2w, FLAIR...) when --mask gives brain masks, for the "
        "cards' contrast checks (with parcellations the models read any contrast; default T1w)",
    )
    parser.add_argument("--name", default="zoo", help="the models' names' prefix (default zoo)")
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="do not start the U-Net and the segmenter from the shipped brain models",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="STAGE.KEY=VALUE",
        help="a stage's configuration key (unet, seg, diffusion, gate) or the synthetic "
        "set's (valset): --set unet.batch_size=2",
    )
    parser.add_argument(
        "--pack",
        action="store_true",
        help="also write OUT/pack: the suite as at most 8 files of at most 16 MiB",
    )
    parser.add_argument("--seed", type=int, default=0, help="the split's and the sets' seed")
    return parser


def _zoo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_medood.batch import output_folder
    from napari_medood.errors import MedoodError
    from napari_medood.training.zoo import ZooSettings, run_zoo, write_pack

    if args.healthy is None or args.out is None:
        raise MedoodError("give the healthy scans and the run folder: HEALTHY OUT (see --help)")
    settings = ZooSettings(
        healthy=args.healthy,
        out=args.out,
        masks=args.mask,
        lesions=args.lesions,
        lesion_masks=args.lesion_mask,
        budget_s=args.budget,
        device=args.device,
        precision=args.precision or "auto",
        workers=args.workers,
        held_out=args.held_out,
        fpr=args.fpr,
        eval_scans=args.eval_scans,
        contrast=args.contrast,
        from_shipped=not args.from_scratch,
        name=args.name,
        seed=args.seed,
        overrides=tuple(args.set or ()),
    ).validate()
    # checked before any data is read; a run that fails leaves no empty folder
    with output_folder(args.out) as out:
        bar = tqdm(total=1, desc="zoo", file=sys.stderr)

        def progress(done: int, total: int, message: str) -> None:
            if total != bar.total:
                bar.reset(total=total)
            bar.n = done
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        try:
            result = run_zoo(settings, progress)
        except KeyboardInterrupt:
            bar.close()
            say(PROG, f"interrupted; run the same command to resume from {out}")
            return EXIT_INTERRUPTED
        bar.close()
        sys.stdout.write(result.table.read_text(encoding="utf-8"))
        if args.pack:
            written = write_pack(out)
            size = sum(p.stat().st_size for p in written) / 2**20
            say(PROG, f"packed {len(written)} files ({size:.1f} MiB) in {written[0].parent}")
        say(PROG, f"summary: {result.table} and {result.record}")
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``medood-train zoo ...``."""
    return run_command(PROG, build_parser(), _zoo, argv)
