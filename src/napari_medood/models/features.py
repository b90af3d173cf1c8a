"""Feature vectors from frozen networks, for the post-hoc OOD heads (MedOODFlow).

Each stage's feature map is globally average-pooled and the vectors are concatenated, as
MedOODFlow's ``feat_concat`` does (stem + 4 ResNet stages: 64 + 64 + 128 + 256 + 512 =
1024-d for a full-width ResNet-18). Two backbones:

- a 3D ResNet classifier (MONAI's ``ResNet``, trained by ``medood-train classifier``):
  stem, layer1..4, plus the penultimate vector and the logits the logit-based baselines use;
- the encoder of a shipped U-Net detector: every encoder stage, so that a map detector
  carries its own trust gate.

The heads L2-normalise the concatenated vector themselves (``ood.heads``), so raw pooled
features are returned here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

#: a full-width ResNet-18 (the reference); shipped classifiers may be narrower
RESNET18_WIDTHS = (64, 128, 256, 512)


@dataclass
class FeatureBatch:
    """Features of a batch of inputs.

    Attributes:
        features: the concatenated pooled stages, (n, d), not normalised.
        penultimate: the vector the classifier's last layer reads, (n, p) (the deepest
            stage for an encoder).
        logits: class logits (n, c), or None for a backbone without a classifier.
    """

    features: torch.Tensor
    penultimate: torch.Tensor
    logits: torch.Tensor | None = None

    def to(self, device: str | torch.device) -> FeatureBatch:
        return FeatureBatch(
            self.features.to(device),
            self.penultimate.to(device),
            None if self.logits is None else self.logits.to(device),
        )

    @staticmethod
    def cat(batches: Sequence[FeatureBatch]) -> FeatureBatch:
        logits = [b.logits for b in batches]
        return FeatureBatch(
            torch.cat([b.features for b in batches]),
            torch.cat([b.penultimate for b in batches]),
            None if any(x is None for x in logits) else torch.cat(logits),
        )

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def subset(self, index) -> FeatureBatch:
        return FeatureBatch(
            self.features[index],
            self.penultimate[index],
            None if self.logits is None else self.logits[index],
        )


def build_classifier(architecture: dict) -> nn.Module:
    """A MONAI 3D ResNet classifier from a card's ``architecture`` entry.

    Keys: ``depth`` (10, 18 or 34; basic blocks), ``widths`` (channels of the four stages;
    the reference's are 64, 128, 256, 512), ``in_channels``, ``num_classes``,
    ``shortcut`` ("A" as MedOODFlow's MONAI ResNet-18, or "B"), ``stem_stride``.
    """
    from monai.networks.nets import ResNet

    layers = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
    depth = int(architecture.get("depth", 18))
    if depth not in layers:
        raise ValueError(f"depth must be one of {sorted(layers)}, got {depth}")
    widths = [int(w) for w in architecture.get("widths", RESNET18_WIDTHS)]
    if len(widths) != 4:
        raise ValueError(f"widths must name four stages, got {widths}")
    return ResNet(
        block="basic",
        layers=list(layers[depth]),
        block_inplanes=widths,
        spatial_dims=3,
        n_input_channels=int(architecture.get("in_channels", 1)),
        conv1_t_size=7,
        conv1_t_stride=int(architecture.get("stem_stride", 2)),
        shortcut_type=str(architecture.get("shortcut", "A")),
        num_classes=int(architecture.get("num_classes", 2)),
    )


def _pool(x: torch.Tensor) -> torch.Tensor:
    return x.float().mean(dim=tuple(range(2, x.ndim)))


def resnet_features(network: nn.Module, x: torch.Tensor) -> FeatureBatch:
    """Pooled stem and stage features, the penultimate vector and the logits of a MONAI
    ResNet, in one forward pass."""
    x = network.act(network.bn1(network.conv1(x)))
    if not getattr(network, "no_max_pool", False):
        x = network.maxpool(x)
    pooled = [_pool(x)]
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(network, name)(x)
        pooled.append(_pool(x))
    penultimate = pooled[-1]
    logits = network.fc(penultimate.to(network.fc.weight.dtype)).float()
    return FeatureBatch(torch.cat(pooled, dim=1), penultimate, logits)


def encoder_features(network: nn.Module, x: torch.Tensor) -> FeatureBatch:
    """Pooled features of every stage of a U-Net's ``encoder`` (no logits)."""
    pooled = []
    for stage in network.encoder:
        x = stage(x)
        pooled.append(_pool(x))
    return FeatureBatch(torch.cat(pooled, dim=1), pooled[-1], None)


BACKBONES = {"resnet": resnet_features, "unet-encoder": encoder_features}


def feature_width(architecture: dict) -> int:
    """The length of the concatenated vector a backbone gives."""
    if "widths" in architecture or architecture.get("type") == "ResNet3D":
        widths = [int(w) for w in architecture.get("widths", RESNET18_WIDTHS)]
        return widths[0] + sum(widths)
    return int(sum(int(f) for f in architecture["features"]))
