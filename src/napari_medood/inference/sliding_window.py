"""Sliding-window prediction over a 3D volume, on MONAI's window grid, skipping empty windows.

The windows, their padding and the Gaussian importance map are those of MONAI's
``sliding_window_inference`` (same ROI, overlap and sigma scale), so the blended map is the
same wherever it matters. Three things make it cheaper:

- a window holding no foreground voxel is never run: it cannot change a foreground voxel;
- windows run in batches (``batch_size``);
- blending happens in place in float32 where the windows are computed (two volume-sized sums
  on the GPU, or numpy arrays on the CPU), so memory follows the volume size, whatever the
  number of windows, and only the final map crosses from the GPU.

The predictor gets a float32 tensor ``(B, 1, *roi)`` on ``device`` and returns per-voxel
values of the same shape (probabilities). Cancellation is checked before every batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback, check_cancelled, report
from napari_medood.errors import look_up_option

BLEND_MODES = ("gaussian", "constant")


def scan_interval(image_size: Sequence[int], roi: Sequence[int], overlap: float) -> list[int]:
    """MONAI's step between windows: ``int(roi * (1 - overlap))`` (at least 1), or the ROI
    where it equals the image."""
    steps = []
    for size, r in zip(image_size, roi, strict=True):
        steps.append(int(r) if r == size else max(int(r * (1 - overlap)), 1))
    return steps


def window_starts(
    image_size: Sequence[int], roi: Sequence[int], overlap: float
) -> list[tuple[int, int, int]]:
    """Start corners of MONAI's dense windows over an image of ``image_size`` (>= roi)."""
    steps = scan_interval(image_size, roi, overlap)
    per_axis = []
    for size, r, step in zip(image_size, roi, steps, strict=True):
        count = int(math.ceil(size / step))
        last = next((d for d in range(count) if d * step + r >= size), None)
        starts = []
        for index in range((last + 1) if last is not None else 1):
            start = index * step
            starts.append(start - max(start + r - size, 0))
        per_axis.append(starts)
    grid = np.meshgrid(*per_axis, indexing="ij")
    return [tuple(int(v) for v in corner) for corner in np.stack([g.ravel() for g in grid], 1)]


def importance_map(
    roi: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125
) -> np.ndarray:
    """MONAI's blending weights: a separable Gaussian (sigma = sigma_scale * roi), floored at
    its smallest value (at least 1e-3), computed in float32 as MONAI does."""
    import torch

    look_up_option(mode, BLEND_MODES, "blend mode")
    if mode == "constant":
        return np.ones(tuple(roi), np.float32)
    weights = None
    for axis, size in enumerate(roi):
        x = torch.arange(start=-(size - 1) / 2.0, end=(size - 1) / 2.0 + 1, dtype=torch.float)
        x = torch.exp(x**2 / (-2 * (size * sigma_scale) ** 2))
        weights = x if axis == 0 else weights.unsqueeze(-1) * x[(None,) * axis]
    floor = max(torch.min(weights).item(), 1e-3)
    return torch.clamp(weights.to(torch.float), min=floor).numpy()


def pad_to_roi(image: np.ndarray, roi: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad each axis symmetrically (the extra voxel after) up to the ROI, as MONAI does;
    returns the padded array and the slices of the original inside it."""
    pads = []
    for size, r in zip(image.shape, roi, strict=True):
        diff = max(int(r) - size, 0)
        pads.append((diff // 2, diff - diff // 2))
    if not any(a or b for a, b in pads):
        return image, tuple(slice(None) for _ in range(3))
    inner = tuple(slice(a, a + n) for (a, _), n in zip(pads, image.shape, strict=True))
    return np.pad(image, pads), inner


def sliding_window_predict(
    image: np.ndarray,
    predictor: Callable,
    roi: Sequence[int],
    overlap: float = 0.5,
    foreground: np.ndarray | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    blend: str = "gaussian",
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> tuple[np.ndarray, dict]:
    """Blend ``predictor`` over windows of ``image``.

    Args:
        image: (D, H, W) float32 array in model space.
        predictor: ``(B, 1, *roi) tensor on device -> (B, 1, *roi) tensor``.
        foreground: bool mask; windows without foreground are skipped and voxels that no
            window covers are 0.
        device: where the batches go (``predictor`` may change its own device and return a
            tensor elsewhere; results are brought to the CPU).

    Returns:
        ``(blended map float32 of image.shape, stats)`` with ``stats`` = windows in total,
        windows run, batches.
    """
    import torch

    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be within [0, 1), got {overlap}")
    roi = tuple(int(r) for r in roi)
    original_shape = image.shape
    image, inner = pad_to_roi(np.asarray(image, dtype=np.float32), roi)
    if foreground is not None:
        foreground, _ = pad_to_roi(np.asarray(foreground, dtype=bool), roi)
    starts = window_starts(image.shape, roi, overlap)
    slices = [tuple(slice(s, s + r) for s, r in zip(start, roi, strict=True)) for start in starts]
    kept = slices if foreground is None else [s for s in slices if foreground[s].any()]
    batches = [kept[i : i + batch_size] for i in range(0, len(kept), batch_size)]
    weights_np = importance_map(roi, blend)
    # Blend where the windows come out: on a GPU the sums stay there (two float32 volumes)
    # and only the final map crosses to the host; on the CPU they are numpy arrays.
    on_device = not str(device).startswith("cpu")
    if on_device:
        try:
            total = torch.zeros(image.shape, dtype=torch.float32, device=device)
            norm = torch.zeros(image.shape, dtype=torch.float32, device=device)
            weights = torch.from_numpy(weights_np).to(device)
        except torch.cuda.OutOfMemoryError:
            on_device = False
    if not on_device:
        total = np.zeros(image.shape, np.float32)
        norm = np.zeros(image.shape, np.float32)
        weights = weights_np
    report(progress, 0, len(kept), "windows")
    done = 0
    with torch.inference_mode():
        for batch in batches:
            check_cancelled(cancelled)
            stacked = torch.from_numpy(np.stack([image[s] for s in batch])[:, None]).to(device)
            output = predictor(stacked).detach().float()[:, 0]
            if on_device and output.device != total.device:  # the predictor moved (OOM)
                total, norm, weights = total.cpu().numpy(), norm.cpu().numpy(), weights_np
                on_device = False
            if not on_device:
                output = output.cpu().numpy()
            for window, value in zip(batch, output, strict=True):
                total[window] += value * weights
                norm[window] += weights
            done += len(batch)
            report(progress, done, len(kept), "windows")
    if on_device:
        total = torch.where(norm > 0, total / torch.where(norm > 0, norm, 1), 0).cpu().numpy()
        blended = total
    else:
        blended = np.divide(total, norm, out=np.zeros_like(total), where=norm > 0)
    stats = {"windows": len(slices), "windows_run": len(kept), "batches": len(batches)}
    return np.ascontiguousarray(blended[inner]).reshape(original_shape), stats
