"""What ``medood-train METHOD`` runs: each trainable family's configuration and loop.

A family names its :class:`Trainer` in its registration (``napari_medood.registry``); the
trainer is resolved only when that method is trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_medood.errors import MedoodError, look_up_option


@dataclass
class TrainResult:
    """Where a run left its best checkpoint, and how good it was."""

    best: Path | None
    best_metric: float | None
    metric: str
    last_step: int
    seconds: float
    #: the steps the schedule ran over (fewer than asked where a budget stopped the run)
    scheduled_steps: int | None = None
    budget_s: float = 0.0
    #: the learning rate of the last optimiser step (annealed at the end of a schedule)
    final_lr: float | None = None


@dataclass(frozen=True)
class Trainer:
    """A family's training: its configuration dataclass (read from YAML with overrides) and
    ``run(config, progress=None, cancelled=None) -> TrainResult``."""

    config: type
    run: Callable[..., TrainResult]
    description: str
    example_config: str = ""


def trainers() -> dict[str, Any]:
    """``medood-train`` method name -> family."""
    from napari_medood.registry import trainable_families

    return trainable_families()


def get_trainer(method: str) -> Trainer:
    """The trainer of ``medood-train METHOD``; an unknown method lists the known ones."""
    from napari_medood.registry import resolve

    families = trainers()
    try:
        look_up_option(str(method), families, "method to train")
    except ValueError as exc:
        raise MedoodError(str(exc)) from None
    trainer = resolve(families[method].trainer)
    if not isinstance(trainer, Trainer):
        raise MedoodError(f"the {method} family's trainer is not a Trainer: {trainer!r}")
    return trainer
