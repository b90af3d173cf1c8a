"""The any-contrast table: what each step towards one brain detector bought, in one command.

    python tools/make_any_contrast_table.py [--shared ../shared/data] [--work work/baselines]
                                            [--models brain-t1-unet,brain-any-unet-cpu,...]

For each model (NAME+tta: with flip test-time augmentation; and the intensity baseline): MOOD
pixel AP and sample AUROC on the synthetic test set of the two held-out IXI subjects (the
sample AUROC twice for a calibrated model: by its own top-100 mean and by its calibrated
flagged-volume score), and pixel AP on MS patients 07 and 19, T1 and FLAIR (the test sets
and cohorts of tools/make_baseline_table.py), plus the share of the MS brains each map puts
above 0.5 (a T1 model on a scan unlike its training scans lights up nearly everything), and
the share of the held-out healthy brains above the model's calibrated threshold once they
are blurred (1.4 mm) or resampled to 1 mm (1 % when smoothness does not matter).
Prints a Markdown table; the work folder keeps the reports.

The calibrated score's AUROC is measured on the subjects the models were calibrated on
(IXI039, IXI048: the only healthy scans outside training): their normal copies are the
calibration scans themselves, so that column flatters the calibrated score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


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
        "T1": discover_cases(ms_cohort(args.shared, args.work, "T1")),
        "FLAIR": discover_cases(ms_cohort(args.shared, args.work, "FLAIR")),
    }
    rows = [
        "| model | synthetic AP | sample AUROC, top-100 | sample AUROC, calibrated | "
        "MS T1 AP | MS FLAIR AP | MS T1 > 0.5 | MS FLAIR > 0.5 | healthy, blurred | "
        "healthy, 1 mm |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    softened = softened_healthy(held_out)
    for name in [*args.models.split(","), "intensity"]:
        model, tta = name.removesuffix("+tta"), name.endswith("+tta")
        options = DetectorOptions("cpu", extra_maps=False, gate=False, tta=tta)
        detector = Remembered(get_detector(model, options))
        calibrated = calibrated_score_reference(detector.card) is not None and (
            calibration_applies(detector.card, detector.made_with(True))
        )
        cells = []
        for key, cases in sets.items():
            result = evaluate(
                cases, DetectorPredictions(detector), options=EvalOptions(bootstrap=0)
            )
            if result.pixel.get("ap") is None:
                raise SystemExit(f"{name} on the {key} set: {result.settings['failed'][:1]}")
            cells.append(f"{result.pixel.get('ap'):.3f}")
            if key == "synthetic":
                own = result
                if calibrated:  # the same maps again (remembered), scored by the top-100 mean
                    own = evaluate(
                        cases,
                        DetectorPredictions(detector, score="uncalibrated"),
                        options=EvalOptions(bootstrap=0),
                    )
                cells.append(fmt(own.sample.get("auroc")))
                cells.append(fmt(result.sample.get("auroc")) if calibrated else "-")
        for key in ("T1", "FLAIR"):
            shares = []
            for case in sets[key]:
                result = detector.remembered[str(case.image)]
                brain = read_volume(case.image).data > 0
                shares.append(float(np.mean(result.anomaly_map.data[brain] > 0.5)))
            cells.append(f"{100 * np.mean(shares):.1f} %")
        for kind in ("blurred", "1 mm"):
            shares = []
            for volume, mask in softened[kind]:
                extras = detector.detector.predict(volume, mask).extras
                if "calibration" in extras:
                    shares.append(extras["calibration"]["flagged_share"])
            cells.append(f"{100 * np.mean(shares):.1f} %" if shares else "-")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
