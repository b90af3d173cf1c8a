"""Make the shipped fused model brain-any from its calibrated members.

    python tools/make_fused_model.py [--name brain-any] [--lesion brain-any-seg]
                                     [--anomaly brain-any-unet-gpu] [--rule max]
                                     [--gate brain-any-gate]

Writes models/NAME/card.json (``detectors.fused.fused_card``: each member by name and by the
sha256 of its weights, the rule, the gate, what scans it expects), then calibrates it on the
two held-out healthy IXI subjects as every brain map model is (tools/calibrate_brain_unet.py).
Run it again whenever a member's weights or calibration change: the card refuses members it
was not made with. Its README is written by hand.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    from napari_medood.detectors.fused import fused_card
    from napari_medood.io.atomic import write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="brain-any")
    parser.add_argument("--lesion", default="brain-any-seg")
    parser.add_argument("--anomaly", default="brain-any-unet-gpu")
    parser.add_argument("--rule", default="max")
    parser.add_argument("--gate", default="brain-any-gate")
    args = parser.parse_args()
    card = fused_card(
        args.name,
        {"lesion": args.lesion, "anomaly": args.anomaly},
        args.rule,
        description="lesions and anything else abnormal in brain MRI of any contrast at 2 mm: "
        f"the lesion segmenter {args.lesion} and the anomaly U-Net {args.anomaly}, each read "
        f"against its own calibration, fused into one map ({args.rule})",
        gate=args.gate,
    )
    card["training"] = {
        "command": "python tools/make_fused_model.py"
        + "".join(f" --{k} {v}" for k, v in vars(args).items() if v != parser.get_default(k)),
        "note": "no weights of its own: the members are trained models (see their cards)",
    }
    folder = REPO / "models" / args.name
    folder.mkdir(exist_ok=True)
    write_text_atomic(folder / "card.json", json.dumps(card, indent=1) + "\n")
    print(f"wrote {folder / 'card.json'}; calibrating", flush=True)
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "calibrate_brain_unet.py"), "--model", args.name],
        check=True,
    )


if __name__ == "__main__":
    main()
