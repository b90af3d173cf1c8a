"""The README's any-contrast figure: one MS patient's contrasts (T1, T2 and FLAIR;
--contrasts adds T1POST), and each model's map.

    python tools/make_any_contrast_figure.py [--shared ../shared/data] [--patient patient19]
                            [--models brain-t1-unet,brain-any-unet-cpu,brain-any-unet-gpu]

One row per contrast, on the axial slice with the most consensus-lesion voxels: the scan with
the lesions outlined in green, then each model's map (0 to 1) with its calibrated threshold
outlined in cyan. Each map's title gives its pixel AP on the whole scan (brain voxels) and the
volume above the calibrated threshold beside the lesions' volume. Writes
docs/images/any-contrast-ms-patient.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from make_baseline_table import LESIONS, MS_FILES  # noqa: E402


def main() -> None:
    from sklearn.metrics import average_precision_score

    from napari_medood._napari._layers import to_display
    from napari_medood.detectors import get_detector
    from napari_medood.detectors.calibration import voxel_ml
    from napari_medood.io import read_volume

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--patient", default="patient19")
    parser.add_argument("--models", default="brain-t1-unet,brain-any-unet-cpu,brain-any-unet-gpu")
    parser.add_argument("--contrasts", default="T1,T2,FLAIR", help=f"of {', '.join(MS_FILES)}")
    parser.add_argument(
        "--out", type=Path, default=REPO / "docs" / "images" / "any-contrast-ms-patient.png"
    )
    args = parser.parse_args()
    folder = args.shared / "open-ms-lesjak-mni" / args.patient
    lesions = read_volume(folder / LESIONS)
    models = args.models.split(",")
    detectors = [get_detector(name, device="cpu", gate=False) for name in models]
    columns = ["scan, lesions outlined", *models]
    contrasts = {c: MS_FILES[c] for c in args.contrasts.split(",")}
    rows = len(contrasts)
    figure, axes = plt.subplots(rows, len(columns), figsize=(3.2 * len(columns), 3.3 * rows))
    for row, (contrast, name) in enumerate(contrasts.items()):
        scan = read_volume(folder / name)
        brain = scan.data > 0
        truth = lesions.data[brain] > 0.5
        lesion_ml = truth.sum() * voxel_ml(scan.affine)
        image = to_display(scan)[0]
        outline = to_display(lesions)[0] > 0.5
        k = int(np.argmax(outline.sum(axis=(1, 2))))  # axial axis first in display
        top = float(np.percentile(image[image > 0], 99.5))
        panels = [(image[k], "gray", (0, top), None, f"{args.patient} {contrast}")]
        for model, detector in zip(models, detectors, strict=True):
            result = detector.predict(scan, brain)
            values = result.anomaly_map.data
            ap = average_precision_score(truth, values[brain])
            calibration = result.extras.get("calibration")
            text = f"{model}\nAP {ap:.3f}"
            threshold = None
            if calibration is not None:
                threshold = calibration["voxel_threshold"]
                text += f"; {calibration['flagged_ml']:.0f} ml flagged ({lesion_ml:.0f} ml lesions)"
            shown = to_display(scan.with_data(values))[0][k]
            panels.append((shown, "inferno", (0, 1), threshold, text))
        for col, (picture, cmap, limits, threshold, title) in enumerate(panels):
            axis = axes[row, col]
            axis.imshow(picture, cmap=cmap, origin="lower", vmin=limits[0], vmax=limits[1])
            axis.contour(outline[k], levels=[0.5], colors="#2ecc40", linewidths=0.7)
            if threshold is not None:
                axis.contour(picture, levels=[threshold], colors="#00e5ff", linewidths=0.5)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(title, fontsize=8)
    shares = {
        f"{100 * d.card['calibration']['healthy_voxel_fpr']:g} %"
        for d in detectors
        if "calibration" in (d.card or {})
    }
    figure.suptitle(
        f"The same MS patient in {rows} contrasts: green, consensus lesions; cyan, each model's "
        f"calibrated threshold ({' / '.join(sorted(shares))} of healthy T1 brain voxels)",
        fontsize=9,
    )
    figure.tight_layout()
    out = args.out
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
