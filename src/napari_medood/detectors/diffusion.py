"""Diffusion reconstructions + a pixel-wise Mahalanobis map (MHD, MICCAI 2024): the
``diffusion2d`` family.

For each scan: into the card's model space (RAS, the model's spacing, normalised in the
brain mask), cropped in-plane around the brain; every axial slice with brain is noised to
step ``t`` N times (fresh simplex noise per reconstruction, one field shared by all slices
as the reference does) and reconstructed by the slice diffusion model, N reconstructions of
several slices in one batched call; then the Mahalanobis distance of each voxel to its
reconstructions (``inference.mahalanobis``), the reference's post-processing, and back onto
the scan's own grid. The single-reconstruction residual, the reconstructions, their mean and
standard deviation come back as extras (``maps``) on the scan's grid; ``variant="residual"``
makes the residual the anomaly map (to compare the two in ``medood-eval``).
"""

from __future__ import annotations

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

FAMILY = "diffusion2d"
VARIANTS = ("mhd", "residual")
SLICE_AXIS = 2  # axial in the model space's RAS arrays
MARGIN = 4  # pixels kept around the brain when a slice is cropped


def brain_box(mask: np.ndarray, divisor: int, margin: int = MARGIN) -> tuple[slice, slice]:
    """The in-plane box (axes 0, 1) around the brain of every slice, with ``margin``, whose
    sides are multiples of ``divisor``; it may reach beyond the array (zero padding)."""
    if not mask.any():
        return slice(0, mask.shape[0]), slice(0, mask.shape[1])
    box = []
    for axis in (0, 1):
        inside = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        low, high = int(inside[0]) - margin, int(inside[-1]) + 1 + margin
        length = -(-(high - low) // divisor) * divisor
        low -= (length - (high - low)) // 2
        box.append(slice(low, low + length))
    return box[0], box[1]


def crop(volume: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """``volume[box]`` with zeros where the box reaches beyond it."""
    out = np.zeros(
        (box[0].stop - box[0].start, box[1].stop - box[1].start, *volume.shape[2:]),
        volume.dtype,
    )
    source, target = [], []
    for axis, part in enumerate(box):
        start, stop = max(part.start, 0), min(part.stop, volume.shape[axis])
        source.append(slice(start, stop))
        target.append(slice(start - part.start, stop - part.start))
    out[tuple(target)] = volume[tuple(source)]
    return out


def uncrop(values: np.ndarray, box: tuple[slice, slice], shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`crop`: ``values`` placed into zeros of ``shape``."""
    out = np.zeros((*values.shape[: values.ndim - 3], *shape), values.dtype)
    source, target = [], []
    for axis, part in enumerate(box):
        start, stop = max(part.start, 0), min(part.stop, shape[axis])
        target.append(slice(start, stop))
        source.append(slice(start - part.start, stop - part.start))
    lead = (slice(None),) * (values.ndim - 3)
    out[(*lead, *target)] = values[(*lead, *source)]
    return out


@dataclass
class MHDDetector(BaseDetector):
    """One slice diffusion checkpoint and how its reconstructions are scored.

    Attributes:
        checkpoint: a shipped model name or a checkpoint folder.
        device, precision: as for every detector (``execution``).
        batch_size: slices per forward pass (each gives N reconstructions; None: 4 on the
            CPU, 16 on a GPU).
        reconstructions: N (None: the card's, the reference's 10); at least 2.
        t: the step slices are noised to (None: the card's, the reference's 498).
        steps: 1 = the reference's single x0 prediction; more = DDIM steps from ``t``
            (None: the card's, else 1).
        seed: the noise's seed (the same seed gives the same map).
        variant: ``mhd`` (the Mahalanobis map) or ``residual`` (the single-reconstruction
            residual through the same post-processing) as the anomaly map.
        post_processing: options of ``inference.mahalanobis.PostProcessing`` over the card's.
        keep_reconstructions: return the N reconstructions, their mean and standard deviation
            and the raw distance on the scan's grid (napari shows them; each costs a
            resampling per volume, which batch runs skip).
    """

    checkpoint: Any = "brain-t1-mhd"
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    reconstructions: int | None = None
    t: int | None = None
    steps: int | None = None
    seed: int = 0
    variant: str = "mhd"
    post_processing: dict = field(default_factory=dict)
    keep_reconstructions: bool = True
    score_info: ClassVar[ScoreInfo] = ScoreInfo(
        "mean of the map inside the brain (the reference's)"
    )
    stages: ClassVar[tuple[str, ...]] = (
        "preprocessing",
        "reconstructions",
        "Mahalanobis map",
        "back to the input grid",
    )
    variants: ClassVar[tuple[str, ...]] = VARIANTS

    def __post_init__(self) -> None:
        from napari_medood.inference.mahalanobis import PostProcessing
        from napari_medood.models.checkpoint import Checkpoint, CheckpointError
        from napari_medood.models.diffusion import DiffusionProcess

        if self.variant not in VARIANTS:
            raise MedoodError(f"unknown variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
        checkpoint = (
            self.checkpoint
            if isinstance(self.checkpoint, Checkpoint)
            else Checkpoint.open(self.checkpoint)
        )
        for key in ("preprocessing", "architecture", "diffusion"):
            if not isinstance(checkpoint.card.get(key), dict):
                raise CheckpointError(
                    f"{checkpoint.folder / 'card.json'}: a {FAMILY} card needs a '{key}' entry"
                )
        self._card = checkpoint.card
        card_path = checkpoint.folder / "card.json"
        inference = self._card.get("inference", {})
        if self.reconstructions is None:
            self.reconstructions = int(inference.get("reconstructions", 10))
        if self.t is None:
            self.t = int(inference.get("t", 498))
        if self.steps is None:
            self.steps = int(inference.get("steps", 1))
        if self.reconstructions < 2:
            raise MedoodError(
                f"the Mahalanobis map needs at least 2 reconstructions, got {self.reconstructions}"
            )
        if self.steps < 1:
            raise MedoodError(f"steps must be at least 1, got {self.steps}")
        try:
            self.process = DiffusionProcess.from_card(self._card["diffusion"])
            card_post = PostProcessing.from_card(inference.get("post_processing", {}))
        except (MedoodError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{card_path}: {exc}") from None
        if not 0 <= self.t < self.process.timesteps:
            raise MedoodError(f"t must be within [0, {self.process.timesteps - 1}], got {self.t}")
        from dataclasses import asdict

        self.post = PostProcessing.from_card({**asdict(card_post), **self.post_processing})
        self.device = choose_device(self.device)
        self.execution = plan_execution(self.device, self.precision)
        self.model = self.execution.prepare(checkpoint.build_model("cpu"), fold_batch_norm=False)
        self.space = ModelSpace.from_card(self._card["preprocessing"])

    @classmethod
    def from_checkpoints(cls, checkpoints: Sequence[Any], options: DetectorOptions) -> MHDDetector:
        """The family's factory (``napari_medood.registry``)."""
        if len(checkpoints) != 1:
            raise MedoodError(
                f"the {FAMILY} family runs one checkpoint at a time, got {len(checkpoints)}"
            )
        return cls(
            checkpoints[0],
            device=options.device,
            precision=options.precision,
            batch_size=options.batch_size,
            variant=options.variant or VARIANTS[0],
            keep_reconstructions=options.extra_maps,
        )

    @property
    def name(self) -> str:
        name = self._card.get("name", "diffusion")
        return name if self.variant == "mhd" else f"{name} (single reconstruction)"

    @property
    def card(self) -> dict:
        return self._card

    def _reconstruct(self, noise):
        import torch

        from napari_medood.models.diffusion import reconstruct

        def run(batch):
            return reconstruct(
                self.model,
                batch,
                noise,
                self.t,
                self.process,
                self.steps,
                self.execution.autocast,
            )

        def predictor(batch):
            try:
                return run(self.execution.inputs(batch))
            except torch.cuda.OutOfMemoryError:
                # nnU-Net's remedy: finish on the CPU rather than fail the scan
                warnings.warn(
                    f"{self.device} ran out of memory; going on on the CPU (slower)",
                    DeviceFallbackWarning,
                    stacklevel=2,
                )
                torch.cuda.empty_cache()
                self.device = "cpu"
                precision = "auto" if self.precision == "float16" else self.precision
                self.execution = plan_execution("cpu", precision)
                self.model = self.execution.prepare(self.model, fold_batch_norm=False)
                return run(batch.to("cpu"))

        return predictor

    def run(
        self, volume: Volume, mask: np.ndarray, stages: Stages, cancelled: CancelledPredicate | None
    ) -> DetectorOutput:
        import torch

        from napari_medood._progress import check_cancelled
        from napari_medood.inference.mahalanobis import mhd_volume_maps
        from napari_medood.inference.slicewise import slicewise_predict

        prepared = self.space.prepare(volume, mask, stages.callback("preprocessing"))
        check_cancelled(cancelled)
        box = brain_box(prepared.mask, 2 ** (self.model.levels - 1))
        image, inside = crop(prepared.image, box), crop(prepared.mask, box)
        generator = torch.Generator().manual_seed(int(self.seed))
        noise = self.process.noise_fields(self.reconstructions, image.shape[:2], generator)
        batch_size = self.batch_size or (4 if self.device == "cpu" else 16)
        recons, stats = slicewise_predict(
            image,
            self._reconstruct(noise),
            SLICE_AXIS,
            inside,
            batch_size,
            self.device,
            stages.callback("reconstructions"),
            cancelled,
        )
        stages.report("Mahalanobis map")
        maps = mhd_volume_maps(image, recons, inside, SLICE_AXIS, self.post, cancelled=cancelled)
        check_cancelled(cancelled)
        stages.report("back to the input grid")

        def back(values: np.ndarray) -> np.ndarray:
            full = uncrop(values, box, prepared.image.shape)
            return self.space.to_input_grid(full, prepared).astype(np.float32, copy=False)

        on_input = {
            "mhd": np.clip(back(maps["mhd"]), 0.0, 1.0),
            "residual": np.clip(back(maps["residual"]), 0.0, 1.0),
        }
        if self.keep_reconstructions:
            on_input["mahalanobis"] = np.maximum(back(maps["mahalanobis"]), 0.0)
            on_input["mean"] = back(maps["mean"])
            on_input["std"] = np.maximum(back(maps["std"]), 0.0)
        for values in on_input.values():
            values[~mask] = 0.0
        if self.keep_reconstructions:
            stack = np.stack([back(r) for r in recons])
            stack[:, ~mask] = 0.0
            on_input["reconstructions"] = stack
        anomaly = on_input[self.variant]
        scores = sample_scores(anomaly, volume.affine, mask)
        other = "residual" if self.variant == "mhd" else "mhd"
        return DetectorOutput(
            anomaly,
            scores["mean_in_mask"],
            {
                "scores": scores,
                f"{other}_scores": sample_scores(on_input[other], volume.affine, mask),
                "maps": on_input,
                "slices": stats,
                "reconstructions": self.reconstructions,
                "t": self.t,
                "steps": self.steps,
                "variant": self.variant,
                "device": self.device,
                "precision": self.execution.precision,
                "execution": self.execution.describe(self.model),
            },
        )
