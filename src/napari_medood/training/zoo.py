"""``medood-train zoo``: the brain detector suite trained on a healthy cohort in one budgeted
run, then calibrated and evaluated, its results in one table.

The run, in ``OUT``:

1. ``data/``: the cohort split by subject (a ``Subject`` column, the BIDS ``sub-`` entity,
   else each scan its own) into training and held-out scans (a share, at least one); from
   the held-out scans, two labelled validation sets: synthetic outliers
   (``medood-synth``'s FPI/MOOD kinds, ``valset-fpi``) and real lesion shapes implanted in
   their own contrast and, where the masks are parcellations, a random one
   (``valset-lesions``).
2. The models, each a training-spine run in its own folder with its share of ``--budget``:
   ``unet`` (the synthetic-anomaly U-Net; contrast-randomised when the masks are
   parcellations), ``seg`` (the lesion segmenter on implanted real lesion shapes, in any
   contrast likewise), ``diffusion`` (MHD's slice diffusion model) and ``gate`` (the trust
   gate: a flow on the U-Net's encoder features). Each checkpoint is ``OUT/<model>/best``;
   the map models' cards name the gate by a path relative to their own folder, so the
   suite can be moved as a whole.
3. Each map model calibrated on the held-out healthy scans (its card's ``calibration``) and
   evaluated on every labelled set (and on a lesion cohort, ``lesions``, when given: scored,
   never trained on); the gate read on the held-out scans and on the lesion cohort.
4. ``summary.md`` and ``summary.json``: every model with its budget, steps and figures;
   ``--pack`` then writes it all (weights, cards, logs, tables) as at most 8 files of at most
   16 MiB each.

Running the same command again resumes: each stage's spine run continues (a larger budget
trains on), and a model whose weights have not changed is not calibrated or evaluated again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback, check_cancelled, report
from napari_medood.errors import MedoodError

#: the suite, in training order: stage -> (medood-train method, share of the budget)
STAGES: dict[str, tuple[str, float]] = {
    "unet": ("unet", 0.40),
    "seg": ("seg", 0.15),
    "diffusion": ("diffusion", 0.25),
    "gate": ("flow", 0.10),
}
#: the default budget: the whole suite in 9 minutes on one H200-class GPU
DEFAULT_BUDGET_S = 540.0
#: what a pack may be (what a GPU job can send back)
PACK_FILES, PACK_FILE_BYTES = 8, 16 * 1024 * 1024
MAP_STAGES = ("unet", "seg", "diffusion")


@dataclass
class ZooSettings:
    """What ``medood-train zoo`` is told.

    healthy, masks: the healthy cohort (folder, CSV or BIDS) and its brain masks or
        parcellations (DLMUSE, say: with a parcellation the U-Net, the segmenter, the
        diffusion model and the gate also learn random MR contrasts drawn from it).
    lesions, lesion_masks: an optional labelled cohort (a CSV with Path, Label and Mask
        columns, or BIDS) on which every model is evaluated; it is never trained on.
    out: the run folder. budget_s: seconds the four stages train, their preparation
        included (each its share, ``STAGES``: nine tenths in all); the validation sets,
        calibration and evaluation are not counted.
    device, precision: as for ``medood-train``. workers: data loader processes per stage
        (None: the CPU's cores less two, at most 14). held_out: the share of the healthy
        subjects kept out of training for calibration and validation (at least one).
    fpr: the healthy voxel false-positive rate each map model is calibrated at (on every
        held-out scan). eval_scans: how many held-out scans the validation sets are built
        from (the first by name), so that evaluating a large cohort's suite stays short.
    contrast: what the scans are (``T1w``, ``T2w``, ``FLAIR``...), for the cards' checks,
        when the masks are brain masks; with parcellations the models read any contrast.
    from_shipped: start the U-Net and the segmenter from the shipped brain models
        (fine-tuning; False trains from scratch). name: the models' names' prefix.
    overrides: ``stage.key=value`` settings of a stage's configuration (``unet.steps=500``,
        ``diffusion.channels=[16,32]``), or of the synthetic set (``valset.kinds=[shift]``).
    """

    healthy: str
    out: str
    masks: str | None = None
    lesions: str | None = None
    lesion_masks: str | None = None
    budget_s: float = DEFAULT_BUDGET_S
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    held_out: float = 0.2
    fpr: float = 0.01
    eval_scans: int = 4
    contrast: str = "T1w"
    from_shipped: bool = True
    name: str = "zoo"
    seed: int = 0
    overrides: Sequence[str] = ()

    def validate(self) -> ZooSettings:
        if not self.budget_s or self.budget_s <= 0:
            raise MedoodError(f"--budget must be a positive number of seconds, not {self.budget_s}")
        if not 0 < self.held_out < 1:
            raise MedoodError(f"held_out must be within (0, 1), not {self.held_out}")
        if not 0 < self.fpr < 1:
            raise MedoodError(f"fpr must be within (0, 1), not {self.fpr}")
        if self.eval_scans < 1:
            raise MedoodError(f"--eval-scans must be >= 1, not {self.eval_scans}")
        if self.workers is not None and self.workers < 0:
            raise MedoodError(f"--workers must be >= 0, not {self.workers}")
        for item in self.overrides:
            stage = item.split(".", 1)[0]
            if "=" not in item or "." not in item.split("=", 1)[0]:
                raise MedoodError(f"--set {item!r}: give stage.key=value (unet.steps=500, say)")
            if stage not in (*STAGES, "valset"):
                raise MedoodError(
                    f"--set {item!r}: no stage {stage!r}; stages: {', '.join(STAGES)}, valset"
                )
        return self

    def stage_overrides(self, stage: str) -> list[str]:
        prefix = f"{stage}."
        return [item[len(prefix) :] for item in self.overrides if item.startswith(prefix)]


@dataclass
class ZooResult:
    """What a zoo run left: the summary (also in ``summary.json``) and where things are."""

    summary: dict[str, Any]
    table: Path
    record: Path


# -- data ---------------------------------------------------------------------------------


def _write_table(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A CSV table, written atomically."""
    import csv
    import io

    from napari_medood.io.atomic import write_text_atomic

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else str(v) for v in row] for row in rows])
    return write_text_atomic(path, text.getvalue())


def is_parcellation(path: Path | None) -> bool:
    """Does this mask file hold many labels (a parcellation), not one (a brain mask)?"""
    if path is None:
        return False
    from napari_medood.io.readers import read_volume

    data = np.asarray(read_volume(path).data)
    return np.unique(np.round(data[data > 0])).size > 2


def subject_of(case) -> str:
    """The subject a scan belongs to: a CSV ``Subject`` column, its BIDS ``sub-`` entity,
    else the scan itself (sessions of one subject must not fall on both sides of a split)."""
    for key in ("Subject", "subject", "participant_id"):
        value = (getattr(case, "info", None) or {}).get(key)
        if value:
            return str(value)
    for text in (case.name, *Path(case.image).parts):
        match = re.search(r"(sub-[A-Za-z0-9]+)", text)
        if match:
            return match.group(1)
    return case.name


def split_cohort(cases: Sequence, share: float, seed: int) -> tuple[list, list]:
    """``(training, held out)``: a seeded share of the subjects (at least one) held out, the
    rest (at least one) trained on; the same cohort and seed give the same split."""
    subjects = sorted({subject_of(c) for c in cases})
    if len(subjects) < 2:
        raise MedoodError(
            f"the zoo needs healthy scans of at least 2 subjects (one to train on, one held "
            f"out to calibrate and validate on); found {len(cases)} scan(s) of "
            f"{len(subjects)} subject(s)"
        )
    held = max(1, min(len(subjects) - 1, int(round(share * len(subjects)))))
    order = np.random.default_rng(seed).permutation(len(subjects))
    chosen = {subjects[i] for i in order[:held]}
    return (
        [c for c in cases if subject_of(c) not in chosen],
        [c for c in cases if subject_of(c) in chosen],
    )


def implanted_lesion_set(cases: Sequence, folder: Path, parcellated: bool, seed: int) -> Path:
    """Held-out healthy scans with real lesion shapes implanted (``synth.lesion_implants``):
    each in its own contrast with lesions darker or brighter at random, and, with
    parcellations, once more drawn in a random contrast; written once (``cases.csv``:
    Path, Mask, Label)."""
    from napari_medood.io.atomic import write_text_atomic
    from napari_medood.io.readers import read_volume
    from napari_medood.io.writers import write_nifti
    from napari_medood.preprocessing.masks import align_to_grid, check_mask
    from napari_medood.synth.lesion_implants import LesionImplanter
    from napari_medood.training.data import contrast_randomiser

    table = folder / "cases.csv"
    if table.exists():
        return table
    for sub in ("images", "labels", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for index, case in enumerate(cases):
        volume = read_volume(case.image)
        # the mask file read once: its non-zero voxels are the brain, its labels (with
        # parcellations) what a random contrast is drawn from
        mask_data = np.asarray(align_to_grid(read_volume(case.mask), volume.grid).data)
        brain = check_mask(mask_data, volume.grid, case.mask)
        spacing = tuple(float(s) for s in volume.spacing)
        implanter = LesionImplanter(spacing=spacing)
        mask_path = write_nifti(
            volume.with_data(brain.astype(np.uint8)),
            folder / "masks" / f"{case.name}.nii.gz",
            "labels",
        )
        copies = [("own", np.asarray(volume.data, np.float32))]
        if parcellated:
            labels = np.round(mask_data)
            randomiser = contrast_randomiser("dlmuse", spacing, lesions=(0, 0))
            rng = np.random.default_rng([seed, index, 1])
            drawn = randomiser(labels.astype(np.int32), rng, foreground=brain).image
            copies.append(("contrast", np.where(brain, drawn, 0.0).astype(np.float32)))
        for copy, (kind, image) in enumerate(copies):
            rng = np.random.default_rng([seed, index, 2, copy])
            image, target, _ = implanter(image, brain, int(rng.integers(4, 11)), rng)
            stem = f"{case.name}_{kind}_lesions"
            image_path = write_nifti(volume.with_data(image), folder / "images" / f"{stem}.nii.gz")
            label_path = write_nifti(
                volume.with_data((target > 0).astype(np.uint8)),
                folder / "labels" / f"{stem}.nii.gz",
                "labels",
            )
            # relative to the table: the run folder may be moved
            paths = (image_path, mask_path, label_path)
            rows.append([stem, *(Path(p).relative_to(folder) for p in paths), 1])
    _write_table(table, ["Name", "Path", "Mask", "Label", "Anomalous"], rows)
    write_text_atomic(
        folder / "README.txt",
        "real lesion shapes (napari-medood's shipped bank) implanted into held-out healthy "
        "scans: the zoo's segmenter validation set\n",
    )
    return table


# -- the stages' configurations -----------------------------------------------------------


def default_workers() -> int:
    """Data loader processes: every core but two for the training process and the system,
    at most 14 (what fed a GPU in the measurements); none on a machine of two cores."""
    return max(0, min(14, (os.cpu_count() or 2) - 2))


def recipe(
    stage: str,
    parcellated: bool,
    from_shipped: bool,
    workers: int,
    subjects: int,
    contrast_name: str = "T1w",
) -> dict[str, Any]:
    """A stage's configuration before the run's data, budget and the user's overrides: the
    shipped brain recipes (configs/), with contrast randomisation where the masks are
    parcellations, and as many steps as the budget allows."""
    contrast = 0.5 if parcellated else 0.0
    common = {"workers": workers, "seed": 0}
    if stage == "unet":
        return {
            **common,
            "description": "self-supervised 3D U-Net for brain MRI at 2 mm (medood-train zoo)",
            "spacing": [2.0, 2.0, 2.0],
            "patch": [96, 96, 96],
            "preset": "small",
            "p_anomaly": 0.9,
            "fpi_fraction": 0.3,
            "fp_size": 64,
            "shape_weights": {"cuboid": 1.0, "sphere": 1.0, "brush": 1.0, "lesion": 2.0},
            "flip_p": 0.5,
            "contrast_randomisation": contrast,
            "contrast_groups": "dlmuse",
            "steps": 20000,
            "batch_size": 4,
            "lr": 1e-4,
            "max_lr": 1e-3,
            "weight_decay": 1e-5,
            "val_interval": 500,
            "log_interval": 25,
            # the shipped U-Net of the same recipe: any contrast where there are parcellations
            **(
                {"init": "brain-any-unet-gpu" if parcellated else "brain-t1-unet"}
                if from_shipped
                else {}
            ),
            "contrast": "any" if parcellated else contrast_name,
        }
    if stage == "seg":
        return {
            **common,
            "description": "supervised 3D lesion segmenter for brain MRI at 2 mm, trained on "
            "real lesion shapes implanted into healthy scans (medood-train zoo)",
            "spacing": [2.0, 2.0, 2.0],
            "patch": [64, 64, 64],
            "preset": "small",
            "residual_units": 2,
            "implant_lesions": [1, 4],
            "lesion_polarity": "any",
            # a quarter of the patches also hold a tumour-like lesion (a core in a halo)
            "tumour_p": 0.25,
            "contrast_randomisation": contrast,
            "flip_p": 0.5,
            "intensity_jitter": 0.1,
            "steps": 20000,
            "batch_size": 4,
            "lr": 1e-4,
            "max_lr": 1e-3,
            "weight_decay": 1e-5,
            "val_interval": 250,
            "log_interval": 25,
            **({"init": "brain-t1-seg"} if from_shipped else {}),
            "contrast": "any" if parcellated else contrast_name,
        }
    if stage == "diffusion":
        return {
            **common,
            "description": "slice diffusion model for brain MRI at 2 mm; the anomaly map is "
            "the Mahalanobis distance of each voxel to its reconstructions (MHD; "
            "medood-train zoo)",
            "spacing": [2.0, 2.0, 2.0],
            "slice_size": [96, 96],
            "steps": 40000,
            "batch_size": 16,
            "lr": 1e-4,
            "val_interval": 250,
            "log_interval": 25,
            "contrast_copies": 3 if parcellated else 0,
            "contrast": "any" if parcellated else contrast_name,
        }
    if stage == "gate":
        return {
            "seed": 0,
            "description": "trust gate of the zoo's brain models: is this scan like the "
            "healthy scans they were trained on? (RealNVP flow on the zoo U-Net's encoder "
            "features, MedOODFlow)",
            "contrast_copies": 3 if parcellated else 0,
            "contrast_groups": "dlmuse",
            "views": 20,
            "reference_views": 5,
            # percentiles of subjects the heads have not seen, where there are enough
            "reference_folds": min(5, subjects) if subjects >= 3 else 0,
            "augment": True,
            "epochs": 100,
            "batch_size": 32,
            "threshold_percentile": 5,
            "reference_scans": "the healthy scans of the zoo's cohort"
            + (", in their own and random MR contrasts" if parcellated else ""),
            "spacing": [4, 4, 4],
        }
    raise MedoodError(f"no zoo stage {stage!r}")


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


# -- the run ------------------------------------------------------------------------------


class _Log:
    """``OUT/zoo_log.txt``: what the run did, line by line, with the time since its start."""

    def __init__(self, path: Path):
        self.path, self.start = path, time.perf_counter()

    def __call__(self, message: str) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"[{time.perf_counter() - self.start:7.1f} s] {message}\n")


def _state(out: Path) -> dict[str, Any]:
    path = out / "zoo.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}  # a record the run itself rewrites; unreadable, it is made again


def _save_state(out: Path, state: dict[str, Any]) -> None:
    from napari_medood.io.atomic import write_text_atomic

    write_text_atomic(out / "zoo.json", json.dumps(state, indent=1, default=str) + "\n")


def run_zoo(
    settings: ZooSettings,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> ZooResult:
    """Train, calibrate and evaluate the suite as ``settings`` say (see the module)."""
    from napari_medood.io.cohort import discover_cases
    from napari_medood.synth.dataset import ValidationSetConfig, build_validation_set
    from napari_medood.training.config import load_config

    settings.validate()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # its sets, calibration and evaluation are one process's work; a stage under
        # torchrun is ``medood-train METHOD`` with the zoo's recipe (OUT/<stage>/config.json)
        raise MedoodError(
            "medood-train zoo runs as one process, each stage on one device (--device); to "
            "train one model on many GPUs, run medood-train METHOD under torchrun with the "
            "recipe the zoo wrote (OUT/<stage>/config.json)"
        )
    # one spelling of the run folder, whatever the working directory (the stages' recipes
    # name it, and a resumed run compares them)
    out = Path(settings.out).resolve()
    cases = discover_cases(settings.healthy, masks=settings.masks)
    unmasked = [c.name for c in cases if c.mask is None]
    if unmasked:
        raise MedoodError(
            f"{settings.healthy}: the zoo needs each healthy scan's brain mask or "
            f"parcellation (--mask); none for {', '.join(unmasked[:3])}"
        )
    lesion_cases = (
        discover_cases(settings.lesions, masks=settings.lesion_masks) if settings.lesions else []
    )
    if settings.lesions and not any(c.label is not None for c in lesion_cases):
        raise MedoodError(
            f"{settings.lesions}: no lesion labels found (give a CSV with a Label column, "
            "or BIDS with lesion derivatives)"
        )
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    data.mkdir(exist_ok=True)
    log = _Log(out / "zoo_log.txt")
    state = _state(out)
    state.setdefault("sessions", []).append({"budget_s": settings.budget_s, "started": time.time()})
    parcellated = is_parcellation(cases[0].mask)
    train, held = split_cohort(cases, settings.held_out, settings.seed)
    workers = default_workers() if settings.workers is None else settings.workers
    valset_options = {}
    for item in settings.stage_overrides("valset"):
        key, text = item.split("=", 1)
        import yaml

        valset_options[key.strip()] = yaml.safe_load(text)
    try:
        valset_config = ValidationSetConfig(**{"seed": settings.seed, **valset_options})
    except (TypeError, ValueError) as exc:
        raise MedoodError(f"--set valset.*: {exc}") from None
    fingerprint = {
        "train": sorted(c.name for c in train),
        "held_out": sorted(c.name for c in held),
        "masks": "parcellations" if parcellated else "brain masks",
        "seed": settings.seed,
        "eval_scans": settings.eval_scans,
        "valset": {
            k: list(v) if isinstance(v, tuple) else v for k, v in vars(valset_config).items()
        },
    }
    earlier = state.get("fingerprint")
    if earlier is not None and earlier != fingerprint:
        differ = ", ".join(k for k in fingerprint if earlier.get(k) != fingerprint[k])
        raise MedoodError(
            f"{out} holds a zoo run of another cohort or split (it differs in: {differ}); "
            "give another OUT, or remove this one to start again"
        )
    state["fingerprint"] = fingerprint
    header = ["Name", "Path", "Mask"]
    train_csv = _write_table(
        data / "train.csv", header, [[c.name, c.image.resolve(), c.mask.resolve()] for c in train]
    )
    held_csv = _write_table(
        data / "held_out.csv", header, [[c.name, c.image.resolve(), c.mask.resolve()] for c in held]
    )
    log(
        f"{len(cases)} healthy scans ({'parcellations' if parcellated else 'brain masks'}): "
        f"{len(train)} train, {len(held)} held out ({', '.join(c.name for c in held)})"
    )
    report(progress, 0, 1, "building the validation sets")
    valset = data / "valset-fpi"
    sources = sorted(held, key=lambda c: c.name)[: settings.eval_scans]
    build_validation_set(sources, valset, valset_config, cancelled=cancelled)
    lesion_valset = implanted_lesion_set(
        sources, data / "valset-lesions", parcellated, settings.seed
    )
    log(f"validation sets: {valset}, {lesion_valset}")
    state["cohort"] = {
        "healthy": str(settings.healthy),
        "masks": "parcellations" if parcellated else "brain masks",
        "train": [c.name for c in train],
        "held_out": [c.name for c in held],
        "lesions": [c.name for c in lesion_cases],
    }
    _save_state(out, state)

    # each stage with its share of the budget, through the training spine
    from napari_medood.training.registry import get_trainer

    stage_data = {
        "unet": [f"train={train_csv}", f"val={valset}"],
        "seg": [f"train={train_csv}", f"val={lesion_valset}"],
        "diffusion": [f"train={train_csv}", f"val={held_csv}"],
        "gate": [f"train={train_csv}", f"backbone={out / 'unet' / 'best'}"],
    }
    stages = state.setdefault("stages", {})
    for number, (stage, (method, share)) in enumerate(STAGES.items()):
        check_cancelled(cancelled)
        trainer = get_trainer(method)
        budget = round(share * settings.budget_s, 1)
        overrides = [
            _override(key, value)
            for key, value in recipe(
                stage, parcellated, settings.from_shipped, workers, len(train), settings.contrast
            ).items()
        ]
        overrides += [
            f"name={settings.name}-{stage}",
            f"out={out / stage}",
            f"device={settings.device}",
            f"precision={settings.precision if stage != 'gate' else 'float32'}",
            f"budget_s={budget}",
            *stage_data[stage],
            *settings.stage_overrides(stage),
        ]
        config = load_config(None, overrides, trainer.config)
        before = stages.get(stage, {})
        # the gate reads the U-Net's encoder: a U-Net that trained on needs a new gate
        backbone = _sha_of(out / "unet" / "best") if stage == "gate" else None
        if (
            before.get("overrides") == [o for o in overrides if not o.startswith("budget_s=")]
            and before.get("budget_s", 0) >= budget
            and before.get("backbone_sha") == backbone
            and (out / stage / "best" / "card.json").is_file()
        ):
            # trained to this budget already (a flow would be fitted again from scratch)
            log(f"{stage}: trained within this budget before")
            continue
        log(f"{stage}: training ({method}, budget {budget:.0f} s)")

        def within(done: int, total: int, message: str, stage=stage, number=number) -> None:
            report(progress, done, total, f"{stage} ({number + 1}/{len(STAGES)}): {message}")

        result = trainer.run(config, within, cancelled)
        if result.best is None:
            raise MedoodError(f"the {stage} stage left no checkpoint ({out / stage})")
        stages[stage] = {
            "method": method,
            "checkpoint": f"{stage}/best",
            "budget_s": budget,
            "steps": result.last_step,
            "scheduled_steps": result.scheduled_steps,
            "seconds": round(result.seconds, 1),
            "metric": result.metric,
            "best_metric": result.best_metric,
            "final_lr": result.final_lr,
            "overrides": [item for item in overrides if not item.startswith("budget_s=")],
            "backbone_sha": backbone,
        }
        log(
            f"{stage}: {result.last_step} steps in {result.seconds:.0f} s, best "
            f"{result.metric} {result.best_metric}"
        )
        _save_state(out, state)
    _link_suite(out)

    # calibrate and evaluate what changed
    evaluations = state.setdefault("evaluations", {})
    sets = {"synthetic outliers": valset, "implanted lesions": lesion_valset}
    if settings.lesions:
        sets["lesion cohort"] = Path(settings.lesions)
    for stage in MAP_STAGES:
        check_cancelled(cancelled)
        folder = out / stage / "best"
        key = _weights_key(folder, settings, sets, fingerprint)
        if evaluations.get(stage, {}).get("key") == key:
            continue
        report(progress, 0, 1, f"calibrating and evaluating {stage}")
        evaluations[stage] = {
            "key": key,
            **_evaluate_map_model(
                folder, held, sets, settings, lesion_cases if settings.lesions else None, cancelled
            ),
        }
        log(f"{stage}: calibrated and evaluated")
        _save_state(out, state)
    gate_folder = out / "gate" / "best"
    gate_key = _weights_key(gate_folder, settings, sets, fingerprint)
    if evaluations.get("gate", {}).get("key") != gate_key:
        evaluations["gate"] = {
            "key": gate_key,
            **_evaluate_gate(gate_folder, held, lesion_cases, settings, cancelled),
        }
        _save_state(out, state)

    summary = _summary(out, state, settings)
    table, record = write_summary(out, summary)
    state["sessions"][-1]["seconds"] = round(time.time() - state["sessions"][-1]["started"], 1)
    _save_state(out, state)
    log(f"summary: {table}")
    report(progress, 1, 1, "done")
    return ZooResult(summary, table, record)


def _link_suite(out: Path) -> None:
    """Name the gate in the map models' cards, and the U-Net in the gate's, by paths
    relative to each card's folder, so that the suite works wherever it is moved."""
    from napari_medood.io.atomic import write_text_atomic

    gate = out / "gate" / "best"
    for stage in MAP_STAGES:
        card_path = out / stage / "best" / "card.json"
        if not card_path.exists() or not gate.is_dir():
            continue
        card = json.loads(card_path.read_text())
        card["gate"] = os.path.relpath(gate, card_path.parent)
        write_text_atomic(card_path, json.dumps(card, indent=1) + "\n")
    gate_card = gate / "card.json"
    if gate_card.exists():
        card = json.loads(gate_card.read_text())
        backbone = card.get("backbone") or {}
        if backbone.get("kind") == "unet-encoder":
            backbone["model"] = os.path.relpath(out / "unet" / "best", gate)
            write_text_atomic(gate_card, json.dumps(card, indent=1) + "\n")


def _sha_of(folder: Path) -> str | None:
    """The weights' sha256 a checkpoint's card records (None without a card)."""
    card_path = folder / "card.json"
    if not card_path.is_file():
        return None
    return json.loads(card_path.read_text()).get("weights", {}).get("sha256")


def _weights_key(folder: Path, settings: ZooSettings, sets: dict, fingerprint: dict) -> str:
    """What an evaluation depends on: the weights (and a gate's U-Net), the calibration
    rate, the sets and the split."""
    card = json.loads((folder / "card.json").read_text())
    text = json.dumps(
        [
            card.get("weights", {}).get("sha256"),
            (card.get("backbone") or {}).get("sha256"),
            settings.fpr,
            sorted(str(v) for v in sets.values()),
            fingerprint,
        ],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _evaluate_map_model(folder, held, sets, settings, lesion_cases, cancelled) -> dict:
    """Calibrate ``folder``'s model on the held-out healthy scans (written into its card),
    then score it on each labelled set at that threshold."""
    from napari_medood.detectors import get_detector
    from napari_medood.evaluation.calibration import calibrate_on_healthy, write_calibration
    from napari_medood.evaluation.evaluate import EvalOptions, evaluate
    from napari_medood.evaluation.predictions import DetectorPredictions
    from napari_medood.io.cohort import discover_cases
    from napari_medood.models.checkpoint import Checkpoint

    detector = get_detector(str(folder), device=settings.device, gate=False)
    entry = calibrate_on_healthy(detector, held, settings.fpr, cancelled=cancelled)
    write_calibration(
        Checkpoint.open(folder), entry, command="medood-train zoo (held-out healthy scans)"
    )
    threshold = float(entry["voxel_threshold"])
    detector = get_detector(str(folder), device=settings.device, gate=False)
    figures: dict[str, Any] = {
        "threshold": threshold,
        "healthy_flagged_ml": float(np.mean(entry["healthy_flagged_ml"])),
        "healthy_voxel_fpr": float(np.mean(entry["healthy_fpr_per_scan"])),
        "sets": {},
    }
    for name, source in sets.items():
        check_cancelled(cancelled)
        cases = (
            lesion_cases
            if name == "lesion cohort" and lesion_cases is not None
            else discover_cases(source)
        )
        result = evaluate(
            cases,
            DetectorPredictions(detector),
            options=EvalOptions(fprs=(), thresholds=(threshold,), bootstrap=0),
            cancelled=cancelled,
        )
        at = f"at{threshold:g}"
        dice = result.pixel.get("dice", {}).get(at, {}).get("dice_mean")
        figures["sets"][name] = {
            "cases": len(cases),
            "failed": len(result.settings.get("failed", [])),
            "pixel_ap": result.pixel.get("ap"),
            "pixel_auroc": result.pixel.get("auroc"),
            "dice_at_threshold": dice,
            "sample_auroc": (result.sample or {}).get("auroc"),
        }
    return figures


def _evaluate_gate(folder, held, lesion_cases, settings, cancelled) -> dict:
    """The gate's percentile of each held-out healthy scan and lesion-cohort scan."""
    from napari_medood.detectors import get_detector
    from napari_medood.io.readers import read_volume
    from napari_medood.preprocessing.masks import load_mask

    figures: dict[str, Any] = {"held_out": {}, "lesion_cohort": {}}
    try:
        detector = get_detector(str(folder), device=settings.device, gate=False)
    except MedoodError as exc:
        return {**figures, "error": f"{folder}: {exc}"}
    for where, cases in (("held_out", held), ("lesion_cohort", lesion_cases)):
        for case in cases:
            check_cancelled(cancelled)
            try:
                volume = read_volume(case.image)
                mask = load_mask(case.mask, volume.grid) if case.mask is not None else None
                trust = detector.predict(volume, mask, cancelled=cancelled).extras.get("trust")
                figures[where][case.name] = round(float(trust.percentile), 1)
            except MedoodError as exc:
                figures[where][case.name] = f"failed: {exc}"
    card = json.loads((folder / "card.json").read_text())
    figures["threshold_percentile"] = card.get("threshold_percentile") or card.get(
        "inference", {}
    ).get("threshold_percentile")
    return figures


# -- the summary --------------------------------------------------------------------------


def _summary(out: Path, state: dict, settings: ZooSettings) -> dict[str, Any]:
    models = []
    for stage, (method, _) in STAGES.items():
        record = dict(state["stages"].get(stage, {}))
        evaluation = {k: v for k, v in state["evaluations"].get(stage, {}).items() if k != "key"}
        models.append(
            {
                "stage": stage,
                "name": f"{settings.name}-{stage}",
                "method": method,
                "checkpoint": f"{stage}/best",
                **{
                    k: record.get(k)
                    for k in ("budget_s", "steps", "seconds", "metric", "best_metric")
                },
                "evaluation": evaluation,
            }
        )
    return {
        "command": "medood-train zoo",
        "budget_s": settings.budget_s,
        "device": settings.device,
        "cohort": state.get("cohort", {}),
        "calibration": f"each map model at {settings.fpr:g} of the held-out healthy brain voxels",
        "sessions": [
            {k: v for k, v in s.items() if k != "started"} for s in state.get("sessions", [])
        ],
        "models": models,
    }


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a markdown table: one row per model and validation set."""
    lines = [
        "# medood-train zoo: summary",
        "",
        f"Budget {summary['budget_s']:.0f} s on `{summary['device']}`; "
        f"cohort: {len(summary['cohort'].get('train', []))} training and "
        f"{len(summary['cohort'].get('held_out', []))} held-out healthy scans "
        f"({summary['cohort'].get('masks', '')}); {summary['calibration']}.",
        "",
        "| model | steps | seconds (budget) | best validation | set | pixel AP | Dice at "
        "threshold | sample AUROC | threshold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in summary["models"]:
        evaluation = model["evaluation"]
        head = (
            f"| `{model['name']}` | {_cell(model['steps'])} | "
            f"{_cell(model['seconds'], 0)} ({_cell(model['budget_s'], 0)}) | "
            + (
                f"{model['metric']} {_cell(model['best_metric'])}"
                if model["best_metric"] is not None
                else "-"
            )
        )
        if model["stage"] == "gate":
            held = evaluation.get("held_out", {})
            cohort = evaluation.get("lesion_cohort", {})
            text = ", ".join(f"{k} {v}" for k, v in {**held, **cohort}.items())
            lines.append(f"{head} | percentiles | {text or '-'} | | | |")
            continue
        for set_name, figures in evaluation.get("sets", {}).items():
            lines.append(
                f"{head} | {set_name} ({figures['cases']}) | {_cell(figures['pixel_ap'])} | "
                f"{_cell(figures['dice_at_threshold'])} | {_cell(figures['sample_auroc'])} | "
                f"{_cell(evaluation.get('threshold'), 4)} |"
            )
    return "\n".join(lines) + "\n"


def write_summary(out: Path, summary: dict[str, Any]) -> tuple[Path, Path]:
    from napari_medood.io.atomic import write_text_atomic

    table = write_text_atomic(out / "summary.md", summary_markdown(summary))
    record = write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return table, record


# -- the pack -----------------------------------------------------------------------------


def pack_members(out: Path) -> list[Path]:
    """What a pack holds: every model's best checkpoint, every stage's logs and recipe, the
    summary, the run's record (``zoo.json``) and log; not the stages' resumable state, the
    caches or the data."""
    members = [out / name for name in ("summary.md", "summary.json", "zoo.json", "zoo_log.txt")]
    for stage in STAGES:
        folder = out / stage
        members += sorted((folder / "best").glob("*"))
        members += [folder / name for name in ("train_log.csv", "val_log.csv", "config.json")]
        members += sorted(folder.glob("*_log.csv"))
    return sorted({m for m in members if m.is_file()})


def write_pack(out: Path, folder: Path | None = None) -> list[Path]:
    """``OUT/pack``: the summary beside one gzipped tar of :func:`pack_members`, cut into
    parts of at most 16 MiB (``cat zoo.tar.gz.part* | tar -xz`` restores the folders); at
    most 8 files in all, else an error says by how much it is over. The pack is made in a
    folder of its own and renamed into place whole: an interrupted pack leaves the one
    before it."""
    import gzip
    import io
    import shutil
    import tarfile

    folder = folder or out / "pack"
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as tar,
    ):
        for member in pack_members(out):
            tar.add(member, arcname=str(member.relative_to(out)))
    data = buffer.getvalue()
    parts = [data[i : i + PACK_FILE_BYTES] for i in range(0, len(data), PACK_FILE_BYTES)] or [b""]
    if len(parts) + 1 > PACK_FILES:
        raise MedoodError(
            f"the pack would be {len(data) / 2**20:.1f} MiB: {len(parts) + 1} files of at most "
            f"16 MiB, more than {PACK_FILES}; train smaller models"
        )
    partial.mkdir(parents=True)
    shutil.copy(out / "summary.md", partial / "summary.md")
    names = ["summary.md"]
    for index, part in enumerate(parts):
        name = f"zoo.tar.gz.part{index:02d}"
        (partial / name).write_bytes(part)
        names.append(name)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(partial, folder)
    return [folder / name for name in names]
