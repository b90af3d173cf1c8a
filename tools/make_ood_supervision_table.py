"""Issue 13's with/without table and figure: what Med-OoD's anomaly-free supervision changes.

    python tools/make_ood_supervision_table.py [--shared ../shared/data] [--work work/ood13]
        [--unets brain-t1-unet,work/ood13/unet-without/run/best,work/ood13/with/run/best]
        [--more-unets brain-any-unet-gpu] [--seeds 0,1] [--skip-training]

1. The segmenter pair: scans with real MS lesion shapes implanted into six IXI brains
   (tools/make_lesion_training_set.py), ``medood-train seg`` without OoD supervision (the
   baseline), then again from scratch with the same recipe plus ``--ood-supervision auto``
   (lesions removed, blacked out and inpainted, and the six brains as they are; kept where
   the baseline fires); one pair per seed, since a single run says little on six brains.
   Runs that finished are not repeated.
2. One ``medood-eval`` run per model (the segmenters and the ``--unets``) on the two real MS
   patients' T1 scans, calibrated on the two held-out healthy IXI brains, with a fixed
   threshold: 0.5 for the segmenters, brain-t1-unet's calibrated threshold for the U-Nets,
   and each of ``--more-unets`` at its own calibrated threshold.
3. The table (markdown, printed and written to WORK/table.md) and the figure
   docs/images/ood-supervision.png (patient 19: each pair's maps and where they disagree).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MS_T1 = "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
MS_LABEL = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
PATIENTS = ("patient07", "patient19")


def run(command: list[str]) -> None:
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def ms_cohort(shared: Path, work: Path) -> Path:
    """The MS patients' T1 scans with their lesions, brain = the non-zero voxels (the scans
    are brain-extracted)."""
    from napari_medood.io.readers import read_volume
    from napari_medood.io.volume import Volume
    from napari_medood.io.writers import write_nifti

    table = work / "ms-t1.csv"
    rows = []
    for patient in PATIENTS:
        scan = shared / "open-ms-lesjak-mni" / patient / MS_T1
        mask = work / "ms-masks" / f"{patient}_brain.nii.gz"
        if not mask.exists():
            volume = read_volume(scan)
            write_nifti(Volume((volume.data > 0).astype(np.uint8), volume.affine), mask, "labels")
        rows.append([patient, scan, mask, shared / "open-ms-lesjak-mni" / patient / MS_LABEL])
    with open(table, "w", newline="") as handle:
        csv.writer(handle).writerows([["Name", "Path", "Mask", "Label"], *rows])
    return table


def train_segmenters(data: Path, work: Path, seed: int = 0) -> dict[str, Path]:
    """The segmenter pair of one seed (folders ``seg-without``/``seg-with``, ``-s<seed>``
    after the first): the baseline, then the same recipe with OoD supervision that it
    filters."""
    suffix = f"-s{seed}" if seed else ""
    common = [
        "--config",
        str(REPO / "configs" / "brain-t1-seg.yaml"),
        "--set",
        f"train={data / 'train.csv'}",
        "--set",
        f"val={data / 'val.csv'}",
        "--set",
        f"seed={seed}",
    ]
    baseline, with_ood = work / f"seg-without{suffix}", work / f"seg-with{suffix}"
    if not (baseline / "best" / "card.json").exists():
        run([str(BIN / "medood-train"), "seg", *common, "--out", str(baseline)])
    if not (with_ood / "best" / "card.json").exists():
        run(
            [
                str(BIN / "medood-train"),
                "seg",
                *common,
                "--out",
                str(with_ood),
                "--ood-supervision",
                "auto",
                "--set",
                f"ood_baseline={baseline / 'best'}",
                "--set",
                f"ood_healthy={data / 'ood_healthy.csv'}",
                "--set",
                "name=brain-t1-seg-ood",
            ]
        )
    label = f" (seed {seed})" if seed else ""
    return {f"segmenter{label}": baseline / "best", f"segmenter + OoD{label}": with_ood / "best"}


def evaluate(model: str, cohort: Path, healthy: Path, threshold: float, out: Path) -> dict:
    if not (out / "metrics.json").exists():
        run(
            [
                str(BIN / "medood-eval"),
                "--model",
                model,
                str(cohort),
                "--healthy",
                str(healthy),
                "--thresholds",
                f"{threshold:g}",
                "--fprs",
                "0.01",
                "--bootstrap",
                "0",
                "--device",
                "cpu",
                "-o",
                str(out),
            ]
        )
    return json.loads((out / "metrics.json").read_text())


def ood_record(model: str) -> str:
    from napari_medood.models.checkpoint import Checkpoint

    record = Checkpoint.open(model).card.get("training", {}).get("ood_supervision")
    if not record:
        return "none"
    return f"{record['hard']}/{record['candidates']} hard, share {record['share']:.2f}"


def row(name: str, model: str, metrics: dict, threshold: float) -> str:
    pixel = metrics["pixel"]
    fixed = pixel["fixed"][f"at{threshold:g}"]
    dice = pixel.get("dice", {})
    calibrated = dice.get("fpr1%", {}).get("dice_mean")
    flagged = list(fixed["healthy_flagged_ml"].values())
    return (
        f"| {name} | {ood_record(model)} | {pixel['ap']:.3f} | "
        f"{pixel.get('auprc_per_volume_mean') or 0:.3f} | {threshold:.3f} | "
        f"{fixed['dice_mean']:.3f} | {' / '.join(f'{v:.1f}' for v in flagged)} | "
        f"{calibrated:.3f} |"
    )


def figure(pairs: list[tuple[str, str, str, str]], shared: Path, thresholds: dict, out: Path):
    """Patient 19, the axial slice with the most lesion: per pair, the scan with the lesions,
    both maps (their threshold outlined), and where they disagree."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from napari_medood._napari._layers import to_display
    from napari_medood.detectors import get_detector
    from napari_medood.evaluation.compare import compare_maps
    from napari_medood.io import read_volume

    folder = shared / "open-ms-lesjak-mni" / "patient19"
    scan, lesions = read_volume(folder / MS_T1), read_volume(folder / MS_LABEL)
    brain = scan.data > 0
    image, outline = to_display(scan)[0], to_display(lesions)[0] > 0.5
    k = int(np.argmax(outline.sum(axis=(1, 2))))
    top = float(np.percentile(image[image > 0], 99.5))
    fig, axes = plt.subplots(len(pairs), 4, figsize=(12.8, 3.3 * len(pairs)), squeeze=False)
    colours = ListedColormap(["#00000000", "#ff4136", "#0074d9", "#ffdc00"])
    for r, (name_a, model_a, name_b, model_b) in enumerate(pairs):
        threshold = thresholds[model_a]
        maps = []
        for model in (model_a, model_b):
            result = get_detector(model, device="cpu", gate=False).predict(scan, brain)
            maps.append(result.anomaly_map.data)
        comparison = compare_maps(maps[0], maps[1], threshold, threshold, brain, scan.affine)
        summary = comparison.summary
        panels = [
            (image[k], "gray", (0, top), f"patient 19 T1 ({name_a.split()[0]} pair)"),
            (to_display(scan.with_data(maps[0]))[0][k], "inferno", (0, 1), name_a),
            (to_display(scan.with_data(maps[1]))[0][k], "inferno", (0, 1), name_b),
            (
                to_display(scan.with_data(comparison.disagreement))[0][k],
                colours,
                (0, 3),
                f"red: only without ({summary['a_only_ml']:.0f} ml); "
                f"blue: only with ({summary['b_only_ml']:.0f} ml)",
            ),
        ]
        for c, (picture, cmap, limits, title) in enumerate(panels):
            axis = axes[r, c]
            if c == 3:
                axis.imshow(image[k], cmap="gray", origin="lower", vmin=0, vmax=top)
            axis.imshow(picture, cmap=cmap, origin="lower", vmin=limits[0], vmax=limits[1])
            axis.contour(outline[k], levels=[0.5], colors="#2ecc40", linewidths=0.7)
            if c in (1, 2):
                axis.contour(picture, levels=[threshold], colors="#00e5ff", linewidths=0.5)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(title, fontsize=8)
    fig.suptitle(
        "Without and with anomaly-free supervision (Med-OoD): green, consensus lesions; cyan, "
        "each pair's fixed threshold",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    from napari_medood.models.checkpoint import Checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=REPO / "work" / "ood13")
    parser.add_argument(
        "--unets",
        default="brain-t1-unet,work/ood13/unet-without/run/best,work/ood13/with/run/best",
        help="U-Nets to compare: the shipped one, then fine-tuned without and with OoD",
    )
    parser.add_argument(
        "--more-unets",
        default="",
        help="more U-Nets (shipped names or folders), a row each, each at its own calibrated "
        "threshold",
    )
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument(
        "--seeds",
        default="0,1",
        help="segmenter pairs to train, one per seed (the figure: the first)",
    )
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data = work / "seg-data"
    if not (data / "train.csv").exists():
        run(
            [
                sys.executable,
                str(REPO / "tools" / "make_lesion_training_set.py"),
                "--out",
                str(data),
            ]
        )
    models: dict[str, Path] = {}
    for seed in () if args.skip_training else [int(v) for v in args.seeds.split(",") if v]:
        models.update(train_segmenters(data, work, seed))
    cohort = ms_cohort(args.shared, work)
    healthy = data / "healthy.csv"
    unets = [u for u in args.unets.split(",") if u]
    unet_threshold = Checkpoint.open(unets[0]).card["calibration"]["voxel_threshold"]
    names = ["U-Net (shipped)", "U-Net fine-tuned", "U-Net fine-tuned + OoD"]
    thresholds = {str(m): 0.5 for m in models.values()}
    lines = [
        "| model | OoD supervision | MS T1 pixel AP | AUPRC per patient | fixed threshold | "
        "Dice there | healthy ml there (IXI039 / IXI048) | Dice at 1 % healthy FPR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    more = [m for m in args.more_unets.split(",") if m]
    for model in more:  # read at their own calibrations, not the first U-Net's
        thresholds[model] = Checkpoint.open(model).card["calibration"]["voxel_threshold"]
    rows = [*models.items(), *zip(names, unets, strict=False)]
    rows += [(f"U-Net `{Path(m).name}`", m) for m in more]
    for name, model in rows:
        threshold = thresholds.get(str(model), unet_threshold)
        thresholds[str(model)] = threshold
        slug = name.lower().replace(" ", "-").replace("(", "").replace(")", "").replace("+", "plus")
        metrics = evaluate(str(model), cohort, healthy, threshold, work / "eval" / slug)
        lines.append(row(name, str(model), metrics, threshold))
    table = "\n".join(lines)
    (work / "table.md").write_text(table + "\n")
    print(table)
    pairs = []
    if models:
        pairs.append(
            (
                "segmenter without",
                str(models["segmenter"]),
                "segmenter with OoD",
                str(models["segmenter + OoD"]),
            )
        )
    if len(unets) == 3:
        pairs.append(("U-Net fine-tuned without", unets[1], "U-Net fine-tuned with OoD", unets[2]))
    if pairs:
        figure(pairs, args.shared, thresholds, REPO / "docs" / "images" / "ood-supervision.png")


if __name__ == "__main__":
    main()
