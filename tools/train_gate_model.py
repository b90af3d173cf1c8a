"""Fit a shipped trust gate (brain-t1-gate, brain-any-gate) on the shared IXI scans.

    python tools/train_gate_model.py [--config configs/brain-t1-gate.yaml] [--shared ../shared/data]
                                     [--out work/<name>] [--set key=value ...]

The same split as the brain U-Nets: six IXI subjects are fitted on, IXI039 and IXI048 (the
bundled sample) are held out for the evaluation (tools/make_ood_table.py). The flow's epoch
is selected against an abdominal MR (organ shift, not in the evaluation). The masks given
are the DLMUSE parcellations, so a recipe with ``contrast_copies`` can draw random-contrast
copies from them. The checkpoint ends in OUT/best (copy it to models/<name>).
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
    from napari_medood.training.flow import FlowTrainConfig, train_flow

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "brain-t1-gate.yaml")
    parser.add_argument("--out", type=Path, help="default: work/<the recipe's name>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    import yaml

    name = yaml.safe_load(args.config.read_text())["name"]
    args.out = args.out or REPO / "work" / name
    ixi = args.shared / "ixi-t1-2mm"
    cases = [
        c
        for c in discover_cases(ixi / "t1", masks=ixi / "dlmuse")
        if not c.name.startswith(HELD_OUT)
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    train = args.out / "train.csv"
    with open(train, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", "Mask"])
        for case in cases:
            writer.writerow([case.image.resolve(), case.mask.resolve()])
    ood = args.shared / "totalsegmentator-example" / "example_mr_sm.nii.gz"
    config = load_config(
        args.config,
        [f"train={train}", f"val_ood={ood}", f"out={args.out}", *args.set],
        FlowTrainConfig,
    )
    bar = tqdm(total=config.epochs, desc=config.name, unit="epoch", file=sys.stderr)

    def progress(done: int, total: int, message: str) -> None:
        bar.n = done
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    result = train_flow(config, progress)
    bar.close()
    print(
        f"{result.seconds:.0f} s; flow validation AUROC {result.best_metric}; checkpoint {result.best}"
    )


if __name__ == "__main__":
    main()
