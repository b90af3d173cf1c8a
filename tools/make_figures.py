"""Figures for the README: example synthetic anomalies of every kind on the bundled IXI scan.

    python tools/make_figures.py

Writes docs/images/synthetic-anomalies.png: the four training-anomaly shapes (foreign patch
blended through the soft alpha map) and the five validation-outlier kinds, each on the axial
slice through the anomaly with its label outlined.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_medood._napari._layers import to_display  # noqa: E402
from napari_medood.io import read_volume  # noqa: E402
from napari_medood.synth.playground import AnomalySettings, Playground  # noqa: E402
from napari_medood.synth.validation import OUTLIER_KINDS, make_outlier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"


def main() -> None:
    scan = read_volume(REPO / "src/napari_medood/samples/ixi048_t1_2mm.nii.gz")
    brain = read_volume(REPO / "src/napari_medood/samples/ixi048_brainmask_2mm.nii.gz")
    # work in napari's display orientation (axis 0 = inferior->superior) for axial slices
    image, _, _ = to_display(scan)
    mask = to_display(brain)[0] > 0
    low, high = 0.0, float(np.percentile(image[mask], 99.5)) * 1.4  # room for bright outliers
    panels = []
    playground = Playground(image, (2.0, 2.0, 2.0), mask, ("S", "P", "L"))
    for kind, seed in (("cuboid", 3), ("sphere", 1), ("brush", 5), ("lesion", 8)):
        settings = AnomalySettings(
            kind=kind, size_mm=56, alpha=0.9, kernel_size=3, seed=seed, texture="scan"
        )
        placement = playground.preview(settings, (64, 52, 58))
        result = np.array(image, np.float32)
        result[placement.region] = placement.values
        label = np.zeros(image.shape, bool)
        label[placement.region] = placement.label
        panels.append((f"training: {kind}", result, label))
    for seed, kind in enumerate(OUTLIER_KINDS):
        result, label, _ = make_outlier(
            image,
            kind,
            100 + seed,
            foreground=mask,
            edges="hard",
            reflect_axis=2,
            centre=(64, 52, 58),
        )
        panels.append((f"validation: {kind.replace('_', ' ')}", result, label))

    fig, axes = plt.subplots(2, 5, figsize=(15, 6.6))
    axes = axes.ravel()
    original = image[64]
    axes[0].imshow(original, cmap="gray", vmin=low, vmax=high)
    axes[0].set_title("healthy scan (IXI048, 2 mm)", fontsize=10)
    for ax, (title, result, label) in zip(axes[1:], panels, strict=True):
        z = int(round(np.argwhere(label).mean(axis=0)[0])) if label.any() else 64
        ax.imshow(result[z], cmap="gray", vmin=low, vmax=high)
        if label[z].any():
            ax.contour(label[z], levels=[0.5], colors="#ff7f0e", linewidths=0.9)
        ax.set_title(title, fontsize=10)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle("Synthetic anomalies made by napari-medood (orange: label outline)", fontsize=12)
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "synthetic-anomalies.png", dpi=90)
    print(f"wrote {OUT / 'synthetic-anomalies.png'}")


if __name__ == "__main__":
    main()
