"""How often each brain U-Net flags a sphere made in the anomaly playground, in one command.

    python tools/make_playground_table.py [--models brain-t1-unet,brain-any-unet-gpu]
                                          [--places 20] [--size 22] [--seed 0]

The playground's spheres (``synth.playground``: alpha 1, edge kernel 3) of each texture
(``scan``: tissue of this scan from elsewhere; ``noise``: voxel-wise uniform noise within the
brain's 1st-99th percentile intensities) at ``--places`` random places in the bundled
sample's brain (IXI048, held out of every model's training), one at a time. For each model,
at its calibrated threshold: the mean share of the sphere flagged, how many spheres are more
than half flagged, and the mean volume flagged outside the sphere (the same brain without a
sphere flags the calibration's own figure). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    from napari_medood.detectors import get_detector
    from napari_medood.detectors.calibration import voxel_ml
    from napari_medood.io import read_volume
    from napari_medood.synth.playground import AnomalySettings, Playground

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="brain-t1-unet,brain-any-unet-gpu")
    parser.add_argument("--places", type=int, default=20)
    parser.add_argument("--size", type=float, default=22.0, help="sphere diameter (mm)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    samples = REPO / "src" / "napari_medood" / "samples"
    image = read_volume(samples / "ixi048_t1_2mm.nii.gz")
    brain = read_volume(samples / "ixi048_brainmask_2mm.nii.gz").data > 0
    ml = voxel_ml(image.affine)
    detectors = {
        name: get_detector(name, device="cpu", gate=False) for name in args.models.split(",")
    }
    rng = np.random.default_rng(args.seed)
    draw = Playground(image.data, image.grid.spacing, brain)
    places = [draw.random_centre(rng) for _ in range(args.places)]
    rows = [
        f"| texture | model | sphere flagged (mean of {args.places}) | spheres more than half "
        "flagged | ml flagged outside the sphere |",
        "|---|---|---|---|---|",
    ]
    for texture in ("scan", "noise"):
        measured = {name: ([], []) for name in detectors}
        for index, centre in enumerate(places):
            playground = Playground(image.data, image.grid.spacing, brain, image.axcodes)
            settings = AnomalySettings(
                "sphere", args.size, alpha=1.0, texture=texture, seed=args.seed + index
            )
            playground.commit(playground.preview(settings, centre))
            sphere = playground.labels > 0
            implanted = image.with_data(playground.result)
            for name, detector in detectors.items():
                result = detector.predict(implanted, brain)
                threshold = result.extras["calibration"]["voxel_threshold"]
                above = result.anomaly_map.data > threshold
                measured[name][0].append(float(np.mean(above[sphere])))
                measured[name][1].append(float(np.count_nonzero(above & ~sphere)) * ml)
        for name, (shares, outside) in measured.items():
            shares = np.asarray(shares)
            rows.append(
                f"| {texture} | {name} | {100 * shares.mean():.0f} % | "
                f"{int(np.sum(shares > 0.5))} of {len(shares)} | {np.mean(outside):.1f} |"
            )
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
