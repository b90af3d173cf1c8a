"""Train brain-any-seg, the lesion segmenter for any MR contrast, on the shared IXI scans.

    python tools/train_any_seg.py [--shared ../shared/data] [--out work/brain-any-seg]
                                  [--budget SECONDS] [--set key=value ...]

Six IXI subjects train, with their DLMUSE parcellations as masks (random contrasts are drawn
from them); the two held out (IXI039, IXI048) become the validation set that picks the best
checkpoint: real lesion shapes implanted into each, once in its own T1 and once in a random
contrast (``training.zoo.implanted_lesion_set``, seed 0). The recipe is
configs/brain-any-seg.yaml; the best checkpoint ends in OUT/run/best (copy it to
models/brain-any-seg, then calibrate it: tools/calibrate_brain_unet.py --model ...).
``--set ood_supervision=auto --set ood_healthy=OUT/train.csv`` adds Med-OoD's anomaly-free
patches of the healthy training scans (README, "Lesions in any contrast").
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
    from napari_medood.training.config import load_config
    from napari_medood.training.segmenter import SegTrainConfig, train_segmenter
    from napari_medood.training.zoo import implanted_lesion_set

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "work" / "brain-any-seg")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "brain-any-seg.yaml")
    parser.add_argument("--budget", type=float, default=0.0, help="seconds (0: the steps)")
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
    valset = implanted_lesion_set(held_out, args.out / "valset", parcellated=True, seed=0)
    config = load_config(
        args.config,
        [
            f"train={table}",
            f"val={valset}",
            f"out={args.out / 'run'}",
            f"budget_s={args.budget}",
            *args.set,
        ],
        SegTrainConfig,
    )
    print(
        f"training on {[c.name for c in train]}, validating on {len(held_out)} held-out "
        f"subjects ({valset})",
        flush=True,
    )
    bar = tqdm(total=config.steps, unit="step", file=sys.stdout, mininterval=30)

    def progress(done: int, total: int, message: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    result = train_segmenter(config, progress)
    bar.close()
    print(
        f"done: {result.last_step} steps in {result.seconds:.0f} s; best validation pixel AP "
        f"{result.best_metric}; checkpoint {result.best}",
        flush=True,
    )


if __name__ == "__main__":
    main()
