"""Train the shipped model brain-t1-mhd on the shared IXI scans.

    python tools/train_mhd_model.py [--shared ../shared/data] [--out work/brain-t1-mhd]
                                    [--set key=value ...]

The same split as brain-t1-unet: six IXI subjects train, IXI039 and IXI048 (the bundled
sample) are held out; their healthy slices give the validation loss that picks the best
checkpoint. The recipe is configs/brain-t1-mhd.yaml; the best checkpoint ends in OUT/best
(copy it to models/brain-t1-mhd). Running the command again resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = ("IXI039-HH-1261", "IXI048-HH-1326")


def write_table(path: Path, cases) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", "Mask"])
        for case in cases:
            writer.writerow([case.image.resolve(), case.mask.resolve()])
    return path


def main() -> None:
    from tqdm import tqdm

    from napari_medood.io.cohort import discover_cases
    from napari_medood.training.config import load_config
    from napari_medood.training.diffusion import DiffusionTrainConfig, train_diffusion

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "work" / "brain-t1-mhd")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    ixi = args.shared / "ixi-t1-2mm"
    cases = discover_cases(ixi / "t1", masks=ixi / "dlmuse")
    args.out.mkdir(parents=True, exist_ok=True)
    train = write_table(
        args.out / "train.csv", [c for c in cases if not c.name.startswith(HELD_OUT)]
    )
    val = write_table(args.out / "val.csv", [c for c in cases if c.name.startswith(HELD_OUT)])
    config = load_config(
        REPO / "configs" / "brain-t1-mhd.yaml",
        [f"train={train}", f"val={val}", f"out={args.out}", *args.set],
        DiffusionTrainConfig,
    )
    bar = tqdm(total=config.steps, desc="brain-t1-mhd", unit="step", file=sys.stderr)

    def progress(done: int, total: int, message: str) -> None:
        bar.n = done
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    result = train_diffusion(config, progress)
    bar.close()
    print(
        f"{result.last_step} steps in {result.seconds:.0f} s; best {result.metric} "
        f"{result.best_metric}; checkpoint {result.best}"
    )


if __name__ == "__main__":
    main()
