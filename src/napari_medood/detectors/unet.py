"""The self-supervised 3D U-Net detector (MOOD 2022 method) behind the Detector protocol.

For each scan: reorient to the model's axes (RAS, by transposing and flipping only), resample
to the model's spacing when it differs, normalise intensities inside the brain mask as the
card says, run the checkpoints window by window (skipping windows without brain, averaging an
ensemble's probabilities), then bring the map back onto the scan's own grid and orientation.
The sample score is the mean of the 100 highest voxels; other scores of methods.md R13 are in
the result's extras.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback, check_cancelled, report
from napari_medood.detectors.base import AnomalyResult, foreground_of, sample_scores
from napari_medood.errors import MedoodError, look_up_option
from napari_medood.io.volume import Grid, Volume

DEVICES = ("auto", "cpu", "cuda", "mps")


class DeviceFallbackWarning(UserWarning):
    """The GPU ran out of memory and the work went on on the CPU."""


def choose_device(device: str = "auto") -> str:
    """``auto`` -> cuda, else mps, else cpu; an explicit device must be available."""
    import torch

    if device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MedoodError(f"device {device!r} was asked for but torch sees no CUDA GPU")
        return device
    look_up_option(device, DEVICES, "device")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MedoodError(
            "device 'cuda' was asked for but torch sees no CUDA GPU (is a CUDA "
            "build of torch installed?); use --device auto or cpu"
        )
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise MedoodError("device 'mps' was asked for but is not available; use auto or cpu")
    return device


def to_model_space(volume: Volume, mask: np.ndarray, spacing: Sequence[float] | None):
    """The scan and its mask reoriented to RAS and resampled to ``spacing`` (if given and
    different); returns ``(image, mask, ras_grid, model_grid)``."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    from napari_medood.preprocessing.resample import grid_with_spacing, resample_to_grid

    transform = io_orientation(volume.affine)  # stored axes -> RAS
    ras_affine = volume.affine @ inv_ornt_aff(transform, volume.shape)
    image = np.ascontiguousarray(apply_orientation(volume.data, transform))
    mask = np.ascontiguousarray(apply_orientation(mask, transform))
    ras_grid = Grid(image.shape, ras_affine)
    model_grid = ras_grid
    if spacing is not None and not np.allclose(ras_grid.spacing, spacing, atol=1e-3):
        model_grid = grid_with_spacing(ras_grid, spacing)
        image = resample_to_grid(Volume(image, ras_affine), model_grid, "linear").data
        mask = (
            resample_to_grid(Volume(mask.astype(np.uint8), ras_affine), model_grid, "nearest").data
            > 0
        )
    return image, mask, ras_grid, model_grid


def to_input_grid(
    values: np.ndarray, volume: Volume, ras_grid: Grid, model_grid: Grid
) -> np.ndarray:
    """A model-space map back on the scan's own grid and voxel order."""
    from nibabel.orientations import apply_orientation, io_orientation

    from napari_medood.preprocessing.resample import resample_to_grid

    if model_grid is not ras_grid:
        values = resample_to_grid(Volume(values, model_grid.affine), ras_grid, "linear").data
    transform = io_orientation(volume.affine)
    inverse = np.zeros_like(transform)
    for source_axis, (target_axis, flip) in enumerate(transform):
        inverse[int(target_axis)] = (source_axis, flip)
    return np.ascontiguousarray(apply_orientation(values, inverse))


@dataclass
class UNetDetector:
    """One checkpoint, or an ensemble of checkpoints with the same preprocessing.

    Attributes:
        checkpoints: shipped model names or checkpoint folders.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        overlap: window overlap (default: the card's, else 0.5).
        batch_size: windows per forward pass (None: 1 on the CPU, where larger batches only
            cost memory, 8 on a GPU, where they keep it busy).
        top_k: voxels averaged for the sample score.
    """

    checkpoints: Sequence[str | os.PathLike] = ("brain-t1-unet",)
    device: str = "auto"
    overlap: float | None = None
    batch_size: int | None = None
    top_k: int = 100
    models: list[Any] = field(default_factory=list, repr=False)
    cards: list[dict] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        from napari_medood.models.checkpoint import load_checkpoint

        self.device = choose_device(self.device)
        if not self.models:
            if not self.checkpoints:
                raise MedoodError("give at least one checkpoint")
            for checkpoint in self.checkpoints:
                model, card = load_checkpoint(checkpoint, self.device)
                self.models.append(model)
                self.cards.append(card)
        first = self.cards[0]["preprocessing"]
        for card in self.cards[1:]:
            if card["preprocessing"] != first:
                raise MedoodError(
                    f"the ensemble mixes preprocessings: {card.get('name')} "
                    f"differs from {self.cards[0].get('name')}"
                )

    @classmethod
    def from_models(
        cls, models: Sequence[Any], cards: Sequence[dict], device: str = "auto", **options: Any
    ) -> UNetDetector:
        """A detector over networks already in memory (validation during training)."""
        return cls(checkpoints=(), device=device, models=list(models), cards=list(cards), **options)

    @property
    def name(self) -> str:
        names = [card.get("name", "unet") for card in self.cards]
        return names[0] if len(names) == 1 else f"ensemble({','.join(names)})"

    @property
    def card(self) -> dict:
        return self.cards[0]

    def _predictor(self):
        import torch

        def run(batch):
            probabilities = None
            for model in self.models:
                with torch.autocast("cuda", enabled=batch.is_cuda):
                    p = torch.sigmoid(model.predict(batch).float())
                probabilities = p if probabilities is None else probabilities + p
            return probabilities / len(self.models)

        def predictor(batch):
            try:
                return run(batch.to(self.device))
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
                self.models = [m.to("cpu") for m in self.models]
                return run(batch.to("cpu"))

        return predictor

    def predict(
        self,
        volume: Volume,
        mask: np.ndarray | None = None,
        progress: ProgressCallback | None = None,
        cancelled: CancelledPredicate | None = None,
    ) -> AnomalyResult:
        from napari_medood.inference.sliding_window import sliding_window_predict
        from napari_medood.preprocessing.intensity import normalise

        preprocessing = self.card["preprocessing"]
        inference = self.card.get("inference", {})
        mask = foreground_of(volume, mask)
        check_cancelled(cancelled)
        image, model_mask, ras_grid, model_grid = to_model_space(
            volume, mask, preprocessing.get("spacing")
        )
        norm = preprocessing.get("normalisation", {"method": "percentile"})
        options = {k: v for k, v in norm.items() if k != "method"}
        image = normalise(image, norm.get("method", "percentile"), model_mask, **options)
        if preprocessing.get("zero_outside_mask", True):
            image[~model_mask] = 0.0

        def window_progress(done: int, total: int, message: str) -> None:
            report(progress, done, total + 1, "windows")

        overlap = self.overlap if self.overlap is not None else inference.get("overlap", 0.5)
        values, stats = sliding_window_predict(
            image,
            self._predictor(),
            preprocessing.get("roi", (96, 96, 96)),
            overlap,
            model_mask,
            self.batch_size or (1 if self.device == "cpu" else 8),
            self.device,
            inference.get("blend", "gaussian"),
            window_progress,
            cancelled,
        )
        values[~model_mask] = 0.0
        anomaly = np.clip(to_input_grid(values, volume, ras_grid, model_grid), 0.0, 1.0)
        anomaly[~mask] = 0.0
        scores = sample_scores(anomaly, mask, self.top_k)
        report(progress, 1, 1, "done")
        return AnomalyResult(
            anomaly_map=Volume(
                anomaly.astype(np.float32), volume.affine, volume.source, {"detector": self.name}
            ),
            score=scores["topk_mean"],
            extras={"scores": scores, "windows": stats, "device": self.device},
        )
