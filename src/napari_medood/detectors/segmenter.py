"""The supervised lesion segmenter (``seg3d``): trained on scans with lesion masks, optionally
with Med-OoD's anomaly-free samples (``training.segmenter``).

It reads a scan exactly as the self-supervised U-Net does (model space, windows, flip TTA,
ensembles, back to the scan's grid), so it is that detector with its own name and score: its
map is a lesion probability, which 0.5 already thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from napari_medood.detectors.base import ScoreInfo
from napari_medood.detectors.unet import UNetDetector

FAMILY = "seg3d"


@dataclass
class SegmenterDetector(UNetDetector):
    """One segmenter checkpoint, or an ensemble of them (see :class:`UNetDetector`)."""

    checkpoints: tuple = ()
    score_info: ClassVar[ScoreInfo] = ScoreInfo(
        "mean of the 100 highest voxels of the lesion probability"
    )

    @property
    def name(self) -> str:
        names = [card.get("name", "segmenter") for card in self.cards]
        return names[0] if len(names) == 1 else f"ensemble({','.join(names)})"
