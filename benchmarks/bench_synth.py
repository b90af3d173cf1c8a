"""Training-anomaly generation speed: napari-medood's engine vs the obvious implementation.

    python benchmarks/bench_synth.py [--samples 30] [--skip-loader] [--skip-train-step]

Both generators draw from the same distributions (mood22 defaults: 160^3 patch, 128^3
foreign-patch box, p_anomaly 0.9, alpha 0.3-1, kernels 1/3/5/7, patch augmentation p 0.2)
on the same real brain patch, in the same process. The reference does each step the
straightforward way on whole arrays: scipy.ndimage.rotate of the foreign patch and of the
cuboid mask, shapes on the full box grid, a Gaussian filter over the whole alpha map, and
blending over the whole image. Printed: seconds per anomaly for each, the speed-up, the rate
of napari-medood's engine in a torch DataLoader with 2 workers, and the time of one training
step of a small 3D U-Net on the same patch size (what the loader has to keep up with).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def brain_patch() -> np.ndarray:
    from napari_medood.io import read_volume
    from napari_medood.preprocessing import normalise

    volume = read_volume(
        SHARED
        / "open-ms-lesjak-mni"
        / "patient19"
        / "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
    )
    image = normalise(volume.data, "percentile", volume.data > 0)
    image[volume.data == 0] = 0
    return np.ascontiguousarray(image[11:171, 29:189, 11:171])


class ReferenceGenerator:
    """The mood22 recipe written the obvious way: whole arrays, scipy per call."""

    def __init__(self, fp=128, capacity=50, max_push=5):
        from napari_medood.synth.lesions import LesionShapeBank

        self.fp, self.capacity, self.max_push = fp, capacity, max_push
        self.bank: list[np.ndarray] = []
        self.lesions = LesionShapeBank.default()

    def _rotate(self, array, angles_rad, order):
        out = array
        for axes, angle in zip(((1, 2), (0, 2), (0, 1)), angles_rad, strict=True):
            out = ndimage.rotate(out, np.degrees(angle), axes=axes, reshape=False, order=order)
        return out

    def _shape(self, rng):
        fp = self.fp
        kind = rng.choice(["cuboid", "sphere", "brush", "lesion"], p=[1 / 3, 1 / 3, 1 / 6, 1 / 6])
        if kind == "cuboid":
            sides = rng.integers(10, fp + 1, 3)
            start = [rng.integers(0, fp - s + 1) for s in sides]
            mask = np.zeros((fp,) * 3, np.float32)
            mask[tuple(slice(a, a + s) for a, s in zip(start, sides, strict=True))] = 1
            if rng.random() < 0.5:
                mask = self._rotate(mask, rng.uniform(-3, 3, 3), order=0)
            return mask
        if kind == "sphere":
            radius = rng.integers(10, fp + 1) / 2
            centre = rng.uniform(radius - 0.5, fp - radius - 0.5, 3)
            grid = np.stack(np.meshgrid(*[np.arange(fp)] * 3, indexing="ij"), -1)
            return (np.linalg.norm(grid - centre, axis=-1) <= radius).astype(np.float32)
        if kind == "brush":
            from napari_medood.synth import brush_mask

            return brush_mask(fp, rng).full().astype(np.float32)
        return self.lesions.sample(fp, rng).full().astype(np.float32)

    def __call__(self, image, rng):
        size = self.fp
        for _ in range(min(self.max_push, self.capacity - len(self.bank))):
            start = [rng.integers(0, n - size + 1) for n in image.shape]
            self.bank.append(image[tuple(slice(a, a + size) for a in start)].copy())
        if rng.random() >= 0.9:
            return image.copy(), np.zeros_like(image)
        patch = self.bank.pop(int(rng.integers(len(self.bank))))
        if rng.random() < 0.2:
            patch = patch + rng.uniform(-0.2, 0.2)
        if rng.random() < 0.2:
            patch = patch + rng.normal(0, rng.uniform(0, 0.2), patch.shape)
        if rng.random() < 0.2:
            patch = self._rotate(patch, rng.uniform(-1, 1, 3), order=1)
        patch = np.clip(patch, 0, 1)
        shape = self._shape(rng)
        start = [rng.integers(0, n - size + 1) for n in image.shape]
        box = tuple(slice(a, a + size) for a in start)
        alpha = np.zeros_like(image)
        alpha[box] = shape * rng.uniform(0.3, 1.0)
        alpha *= image > 0
        kernel = rng.choice([1, 3, 5, 7], p=[0.5, 0.25, 0.125, 0.125])
        if kernel > 1:
            alpha = ndimage.gaussian_filter(alpha, 1.0, truncate=(kernel // 2) / 1.0)
            alpha *= image > 0
        foreign = np.zeros_like(image)
        foreign[box] = patch
        return image * (1 - alpha) + foreign * alpha, alpha


def per_sample(generate, image, samples, seed) -> float:
    rng = np.random.default_rng(seed)
    for _ in range(10):  # steady state: 10 calls x 5 pushes fill the 50-patch bank
        generate(image, rng)
    start = time.perf_counter()
    for _ in range(samples):
        generate(image, rng)
    return (time.perf_counter() - start) / samples


def loader_rate(image, samples, workers=2) -> float:
    import torch
    from torch.utils.data import DataLoader, Dataset

    from napari_medood.synth import SyntheticAnomaly3D

    class Patches(Dataset):
        def __init__(self):
            self.transform = SyntheticAnomaly3D()

        def __len__(self):
            return samples

        def __getitem__(self, index):
            corrupted, target = self.transform(image, np.random.default_rng([1, index]))
            return torch.from_numpy(corrupted)[None], torch.from_numpy(target)[None]

    loader = DataLoader(Patches(), batch_size=2, num_workers=workers, persistent_workers=False)
    start = time.perf_counter()
    count = sum(x.shape[0] for x, _ in loader)
    return count / (time.perf_counter() - start)


def train_step_seconds(steps=2) -> float:
    import torch
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    net = BasicUNet(3, 1, 1, features=(8, 16, 32, 64, 128, 8))
    optimiser = torch.optim.AdamW(net.parameters(), 1e-4)
    x = torch.rand(2, 1, 160, 160, 160)
    y = (torch.rand(2, 1, 160, 160, 160) > 0.9).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        optimiser.zero_grad()
        loss_fn(net(x), y).backward()
        optimiser.step()
        times.append(time.perf_counter() - start)
    return float(np.mean(times[1:]))


def main() -> None:
    from napari_medood.synth import SyntheticAnomaly3D

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--skip-train-step", action="store_true")
    args = parser.parse_args()
    image = brain_patch()
    print(f"patch {image.shape}, foreign-patch box 128^3, {args.samples} samples each")
    ours = per_sample(SyntheticAnomaly3D(), image, args.samples, seed=0)
    reference = per_sample(ReferenceGenerator(), image, args.samples, seed=0)
    print(f"reference (whole arrays, scipy rotate/gaussian): {reference:.3f} s/anomaly")
    print(f"napari-medood engine:                            {ours:.3f} s/anomaly")
    print(f"speed-up: {reference / ours:.1f}x")
    if not args.skip_loader:
        rate = loader_rate(image, max(args.samples, 20))
        print(f"DataLoader, 2 workers, batch 2: {rate:.1f} anomalies/s")
    if not args.skip_train_step:
        step = train_step_seconds()
        print(
            f"one training step, BasicUNet (8..128), batch 2 x 160^3, CPU: {step:.2f} s "
            f"= {2 / step:.2f} samples/s needed"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
