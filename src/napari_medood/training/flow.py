"""``medood-train flow``: fit MedOODFlow's flow and the OOD baselines on a frozen network's
features, and write a ``feature-ood`` checkpoint.

The feature network is a ``medood-train classifier`` checkpoint (its weights are copied into
the new checkpoint) or a shipped/trained U-Net detector, whose encoder is read in place and
pinned by its weights' sha256 (the model then carries its own trust gate: name this
checkpoint in the detector's card as ``"gate"``). Steps:

1. the in-distribution training volumes (``views`` augmented copies each, the first one
   unchanged), the reference volumes and the OOD validation volumes become feature vectors
   (under torchrun each process computes a share, then all of them are gathered);
2. every head is fitted on the training vectors: the flow by NLL with the reference recipe
   (Adam 1e-4, betas 0.5/0.999, weight decay 1e-4, gradient clip 1, keeping the epoch with
   the best AUROC of reference vs OOD validation vectors), the baselines in closed form;
3. each head scores the reference volumes: those confidences are the distribution a scan's
   percentile is read against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback, check_cancelled
from napari_medood.errors import MedoodError, look_up_option
from napari_medood.training.config import RunSettings, check_run_settings
from napari_medood.training.registry import Trainer, TrainResult


@dataclass
class FlowTrainConfig(RunSettings):
    """How to fit a feature-OOD model (MedOODFlow, methods.md section 3).

    Data (a MedMNIST split ``path.npz:train``, or scans: file, folder, CSV or BIDS, with
    their masks): train (in distribution), reference (held-out in-distribution volumes
    whose confidences define the percentiles; default: fresh augmented views of ``train``),
    val_ood (out-of-distribution volumes for the flow's checkpoint selection; optional).
    backbone: a classifier3d checkpoint or a unet3d detector (shipped name or folder).
    window: for a detector's encoder, the windows (voxels of its model space) a scan is cut
        into; its confidence is the mean over its windows (None: the whole brain at once).
    spacing: for a detector's encoder, the voxel size (mm) the scan is read at (None: the
        detector's own). Coarser is cheaper: a gate asks what a scan looks like overall,
        and at twice the detector's spacing its encoder reads an eighth of the voxels.
    reference_folds: without a ``reference`` set, score each fresh view with heads fitted
        on the other folds of training volumes (cross-fitting: the percentiles then say
        where a new healthy subject falls, not a subject the heads have seen); 0 = off.
    views, reference_views: augmented copies per training / reference volume; augment:
        integer shifts and TorchIO's mild bias field and gamma (session
        variation, not damage).
    contrast_copies: for a detector's encoder, healthy copies of each training scan drawn
        in random contrasts from its parcellation (its mask file, DLMUSE say; the draw the
        contrast-randomised detectors train on), fitted on beside the scan: the gate of a
        detector that reads any MR contrast must not call a FLAIR out for being one.
        Cross-fitting folds keep a scan and its copies together. contrast_groups: how the
        parcellation's labels are grouped into structures (``dlmuse`` or ``labels``).
    heads: which to fit (default: every one the backbone can feed).
    Flow: blocks, hidden (default: the feature width, as the reference), clamp.
    Optimisation: epochs, betas, weight_decay, grad_clip; the run's settings (batch_size,
        lr, seed, device, budget_s...) are the spine's (``training.config.RunSettings``);
        under a budget the features are computed whole and the flows' epochs share what
        is left of it (each fit keeps its best epoch so far when its share runs out).
    threshold_percentile: a scan below this percentile of the reference is called out of
        distribution (written into the card; the panels let users move it).
    reference_scans: what the reference scans are, in a few words, for the verdict.
    """

    name: str = "feature-ood"
    description: str = "normalizing flow on frozen features (MedOODFlow)"
    backbone: str = ""
    masks: str | None = None
    reference: str | None = None
    reference_masks: str | None = None
    val_ood: str | None = None
    val_ood_masks: str | None = None
    out: str = "runs/flow"
    window: list[int] | None = None
    spacing: list[float] | None = None
    views: int = 1
    reference_views: int = 4
    reference_folds: int = 0
    augment: bool = True
    contrast_copies: int = 0
    contrast_groups: str = "dlmuse"
    heads: list[str] | None = None
    blocks: int = 4
    hidden: int | None = None
    clamp: float = 3.0
    epochs: int = 100
    batch_size: int = 128
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    threshold_percentile: float = 5.0
    reference_scans: str = ""
    precision: str = "float32"

    @property
    def steps(self) -> int:  # medood-train's progress bar counts flow epochs
        return self.epochs

    def validate(self) -> FlowTrainConfig:
        from napari_medood.ood.heads import HEADS

        check_run_settings(self, "in-distribution volumes")
        if not self.backbone:
            raise MedoodError("the configuration needs 'backbone' (a classifier or U-Net model)")
        unknown = [h for h in self.heads or [] if h not in HEADS]
        if unknown:
            raise MedoodError(f"unknown OOD heads {unknown}; valid: {', '.join(HEADS)}")
        if self.views < 1 or self.reference_views < 0:
            raise MedoodError("views must be >= 1 and reference_views >= 0")
        if self.contrast_copies < 0:
            raise MedoodError(f"contrast_copies must be >= 0, got {self.contrast_copies}")
        look_up_option(self.contrast_groups, ("dlmuse", "labels"), "contrast_groups")
        if self.reference_folds == 1 or self.reference_folds < 0:
            raise MedoodError("reference_folds must be 0 (off) or at least 2")
        if self.reference is None and self.reference_views < 1:
            raise MedoodError("without a 'reference' set, reference_views must be >= 1")
        if self.spacing is not None and (
            len(self.spacing) != 3 or not all(float(s) > 0 for s in self.spacing)
        ):
            raise MedoodError(
                f"spacing must be three positive voxel sizes in mm, not {self.spacing}"
            )
        if not 0 < self.threshold_percentile < 100:
            raise MedoodError("threshold_percentile must be within (0, 100)")
        return self


def open_backbone(name: str, window=None, spacing=None):
    """``(checkpoint, card's backbone entry, input recipe, weights to copy)`` of ``name``."""
    from napari_medood.models.checkpoint import Checkpoint, bundled_models

    checkpoint = Checkpoint.open(name)
    card = checkpoint.card
    if checkpoint.family == "classifier3d":
        spec = {
            "kind": "resnet",
            "architecture": card["architecture"],
            "model": checkpoint.name,
            # the classifier's own record travels with its copied weights
            "metrics": card.get("metrics", {}),
            "training": card.get("training", {}),
        }
        return checkpoint, spec, card["input"], checkpoint.load_state()
    if checkpoint.family == "unet3d":
        reference = name if name in bundled_models() else str(Path(checkpoint.folder).resolve())
        spec = {
            "kind": "unet-encoder",
            "model": reference,
            "sha256": card["weights"]["sha256"],
            "architecture": card["architecture"],
        }
        stages = len(card["architecture"].get("features") or [0] * 5)
        preprocessing = dict(card["preprocessing"])
        if spacing is not None:
            preprocessing["spacing"] = [float(s) for s in spacing]
        recipe = {
            "kind": "model-space",
            "preprocessing": preprocessing,
            "margin": 4,
            "divisor": 2 ** (stages - 1),
            **({"window": [int(w) for w in window], "min_foreground": 0.5} if window else {}),
            "how": "the detector's model space (RAS, its normalisation, zero outside the "
            "brain mask) at the spacing given above, cropped to the mask's box plus 4 voxels, zero-padded to "
            "a multiple of the encoder's stride; read whole, or as a grid of windows at least "
            "half inside the brain whose confidences are averaged",
        }
        return checkpoint, spec, recipe, {}
    raise MedoodError(
        f"{name}: a feature-OOD backbone is a classifier3d or unet3d checkpoint, "
        f"not {checkpoint.family}"
    )


def augmented(array: np.ndarray, view: int, seed: int, augment: bool) -> np.ndarray:
    """View 0 is the volume itself; others vary as scans of one kind do between sessions: an
    integer shift of up to 3 voxels (no resampling: interpolation would smooth every view,
    which unaugmented scans are not) and, each with probability 0.5, a TorchIO bias field
    (coefficients 0.3) and a gamma (log-gamma within +-0.2), reproducibly per (seed, view).
    Nothing changes the resolution or the contrast much: a lower resolution, a strong bias
    field or gamma are among the shifts a gate must catch (methods.md section 3)."""
    if view == 0 or not augment:
        return array
    import torch
    import torchio as tio

    rng = np.random.default_rng([seed, view])
    shifted = np.zeros_like(array)
    offsets = rng.integers(-3, 4, size=3)
    source = tuple(
        slice(max(-o, 0), s - max(o, 0)) for o, s in zip(offsets, array.shape, strict=True)
    )
    target = tuple(
        slice(max(o, 0), s - max(-o, 0)) for o, s in zip(offsets, array.shape, strict=True)
    )
    shifted[target] = array[source]
    inside = shifted != 0
    state = torch.random.get_rng_state()
    torch.manual_seed(int(rng.integers(2**31)))
    try:
        out = tio.Compose(
            [
                tio.RandomBiasField(coefficients=0.3, p=0.5),
                tio.RandomGamma(log_gamma=0.2, p=0.5),
            ]
        )(torch.from_numpy(np.ascontiguousarray(shifted))[None])[0].numpy()
    finally:
        torch.random.set_rng_state(state)
    if inside.mean() < 0.999:  # keep the background of a masked volume at zero
        out = np.where(inside, out, 0.0)
    return out.astype(np.float32)


def extract_features(network, kind: str, items, execution, rank: int = 0, world: int = 1):
    """``(features, labels, groups)`` of ``items`` (``(windows, label)`` pairs, made lazily):
    one vector per window, the label and the item's index (its group) repeated for each;
    computed in shares across processes and gathered on all."""
    import torch

    from napari_medood.models.features import BACKBONES, FeatureBatch

    mine = []
    for index, (windows, label) in enumerate(items):
        if index % world != rank:
            continue
        x = torch.from_numpy(np.stack(windows).astype(np.float32, copy=False))[:, None]
        with torch.no_grad(), execution.autocast():
            batch = BACKBONES[kind](network, execution.inputs(x)).to("cpu")
        mine.append((index, batch, label))
    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, mine)
        mine = [entry for share in gathered for entry in share]
    mine.sort(key=lambda entry: entry[0])
    if not mine:
        return None, None, None
    features = FeatureBatch.cat([entry[1] for entry in mine])
    groups = torch.cat([torch.full((len(entry[1]),), entry[0]) for entry in mine])
    labels = [entry[2] for entry in mine]
    if any(label is None for label in labels):
        return features, None, groups
    return features, torch.cat([torch.full((len(e[1]),), int(e[2])) for e in mine]), groups


def group_means(values: np.ndarray, groups) -> np.ndarray:
    """The mean of each group's window values (a scan's confidence), in group order."""
    ids = groups.numpy()
    order = np.unique(ids)
    return np.array([values[ids == g].mean() for g in order])


def _views(volumes, views: int, seed: int, augment: bool, spec, first_view: int = 0):
    from napari_medood.preprocessing.feature_input import windows_of

    labels = volumes.labels
    for index, array in enumerate(volumes.arrays):
        for view in range(first_view, first_view + views):
            label = None if labels is None else int(labels[index])
            view_array = augmented(array, view, seed + index, augment)
            yield (
                windows_of(view_array, spec) if spec.get("kind") == "model-space" else [view_array],
                label,
            )


def train_flow(
    config: FlowTrainConfig,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> TrainResult:
    """Fit every head as ``config`` says and write the checkpoint to ``out/best``."""
    import torch

    from napari_medood.distributed import barrier
    from napari_medood.models.checkpoint import save_checkpoint
    from napari_medood.models.features import build_classifier
    from napari_medood.ood.flow import FlowRecipe
    from napari_medood.ood.heads import make_head, usable_heads
    from napari_medood.training.ood_data import load_source
    from napari_medood.training.spine import device_description, open_run, write_row

    # torch is not seeded here: the shipped gates' flows took their first weights from the
    # process's default stream, and seeding would change them
    run = open_run(config, precision="float32", seed_torch=False)
    rank, world, device, out = run.rank, run.world, run.device, run.out
    done = fitted_before(run)
    if done is not None:
        return done
    checkpoint, backbone_spec, input_spec, backbone_state = open_backbone(
        config.backbone, config.window, config.spacing
    )
    if backbone_spec["kind"] == "resnet":
        network = build_classifier(backbone_spec["architecture"])
        network.load_state_dict(backbone_state)
        kind = "resnet"
    else:
        network, kind = checkpoint.build_model("cpu"), "unet-encoder"
    execution = run.execution
    network = execution.prepare(network.to(device).eval())

    def say(message: str) -> None:
        if progress is not None:
            progress(0, config.epochs, message)

    say("reading the training volumes")
    train = load_source(
        config.train,
        input_spec,
        config.masks,
        config.contrast_copies,
        config.contrast_groups,
        config.seed,
    )
    check_cancelled(cancelled)
    say(f"features of {len(train)} training volumes x {config.views} views")
    train_features, labels, train_groups = extract_features(
        network,
        kind,
        _views(train, config.views, config.seed, config.augment, input_spec),
        execution,
        rank,
        world,
    )
    if config.reference:
        reference = load_source(config.reference, input_spec, config.reference_masks)
        reference_items = _views(
            reference,
            max(config.reference_views, 1),
            config.seed + 10_000,
            config.augment,
            input_spec,
        )
    else:
        # fresh views (never view 0, never a training view's seed): unseen by the heads
        reference_items = _views(
            train, config.reference_views, config.seed + 20_000, True, input_spec, 1
        )
    check_cancelled(cancelled)
    say("features of the reference volumes")
    reference_features, _, reference_groups = extract_features(
        network, kind, reference_items, execution, rank, world
    )
    ood_features, ood_groups = None, None
    if config.val_ood:
        ood = load_source(config.val_ood, input_spec, config.val_ood_masks)
        ood_features, _, ood_groups = extract_features(
            network, kind, _views(ood, 1, 0, False, input_spec), execution, rank, world
        )

    has_logits = train_features.logits is not None
    names = config.heads or usable_heads(has_logits)
    impossible = [n for n in names if n not in usable_heads(has_logits)]
    if impossible:
        raise MedoodError(f"{config.backbone} has no classifier: {impossible} need logits")
    linear = None
    if has_logits:
        linear = (network.fc.weight.detach().cpu(), network.fc.bias.detach().cpu())
    dim = int(train_features.features.shape[1])
    recipe = FlowRecipe(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        betas=tuple(config.betas),
        weight_decay=config.weight_decay,
        grad_clip=config.grad_clip,
        seed=config.seed,
        clock=run.budget.clock,
    )
    crossfit = config.reference is None and config.reference_folds >= 2
    subjects = len(np.unique(train.subject_of(np.arange(len(train)))))
    if crossfit and subjects < config.reference_folds:
        raise MedoodError(
            f"reference_folds={config.reference_folds} needs at least as many training volumes "
            f"(got {subjects})"
        )
    folds = max(config.reference_folds, 1)
    # a group is one view of one volume: its volume's subject decides its fold (a scan and
    # its random-contrast copies are one subject)
    train_fold = torch.as_tensor(train.subject_of(train_groups.numpy() // config.views)) % folds
    if crossfit:  # the reference views are fresh views of the training volumes
        volume = reference_groups.numpy() // max(config.reference_views, 1)
        reference_fold = torch.as_tensor(train.subject_of(volume)) % folds
    heads_card: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    # under a budget, the flow's fits (one, and one per fold) share what the features left
    flow_fits = [(1 + (config.reference_folds if crossfit else 0)) if "flow" in names else 0]

    def fit_seconds() -> float | None:
        if not run.budget.limited:
            return None
        share = max(run.budget.left(), 0.0) / max(flow_fits[0], 1)
        flow_fits[0] -= 1
        return share

    for name in names:
        check_cancelled(cancelled)
        settings = {"hidden": config.hidden, "blocks": config.blocks, "clamp": config.clamp}
        head = make_head(name, dim, **(settings if name == "flow" else {}))
        if name == "flow":
            recipe.seconds = fit_seconds()
            head.fit(
                train_features,
                labels,
                linear,
                recipe=recipe,
                val_id=reference_features,
                val_ood=ood_features,
                progress=progress,
                cancelled=cancelled,
            )
        else:
            head.fit(train_features, labels, linear)
        if crossfit:  # each reference view scored by heads that never saw its volume
            confidences = np.zeros(len(reference_features))
            for fold in range(config.reference_folds):
                check_cancelled(cancelled)
                say(f"{name}: cross-fitting fold {fold + 1} of {config.reference_folds}")
                keep = train_fold != fold
                fold_head = make_head(name, dim, **(settings if name == "flow" else {}))
                fold_labels = None if labels is None else labels[keep]
                extra = (
                    {"recipe": replace(recipe, history=[], seconds=fit_seconds())}
                    if name == "flow"
                    else {}
                )
                fold_head.fit(train_features.subset(keep), fold_labels, linear, **extra)
                held = reference_fold == fold
                confidences[held.numpy()] = fold_head.confidence(
                    reference_features.subset(held)
                ).numpy()
        else:
            confidences = head.confidence(reference_features).numpy()
        heads_card[name] = {
            "description": head.description,
            "settings": head.settings(),
            "reference": [float(c) for c in np.sort(confidences)],
        }
        confidences = group_means(confidences, reference_groups)  # one per scan view
        if ood_features is not None:
            from napari_medood.ood.metrics import auroc

            ood_confidences = group_means(head.confidence(ood_features).numpy(), ood_groups)
            scores = -np.r_[confidences, ood_confidences]
            flags = np.r_[np.zeros(len(confidences)), np.ones(len(ood_confidences))]
            heads_card[name]["validation_auroc"] = auroc(scores, flags)
        for key, value in head.tensors().items():
            tensors[f"heads.{name}.{key}"] = value.detach().cpu().float().contiguous()
    for key, value in backbone_state.items():
        tensors[f"backbone.{key}"] = value
    seconds = run.budget.elapsed()
    card = {
        "name": config.name,
        "detector": "feature-ood",
        "description": config.description,
        "method": "post-hoc normalizing flow on frozen features (MedOODFlow) and OOD baselines",
        "backbone": backbone_spec,
        "input": input_spec,
        "feature_width": dim,
        "default_head": "flow" if "flow" in heads_card else names[0],
        "heads": heads_card,
        "threshold_percentile": config.threshold_percentile,
        "reference_scans": config.reference_scans,
        "training": {
            "data": config.train,
            "reference": config.reference
            or (
                f"{config.reference_views} fresh augmented views of each training volume"
                + (
                    f", each scored by heads fitted without its volume "
                    f"({config.reference_folds}-fold cross-fitting)"
                    if crossfit
                    else ""
                )
            ),
            "val_ood": config.val_ood,
            "data_licence": config.data_licence,
            "volumes": len(train),
            "subjects": subjects,
            "views": int(len(np.unique(train_groups.numpy()))),
            "windows": len(train_features),
            "reference_views_scored": int(len(np.unique(reference_groups.numpy()))),
            "flow_history": recipe.history,
            **({"budget_s": config.budget_s} if config.budget_s else {}),
            "epochs_done": len(recipe.history),
            "recipe": {
                k: v for k, v in config.to_dict().items() if k not in ("out", "name", "description")
            },
            "processes": world,
            "device": device_description(device),
            "torch": torch.__version__,
            "seconds": round(seconds, 1),
        },
    }
    if run.is_main:
        run.write_config()
        (out / "flow_log.csv").unlink(missing_ok=True)  # this fit's epochs, not a mix
        for row in recipe.history:
            write_row(out / "flow_log.csv", row, ("epoch", "nll", "val_auroc"))
        save_checkpoint(tensors, out / "best", card)
    barrier(world)
    run.finish()
    return flow_result(out / "best", card, config)


def flow_result(best: Path, card: dict, config: FlowTrainConfig) -> TrainResult:
    validation = card["heads"].get("flow", {}).get("validation_auroc")
    training = card["training"]
    return TrainResult(
        best,
        validation,
        "flow AUROC (reference vs val_ood)",
        int(training.get("epochs_done", config.epochs)),
        float(training.get("seconds", 0.0)),
        scheduled_steps=config.epochs,
        budget_s=config.budget_s,
    )


def fitted_before(run) -> TrainResult | None:
    """The result of an earlier run of this recipe into the same folder that fitted every
    epoch (nothing is left to do), else None; a finished run of another recipe is refused
    by name. A run its budget stopped short is fitted again, on the budget given now."""
    from napari_medood.training.spine import check_resumable

    config, out = run.config, run.out
    card_path = out / "best" / "card.json"
    if not card_path.is_file():
        return None
    check_resumable(out, config)
    card = json.loads(card_path.read_text())
    if int(card["training"].get("epochs_done", config.epochs)) < config.epochs:
        return None
    run.finish()
    return flow_result(out / "best", card, config)


TRAINER = Trainer(
    config=FlowTrainConfig,
    run=train_flow,
    description="MedOODFlow's normalizing flow and the OOD baselines (MSP, energy, ReAct, "
    "MDS, ViM, KNN) on a frozen classifier's or detector's features; writes a feature-OOD "
    "model (a trust gate)",
    example_config="configs/adrenal3d-flow.yaml",
)
