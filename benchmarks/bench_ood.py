"""Scoring speed of the OOD heads, and what the trust gate adds to a Detect run (issue 11).

    python benchmarks/bench_ood.py [--gate-model brain-t1-unet] [--repeats 3] [--vectors 20000]

1. Vectors per second of each head (the flow and the six baselines), fitted on 1,188 random
   vectors of the adrenal model's width (256) and of the brain gate's (372), scoring
   ``--vectors`` vectors in batches of 4,096; the flow is the baseline of the ratios.
2. The shipped U-Net on the bundled sample (IXI048, its brain mask, default precision) with
   its trust gate (brain-t1-gate) and without it (``gate=False``), in the same process; each
   timing is the best of ``repeats`` after a warm-up. The overhead is (with - without) /
   without.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src" / "napari_medood" / "samples"


def heads_speed(width: int, vectors: int, repeats: int) -> dict:
    import torch

    from napari_medood.models.features import FeatureBatch
    from napari_medood.ood.flow import FlowRecipe
    from napari_medood.ood.heads import HEADS, make_head

    g = torch.Generator().manual_seed(0)
    penultimate = width // 2

    def batch(n):
        x = torch.randn(n, width, generator=g)
        return FeatureBatch(x, x[:, -penultimate:], torch.randn(n, 2, generator=g))

    train = batch(1188)
    linear = (torch.randn(2, penultimate, generator=g), torch.randn(2, generator=g))
    labels = torch.randint(0, 2, (1188,), generator=g)
    query = batch(vectors)
    out = {}
    for name in HEADS:
        head = make_head(name, width)
        head.fit(
            train, labels, linear, **({"recipe": FlowRecipe(epochs=1)} if name == "flow" else {})
        )
        best = None
        for _ in range(repeats):
            started = time.perf_counter()
            for start in range(0, vectors, 4096):
                head.confidence(
                    FeatureBatch(
                        query.features[start : start + 4096],
                        query.penultimate[start : start + 4096],
                        query.logits[start : start + 4096],
                    )
                )
            seconds = time.perf_counter() - started
            best = seconds if best is None else min(best, seconds)
        out[name] = vectors / best
    return {
        name: {"vectors_per_second": round(v), "vs_flow": round(v / out["flow"], 2)}
        for name, v in out.items()
    }


def gate_overhead(model: str, repeats: int) -> dict:
    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume
    from napari_medood.preprocessing.masks import load_mask

    volume = read_volume(SAMPLES / "ixi048_t1_2mm.nii.gz")
    mask = load_mask(SAMPLES / "ixi048_brainmask_2mm.nii.gz", volume.grid)
    timings = {}
    for gate in (False, True):
        detector = get_detector(model, device="cpu", gate=gate)
        detector.predict(volume, mask)  # warm-up (and the gate's loading)
        best = None
        for _ in range(repeats):
            started = time.perf_counter()
            result = detector.predict(volume, mask)
            seconds = time.perf_counter() - started
            best = seconds if best is None else min(best, seconds)
        timings["with_gate" if gate else "without_gate"] = round(best, 3)
        if gate:
            timings["verdict"] = result.extras["trust"].verdict()
    timings["overhead"] = round(timings["with_gate"] / timings["without_gate"] - 1, 3)
    return timings


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gate-model", default="brain-t1-unet")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vectors", type=int, default=20000)
    args = parser.parse_args()
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}))
    for width in (256, 372):
        print(json.dumps({"heads": width, **heads_speed(width, args.vectors, args.repeats)}))
    print(json.dumps({"detect": args.gate_model, **gate_overhead(args.gate_model, args.repeats)}))


if __name__ == "__main__":
    main()
