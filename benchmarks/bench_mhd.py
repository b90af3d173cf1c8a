"""A whole brain through the MHD detector on this machine, against the U-Net on the same scan
(issue 10).

    python benchmarks/bench_mhd.py [--model brain-t1-mhd] [--device cpu] [--repeats 2]

The bundled 2 mm sample (IXI048 with its brain mask), N = 10 reconstructions per axial slice
(the reference's), at the default precision (``auto``: bfloat16 on CPUs that compute it) and
at float32; the shipped U-Net (``brain-t1-unet``) on the same scan is the baseline of the same
run. Each timing is the best of ``repeats`` after one warm-up run; the detectors' own stage
timings are not used, the whole ``predict`` call is. Prints one JSON line per setting and
``reconstructions_per_second`` (slices x N / seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src" / "napari_medood" / "samples"


def timed(detector, volume, mask, repeats: int) -> tuple[float, object]:
    detector.predict(volume, mask)  # warm-up: allocations, kernels, caches
    best, result = None, None
    for _ in range(repeats):
        started = time.perf_counter()
        result = detector.predict(volume, mask)
        seconds = time.perf_counter() - started
        best = seconds if best is None else min(best, seconds)
    return best, result


def main() -> None:
    import torch

    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume
    from napari_medood.preprocessing.masks import load_mask

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="brain-t1-mhd")
    parser.add_argument("--baseline", default="brain-t1-unet")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    volume = read_volume(SAMPLES / "ixi048_t1_2mm.nii.gz")
    mask = load_mask(SAMPLES / "ixi048_brainmask_2mm.nii.gz", volume.grid)
    rows = []
    baseline_seconds, _ = timed(
        get_detector(args.baseline, device=args.device), volume, mask, args.repeats
    )
    rows.append(
        {"detector": args.baseline, "precision": "auto", "seconds": round(baseline_seconds, 2)}
    )
    for precision in ("auto", "float32"):
        detector = get_detector(args.model, device=args.device, precision=precision)
        seconds, result = timed(detector, volume, mask, args.repeats)
        slices = result.extras["slices"]["slices_run"]
        count = result.extras["reconstructions"]
        rows.append(
            {
                "detector": args.model,
                "precision": result.extras["precision"],
                "seconds": round(seconds, 2),
                "slices": slices,
                "reconstructions": count,
                "reconstructions_per_second": round(slices * count / seconds, 1),
                "vs_baseline": round(seconds / baseline_seconds, 2),
            }
        )
    for row in rows:
        row.update(device=args.device, threads=torch.get_num_threads())
        print(json.dumps(row))


if __name__ == "__main__":
    main()
