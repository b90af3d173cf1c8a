"""What every command shares: the parser frame, one-line errors, and one option vocabulary
(``--model``, ``--device``, ``--mask`` for a file or a folder)."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

from napari_medood import __version__
from napari_medood.errors import MedoodError

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def make_parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=_HelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def run_command(
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
            print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, MedoodError | ValueError) and text:
        return text
    hint = " (run again with --debug for the traceback)"
    return f"{type(exc).__name__}: {text}{hint}" if text else f"{type(exc).__name__}{hint}"


def device_name(text: str) -> str:
    """argparse type of ``--device``: a device's spelling, checked without importing torch."""
    from napari_medood.device import check_device_name

    try:
        return check_device_name(text)
    except MedoodError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_model_option(parser: argparse.ArgumentParser, help_suffix: str = "") -> None:
    parser.add_argument(
        "--model",
        "--detector",
        dest="model",
        metavar="NAME",
        default=None,
        help="a shipped model or baseline name (see medood-predict --list-models), a "
        "checkpoint folder, or several comma-separated checkpoints (an ensemble)" + help_suffix,
    )


def add_variant_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variant",
        metavar="NAME",
        default=None,
        help="which map a detector that gives several returns as its anomaly map (e.g. "
        "brain-t1-mhd: mhd, the default, or residual: the single-reconstruction residual)",
    )


def add_gate_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-gate",
        dest="gate",
        action="store_false",
        help="skip the trust gate a model's card names (is the scan like the training "
        "data?); by default it runs first, warns on one line and writes "
        "<case>.trust.json beside the map",
    )


def add_tta_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tta",
        action="store_true",
        help="flip test-time augmentation: also run the model on the scan mirrored "
        "left-right and average its map, mirrored back, with the plain one; about twice the "
        "time; U-Net (unet3d) models only, other detectors ignore it; recorded in the outputs",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        type=device_name,
        metavar="{auto,cpu,cuda,cuda:N,mps}",
        help="where models run (auto: cuda, else mps, else cpu; a CUDA out-of-memory error "
        "falls back to the CPU)",
    )


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    from napari_medood.execution import PRECISIONS

    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="arithmetic of the network (auto: bfloat16 on CPUs that compute it, else "
        "float32; float16 on CUDA); recorded in the outputs",
    )


def add_mask_option(
    parser: argparse.ArgumentParser, flag: str = "--mask", what: str = "the scans"
) -> None:
    parser.add_argument(
        flag,
        metavar="PATH",
        default=None,
        help=f"brain/foreground masks of {what}: a file (one scan) or a folder with one mask "
        "per scan named like it (same name, or the scan's name + '_...'); default: a CSV/BIDS "
        "mask column, else an Otsu threshold of the scan",
    )


def say(prog: str, text: str) -> None:
    print(f"{prog}: {text}", file=sys.stderr)
