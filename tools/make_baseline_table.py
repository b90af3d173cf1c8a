"""The baseline table of docs/baselines.md, on the shared data, in one command.

    python tools/make_baseline_table.py [--shared ../shared/data] [--work work/baselines]

1. builds the IXI synthetic validation set (medood-synth's recipe: all 8 IXI T1 scans, their
   DLMUSE brain masks, the five FPI outlier kinds + one normal copy each, seed 0);
2. scores every built-in detector on it (thresholds calibrated on the set's normal cases);
3. scores every built-in detector on MS patients 07 and 19 (Lesjak et al.), T1 and FLAIR,
   against their consensus lesion masks, inside the brain (the images are brain-extracted);
4. writes docs/baselines.md; the full reports (report.md, plots, per-case CSV) stay in the work
   folder.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from napari_medood.detectors import DETECTORS, get_detector
from napari_medood.evaluation import DetectorPredictions, EvalOptions, evaluate
from napari_medood.evaluation.report import write_report
from napari_medood.io import read_volume, write_nifti
from napari_medood.io.cohort import discover_cases
from napari_medood.synth.dataset import ValidationSetConfig, build_validation_set

REPO = Path(__file__).resolve().parents[1]
MS_FILES = {
    "T1": "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "FLAIR": "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
}
LESIONS = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"


def ms_cohort(shared: Path, work: Path, modality: str) -> Path:
    """A CSV cohort of the two MS patients: image, lesion label, brain mask (image > 0)."""
    folder = work / f"ms-{modality.lower()}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for patient in ("patient07", "patient19"):
        image = shared / "open-ms-lesjak-mni" / patient / MS_FILES[modality]
        mask = folder / f"{patient}_{modality}_brainmask.nii.gz"
        if not mask.exists():
            volume = read_volume(image)
            write_nifti(volume.with_data((volume.data > 0).astype(np.uint8)), mask, "labels")
        rows.append({"Name": f"{patient}_{modality}", "Path": str(image),
                     "Label": str(shared / "open-ms-lesjak-mni" / patient / LESIONS),
                     "Mask": str(mask), "Anomalous": "1"})
    table = folder / "cohort.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return table


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=REPO / "work" / "baselines")
    args = parser.parse_args()
    shared, work = args.shared, args.work
    work.mkdir(parents=True, exist_ok=True)

    synthetic = work / "ixi-synthetic"
    ixi = discover_cases(shared / "ixi-t1-2mm" / "t1", masks=shared / "ixi-t1-2mm" / "dlmuse")
    build_validation_set(ixi, synthetic, ValidationSetConfig(seed=0))
    datasets = [
        ("ixi-synthetic", "IXI T1 2 mm, synthetic outliers (48 cases: 8 scans x 5 kinds + 8 "
                          "normal)", discover_cases(synthetic)),
        ("ms-t1", "MS patients 07 + 19, T1 1 mm", discover_cases(ms_cohort(shared, work, "T1"))),
        ("ms-flair", "MS patients 07 + 19, FLAIR 1 mm",
         discover_cases(ms_cohort(shared, work, "FLAIR"))),
    ]
    lines = [
        "# Baselines on the shared data",
        "",
        "Produced by `python tools/make_baseline_table.py` (see its docstring). Voxel metrics",
        "count every voxel inside the brain mask; AP is MOOD's pixel AP (all voxels of all",
        "cases pooled), AUPRC/vol the mean of per-volume APs, best Dice the oracle threshold",
        "sweep (mean over lesion cases); Dice @5 % is at the threshold that flags 5 % of the",
        "healthy voxels of the set's normal cases (synthetic set only: the shared data hold no",
        "healthy MS-protocol scans). Sample AUROC needs normal cases (synthetic set only).",
        "",
    ]
    for key, title, cases in datasets:
        lines += [f"## {title}", "",
                  "| detector | pixel AP | AUROC | AUPRC/vol | best Dice | threshold | "
                  "Dice @5 % FPR | sample AUROC |",
                  "|---|---|---|---|---|---|---|---|"]
        for name in DETECTORS:
            out = work / "reports" / f"{key}_{name}"
            result = evaluate(cases, DetectorPredictions(get_detector(name)),
                              options=EvalOptions(bootstrap=0))
            write_report(result, out, f"{name} on {title}")
            pixel, sample = result.pixel, result.sample
            dice = pixel.get("dice", {})
            lines.append(
                f"| {name} | {fmt(pixel.get('ap'))} | {fmt(pixel.get('auroc'))} | "
                f"{fmt(pixel.get('auprc_per_volume_mean'))} | "
                f"{fmt(dice.get('sweep', {}).get('dice_mean'))} | "
                f"{fmt(dice.get('sweep', {}).get('threshold'))} | "
                f"{fmt(dice.get('fpr5%', {}).get('dice_mean'))} | {fmt(sample.get('auroc'))} |")
            print(lines[-1], flush=True)
        lines.append("")
    target = REPO / "docs" / "baselines.md"
    target.write_text("\n".join(lines))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
