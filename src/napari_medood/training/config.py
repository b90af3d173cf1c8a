"""Training configuration: a dataclass read from YAML, with ``key=value`` overrides."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from napari_medood.errors import MedoodError

#: how contrast randomisation groups a parcellation's labels (``synth.contrast``)
CONTRAST_GROUPS = ("dlmuse", "labels")


@dataclass
class UNetTrainConfig:
    """How to train the self-supervised 3D U-Net (mood22 recipe, methods.md R5, R8-R10).

    Data and preprocessing:
        train: normal scans (folder, CSV or BIDS); masks: their brain masks (folder or CSV/
            BIDS column); val: a labelled validation set (MOOD layout, e.g. from medood-synth)
            scored by pixel AP every ``val_interval`` steps to keep the best checkpoint.
        spacing: model voxel size (mm); patch: training patch and inference window (voxels).
        modality, contrast: what the training scans are (``MR``, ``T1w``); written into the
            card so that scans of another kind are flagged before their map is read.
    Anomalies:
        p_anomaly: share of patches that get one; fpi_fraction: share of those that are FPI-style
        outliers (noise, deformation, shift, reflection) rather than foreign patches;
        fp_size: foreign-patch box (voxels); shape_weights: odds of the foreign-patch shapes.
    Contrast randomisation (SynthSeg-style, ``synth.contrast``):
        contrast_randomisation: share of samples drawn from the scans' parcellations (their
            ``masks`` must be parcellations) in a random contrast, with lesion-like blobs, so
            that one model serves T1, T2 and FLAIR; 0 trains on the real scans only.
        contrast_groups: ``dlmuse`` (DLMUSE labels grouped into structures) or ``labels``
            (every label its own structure).
    Resolution augmentation: resolution_augmentation, the share of samples whose whole
        patch is first smoothed by a Gaussian of ``resolution_blur`` voxels (min, max; drawn
        per axis, so thick slices too) before anomalies go in, so that a smoother scan (one
        resampled, registered or acquired at lower resolution) is not abnormal as a whole.
    OoD supervision (Med-OoD hard negatives, ``training.hard_negatives``):
        ood_supervision: share of the samples that are hard negatives (clean healthy patches,
            target all zero), or ``auto`` for the reference's ratio rule; 0 mines nothing.
        ood_baseline: the checkpoint that mines them (default: ``init``), of this model space.
        ood_candidates: clean patches it reads; ood_threshold, ood_min_voxels: it "fires" on
            a patch with at least that many brain voxels above that probability;
        ood_blur: share of the candidates smoothed by ``resolution_blur`` first.
    init: a unet3d checkpoint (name or folder) of the same architecture to start from
        (fine-tuning; a resumed run continues from its own last weights instead).
    Optimisation (mood22: AdamW 1e-4, wd 1e-5, OneCycle max 1e-3, AMP on CUDA):
        steps, batch_size (per process), lr, max_lr, weight_decay; precision of the forward
        pass (``auto``: bfloat16 autocast on CPUs that compute it, float16 with a gradient
        scaler on CUDA; ``execution``); amp false forces float32.
    """

    name: str = "unet"
    description: str = "self-supervised 3D U-Net (synthetic anomalies)"
    train: str = ""
    masks: str | None = None
    val: str | None = None
    out: str = "runs/unet"
    spacing: list[float] = field(default_factory=lambda: [2.0, 2.0, 2.0])
    patch: list[int] = field(default_factory=lambda: [96, 96, 96])
    preset: str = "small"
    features: list[int] | None = None
    p_anomaly: float = 0.9
    fpi_fraction: float = 0.3
    fp_size: int = 64
    shape_weights: dict[str, float] = field(
        default_factory=lambda: {"cuboid": 1.0, "sphere": 1.0, "brush": 1.0, "lesion": 2.0}
    )
    flip_p: float = 0.5
    resolution_augmentation: float = 0.0
    resolution_blur: list[float] = field(default_factory=lambda: [0.3, 1.2])
    contrast_randomisation: float = 0.0
    contrast_groups: str = "dlmuse"
    ood_supervision: float | str = 0.0
    ood_baseline: str | None = None
    ood_candidates: int = 64
    ood_threshold: float = 0.5
    ood_min_voxels: int = 1
    ood_blur: float = 0.0
    init: str | None = None
    steps: int = 2000
    batch_size: int = 2
    lr: float = 1e-4
    max_lr: float = 1e-3
    weight_decay: float = 1e-5
    amp: bool = True
    precision: str = "auto"
    val_interval: int = 250
    log_interval: int = 10
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    tensorboard: bool = False
    data_licence: str = ""
    modality: str = "MR"
    contrast: str = "T1w"

    def validate(self) -> UNetTrainConfig:
        check_run_settings(self, "normal scans")
        if not 0 <= self.p_anomaly <= 1 or not 0 <= self.fpi_fraction <= 1:
            raise MedoodError("p_anomaly and fpi_fraction must be within [0, 1]")
        if not 0 <= self.contrast_randomisation <= 1:
            raise MedoodError("contrast_randomisation must be within [0, 1]")
        if not 0 <= self.resolution_augmentation <= 1:
            raise MedoodError("resolution_augmentation must be within [0, 1]")
        if (
            len(self.resolution_blur) != 2
            or not 0 <= self.resolution_blur[0] <= (self.resolution_blur[1])
        ):
            raise MedoodError(
                f"resolution_blur is [min, max] Gaussian sigma in voxels, got {self.resolution_blur}"
            )
        if self.contrast_groups not in CONTRAST_GROUPS:
            raise MedoodError(
                f"unknown contrast_groups {self.contrast_groups!r}; valid: "
                f"{', '.join(CONTRAST_GROUPS)}"
            )
        check_ood_supervision(self)
        if len(self.spacing) != 3 or len(self.patch) != 3:
            raise MedoodError("spacing and patch need three values")
        from napari_medood.models.unet import PRESETS

        features = self.features or PRESETS.get(self.preset)
        if features is None:
            raise MedoodError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        divisor = 2 ** (len(features) - 1)
        if any(p % divisor for p in self.patch):
            raise MedoodError(
                f"patch sides must be multiples of {divisor} for {len(features)} "
                f"stages, got {self.patch}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    if config.steps < 1 or config.batch_size < 1:
        raise MedoodError("steps and batch_size must be >= 1")
    config.device = check_device_name(config.device)
    if config.precision not in PRECISIONS:
        raise MedoodError(f"unknown precision {config.precision!r}; valid: {', '.join(PRECISIONS)}")


def _coerce(value: str) -> Any:
    import yaml

    return yaml.safe_load(value)


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    config_class: type = UNetTrainConfig,
):
    """The configuration in ``path`` (YAML), then each ``key=value`` override (values are
    YAML: ``steps=500``, ``spacing=[1,1,1]``), as a ``config_class``; unknown keys are
    refused by name."""
    import yaml

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
