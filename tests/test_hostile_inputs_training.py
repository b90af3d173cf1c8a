"""Issue 25, training and synthesis: nothing wrong is reported as success. A diverged run
stops with one line and saves no non-finite weights; medood-train and medood-synth check
their OUTPUT before any data loads and leave no empty folder behind; a training CSV that
lists a missing scan names its row; a scan too small for any detector is refused by
medood-synth as medood-predict refuses it. Every test feeds the hostile input to the
command's ``main``, and checks the exit status, the one line, no traceback, and that no
user file changed."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import conftest
from conftest import shared
from napari_medood.cli.synth import main as synth_main
from napari_medood.cli.train import main as train_main

#: a U-Net small enough to take a step in a fraction of a second on a CPU
TINY_UNET = [*conftest.TINY_UNET, "device=cpu"]


def md5_of(paths) -> dict[str, str]:
    """md5 of every file under ``paths`` (files or folders)."""
    digests = {}
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digests[str(file)] = hashlib.md5(file.read_bytes()).hexdigest()
    return digests


def error_line(err: str, prog: str) -> str:
    """The command's one error line, after checking it is the only one and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(prog)]
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, err
    return errors[0][len(f"{prog}: error: ") :]


def set_options(settings: list[str]) -> list[str]:
    return [arg for setting in settings for arg in ("--set", setting)]


@pytest.fixture
def one_scan(tmp_path):
    """One IXI scan in its own folder, and the folder of DLMUSE masks it is found in."""
    scan = sorted(shared("ixi-t1-2mm", "t1").glob("*.nii.gz"))[0]
    folder = tmp_path / "train"
    folder.mkdir()
    shutil.copy(scan, folder / scan.name)
    return folder, shared("ixi-t1-2mm", "dlmuse")


@pytest.fixture
def tiny_scan(tmp_path):
    """A real scan's centre cut to 8 x 8 x 4 voxels (its affine moved with the cut)."""
    scan = nib.load(sorted(shared("ixi-t1-2mm", "t1").glob("*.nii.gz"))[0])
    x, y, z = (n // 2 for n in scan.shape)
    path = tmp_path / "tiny.nii.gz"
    nib.save(scan.slicer[x - 4 : x + 4, y - 4 : y + 4, z - 2 : z + 2], path)
    assert nib.load(path).shape == (8, 8, 4)
    return path


def all_finite(checkpoint: Path) -> bool:
    from safetensors.torch import load_file

    return all(
        bool(np.isfinite(t.float().numpy()).all())
        for t in load_file(str(checkpoint / "model.safetensors")).values()
    )


# -- 1. a diverged run --------------------------------------------------------------------


#: the two ways the spine sees a divergence: a loss that is not finite, or weights (batch-norm
#: statistics, say) that overflowed at a validation or save, under a loss still finite
DIVERGED = re.compile(
    r"training diverged (?:at step (?P<loss_step>\d+): the loss is (?:nan|inf|-inf) \(last "
    r"finite loss \S+ at step (?P<finite_step>\d+)\)|by step (?P<weights_step>\d+): \d+ of "
    r"\d+ weight tensors \(.*\) hold NaN or inf, and are neither validated nor saved); "
    r"lower the learning rate \(max_lr=1e\+08\)(?:; .* earlier weights)?"
)


@pytest.mark.parametrize("val_interval", [1000, 2], ids=["loss", "weights"])
def test_a_diverged_run_stops_with_one_line_and_saves_no_nonfinite_weights(
    val_interval, one_scan, tmp_path, capsys
):
    train, masks = one_scan
    out = tmp_path / "run"
    before = md5_of([train, masks])
    settings = [f"train={train}", f"masks={masks}", *TINY_UNET]
    # the learning rate of the issue: the loss grows by orders of magnitude, then is NaN
    settings += ["steps=60", f"val_interval={val_interval}", "max_lr=1e8"]
    assert train_main(["unet", "--out", str(out), *set_options(settings)]) == 2
    line = error_line(capsys.readouterr().err, "medood-train")
    match = DIVERGED.fullmatch(line)
    assert match, line
    if val_interval == 1000:  # no checkpoint before it: the loss is what stops the run
        step = int(match["loss_step"])
        assert int(match["finite_step"]) == step - 1
    else:
        step = int(match["loss_step"] or match["weights_step"])
    assert step < 60
    # the checkpoints left are of steps before it, and hold finite weights only
    for checkpoint in (out / "best", out / "last"):
        if checkpoint.exists():
            assert all_finite(checkpoint), checkpoint
            card = json.loads((checkpoint / "card.json").read_text())
            assert card["training"]["steps_done"] < step
    assert not (out / "best").exists()  # no validation set: best is written at the end
    assert md5_of([train, masks]) == before


def test_a_finished_run_s_card_states_its_last_finite_loss(one_scan, tmp_path, capsys):
    train, masks = one_scan
    out = tmp_path / "run"
    settings = [f"train={train}", f"masks={masks}", *TINY_UNET, "steps=2"]
    assert train_main(["unet", "--out", str(out), *set_options(settings)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    with open(out / "train_log.csv", newline="") as handle:
        last_row = list(csv.DictReader(handle))[-1]
    for checkpoint in (out / "best", out / "last"):
        training = json.loads((checkpoint / "card.json").read_text())["training"]
        assert training["steps_done"] == 2
        assert training["last_finite_loss"] == pytest.approx(float(last_row["loss"]))
        assert all_finite(checkpoint)


@dataclass
class SpineOnlySettings:
    """The run settings of a plan built in the test (no family, no data)."""

    name: str = "spine-only"
    description: str = ""
    train: str = "nothing"
    out: str = ""
    batch_size: int = 1
    lr: float = 0.1
    precision: str = "float32"
    seed: int = 0
    device: str = "cpu"
    budget_s: float = 0.0
    data_licence: str = ""
    steps: int = 4
    amp: bool = False
    workers: int = 0
    val_interval: int = 1
    log_interval: int = 1
    tensorboard: bool = False

    def validate(self):
        from napari_medood.training.config import check_run_settings

        check_run_settings(self, "nothing")
        return self

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def test_weights_that_turn_nonfinite_under_a_finite_loss_are_never_validated_or_saved(
    tmp_path,
):
    """The loss of step 2 is finite (0) but its gradient is infinite: Adam's update makes
    the weights NaN. The spine refuses to validate or save them; the checkpoints of step 1
    stay as they were."""
    import torch

    from napari_medood.training.spine import (
        Schedule,
        StepPlan,
        TrainingDiverged,
        open_run,
        train_steps,
    )

    class OneWeight(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.tensor([1.0]))

    def step_loss(model, batch, step):
        if step == 1:  # d/dw sqrt(w - w') at w = w' is infinite; the value is 0
            return torch.sqrt(model.weight - model.weight.detach()).sum()
        return ((model.weight - batch) ** 2).mean()

    validated = []

    def validate(module):
        validated.append(float(module.weight.detach()))
        return {"score": -abs(float(module.weight) - 0.5)}

    out = tmp_path / "run"
    run = open_run(SpineOnlySettings(out=str(out)))
    plan = StepPlan(
        network=OneWeight(),
        dataset=[torch.tensor([0.5])] * 4,
        step_loss=step_loss,
        optimiser=lambda parameters: torch.optim.Adam(parameters, lr=0.1),
        schedule=Schedule("constant", 0.1),
        card=lambda metrics, training: {
            "name": "spine-only",
            "detector": "toy-score",
            "metrics": metrics,
            "training": training,
        },
        training={},
        validate=validate,
        metric="score",
    )
    with pytest.raises(TrainingDiverged) as error:
        train_steps(run, plan)
    message = str(error.value)
    assert message.startswith("training diverged by step 2: 1 of 1 weight tensors (weight)")
    assert message.endswith("lower the learning rate (lr=0.1)")
    assert len(validated) == 1 and np.isfinite(validated[0])  # step 1 only
    for checkpoint in (out / "best", out / "last"):
        assert all_finite(checkpoint)
        training = json.loads((checkpoint / "card.json").read_text())["training"]
        assert training["steps_done"] == 1 and np.isfinite(training["last_finite_loss"])


# -- 2. OUTPUT checked first, and no empty folder left --------------------------------------


def _loading_forbidden(monkeypatch):
    """Fail the test if a command starts reading its data."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the data were read before the output was checked")

    monkeypatch.setattr("napari_medood.training.data.training_cases", forbidden)
    monkeypatch.setattr("napari_medood.io.cohort.discover_cases", forbidden)


def train_args(train: Path, masks: Path, out: Path, *extra: str) -> list[str]:
    settings = [f"train={train}", f"masks={masks}", *TINY_UNET, "steps=1", *extra]
    return ["unet", "--out", str(out), *set_options(settings)]


def synth_args(scans: Path, out: Path) -> list[str]:
    return ["--kinds", "shift", "--normal", "0", str(scans), str(out)]


@pytest.mark.parametrize("command", ["train", "synth"])
def test_an_output_that_is_a_file_is_refused_before_any_data_loads(
    command, one_scan, tmp_path, capsys, monkeypatch
):
    train, masks = one_scan
    out = tmp_path / "results.txt"
    out.write_text("a user's notes\n")
    before = md5_of([train, out])
    _loading_forbidden(monkeypatch)
    if command == "train":
        status, prog = train_main(train_args(train, masks, out)), "medood-train"
    else:
        status, prog = synth_main(synth_args(train, out)), "medood-synth"
    assert status == 2
    line = error_line(capsys.readouterr().err, prog)
    assert line.startswith(f"{out}: ") and "is a file" in line, line
    assert md5_of([train, out]) == before


@pytest.mark.parametrize("command", ["train", "synth"])
def test_an_output_that_cannot_be_made_is_refused_before_any_data_loads(
    command, one_scan, tmp_path, capsys, monkeypatch
):
    """An OUTPUT inside a file can be made by no one, root included."""
    train, masks = one_scan
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a user's notes\n")
    out = blocker / "run"
    before = md5_of([train, blocker])
    _loading_forbidden(monkeypatch)
    if command == "train":
        status, prog = train_main(train_args(train, masks, out)), "medood-train"
    else:
        status, prog = synth_main(synth_args(train, out)), "medood-synth"
    assert status == 2
    line = error_line(capsys.readouterr().err, prog)
    assert line.startswith(f"{out}: cannot write into this output folder (")
    assert md5_of([train, blocker]) == before


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into any folder"
)
@pytest.mark.parametrize("command", ["train", "synth"])
def test_an_unwritable_output_folder_is_refused_before_any_data_loads(
    command, one_scan, tmp_path, capsys, monkeypatch
):
    train, masks = one_scan
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    _loading_forbidden(monkeypatch)
    try:
        if command == "train":
            status, prog = train_main(train_args(train, masks, out)), "medood-train"
        else:
            status, prog = synth_main(synth_args(train, out)), "medood-synth"
    finally:
        out.chmod(0o755)
    assert status == 2
    line = error_line(capsys.readouterr().err, prog)
    assert line.startswith(f"{out}: cannot write into this output folder (")
    assert out.is_dir() and not any(out.iterdir())  # there before: left as it was


def test_argument_errors_make_no_output_folder(one_scan, tmp_path, capsys):
    train, masks = one_scan
    out = tmp_path / "new" / "run"
    assert synth_main(["--kinds", "shfit", str(train), str(out)]) == 2
    assert "unknown outlier kind 'shfit'" in error_line(capsys.readouterr().err, "medood-synth")
    assert train_main(train_args(train, masks, out, "stepz=3")) == 2
    assert "stepz" in error_line(capsys.readouterr().err, "medood-train")
    assert not (tmp_path / "new").exists()


def test_a_failed_run_removes_only_the_empty_folders_it_made(one_scan, tmp_path, capsys):
    train, masks = one_scan
    missing = tmp_path / "no-such-scans"
    out = tmp_path / "new" / "run"
    assert train_main(train_args(missing, masks, out)) == 2
    assert str(missing) in error_line(capsys.readouterr().err, "medood-train")
    assert not (tmp_path / "new").exists()
    # a folder that was there before stays, even empty
    existing = tmp_path / "existing"
    existing.mkdir()
    assert synth_main(synth_args(missing, existing)) == 2
    assert str(missing) in error_line(capsys.readouterr().err, "medood-synth")
    assert existing.is_dir() and not any(existing.iterdir())


# -- 3. a training CSV that lists a missing scan ---------------------------------------


def test_a_training_csv_listing_a_missing_scan_names_the_row_and_the_scan(
    one_scan, tmp_path, capsys
):
    train, masks = one_scan
    scan = next(train.iterdir())
    table = tmp_path / "train.csv"
    with open(table, "w", newline="") as handle:
        csv.writer(handle).writerows([["Path"], [str(scan)], ["missing1.nii.gz"]])
    before = md5_of([train, table])
    out = tmp_path / "run"
    assert train_main(train_args(table, masks, out)) == 2
    line = error_line(capsys.readouterr().err, "medood-train")
    assert line == f"{table}: row 3: the scan {tmp_path / 'missing1.nii.gz'} does not exist"
    assert not out.exists()  # made for the run, left empty: removed
    assert md5_of([train, table]) == before


# -- 4. a scan too small for any detector -------------------------------------------------


def test_synth_refuses_a_scan_too_small_as_predict_does(tiny_scan, tmp_path, capsys):
    from napari_medood.detectors.compatibility import check_scan
    from napari_medood.errors import VolumeShapeError
    from napari_medood.io.readers import read_volume

    with pytest.raises(VolumeShapeError) as predict_s:  # the rule medood-predict applies
        check_scan(read_volume(tiny_scan))
    before = md5_of([tiny_scan])
    out = tmp_path / "valset"
    assert synth_main(synth_args(tiny_scan, out)) == 2
    line = error_line(capsys.readouterr().err, "medood-synth")
    assert line == str(predict_s.value)
    assert line.startswith(f"{tiny_scan}: has only 8x8x4 voxels")
    assert not out.exists()
    assert md5_of([tiny_scan]) == before


def test_synth_reports_a_too_small_scan_among_good_ones_and_writes_the_others(
    one_scan, tiny_scan, tmp_path, capsys
):
    scans, _ = one_scan
    shutil.move(tiny_scan, scans / tiny_scan.name)
    before = md5_of([scans])
    out = tmp_path / "valset"
    assert synth_main(synth_args(scans, out)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"medood-synth: failed: tiny: {scans / 'tiny.nii.gz'}: has only 8x8x4 voxels" in err
    cases = json.loads((out / "manifest.json").read_text())["cases"]
    assert [c["kind"] for c in cases] == ["shift"] and "tiny" not in cases[0]["case"]
    assert md5_of([scans]) == before
