"""The console scripts: real runs on real scans, batches with a bad case, clear errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import sha256
from napari_medood.cli import predict_main, train_main

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_medood" / "samples"


def script(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    assert path.exists(), f"console script {name} is not installed"
    return str(path)


def test_predict_pixel_on_the_bundled_sample(tmp_path, capsys):
    """The intensity baseline: the map is the normalised scan inside the brain."""
    scan = SAMPLE / "ixi048_t1_2mm.nii.gz"
    before = sha256(scan)
    code = predict_main(
        [
            "--model",
            "intensity",
            "--mask",
            str(SAMPLE / "ixi048_brainmask_2mm.nii.gz"),
            str(scan),
            str(tmp_path),
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = tmp_path / scan.name  # MOOD: the map carries the input's name
    result, source = nib.load(out), nib.load(scan)
    np.testing.assert_array_equal(result.affine, source.affine)
    assert result.shape == source.shape
    values = result.get_fdata()
    assert values.min() >= 0 and values.max() <= 1
    brain = np.asanyarray(nib.load(SAMPLE / "ixi048_brainmask_2mm.nii.gz").dataobj) > 0
    assert np.all(values[~brain] == 0) and values[brain].max() == 1
    assert sha256(scan) == before


# the trust gate's verdicts need a gated model, and only the full-size shipped ones have a gate
@pytest.mark.slow
def test_predict_sample_scores_for_a_folder(ixi_t1, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        shutil.copy(ixi_t1, scans / name)
    out = tmp_path / "scores"
    assert predict_main(["--task", "sample", str(scans), str(out)]) == 0
    scores = {p.name: float(p.read_text()) for p in out.glob("*.txt")}
    assert set(scores) == {"a.nii.gz.txt", "b.nii.gz.txt"}
    # beside each score, the trust gate's verdict (a whole head without its brain mask is
    # unlike the masked training brains, and the gate says so)
    verdicts = sorted(p.name for p in out.glob("*.trust.json"))
    assert verdicts == ["a.nii.gz.trust.json", "b.nii.gz.trust.json"]
    assert all(0.0 < s < 1.0 for s in scores.values())
    assert scores["a.nii.gz.txt"] == scores["b.nii.gz.txt"]  # the same scan, the same score


def test_one_bad_case_does_not_sink_the_batch(ixi_t1, tmp_path, capsys, tiny_unet):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(ixi_t1, scans / "good1.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"not a scan")
    shutil.copy(ixi_t1, scans / "good2.nii.gz")
    out = tmp_path / "maps"
    model = ["--model", str(tiny_unet)]  # a real U-Net, small: the batch is what is tested
    code = predict_main([*model, str(scans), str(out)])
    err = capsys.readouterr().err
    assert code == 2
    maps = sorted(
        p.name for p in out.iterdir() if not p.name.endswith(".trust.json") and p.name[0] != "."
    )
    assert maps == ["good1.nii.gz", "good2.nii.gz"]
    assert f"failed: broken: {scans / 'broken.nii.gz'}: not a readable NIfTI" in err
    assert "2 written, 0 skipped, 1 failed" in err
    assert "Traceback" not in err
    # a second run skips what is done and only retries the broken case
    code = predict_main([*model, str(scans), str(out)])
    assert code == 2
    assert "2 of 3 cases already have outputs" in capsys.readouterr().err


def test_masks_are_matched_by_name_in_a_folder(ixi_t1, ixi_parcellation, tmp_path, tiny_unet):
    scans, masks, out = tmp_path / "scans", tmp_path / "masks", tmp_path / "out"
    scans.mkdir(), masks.mkdir()
    shutil.copy(ixi_t1, scans / ixi_t1.name)
    shutil.copy(ixi_parcellation, masks / ixi_parcellation.name)  # <scan name>_DLMUSE.nii.gz
    argv = ["--model", str(tiny_unet), "--mask", str(masks), str(scans), str(out)]
    assert predict_main(argv) == 0
    values = nib.load(out / ixi_t1.name).get_fdata()
    brain = np.asanyarray(nib.load(ixi_parcellation).dataobj) > 0
    assert np.all(values[~brain] == 0)


def test_predict_refuses_to_overwrite_its_input(ixi_t1, tmp_path, capsys):
    shutil.copy(ixi_t1, tmp_path / "scan.nii.gz")
    before = sha256(tmp_path / "scan.nii.gz")
    assert predict_main(["--overwrite", str(tmp_path), str(tmp_path)]) == 2
    assert "would overwrite this input" in capsys.readouterr().err
    assert sha256(tmp_path / "scan.nii.gz") == before


def test_mask_on_another_grid_is_reported_per_case(ixi_t1, ms_lesions, tmp_path, capsys):
    code = predict_main(["--mask", str(ms_lesions), str(ixi_t1), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{ms_lesions}: is on another voxel grid" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.nii.gz", "out"], "missing.nii.gz: no such file or folder"),
        (
            ["--model", "unet3000", "x", "out"],
            "unknown detector (or checkpoint path) 'unet3000'; valid choices:",
        ),
        ([], "give an INPUT scan or folder and an OUTPUT folder"),
    ],
)
def test_errors_are_one_line_and_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert predict_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    run = subprocess.run(
        [script("medood-predict"), "--debug", str(tmp_path / "no.nii"), "out"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert "Traceback" in run.stderr and "VolumeNotFoundError" in run.stderr


@pytest.mark.parametrize("name", ["medood-train", "medood-predict", "medood-eval", "medood-synth"])
def test_console_scripts_have_help(name):
    run = subprocess.run(
        [script(name), "--help"], capture_output=True, text=True, encoding="utf-8", errors="replace"
    )
    assert run.returncode == 0
    assert f"usage: {name}" in run.stdout and "--debug" in run.stdout
    assert len(run.stdout.splitlines()) >= 8


def test_list_models(capsys):
    assert predict_main(["--list-models"]) == 0
    out = capsys.readouterr().out
    assert (
        "brain-any (default):" in out and "brain-any-unet-gpu:" in out and "brain-t1-unet:" in out
    )
    assert "inverted-intensity:" in out


def test_train_needs_a_method(capsys):
    assert train_main([]) == 2
    assert "give the method to train: unet" in capsys.readouterr().err


def test_one_mask_file_for_several_scans_is_refused(ixi_t1, ixi_parcellation, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        shutil.copy(ixi_t1, scans / name)
    assert predict_main(["--mask", str(ixi_parcellation), str(scans), str(tmp_path / "o")]) == 2
    assert "one mask file for 2 scans" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_resumed_run_redoes_outputs_that_do_not_load(ixi_t1, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz"):
        shutil.copy(ixi_t1, scans / name)
    out = tmp_path / "maps"
    assert predict_main(["--model", "intensity", str(scans), str(out)]) == 0
    good = (out / "c.nii.gz").read_bytes()
    (out / "a.nii.gz").write_bytes(b"")  # zero bytes
    (out / "b.nii.gz").write_bytes(good[: len(good) // 3])  # truncated
    # an image that loads, put over a map the run wrote: someone's file now, never redone
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)), out / "d.nii.gz")
    replaced = (out / "d.nii.gz").read_bytes()
    capsys.readouterr()
    assert predict_main(["--model", "intensity", str(scans), str(out)]) == 2
    err = capsys.readouterr().err
    assert "redoing a: its output a.nii.gz empty file" in err
    assert "redoing b: its output b.nii.gz does not load" in err
    assert f"failed: d: {out / 'd.nii.gz'}: this file was not written by napari-medood" in err
    assert "2 written, 1 skipped, 1 failed: d" in err
    for name in ("a", "b"):
        assert (out / f"{name}.nii.gz").read_bytes() == good
    assert (out / "d.nii.gz").read_bytes() == replaced
    # sample scores: an empty or unreadable score file is redone too
    scores = tmp_path / "scores"
    assert predict_main(["--model", "intensity", "--task", "sample", str(scans), str(scores)]) == 0
    (scores / "a.nii.gz.txt").write_text("")
    (scores / "b.nii.gz.txt").write_text("oops\n")
    capsys.readouterr()
    assert predict_main(["--model", "intensity", "--task", "sample", str(scans), str(scores)]) == 0
    assert "2 written, 2 skipped, 0 failed" in capsys.readouterr().err
    assert float((scores / "b.nii.gz.txt").read_text()) == float(
        (scores / "c.nii.gz.txt").read_text()
    )


def test_an_unwritable_output_folder_is_named_before_any_case(ixi_t1, tmp_path, capsys):
    import toy_family

    toy_family.register()
    try:
        toy_family.write_checkpoint(tmp_path / "toy")
        toy_family.ToyScoreDetector.runs = 0
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        out = blocker / "scores"
        code = predict_main(
            ["--task", "sample", "--model", str(tmp_path / "toy"), str(ixi_t1), str(out)]
        )
        assert code == 2
        assert f"{out}: cannot write into this output folder" in capsys.readouterr().err
        assert toy_family.ToyScoreDetector.runs == 0
    finally:
        toy_family.unregister()


def test_scan_notes_are_printed_per_case(ms_t1, tmp_path, capsys, tiny_unet):
    flair = ms_t1.parent / ms_t1.name.replace("T1_", "FLAIR_")
    # the tiny U-Net's card expects T1w, as brain-t1-unet's does, and names it tiny-unet
    assert (
        predict_main(["--model", str(tiny_unet), "--device", "cpu", str(flair), str(tmp_path)]) == 0
    )
    err = capsys.readouterr().err
    case = flair.name.removesuffix(".nii.gz")
    assert f"note: {case}: the name or header says FLAIR; tiny-unet was trained on T1w" in err
