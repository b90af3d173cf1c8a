"""``medood-compare``: two models on one scan, their maps, difference and disagreement."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_medood.cli._common import (
    EXIT_OK,
    add_device_option,
    add_gate_option,
    add_mask_option,
    add_precision_option,
    make_parser,
    run_command,
    say,
)
from napari_medood.errors import MedoodError

PROG = "medood-compare"
#: what --out holds: the name of each file (the summary records the models behind A and B)
OUTPUT_FILES = {
    "map_a": "map_a.nii.gz",
    "map_b": "map_b.nii.gz",
    "difference": "difference.nii.gz",
    "disagreement": "disagreement.nii.gz",
    "summary": "summary.json",
}
EPILOG = """\
a model flags the voxels above its threshold: its card's calibrated threshold when the
calibration holds for this run (e.g. brain-t1-unet with a brain mask, or on a skull-stripped
scan), else --threshold-a / --threshold-b (default 0.5); the volumes are counted inside the
mask (without one, inside a skull-stripped scan's brain or the Otsu foreground, as the
detectors do). The summary says which threshold each model used.

outputs in --out DIR (written atomically; the scan and mask are only read):
  map_a.nii.gz, map_b.nii.gz  each model's anomaly map, on the scan's grid and affine
  difference.nii.gz           map A - map B (float32, -1 to 1)
  disagreement.nii.gz         labels: 0 neither (or outside the mask), 1 A only, 2 B only, 3 both
  summary.json                models, thresholds and their origin, flagged ml (each, A only,
                              B only, both), Dice of the flagged sets, Pearson r of the maps
without --out the summary is printed and nothing is written.

examples:
  medood-compare scan.nii.gz --models intensity,inverted-intensity --mask brain.nii.gz
  medood-compare scan.nii.gz --models brain-t1-unet,brain-any-unet-cpu --mask brain.nii.gz --out cmp/
"""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        PROG,
        "Run two models on one scan and show where their anomaly maps disagree.",
        EPILOG,
    )
    parser.add_argument("image", metavar="IMAGE", help="the scan (a file or a DICOM folder)")
    parser.add_argument(
        "--models",
        metavar="A,B",
        required=True,
        help="two map models, comma-separated: shipped models, baselines or checkpoint "
        "folders (see medood-predict --list-models)",
    )
    add_mask_option(parser, what="the scan")
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="folder for the maps and summary.json"
    )
    for which in ("a", "b"):
        parser.add_argument(
            f"--threshold-{which}",
            type=float,
            default=None,
            metavar="X",
            help=f"flag model {which.upper()}'s voxels above X when it has no calibration that "
            "holds for this run (default: 0.5)",
        )
    add_device_option(parser)
    add_precision_option(parser)
    add_gate_option(parser)
    return parser


def model_pair(text: str) -> tuple[str, str]:
    """``"A,B"`` as two names."""
    names = [part.strip() for part in str(text).split(",")]
    if len(names) != 2 or not all(names):
        raise MedoodError(
            f"--models takes two models as A,B, got {text!r} (an ensemble cannot be one "
            "of them here)"
        )
    return names[0], names[1]


def _output_paths(out_dir: Path, inputs: Sequence[Path]) -> dict[str, Path]:
    paths = {key: out_dir / name for key, name in OUTPUT_FILES.items()}
    for path in paths.values():
        for source in inputs:
            if path.resolve() == source.resolve():
                raise MedoodError(
                    f"{source}: {path.name} in {out_dir} would overwrite this input; "
                    "choose another --out folder"
                )
    return paths


def _progress_bar():
    """A one-line tqdm status that follows the stages' reports (a count when they give one)."""
    from tqdm import tqdm

    bar = tqdm(total=0, file=sys.stderr, leave=False, bar_format="{desc}")

    def progress(done: int, total: int, message: str) -> None:
        bar.set_description_str(f"{message}: {done}/{total}" if total > 0 else message)

    return bar, progress


def _compare(args: argparse.Namespace) -> int:
    from napari_medood.detectors import DetectorOptions, get_detector
    from napari_medood.evaluation.compare import (
        FROM_CALIBRATION,
        compare_models,
        summary_lines,
    )
    from napari_medood.io.readers import read_volume
    from napari_medood.io.writers import write_nifti

    name_a, name_b = model_pair(args.models)
    image = Path(args.image)
    mask_path = None
    if args.mask:
        from napari_medood.io.cohort import find_mask

        given = Path(args.mask)
        mask_path = find_mask(given, image) if given.is_dir() else given
    with contextlib.ExitStack() as run:  # a run that fails leaves no empty OUTPUT folder
        paths = None
        if args.out is not None:  # checked before the scan is read
            from napari_medood.batch import output_folder

            out_dir = run.enter_context(output_folder(args.out))
            inputs = [image] + ([mask_path] if mask_path is not None else [])
            paths = _output_paths(out_dir, inputs)
        volume = read_volume(image)
        mask = None
        if mask_path is not None:
            from napari_medood.preprocessing.masks import load_mask

            mask = load_mask(mask_path, volume.grid)
        options = DetectorOptions(
            device=args.device, precision=args.precision, extra_maps=False, gate=args.gate
        )
        detector_a = get_detector(name_a, options)
        detector_b = get_detector(name_b, options)
        bar, progress = _progress_bar()
        try:
            comparison = compare_models(
                detector_a,
                detector_b,
                volume,
                mask,
                threshold_a=args.threshold_a,
                threshold_b=args.threshold_b,
                progress=progress,
            )
        finally:
            bar.close()
        summary = comparison.summary
        for which, asked in (("a", args.threshold_a), ("b", args.threshold_b)):
            model = summary[f"model_{which}"]
            if asked is not None and model["threshold_from"] == FROM_CALIBRATION:
                say(
                    PROG,
                    f"note: --threshold-{which} {asked:g} is not used: {model['name']}'s calibrated "
                    f"threshold {model['threshold']:.3f} holds for this run",
                )
        for note in comparison.notes:
            say(PROG, f"note: {note}")
        if paths is not None:
            record = {
                **summary,
                "image": str(image),
                "mask": None if mask_path is None else str(mask_path),
                "files": {key: path.name for key, path in paths.items() if key != "summary"},
                "notes": list(comparison.notes),
            }
            write_nifti(comparison.map_a, paths["map_a"])
            write_nifti(comparison.map_b, paths["map_b"])
            write_nifti(comparison.difference, paths["difference"])
            write_nifti(comparison.disagreement, paths["disagreement"], kind="labels")
            from napari_medood.io.atomic import write_text_atomic

            write_text_atomic(paths["summary"], json.dumps(record, indent=2) + "\n")
        for line in summary_lines(summary):
            print(line)
        if paths is not None:
            say(PROG, f"wrote {', '.join(OUTPUT_FILES.values())} -> {paths['summary'].parent}")
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-compare``."""
    return run_command(PROG, build_parser(), _compare, argv)
