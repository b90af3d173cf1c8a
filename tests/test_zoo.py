"""``medood-train zoo``: the brain suite trained on two healthy IXI scans in one 90 s budget
on the CPU, evaluated on an MS patient, packed, usable through ``medood-predict``, resumed."""

from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import sha256, shared, small_cohort

#: a diffusion model small enough for the CPU (the networks' size is not what is tested)
SMALL_NETWORKS = [
    "diffusion.spacing=[4,4,4]",
    "diffusion.slice_size=[48,48]",
    "diffusion.channels=[8,16]",
    "diffusion.attention_levels=[false,true]",
    "diffusion.num_head_channels=8",
    "diffusion.norm_num_groups=8",
    "diffusion.batch_size=4",
    "diffusion.reconstructions=2",
    # batches of 2: more steps of the U-Net in its share of a CPU minute
    "unet.batch_size=2",
]
STAGES = ("unet", "seg", "diffusion", "gate")
#: networks so small that the whole suite's mechanics run in seconds (not what is measured)
TINY_NETWORKS = [
    *SMALL_NETWORKS,
    "unet.features=[4,8,16]",
    "unet.patch=[32,32,32]",
    "unet.spacing=[4,4,4]",
    "unet.fp_size=16",
    "seg.preset=tiny",
    "seg.patch=[32,32,32]",
    "seg.spacing=[4,4,4]",
    "gate.spacing=[8,8,8]",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two IXI scans (their DLMUSE parcellations as masks) and MS patient 19's T1 with its
    consensus lesions."""
    return small_cohort(tmp_path_factory.mktemp("zoo-cohort"), "patient19")


def zoo(cohort: Path, out: Path, budget: int, *extra: str, networks=SMALL_NETWORKS) -> int:
    from napari_medood.cli import train_main

    arguments = ["zoo", "--mask", str(shared("ixi-t1-2mm", "dlmuse"))]
    arguments += ["--lesions", str(cohort / "ms.csv"), "--budget", str(budget)]
    arguments += ["--device", "cpu", "--set", "valset.kinds=[shift]"]
    for item in networks:
        arguments += ["--set", item]
    return train_main([*arguments, *extra, str(cohort / "ixi"), str(out)])


def logged_steps(path: Path) -> list[int]:
    with open(path, newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


def check_every_model_trained_calibrated_and_evaluated(out: Path, summary: dict) -> None:
    """Each model of a zoo run: in summary.md, its card recording its share of the budget and
    the steps it ran; the gate's percentiles of the held-out scan and the lesion patient;
    each map model calibrated on the held-out scan and scored on every labelled set."""
    table = (out / "summary.md").read_text()
    for model in summary["models"]:
        assert f"`{model['name']}`" in table
        card = json.loads((out / model["stage"] / "best" / "card.json").read_text())
        assert card["training"]["budget_s"] == model["budget_s"] > 0
        done = card["training"].get("steps_done", card["training"].get("epochs_done"))
        assert done == model["steps"] >= 1
        if model["stage"] == "gate":
            percentiles = model["evaluation"]["held_out"] | model["evaluation"]["lesion_cohort"]
            assert set(percentiles) == {*summary["cohort"]["held_out"], "patient19"}
            assert all(0 <= p <= 100 for p in percentiles.values())
            continue
        assert card["calibration"]["healthy_scans"] == summary["cohort"]["held_out"]
        assert card["gate"] == "../../gate/best"
        sets = model["evaluation"]["sets"]
        assert set(sets) == {"synthetic outliers", "implanted lesions", "lesion cohort"}
        for figures in sets.values():
            assert figures["failed"] == 0
            assert 0 < figures["pixel_ap"] <= 1
            assert 0 <= figures["dice_at_threshold"] <= 1


def test_the_suites_stages_share_a_budget_and_are_calibrated_and_evaluated(
    cohort, tmp_path, monkeypatch
):
    """The zoo's mechanics with tiny networks trained from scratch, on a budget clock that
    runs ahead of the wall's: each stage trains on its share of the budget, each map model is
    calibrated on the held-out scan and evaluated on every labelled set, and the summary says
    so. (The full-size suite on the real clock, packed, predicted with and resumed, is the
    slow test below; each family's resume under a budget is in test_training_spine.)"""
    from helpers import TickingClock
    from napari_medood.training import spine

    monkeypatch.setattr(spine, "budget_clock", TickingClock(tick=3.0))
    out = tmp_path / "zoo"
    assert zoo(cohort, out, 60, "--from-scratch", networks=TINY_NETWORKS) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [m["stage"] for m in summary["models"]] == list(STAGES)
    assert summary["cohort"]["masks"] == "parcellations"
    shares = [m["budget_s"] for m in summary["models"]]
    assert all(share > 0 for share in shares) and sum(shares) <= 60
    assert shares[0] == max(shares)  # the U-Net, the default's member, has the largest share
    check_every_model_trained_calibrated_and_evaluated(out, summary)


@pytest.mark.slow
def test_the_whole_suite_in_one_budget_packs_predicts_and_resumes(cohort, tmp_path, capsys):
    from napari_medood.cli import predict_main

    out = tmp_path / "zoo"
    assert zoo(cohort, out, 90, "--pack") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [m["stage"] for m in summary["models"]] == list(STAGES)
    assert summary["cohort"]["masks"] == "parcellations"
    assert len(summary["cohort"]["train"]) == len(summary["cohort"]["held_out"]) == 1
    check_every_model_trained_calibrated_and_evaluated(out, summary)
    # the synthetic lesions set: every lesioned copy of the held-out scan has a lesion
    with open(out / "data" / "valset-lesions" / "cases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2  # its own contrast and one random contrast
    from napari_medood.io import read_volume

    for row in rows:  # paths relative to the table: the run folder may be moved
        assert read_volume(out / "data" / "valset-lesions" / row["Label"]).data.sum() > 0

    # the pack: at most 8 files of at most 16 MiB, restoring the checkpoints bit for bit
    packed = sorted((out / "pack").iterdir())
    assert 2 <= len(packed) <= 8
    assert all(p.stat().st_size <= 16 * 2**20 for p in packed)
    parts = [p for p in packed if ".part" in p.name]
    joined = b"".join(p.read_bytes() for p in parts)
    with tarfile.open(fileobj=io.BytesIO(joined), mode="r:gz") as tar:
        restored = tmp_path / "restored"
        tar.extractall(restored, filter="data")
    for stage in STAGES:
        weights = restored / stage / "best" / "model.safetensors"
        assert sha256(weights) == sha256(out / stage / "best" / "model.safetensors")
    assert (restored / "unet" / "train_log.csv").is_file()

    # every checkpoint loads through medood-predict from where the pack put it, the map
    # models with their gate beside them
    scan = Path(summary["cohort"]["held_out"][0])
    held = next(p for p in (cohort / "ixi").iterdir() if p.name.startswith(scan.name))
    for stage in STAGES:
        maps = tmp_path / f"maps-{stage}"
        task = ["--task", "sample"] if stage == "gate" else []
        assert (
            predict_main(
                ["--model", str(restored / stage / "best"), "--device", "cpu", *task]
                + [str(held), str(maps)]
            )
            == 0
        ), capsys.readouterr().err
        written = sorted(p.name for p in maps.rglob("*") if p.is_file())
        if stage == "gate":
            assert any(name.endswith(".txt") for name in written), written
            continue
        assert any(name.endswith(".trust.json") for name in written), written
        map_file = next(p for p in maps.rglob("*.nii.gz"))
        assert np.isfinite(read_volume(map_file).data).all()

    # a second run with more budget goes on from where the first stopped
    first_steps = {m["stage"]: m["steps"] for m in summary["models"]}
    unet_log = logged_steps(out / "unet" / "train_log.csv")
    assert zoo(cohort, out, 150) == 0
    again = json.loads((out / "summary.json").read_text())
    steps = {m["stage"]: m["steps"] for m in again["models"]}
    assert steps["unet"] > first_steps["unet"]
    assert steps["diffusion"] > first_steps["diffusion"]
    resumed_log = logged_steps(out / "unet" / "train_log.csv")
    assert resumed_log[: len(unet_log)] == unet_log  # continued, not restarted
    assert resumed_log == sorted(set(resumed_log))
    assert [s["budget_s"] for s in again["sessions"]] == [90, 150]
    # the run folder holds one split: another is refused before anything is trained
    assert zoo(cohort, out, 150, "--seed", "1") == 2
    assert "another cohort or split (it differs in: " in capsys.readouterr().err


def test_zoo_refuses_what_it_cannot_train_from(cohort, tmp_path, capsys, monkeypatch):
    from napari_medood.cli import train_main

    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(next((cohort / "ixi").iterdir()), one)
    masks = str(shared("ixi-t1-2mm", "dlmuse"))
    assert train_main(["zoo", "--mask", masks, str(one), str(tmp_path / "o1")]) == 2
    assert "healthy scans of at least 2 subjects" in capsys.readouterr().err
    assert train_main(["zoo", str(cohort / "ixi"), str(tmp_path / "o2")]) == 2
    assert "brain mask or parcellation" in capsys.readouterr().err
    assert (
        train_main(
            ["zoo", "--mask", masks, "--set", "unet=3", str(cohort / "ixi"), str(tmp_path / "o3")]
        )
        == 2
    )
    assert "stage.key=value" in capsys.readouterr().err
    assert train_main(["zoo", "--budget", "0", str(cohort / "ixi"), str(tmp_path / "o4")]) == 2
    assert "--budget must be a positive" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert train_main(["zoo", "--mask", masks, str(cohort / "ixi"), str(tmp_path / "o5")]) == 2
    assert "runs as one process" in capsys.readouterr().err


def test_sessions_of_one_subject_stay_on_one_side_of_the_split():
    from napari_medood.io.cohort import Case
    from napari_medood.training.zoo import split_cohort, subject_of

    cases = [
        Case(f"sub-{s}_ses-{t}_T1w", Path(f"/d/sub-{s}/ses-{t}/anat/sub-{s}_ses-{t}_T1w.nii.gz"))
        for s in ("01", "02", "03", "04", "05")
        for t in (1, 2)
    ]
    assert subject_of(cases[0]) == subject_of(cases[1]) == "sub-01"
    assert subject_of(Case("scan", Path("/d/scan.nii.gz"), info={"Subject": "p7"})) == "p7"
    for seed in range(5):
        train, held = split_cohort(cases, 0.2, seed)
        assert len(held) == 2 and len(train) == 8
        assert {subject_of(c) for c in held}.isdisjoint(subject_of(c) for c in train)
    assert split_cohort(cases, 0.2, 3) == split_cohort(cases, 0.2, 3)
