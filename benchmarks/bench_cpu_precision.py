"""The CPU path at ``--precision auto`` against float32, in one run (issue 9).

    python benchmarks/bench_cpu_precision.py [--shared ../shared/data] [--work /tmp/bench-precision]

1. Speed against plain MONAI: ``bench_inference.py`` on a 1 mm brain that fills its windows
   (MS patient 19) and on a 1 mm whole head (IXI048 with its brain mask), napari-medood at
   ``auto`` against MONAI's ``sliding_window_inference`` in float32, same network, same
   96^3 windows (each method in a fresh process; peak RSS of each).
2. Accuracy of the shipped model at ``auto`` against float32 on the sets the project scores
   it on: synthetic outliers in the two IXI subjects held out of its training (seed 1, as
   docs/baselines.md) and the two MS patients' T1 and FLAIR against their lesion masks:
   pixel AP (MOOD semantics) and the largest and mean map difference.
3. End to end on the command line (a fresh process each, imports included): the README's
   main command (the 2 mm sample), a 1 mm brain (MS patient 19's T1) and a 1 mm whole head
   (IXI048 resampled to 1 mm, with its brain mask), at float32 and at auto, with peak RSS.

Ends with one line: ``vs_plain_monai=<smallest speed-up> ap_delta=<largest |delta AP|>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MS_FILES = {
    "T1": "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "FLAIR": "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
}
LESIONS = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
HELD_OUT = ("IXI039-HH-1261", "IXI048-HH-1326")


def bench_inference(volume: str) -> dict:
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "bench_inference.py"),
        "--device",
        "cpu",
        "--batch",
        "1",
        "--precision",
        "auto",
        "--volume",
        volume,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def ms_csv(shared: Path, work: Path, modality: str) -> Path:
    from napari_medood.io import read_volume, write_nifti

    rows = ["Name,Path,Label,Mask,Anomalous"]
    for patient in ("patient07", "patient19"):
        image = shared / "open-ms-lesjak-mni" / patient / MS_FILES[modality]
        mask = work / f"{patient}_{modality}_brainmask.nii.gz"
        if not mask.exists():
            volume = read_volume(image)
            write_nifti(volume.with_data((volume.data > 0).astype(np.uint8)), mask, "labels")
        label = shared / "open-ms-lesjak-mni" / patient / LESIONS
        rows.append(f"{patient}_{modality},{image},{label},{mask},1")
    table = work / f"ms-{modality.lower()}.csv"
    table.write_text("\n".join(rows) + "\n")
    return table


def synthetic_set(shared: Path, work: Path) -> Path:
    from napari_medood.io.cohort import discover_cases
    from napari_medood.synth.dataset import ValidationSetConfig, build_validation_set

    ixi = shared / "ixi-t1-2mm"
    cases = [
        c for c in discover_cases(ixi / "t1", masks=ixi / "dlmuse") if c.name.startswith(HELD_OUT)
    ]
    out = work / "synthetic"
    build_validation_set(cases, out, ValidationSetConfig(repeats=2, seed=1))
    return out


def accuracy(sets: dict[str, list], precision: str) -> tuple[dict, dict]:
    """Pixel AP per set, and the maps (for the differences)."""
    from napari_medood.detectors import get_detector
    from napari_medood.evaluation import DetectorPredictions, EvalOptions, evaluate

    detector = get_detector("brain-t1-unet", device="cpu", precision=precision)
    maps: dict[str, np.ndarray] = {}

    class Keep(DetectorPredictions):
        def __call__(self, case):
            prediction = super().__call__(case)
            maps[case.name] = prediction.anomaly_map
            return prediction

    aps = {}
    for name, cases in sets.items():
        result = evaluate(cases, Keep(detector), options=EvalOptions(bootstrap=0, fprs=()))
        aps[name] = result.pixel.get("ap")
    return aps, maps


def end_to_end(arguments: list[str], precision: str) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one medood-predict run in a fresh process. GNU time
    measures the RSS: a child forked straight from this big process would count this
    process's pages until it execs."""
    command = [
        "/usr/bin/time",
        "-f",
        "%M",
        str(Path(sys.executable).with_name("medood-predict")),
        "--precision",
        precision,
        "--overwrite",
        *arguments,
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return seconds, int(done.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-precision"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from napari_medood.execution import resolve_precision
    from napari_medood.io import read_volume, write_nifti
    from napari_medood.io.cohort import discover_cases
    from napari_medood.preprocessing import resample_to_spacing

    auto = resolve_precision("auto", "cpu")
    print(f"--precision auto on this CPU is {auto}", flush=True)

    # 1. against plain MONAI
    speed = {}
    for volume in ("ms-brain", "ixi-head"):
        speed[volume] = bench_inference(volume)
        r = speed[volume]
        print(
            f"{volume}: {r['speedup']:.2f}x plain MONAI float32; map difference max "
            f"{r['max_diff']:.2g}, mean {r['mean_diff']:.2g}; peak RSS {r['peak_rss_mib']:.0f} "
            f"MiB (MONAI {r['monai_peak_rss_mib']:.0f} MiB)",
            flush=True,
        )

    # 2. accuracy of the shipped model
    sets = {
        "synthetic (IXI039, IXI048, seed 1)": discover_cases(synthetic_set(args.shared, args.work)),
        "MS T1": discover_cases(ms_csv(args.shared, args.work, "T1")),
        "MS FLAIR": discover_cases(ms_csv(args.shared, args.work, "FLAIR")),
    }
    reference, reference_maps = accuracy(sets, "float32")
    reduced, reduced_maps = accuracy(sets, "auto")
    deltas = {}
    print("| set | pixel AP float32 | pixel AP auto | delta |")
    print("|---|---|---|---|")
    for name in sets:
        deltas[name] = reduced[name] - reference[name]
        print(f"| {name} | {reference[name]:.4f} | {reduced[name]:.4f} | {deltas[name]:+.4f} |")
    differences = np.concatenate(
        [np.abs(reduced_maps[k] - reference_maps[k]).ravel() for k in reference_maps]
    )
    print(
        f"maps of {len(reference_maps)} scans: |auto - float32| max {differences.max():.3f}, "
        f"99.9th percentile {np.percentile(differences, 99.9):.4f}, mean {differences.mean():.5f}",
        flush=True,
    )

    # 3. end to end on the command line
    sample = REPO / "src" / "napari_medood" / "samples"
    ms_t1 = args.shared / "open-ms-lesjak-mni" / "patient19" / MS_FILES["T1"]
    ixi = args.shared / "ixi-t1-2mm"
    head = args.work / "ixi048_t1_1mm.nii.gz"
    head_mask = args.work / "ixi048_brainmask_1mm.nii.gz"
    if not head.exists():
        write_nifti(
            resample_to_spacing(read_volume(ixi / "t1" / "IXI048-HH-1326-T1_ds.nii.gz"), 1.0), head
        )
        parcels = read_volume(ixi / "dlmuse" / "IXI048-HH-1326-T1_ds_DLMUSE.nii.gz")
        mask = resample_to_spacing(parcels, 1.0, "nearest")
        write_nifti(mask.with_data((mask.data > 0).astype(np.uint8)), head_mask, "labels")
    runs = {
        "README main command (2 mm sample)": [
            "--mask",
            str(sample / "ixi048_brainmask_2mm.nii.gz"),
            str(sample / "ixi048_t1_2mm.nii.gz"),
            str(args.work / "out-main"),
        ],
        "1 mm brain (MS patient 19 T1)": [str(ms_t1), str(args.work / "out-ms")],
        "1 mm whole head (IXI048, brain mask)": [
            "--mask",
            str(head_mask),
            str(head),
            str(args.work / "out-head"),
        ],
    }
    print("| medood-predict | float32 | auto | speed-up | peak RSS (auto) |")
    print("|---|---|---|---|---|")
    for name, arguments in runs.items():
        slow, _ = end_to_end(arguments, "float32")
        fast, rss = end_to_end(arguments, "auto")
        print(
            f"| {name} | {slow:.1f} s | {fast:.1f} s | {slow / fast:.2f}x | {rss:.0f} MiB |",
            flush=True,
        )

    ratio = min(r["speedup"] for r in speed.values())
    delta = max(abs(d) for d in deltas.values())
    print(f"vs_plain_monai={ratio:.2f} ap_delta={delta:.4f}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
