"""The any-contrast table: what each step towards one brain detector bought, in one command.

    python tools/make_any_contrast_table.py [--shared ../shared/data] [--work work/baselines]
                                            [--models brain-t1-unet,brain-any-unet-cpu,...]

For each model (NAME+tta: with flip test-time augmentation; and the intensity baseline): MOOD
pixel AP and sample AUROC on the synthetic test set of the two held-out IXI subjects (the
sample AUROC twice for a calibrated model: by its own top-100 mean and by its calibrated
flagged-volume score), and pixel AP on MS patients 07 and 19, T1, T2 and FLAIR (the test
sets and cohorts of tools/make_baseline_table.py), plus the share of the MS brains each map
puts above 0.5 (a T1 model on a scan unlike its training scans lights up nearly everything)
and above the model's calibrated threshold (the MS lesions fill 0.1 % (07) and 4.6 % (19) of
the brain), and three shares of healthy brain flagged:
- "as it is": a threshold calibrated on one held-out subject (1 % of its brain voxels),
  applied to the other, both ways, averaged; at a model's own calibration both subjects
  give 1 % by construction, so this is what a calibration does on a brain it has not seen;
- "blurred" and "1 mm": the share of the held-out brains above the model's calibrated
  threshold once they are blurred (1.4 mm) or resampled to 1 mm (1 % when smoothness does
  not matter).
Prints a Markdown table, writes WORK/any-contrast.json with every figure and each shipped
model's row into its card (``metrics.any_contrast_table``); the work folder keeps the
reports.

The calibrated score's AUROC is measured on the subjects the models were calibrated on
(IXI039, IXI048: the only healthy scans outside training): their normal copies are the
calibration scans themselves, so that column flatters the calibrated score.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MS_CONTRASTS = ("T1", "T2", "FLAIR")


class Remembered:
    """A detector whose results are kept by scan, so a second scoring of the same maps (the
    other sample score, the share above 0.5) does not run it again."""

    def __init__(self, detector):
        self.detector, self.remembered = detector, {}
        self.name, self.outputs = detector.name, detector.outputs
        self.score_info, self.card = detector.score_info, detector.card
        self.describe_score, self.made_with = detector.describe_score, detector.made_with

    def predict(self, volume, mask=None, progress=None, cancelled=None):
        key = str(volume.source)
        if key not in self.remembered:
            self.remembered[key] = self.detector.predict(volume, mask, progress, cancelled)
        return self.remembered[key]


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def softened_healthy(cases) -> dict[str, list]:
    """The held-out healthy scans as a smoother scan shows a brain: blurred (a Gaussian of
    0.7 voxels, 1.4 mm) and brought to 1 mm (linear interpolation, as a registration
    resamples), each with its brain mask; a map flagging much of them above the threshold
    calibrated on the originals takes smoothness for abnormality."""
    from scipy import ndimage

    from napari_medood.io import read_volume
    from napari_medood.io.volume import Volume
    from napari_medood.preprocessing.masks import load_mask

    out: dict[str, list] = {"blurred": [], "1 mm": []}
    for case in cases:
        volume = read_volume(case.image)
        mask = load_mask(case.mask, volume.grid)
        data = volume.data.astype(np.float32)
        out["blurred"].append((volume.with_data(ndimage.gaussian_filter(data, 0.7)), mask))
        affine = volume.affine.copy()
        affine[:3, :3] /= 2
        affine[:3, 3] -= volume.affine[:3, :3] @ np.full(3, 0.25)  # the same field of view
        fine = Volume(ndimage.zoom(data, 2, order=1), affine, volume.source, dict(volume.meta))
        out["1 mm"].append((fine, ndimage.zoom(mask.astype(np.uint8), 2, order=0) > 0))
    return out


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from make_baseline_table import ms_cohort

    from napari_medood.detectors import DetectorOptions, get_detector
    from napari_medood.detectors.calibration import (
        calibrated_score_reference,
        calibration_applies,
    )
    from napari_medood.evaluation import DetectorPredictions, EvalOptions, evaluate
    from napari_medood.io import read_volume
    from napari_medood.io.cohort import discover_cases
    from napari_medood.synth.dataset import ValidationSetConfig, build_validation_set

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=REPO / "work" / "baselines")
    parser.add_argument(
        "--models", default="brain-t1-unet,brain-any-unet-cpu,brain-any-unet-cpu+tta"
    )
    parser.add_argument(
        "--fpr", type=float, default=0.01, help="healthy voxel share of the cross-subject column"
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    synthetic = args.work / "ixi-held-out-synthetic"
    ixi = args.shared / "ixi-t1-2mm"
    held_out = [
        c
        for c in discover_cases(ixi / "t1", masks=ixi / "dlmuse")
        if c.name.startswith(("IXI039", "IXI048"))
    ]
    build_validation_set(held_out, synthetic, ValidationSetConfig(seed=1, repeats=2))
    sets = {
        "synthetic": discover_cases(synthetic),
        **{
            contrast: discover_cases(ms_cohort(args.shared, args.work, contrast))
            for contrast in MS_CONTRASTS
        },
    }
    rows = [
        "| model | synthetic AP | sample AUROC, top-100 | sample AUROC, calibrated | "
        "MS T1 AP | MS T2 AP | MS FLAIR AP | MS T1 / T2 / FLAIR > 0.5 | "
        "MS T1 / T2 / FLAIR > calibrated | healthy, as it is | healthy, blurred | "
        "healthy, 1 mm |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    figures: dict[str, dict] = {}
    softened = softened_healthy(held_out)
    for name in [*args.models.split(","), "intensity"]:
        model, tta = name.removesuffix("+tta"), name.endswith("+tta")
        options = DetectorOptions("cpu", extra_maps=False, gate=False, tta=tta)
        detector = Remembered(get_detector(model, options))
        calibrated = calibrated_score_reference(detector.card) is not None and (
            calibration_applies(detector.card, detector.made_with(True))
        )
        cells, measured = [], {}
        for key, cases in sets.items():
            result = evaluate(
                cases, DetectorPredictions(detector), options=EvalOptions(bootstrap=0)
            )
            if result.pixel.get("ap") is None:
                raise SystemExit(f"{name} on the {key} set: {result.settings['failed'][:1]}")
            measured[f"{key}_pixel_ap"] = result.pixel["ap"]
            cells.append(f"{result.pixel.get('ap'):.3f}")
            if key == "synthetic":
                own = result
                if calibrated:  # the same maps again (remembered), scored by the top-100 mean
                    own = evaluate(
                        cases,
                        DetectorPredictions(detector, score="uncalibrated"),
                        options=EvalOptions(bootstrap=0),
                    )
                measured["sample_auroc_top100"] = own.sample.get("auroc")
                measured["sample_auroc_calibrated"] = (
                    result.sample.get("auroc") if calibrated else None
                )
                cells.append(fmt(own.sample.get("auroc")))
                cells.append(fmt(result.sample.get("auroc")) if calibrated else "-")
        above, above_calibrated = [], []
        for key in MS_CONTRASTS:
            shares, calibrated_shares = [], []
            for case in sets[key]:
                result = detector.remembered[str(case.image)]
                brain = read_volume(case.image).data > 0
                shares.append(float(np.mean(result.anomaly_map.data[brain] > 0.5)))
                if "calibration" in result.extras:
                    calibrated_shares.append(result.extras["calibration"]["flagged_share"])
            measured[f"ms_{key}_brain_above_0.5"] = float(np.mean(shares))
            above.append(f"{100 * np.mean(shares):.1f}")
            if calibrated_shares:
                share = float(np.mean(calibrated_shares))
                measured[f"ms_{key}_brain_above_calibrated"] = share
                above_calibrated.append(f"{100 * share:.1f}")
        cells.append(" / ".join(above) + " %")
        cells.append(" / ".join(above_calibrated) + " %" if above_calibrated else "-")
        measured["healthy_other_subject_flagged_share"] = cross_subject_share(
            detector.detector, held_out, args.fpr
        )
        cells.append(f"{100 * measured['healthy_other_subject_flagged_share']:.1f} %")
        for kind in ("blurred", "1 mm"):
            shares = []
            for volume, mask in softened[kind]:
                extras = detector.detector.predict(volume, mask).extras
                if "calibration" in extras:
                    shares.append(extras["calibration"]["flagged_share"])
            measured[f"healthy_{kind.replace(' ', '')}_flagged_share"] = (
                float(np.mean(shares)) if shares else None
            )
            cells.append(f"{100 * np.mean(shares):.1f} %" if shares else "-")
        figures[name] = measured
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    print("\n".join(rows))
    (args.work / "any-contrast.json").write_text(json.dumps(figures, indent=1) + "\n")
    write_cards(figures, args.models)


def write_cards(figures: dict, models: str) -> None:
    """Each shipped model's row into its card (``metrics.any_contrast_table``), with the
    command that measured it."""
    from napari_medood.io.atomic import write_text_atomic
    from napari_medood.models.checkpoint import bundled_models

    shipped = bundled_models()
    for name, measured in figures.items():
        if name not in shipped:
            continue
        card_path = shipped[name] / "card.json"
        card = json.loads(card_path.read_text())
        card.setdefault("metrics", {})["any_contrast_table"] = {
            "command": f"python tools/make_any_contrast_table.py --models {models}",
            **{key: None if value is None else round(value, 4) for key, value in measured.items()},
            "note": "synthetic = outliers in the two held-out IXI subjects, also the "
            "calibration scans; MS = patients 07 and 19, 1 mm MNI; healthy, as it is = a "
            "threshold calibrated on one held-out subject applied to the other; blurred / "
            "1mm = share of the held-out brains above the calibrated threshold once blurred "
            "by 1.4 mm or resampled to 1 mm",
        }
        write_text_atomic(card_path, json.dumps(card, indent=1) + "\n")
        print(f"updated {card_path}")


def cross_subject_share(detector, cases, fpr: float) -> float:
    """The share of one healthy brain above a threshold calibrated (``fpr`` of the brain
    voxels) on another, both ways round, averaged: how a calibration holds on a brain it
    has not seen (on its own calibration scans every model flags ``fpr`` by construction)."""
    from napari_medood.io import read_volume
    from napari_medood.preprocessing.masks import load_mask

    inside = []
    for case in cases:
        volume = read_volume(case.image)
        mask = load_mask(case.mask, volume.grid)
        inside.append(detector.predict(volume, mask).anomaly_map.data[mask])
    shares = []
    for index, values in enumerate(inside):
        threshold = float(np.quantile(values, 1.0 - fpr, method="higher"))
        others = [v for other, v in enumerate(inside) if other != index]
        shares += [float(np.mean(v > threshold)) for v in others]
    return float(np.mean(shares))


if __name__ == "__main__":
    main()
