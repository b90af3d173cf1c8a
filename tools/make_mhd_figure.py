"""The README's MHD figure: one MS patient's T1 and FLAIR, what brain-t1-mhd makes of them.

    python tools/make_mhd_figure.py [--shared ../shared/data] [--patient patient07]

For each contrast, on the axial slice with the most lesion voxels: the scan with the
consensus lesions outlined, two of the N = 10 reconstructions, their mean and standard
deviation, the single-reconstruction residual, the MHD map, and brain-t1-unet's map for
comparison. Maps share one colour scale (0 to the 99.9th percentile of the MHD map inside the
brain, per contrast). Writes docs/images/mhd-ms-patient.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FILES = {
    "T1": "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "FLAIR": "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
}
LESIONS = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"


def main() -> None:
    from napari_medood._napari._layers import to_display
    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--patient", default="patient07")
    args = parser.parse_args()
    folder = args.shared / "open-ms-lesjak-mni" / args.patient
    lesions = read_volume(folder / LESIONS)
    mhd = get_detector("brain-t1-mhd", device="cpu")
    unet = get_detector("brain-t1-unet", device="cpu")
    columns = [
        "scan, lesions outlined",
        "reconstruction 1",
        "reconstruction 2",
        "mean of 10",
        "std of 10",
        "single-reconstruction residual",
        "MHD map",
        "U-Net map",
    ]
    figure, axes = plt.subplots(2, len(columns), figsize=(2.3 * len(columns), 5.4))
    for row, (contrast, name) in enumerate(FILES.items()):
        scan = read_volume(folder / name)
        brain = scan.data > 0
        result = mhd.predict(scan, brain)
        maps = result.extras["maps"]
        unet_map = unet.predict(scan, brain).anomaly_map.data
        shown = {
            "scan": to_display(scan)[0],
            "lesions": to_display(lesions)[0] > 0.5,
            "recon1": to_display(scan.with_data(maps["reconstructions"][0]))[0],
            "recon2": to_display(scan.with_data(maps["reconstructions"][1]))[0],
            "mean": to_display(scan.with_data(maps["mean"]))[0],
            "std": to_display(scan.with_data(maps["std"]))[0],
            "residual": to_display(scan.with_data(maps["residual"]))[0],
            "mhd": to_display(result.anomaly_map)[0],
            "unet": to_display(scan.with_data(unet_map))[0],
        }
        k = int(np.argmax(shown["lesions"].sum(axis=(1, 2))))  # axial axis first in display
        brain_display = shown["scan"] > 0
        top = float(np.percentile(shown["mhd"][brain_display], 99.9)) or 1.0
        scan_top = float(np.percentile(shown["scan"][brain_display], 99.5))
        panels = [
            (shown["scan"][k], "gray", (0, scan_top)),
            (shown["recon1"][k], "gray", (0, 1)),
            (shown["recon2"][k], "gray", (0, 1)),
            (shown["mean"][k], "gray", (0, 1)),
            (shown["std"][k], "viridis", None),
            (shown["residual"][k], "inferno", (0, top)),
            (shown["mhd"][k], "inferno", (0, top)),
            (shown["unet"][k], "inferno", (0, 1)),
        ]
        for col, (image, cmap, limits) in enumerate(panels):
            axis = axes[row, col]
            kwargs = {"vmin": limits[0], "vmax": limits[1]} if limits else {}
            axis.imshow(image, cmap=cmap, origin="lower", **kwargs)
            axis.contour(shown["lesions"][k], levels=[0.5], colors="#2ecc40", linewidths=0.6)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(columns[col], fontsize=8)
        axes[row, 0].set_ylabel(f"{args.patient} {contrast}", fontsize=9)
    figure.suptitle(
        "brain-t1-mhd on a multiple-sclerosis patient (lesions outlined in green); "
        "maps on one colour scale per row, the U-Net on 0-1",
        fontsize=9,
    )
    figure.tight_layout()
    out = REPO / "docs" / "images" / "mhd-ms-patient.png"
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
