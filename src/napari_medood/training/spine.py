"""The training spine: what every family's training shares, written once.

A family brings its network, its data, the loss of one step, its validation and its card
(:class:`StepPlan`); the spine brings the rest:

- the run: processes under torchrun (DDP), the device and precision, the seed, the run folder
  and its ``config.json`` (:func:`open_run`);
- resuming from ``OUT/last`` with the same recipe, and refusing a changed one by name
  (:meth:`Run.resume_state`); a resumed run with hard negatives must mine with the same
  baseline;
- the step loop (:func:`train_steps`): the optimiser step with a gradient scaler where float16
  needs one, the learning-rate schedule, CSV logs (TensorBoard if asked), validation every
  ``val_interval`` steps keeping ``OUT/best`` by the family's metric, ``OUT/last`` with the
  optimiser state (also every ``checkpoint_s`` seconds between validations), cancel and
  Ctrl-C keeping what was done;
- divergence: a step whose loss is not finite stops the run with :class:`TrainingDiverged`
  (naming the step, the last finite loss and the learning rate), and no checkpoint is ever
  written with non-finite weights, so ``OUT/best`` and ``OUT/last`` keep the last sound
  ones; a finished run's card states its last loss (``training.last_finite_loss``);
- the time budget (``budget_s``): the run stops once that many seconds have passed (every
  session of it, preparation included), and the schedule is fitted to the steps the budget
  allows, measured after a warm-up, so that a budgeted run ends annealed rather than cut off
  in the middle of its schedule.

Families without steps (the flow) use the run and the budget only.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_medood._progress import (
    Cancelled,
    CancelledPredicate,
    ProgressCallback,
    check_cancelled,
    report,
)
from napari_medood.errors import MedoodError

#: what may change when a run resumes: where its data and logs are and how it runs; anything
#: else would mix two recipes in one model
RESUMABLE_CHANGES = (
    "train",
    "masks",
    "val",
    "val_masks",
    "out",
    "name",
    "description",
    "device",
    "workers",
    "log_interval",
    "val_interval",
    "data_licence",
    "precision",
    "amp",
    "tensorboard",
    "budget_s",
    "checkpoint_s",
    "compile",
)
#: configuration keys that say where data and outputs are, left out of the card's recipe
NOT_RECIPE = ("train", "masks", "val", "val_masks", "out", "name", "description")
TRAIN_LOG_FIELDS = ("step", "loss", "lr", "seconds", "samples_per_second")


class TrainingDiverged(MedoodError):
    """The loss or the weights of a run stopped being finite numbers."""


# -- the run --------------------------------------------------------------------------


#: what every budget is measured with: seconds from an arbitrary origin. Tests put a clock
#: here that runs faster than the wall's, so that a budget's mechanics take no real minutes.
budget_clock: Callable[[], float] = time.perf_counter


@dataclass
class Budget:
    """Seconds a run may take in all its sessions (0: no limit), and how many it has had."""

    seconds: float = 0.0
    before: float = 0.0  # in earlier sessions
    clock: Callable[[], float] = field(default_factory=lambda: budget_clock)
    started: float | None = None

    def __post_init__(self):
        if self.started is None:
            self.started = self.clock()

    @property
    def limited(self) -> bool:
        return self.seconds > 0

    def elapsed(self) -> float:
        return self.before + self.clock() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed() if self.limited else math.inf

    def spent(self) -> bool:
        return self.limited and self.left() <= 0


@dataclass
class Run:
    """One training run: where it writes, which process this is, on what device."""

    config: Any
    rank: int
    world: int
    device: str
    execution: Any
    budget: Budget

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def last_dir(self) -> Path:
        return self.out / "last"

    @property
    def best_dir(self) -> Path:
        return self.out / "best"

    def resume_state(self) -> dict | None:
        """The state ``OUT/last`` left (``state.pt``: plain tensors and numbers, read with
        ``weights_only=True``; :func:`open_run` checked it is of this recipe), None for a
        new run. Its seconds count towards the budget."""
        import torch

        path = self.last_dir / "state.pt"
        if not path.exists():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.budget.before = float(state.get("seconds", 0.0))
        return state

    def write_config(self) -> None:
        """``OUT/config.json``: the recipe a later session must resume with."""
        if self.is_main:
            from napari_medood.io.atomic import write_text_atomic

            self.out.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.config.to_dict(), indent=1) + "\n"
            write_text_atomic(self.out / "config.json", text)

    def record(self, train_cases=None, val_cases=None, **entries) -> dict:
        """The card's ``training`` entry every family shares: precision, data and
        validation names, licence, the recipe (the configuration less where its data and
        outputs are), the budget, the processes and device; ``entries`` add the family's."""
        import torch

        config = self.config
        cases = {}
        if train_cases is not None:
            cases["data"] = [c.name for c in train_cases]
            cases["validation"] = [c.name for c in val_cases or []]
        return {
            "precision": self.execution.precision,
            **cases,
            "data_licence": config.data_licence,
            "recipe": {k: v for k, v in config.to_dict().items() if k not in NOT_RECIPE},
            **entries,
            **({"budget_s": config.budget_s} if config.budget_s else {}),
            "processes": self.world,
            "device": device_description(self.device),
            "torch": torch.__version__,
        }

    def finish(self) -> None:
        from napari_medood.distributed import finish_processes

        finish_processes(self.world)


def open_run(config, precision: str | None = None, seed_torch: bool = True) -> Run:
    """Start the run ``config`` describes: validated, refused at once where ``OUT`` holds a
    run of another recipe, processes opened under torchrun (each with the GPU of its local
    rank), torch seeded with ``config.seed``, the execution plan (``precision``, else the
    configuration's; float32 where ``amp`` is off)."""
    import torch

    from napari_medood.device import choose_device
    from napari_medood.distributed import open_processes
    from napari_medood.execution import plan_execution

    config.validate()
    budget = Budget(config.budget_s)
    if (Path(config.out) / "last" / "state.pt").exists():
        check_resumable(Path(config.out), config)
    rank, world, device = open_processes(choose_device(config.device))
    if seed_torch:
        torch.manual_seed(config.seed)
    if precision is None:
        precision = config.precision if getattr(config, "amp", True) else "float32"
    return Run(config, rank, world, device, plan_execution(device, precision), budget)


def check_resumable(out: Path, config) -> None:
    """Refuse to resume a run in ``out`` with another recipe, naming what differs."""
    path = out / "config.json"
    if not path.is_file():
        raise MedoodError(f"{out}: has a saved state but no config.json; train into another folder")
    previous = json.loads(path.read_text())
    current = config.to_dict()
    changed = [
        f"{key}={previous.get(key)!r} (now {current[key]!r})"
        for key in current
        if key not in RESUMABLE_CHANGES and key in previous and previous[key] != current[key]
    ]
    if changed:
        raise MedoodError(
            f"{out}: this run was started with {', '.join(changed)}; resume with the same "
            "recipe, or train into another folder"
        )


def device_description(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()})"


def write_row(path: Path, row: dict, fields: tuple[str, ...]) -> None:
    """Append ``row`` to the CSV log at ``path`` (header first when the file is new)."""
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


# -- the learning-rate schedule -------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """The learning rate (and Adam's beta1) at a step of a run of ``total`` steps:

    - ``one-cycle``: torch's ``OneCycleLR`` with its defaults (cosine, 30 % warm-up from
      ``peak / 25`` to ``peak``, down to ``peak / 25 / 1e4``; beta1 cycling 0.95 -> 0.85 ->
      0.95), the mood22 recipe;
    - ``polynomial``: ``base * (1 - step / total) ** power``, MedOODFlow's classifier;
    - ``constant``: ``base``, MHD's diffusion model.

    A function of the step and the total rather than a torch scheduler, so that a budget
    can refit the total halfway and a resumed run needs no scheduler state."""

    kind: str
    base: float
    peak: float = 0.0
    power: float = 0.9

    def at(self, step: int, total: int) -> tuple[float, float | None]:
        """``(lr, beta1 or None)`` after ``step`` optimiser steps of ``total``."""
        if self.kind == "constant":
            return self.base, None
        if self.kind == "polynomial":
            return self.base * (1.0 - min(step, total) / total) ** self.power, None
        if self.kind != "one-cycle":
            raise ValueError(f"unknown schedule {self.kind!r}")
        initial = self.peak / 25.0
        phases = (
            (float(0.3 * total) - 1, initial, self.peak, 0.95, 0.85),
            (total - 1, self.peak, initial / 1e4, 0.85, 0.95),
        )
        start = 0.0
        for index, (end, lr_from, lr_to, beta_from, beta_to) in enumerate(phases):
            if step <= end or index == len(phases) - 1:
                pct = (step - start) / (end - start)
                return _cosine(lr_from, lr_to, pct), _cosine(beta_from, beta_to, pct)
            start = end
        raise AssertionError("unreachable")

    def apply(self, optimiser, step: int, total: int) -> float:
        lr, beta1 = self.at(step, total)
        for group in optimiser.param_groups:
            group["lr"] = lr
            if beta1 is not None and "betas" in group:
                group["betas"] = (beta1, *group["betas"][1:])
        return lr


def _cosine(start: float, end: float, pct: float) -> float:
    # the order of operations of torch's OneCycleLR, so that both give the same floats
    cos_out = math.cos(math.pi * pct) + 1
    return end + (start - end) / 2.0 * cos_out


# -- the step loop --------------------------------------------------------------------


@dataclass
class StepPlan:
    """What a family brings to :func:`train_steps`.

    network: the module to train, on the run's device (wrapped for DDP by the spine).
    dataset: a map-style dataset, item ``i`` the same in every run, at least ``steps *
        batch_size * world`` long; the spine gives each process its share from the step a
        run resumes at.
    step_loss(model, batch, step): the loss of one batch (forward under the run's
        autocast, in float32 after it).
    optimiser(parameters): the family's optimiser; schedule: its learning rate.
    card(metrics, training): the checkpoint card; training: the card's ``training`` entry.
    validate(module) -> metrics, or None; metric: the key of ``metrics`` that picks the
        best checkpoint, ``higher`` or lower is better; metric_label for people.
    skip_nonfinite: skip an optimiser step whose gradients are not finite (what a float16
        scaler does; for a family that runs float32 on CPUs that overflow otherwise)."""

    network: Any
    dataset: Any
    step_loss: Callable
    optimiser: Callable
    schedule: Schedule
    card: Callable[[dict, dict], dict]
    training: dict
    validate: Callable | None = None
    metric: str = "pixel_ap"
    higher: bool = True
    metric_label: str = "pixel AP"
    skip_nonfinite: bool = False


def training_loader(dataset, config, rank: int, world: int, start_step: int, device: str):
    """This process's share of ``dataset`` from the step it starts at (a resumed run goes
    on where it stopped), ``config.batch_size`` per step, ``config.workers`` workers."""
    from torch.utils.data import DataLoader

    from napari_medood.training.data import OffsetSampler

    sampler = OffsetSampler(len(dataset), rank, world, start_step * config.batch_size)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=device.startswith("cuda"),
        drop_last=True,
    )


class StepBudget:
    """How many steps the run will take: ``config.steps``, or fewer where the budget says
    so. The first two steps carry start-up costs (loader workers, kernels chosen), so the
    time per step is measured from the end of the second; the total is fitted to what the
    budget has left after three more, then again after 6, 12, 24... (each fit on a longer
    measure, so the schedule moves less each time), at every validation (whose time the
    measure then includes) and once the budget is spent. Under torchrun the first process
    measures and tells the others at steps every process knows, so that all stop at the
    same step."""

    def __init__(self, budget: Budget, config, world: int, start_step: int):
        self.budget, self.steps, self.world = budget, int(config.steps), world
        self.log_interval = int(config.log_interval)
        self.total = self.steps
        if budget.limited and start_step:  # resumed: at the pace of the earlier sessions
            per_step = budget.before / start_step
            self.total = min(self.steps, start_step + int(max(budget.left(), 0.0) / per_step))
        self.origin = start_step + 2  # measured from the end of this run's second step
        self.measured_from: float | None = None
        self.next_fit = 3

    def after(self, step: int, validating: bool) -> None:
        """Called after every optimiser step."""
        if not self.budget.limited:
            return
        if step == self.origin:
            self.measured_from = self.budget.clock()
        if self.measured_from is None or step <= self.origin:
            return
        measured = step - self.origin
        due = measured >= self.next_fit or validating
        if self.world > 1:
            due = due or step % self.log_interval == 0
        elif not due:
            due = self.budget.spent()
        if not due:
            return
        if measured >= self.next_fit:
            self.next_fit *= 2
        from napari_medood.distributed import from_first_process

        def fitted() -> int:
            per_step = (self.budget.clock() - self.measured_from) / measured
            affordable = step + int(max(self.budget.left(), 0.0) / per_step)
            return max(step, min(self.steps, affordable))

        self.total = from_first_process(self.world, fitted)


def learning_rate_setting(config, schedule: Schedule) -> str:
    """The configuration key and value that set the run's learning rate (``max_lr=...``
    for a one-cycle schedule, else ``lr=...``), for the advice after a divergence."""
    key = "max_lr" if schedule.kind == "one-cycle" and hasattr(config, "max_lr") else "lr"
    return f"{key}={getattr(config, key, schedule.base):g}"


def nonfinite_weights(module) -> tuple[list[str], int]:
    """``(names of the floating-point tensors of module's state holding NaN or inf, how
    many floating-point tensors it has)``; buffers (batch-norm statistics) count too, as
    they are saved with the weights."""
    import torch

    tensors = [
        (name, tensor)
        for name, tensor in module.state_dict().items()
        if torch.is_tensor(tensor) and tensor.is_floating_point()
    ]
    bad = [name for name, tensor in tensors if not bool(torch.isfinite(tensor).all())]
    return bad, len(tensors)


def check_finite_weights(module, step: int, advice: str, folder: Path | None = None) -> None:
    """Refuse weights holding NaN or inf after ``step``: as the checkpoint ``folder`` (named
    first), or, without one, before the validation that would read them."""
    bad, total = nonfinite_weights(module)
    if not bad:
        return
    shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
    which = f"{len(bad)} of {total} weight tensors ({shown})"
    if folder is not None:
        raise TrainingDiverged(
            f"{folder}: not written: {which} hold NaN or inf after step {step}; training "
            f"diverged; {advice}"
        )
    raise TrainingDiverged(
        f"training diverged by step {step}: {which} hold NaN or inf, and are neither "
        f"validated nor saved; {advice}"
    )


def any_process_true(world: int, flag: bool, device: str) -> bool:
    """True on every process when ``flag`` is True on any (alone: ``flag``), so that all
    processes of a DDP run stop at the same step rather than wait for one that left."""
    if world <= 1:
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def train_steps(
    run: Run,
    plan: StepPlan,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
):
    """Train ``plan`` for ``run.config.steps`` steps, or as many as ``budget_s`` allows with
    the schedule fitted to them; resume from ``OUT/last`` where a run left one. Every
    ``val_interval`` steps the first process validates, keeps the best weights as
    ``OUT/best`` and the latest with the optimiser state as ``OUT/last``; without a
    validation the final weights are the best.

    A step whose loss is NaN or inf stops the run with :class:`TrainingDiverged`: the loss
    is computed in float32, so a non-finite one means the forward pass itself overflowed,
    which no gradient scaler can undo, and every later step would be as bad. (A step whose
    loss is finite but whose gradients are not is what ``skip_nonfinite`` and the float16
    scaler skip.) Checkpoints are written only with finite weights, checked before the
    validation that would choose them, so ``OUT/best`` and ``OUT/last`` keep the last sound
    ones."""
    import torch

    from napari_medood.distributed import barrier, distributed_model
    from napari_medood.models.checkpoint import save_checkpoint
    from napari_medood.training.registry import TrainResult

    config, execution, device = run.config, run.execution, run.device
    model = plan.network
    optimiser = plan.optimiser(model.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=execution.precision == "float16")
    start_step, best = 0, None
    state = run.resume_state()
    if state is not None:
        from safetensors.torch import load_file

        from napari_medood.training.hard_negatives import check_same_baseline

        check_same_baseline(
            run.last_dir / "card.json", plan.training.get("ood_supervision"), run.out
        )
        model.load_state_dict(load_file(str(run.last_dir / "model.safetensors"), device="cpu"))
        model.to(device)
        optimiser.load_state_dict(state["optimiser"])
        scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        if "best" in state:
            best = float(state["best"]) if math.isfinite(float(state["best"])) else None
        else:  # a state written before the spine: -1 stood for none
            older = float(state.get("best_ap", state.get("best_loss", -1.0)))
            best = None if older < 0 else older
    run.write_config()
    steps = StepBudget(run.budget, config, run.world, start_step)
    plan.schedule.apply(optimiser, start_step, steps.total)
    model = distributed_model(model, device, run.world)
    module = getattr(model, "module", model)
    # the steps may run compiled; validation and checkpoints use the module itself
    compiled = Compiled(model, bool(getattr(config, "compile", False)))
    loader = training_loader(plan.dataset, config, run.rank, run.world, start_step, device)
    writer = _tensorboard(run) if getattr(config, "tensorboard", False) else None

    advice = f"lower the learning rate ({learning_rate_setting(config, plan.schedule)})"
    last_finite: tuple[int, float] | None = None  # (step, loss) of this session's latest

    def save(folder: Path, metrics: dict, step: int) -> None:
        check_finite_weights(module, step, advice, folder)
        save_checkpoint(module, folder, plan.card(metrics, {**plan.training, **done(step)}))

    def save_last(step: int) -> None:
        save(run.last_dir, {}, step)
        temp = run.last_dir / "state.pt.part"
        torch.save(
            {
                "optimiser": optimiser.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "best": -math.inf if best is None else best,
                "seconds": run.budget.elapsed(),
            },
            temp,
        )
        os.replace(temp, run.last_dir / "state.pt")

    def done(step: int) -> dict:
        entry = {"steps_done": step, "seconds": round(run.budget.elapsed(), 1)}
        if compiled.record is not None:
            entry["compile"] = compiled.record
        if fallback is not None:
            entry["precision_fallback"] = fallback
        if run.budget.limited:
            entry["scheduled_steps"] = steps.total
        if last_finite is not None:  # the loss of step ``step``: a run stops at a non-finite one
            entry["last_finite_loss"] = last_finite[1]
        return entry

    def better(value: float) -> bool:
        if not math.isfinite(value):  # a NaN best would never be beaten again
            return False
        return best is None or (value > best if plan.higher else value < best)

    def diverged(step: int, loss_value: float) -> TrainingDiverged:
        before = (
            f"last finite loss {last_finite[1]:.3g} at step {last_finite[0]}"
            if last_finite is not None
            else "no finite loss before it" + (" in this session" if start_step else "")
        )
        kept = [str(d) for d in (run.best_dir, run.last_dir) if (d / "model.safetensors").exists()]
        keeps = f"; {' and '.join(kept)} {'keep' if len(kept) > 1 else 'keeps'} earlier weights"
        keeps = keeps if kept else ""
        return TrainingDiverged(
            f"training diverged at step {step}: the loss is {loss_value} ({before}); "
            f"{advice}{keeps}"
        )

    model.train()
    step = start_step
    window_start, window_samples = time.perf_counter(), 0
    checkpoint_s = float(getattr(config, "checkpoint_s", 0.0) or 0.0)
    fallback: str | None = None
    saved_at = time.perf_counter()
    try:
        for batch in loader:
            if step >= steps.total:
                break
            check_cancelled(cancelled)
            optimiser.zero_grad(set_to_none=True)
            loss = compiled.step(plan, batch, step, scaler)
            if execution.precision == "bfloat16" and not finite_step(loss, model):
                # some CPUs' bfloat16 kernels overflow where float32 does not (the 3D
                # convolution's backward, seen in the classifier): this run goes on in float32
                execution.fall_back_to_float32()
                fallback = f"bfloat16 gave non-finite numbers at step {step + 1}; float32 since"
                optimiser.zero_grad(set_to_none=True)
                loss = compiled.step(plan, batch, step, scaler)
            if not plan.skip_nonfinite or all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters()
            ):
                scaler.step(optimiser)
                scaler.update()
            lr = optimiser.param_groups[0]["lr"]  # the one this step used
            loss_value = float(loss.detach())  # once: on a GPU each read waits for the device
            step += 1
            if any_process_true(run.world, not math.isfinite(loss_value), device):
                raise diverged(step, loss_value)
            last_finite = (step, loss_value)
            validating = step % config.val_interval == 0
            steps.after(step, validating)
            plan.schedule.apply(optimiser, step, steps.total)
            finished = step >= steps.total
            window_samples += config.batch_size * run.world
            if run.is_main and (step % config.log_interval == 0 or finished):
                now = time.perf_counter()
                row = {
                    "step": step,
                    "loss": loss_value,
                    "lr": lr,
                    "seconds": round(run.budget.elapsed(), 2),
                    "samples_per_second": round(window_samples / max(now - window_start, 1e-9), 3),
                }
                write_row(run.out / "train_log.csv", row, TRAIN_LOG_FIELDS)
                if writer is not None:
                    writer.add_scalar("loss", row["loss"], step)
                window_start, window_samples = now, 0
            report(progress, step, steps.total, f"loss {loss_value:.4f}")
            if validating or finished:
                # every process holds the same weights, so all stop here together; checked
                # before a validation that could pick NaN weights as the best
                check_finite_weights(module, step, advice)
                if run.is_main:
                    if plan.validate is not None:
                        was_training = module.training
                        module.eval()
                        metrics = plan.validate(module)
                        module.train(was_training)
                        write_row(
                            run.out / "val_log.csv", {"step": step, **metrics}, ("step", *metrics)
                        )
                        value = metrics[plan.metric]
                        value = 0.0 if value is None else float(value)
                        if better(value):
                            best = value
                            save(run.best_dir, {"validation": {**metrics, "step": step}}, step)
                    save_last(step)
                    saved_at = time.perf_counter()
                barrier(run.world)
            elif run.is_main and checkpoint_s and time.perf_counter() - saved_at >= checkpoint_s:
                # only the first process writes: the weights are the same on every one
                save_last(step)
                saved_at = time.perf_counter()
    except (KeyboardInterrupt, Cancelled):  # keep what was done: the same command resumes
        if run.is_main:
            save_last(step)
        raise
    finally:
        if writer is not None:
            writer.close()
    if run.is_main and plan.validate is None:
        save(run.best_dir, {}, step)
    run.finish()
    best_dir = run.best_dir if run.best_dir.exists() else None
    return TrainResult(
        best_dir,
        best,
        plan.metric_label,
        step,
        run.budget.elapsed(),
        scheduled_steps=steps.total,
        budget_s=float(config.budget_s or 0.0),
        final_lr=plan.schedule.at(max(step - 1, 0), steps.total)[0] if step else None,
    )


def finite_step(loss, model) -> bool:
    """The step's loss and every gradient are finite numbers."""
    import torch

    if not bool(torch.isfinite(loss.detach()).all()):
        return False
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())


class Compiled:
    """The training steps' forward, compiled where asked (``torch.compile``), else the model
    itself. Compilation happens in the first step; where it fails (no C++ compiler, an
    operation the compiler does not know), that step runs again uncompiled and so does the
    rest of the run, and ``record`` says why."""

    def __init__(self, model, wanted: bool):
        self.model, self.record = model, None
        self.forward = model
        if wanted:
            import torch

            self.forward = torch.compile(model)
            self.record = "compiled"
        self.tried = not wanted

    def step(self, plan: StepPlan, batch, step: int, scaler):
        """The loss of ``plan``'s step on ``batch``, its gradients computed."""

        def run_step(forward):
            loss = plan.step_loss(forward, batch, step)
            scaler.scale(loss).backward()
            return loss

        if self.tried:
            return run_step(self.forward)
        try:
            loss = run_step(self.forward)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: train uncompiled
            for parameter in self.model.parameters():
                parameter.grad = None
            self.forward = self.model
            reason = " ".join(str(exc).split())[:200]
            self.record = f"not compiled ({type(exc).__name__}: {reason})"
            loss = run_step(self.forward)
        self.tried = True
        return loss


def _tensorboard(run: Run):
    if not run.is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run.out / "tensorboard"))
