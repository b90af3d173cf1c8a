"""The supervised lesion segmenter: MONAI's 3D U-Net (residual units, instance norm, PReLU),
one sigmoid channel of lesion logits.

The network is built here, module for module as ``monai.networks.nets.UNet`` builds it (the
same layers, names and order: a MONAI checkpoint loads as it is, and the two give the same
outputs, ``tests/test_unet.py``), rather than imported from MONAI: importing any part of
MONAI imports all of it (its package loads every submodule), 1.6 s of the default model's
2.4 s start-up on the 2-core machine (``benchmarks/bench_startup.py``), and the segmenter was
the only MONAI piece the default model runs.

The wrapper gives it the ``predict`` the map detectors call, so the sliding-window
inference, ensembles and the CPU fallback of ``detectors.unet`` serve it unchanged. A new
network starts out predicting the lesion prior (the last convolution's bias at its logit,
RetinaNet's initialisation): MONAI's U-Net ends in a one-channel instance-normalised layer
plus a residual convolution, and from an even start it takes hundreds of steps only to learn
that lesions are rare (measured: no lesion AP after 600 steps without it; 0.45 on the
training batches after 250 with it).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

#: channels per stage of the shipped-size segmenter (runs a 2 mm brain in seconds on a CPU)
SMALL_CHANNELS = (16, 32, 64, 128)
SEGMENTER_PRESETS = {"small": SMALL_CHANNELS, "tiny": (4, 8, 16)}


class ConvNormAct(nn.Sequential):
    """MONAI's ``Convolution``: a (transposed) 3x3x3 convolution, then instance norm,
    dropout and PReLU (its ``adn``), unless ``conv_only``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        dropout: float,
        transposed: bool = False,
        conv_only: bool = False,
    ):
        super().__init__()
        if transposed:
            conv = nn.ConvTranspose3d(
                in_channels, out_channels, 3, stride, padding=1, output_padding=stride - 1
            )
        else:
            conv = nn.Conv3d(in_channels, out_channels, 3, stride, padding=1)
        self.add_module("conv", conv)
        if not conv_only:
            adn = OrderedDict(
                N=nn.InstanceNorm3d(out_channels), D=nn.Dropout(dropout), A=nn.PReLU()
            )
            self.add_module("adn", nn.Sequential(adn))


class ResidualUnit(nn.Module):
    """MONAI's ``ResidualUnit``: ``subunits`` convolutions (the first with the stride) plus
    the input through a convolution where the shape changes (3x3x3 with the stride, 1x1x1
    without one)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        subunits: int,
        dropout: float,
        last_conv_only: bool = False,
    ):
        super().__init__()
        self.conv = nn.Sequential()
        channels, unit_stride = in_channels, stride
        for index in range(max(1, subunits)):
            conv_only = last_conv_only and index == max(1, subunits) - 1
            self.conv.add_module(
                f"unit{index}",
                ConvNormAct(channels, out_channels, unit_stride, dropout, conv_only=conv_only),
            )
            channels, unit_stride = out_channels, 1
        self.residual: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            kernel, padding = (3, 1) if stride != 1 else (1, 0)
            self.residual = nn.Conv3d(in_channels, out_channels, kernel, stride, padding)

    def forward(self, x):
        return self.conv(x) + self.residual(x)


class SkipConnection(nn.Module):
    """The input beside what ``submodule`` makes of it, along the channels."""

    def __init__(self, submodule: nn.Module):
        super().__init__()
        self.submodule = submodule

    def forward(self, x):
        return torch.cat([x, self.submodule(x)], dim=1)


class ResidualUNet(nn.Module):
    """``monai.networks.nets.UNet(spatial_dims=3, strides=2, kernel_size=3,
    up_kernel_size=3, act=PReLU, norm=INSTANCE)``: each level a down layer, the deeper levels
    in a skip connection, and an up layer (a transposed convolution, then a residual unit)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        num_res_units: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.units = int(num_res_units)
        self.dropout = float(dropout)
        self.model = self._level(in_channels, out_channels, list(channels), top=True)

    def _down(self, in_channels: int, out_channels: int, stride: int) -> nn.Module:
        if self.units > 0:
            return ResidualUnit(in_channels, out_channels, stride, self.units, self.dropout)
        return ConvNormAct(in_channels, out_channels, stride, self.dropout)

    def _up(self, in_channels: int, out_channels: int, top: bool) -> nn.Module:
        conv = ConvNormAct(
            in_channels,
            out_channels,
            2,
            self.dropout,
            transposed=True,
            conv_only=top and self.units == 0,
        )
        if self.units == 0:
            return conv
        unit = ResidualUnit(out_channels, out_channels, 1, 1, self.dropout, last_conv_only=top)
        return nn.Sequential(conv, unit)

    def _level(self, in_channels: int, out_channels: int, channels: list, top: bool):
        here = channels[0]
        if len(channels) > 2:
            inner = self._level(here, here, channels[1:], top=False)
            up_channels = here * 2
        else:  # the bottom: no stride
            inner = self._down(here, channels[1], 1)
            up_channels = here + channels[1]
        return nn.Sequential(
            self._down(in_channels, here, 2),
            SkipConnection(inner),
            self._up(up_channels, out_channels, top),
        )

    def forward(self, x):
        return self.model(x)


class LesionSegmenter(nn.Module):
    """MONAI's 3D U-Net (strides of 2, ``ResidualUNet``) whose forward gives lesion logits."""

    def __init__(
        self,
        channels: Sequence[int] = SMALL_CHANNELS,
        residual_units: int = 2,
        in_channels: int = 1,
        dropout: float = 0.0,
        prior: float = 0.01,
    ):
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        self.residual_units = int(residual_units)
        self.net = ResidualUNet(in_channels, 1, self.channels, self.residual_units, dropout)
        last = [m for m in self.net.modules() if isinstance(m, nn.Conv3d)][-1]
        nn.init.constant_(last.bias, math.log(prior / (1.0 - prior)))

    def forward(self, x):
        return self.net(x)

    def predict(self, x):
        """The lesion logits (what the map detectors turn into probabilities)."""
        return self.net(x)


def build_segmenter(architecture: dict) -> LesionSegmenter:
    """A segmenter from a model card's ``architecture`` entry."""
    channels = (
        architecture.get("channels") or SEGMENTER_PRESETS[architecture.get("preset", "small")]
    )
    return LesionSegmenter(
        channels, architecture.get("residual_units", 2), architecture.get("in_channels", 1)
    )
