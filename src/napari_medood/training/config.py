"""Training configuration: the settings every family's configuration shares (a run, and Med-OoD
supervision), their checks, and a family's dataclass read from YAML with ``key=value``
overrides."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from napari_medood.errors import MedoodError

#: how contrast randomisation groups a parcellation's labels (``synth.contrast``)
CONTRAST_GROUPS = ("dlmuse", "labels")


@dataclass
class OodSupervisionSettings:
    """Med-OoD supervision, as every family that mixes in hard negatives reads it.

    ood_supervision: the share of the samples that are hard negatives, or ``auto`` for the
        reference's ratio rule (where the family has foreground to count); 0 mines nothing.
    ood_baseline: the checkpoint of this model space that mines them (default: ``init``).
    ood_candidates: how many candidates it reads; ood_threshold, ood_min_voxels: when it
        "fires" on one (at least that many voxels above that value).
    """

    ood_supervision: float | str = 0.0
    ood_baseline: str | None = None
    ood_candidates: int = 64
    ood_threshold: float = 0.5
    ood_min_voxels: int = 1


@dataclass
class RunSettings:
    """What every family's run is told (the training spine, ``training.spine``).

    name, description: the checkpoint's; train: its data; out: the run folder.
    batch_size, lr: per process, and the base learning rate.
    precision: of the forward pass (``auto``: bfloat16 autocast on CPUs that compute it,
        float16 with a gradient scaler on CUDA; ``execution``).
    seed, device (``auto``, ``cpu``, ``cuda``, ``cuda:1``...), data_licence (for the card).
    budget_s: stop after that many seconds of the run, preparation included (0: no limit);
        a step-trained family fits its learning-rate schedule to the steps the budget
        allows, so that it ends annealed.
    """

    name: str = "model"
    description: str = ""
    train: str = ""
    out: str = "runs/model"
    batch_size: int = 2
    lr: float = 1e-4
    precision: str = "auto"
    seed: int = 0
    device: str = "auto"
    budget_s: float = 0.0
    data_licence: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StepRunSettings(RunSettings):
    """A run of optimiser steps (every family but the flow).

    steps: how many (at most, under a budget); amp: false forces float32; workers: data
    loader processes; val_interval, log_interval: steps between validations / log lines;
    tensorboard: also log there; checkpoint_s: seconds between saves of ``OUT/last``
    besides those at validations (0: at validations only), so that a long run stopped
    without warning loses at most that much. compile: the training forward and backward
    compiled (``torch.compile``: normalisation, activations and their gradients fused), which
    costs a minute once and makes the shipped U-Net's CPU steps 1.3x as fast; where it
    fails (no C++ compiler, say), the run goes on uncompiled and its card says why.
    """

    steps: int = 2000
    amp: bool = True
    workers: int = 2
    val_interval: int = 250
    log_interval: int = 10
    tensorboard: bool = False
    checkpoint_s: float = 0.0
    compile: bool = False


def check_ood_supervision(config: Any) -> None:
    """``ood_supervision`` is a share in [0, 1) or ``auto``; mining needs a baseline."""
    share = config.ood_supervision
    if isinstance(share, str) and share != "auto":
        try:  # YAML reads 5e-2 as a string
            share = config.ood_supervision = float(share)
        except ValueError:
            raise MedoodError(
                f"ood_supervision is a share of the training mix in [0, 1) or 'auto' (the "
                f"Med-OoD ratio rule), not {share!r}"
            ) from None
    if share != "auto" and (isinstance(share, bool) or not 0 <= float(share) < 1):
        raise MedoodError(f"ood_supervision must be within [0, 1) or 'auto', got {share!r}")
    if share and share != 0 and not (config.ood_baseline or getattr(config, "init", None)):
        raise MedoodError(
            "ood_supervision mines hard negatives with a baseline model: give ood_baseline "
            "(a checkpoint of the same model space)"
            + (" or init" if hasattr(config, "init") else "")
        )
    if config.ood_candidates < 1 or config.ood_min_voxels < 1:
        raise MedoodError("ood_candidates and ood_min_voxels must be >= 1")
    if not 0 <= getattr(config, "ood_blur", 0.0) <= 1:
        raise MedoodError("ood_blur must be within [0, 1]")


def check_run_settings(config: Any, what: str) -> None:
    """The checks every family's training configuration shares: data given (``what`` it
    is), positive steps and batch size, a device's spelling (normalised in place), a known
    precision."""
    from napari_medood.device import check_device_name
    from napari_medood.execution import PRECISIONS

    if not config.train:
        raise MedoodError(f"the training configuration needs 'train' ({what})")
    if getattr(config, "steps", 1) < 1 or config.batch_size < 1:
        raise MedoodError("steps and batch_size must be >= 1")
    if isinstance(config.budget_s, bool) or not float(config.budget_s) >= 0:
        raise MedoodError(f"budget_s is seconds (0: no limit), got {config.budget_s!r}")
    config.budget_s = float(config.budget_s)
    if getattr(config, "val_interval", 1) < 1 or getattr(config, "log_interval", 1) < 1:
        raise MedoodError("val_interval and log_interval must be >= 1")
    if not float(getattr(config, "checkpoint_s", 0.0)) >= 0:
        raise MedoodError(
            f"checkpoint_s is seconds (0: at validations only), got {config.checkpoint_s!r}"
        )
    config.device = check_device_name(config.device)
    if config.precision not in PRECISIONS:
        raise MedoodError(f"unknown precision {config.precision!r}; valid: {', '.join(PRECISIONS)}")


def _coerce(value: str) -> Any:
    import yaml

    return yaml.safe_load(value)


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    config_class: type | None = None,
):
    """The configuration in ``path`` (YAML), then each ``key=value`` override (values are
    YAML: ``steps=500``, ``spacing=[1,1,1]``), as a ``config_class``; unknown keys are
    refused by name."""
    import yaml

    if config_class is None:  # the U-Net's, the method medood-train started with
        from napari_medood.training.registry import get_trainer

        config_class = get_trainer("unet").config
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MedoodError(f"{path}: no such configuration file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise MedoodError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
        if not isinstance(loaded, dict):
            raise MedoodError(f"{path}: a configuration is a mapping of keys to values")
        values.update(loaded)
    for item in overrides or []:
        if "=" not in item:
            raise MedoodError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        values[key.strip().replace("-", "_")] = _coerce(text)
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        import difflib

        hints = [
            f"{u} (did you mean {difflib.get_close_matches(u, known, 1)[0]}?)"
            if difflib.get_close_matches(u, known, 1)
            else u
            for u in unknown
        ]
        where = f"{path}: " if path is not None else ""
        raise MedoodError(f"{where}unknown configuration keys: {', '.join(hints)}")
    for item in fields(config_class):  # YAML reads 3e-3 as a string, 1 as an int
        if item.name in values and item.type in ("float", "int"):
            value = values[item.name]
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                continue
            try:
                values[item.name] = float(value) if item.type == "float" else int(value)
            except ValueError:
                raise MedoodError(f"{item.name} must be a number, got {value!r}") from None
    return config_class(**values).validate()
