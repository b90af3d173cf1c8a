"""The baseline table of docs/baselines.md, on the shared data, in one command.

    python tools/make_baseline_table.py [--shared ../shared/data] [--work work/baselines]

1. builds a synthetic test set from the two IXI subjects held out of brain-t1-unet's training
   (IXI039, IXI048; medood-synth's recipe: DLMUSE brain masks, the five FPI outlier kinds
   twice + one normal copy each, seed 1 -- the checkpoint was chosen on seed 0);
2. scores every detector (the shipped model and the baselines) on it, with thresholds
   calibrated on the set's normal cases;
3. scores every detector on MS patients 07 and 19 (Lesjak et al.), T1, T2 and FLAIR, against
   their consensus lesion masks, inside the brain (the images are brain-extracted);
4. writes docs/baselines.md and the shipped model's test metrics into its card; the full
   reports (report.md, plots, per-case CSV) stay in the work folder.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from napari_medood.detectors import DetectorOptions, available_models, get_detector
from napari_medood.evaluation import DetectorPredictions, EvalOptions, evaluate
from napari_medood.evaluation.report import write_report
from napari_medood.io import read_volume, write_nifti
from napari_medood.io.cohort import discover_cases
from napari_medood.synth.dataset import ValidationSetConfig, build_validation_set

REPO = Path(__file__).resolve().parents[1]
MS_FILES = {
    "T1": "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "T2": "T2_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "FLAIR": "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "T1POST": "T1POST_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
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
        rows.append(
            {
                "Name": f"{patient}_{modality}",
                "Path": str(image),
                "Label": str(shared / "open-ms-lesjak-mni" / patient / LESIONS),
                "Mask": str(mask.resolve()),
                "Anomalous": "1",
            }
        )
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

    synthetic = work / "ixi-held-out-synthetic"
    ixi = discover_cases(shared / "ixi-t1-2mm" / "t1", masks=shared / "ixi-t1-2mm" / "dlmuse")
    held_out = [c for c in ixi if c.name.startswith(("IXI039", "IXI048"))]
    build_validation_set(held_out, synthetic, ValidationSetConfig(seed=1, repeats=2))
    datasets = [
        (
            "ixi-held-out",
            "IXI T1 2 mm, held-out subjects, synthetic outliers (22 cases: 2 "
            "scans x 5 kinds x 2 + 2 normal)",
            discover_cases(synthetic),
        ),
        ("ms-t1", "MS patients 07 + 19, T1 1 mm", discover_cases(ms_cohort(shared, work, "T1"))),
        ("ms-t2", "MS patients 07 + 19, T2 1 mm", discover_cases(ms_cohort(shared, work, "T2"))),
        (
            "ms-flair",
            "MS patients 07 + 19, FLAIR 1 mm",
            discover_cases(ms_cohort(shared, work, "FLAIR")),
        ),
    ]
    card_metrics: dict = {}
    lines = [
        "# Detectors and baselines on the shared data",
        "",
        "Produced by `python tools/make_baseline_table.py` (see its docstring). Voxel metrics",
        "count every voxel inside the brain mask; AP is MOOD's pixel AP (all voxels of all",
        "cases pooled), AUPRC/vol the mean of per-volume APs, best Dice the oracle threshold",
        "sweep (mean over lesion cases); Dice @5 % is at the threshold that flags 5 % of the",
        "healthy voxels of the set's normal cases (synthetic set only: the shared data hold no",
        "healthy MS-protocol scans). Sample AUROC needs normal cases (synthetic set only).",
        "`NAME:residual` is a model's single-reconstruction residual from the same run",
        "(brain-t1-mhd: |x - r1| through the MHD post-processing) beside its default map.",
        "",
    ]
    for key, title, cases in datasets:
        lines += [
            f"## {title}",
            "",
            "| detector | pixel AP | AUROC | AUPRC/vol | best Dice | threshold | "
            "Dice @5 % FPR | sample AUROC |",
            "|---|---|---|---|---|---|---|---|",
        ]
        kept: dict[str, dict] = {}
        for name, variant in entries():
            label = name if variant is None else f"{name}:{variant}"
            out = work / "reports" / f"{key}_{label.replace(':', '_')}"
            if variant is None:
                detector = KeepingMaps(
                    get_detector(name, DetectorOptions("cpu", extra_maps=False, gate=False)),
                    kept.setdefault(name, {}),
                )
            else:  # the variant's map came with the default run: scored, not computed again
                detector = ReplayedVariant(
                    get_detector(
                        name, DetectorOptions("cpu", variant=variant, extra_maps=False, gate=False)
                    ),
                    kept[name],
                    variant,
                )
            result = evaluate(
                cases,
                DetectorPredictions(detector),
                options=EvalOptions(bootstrap=0),
            )
            card_metrics.setdefault(label, {})[key] = {
                "pixel_ap": result.pixel.get("ap"),
                "pixel_auroc": result.pixel.get("auroc"),
                "auprc_per_volume": result.pixel.get("auprc_per_volume_mean"),
                "best_dice": result.pixel.get("dice", {}).get("sweep", {}).get("dice_mean"),
                "sample_auroc": result.sample.get("auroc"),
                "cases": len(cases),
            }
            write_report(result, out, f"{label} on {title}")
            pixel, sample = result.pixel, result.sample
            dice = pixel.get("dice", {})
            lines.append(
                f"| {label} | {fmt(pixel.get('ap'))} | {fmt(pixel.get('auroc'))} | "
                f"{fmt(pixel.get('auprc_per_volume_mean'))} | "
                f"{fmt(dice.get('sweep', {}).get('dice_mean'))} | "
                f"{fmt(dice.get('sweep', {}).get('threshold'))} | "
                f"{fmt(dice.get('fpr5%', {}).get('dice_mean'))} | {fmt(sample.get('auroc'))} |"
            )
            print(lines[-1], flush=True)
        lines.append("")
    target = REPO / "docs" / "baselines.md"
    target.write_text("\n".join(lines))
    print(f"wrote {target}")
    write_card_metrics(card_metrics)


class KeepingMaps:
    """A detector that also keeps each result's other maps (``extras["maps"]``) by scan."""

    def __init__(self, detector, store: dict):
        self.detector, self.store = detector, store
        self.name, self.outputs = detector.name, detector.outputs
        self.score_info, self.card = detector.score_info, getattr(detector, "card", None)

    def predict(self, volume, mask=None, progress=None, cancelled=None):
        result = self.detector.predict(volume, mask, progress, cancelled)
        if "maps" in result.extras:
            self.store[str(volume.source)] = result
        return result


class ReplayedVariant:
    """A variant of a detector scored from the maps its default run kept (the same run,
    as the Detect panel shows both), so that it is not computed twice."""

    def __init__(self, detector, store: dict, variant: str):
        self.detector, self.store, self.variant = detector, store, variant
        self.name, self.outputs = detector.name, detector.outputs
        self.score_info, self.card = detector.score_info, getattr(detector, "card", None)

    def predict(self, volume, mask=None, progress=None, cancelled=None):
        from dataclasses import replace

        kept = self.store.get(str(volume.source))
        if kept is None:
            return self.detector.predict(volume, mask, progress, cancelled)
        values = kept.extras["maps"][self.variant]
        scores = kept.extras.get(f"{self.variant}_scores", {})
        return replace(
            kept,
            anomaly_map=kept.anomaly_map.with_data(values),
            score=scores.get("mean_in_mask", kept.score),
        )


def entries() -> list[tuple[str, str | None]]:
    """Every detector a user can pick that makes a map, and each shipped model's other
    variants (the MHD model's single-reconstruction residual), as ``(name, variant)``.
    Score-only models (the feature-OOD gates) have their own tables (make_ood_table.py)."""
    from napari_medood.models.checkpoint import Checkpoint, bundled_models
    from napari_medood.registry import declared_outputs, declared_variants, get_family

    out: list[tuple[str, str | None]] = []
    shipped = bundled_models()
    for name in available_models():
        if name in shipped:
            family = get_family(Checkpoint.open(name).family)
            if "map" not in declared_outputs(family):
                continue
            out.append((name, None))
            variants = declared_variants(family)
            out += [(name, variant) for variant in variants[1:]]  # the first is the default
        else:
            out.append((name, None))
    return out


def write_card_metrics(metrics: dict) -> None:
    """Put each shipped model's test numbers into its card, next to its variants', the
    baselines' and the other shipped models'."""
    import json

    from napari_medood.models.checkpoint import CARD_NAME, bundled_models

    shipped = bundled_models()
    baselines = {
        name: values for name, values in metrics.items() if name.split(":")[0] not in shipped
    }
    for name, folder in shipped.items():
        if name not in metrics:
            continue
        card_path = folder / CARD_NAME
        card = json.loads(card_path.read_text())
        card.setdefault("metrics", {})["test"] = {
            "command": "python tools/make_baseline_table.py",
            "sets": {
                "ixi-held-out": "synthetic FPI outliers on IXI039/IXI048 (held out of "
                "training), seed 1",
                "ms-t1": "MS patients 07, 19 (Lesjak et al.), T1, consensus lesions",
                "ms-t2": "same patients, T2",
                "ms-flair": "same patients, FLAIR",
            },
            "model": metrics[name],
            "variants": {
                label.split(":", 1)[1]: values
                for label, values in metrics.items()
                if label.startswith(f"{name}:")
            },
            "baselines": baselines,
            "other_models": {
                label: values
                for label, values in metrics.items()
                if label.split(":")[0] in shipped and label.split(":")[0] != name
            },
        }
        card_path.write_text(json.dumps(card, indent=1) + "\n")
        print(f"updated {card_path}")


if __name__ == "__main__":
    main()
