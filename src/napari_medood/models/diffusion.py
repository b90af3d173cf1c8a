"""A 2D slice diffusion model and its stochastic reconstructions (the MHD / cDDPM method).

The network is MONAI's ``DiffusionModelUNet`` trained to predict the clean slice x0 from a
noised one (the reference's ``pred_x0`` objective, L1 loss, cosine schedule over 1000
steps, methods.md section 2). Optionally (cDDPM) a 2D ResNet encoder of the clean slice
conditions it through cross-attention. A reconstruction noises a slice to step ``t``
(reference: 500 of 1000, passed as index 498) with simplex or Gaussian noise and takes the
network's x0 prediction; N reconstructions with fresh noise are one batched call, and a
multi-step DDIM option walks from ``t`` down to 0 instead.

Intensities: model-space slices are in [0, 1] (normalised inside the brain); the network
sees them scaled to [-1, 1], as the schedulers' clipping expects.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from napari_medood.errors import MedoodError

#: the architecture of the shipped model: four levels, attention at the coarsest, one
#: residual block per level; a 2 mm brain with N = 10 runs in seconds on a laptop CPU
SMALL_ARCHITECTURE: dict[str, Any] = {
    "type": "SliceDiffusionUNet",
    "channels": [32, 64, 64, 128],
    "attention_levels": [False, False, False, True],
    "num_res_blocks": 1,
    "num_head_channels": 32,
    "norm_num_groups": 16,
    "condition": False,
    "condition_dim": 128,
}
NOISE_KINDS = ("simplex", "gaussian")
SCHEDULES = ("cosine", "linear", "linear_beta", "scaled_linear_beta", "sigmoid_beta")
#: AnoDDPM's simplex noise, as the reference uses it
SIMPLEX = {"octaves": 6, "persistence": 0.8, "frequency": 64.0}


class SliceDiffusionUNet(nn.Module):
    """``DiffusionModelUNet`` over one-channel slices, with an optional encoder of the clean
    slice (cDDPM) whose feature vector is the cross-attention context."""

    def __init__(
        self,
        channels=(32, 64, 64, 128),
        attention_levels=(False, False, False, True),
        num_res_blocks: int = 1,
        num_head_channels: int = 32,
        norm_num_groups: int = 16,
        condition: bool = False,
        condition_dim: int = 128,
    ):
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        if len(channels) != len(attention_levels):
            raise MedoodError(
                f"channels and attention_levels need one entry per level, got "
                f"{list(channels)} and {list(attention_levels)}"
            )
        if condition and not any(attention_levels):
            raise MedoodError("a conditioned model needs attention at one level at least")
        self.condition = bool(condition)
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            num_res_blocks=num_res_blocks,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            with_conditioning=self.condition,
            cross_attention_dim=condition_dim if self.condition else None,
        )
        self.encoder = None
        if self.condition:
            from monai.networks.nets import resnet10

            # the reference conditions on a ResNet-50 SparK encoder; ResNet-10 keeps CPU
            # training affordable and plays the same role
            self.encoder = resnet10(
                spatial_dims=2, n_input_channels=1, num_classes=condition_dim, feed_forward=True
            )

    @property
    def levels(self) -> int:
        return len(self.unet.block_out_channels)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, clean=None) -> torch.Tensor:
        """The predicted clean slice (x0, in [-1, 1] units) from ``noisy`` at ``timesteps``;
        ``clean`` is the conditioning slice (needed when the model is conditioned)."""
        context = None
        if self.encoder is not None:
            if clean is None:
                raise MedoodError("a conditioned diffusion model needs the clean slice")
            context = self.encoder(clean)[:, None, :]
        return self.unet(noisy, timesteps, context=context)


def build_slice_diffusion(architecture: Mapping[str, Any]) -> SliceDiffusionUNet:
    """A slice diffusion network from a card's ``architecture`` entry."""
    values = {**SMALL_ARCHITECTURE, **dict(architecture)}
    return SliceDiffusionUNet(
        values["channels"],
        values["attention_levels"],
        int(values["num_res_blocks"]),
        int(values["num_head_channels"]),
        int(values["norm_num_groups"]),
        bool(values["condition"]),
        int(values["condition_dim"]),
    )


@dataclass(frozen=True)
class DiffusionProcess:
    """The forward process the model was trained with (a card's ``diffusion`` entry)."""

    timesteps: int = 1000
    schedule: str = "cosine"
    objective: str = "x0"
    noise: str = "simplex"
    #: simplex octaves, persistence, frequency
    simplex: tuple[int, float, float] = (
        SIMPLEX["octaves"],
        SIMPLEX["persistence"],
        SIMPLEX["frequency"],
    )

    @classmethod
    def from_card(cls, entry: Mapping[str, Any]) -> DiffusionProcess:
        simplex = {**SIMPLEX, **dict(entry.get("simplex", {}))}
        process = cls(
            int(entry.get("timesteps", 1000)),
            str(entry.get("schedule", "cosine")),
            str(entry.get("objective", "x0")),
            str(entry.get("noise", "simplex")),
            (int(simplex["octaves"]), float(simplex["persistence"]), float(simplex["frequency"])),
        )
        if process.schedule not in SCHEDULES:
            raise MedoodError(
                f"unknown schedule {process.schedule!r}; valid: {', '.join(SCHEDULES)}"
            )
        if process.objective != "x0":
            raise MedoodError(
                f"only the x0 objective is implemented (the reference's), got {process.objective!r}"
            )
        if process.noise not in NOISE_KINDS:
            raise MedoodError(f"unknown noise {process.noise!r}; valid: {', '.join(NOISE_KINDS)}")
        return process

    def to_card(self) -> dict[str, Any]:
        return {
            "timesteps": self.timesteps,
            "schedule": self.schedule,
            "objective": self.objective,
            "noise": self.noise,
            "simplex": dict(
                zip(("octaves", "persistence", "frequency"), self.simplex, strict=True)
            ),
        }

    def noise_fields(self, count: int, shape: tuple[int, int], generator) -> torch.Tensor:
        """``count`` fields of this process's noise (:func:`noise_fields`)."""
        octaves, persistence, frequency = self.simplex
        return noise_fields(self.noise, count, shape, generator, octaves, persistence, frequency)

    def alphas(self) -> torch.Tensor:
        """The schedule's cumulative alphas (float32, CPU), computed once per process."""
        return _alphas_cumprod(self.timesteps, self.schedule).clone()

    def scheduler(self):
        """MONAI's DDPM scheduler for this process (its ``alphas_cumprod`` and ``add_noise``)."""
        from monai.networks.schedulers import DDPMScheduler

        schedule = {"cosine": "cosine", "linear": "linear_beta"}.get(self.schedule, self.schedule)
        return DDPMScheduler(
            num_train_timesteps=self.timesteps, schedule=schedule, prediction_type="sample"
        )


@functools.lru_cache(maxsize=8)
def _alphas_cumprod(timesteps: int, schedule: str) -> torch.Tensor:
    return DiffusionProcess(timesteps, schedule).scheduler().alphas_cumprod.float()


# -- noise ----------------------------------------------------------------------------

_GRADIENTS_2D = torch.tensor(
    [[1, 1], [-1, 1], [1, -1], [-1, -1], [1, 0], [-1, 0], [0, 1], [0, -1]], dtype=torch.float32
)


def _simplex_2d(x: torch.Tensor, y: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """2D simplex noise (Gustavson's formulation) at the points ``(x, y)``, in about [-1, 1]."""
    skew = 0.5 * (math.sqrt(3.0) - 1.0)
    unskew = (3.0 - math.sqrt(3.0)) / 6.0
    s = (x + y) * skew
    i, j = torch.floor(x + s), torch.floor(y + s)
    t = (i + j) * unskew
    x0, y0 = x - (i - t), y - (j - t)
    upper = (x0 > y0).to(x.dtype)  # which triangle of the cell
    i1, j1 = upper, 1.0 - upper
    x1, y1 = x0 - i1 + unskew, y0 - j1 + unskew
    x2, y2 = x0 - 1.0 + 2.0 * unskew, y0 - 1.0 + 2.0 * unskew
    ii, jj = i.long() & 255, j.long() & 255
    gradients = _GRADIENTS_2D.to(x.device, x.dtype)

    def corner(dx, dy, oi, oj):
        index = permutation[(ii + oi) & 255] + jj + oj
        g = gradients[permutation[index & 255] % 8]
        falloff = torch.clamp(0.5 - dx * dx - dy * dy, min=0.0)
        return falloff**4 * (g[..., 0] * dx + g[..., 1] * dy)

    total = corner(x0, y0, 0, 0) + corner(x1, y1, i1.long(), j1.long()) + corner(x2, y2, 1, 1)
    return 70.0 * total


def simplex_noise(
    count: int,
    shape: tuple[int, int],
    generator: torch.Generator,
    octaves: int = SIMPLEX["octaves"],
    persistence: float = SIMPLEX["persistence"],
    frequency: float = SIMPLEX["frequency"],
) -> torch.Tensor:
    """``count`` fields ``(count, H, W)`` of fractal simplex noise layered as AnoDDPM layers
    it (coordinates divided by ``frequency``, halved each octave; amplitudes
    ``persistence**octave``), each standardised to zero mean and unit variance, which the
    forward process assumes of its noise. One gradient permutation per call, a random
    offset per field (all fields of a call in one vectorised pass)."""
    height, width = int(shape[0]), int(shape[1])
    permutation = torch.randperm(256, generator=generator)
    permutation = torch.cat([permutation, permutation])
    offsets = torch.rand(count, 2, 1, 1, generator=generator, dtype=torch.float64) * 4096.0
    rows = torch.arange(height, dtype=torch.float64)[None, :, None].expand(count, height, width)
    cols = torch.arange(width, dtype=torch.float64)[None, None, :].expand(count, height, width)
    field = torch.zeros(count, height, width, dtype=torch.float64)
    amplitude, scale = 1.0, float(frequency)
    for _ in range(int(octaves)):
        field += amplitude * _simplex_2d(
            cols / scale + offsets[:, 0], rows / scale + offsets[:, 1], permutation
        )
        scale /= 2.0
        amplitude *= persistence
    mean = field.mean(dim=(1, 2), keepdim=True)
    std = field.std(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    return ((field - mean) / std).float()


def noise_fields(
    kind: str,
    count: int,
    shape: tuple[int, int],
    generator: torch.Generator,
    octaves: int = SIMPLEX["octaves"],
    persistence: float = SIMPLEX["persistence"],
    frequency: float = SIMPLEX["frequency"],
) -> torch.Tensor:
    """``count`` noise fields ``(count, H, W)`` (float32, CPU) of ``kind`` (the simplex
    options apply to simplex noise)."""
    if kind == "simplex":
        return simplex_noise(count, shape, generator, octaves, persistence, frequency)
    if kind == "gaussian":
        return torch.randn((count, *shape), generator=generator)
    raise MedoodError(f"unknown noise {kind!r}; valid: {', '.join(NOISE_KINDS)}")


# -- reconstructions ------------------------------------------------------------------


def to_model_units(slices: torch.Tensor) -> torch.Tensor:
    return slices * 2.0 - 1.0


def from_model_units(values: torch.Tensor) -> torch.Tensor:
    return (values + 1.0) / 2.0


def reconstruct(
    model: nn.Module,
    slices: torch.Tensor,
    noise: torch.Tensor,
    t: int,
    process: DiffusionProcess,
    steps: int = 1,
    autocast=None,
) -> torch.Tensor:
    """Stochastic reconstructions of a batch of slices.

    Args:
        model: a :class:`SliceDiffusionUNet` (x0 objective), in eval mode.
        slices: ``(B, 1, H, W)`` in [0, 1].
        noise: ``(N, H, W)`` fields, one per reconstruction, shared by the B slices (the
            reference repeats one field over the slices of a volume).
        t: the step the slices are noised to (index into the schedule).
        steps: 1 = the reference's single x0 prediction; more = deterministic DDIM steps
            from ``t`` down to 0, each predicting x0 again.
        autocast: a context-manager factory for the forward passes (``Execution.autocast``).

    Returns:
        ``(B, N, H, W)`` reconstructions in [0, 1], float32.
    """
    import contextlib

    if not 0 <= t < process.timesteps:
        raise MedoodError(f"t must be within [0, {process.timesteps - 1}], got {t}")
    if steps < 1:
        raise MedoodError(f"steps must be at least 1, got {steps}")
    batch, count = slices.shape[0], noise.shape[0]
    height, width = slices.shape[-2:]
    autocast = autocast or contextlib.nullcontext
    alphas = process.alphas().to(slices.device)
    clean = to_model_units(slices.float())
    # (B*N, 1, H, W): slice-major, so that a slice's N reconstructions are neighbours
    clean_repeated = clean.repeat_interleave(count, dim=0)
    fields = noise.to(slices.device, torch.float32)[:, None].repeat(batch, 1, 1, 1)
    current = alphas[t].sqrt() * clean_repeated + (1.0 - alphas[t]).sqrt() * fields
    # DDIM (eta 0) from t to 0 by our own update: MONAI's DDIM scheduler walks a fixed grid of
    # steps from the end of the schedule, not from an arbitrary partial-noising step
    schedule = [round(t - k * t / steps) for k in range(steps)] + [-1]
    estimate = clean_repeated
    for now, following in zip(schedule[:-1], schedule[1:], strict=True):
        times = torch.full((batch * count,), now, device=slices.device, dtype=torch.long)
        with autocast():
            estimate = model(current, times, clean_repeated).float()
        estimate = estimate.clamp(-1.0, 1.0)
        if following < 0:
            break
        epsilon = (current - alphas[now].sqrt() * estimate) / (1.0 - alphas[now]).sqrt().clamp_min(
            1e-8
        )
        current = alphas[following].sqrt() * estimate + (1.0 - alphas[following]).sqrt() * epsilon
    return from_model_units(estimate).reshape(batch, count, height, width)
