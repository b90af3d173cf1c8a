"""Calibrate a shipped brain U-Net on healthy scans it has not seen.

    python tools/calibrate_brain_unet.py [--model brain-t1-unet] [--shared ../shared/data]
                                         [--fpr 0.01]

IXI has eight healthy subjects here: the six the U-Net was trained on and the two held out
(IXI039, IXI048). On its training subjects the U-Net is nearly silent, so a threshold
calibrated there is far too low for a new brain (at 1 % of the training subjects' voxels it
flagged 7.6 % and 20 % of the two held-out brains). The threshold is therefore calibrated on
the two held-out subjects (``medood-eval --calibrate``, written into
models/MODEL/card.json), which are also the subjects of its synthetic test set; the share it
flags in each training subject is recorded beside it. The same holds for every U-Net trained
by tools/train_default_model.py (brain-any-unet-cpu too): they share the split.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = ("IXI039-HH-1261", "IXI048-HH-1326")


def main() -> None:
    from napari_medood.cli import eval_main
    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume
    from napari_medood.io.atomic import write_text_atomic
    from napari_medood.io.cohort import discover_cases
    from napari_medood.preprocessing.masks import load_mask

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--model", default="brain-t1-unet", help="a folder under models/")
    parser.add_argument("--fpr", type=float, default=0.01)
    parser.add_argument("--work", type=Path, default=REPO / "work" / "calibration")
    args = parser.parse_args()
    ixi = args.shared / "ixi-t1-2mm"
    cases = discover_cases(ixi / "t1", masks=ixi / "dlmuse")
    train = [c for c in cases if not c.name.startswith(HELD_OUT)]
    held_out = [c for c in cases if c.name.startswith(HELD_OUT)]
    args.work.mkdir(parents=True, exist_ok=True)
    table = args.work / f"{args.model}-held-out-subjects.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", "Mask"])
        writer.writerows([c.image.resolve(), c.mask.resolve()] for c in held_out)
    model = REPO / "models" / args.model
    code = eval_main(
        ["--model", str(model), "--calibrate", str(args.fpr), "--healthy", str(table)]
        + ["--device", "cpu"]
    )
    if code:
        raise SystemExit(code)
    card_path = model / "card.json"
    card = json.loads(card_path.read_text())
    threshold = card["calibration"]["voxel_threshold"]
    detector = get_detector(str(model), device="cpu", gate=False)
    seen = {}
    for case in train:
        volume = read_volume(case.image)
        mask = load_mask(case.mask, volume.grid)
        result = detector.predict(volume, mask)
        seen[case.name] = {
            "voxel_fpr": result.extras["calibration"]["flagged_share"],
            "flagged_ml": result.extras["calibration"]["flagged_ml"],
        }
    card["calibration"]["command"] = "python tools/calibrate_brain_unet.py" + (
        f" --model {args.model}" if args.model != "brain-t1-unet" else ""
    )
    card["calibration"]["healthy_scans_are"] = (
        "the two IXI subjects held out of training (also the subjects of the synthetic test set)"
    )
    card["calibration"]["training_subjects"] = seen
    write_text_atomic(card_path, json.dumps(card, indent=1) + "\n")
    print(json.dumps({"voxel_threshold": threshold, "training_subjects": seen}))


if __name__ == "__main__":
    main()
