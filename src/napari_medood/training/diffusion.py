"""Train the slice diffusion model of the MHD family: on one CPU, one GPU, or many under
``torchrun`` (DDP).

The reference recipe (methods.md section 2): healthy axial slices, x0 objective, L1 loss,
cosine schedule over 1000 steps, simplex noise, Adam 1e-4, TorchIO's RandomGamma (p 0.5),
RandomBiasField (p 0.25), RandomBlur (p 0.25) and RandomGhosting (p 0.5); the checkpoint
kept is the one with the lowest validation loss. Training scans go through the model space
first (as the detector will see them) and into an LMDB slice cache laid out like
UAD-IMAG's (``io.lmdb_cache``); each sample is a random slice, cropped or padded to
``slice_size`` around its brain.

The validation loss is the L1 loss on every slice of the validation scans at four fixed
steps (125, 250, 498, 750) with fixed noise, so that values of different steps compare.
Resume, budget, logs, checkpoints and DDP are the training spine's (``training.spine``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medood._progress import (
    CancelledPredicate,
    ProgressCallback,
    check_cancelled,
    report,
)
from napari_medood.errors import MedoodError
from napari_medood.preprocessing.model_space import ModelSpace
from napari_medood.training.config import (
    CONTRAST_GROUPS,
    OodSupervisionSettings,
    StepRunSettings,
    check_ood_supervision,
    check_run_settings,
)
from napari_medood.training.data import model_space
from napari_medood.training.registry import Trainer, TrainResult

FAMILY = "diffusion2d"
VALIDATION_STEPS = (125, 250, 498, 750)
#: the reference noises test slices to index 498 of 1000 ("test_timesteps = 500", offset twice)
REFERENCE_T = 498


@dataclass
class DiffusionTrainConfig(StepRunSettings, OodSupervisionSettings):
    """How to train the slice diffusion model (MHD / cDDPM recipe, methods.md section 2).

    Data: train (healthy scans: folder, CSV or BIDS) and masks (their brain masks); val and
        val_masks (healthy scans held out, for the validation loss; optional).
    Model space: spacing (mm); slice_size (pixels of a training slice, multiples of
        2^(levels-1)); modality, contrast (what the training scans are, for the card).
    Network (MONAI DiffusionModelUNet): channels, attention_levels, num_res_blocks,
        num_head_channels, norm_num_groups; condition = cDDPM's encoder of the clean slice
        (condition_dim wide).
    Diffusion: timesteps, schedule (cosine), noise (simplex or gaussian).
    Inference defaults written into the card: t (498), reconstructions (10).
    Optimisation: Adam at a constant lr; augment (TorchIO intensity augmentations); the
        run's settings (steps, batch_size, precision, budget_s...) are the spine's
        (``training.config.StepRunSettings``).
    Contrast randomisation (``synth.contrast``): contrast_copies healthy copies of each
        training scan drawn from its parcellation (the masks must be parcellations, such
        as DLMUSE) in a random contrast, seeded, join the slice cache beside the real
        scans, so the model learns to reconstruct brains of any MR contrast; the card then
        expects any contrast. contrast_groups as for the U-Net.
    Hard slices (Med-OoD's idea where it applies: a diffusion model trains on healthy
        slices only, so there is no all-background label to add, but the healthy slices a
        baseline reconstructs badly can be seen more often): ood_supervision, the share of
        samples drawn from them (a number; the ratio rule counts lesion samples, which this
        family has none of); ood_baseline, a diffusion2d checkpoint of the same model space;
        ood_candidates, the cached slices it reconstructs (once, at ``t``, fixed noise);
        a slice is hard when at least ood_min_voxels brain pixels differ from their
        reconstruction by more than ood_threshold (intensities in [0, 1]).
    """

    name: str = "diffusion"
    description: str = "slice diffusion model (MHD: Mahalanobis distance to N reconstructions)"
    masks: str | None = None
    val: str | None = None
    val_masks: str | None = None
    out: str = "runs/diffusion"
    spacing: list[float] = field(default_factory=lambda: [2.0, 2.0, 2.0])
    slice_size: list[int] = field(default_factory=lambda: [96, 96])
    channels: list[int] = field(default_factory=lambda: [32, 64, 64, 128])
    attention_levels: list[bool] = field(default_factory=lambda: [False, False, False, True])
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 16
    condition: bool = False
    condition_dim: int = 128
    timesteps: int = 1000
    schedule: str = "cosine"
    noise: str = "simplex"
    t: int = REFERENCE_T
    reconstructions: int = 10
    augment: bool = True
    contrast_copies: int = 0
    contrast_groups: str = "dlmuse"
    ood_candidates: int = 256
    ood_threshold: float = 0.2
    ood_min_voxels: int = 10
    batch_size: int = 16
    modality: str = "MR"
    contrast: str = "T1w"

    def validate(self) -> DiffusionTrainConfig:
        from napari_medood.models.diffusion import NOISE_KINDS

        check_run_settings(self, "healthy scans")
        if self.noise not in NOISE_KINDS:
            raise MedoodError(f"unknown noise {self.noise!r}; valid: {', '.join(NOISE_KINDS)}")
        if len(self.spacing) != 3 or len(self.slice_size) != 2:
            raise MedoodError("spacing needs three values and slice_size two")
        if len(self.channels) != len(self.attention_levels):
            raise MedoodError("channels and attention_levels need one entry per level")
        divisor = 2 ** (len(self.channels) - 1)
        if any(s % divisor for s in self.slice_size):
            raise MedoodError(
                f"slice_size must be multiples of {divisor} for {len(self.channels)} levels, "
                f"got {self.slice_size}"
            )
        if not 0 <= self.t < self.timesteps:
            raise MedoodError(f"t must be within [0, {self.timesteps - 1}], got {self.t}")
        if self.reconstructions < 2:
            raise MedoodError("the Mahalanobis map needs at least 2 reconstructions")
        if self.ood_supervision == "auto":
            raise MedoodError(
                "ood_supervision=auto is the ratio rule, which counts samples with lesions; "
                "a diffusion model trains on healthy slices only: give the share of hard "
                "slices (0.25, say)"
            )
        check_ood_supervision(self)
        if self.contrast_copies < 0:
            raise MedoodError(f"contrast_copies must be >= 0, got {self.contrast_copies}")
        if self.contrast_groups not in CONTRAST_GROUPS:
            raise MedoodError(
                f"unknown contrast_groups {self.contrast_groups!r}; valid: "
                f"{', '.join(CONTRAST_GROUPS)}"
            )
        return self

    def architecture(self) -> dict[str, Any]:
        return {
            "type": "SliceDiffusionUNet",
            "channels": list(self.channels),
            "attention_levels": [bool(a) for a in self.attention_levels],
            "num_res_blocks": self.num_res_blocks,
            "num_head_channels": self.num_head_channels,
            "norm_num_groups": self.norm_num_groups,
            "condition": self.condition,
            "condition_dim": self.condition_dim,
        }

    def process(self):
        from napari_medood.models.diffusion import DiffusionProcess

        return DiffusionProcess(self.timesteps, self.schedule, "x0", self.noise)


def model_card(config: DiffusionTrainConfig, metrics: dict, training: dict, expects: dict) -> dict:
    """The card beside the weights: what the detector replays (model space, process,
    reconstruction and post-processing defaults)."""
    from dataclasses import asdict as as_dict

    from napari_medood.inference.mahalanobis import PostProcessing

    return {
        "name": config.name,
        "detector": FAMILY,
        "description": config.description,
        "method": "diffusion reconstructions + pixel-wise Mahalanobis distance (MHD, MICCAI 2024)",
        "architecture": config.architecture(),
        "preprocessing": {**model_space(config).to_card(), "slices": "axial (RAS axis 2)"},
        "diffusion": config.process().to_card(),
        "inference": {
            "t": config.t,
            "reconstructions": config.reconstructions,
            "steps": 1,
            "post_processing": as_dict(PostProcessing()),
            "sample_score": "mean of the map inside the brain (the reference's)",
        },
        "expects": expects,
        "training": training,
        "metrics": metrics,
    }


# -- data -----------------------------------------------------------------------------


def write_slice_cache(
    cases, space: ModelSpace, folder: Path, contrast: dict | None = None
) -> list | None:
    """Write the LMDB cache of the cases' model-space slices in ``folder`` unless it exists;
    returns the prepared scans (None when the cache existed). ``contrast`` (``copies``,
    ``groups``, ``seed``) adds that many healthy copies of each scan in random contrasts,
    drawn from its parcellation with the generator seeded by (seed, scan, copy)."""
    from napari_medood.io.lmdb_cache import write_slice_lmdb
    from napari_medood.training.data import (
        contrast_randomiser,
        draw_random_contrast,
        prepare_scans,
    )

    if folder.exists():
        return None
    copies = int((contrast or {}).get("copies", 0))
    scans = prepare_scans(cases, space, labels=copies > 0)
    volumes = [scan.image for scan in scans]
    if copies:
        randomiser = contrast_randomiser(contrast["groups"], space.spacing, lesions=(0, 0))
        for index, scan in enumerate(scans):
            for copy in range(copies):
                rng = np.random.default_rng([int(contrast["seed"]), index, copy])
                volumes.append(draw_random_contrast(randomiser, scan, rng, space.normalisation)[0])
    write_slice_lmdb(volumes, folder)
    return scans


def cache_folder(
    out: Path, kind: str, cases, space: ModelSpace, contrast: dict | None = None
) -> Path:
    """A cache named by what it holds, so a changed list of scans, spacing or contrast
    randomisation makes a new one."""
    key = json.dumps(
        [[str(c.image), str(c.mask)] for c in cases]
        + [space.to_card()]
        + ([contrast] if contrast and contrast.get("copies") else [])
    )
    return out / f"slices-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def fit_slice(plane: np.ndarray, size, rng: np.random.Generator | None) -> np.ndarray:
    """``plane`` cropped or zero-padded to ``size`` around its non-zero part (a random
    position where it fits in several ways when ``rng`` is given, else centred)."""
    out = plane
    for axis in range(2):
        length, target = out.shape[axis], int(size[axis])
        nonzero = np.flatnonzero(out.any(axis=1 - axis))
        low, high = (int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.size else (0, length)
        if length < target:
            extra = target - length
            before = extra // 2 if rng is None else int(rng.integers(0, extra + 1))
            widths = [(0, 0), (0, 0)]
            widths[axis] = (before, extra - before)
            out = np.pad(out, widths)
            continue
        # a window of `target` that covers as much of [low, high) as it can
        first = max(0, min(high - target, low))
        last = min(length - target, max(low, high - target))
        first, last = min(first, last), max(first, last)
        start = (first + last) // 2 if rng is None else int(rng.integers(first, last + 1))
        out = np.take(out, np.arange(start, start + target), axis=axis)
    return np.ascontiguousarray(out)


class SliceSamples:
    """Random training slices from a cache: ``(1, H, W)`` float32 in [0, 1], augmented with
    the reference's TorchIO intensity transforms; item ``i`` is the same in every run.

    Given the diffusion ``process``, an item is ``(slice, noise, t)``: the forward process's
    noise field for it and its random step, drawn from the item's own generator. Drawn here
    rather than per batch in the training process, the noise is made by the loader's
    workers: fractal simplex noise costs about as much to draw as a slice costs to train
    on, and in the training process it held a GPU run to the CPU's pace
    (``benchmarks/bench_training.py``)."""

    def __init__(
        self,
        cache,
        size,
        length: int,
        seed: int,
        augment: bool,
        hard: list[int] | tuple = (),
        p_hard: float = 0.0,
        process=None,
    ):
        """A share ``p_hard`` of the items are drawn from the cache indices ``hard``."""
        self.cache, self.size, self.length = cache, tuple(size), length
        self.seed, self.augment = seed, augment
        self.hard = list(hard)
        self.p_hard = float(p_hard) if self.hard else 0.0
        self.process = process
        self._transform = None

    def __len__(self) -> int:
        return self.length

    def transform(self):
        if self._transform is None:
            import torchio as tio

            self._transform = tio.Compose(
                [
                    tio.RandomGamma(p=0.5),
                    tio.RandomBiasField(p=0.25),
                    tio.RandomBlur(p=0.25),
                    tio.RandomGhosting(axes=(0, 1), p=0.5),
                ]
            )
        return self._transform

    def __getitem__(self, index: int):
        import torch

        rng = np.random.default_rng([self.seed, index])
        # drawn only with hard slices, so that a run without them is unchanged
        if self.p_hard > 0 and rng.random() < self.p_hard:
            plane = self.cache[self.hard[int(rng.integers(len(self.hard)))]][0]
        else:
            plane = self.cache[int(rng.integers(len(self.cache)))][0]
        plane = fit_slice(plane, self.size, rng)
        tensor = torch.from_numpy(plane)[None]
        if self.augment:
            inside = tensor > 0
            # TorchIO draws from torch's global RNG: seed it per item, without disturbing
            # the training process's own stream when the loader has no workers
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2**31)))
                tensor = self.transform()(tensor[..., None])[..., 0].float()
            # ghosting spreads signal beyond the brain, as it does on real scans, where
            # inference inputs are 0: it is kept there at half strength (the recipe the
            # shipped model was trained with); intensities stay in the model space's [0, 1]
            tensor = torch.where(inside, tensor, tensor * 0.5).clamp(0.0, 1.0)
        if self.process is None:
            return tensor
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        noise = self.process.noise_fields(1, self.size, generator)
        return tensor, noise, int(rng.integers(self.process.timesteps))


def noised_batch(clean, process, alphas, step: int, seed: int, fixed_t: int | None = None):
    """``(noisy, t)`` for a batch of clean slices in [-1, 1]: random steps and noise drawn
    from a generator seeded by ``(seed, step)`` (the same on a resumed run)."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    batch = clean.shape[0]
    if fixed_t is None:
        t = torch.randint(0, process.timesteps, (batch,), generator=generator)
    else:
        t = torch.full((batch,), fixed_t, dtype=torch.long)
    noise = process.noise_fields(batch, tuple(clean.shape[-2:]), generator)[:, None]
    noise = noise.to(clean.device)
    a = alphas[t].to(clean.device)[:, None, None, None]
    return a.sqrt() * clean + (1.0 - a).sqrt() * noise, t.to(clean.device)


def validation_loss(model, slices, process, alphas, execution, seed: int) -> float:
    """Mean L1 loss of the x0 prediction over ``slices`` at the fixed validation steps."""
    import torch

    from napari_medood.models.diffusion import to_model_units

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for k, t in enumerate(VALIDATION_STEPS):
            for start in range(0, slices.shape[0], 32):
                clean = to_model_units(slices[start : start + 32].to(execution.device))
                noisy, times = noised_batch(clean, process, alphas, k * 10_000 + start, seed, t)
                with execution.autocast():
                    predicted = model(noisy, times, clean).float()
                total += float((predicted - clean).abs().mean(dim=(1, 2, 3)).sum())
                count += clean.shape[0]
    if was_training:
        model.train()
    return total / max(count, 1)


def mine_hard_slices(
    config: DiffusionTrainConfig, cache, execution, progress=None, cancelled=None
) -> tuple[list[int], dict]:
    """The cache indices of the healthy slices that ``config.ood_baseline`` reconstructs
    badly (see the configuration), and the card's record. Every process finds the same
    ones: the candidates and the noise are seeded."""
    import torch

    from napari_medood.models.diffusion import DiffusionProcess, reconstruct
    from napari_medood.training.hard_negatives import baseline_record, open_baseline

    baseline = open_baseline(config.ood_baseline, FAMILY, model_space(config).to_card())
    process = DiffusionProcess.from_card(baseline.card["diffusion"])
    t = int(baseline.card.get("inference", {}).get("t", config.t))
    network = execution.prepare(baseline.build_model("cpu"))
    rng = np.random.default_rng([config.seed, 0x0D])
    count = min(int(config.ood_candidates), len(cache))
    candidates = sorted(int(i) for i in rng.choice(len(cache), size=count, replace=False))
    generator = torch.Generator().manual_seed(config.seed)
    noise = process.noise_fields(1, tuple(config.slice_size), generator)
    hard, flagged = [], []
    batch = 16
    for start in range(0, count, batch):
        check_cancelled(cancelled)
        report(progress, start, count, "finding hard slices")
        indices = candidates[start : start + batch]
        slices = torch.from_numpy(
            np.stack([fit_slice(cache[i][0], config.slice_size, None) for i in indices])
        )[:, None]
        with torch.inference_mode():
            rebuilt = reconstruct(
                network, slices.to(execution.device), noise, t, process, 1, execution.autocast
            )[:, 0].cpu()
        residual = (rebuilt - slices[:, 0]).abs().numpy()
        inside = slices[:, 0].numpy() > 0
        for index, res, brain in zip(indices, residual, inside, strict=True):
            pixels = int(np.count_nonzero((res > config.ood_threshold) & brain))
            if pixels >= config.ood_min_voxels:
                hard.append(index)
                flagged.append(pixels)
    report(progress, count, count, f"{len(hard)} hard slices of {count}")
    share = float(config.ood_supervision) if hard else 0.0
    record = {
        "kind": "hard slices (healthy slices the baseline reconstructs badly), seen more often",
        "baseline": baseline_record(baseline),
        "t": t,
        "threshold": config.ood_threshold,
        "min_voxels": config.ood_min_voxels,
        "candidates": count,
        "hard": len(hard),
        "median_flagged_pixels": float(np.median(flagged)) if flagged else 0.0,
        "share": round(share, 4),
    }
    return hard, record


# -- the family's run ------------------------------------------------------------------


def train_diffusion(
    config: DiffusionTrainConfig,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> TrainResult:
    """Train (or resume) as ``config`` says; returns where the best checkpoint is."""
    import torch

    from napari_medood.distributed import barrier, from_first_process
    from napari_medood.io.atomic import write_text_atomic
    from napari_medood.io.lmdb_cache import SliceLMDB
    from napari_medood.models.diffusion import build_slice_diffusion, to_model_units
    from napari_medood.training.data import (
        any_contrast,
        expected_scans,
        prepare_scans,
        training_cases,
    )
    from napari_medood.training.spine import Schedule, StepPlan, open_run, train_steps

    run = open_run(config)
    execution, world, out = run.execution, run.world, run.out
    process = config.process()
    alphas = process.alphas()
    model = execution.prepare(build_slice_diffusion(config.architecture()), fold_batch_norm=False)
    model.train()

    space = model_space(config)
    train_cases = training_cases(config.train, masks=config.masks)
    val_cases = training_cases(config.val, masks=config.val_masks) if config.val else []
    contrast = {
        "copies": config.contrast_copies,
        "groups": config.contrast_groups,
        "seed": config.seed,
    }
    train_folder = cache_folder(out, "train", train_cases, space, contrast)
    val_folder = cache_folder(out, "val", val_cases, space) if val_cases else None
    expects: dict = {}
    if run.is_main:
        out.mkdir(parents=True, exist_ok=True)
        expects_file = out / "expects.json"
        scans = write_slice_cache(train_cases, space, train_folder, contrast)
        if scans is None and not expects_file.exists():  # a cache from an older run
            scans = prepare_scans(train_cases, space)
        if scans is not None:
            expects = expected_scans(scans, space, config.modality, config.contrast)
            if config.contrast_copies:  # any MR contrast: no contrast check before its maps
                expects = any_contrast(expects)
            write_text_atomic(expects_file, json.dumps(expects, indent=1) + "\n")
        else:
            expects = json.loads(expects_file.read_text())
        if val_folder is not None:
            write_slice_cache(val_cases, space, val_folder)
    barrier(world)  # the caches exist before any process reads them
    train_slices = SliceLMDB(train_folder)
    val_slices = None
    if run.is_main and val_folder is not None:
        with SliceLMDB(val_folder) as cache:
            val_slices = torch.from_numpy(
                np.stack(
                    [fit_slice(cache[i][0], config.slice_size, None) for i in range(len(cache))]
                )
            )[:, None]
    hard, ood_record = [], None
    if config.ood_supervision:
        # the first process finds them and tells the others, so that all draw the same
        hard, ood_record = from_first_process(
            world,
            lambda: mine_hard_slices(config, train_slices, execution, progress, cancelled),
        )
    dataset = SliceSamples(
        train_slices,
        config.slice_size,
        config.steps * config.batch_size * world,
        config.seed,
        config.augment,
        hard,
        float(config.ood_supervision) if hard else 0.0,
        process=process,
    )
    training = run.record(
        train_cases, val_cases, slices=len(train_slices), ood_supervision=ood_record
    )

    def step_loss(model, batch, step):
        images, noise, times = (part.to(run.device, non_blocking=True) for part in batch)
        clean = to_model_units(images)
        a = alphas.to(run.device)[times][:, None, None, None]
        noisy = a.sqrt() * clean + (1.0 - a).sqrt() * noise
        with execution.autocast():
            predicted = model(noisy, times, clean)
        return (predicted.float() - clean).abs().mean()  # the reference's L1 on x0

    def validate(module) -> dict:
        return {
            "l1_loss": validation_loss(module, val_slices, process, alphas, execution, config.seed)
        }

    plan = StepPlan(
        network=model,
        dataset=dataset,
        step_loss=step_loss,
        optimiser=lambda parameters: torch.optim.Adam(parameters, lr=config.lr),
        schedule=Schedule("constant", config.lr),
        card=lambda metrics, training: model_card(config, metrics, training, expects),
        training=training,
        validate=validate if val_slices is not None else None,
        metric="l1_loss",
        higher=False,
        metric_label="L1 loss",
    )
    try:
        return train_steps(run, plan, progress, cancelled)
    finally:
        train_slices.close()


TRAINER = Trainer(
    config=DiffusionTrainConfig,
    run=train_diffusion,
    description="the slice diffusion model of MHD (x0 objective, simplex noise), whose N "
    "reconstructions per slice give a Mahalanobis anomaly map; best by validation loss",
    example_config="configs/brain-t1-mhd.yaml",
)
