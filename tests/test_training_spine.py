"""The training spine: every family's trainer under a time budget (stops on time with its
schedule finished, resumes, refuses a changed recipe), the schedule against torch's, the
shipped recipes' first steps against those recorded before the spine, DDP once for all.

The budgets are measured on a clock that runs ahead of the wall's (``helpers.TickingClock``), so a
family's budget mechanics take seconds; one run keeps the real clock."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest

from conftest import shared, small_cohort, tiny_diffusion_settings
from napari_medood.errors import MedoodError

sys.path.insert(0, str(Path(__file__).parent))
#: seconds each budgeted run is given, and what it may overrun by (its last steps, the save)
BUDGET, SLACK = 15.0, 12.0


@pytest.fixture
def ticking_clock(monkeypatch):
    from helpers import TickingClock
    from napari_medood.training import spine

    clock = TickingClock()
    monkeypatch.setattr(spine, "budget_clock", clock)
    return clock


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two IXI scans with their DLMUSE parcellations, one MS patient with its lesion mask."""
    return small_cohort(tmp_path_factory.mktemp("spine"), "patient07")


def family_settings(method: str, root: Path) -> list[str]:
    """A small run of each family that is stopped by its budget, not by its steps."""
    dlmuse = shared("ixi-t1-2mm", "dlmuse")
    ixi = [f"train={root / 'ixi'}", f"masks={dlmuse}"]
    steps = ["steps=100000", "workers=0", "log_interval=1", "device=cpu"]
    return {
        "unet": [
            *ixi,
            *steps,
            "features=[4,8,16]",
            "patch=[32,32,32]",
            "spacing=[4,4,4]",
            "fp_size=16",
        ],
        "seg": [
            f"train={root / 'ms.csv'}",
            *steps,
            "preset=tiny",
            "patch=[32,32,32]",
            "spacing=[4,4,4]",
        ],
        # the small network conftest trains, on this module's scans
        "diffusion": [*tiny_diffusion_settings(root, root / "diffusion"), *ixi, *steps],
        "classifier": [
            f"train={shared('medmnist-adrenalmnist3d', 'adrenalmnist3d.npz')}:val",
            *steps,
            "shape=[28,28,28]",
            "widths=[4,8,8,8]",
            "batch_size=4",
        ],
        "flow": [
            *ixi,
            "device=cpu",
            "backbone=brain-t1-unet",
            "spacing=[8,8,8]",
            "views=2",
            "reference_views=1",
            "reference_folds=2",
            "epochs=100000",
            "batch_size=4",
            "heads=[flow]",
        ],
        "toy": [*ixi, *steps],
    }[method]


def train(method: str, settings: list[str]):
    from napari_medood.training.config import load_config
    from napari_medood.training.registry import get_trainer

    trainer = get_trainer(method)
    return trainer.run(load_config(None, settings, trainer.config))


@pytest.fixture
def toy_registered():
    import toy_family

    toy_family.register()
    yield
    toy_family.unregister()


@pytest.mark.parametrize("method", ["unet", "seg", "diffusion", "classifier", "flow", "toy"])
def test_a_budgeted_run_stops_on_time_annealed_resumes_and_refuses_another_recipe(
    method, data, tmp_path, toy_registered, ticking_clock
):
    out = tmp_path / method
    settings = [*family_settings(method, data), f"out={out}"]
    first = train(method, [*settings, f"budget_s={BUDGET}"])
    assert first.seconds <= BUDGET + SLACK, first
    card = json.loads((first.best / "card.json").read_text())
    assert card["training"]["budget_s"] == BUDGET
    if method == "flow":
        # the epochs fitted in the time the features left, the best of them kept
        assert 1 <= first.last_step < 100000
        assert card["training"]["epochs_done"] == first.last_step
        assert len(card["training"]["flow_history"]) == first.last_step
        with pytest.raises(MedoodError, match="views=2"):
            train(method, [*settings, f"budget_s={BUDGET}", "views=3"])
        # a fit that ran all its epochs is not done again
        finished = [*family_settings(method, data), f"out={tmp_path / 'all'}", "epochs=3"]
        done = train(method, finished)
        written = (done.best / "model.safetensors").stat().st_mtime_ns
        again = train(method, finished)
        assert again.last_step == done.last_step == 3
        assert (again.best / "model.safetensors").stat().st_mtime_ns == written
        return
    # stopped by the budget with its schedule at its end: the last step is the last of the
    # schedule fitted to the budget, far fewer than asked for
    assert 3 <= first.last_step == first.scheduled_steps < 100000
    assert card["training"]["steps_done"] == first.last_step
    assert card["training"]["scheduled_steps"] == first.last_step
    from napari_medood.training.registry import get_trainer
    from napari_medood.training.spine import Schedule

    if method in ("unet", "seg"):  # one-cycle: annealed to peak / 25 / 1e4
        peak = get_trainer(method).config().max_lr
        assert first.final_lr == pytest.approx(peak / 25 / 1e4)
    elif method in ("classifier", "toy"):  # polynomial: its last step's rate
        config = get_trainer(method).config()
        schedule = Schedule("polynomial", config.lr, power=getattr(config, "poly_power", 1.0))
        assert first.final_lr == pytest.approx(schedule.at(first.last_step - 1, first.last_step)[0])

    # the same command with more budget goes on from where the first stopped
    second = train(method, [*settings, f"budget_s={BUDGET + 10}"])
    assert second.last_step > first.last_step
    with open(out / "train_log.csv", newline="") as handle:
        logged = [int(row["step"]) for row in csv.DictReader(handle)]
    assert logged == list(range(1, second.last_step + 1))
    assert second.seconds <= BUDGET + 10 + SLACK

    # another recipe into the same folder is refused, by name, before any work
    with pytest.raises(MedoodError, match="seed=0"):
        train(method, [*settings, "seed=1"])


def test_a_budget_is_kept_on_the_wall_clock(data, tmp_path, toy_registered):
    """The one run on the real clock: 2 s of the toy family stop within 2 s and the slack."""
    out = tmp_path / "real"
    result = train("toy", [*family_settings("toy", data), f"out={out}", "budget_s=2"])
    assert result.seconds <= 2 + SLACK
    assert 3 <= result.last_step == result.scheduled_steps < 100000


@pytest.mark.parametrize("total", [2, 7, 100, 1234])
def test_the_one_cycle_schedule_is_torch_s_step_for_step(total):
    import torch

    from napari_medood.training.spine import Schedule

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimiser = torch.optim.AdamW([parameter], lr=1e-4)
    torch_schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 1e-3, total_steps=total)
    ours = Schedule("one-cycle", 1e-4, peak=1e-3)
    for step in range(total + 1):
        lr, beta1 = ours.at(step, total)
        assert lr == optimiser.param_groups[0]["lr"]
        assert beta1 == optimiser.param_groups[0]["betas"][0]
        if step < total:
            optimiser.step()
            torch_schedule.step()


def test_the_polynomial_schedule_is_torch_s():
    import torch

    from napari_medood.training.spine import Schedule

    optimiser = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    torch_schedule = torch.optim.lr_scheduler.PolynomialLR(optimiser, total_iters=50, power=0.9)
    ours = Schedule("polynomial", 1e-4, power=0.9)
    for step in range(51):
        assert ours.at(step, 50)[0] == pytest.approx(optimiser.param_groups[0]["lr"], abs=1e-15)
        optimiser.step()
        torch_schedule.step()


@pytest.mark.slow
def test_the_shipped_recipes_draw_and_learn_their_first_steps_as_before_the_spine(tmp_path):
    """Recorded by ``python tests/first_steps.py`` on the commit before the spine."""
    from first_steps import GOLDEN, RECIPES, first_steps
    from napari_medood.training.spine import Schedule

    golden = json.loads(GOLDEN.read_text())["recipes"]
    assert set(golden) == set(RECIPES)
    for recipe, recorded in golden.items():
        now = first_steps(recipe, tmp_path)
        key = "nll" if "nll" in recorded else "loss"
        assert now[key] == pytest.approx(recorded[key], rel=1e-5), recipe
        if key == "loss":  # before the spine the log held the rate after each step
            assert now["lr"][1] == pytest.approx(recorded["lr"][0], rel=1e-9), recipe
    # and the rates after each step were the schedule's
    one_cycle = Schedule("one-cycle", 1e-4, peak=1e-3)
    assert [one_cycle.at(s, 2)[0] for s in (1, 2)] == golden["brain-t1-unet"]["lr"]
    poly = Schedule("polynomial", 1e-4, power=0.9)
    assert [poly.at(s, 2)[0] for s in (1, 2)] == pytest.approx(
        golden["adrenal3d-classifier"]["lr"], abs=1e-15
    )


@pytest.mark.slow
def test_two_gloo_processes_stop_at_the_same_step_under_a_budget(data, tmp_path):
    """DDP through the spine, once for every family: both processes train, measure the
    budget from the first, stop together, and one checkpoint is written."""
    from helpers import medood_train_under_torchrun

    out = tmp_path / "ddp"
    settings = [*family_settings("unet", data), f"out={out}", "budget_s=30"]
    run = medood_train_under_torchrun("unet", settings)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["best", "config.json", "last", "train_log.csv"]
    card = json.loads((out / "best" / "card.json").read_text())
    training = card["training"]
    assert training["processes"] == 2
    assert 3 <= training["steps_done"] == training["scheduled_steps"] < 100000
    with open(out / "train_log.csv", newline="") as handle:
        logged = [int(row["step"]) for row in csv.DictReader(handle)]
    assert logged == list(range(1, training["steps_done"] + 1))  # written by rank 0 only
    assert training["seconds"] <= 30 + SLACK
    assert f"medood-train: {training['steps_done']} steps" in run.stderr


@pytest.mark.parametrize("every", [0.0, 1e-9])
def test_a_run_saves_where_it_is_every_checkpoint_s_between_validations(
    data, tmp_path, toy_registered, every
):
    """``checkpoint_s``: ``OUT/last`` written between validations, so that a run killed
    without warning loses at most that much; 0 (the default) writes it at validations only."""
    from napari_medood.training.config import load_config
    from napari_medood.training.registry import get_trainer

    out = tmp_path / "toy"
    settings = [*family_settings("toy", data), f"out={out}", "steps=5", "val_interval=1000"]
    seen = {}

    def progress(done: int, total: int, message: str) -> None:
        if done == 4:  # reported before step 4's own save
            card = out / "last" / "card.json"
            seen["last"] = (
                json.loads(card.read_text())["training"]["steps_done"] if card.exists() else None
            )

    trainer = get_trainer("toy")
    trainer.run(load_config(None, [*settings, f"checkpoint_s={every}"], trainer.config), progress)
    assert seen["last"] == (3 if every else None)
    # the run's end saves in either case
    assert json.loads((out / "last" / "card.json").read_text())["training"]["steps_done"] == 5


def test_a_run_asked_to_compile_trains_on_uncompiled_where_compiling_fails(
    data, tmp_path, monkeypatch
):
    """``compile``: where the compiler fails in the first step (no C++ compiler, say), the
    step runs again uncompiled, and so does the run, its card saying why."""
    import torch

    from napari_medood.training.config import load_config
    from napari_medood.training.registry import get_trainer

    class NoCompiler:
        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):  # as torch's compiled module: the model's attributes
            return getattr(self.model, name)

        def __call__(self, *args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    monkeypatch.setattr(torch, "compile", NoCompiler)
    trainer = get_trainer("unet")
    settings = [*family_settings("unet", data), f"out={tmp_path / 'asked'}", "steps=3"]
    result = trainer.run(load_config(None, [*settings, "compile=true"], trainer.config))
    assert result.last_step == 3
    card = json.loads((result.best / "card.json").read_text())
    assert card["training"]["compile"].startswith("not compiled (RuntimeError: InvalidCxx")
    # the same steps as a run never asked to compile
    plain_settings = [*family_settings("unet", data), f"out={tmp_path / 'plain'}", "steps=3"]
    plain = trainer.run(load_config(None, plain_settings, trainer.config))
    with open(tmp_path / "asked" / "train_log.csv") as a:
        asked_losses = [row["loss"] for row in csv.DictReader(a)]
    with open(tmp_path / "plain" / "train_log.csv") as b:
        assert asked_losses == [row["loss"] for row in csv.DictReader(b)]
    assert "compile" not in json.loads((plain.best / "card.json").read_text())["training"]


def test_a_run_whose_bfloat16_steps_overflow_goes_on_in_float32(data, tmp_path, monkeypatch):
    """Where a CPU's bfloat16 kernels give non-finite numbers (the classifier's 3D
    convolution backward did), the step is taken again in float32 and so is the rest of
    the run, rather than bfloat16 being given up on every CPU."""
    import torch

    from napari_medood.models import unet
    from napari_medood.training.config import load_config
    from napari_medood.training.registry import get_trainer

    plain_loss = unet.deep_supervision_loss

    def overflowing_in_bfloat16(outputs, targets):
        loss = plain_loss(outputs, targets)
        return loss * float("inf") if outputs[0].dtype == torch.bfloat16 else loss

    monkeypatch.setattr(unet, "deep_supervision_loss", overflowing_in_bfloat16)
    trainer = get_trainer("unet")
    settings = [*family_settings("unet", data), f"out={tmp_path / 'run'}", "steps=3"]
    result = trainer.run(load_config(None, [*settings, "precision=bfloat16"], trainer.config))
    assert result.last_step == 3
    card = json.loads((result.best / "card.json").read_text())
    assert card["training"]["precision_fallback"].startswith(
        "bfloat16 gave non-finite numbers at step 1"
    )
    with open(tmp_path / "run" / "train_log.csv") as handle:
        assert all(math.isfinite(float(row["loss"])) for row in csv.DictReader(handle))
