"""``medood-train METHOD``: train a detector family; each family brings its own trainer."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from napari_medood.batch import output_folder
from napari_medood.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_precision_option,
    make_parser,
    run_command,
    say,
)
from napari_medood.errors import MedoodError

PROG = "medood-train"
EPILOG = """\
the configuration is YAML (see configs/); --set overrides any key:
  medood-train unet --config configs/brain-t1-unet.yaml --set steps=200 --set device=cpu

OUT/best holds the best checkpoint by validation (model.safetensors + card.json, usable with
medood-predict --model OUT/best); OUT/last and OUT/state.pt let an interrupted run resume:
run the same command again. Logs: OUT/train_log.csv, OUT/val_log.csv.

a time budget: --budget 300 stops after 300 s (preparation included) with the schedule
fitted to the steps they allow, so the model ends annealed; the same command with a larger
budget goes on from there.

several GPUs or machines (DDP), the same command under torchrun:
  torchrun --nproc_per_node 4 $(which medood-train) unet --config cfg.yaml
"""


def build_parser() -> argparse.ArgumentParser:
    from napari_medood.training.registry import trainers

    families = trainers()
    methods = "; ".join(f"{method}: {family.description}" for method, family in families.items())
    parser = make_parser(
        PROG, f"Train a detector on normal (healthy) scans. METHOD is one of: {methods}.", EPILOG
    )
    parser.add_argument(
        "method",
        nargs="?",
        metavar="METHOD",
        help=f"what to train: {', '.join(families)}; or zoo, the whole brain suite in one "
        "budget (medood-train zoo --help); or campaign, the brain members trained on in the "
        "background, session after session (medood-train campaign --help)",
    )
    parser.add_argument("--config", metavar="YAML", help="training configuration")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a configuration key"
    )
    parser.add_argument("--out", metavar="DIR", help="run folder (overrides the config's out)")
    parser.add_argument(
        "--ood-supervision",
        metavar="SHARE",
        help="mix in anomaly-free hard negatives (Med-OoD): a share of the samples, or 'auto' "
        "for the ratio rule; the same as --set ood_supervision=SHARE (unet, seg)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="stop after this many seconds of the run, preparation included, with the "
        "learning-rate schedule fitted to the steps they allow (the same as --set "
        "budget_s=SECONDS); run again with more to go on",
    )
    add_precision_option(parser)
    parser.set_defaults(precision=None)  # the configuration's, unless given here
    return parser


def _train(args: argparse.Namespace) -> int:
    from napari_medood.training.registry import get_trainer, trainers

    if args.method is None:
        raise MedoodError(f"give the method to train: {', '.join(trainers())} (see --help)")
    trainer = get_trainer(args.method)
    from napari_medood.training.config import load_config

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"out={args.out}")
    if args.ood_supervision is not None:
        overrides.append(f"ood_supervision={args.ood_supervision}")
    if args.precision is not None:
        overrides.append(f"precision={args.precision}")
    if args.budget is not None:
        overrides.append(f"budget_s={args.budget}")
    config = load_config(args.config, overrides, trainer.config)
    # OUT is checked (a writable folder) before any data loads; an OUT this run created and
    # left empty (it failed before its first file) is removed again
    with output_folder(config.out):
        return _run(trainer, config)


def _run(trainer, config) -> int:
    from tqdm import tqdm

    rank = int(os.environ.get("RANK", "0"))
    bar = tqdm(
        total=config.steps,
        desc=f"training {config.name}",
        unit="step",
        file=sys.stderr,
        disable=rank != 0,
    )

    def progress(done: int, total: int, message: str) -> None:
        if total != bar.total:  # another stage (mining hard negatives), or a budget's fit
            bar.reset(total=total)
        bar.n = done
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    try:
        try:
            result = trainer.run(config, progress)
        finally:  # before any message, so that the message is the last line
            bar.close()
    except KeyboardInterrupt:
        say(PROG, f"interrupted; run the same command to resume from {config.out}")
        return EXIT_INTERRUPTED
    if rank == 0:
        best = (
            f"best validation {result.metric} {result.best_metric:.4f}"
            if result.best_metric is not None
            else "no validation set"
        )
        budget = (
            f" (budget {result.budget_s:.0f} s: the schedule fitted to {result.scheduled_steps})"
            if result.budget_s
            else ""
        )
        say(
            PROG,
            f"{result.last_step} steps in {result.seconds:.0f} s{budget}, {best}; "
            f"checkpoint: {result.best}",
        )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-train``; ``medood-train zoo`` trains the whole brain suite
    (``cli.zoo``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["zoo"]:
        from napari_medood.cli.zoo import main as zoo_main

        return zoo_main(args[1:])
    if args[:1] == ["campaign"]:
        from napari_medood.cli.campaign import main as campaign_main

        return campaign_main(args[1:])
    return run_command(PROG, build_parser(), _train, argv)
