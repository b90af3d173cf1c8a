"""Training speed of the U-Net: steps per second, and whether the data pipeline keeps up.

    python benchmarks/bench_training.py [--device cpu|cuda] [--preset small] [--batch 2]
                                        [--patch 96] [--steps 6] [--workers 2]
                                        [--precisions float32,auto]

Times ``--steps`` training steps (AdamW, deep-supervision loss) on fixed random batches after
two warm-up steps, at each of ``--precisions`` through the execution plan that training uses
(``auto``: bfloat16 autocast on CPUs that compute it, float16 with a gradient scaler on CUDA;
channels-last on the CPU), the first being the baseline; then the synthetic-anomaly data
pipeline (IXI scans at 2 mm, foreign patches, real-lesion shapes and FPI outliers, as
brain-t1-unet is trained) through a torch DataLoader with ``--workers`` workers, once from
the real scans and once with every sample drawn in a random contrast from the scans' DLMUSE
parcellations (``contrast_randomisation=1``, ``synth.contrast``); prints the rates and their
ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    for candidate in (REPO / ".data", REPO.parent / "shared" / "data"):
        if (candidate / "ixi-t1-2mm").is_dir():
            return candidate
    raise SystemExit("needs ../shared/data (or .data) with ixi-t1-2mm")


def train_rate(
    preset: str, device: str, batch: int, patch: int, steps: int, precision: str
) -> float:
    import torch

    from napari_medood.execution import plan_execution
    from napari_medood.models.unet import PRESETS, UNet3DDeepSup, deep_supervision_loss

    torch.manual_seed(0)
    execution = plan_execution(device, precision)
    model = execution.prepare(UNet3DDeepSup(features=PRESETS[preset]), fold_batch_norm=False)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), 1e-4, weight_decay=1e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=execution.precision == "float16")
    x = execution.inputs(torch.rand(batch, 1, patch, patch, patch))
    y = (torch.rand(batch, 1, patch, patch, patch, device=device) > 0.95).float()
    cuda = device.startswith("cuda")

    def step():
        optimiser.zero_grad(set_to_none=True)
        with execution.autocast():
            outputs = model(x)
        scaler.scale(deep_supervision_loss(outputs, y)).backward()
        scaler.step(optimiser)
        scaler.update()

    for _ in range(2):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def data_rate(patch: int, workers: int, samples: int, contrast: float = 0.0) -> float:
    from torch.utils.data import DataLoader

    from napari_medood.io.cohort import discover_cases
    from napari_medood.preprocessing.model_space import ModelSpace
    from napari_medood.synth.contrast import DLMUSE_STRUCTURES, ContrastRandomiser
    from napari_medood.training.data import SyntheticAnomalyPatches, prepare_scans

    ixi = shared_dir() / "ixi-t1-2mm"
    space = ModelSpace(spacing=(2.0, 2.0, 2.0))
    cases = discover_cases(ixi / "t1", masks=ixi / "dlmuse")[:6]
    scans = prepare_scans(cases, space, labels=contrast > 0)
    dataset = SyntheticAnomalyPatches(
        scans,
        (patch,) * 3,
        samples,
        seed=0,
        contrast=ContrastRandomiser(groups=DLMUSE_STRUCTURES) if contrast > 0 else None,
        p_contrast=contrast,
        normalisation=space.normalisation,
    )
    loader = DataLoader(dataset, batch_size=1, num_workers=workers)
    start = time.perf_counter()
    count = sum(1 for _ in loader)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--precisions", default="float32,auto")
    args = parser.parse_args()
    from napari_medood.execution import resolve_precision

    rates = {}
    for precision in args.precisions.split(","):
        rates[precision] = train_rate(
            args.preset, args.device, args.batch, args.patch, args.steps, precision
        )
        first = next(iter(rates.values()))
        print(
            f"training at {precision} ({resolve_precision(precision, args.device)}): "
            f"{rates[precision]:.3f} steps/s, {rates[precision] / first:.2f}x the first "
            f"({args.preset}, batch {args.batch} x {args.patch}^3, {args.device})",
            flush=True,
        )
    need = max(rates.values()) * args.batch
    supply = data_rate(args.patch, args.workers, args.samples)
    print(
        f"data pipeline, {args.workers} workers: {supply:.1f} samples/s supplied "
        f"= {supply / need:.1f}x what training consumes"
    )
    randomised = data_rate(args.patch, args.workers, args.samples, contrast=1.0)
    print(
        f"data pipeline, every sample in a random contrast: {randomised:.1f} samples/s "
        f"({randomised / supply:.2f}x the real scans' rate) = {randomised / need:.1f}x what "
        "training consumes"
    )


if __name__ == "__main__":
    main()
