"""``medood-train classifier``: the 3D ResNet whose frozen features a feature-OOD model reads.

MedOODFlow's recipe for its MONAI 3D ResNet-18 (shortcut A, one input channel): Adam 1e-4,
betas (0.5, 0.999), polynomial learning-rate decay (power 0.9), cross-entropy, the best
checkpoint by weighted F1 on the validation split. Training data: a MedMNIST 3D archive split
(``path.npz:train``), with TorchIO flips, small affine changes and gamma as augmentation.
Runs under torchrun unchanged (DDP, one share of each batch per process); resume, budget,
logs and checkpoints are the training spine's (``training.spine``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback
from napari_medood.errors import MedoodError
from napari_medood.training.config import StepRunSettings, check_run_settings
from napari_medood.training.registry import Trainer, TrainResult


@dataclass
class ClassifierTrainConfig(StepRunSettings):
    """How to train the feature network (MedOODFlow's classifier recipe).

    Data: train and val, MedMNIST archive splits (``path.npz:train``, ``path.npz:val``);
        shape: the network's input (voxels); each volume is resized to it.
    Network (MONAI ResNet, basic blocks): depth (10/18/34), widths of the four stages (the
        reference's: 64, 128, 256, 512), num_classes.
    Optimisation: Adam (betas, weight_decay) with a polynomial decay (poly_power); augment
        (TorchIO flips, affine, gamma); the run's settings (steps, batch_size, precision,
        budget_s...) are the spine's (``training.config.StepRunSettings``).
    """

    name: str = "classifier"
    description: str = "3D ResNet classifier (the feature network of a feature-OOD model)"
    val: str | None = None
    out: str = "runs/classifier"
    shape: list[int] = field(default_factory=lambda: [64, 64, 64])
    depth: int = 18
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    num_classes: int = 2
    batch_size: int = 16
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.0
    poly_power: float = 0.9
    augment: bool = True
    # float32: float32 ran as fast on this small network; under bfloat16 autocast the CPU's 3D
    # convolution backward gave non-finite gradients within 25 steps (layer4), which a run
    # asked for bfloat16 now survives (the spine goes on in float32 from that step)
    precision: str = "float32"
    val_interval: int = 200
    workers: int = 0

    def validate(self) -> ClassifierTrainConfig:
        from napari_medood.training.ood_data import is_npz_source

        check_run_settings(self, "a MedMNIST archive split, path.npz:train")
        for source in (self.train, self.val):
            if source and not is_npz_source(source):
                raise MedoodError(
                    f"{source}: the classifier trains on a MedMNIST archive split (path.npz:train)"
                )
        if len(self.shape) != 3 or len(self.widths) != 4:
            raise MedoodError("shape needs three values and widths four")
        if self.depth not in (10, 18, 34):
            raise MedoodError(f"depth must be 10, 18 or 34, got {self.depth}")
        return self

    def architecture(self) -> dict[str, Any]:
        return {
            "type": "ResNet3D",
            "depth": self.depth,
            "widths": list(self.widths),
            "in_channels": 1,
            "num_classes": self.num_classes,
            "shortcut": "A",
            "stem_stride": 2,
        }

    def input_spec(self) -> dict[str, Any]:
        return {"kind": "resize", "shape": list(self.shape), "normalisation": "min-max to [0, 1]"}


class AugmentedVolumes:
    """``(1, D, H, W)`` tensors and labels, the training order fixed by the seed, each
    volume augmented by TorchIO when asked."""

    def __init__(self, arrays, labels, length: int, seed: int, augment: bool):
        self.arrays, self.labels = arrays, labels
        self.length, self.seed, self.augment = length, seed, augment
        self.order = np.random.default_rng(seed).integers(0, len(arrays), size=length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        import torch

        volume = torch.from_numpy(self.arrays[int(self.order[index])])[None]
        if self.augment:
            import torchio as tio

            torch.manual_seed(self.seed * 1_000_003 + index)
            volume = tio.Compose(
                [
                    tio.RandomFlip(axes=(0, 1, 2)),
                    tio.RandomAffine(scales=0.1, degrees=10, p=0.5),
                    tio.RandomGamma(log_gamma=0.2, p=0.5),
                ]
            )(volume)
        return volume.float(), int(self.labels[int(self.order[index])])


def predict_logits(network, arrays, execution, batch_size: int = 16):
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(arrays), batch_size):
            x = torch.from_numpy(np.stack(arrays[start : start + batch_size]))[:, None]
            with execution.autocast():
                out.append(network(execution.inputs(x)).float().cpu())
    return torch.cat(out)


def weighted_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """F1 per class weighted by its support (the reference's model selection)."""
    total = 0.0
    for c in np.unique(labels):
        tp = np.sum((predicted == c) & (labels == c))
        fp = np.sum((predicted == c) & (labels != c))
        fn = np.sum((predicted != c) & (labels == c))
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        total += f1 * np.mean(labels == c)
    return float(total)


def classifier_card(config, metrics: dict, training: dict) -> dict:
    return {
        "name": config.name,
        "detector": "classifier3d",
        "description": config.description,
        "method": "3D ResNet classifier (MONAI), MedOODFlow's recipe",
        "architecture": config.architecture(),
        "input": config.input_spec(),
        "metrics": metrics,
        "training": training,
    }


def train_classifier(
    config: ClassifierTrainConfig,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> TrainResult:
    """Train (or resume) as ``config`` says; the best checkpoint (weighted F1 on ``val``)
    goes to ``out/best``."""
    import torch

    from napari_medood.models.features import build_classifier
    from napari_medood.training.ood_data import load_npz
    from napari_medood.training.spine import Schedule, StepPlan, open_run, train_steps

    run = open_run(config)
    execution = run.execution
    network = execution.prepare(build_classifier(config.architecture()), fold_batch_norm=False)
    network.train()
    train = load_npz(config.train, config.shape)
    val = load_npz(config.val, config.shape) if config.val else None
    dataset = AugmentedVolumes(
        train.arrays,
        train.labels,
        config.steps * config.batch_size * run.world,
        config.seed,
        config.augment,
    )
    training = run.record(volumes=len(train), validation=config.val, data=config.train)

    def step_loss(model, batch, step):
        volumes, labels = batch
        with execution.autocast():
            logits = model(execution.inputs(volumes))
        return torch.nn.functional.cross_entropy(logits.float(), labels.to(run.device))

    def validate(module) -> dict:
        logits = predict_logits(module, val.arrays, execution)
        predicted = logits.argmax(1).numpy()
        return {
            "weighted_f1": weighted_f1(val.labels, predicted),
            "accuracy": float(np.mean(predicted == val.labels)),
        }

    plan = StepPlan(
        network=network,
        dataset=dataset,
        step_loss=step_loss,
        optimiser=lambda parameters: torch.optim.Adam(
            parameters, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay
        ),
        schedule=Schedule("polynomial", config.lr, power=config.poly_power),
        card=lambda metrics, training: classifier_card(config, metrics, training),
        training=training,
        validate=validate if val is not None else None,
        metric="weighted_f1",
        metric_label="weighted F1",
        # float32 on CPUs whose 3D convolution backward overflows under bfloat16: a step
        # with a non-finite gradient is skipped, as AMP's scaler does
        skip_nonfinite=True,
    )
    return train_steps(run, plan, progress, cancelled)


TRAINER = Trainer(
    config=ClassifierTrainConfig,
    run=train_classifier,
    description="a 3D ResNet classifier (MedOODFlow's recipe) whose frozen features a "
    "feature-OOD model (medood-train flow) reads; best by validation weighted F1",
    example_config="configs/adrenal3d-classifier.yaml",
)
