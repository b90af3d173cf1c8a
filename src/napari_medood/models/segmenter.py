"""The supervised lesion segmenter: MONAI's 3D U-Net (residual units, instance norm, PReLU),
one sigmoid channel of lesion logits.

The wrapper only gives it the ``predict`` the map detectors call, so the sliding-window
inference, ensembles and the CPU fallback of ``detectors.unet`` serve it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

#: channels per stage of the shipped-size segmenter (runs a 2 mm brain in seconds on a CPU)
SMALL_CHANNELS = (16, 32, 64, 128)
SEGMENTER_PRESETS = {"small": SMALL_CHANNELS, "tiny": (4, 8, 16)}


class LesionSegmenter(nn.Module):
    """``monai.networks.nets.UNet`` (3D, strides of 2) whose forward gives lesion logits."""

    def __init__(
        self,
        channels: Sequence[int] = SMALL_CHANNELS,
        residual_units: int = 2,
        in_channels: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        from monai.networks.nets import UNet

        self.channels = tuple(int(c) for c in channels)
        self.residual_units = int(residual_units)
        self.net = UNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=1,
            channels=self.channels,
            strides=(2,) * (len(self.channels) - 1),
            num_res_units=self.residual_units,
            dropout=dropout,
        )

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
