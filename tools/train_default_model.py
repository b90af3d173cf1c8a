"""Train the shipped model brain-t1-unet on the shared IXI scans.

    python tools/train_default_model.py [--shared ../shared/data] [--out work/brain-t1-unet]
                                        [--config configs/brain-t1-unet.yaml]
                                        [--set key=value ...]

Six IXI subjects train; two (IXI039, IXI048 = the bundled sample) are held out and turned into
a labelled validation set (medood-synth: the five FPI outlier kinds + one normal copy each,
seed 0) that picks the best checkpoint. The recipe is configs/brain-t1-unet.yaml (the
contrast-randomised one: --config configs/brain-any-unet.yaml); the best
checkpoint ends in OUT/best (copy it to models/brain-t1-unet).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = ("IXI039-HH-1261", "IXI048-HH-1326")


def main() -> None:
    from tqdm import tqdm

    from napari_medood.io.cohort import discover_cases
    from napari_medood.synth.dataset import ValidationSetConfig, build_validation_set
    from napari_medood.training.config import load_config
    from napari_medood.training.unet import train_unet

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "work" / "brain-t1-unet")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "brain-t1-unet.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    ixi = args.shared / "ixi-t1-2mm"
    cases = discover_cases(ixi / "t1", masks=ixi / "dlmuse")
    train = [c for c in cases if not c.name.startswith(HELD_OUT)]
    held_out = [c for c in cases if c.name.startswith(HELD_OUT)]
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "train.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", "Mask"])
        for case in train:
            writer.writerow([case.image.resolve(), case.mask.resolve()])
    valset = args.out / "valset"
    build_validation_set(held_out, valset, ValidationSetConfig(seed=0))
    config = load_config(
        args.config,
        [f"train={table}", f"val={valset}", f"out={args.out / 'run'}", *args.set],
    )
    print(
        f"training on {[c.name for c in train]}, validating on {len(held_out)} held-out "
        f"subjects ({valset})",
        flush=True,
    )
    bar = tqdm(total=config.steps, unit="step", file=sys.stdout, mininterval=10)

    def progress(done: int, total: int, message: str) -> None:
        bar.n = done
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    result = train_unet(config, progress)
    bar.close()
    print(
        f"done: {result.last_step} steps in {result.seconds:.0f} s; best validation pixel AP "
        f"{result.best_metric}; checkpoint {result.best}",
        flush=True,
    )


if __name__ == "__main__":
    main()
