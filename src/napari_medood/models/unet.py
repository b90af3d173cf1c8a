"""The deep-supervised 3D U-Net of the MOOD 2022 winner (methods.md R8, R9).

nnU-Net style: stages of two 3x3x3 convolutions (no bias) + BatchNorm + LeakyReLU(0.01), the
first convolution of every stage after the first with stride 2; transposed convolutions
(k 2, s 2, no bias) up, skip concatenation, two convolutions; He initialisation. 1x1x1 heads
on the last ``ds_heads`` decoder stages give logits from low to full resolution; the
deep-supervision loss weights them 2^-i, normalised ([1/15, 2/15, 4/15, 8/15] for four heads).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

#: mood22's network
REFERENCE_FEATURES = (32, 64, 128, 256, 320, 320)
#: a 5-stage version that runs a 2 mm brain in seconds on a laptop CPU
SMALL_FEATURES = (12, 24, 48, 96, 192)
PRESETS = {"reference": REFERENCE_FEATURES, "small": SMALL_FEATURES}


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.1),
        nn.LeakyReLU(0.01, inplace=True),
    )


def _stage(in_channels: int, out_channels: int, convs: int, stride: int) -> nn.Sequential:
    layers = [_conv(in_channels, out_channels, stride)]
    layers += [_conv(out_channels, out_channels) for _ in range(convs - 1)]
    return nn.Sequential(*layers)


class UNet3DDeepSup(nn.Module):
    """3D U-Net whose forward pass returns the deep-supervision logits, low to full resolution.

    Args:
        in_channels, out_channels: image channels in, logit channels out.
        features: channels per resolution stage (its length is the number of stages).
        convs_per_stage: convolutions per stage.
        ds_heads: decoder stages with an output head (the last one is full resolution);
            default min(4, stages - 1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = REFERENCE_FEATURES,
        convs_per_stage: int = 2,
        ds_heads: int | None = None,
    ):
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError("a U-Net needs at least two stages")
        ds_heads = min(4, len(features) - 1) if ds_heads is None else ds_heads
        if not 1 <= ds_heads <= len(features) - 1:
            raise ValueError(f"ds_heads must be within 1..{len(features) - 1}, got {ds_heads}")
        self.features = features
        self.ds_heads = ds_heads
        self.encoder = nn.ModuleList(
            _stage(
                in_channels if i == 0 else features[i - 1], f, convs_per_stage, 1 if i == 0 else 2
            )
            for i, f in enumerate(features)
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(features[i + 1], features[i], 2, stride=2, bias=False)
            for i in reversed(range(len(features) - 1))
        )
        self.decoder = nn.ModuleList(
            _stage(2 * features[i], features[i], convs_per_stage, 1)
            for i in reversed(range(len(features) - 1))
        )
        self.heads = nn.ModuleList(
            nn.Conv3d(features[i], out_channels, 1, bias=False) for i in reversed(range(ds_heads))
        )
        for module in self.modules():
            if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
                nn.init.kaiming_normal_(module.weight, a=0.01)

    @property
    def divisor(self) -> int:
        """Input sides must be multiples of this (2 ** (stages - 1))."""
        return 2 ** (len(self.features) - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outputs = []
        first_head = len(self.decoder) - self.ds_heads
        for level, (up, stage) in enumerate(zip(self.up, self.decoder, strict=True)):
            x = up(x)
            x = stage(torch.cat([x, skips[-2 - level]], dim=1))
            if level >= first_head:
                outputs.append(self.heads[level - first_head](x))
        return outputs

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution logits only."""
        return self.forward(x)[-1]


def ds_weights(heads: int) -> list[float]:
    """Deep-supervision weights, low to high resolution: 2^-i normalised, reversed."""
    raw = [2.0**-i for i in range(heads)][::-1]
    total = sum(raw)
    return [w / total for w in raw]


def deep_supervision_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits of every head against the (soft) target; low-resolution logits are
    upsampled trilinearly to the target, which is never downsampled."""
    weights = ds_weights(len(outputs))
    loss = target.new_zeros(())
    for weight, logits in zip(weights, outputs, strict=True):
        if logits.shape[2:] != target.shape[2:]:
            logits = F.interpolate(
                logits, size=target.shape[2:], mode="trilinear", align_corners=False
            )
        loss = loss + weight * F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return loss


def build_unet(architecture: dict) -> UNet3DDeepSup:
    """A U-Net from a model card's ``architecture`` entry."""
    features = architecture.get("features") or PRESETS[architecture.get("preset", "small")]
    return UNet3DDeepSup(
        architecture.get("in_channels", 1),
        architecture.get("out_channels", 1),
        features,
        architecture.get("convs_per_stage", 2),
        architecture.get("ds_heads"),
    )
