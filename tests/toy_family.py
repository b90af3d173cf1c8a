"""A toy detector family that gives only a sample score: how far a scan's mean brain intensity
(percentile-normalised) lies from that of the scans it was "trained" on, in their standard
deviations, squashed into [0, 1). Its checkpoint is a card naming the family plus a
safetensors file of two numbers. Tests register it to prove that a new family needs its own
code and one registration, nothing else; its trainer (``toy_trainer.py``) shows the same
for the training spine."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from napari_medood.detectors import BaseDetector, DetectorOutput, ScoreInfo
from napari_medood.preprocessing.intensity import percentile_in_mask
from napari_medood.registry import Family, register_family, unregister_family

NAME = "toy-score"


class ToyScoreDetector(BaseDetector):
    outputs: ClassVar[tuple[str, ...]] = ("score",)
    score_info: ClassVar[ScoreInfo] = ScoreInfo("distance of the mean brain intensity, squashed")
    stages: ClassVar[tuple[str, ...]] = ("measuring",)
    runs = 0  # how many scans any toy detector has scored

    def __init__(self, checkpoint):
        state = checkpoint.load_state()
        self.mean = float(state["mean"])
        self.std = float(state["std"])
        self.card = checkpoint.card
        self.name = checkpoint.name

    @classmethod
    def from_checkpoints(cls, checkpoints, options):
        return cls(checkpoints[0])

    def run(self, volume, mask, stages, cancelled):
        ToyScoreDetector.runs += 1
        stages.report("measuring")
        mean = float(percentile_in_mask(volume.data, mask)[mask].mean())
        distance = abs(mean - self.mean) / self.std
        return DetectorOutput(score=distance / (1.0 + distance))


def register() -> None:
    register_family(
        Family(
            NAME,
            "toy: mean brain intensity vs training",
            ToyScoreDetector.from_checkpoints,
            trainer="toy_trainer:TRAINER",  # trained through the spine (tests/toy_trainer.py)
            train_name="toy",
        ),
        replace=True,
    )


def unregister() -> None:
    unregister_family(NAME)


def write_checkpoint(folder, mean: float = 0.45, std: float = 0.02):
    import torch

    from napari_medood.models.checkpoint import save_checkpoint

    state = {"mean": torch.tensor(mean), "std": torch.tensor(std)}
    return save_checkpoint(state, folder, {"name": "toy", "detector": NAME})


def mean_brain_intensity(data: np.ndarray, mask: np.ndarray) -> float:
    return float(percentile_in_mask(data, mask)[mask].mean())
