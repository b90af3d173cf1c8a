"""Hostile inputs to predict, compare and eval: what is wrong is never reported as success.

Each test feeds one hostile input and asserts the exit status, the one line that names the
problem, and that no file of the user's changed (md5 before and after). Reading hostile
files (DICOM gaps, headers without voxel sizes, ...) is covered in test_hostile_inputs_io.py,
training and synth in test_hostile_inputs_training.py; docs/reliability.md lists them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medood.cli import compare_main, eval_main, predict_main

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_medood" / "samples"
SCAN = SAMPLE / "ixi048_t1_2mm.nii.gz"
BRAIN = SAMPLE / "ixi048_brainmask_2mm.nii.gz"


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line or "failed:" in line]
    assert lines, err
    assert "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory) -> Path:
    """brain-t1-unet with one decoder weight set to NaN and its card's sha256 rewritten to
    match: weights that load, and a card that vouches for them."""
    import torch
    from safetensors.torch import load_file, save_file

    from napari_medood.io.atomic import file_sha256
    from napari_medood.models.checkpoint import resolve_model

    folder = tmp_path_factory.mktemp("broken") / "nan-unet"
    shutil.copytree(resolve_model("brain-t1-unet"), folder)
    state = load_file(folder / "model.safetensors")
    key = next(k for k in state if k.startswith("decoder") and k.endswith("weight"))
    state[key][0] = torch.full_like(state[key][0], float("nan"))
    save_file(state, folder / "model.safetensors")
    card = json.loads((folder / "card.json").read_text())
    card["weights"]["sha256"] = file_sha256(folder / "model.safetensors")
    (folder / "card.json").write_text(json.dumps(card))
    return folder


@pytest.mark.parametrize("task", ["pixel", "sample"])
def test_a_model_with_nan_weights_fails_the_case_and_writes_nothing(
    broken_model, tmp_path, capsys, task
):
    before = md5(SCAN)
    out = tmp_path / "out"
    args = ["--model", str(broken_model), "--no-gate", "--task", task, str(SCAN), str(out)]
    assert predict_main(args) == 2
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert "failed: ixi048_t1_2mm: the brain-t1-unet model's output is unusable" in line
    assert "NaN or infinite" in line
    assert "0 written, 0 skipped, 1 failed: ixi048_t1_2mm" in err
    assert not out.exists(), "a run that wrote nothing leaves no empty folder"
    assert md5(SCAN) == before


def test_compare_refuses_a_model_with_nan_weights(broken_model, tmp_path, capsys):
    args = ["--models", f"intensity,{broken_model}", "--no-gate", "--out", str(tmp_path / "c")]
    assert compare_main([*args, str(SCAN)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "the brain-t1-unet model's output is unusable" in line
    assert not (tmp_path / "c").exists()


def test_a_map_that_would_not_pass_a_resume_is_never_written(tmp_path):
    """The writer checks with the resume's rules, whatever detector made the map."""
    from napari_medood.batch import predict_cases
    from napari_medood.detectors import AnomalyResult, ScoreInfo
    from napari_medood.io.cohort import Case
    from napari_medood.io.volume import Volume

    class Raw:  # no BaseDetector preamble: only the writer stands between it and the file
        name, outputs, score_info = "raw", ("map", "score"), ScoreInfo("none")

        def __init__(self, values):
            self.values = values

        def predict(self, volume, mask=None, progress=None, cancelled=None):
            values = np.full(volume.data.shape, self.values, np.float32)
            values[0, 0, 0] = 0.5
            return AnomalyResult(Volume(values, volume.affine, volume.source), float("nan"))

    case = [Case("ixi048_t1_2mm", SCAN)]
    for value, problem in ((np.nan, "NaN or infinite values"), (3.0, "outside [0, 1]")):
        summary = predict_cases(case, Raw(value), tmp_path / "maps", "pixel")
        assert summary.written == [] and len(summary.failed) == 1
        assert "ixi048_t1_2mm.nii.gz not written: the map holds" in summary.failed[0][1]
        assert problem in summary.failed[0][1]
    summary = predict_cases(case, Raw(0.1), tmp_path / "scores", "sample")
    assert summary.failed == [
        ("ixi048_t1_2mm", "ixi048_t1_2mm.nii.gz.txt not written: the score is nan")
    ]
    assert not list((tmp_path / "maps").glob("*.nii.gz"))
    assert not list((tmp_path / "scores").glob("*.txt"))


def _scans_and_masks(tmp_path: Path) -> tuple[Path, Path]:
    scans, masks = tmp_path / "scans", tmp_path / "masks"
    scans.mkdir()
    masks.mkdir()
    shutil.copy(SCAN, scans / "a.nii.gz")
    shutil.copy(BRAIN, masks / "a.nii.gz")  # a binary brain mask named like the scan
    return scans, masks


def test_the_mask_folder_as_output_is_refused(tmp_path, capsys):
    scans, masks = _scans_and_masks(tmp_path)
    before = md5(masks / "a.nii.gz")
    assert predict_main(["--model", "intensity", "--mask", str(masks), str(scans), str(masks)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{masks}: the OUTPUT folder holds this run's masks" in line
    assert md5(masks / "a.nii.gz") == before and sorted(p.name for p in masks.iterdir()) == [
        "a.nii.gz"
    ]


def test_the_scan_folder_as_output_is_refused_even_without_a_name_clash(tmp_path, capsys):
    import SimpleITK as sitk

    scans = tmp_path / "scans"
    scans.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(SCAN)), str(scans / "a.nrrd"))  # its map: a.nii.gz
    before = md5(scans / "a.nrrd")
    assert predict_main(["--model", "intensity", str(scans), str(scans)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "a.nrrd: the OUTPUT folder holds this scan" in line
    assert md5(scans / "a.nrrd") == before and [p.name for p in scans.iterdir()] == ["a.nrrd"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_no_run_wrote_is_neither_skipped_as_done_nor_overwritten(
    tmp_path, capsys, overwrite
):
    """A brain mask named like the scan in OUTPUT once passed for a finished map (it loads,
    fits and lies in [0, 1]); a parcellation was overwritten as "a map to redo"."""
    scans, masks = _scans_and_masks(tmp_path)
    shutil.copy(SCAN, scans / "b.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(BRAIN, out / "a.nii.gz")
    labels = nib.load(BRAIN)
    parcellation = (np.asanyarray(labels.dataobj) > 0).astype(np.int16) * 47
    nib.save(nib.Nifti1Image(parcellation, labels.affine), out / "b.nii.gz")
    before = {name: md5(out / name) for name in ("a.nii.gz", "b.nii.gz")}
    args = ["--model", "intensity", *(["--overwrite"] if overwrite else []), str(scans), str(out)]
    assert predict_main(args) == 2
    err = capsys.readouterr().err
    for name in ("a", "b"):
        assert (
            f"failed: {name}: {out / name}.nii.gz: this file was not written by napari-medood"
            in err
        )
    assert "0 written, 0 skipped, 2 failed: a, b" in err
    assert {name: md5(out / name) for name in before} == before


def test_a_resume_redoes_only_what_a_run_wrote_and_cleans_every_cases_stale_parts(tmp_path, capsys):
    scans, _ = _scans_and_masks(tmp_path)
    out = tmp_path / "out"
    assert predict_main(["--model", "intensity", str(scans), str(out)]) == 0
    assert (out / ".medood" / "a.nii.gz.written.json").is_file()
    # a SIGKILL during --overwrite leaves a hidden part beside the finished map
    stale = out / ".a.nii.gz.k1ll3d.part.nii.gz"
    stale.write_bytes(b"half a map")
    capsys.readouterr()
    assert predict_main(["--model", "intensity", str(scans), str(out)]) == 0
    assert "0 written, 1 skipped, 0 failed" in capsys.readouterr().err
    assert not stale.exists()
    # a map the run wrote and that was damaged since is redone (its record says it is ours)
    (out / "a.nii.gz").write_bytes(b"")
    assert predict_main(["--model", "intensity", str(scans), str(out)]) == 0
    assert "redoing a: its output a.nii.gz empty file" in capsys.readouterr().err


def test_a_case_another_live_process_claimed_is_left_to_it(tmp_path, capsys):
    """Two processes on one OUTPUT: each case is claimed once; the other's part files stay."""
    import socket

    from napari_medood.io.mood import record_path

    scans, _ = _scans_and_masks(tmp_path)
    shutil.copy(SCAN, scans / "b.nii.gz")
    out = tmp_path / "out"
    (out / ".medood").mkdir(parents=True)
    other = os.getppid()  # a live process that is not this one
    claim = record_path(out / "a.nii.gz", "claim")
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": other}))
    its_part = out / ".a.nii.gz.x1y2.part.nii.gz"
    its_part.write_bytes(b"being written")
    # the run is not complete while the other process has not finished a: exit 2
    assert predict_main(["--model", "intensity", str(scans), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"not done: a: process {other} on {socket.gethostname()} is computing it" in err
    assert "1 written, 0 skipped, 0 failed, 1 left to other processes" in err
    assert its_part.exists() and not (out / "a.nii.gz").exists()
    # the same claim by a process that has ended (a killed run) is taken over
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 12345}))
    assert predict_main(["--model", "intensity", str(scans), str(out)]) == 0
    assert "1 written, 1 skipped, 0 failed" in capsys.readouterr().err
    assert (out / "a.nii.gz").is_file() and not claim.exists() and not its_part.exists()
    # a live pid whose process started after the claim was made: the pid was reused
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": other, "started": 1.0}))
    assert predict_main(["--overwrite", "--model", "intensity", str(scans), str(out)]) == 0
    assert "2 written, 0 skipped, 0 failed" in capsys.readouterr().err


def test_a_case_another_run_finished_meanwhile_is_not_computed_again(tmp_path):
    """Run B claims a case only after run A wrote it: B checks again and skips it."""
    from napari_medood.batch import predict_cases
    from napari_medood.detectors import get_detector
    from napari_medood.io.cohort import Case

    scans, _ = _scans_and_masks(tmp_path)
    case = Case("a", scans / "a.nii.gz")
    detector = get_detector("intensity")
    out = tmp_path / "out"
    first = predict_cases([case], detector, out, "pixel")
    assert first.written == ["a"]
    computed = []

    class Counting:
        name, outputs, score_info = detector.name, detector.outputs, detector.score_info

        def predict(self, *args, **kwargs):
            computed.append(1)
            return detector.predict(*args, **kwargs)

    second = predict_cases([case], Counting(), out, "pixel")
    assert second.skipped == ["a"] and second.written == [] and computed == []
    third = predict_cases([case], Counting(), out, "pixel", overwrite=True)
    assert third.written == ["a"] and computed == [1]


def test_a_mask_copied_over_a_recorded_map_is_not_taken_for_it(tmp_path, capsys):
    """The record proves a run wrote the file only while the file is the one recorded."""
    scans, _ = _scans_and_masks(tmp_path)
    out = tmp_path / "out"
    assert predict_main(["--model", "intensity", str(scans), str(out)]) == 0
    (out / "a.nii.gz").unlink()  # the record in .medood stays
    shutil.copy(BRAIN, out / "a.nii.gz")  # a 0/1 mask: it loads, fits and lies in [0, 1]
    before = md5(out / "a.nii.gz")
    capsys.readouterr()
    for extra in ([], ["--overwrite"]):
        assert predict_main([*extra, "--model", "intensity", str(scans), str(out)]) == 2
        assert "this file was not written by napari-medood" in capsys.readouterr().err
    assert md5(out / "a.nii.gz") == before


def test_a_lesion_map_as_mask_is_noted_for_a_baseline(tmp_path, capsys):
    labels = nib.load(BRAIN)
    lesion = np.zeros(labels.shape, np.uint8)
    lesion[40:45, 50:55, 30:35] = 1  # 125 voxels: a lesion label, not a brain
    nib.save(nib.Nifti1Image(lesion, labels.affine), tmp_path / "lesion.nii.gz")
    before = md5(tmp_path / "lesion.nii.gz")
    args = ["--model", "intensity", "--mask", str(tmp_path / "lesion.nii.gz")]
    assert predict_main([*args, str(SCAN), str(tmp_path / "out")]) == 0
    assert md5(tmp_path / "lesion.nii.gz") == before
    err = capsys.readouterr().err
    assert "note: ixi048_t1_2mm: the mask holds only 1.0 ml (125 voxels)" in err
    assert "is it a lesion or label map rather than a brain mask?" in err


def test_a_missing_device_is_an_error_for_baselines_as_for_networks(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for model in ("intensity", "brain-t1-unet"):
        out = tmp_path / model
        assert predict_main(["--device", "cuda", "--model", model, str(SCAN), str(out)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "device 'cuda' was asked for but torch sees no CUDA GPU" in line
        assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-parts", "0", "--part-id", "0"], "--num-parts must be at least 1, got 0"),
        (["--part-id", "3", "--num-parts", "2"], "--part-id must be within 0..1, got 3"),
        (["--model", "brain-t1-unet,nope"], "unknown ensemble member (a shipped model or"),
        (["--model", "brain-t1-unet,intensity"], "intensity is a baseline and cannot be part"),
    ],
)
def test_predict_argument_errors_are_one_line_and_leave_no_folder(args, message, tmp_path, capsys):
    before = md5(SCAN)
    out = tmp_path / "out"
    assert predict_main([*args, str(SCAN), str(out)]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not out.exists() and md5(SCAN) == before


def test_a_card_without_sha256_is_named(tmp_path, capsys):
    from napari_medood.models.checkpoint import resolve_model

    folder = tmp_path / "no-sha"
    shutil.copytree(resolve_model("brain-t1-seg"), folder)
    card = json.loads((folder / "card.json").read_text())
    del card["weights"]["sha256"]
    (folder / "card.json").write_text(json.dumps(card))
    assert predict_main(["--model", str(folder), str(SCAN), str(tmp_path / "out")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{folder / 'card.json'}: the card gives no sha256 of its weights" in line
    assert "mismatch" not in line


@pytest.fixture
def labelled_csv(tmp_path) -> Path:
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a", "b"):
        shutil.copy(SCAN, scans / f"{name}.nii.gz")
    return scans


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("Path,Site", ["scans/a.nii.gz,1", "scans/b.nii.gz,2"], "no Label or Anomalous column"),
        (
            "Path,Anomalous",
            ["scans/a.nii.gz,1", "scans/b.nii.gz,maybe"],
            "line 3: Anomalous is 'maybe'",
        ),
    ],
)
def test_eval_refuses_a_labels_csv_it_cannot_read(
    labelled_csv, tmp_path, capsys, header, rows, message
):
    table = _write_csv(tmp_path / "labels.csv", header, rows)
    before = md5(table)
    predictions = tmp_path / "predictions"
    assert (
        predict_main(
            ["--model", "intensity", "--task", "sample", str(labelled_csv), str(predictions)]
        )
        == 0
    )
    capsys.readouterr()
    report = tmp_path / "report"
    assert eval_main([str(predictions), str(table), "-o", str(report)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{table}: " in line and message in line
    assert not report.exists() and md5(table) == before


def test_eval_fails_when_every_prediction_is_unusable(labelled_csv, tmp_path, capsys):
    table = _write_csv(
        tmp_path / "labels.csv", "Path,Anomalous", ["scans/a.nii.gz,1", "scans/b.nii.gz,0"]
    )
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for name in ("a", "b"):
        (predictions / f"{name}.nii.gz.txt").write_text("oops\n")
    before = {p.name: md5(p) for p in predictions.iterdir()}
    assert (
        eval_main(["--bootstrap", "0", str(predictions), str(table), "-o", str(tmp_path / "r")])
        == 2
    )
    err = capsys.readouterr().err
    assert f"error: no case had a usable prediction in {predictions}" in err
    assert {p.name: md5(p) for p in predictions.iterdir()} == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bootstrap", "-1"], "--bootstrap takes a number of resamples, 0 or more; got -1"),
        (["--fprs", "abc"], "--fprs takes false-positive rates between 0 and 1"),
        (["--fprs", "0.01,5"], "got '0.01,5'"),
    ],
)
def test_eval_argument_errors_are_one_line_and_leave_no_folder(
    labelled_csv, tmp_path, capsys, args, message
):
    table = _write_csv(tmp_path / "labels.csv", "Path,Anomalous", ["scans/a.nii.gz,1"])
    before = md5(table)
    report = tmp_path / "report"
    assert eval_main([*args, str(tmp_path), str(table), "-o", str(report)]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not report.exists() and md5(table) == before


def test_synth_refuses_a_negative_edge_width(tmp_path, capsys):
    from napari_medood.cli import synth_main

    out = tmp_path / "set"
    assert synth_main(["--edge-width", "-3", str(SCAN), str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--edge-width takes a width in voxels above 0, got -3" in line
    assert not out.exists()


def test_sample_labels_written_as_numbers_by_a_spreadsheet_are_read(labelled_csv, tmp_path):
    from napari_medood.io.cohort import discover_labels

    table = _write_csv(
        tmp_path / "labels.csv", "Path,Anomalous", ["scans/a.nii.gz,1.0", "scans/b.nii.gz,0.0"]
    )
    assert [case.anomalous for case in discover_labels(table)] == [True, False]
