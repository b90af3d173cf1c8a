"""The toy family's trainer: how a family plugs into the training spine (``training.spine``).

It brings what a family brings and nothing else: its configuration (the spine's run settings
plus its own), a network (the two numbers the toy detector reads: the mean and spread of the
scans' mean brain intensity), its data (one value per training scan, drawn with noise per
item from the item's own seed), the loss of a step (Gaussian negative log-likelihood), no
validation, and its card. Processes, resume, the budget, the schedule, logs and checkpoints
are the spine's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_medood.training.config import StepRunSettings, check_run_settings
from napari_medood.training.registry import Trainer


@dataclass
class ToyTrainConfig(StepRunSettings):
    """train: healthy scans with their brain masks (``masks``); noise: the spread of the
    jitter each training item adds to its scan's value."""

    name: str = "toy"
    out: str = "runs/toy"
    masks: str | None = None
    noise: float = 0.01
    lr: float = 0.05
    steps: int = 200
    batch_size: int = 4
    workers: int = 0

    def validate(self) -> ToyTrainConfig:
        check_run_settings(self, "healthy scans")
        return self


class ScanValues:
    """Item ``i``: a training scan's value plus Gaussian jitter, from generator ``[seed, i]``."""

    def __init__(self, values, length: int, seed: int, noise: float):
        self.values, self.length, self.seed, self.noise = values, length, seed, noise

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        import torch

        rng = np.random.default_rng([self.seed, index])
        value = self.values[int(rng.integers(len(self.values)))] + rng.normal(0, self.noise)
        return torch.tensor(value, dtype=torch.float32)


def train_toy(config: ToyTrainConfig, progress=None, cancelled=None):
    import torch

    from napari_medood.batch import read_case
    from napari_medood.io.cohort import discover_cases
    from napari_medood.training.spine import Schedule, StepPlan, open_run, train_steps
    from toy_family import NAME, mean_brain_intensity

    run = open_run(config)
    cases = discover_cases(config.train, masks=config.masks)
    values = [mean_brain_intensity(volume.data, mask) for volume, mask in map(read_case, cases)]

    class MeanAndSpread(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mean = torch.nn.Parameter(torch.tensor(0.5))
            self.std = torch.nn.Parameter(torch.tensor(0.1))

    def step_loss(model, values, step):
        std = model.std.abs() + 1e-4
        return (torch.log(std) + 0.5 * ((values - model.mean) / std) ** 2).mean()

    plan = StepPlan(
        network=MeanAndSpread(),
        dataset=ScanValues(
            values, config.steps * config.batch_size * run.world, config.seed, config.noise
        ),
        step_loss=step_loss,
        optimiser=lambda parameters: torch.optim.Adam(parameters, lr=config.lr),
        schedule=Schedule("polynomial", config.lr, power=1.0),
        card=lambda metrics, training: {
            "name": config.name,
            "detector": NAME,
            "metrics": metrics,
            "training": training,
        },
        training=run.record(cases, []),
    )
    return train_steps(run, plan, progress, cancelled)


TRAINER = Trainer(ToyTrainConfig, train_toy, "toy: mean and spread of the brain intensity")
