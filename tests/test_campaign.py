"""``medood-train campaign``: rounds of the shipped lesion segmenter on the shared IXI scans,
each from the best so far, the best kept and compared with the shipped model on the same
validation set, a stop mid-round resumed where it was, the background process started and
stopped from the command line, and the pause while other work uses the CPU.

The rounds are a few steps of the shipped-size segmenter (what is tested is the campaign's
bookkeeping, not how much a few steps teach it)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import shared

#: three steps a round, validated at its end; a log line a step
SHORT_ROUNDS = ("seg.round_steps=3", "seg.val_interval=3", "seg.log_interval=1")


def settings_for(state: Path, **values):
    from napari_medood.training.campaign import CampaignSettings

    given = {
        "healthy": str(shared("ixi-t1-2mm", "t1")),
        "masks": str(shared("ixi-t1-2mm", "dlmuse")),
        "held_out": ("IXI039", "IXI048"),
        "members": ("seg",),
        "device": "cpu",
        "overrides": SHORT_ROUNDS,
        "yield_cpu": False,
    }
    return CampaignSettings(state=state, **{**given, **values})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A campaign's state with its data split, validation sets and the shipped segmenter's
    figure, and no round yet (each test trains in a copy)."""
    from napari_medood.training.campaign import (
        CampaignLog,
        prepare_data,
        shipped_figure,
        write_state,
    )

    state_folder = tmp_path_factory.mktemp("campaign") / "state"
    settings = settings_for(state_folder).validate()
    state_folder.mkdir()
    state: dict = {}
    prepare_data(settings, state, CampaignLog(state_folder))
    shipped_figure(settings, state, "seg")
    write_state(state_folder, state)
    return state_folder


def finished_rounds(folder: Path) -> int:
    from napari_medood.training.campaign import read_state

    rounds = read_state(folder).get("members", {}).get("seg", {}).get("rounds", [])
    return sum(1 for r in rounds if r.get("finished"))


def test_rounds_start_from_the_best_which_is_kept_and_a_stopped_round_goes_on(prepared, tmp_path):
    from napari_medood.models.checkpoint import Checkpoint
    from napari_medood.training.campaign import read_state, run_campaign, status_lines

    folder = tmp_path / "state"
    shutil.copytree(prepared, folder)
    settings = settings_for(folder)
    result = run_campaign(settings, lambda: finished_rounds(folder) >= 2)
    assert result.stopped and result.rounds_run == 2
    state = read_state(folder)
    record = state["members"]["seg"]
    # the data was prepared once and is reused: the split the user named
    assert state["data"]["held_out"] == ["IXI039-HH-1261-T1_ds", "IXI048-HH-1326-T1_ds"]
    shipped = record["shipped"]["pixel_ap"]
    assert 0 < shipped < 1 and record["shipped"]["model"] == "brain-any-seg"
    # new draws (not the seed the shipped model was picked on): 3 seeds x 2 subjects x 2
    # contrasts
    assert state["data"]["valset_seeds"] == [1, 2, 3] and record["shipped"]["cases"] == 12
    first, second = record["rounds"]
    assert first["init"] == "brain-any-seg"
    assert second["init"] == str(folder / "seg" / "best")  # round 1's best was the first
    for entry in (first, second):
        assert entry["finished"] and entry["steps_done"] == 3 and entry["samples"] == 12
        assert entry["cpu_s"] > 0
        # a finished round keeps its logs, not its weights
        assert not (folder / entry["folder"] / "best").exists()
        assert not (folder / entry["folder"] / "last").exists()
        with open(folder / entry["folder"] / "val_log.csv") as handle:
            assert [int(row["step"]) for row in csv.DictReader(handle)] == [3]

    # the best of all validations is the member's best, a checkpoint medood-predict opens
    best = Checkpoint.open(str(folder / "seg" / "best"))
    campaign = best.card["training"]["campaign"]
    values = [p[2] for p in campaign["curve"]]
    assert campaign["validation_pixel_ap"] == record["best"]["pixel_ap"]
    assert campaign["validation_pixel_ap"] == pytest.approx(max(values))
    assert campaign["shipped_validation_pixel_ap"] == shipped
    assert campaign["cpu_hours"] > 0 and campaign["steps"] in (3, 6)
    log = (folder / "campaign.log").read_text()
    assert "seg: round 2 step 3: validation pixel AP" in log
    assert "seg: shipped brain-any-seg validates at pixel AP" in log

    # a stop in the middle of round 3 keeps its state; the next session goes on from it
    round3 = folder / "seg" / "round-003"

    def mid_round() -> bool:
        return (round3 / "train_log.csv").exists()

    stopped = run_campaign(settings, mid_round)
    assert stopped.stopped
    entry = read_state(folder)["members"]["seg"]["rounds"][2]
    assert not entry["finished"] and 1 <= entry["steps_done"] < 3
    assert (round3 / "last" / "state.pt").exists()
    run_campaign(settings, lambda: finished_rounds(folder) >= 3)
    assert f"round 3 resumed at step {entry['steps_done']}" in (folder / "campaign.log").read_text()
    with open(round3 / "train_log.csv") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2, 3]
    lines = "\n".join(status_lines(folder))
    assert "seg: 3 round(s), 9 steps, 36 samples" in lines
    assert "against the shipped model" in lines


def test_another_cohort_is_refused_by_an_existing_campaign(prepared, tmp_path):
    from napari_medood.errors import MedoodError
    from napari_medood.training.campaign import run_campaign

    folder = tmp_path / "state"
    shutil.copytree(prepared, folder)
    other = settings_for(folder)
    other.healthy = str(tmp_path)
    with pytest.raises(MedoodError, match="this campaign trains on"):
        run_campaign(other, lambda: True)
    with pytest.raises(MedoodError, match="no campaign here yet"):
        run_campaign(settings_for(tmp_path / "new", healthy=None), lambda: True)


def test_start_runs_it_in_the_background_and_stop_ends_it_where_it_was(prepared, tmp_path):
    from napari_medood.cli.campaign import main
    from napari_medood.training.campaign import read_state, running_pid

    folder = tmp_path / "state"
    shutil.copytree(prepared, folder)
    sets = [item for pair in SHORT_ROUNDS for item in ("--set", pair)]
    common = ["--state", str(folder), "--members", "seg", "--device", "cpu"]
    assert main(["start", *common, *sets, "--set", "seg.round_steps=400", "--no-yield"]) == 0
    pid = running_pid(folder)
    assert pid is not None
    deadline = time.monotonic() + 60
    while not (folder / "seg" / "round-001" / "train_log.csv").exists():
        assert time.monotonic() < deadline, (folder / "campaign.out").read_text()
        time.sleep(0.5)
    # a second campaign on the same state is refused while one runs
    assert main(["start", *common]) == 2
    assert main(["stop", *common, "--wait", "120"]) == 0
    assert running_pid(folder) is None and not (folder / "campaign.pid").exists()
    entry = read_state(folder)["members"]["seg"]["rounds"][0]
    assert not entry["finished"] and entry["steps_done"] >= 1
    # what the stopped round had done is saved for the next start
    saved = json.loads((folder / "seg" / "round-001" / "last" / "card.json").read_text())
    assert saved["training"]["steps_done"] == entry["steps_done"]
    assert "stopped; the same command goes on from here" in (folder / "campaign.log").read_text()


def test_the_campaign_pauses_while_other_work_uses_the_cpu():
    from napari_medood.training.campaign import YieldToOtherWork, _machine_busy_seconds

    if _machine_busy_seconds() is None:
        pytest.skip("no /proc/stat to read the machine's CPU time from")
    gate = YieldToOtherWork(cores=0.5, every=0.25, calm=0.5)
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.time() + 2.5\nwhile time.time() < end: pass",
        ]
    )
    try:
        time.sleep(0.5)  # the busy process runs for a whole measuring interval first
        started = time.monotonic()
        gate()
        waited = time.monotonic() - started
    finally:
        busy.wait()
    # it waited for the other process to end (about 2 s more) and for the calm after it
    assert busy.returncode == 0
    assert waited >= 1.5 and gate.paused_s == pytest.approx(waited, abs=0.5)
