"""The self-supervised 3D U-Net detector (MOOD 2022 method): the ``unet3d`` family.

For each scan: into the card's model space (RAS, the model's spacing, normalised in the
brain mask), the checkpoints window by window (skipping windows without brain, averaging an
ensemble's probabilities, and with flip test-time augmentation those of each window mirrored
left-right, mirrored back), then back onto the scan's own grid and orientation. The sample
score is the mean of the 100 highest voxels; the other scores of methods.md R13 are in the
result's extras.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from napari_medood._progress import CancelledPredicate, Stages
from napari_medood.detectors.base import (
    BaseDetector,
    DetectorOptions,
    DetectorOutput,
    ScoreInfo,
    sample_scores,
)
from napari_medood.device import DeviceFallbackWarning, choose_device
from napari_medood.errors import MedoodError
from napari_medood.execution import plan_execution
from napari_medood.io.volume import Volume
from napari_medood.preprocessing.model_space import ModelSpace

FAMILY = "unet3d"
#: what the flip test-time augmentation does (``extras["tta"]``, the outputs' records)
FLIP_TTA = "left-right flip"
#: RAS x, left-right, in the (n, channel, x, y, z) batches of windows in model space
LEFT_RIGHT = 2


@dataclass
class UNetDetector(BaseDetector):
    """One checkpoint, or an ensemble of checkpoints with the same preprocessing.

    Attributes:
        checkpoints: shipped model names or checkpoint folders.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: ``auto``, ``float32``, ``bfloat16`` or ``float16`` (``execution``).
        overlap: window overlap (default: the card's, else 0.5).
        batch_size: windows per forward pass (None: 1 on the CPU, where larger batches only
            cost memory, 8 on a GPU, where they keep it busy).
        top_k: voxels averaged for the sample score.
        tta: flip test-time augmentation: each model's probabilities are the mean of its
            probabilities for the window and, mirrored back, for the window mirrored
            left-right (RAS x in model space); about twice the time.
    """

    checkpoints: Sequence[str | os.PathLike] = ("brain-any-unet-gpu",)
    device: str = "auto"
    overlap: float | None = None
    batch_size: int | None = None
    top_k: int = 100
    precision: str = "auto"
    tta: bool = False
    models: list[Any] = field(default_factory=list, repr=False)
    cards: list[dict] = field(default_factory=list, repr=False)
    score_info: ClassVar[ScoreInfo] = ScoreInfo("mean of the 100 highest voxels of the map")
    #: it uses ``DetectorOptions.tta`` (the Detect panel offers it for such families)
    flip_tta: ClassVar[bool] = True
    stages: ClassVar[tuple[str, ...]] = ("preprocessing", "windows", "back to the input grid")

    def __post_init__(self) -> None:
        from napari_medood.models.checkpoint import Checkpoint, CheckpointError

        self.device = choose_device(self.device)
        self.execution = plan_execution(self.device, self.precision)
        if not self.models:
            if not self.checkpoints:
                raise MedoodError("give at least one checkpoint")
            for name in self.checkpoints:
                checkpoint = name if isinstance(name, Checkpoint) else Checkpoint.open(name)
                for key in ("preprocessing", "architecture"):
                    if not isinstance(checkpoint.card.get(key), dict):
                        raise CheckpointError(
                            f"{checkpoint.folder / 'card.json'}: a {checkpoint.family} card needs a "
                            f"'{key}' entry"
                        )
                self.models.append(self.execution.prepare(checkpoint.build_model("cpu")))
                self.cards.append(checkpoint.card)
        first = self.cards[0]["preprocessing"]
        for card in self.cards[1:]:
            if card["preprocessing"] != first:
                raise MedoodError(
                    f"the ensemble mixes preprocessings: {card.get('name')} "
                    f"differs from {self.cards[0].get('name')}"
                )
        self.space = ModelSpace.from_card(first)

    @classmethod
    def from_checkpoints(cls, checkpoints: Sequence[Any], options: DetectorOptions) -> UNetDetector:
        """The family's factory (``napari_medood.registry``)."""
        return cls(
            list(checkpoints),
            device=options.device,
            overlap=options.overlap,
            batch_size=options.batch_size,
            precision=options.precision,
            tta=options.tta,
        )

    @classmethod
    def from_models(
        cls, models: Sequence[Any], cards: Sequence[dict], device: str = "auto", **options: Any
    ) -> UNetDetector:
        """A detector over networks already in memory (validation during training; no
        test-time augmentation unless ``tta=True`` is given)."""
        return cls(checkpoints=(), device=device, models=list(models), cards=list(cards), **options)

    @property
    def name(self) -> str:
        names = [card.get("name", "unet") for card in self.cards]
        return names[0] if len(names) == 1 else f"ensemble({','.join(names)})"

    @property
    def card(self) -> dict:
        if len(self.cards) == 1:
            return self.cards[0]
        # an ensemble's averaged map is not what any member was calibrated on
        return {k: v for k, v in self.cards[0].items() if k != "calibration"}

    @property
    def tta_method(self) -> str | None:
        """The test-time augmentation used (:data:`FLIP_TTA`), or None."""
        return FLIP_TTA if self.tta else None

    def describe_execution(self) -> str:
        """How it runs: device, precision[, channels-last][, flip TTA] (the map's header)."""
        return self.execution.describe() + (", flip TTA" if self.tta else "")

    def _predictor(self):
        import torch

        def run(batch):
            execution = self.execution
            views = [execution.inputs(batch)]
            if self.tta:  # the scan mirrored left-right; its map is mirrored back below
                views.append(execution.inputs(views[0].flip(LEFT_RIGHT)))
            probabilities = None
            for model in self.models:
                for mirrored, view in enumerate(views):
                    with execution.autocast():
                        logits = model.predict(view)
                    p = torch.sigmoid(logits.float())
                    if mirrored:
                        p = p.flip(LEFT_RIGHT)
                    probabilities = p if probabilities is None else probabilities + p
            # the mean over the models of each model's mean over the views
            return probabilities / (len(self.models) * len(views))

        def predictor(batch):
            try:
                return run(batch)
            except torch.cuda.OutOfMemoryError:
                # nnU-Net's remedy: finish on the CPU rather than fail the scan
                warnings.warn(
                    f"{self.device} ran out of memory; going on on the CPU (slower)",
                    DeviceFallbackWarning,
                    stacklevel=2,
                )
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.device = "cpu"
                self.execution = plan_execution("cpu", self._cpu_precision())
                self.models = [
                    self.execution.prepare(m, fold_batch_norm=False) for m in self.models
                ]
                return run(batch.to("cpu"))

        return predictor

    def _cpu_precision(self) -> str:
        # float16 is a GPU precision: the CPU takes the best it has instead
        return "auto" if self.precision == "float16" else self.precision

    def run(
        self, volume: Volume, mask: np.ndarray, stages: Stages, cancelled: CancelledPredicate | None
    ) -> DetectorOutput:
        from napari_medood._progress import check_cancelled
        from napari_medood.inference.sliding_window import sliding_window_predict

        inference = self.card.get("inference", {})
        prepared = self.space.prepare(volume, mask, stages.callback("preprocessing"))
        check_cancelled(cancelled)
        overlap = self.overlap if self.overlap is not None else inference.get("overlap", 0.5)
        values, stats = sliding_window_predict(
            prepared.image,
            self._predictor(),
            self.card["preprocessing"].get("roi", (96, 96, 96)),
            overlap,
            prepared.mask,
            self.batch_size or (1 if self.device == "cpu" else 8),
            self.device,
            inference.get("blend", "gaussian"),
            stages.callback("windows"),
            cancelled,
        )
        stages.report("back to the input grid")
        values[~prepared.mask] = 0.0
        anomaly = np.clip(self.space.to_input_grid(values, prepared), 0.0, 1.0)
        anomaly[~mask] = 0.0
        scores = sample_scores(anomaly, volume.affine, mask, self.top_k)
        return DetectorOutput(
            anomaly,
            scores["topk_mean"],
            {
                "scores": scores,
                "windows": stats,
                "device": self.device,
                "precision": self.execution.precision,
                "tta": self.tta_method,
                "execution": self.describe_execution(),
            },
        )
