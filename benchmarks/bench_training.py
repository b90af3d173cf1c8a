"""Training speed of the U-Net: steps per second, and whether the data pipeline keeps up.

    python benchmarks/bench_training.py [--device cpu|cuda] [--preset small] [--batch 2]
                                        [--patch 96] [--steps 6] [--workers 2]

Times ``--steps`` training steps (AdamW, deep-supervision loss, AMP on CUDA) on fixed random
batches after two warm-up steps, then the synthetic-anomaly data pipeline (IXI scans at 2 mm,
foreign patches, real-lesion shapes and FPI outliers, as brain-t1-unet is trained) through a
torch DataLoader with ``--workers`` workers; prints both rates and their ratio.
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


def train_rate(preset: str, device: str, batch: int, patch: int, steps: int) -> float:
    import torch

    from napari_medood.models.unet import PRESETS, UNet3DDeepSup, deep_supervision_loss

    torch.manual_seed(0)
    model = UNet3DDeepSup(features=PRESETS[preset]).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), 1e-4, weight_decay=1e-5)
    amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    x = torch.rand(batch, 1, patch, patch, patch, device=device)
    y = (torch.rand(batch, 1, patch, patch, patch, device=device) > 0.95).float()

    def step():
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            outputs = model(x)
        scaler.scale(deep_supervision_loss(outputs, y)).backward()
        scaler.step(optimiser)
        scaler.update()

    for _ in range(2):
        step()
    if amp:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if amp:
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def data_rate(patch: int, workers: int, samples: int) -> float:
    from torch.utils.data import DataLoader

    from napari_medood.io.cohort import discover_cases
    from napari_medood.preprocessing.model_space import ModelSpace
    from napari_medood.training.data import SyntheticAnomalyPatches, prepare_scans

    ixi = shared_dir() / "ixi-t1-2mm"
    scans = prepare_scans(discover_cases(ixi / "t1", masks=ixi / "dlmuse")[:6], ModelSpace())
    dataset = SyntheticAnomalyPatches(scans, (patch,) * 3, samples, seed=0)
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
    args = parser.parse_args()
    steps = train_rate(args.preset, args.device, args.batch, args.patch, args.steps)
    need = steps * args.batch
    print(
        f"training: {steps:.3f} steps/s = {need:.2f} samples/s consumed "
        f"({args.preset}, batch {args.batch} x {args.patch}^3, {args.device})",
        flush=True,
    )
    supply = data_rate(args.patch, args.workers, args.samples)
    print(
        f"data pipeline, {args.workers} workers: {supply:.1f} samples/s supplied "
        f"= {supply / need:.1f}x what training consumes"
    )


if __name__ == "__main__":
    main()
