"""``medood-synth``: a labelled validation set of synthetic outliers, in the MOOD layout."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_medood.batch import output_folder
from napari_medood.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    add_mask_option,
    make_parser,
    run_command,
    say,
)
from napari_medood.errors import MedoodError

PROG = "medood-synth"
EPILOG = """\
layout written (MOOD):
  OUTPUT/pixel/data/<case>.nii.gz        scan with or without an outlier, on the source grid
  OUTPUT/pixel/label/<case>.nii.gz       binary label map
  OUTPUT/sample/data/<case>.nii.gz       the same scan
  OUTPUT/sample/label/<case>.nii.gz.txt  1 (outlier) or 0 (normal)
  OUTPUT/manifest.json                   kind, parameters and seed of every case

Cases are named <scan>_<kind> and <scan>_normal. The same --seed gives the same set; an
interrupted run resumes where it stopped.

examples:
  medood-synth --mask brain_masks/ healthy_t1/ valset/
  medood-synth --kinds shift,reflection --repeats 3 --normal 2 --seed 7 cohort.csv valset/
"""


def build_parser() -> argparse.ArgumentParser:
    from napari_medood.synth.validation import OUTLIER_KINDS

    parser = make_parser(
        PROG,
        "Build a labelled validation set of synthetic outliers (FPI/MOOD style: uniform and "
        "local noise, deformation, shift, reflection) from normal scans.\n\n"
        "INPUT is a scan, a folder of scans, a CSV file with a Path column (and optionally "
        "a Mask column), or a BIDS dataset.",
        EPILOG,
    )
    parser.add_argument("input", nargs="?", metavar="INPUT", help="normal scans")
    parser.add_argument("output", nargs="?", metavar="OUTPUT", help="folder for the set")
    add_mask_option(parser, what="the scans (outliers are centred and cut inside them)")
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
    if not args.edge_width > 0:
        raise MedoodError(f"--edge-width takes a width in voxels above 0, got {args.edge_width:g}")
    from napari_medood.io.cohort import discover_cases
    from napari_medood.synth.dataset import ValidationSetConfig

    config = ValidationSetConfig(
        kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()),
        repeats=args.repeats,
        normal=args.normal,
        edges=args.edges,
        edge_width=args.edge_width,
        seed=args.seed,
    )
    with output_folder(args.output) as out:
        cases = discover_cases(args.input, masks=args.mask, bids_suffix=args.bids_suffix)
        return _build(cases, out, config)


def _build(cases, out: Path, config) -> int:
    from tqdm import tqdm

    from napari_medood.synth.dataset import build_validation_set

    with tqdm(total=1, desc="synthesising", unit="case", file=sys.stderr) as bar:

        def progress(done: int, total: int, message: str) -> None:
            bar.total = total
            bar.n = done
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        summary = build_validation_set(cases, out, config, progress=progress)
    if len(cases) == 1 and summary.failed:  # the one scan given: its problem is the error
        raise MedoodError(summary.failed[0][1])
    for name, problem in summary.failed:
        say(PROG, f"failed: {name}: {problem}")
    if not summary.written and not summary.kept and summary.failed:
        raise MedoodError(f"{out}: nothing written: every one of the {len(cases)} scans failed")
    say(
        PROG,
        f"{len(summary.written)} cases written, {len(summary.kept)} kept, "
        f"{len(summary.failed)} scans failed -> {out} (manifest: {summary.manifest})",
    )
    return EXIT_ERROR if summary.failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-synth``."""
    return run_command(PROG, build_parser(), _synth, argv)
