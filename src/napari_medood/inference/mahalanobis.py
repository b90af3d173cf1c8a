"""Pixel-wise Mahalanobis distance of a scan to the spread of its reconstructions (MHD).

The reference (methods.md section 2, R15): per slice and inside the brain, with P brain
pixels and N reconstructions r_n, mu = their mean, delta = x - mu and
Sigma = (1/(N-1)) sum_n (r_n - mu)(r_n - mu)^T + lambda I (lambda = 1e-2). A pixel scores
sqrt(max(delta_i (Sigma^-1 delta)_i, 0)): its additive share of the full Mahalanobis form.

Sigma has rank N-1 plus lambda I, so (Sigma)^-1 delta comes from the Woodbury identity with
an N x N system: with U = R / sqrt(N-1) (R: the centred reconstructions, N x P),
(lambda I + U^T U)^-1 delta = (delta - U^T (lambda I_N + U U^T)^-1 U delta) / lambda.
Memory O(NP) instead of O(P^2); :func:`dense_mahalanobis` is the P x P reference, for tests
and the benchmark. Pixels outside the mask are zeroed in R and delta, which leaves the brain
pixels' system exactly the masked one.

:func:`mhd_volume_maps` is the volume pipeline: slices along an axis in batches, min-max
over the volume, a Gaussian (sigma 1 voxel), times 1 - SSIM(mu, x) (3D, Gaussian kernel 11,
sigma 1) and the mask. The single-reconstruction residual |x - r_1| goes through the same
steps (with 1 - SSIM(r_1, x)), so the two maps differ only in their distance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from napari_medood.errors import MedoodError

REGULARISATION = 1e-2


def pixelwise_mahalanobis(x, reconstructions, mask=None, regularisation: float = REGULARISATION):
    """Per-pixel Mahalanobis contributions through the Woodbury identity.

    Args:
        x: ``(B, H, W)`` tensor (or array) of slices.
        reconstructions: ``(B, N, H, W)``, N >= 2.
        mask: ``(B, H, W)`` bool, the pixels that form each slice's distribution (None: all).
        regularisation: lambda added to the covariance's diagonal.

    Returns:
        ``(B, H, W)`` float32 tensor, >= 0, zero outside the mask and where not finite.
    """
    import torch

    x = torch.as_tensor(x)
    recons = torch.as_tensor(reconstructions)
    if recons.ndim != 4 or x.shape != recons.shape[:1] + recons.shape[2:]:
        raise MedoodError(
            f"need slices (B, H, W) and reconstructions (B, N, H, W); got {tuple(x.shape)} "
            f"and {tuple(recons.shape)}"
        )
    count = recons.shape[1]
    if count < 2:
        raise MedoodError(f"the Mahalanobis map needs at least 2 reconstructions, got {count}")
    if regularisation <= 0:
        raise MedoodError(f"the regularisation must be positive, got {regularisation}")
    batch, height, width = x.shape
    flat_x = x.reshape(batch, -1).double()
    flat_r = recons.reshape(batch, count, -1).double()
    inside = (
        torch.ones_like(flat_x, dtype=torch.bool)
        if mask is None
        else torch.as_tensor(mask).reshape(batch, -1).to(flat_x.device).bool()
    )
    weight = inside.double()
    mean = flat_r.mean(dim=1)
    delta = (flat_x - mean) * weight
    spread = (flat_r - mean[:, None]) * weight[:, None] / np.sqrt(count - 1)  # U: (B, N, P)
    small = spread @ spread.transpose(1, 2)  # U U^T: (B, N, N)
    small = small + regularisation * torch.eye(count, dtype=small.dtype, device=small.device)
    projected = torch.linalg.solve(small, (spread @ delta[..., None]))  # (B, N, 1)
    solved = (delta - (spread.transpose(1, 2) @ projected)[..., 0]) / regularisation
    contribution = delta * solved
    score = torch.sqrt(torch.clamp(contribution, min=0.0))
    score = torch.where(torch.isfinite(score) & inside, score, torch.zeros_like(score))
    return score.reshape(batch, height, width).float()


def dense_mahalanobis(x, reconstructions, mask=None, regularisation: float = REGULARISATION):
    """The same contributions with the explicit P x P covariance and its inverse, one slice at
    a time, as the reference computes them (for tests and the benchmark only)."""
    import torch

    x = torch.as_tensor(x)
    recons = torch.as_tensor(reconstructions)
    batch, count = recons.shape[:2]
    output = torch.zeros(x.shape, dtype=torch.float64)
    for b in range(batch):
        inside = (
            torch.ones(x.shape[1:], dtype=torch.bool)
            if mask is None
            else torch.as_tensor(mask[b], dtype=torch.bool)
        )
        values = x[b][inside].double()
        samples = recons[b][:, inside].double()  # (N, P)
        mean = samples.mean(dim=0)
        centred = samples - mean
        covariance = centred.T @ centred / (count - 1)
        covariance += regularisation * torch.eye(values.numel(), dtype=torch.float64)
        delta = values - mean
        contribution = delta * (torch.linalg.inv(covariance) @ delta)
        score = torch.sqrt(torch.clamp(contribution, min=0.0))
        score[~torch.isfinite(score)] = 0.0
        output[b][inside] = score
    return output.float()


def gaussian_ssim_3d(a: np.ndarray, b: np.ndarray, kernel: int = 11, sigma: float = 1.0):
    """The full SSIM map of two volumes with a Gaussian window (torchmetrics' definition: k1
    0.01, k2 0.03, data range = the larger of the two value ranges), reflect-padded so that
    it has the volumes' shape."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    if a.shape != b.shape:
        raise MedoodError(f"SSIM needs volumes of one shape, got {a.shape} and {b.shape}")
    first = torch.as_tensor(np.asarray(a, np.float32))[None, None]
    second = torch.as_tensor(np.asarray(b, np.float32))[None, None]
    value_range = max(float(first.max() - first.min()), float(second.max() - second.min()))
    value_range = value_range or 1.0
    c1, c2 = (0.01 * value_range) ** 2, (0.03 * value_range) ** 2
    coordinates = torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2
    window = torch.exp(-(coordinates**2) / (2 * sigma**2))
    window = window / window.sum()
    pad = kernel // 2

    def blur(volume):
        # separable: one 1D Gaussian per axis; reflect padding needs the pad below each side
        out = volume
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = kernel
            padding = [0, 0, 0, 0, 0, 0]
            side = min(pad, out.shape[2 + axis] - 1)
            padding[2 * (2 - axis)] = padding[2 * (2 - axis) + 1] = side
            padded = F.pad(out, padding, mode="reflect") if side else out
            if side < pad:  # a side shorter than the window: replicate the rest
                extra = [0, 0, 0, 0, 0, 0]
                extra[2 * (2 - axis)] = extra[2 * (2 - axis) + 1] = pad - side
                padded = F.pad(padded, extra, mode="replicate")
            out = F.conv3d(padded, window.reshape(shape))
        return out

    mu_a, mu_b = blur(first), blur(second)
    var_a = blur(first * first) - mu_a**2
    var_b = blur(second * second) - mu_b**2
    covariance = blur(first * second) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * covariance + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return ssim[0, 0].numpy()


@dataclass(frozen=True)
class PostProcessing:
    """The reference's steps after the slice-wise distance, each one an option.

    Attributes:
        regularisation: lambda added to the covariance (1e-2).
        minmax: min-max normalise the distance over the volume.
        smooth_sigma: Gaussian smoothing in voxels (0: none; reference 1).
        ssim_weight: multiply by 1 - SSIM(mean reconstruction, scan).
        ssim_kernel, ssim_sigma: the SSIM window (11, 1).
    """

    regularisation: float = REGULARISATION
    minmax: bool = True
    smooth_sigma: float = 1.0
    ssim_weight: bool = True
    ssim_kernel: int = 11
    ssim_sigma: float = 1.0

    @classmethod
    def from_card(cls, entry: dict) -> PostProcessing:
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(entry) - names)
        if unknown:
            raise MedoodError(
                f"unknown MHD post-processing options {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(names))}"
            )
        return cls(**entry)

    def finish(self, distance: np.ndarray, reference: np.ndarray, image, mask) -> np.ndarray:
        """Min-max, smoothing and the SSIM weight applied to a volume of distances."""
        from scipy.ndimage import gaussian_filter

        values = distance.astype(np.float32, copy=True)
        if self.minmax:
            low, high = float(values.min()), float(values.max())
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        if self.smooth_sigma > 0:
            values = gaussian_filter(values, self.smooth_sigma)
        if self.ssim_weight:
            ssim = gaussian_ssim_3d(reference, image, self.ssim_kernel, self.ssim_sigma)
            values = values * (1.0 - ssim)
        return np.where(mask, values, 0.0).astype(np.float32)


def mhd_volume_maps(
    image: np.ndarray,
    reconstructions: np.ndarray,
    mask: np.ndarray,
    axis: int = 2,
    options: PostProcessing | None = None,
    batch_size: int = 32,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, np.ndarray]:
    """The MHD map and the single-reconstruction residual of a volume.

    Args:
        image: the scan in model space, 3D.
        reconstructions: ``(N, *image.shape)``, N >= 2 (any sampler).
        mask: bool, the brain.
        axis: the slice axis (the axial one).

    Returns:
        ``mahalanobis`` (raw distances), ``mhd`` (the anomaly map), ``residual`` (the same
        pipeline on |x - r_1|), ``mean`` and ``std`` of the reconstructions.
    """
    import torch

    from napari_medood._progress import check_cancelled

    options = options or PostProcessing()
    recons = np.asarray(reconstructions, np.float32)
    if recons.ndim != 4 or recons.shape[1:] != image.shape:
        raise MedoodError(f"reconstructions must be (N, *{image.shape}), got shape {recons.shape}")
    if recons.shape[0] < 2:
        raise MedoodError(
            f"the Mahalanobis map needs at least 2 reconstructions, got {recons.shape[0]}"
        )
    slices = np.moveaxis(np.asarray(image, np.float32), axis, 0)
    samples = np.moveaxis(recons, axis + 1, 1)  # (N, S, H, W)
    inside = np.moveaxis(np.asarray(mask, bool), axis, 0)
    distance = np.zeros(slices.shape, np.float32)
    kept = [i for i in range(slices.shape[0]) if inside[i].any()]
    for start in range(0, len(kept), batch_size):
        check_cancelled(cancelled)
        batch = kept[start : start + batch_size]
        scores = pixelwise_mahalanobis(
            torch.from_numpy(slices[batch]),
            torch.from_numpy(np.ascontiguousarray(samples[:, batch].transpose(1, 0, 2, 3))),
            torch.from_numpy(inside[batch]),
            options.regularisation,
        )
        distance[batch] = scores.numpy()
    distance = np.moveaxis(distance, 0, axis)
    mean = recons.mean(axis=0)
    first = recons[0]
    check_cancelled(cancelled)
    return {
        "mahalanobis": np.where(mask, distance, 0.0).astype(np.float32),
        "mhd": options.finish(distance, mean, image, mask),
        # masked before min-max and smoothing, as the distance is
        "residual": options.finish(np.where(mask, np.abs(image - first), 0.0), first, image, mask),
        "mean": mean,
        "std": recons.std(axis=0, ddof=1, dtype=np.float64).astype(np.float32),
    }
