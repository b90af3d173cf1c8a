"""One detector interface: families named by cards, dispatched through one registry; what a
detector declares (map, score, what the score means); the predict preamble written once."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import toy_family
from napari_medood.cli import eval_main, predict_main, synth_main, train_main
from napari_medood.detectors import DetectorOptions, get_detector
from napari_medood.errors import MedoodError, VolumeError
from napari_medood.io import Volume, read_volume
from napari_medood.models.checkpoint import Checkpoint, CheckpointError

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_medood" / "samples"
SCAN = SAMPLE / "ixi048_t1_2mm.nii.gz"
BRAIN = SAMPLE / "ixi048_brainmask_2mm.nii.gz"


@pytest.fixture
def toy(tmp_path):
    toy_family.register()
    folder = tmp_path / "toy"
    toy_family.write_checkpoint(folder)
    toy_family.ToyScoreDetector.runs = 0
    yield folder
    toy_family.unregister()


# ---------------------------------------------------------------- a family with a score only
def test_a_score_only_family_runs_through_predict_by_its_card(toy, tmp_path, capsys):
    detector = get_detector(str(toy))
    assert isinstance(detector, toy_family.ToyScoreDetector)
    assert detector.outputs == ("score",)
    result = detector.predict(read_volume(SCAN), read_volume(BRAIN).data > 0)
    assert result.anomaly_map is None and 0 <= result.score < 1
    out = tmp_path / "scores"
    assert (
        predict_main(
            ["--task", "sample", "--model", str(toy), "--mask", str(BRAIN), str(SCAN), str(out)]
        )
        == 0
    )
    score = float((out / f"{SCAN.name}.txt").read_text())
    assert score == pytest.approx(result.score, abs=1e-6)


def test_pixel_task_refuses_a_score_only_family_before_any_case(toy, tmp_path, capsys):
    out = tmp_path / "maps"
    code = predict_main(["--task", "pixel", "--model", str(toy), str(SCAN), str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "gives a score only, not the map that --task pixel writes; use --task sample" in err
    assert toy_family.ToyScoreDetector.runs == 0  # refused before any case ran
    assert not out.exists()


def test_a_score_only_family_is_evaluated_by_medood_eval(toy, tmp_path, capsys):
    valset = tmp_path / "valset"
    assert (
        synth_main(["--kinds", "uniform_noise,shift", "--mask", str(BRAIN), str(SCAN), str(valset)])
        == 0
    )
    report = tmp_path / "report"
    code = eval_main(["--model", str(toy), str(valset), "-o", str(report)])
    err = capsys.readouterr().err
    assert code == 0, err
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["sample"]["cases"] == 3 and metrics["sample"]["auroc"] is not None
    assert "ap" not in metrics["pixel"]  # no maps, no voxel metrics, no special case
    assert sorted(p.name for p in (report / "predictions").iterdir()) == sorted(
        f"{p.name}.txt" for p in (valset / "pixel" / "data").iterdir()
    )
    assert toy_family.ToyScoreDetector.runs == 3


def test_an_unknown_family_in_a_card_names_the_card_and_the_known_families(tmp_path):
    toy_family.write_checkpoint(tmp_path / "ckpt")
    card = json.loads((tmp_path / "ckpt" / "card.json").read_text())
    (tmp_path / "ckpt" / "card.json").write_text(json.dumps({**card, "detector": "unet3dd"}))
    with pytest.raises(MedoodError) as caught:
        get_detector(str(tmp_path / "ckpt"))
    message = str(caught.value)
    assert str(tmp_path / "ckpt" / "card.json") in message
    assert "unknown detector family 'unet3dd'" in message and "'unet3d'" in message
    assert "Did you mean 'unet3d'?" in message


def test_an_unknown_architecture_is_refused_with_the_valid_ones(tmp_path):
    import torch

    from napari_medood.models.checkpoint import save_checkpoint

    card = {"name": "x", "detector": "unet3d", "architecture": {"type": "UNet2D"}}
    save_checkpoint({"w": torch.zeros(1)}, tmp_path / "x", card)
    with pytest.raises(
        CheckpointError, match=r"unknown architecture 'UNet2D'; valid choices: 'UNet3DDeepSup'"
    ):
        Checkpoint.open(tmp_path / "x").build_model()


def test_an_ensemble_of_two_families_is_refused(toy):
    with pytest.raises(MedoodError, match="an ensemble needs checkpoints of one family"):
        get_detector(f"brain-t1-unet,{toy}")


def test_cards_written_before_families_get_the_family_of_their_architecture(tmp_path):
    import shutil

    shutil.copytree(SAMPLE.parent / "bundled_models" / "brain-t1-unet", tmp_path / "old")
    card = json.loads((tmp_path / "old" / "card.json").read_text())
    del card["detector"]
    (tmp_path / "old" / "card.json").write_text(json.dumps(card))
    assert Checkpoint.open(tmp_path / "old").family == "unet3d"


def test_a_corrupt_safetensors_file_that_matches_its_card_names_the_file(tmp_path):
    import shutil

    from napari_medood.io.atomic import file_sha256

    shutil.copytree(SAMPLE.parent / "bundled_models" / "brain-t1-unet", tmp_path / "bad")
    weights = tmp_path / "bad" / "model.safetensors"
    weights.write_bytes(b"\xff" * 64)  # not safetensors at all
    card = json.loads((tmp_path / "bad" / "card.json").read_text())
    card["weights"]["sha256"] = file_sha256(weights)  # a card written for the damaged file
    (tmp_path / "bad" / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError) as caught:
        get_detector(str(tmp_path / "bad"), device="cpu")
    assert str(caught.value).startswith(f"{weights}: not a readable safetensors file")


# ------------------------------------------------------------------------------- training
def test_medood_train_finds_a_familys_trainer_through_the_registry(tmp_path, capsys):
    from dataclasses import dataclass

    from napari_medood.registry import Family, register_family, unregister_family
    from napari_medood.training.registry import Trainer, TrainResult

    @dataclass
    class ToyConfig:
        name: str = "toy"
        out: str = "runs/toy"
        steps: int = 3

        def validate(self):
            return self

    calls = []

    def run(config, progress=None, cancelled=None):
        calls.append(config)
        toy_family.write_checkpoint(Path(config.out) / "best")
        return TrainResult(Path(config.out) / "best", 0.5, "toy metric", config.steps, 0.1)

    register_family(
        Family(
            "toy-trained",
            "toy",
            toy_family.ToyScoreDetector.from_checkpoints,
            trainer=Trainer(ToyConfig, run, "a toy"),
            train_name="toy",
        ),
        replace=True,
    )
    try:
        assert train_main(["toy", "--set", "steps=2", "--out", str(tmp_path / "run")]) == 0
        assert calls[0].steps == 2
        assert "best validation toy metric 0.5000" in capsys.readouterr().err
        assert train_main(["tyo"]) == 2
        assert (
            "unknown method to train 'tyo'; valid choices: 'unet', 'seg', 'diffusion', 'classifier', 'flow', 'toy'"
            in capsys.readouterr().err
        )
    finally:
        unregister_family("toy-trained")


# ------------------------------------------------------------------------------- devices
def test_device_names_are_checked_in_one_place(tmp_path, capsys):
    from napari_medood.device import check_device_name, choose_device

    assert check_device_name("cuda:1") == "cuda:1" and check_device_name("CPU") == "cpu"
    with pytest.raises(
        MedoodError, match=r"unknown device 'gpu'; valid choices: auto, cpu, cuda, cuda:N, mps"
    ):
        check_device_name("gpu")
    with pytest.raises(SystemExit):
        predict_main(["--device", "gpu", str(SCAN), str(tmp_path)])
    assert "unknown device 'gpu'" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():
        with pytest.raises(MedoodError, match="'cuda:0' was asked for but torch sees no CUDA GPU"):
            choose_device("cuda:0")
        assert predict_main(["--device", "cuda:0", str(SCAN), str(tmp_path / "o")]) == 2
        assert "'cuda:0' was asked for" in capsys.readouterr().err


# --------------------------------------------------------------------- the shared preamble
def test_the_fpi_slice_score_runs_along_the_axial_axis_of_the_affine():
    from napari_medood.detectors.base import fpi_slice_score, sample_scores

    scan = read_volume(SCAN)  # stored PSR: axis 1 runs inferior-superior
    assert scan.axcodes == ("P", "S", "R")
    anomaly = np.zeros(scan.shape, np.float32)
    anomaly[:, 40:46, :] = 0.8  # six axial slices, fully abnormal
    scores = sample_scores(anomaly, scan.affine)
    assert scores["fpi_slices"] == pytest.approx(fpi_slice_score(anomaly, 1))
    assert scores["fpi_slices"] > 2 * fpi_slice_score(anomaly, 2)


def test_a_tiny_scan_is_refused_naming_its_file(tmp_path):
    path = tmp_path / "tiny.nii.gz"
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).random((5, 5, 5)).astype(np.float32), np.eye(4)),
        path,
    )
    with pytest.raises(
        VolumeError, match=r"tiny.nii.gz: has only 5x5x5 voxels; a detector needs at least 8"
    ):
        get_detector("intensity").predict(read_volume(path))


def test_a_constant_scan_is_refused_naming_its_file(tmp_path, capsys):
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 20), 7, np.float32), np.eye(4)), path)
    assert predict_main(["--model", "intensity", str(path), str(tmp_path / "out")]) == 2
    assert f"failed: flat: {path}: every voxel equals 7" in capsys.readouterr().err


def test_a_preprocessing_error_names_the_file():
    # an empty brain mask after resampling is a preprocessing problem of this file
    scan = read_volume(SCAN)
    dark = scan.with_data(np.where(read_volume(BRAIN).data > 0, 5.0, 0.0).astype(np.float32))
    with pytest.raises(VolumeError) as caught:
        get_detector("intensity").predict(dark, read_volume(BRAIN).data > 0)
    assert str(caught.value).startswith(str(SCAN))


def test_an_oblique_scan_gets_a_note(tmp_path):
    from helpers import rotation

    image = nib.load(SCAN)
    affine = image.affine.copy()
    affine[:3, :3] = rotation(0, 12) @ affine[:3, :3]
    path = tmp_path / "tilted.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine), path)
    result = get_detector("intensity").predict(read_volume(path), read_volume(BRAIN).data > 0)
    assert any("oblique (axes tilted by up to 12.0 degrees)" in note for note in result.notes)


# ------------------------------------------------------------------ is this scan like the card's
def test_a_t1_scan_with_its_brain_mask_matches_the_shipped_card():
    detector = get_detector("brain-t1-unet", DetectorOptions(device="cpu"))
    from napari_medood.detectors.compatibility import scan_notes

    scan, brain = read_volume(SCAN), read_volume(BRAIN).data > 0
    assert scan_notes(scan, brain, True, detector.card) == []


def test_a_flair_scan_is_flagged_by_name_and_by_its_tissue_contrast(tmp_path, ms_t1):
    from napari_medood.detectors.compatibility import scan_notes

    card = Checkpoint.open("brain-t1-unet").card
    flair = read_volume(ms_t1.parent / ms_t1.name.replace("T1_", "FLAIR_"))
    brain = flair.data > 0
    notes = scan_notes(flair, brain, True, card)
    assert any("says FLAIR; brain-t1-unet was trained on T1w scans" in n for n in notes)
    assert any("tissue contrast is unlike" in n for n in notes)
    # renamed, it is still caught by its contrast; the T1 of the same patient is not
    renamed = Volume(flair.data, flair.affine, tmp_path / "patient.nii.gz")
    assert ["tissue contrast" in n for n in scan_notes(renamed, brain, True, card)] == [True]
    t1 = read_volume(ms_t1)
    assert scan_notes(t1, t1.data > 0, True, card) == []


def test_a_whole_head_without_a_brain_mask_is_flagged():
    from napari_medood.detectors.compatibility import scan_notes
    from napari_medood.preprocessing.masks import mask_from_threshold

    scan = read_volume(SCAN)
    card = Checkpoint.open("brain-t1-unet").card
    notes = scan_notes(scan, mask_from_threshold(scan.data, "otsu"), False, card)
    assert len(notes) == 1 and "give a brain mask" in notes[0]


def test_coarse_voxels_a_partial_field_of_view_and_ct_are_noted(ct_scan):
    from napari_medood.detectors.compatibility import scan_notes

    card = Checkpoint.open("brain-t1-unet").card
    scan, brain = read_volume(SCAN), read_volume(BRAIN).data > 0
    # the same voxels said to be 5 mm apart along one axis
    affine = scan.affine.copy()
    affine[:3, 1] *= 2.5
    coarse = Volume(scan.data, affine, SCAN)
    notes = scan_notes(coarse, brain, True, card)
    assert any("voxels of 5 mm along S are coarser than the 2 mm" in n for n in notes), notes
    # a 20 mm slab of the brain is a partial field of view
    slab = np.zeros_like(brain)
    slab[:, 40:50, :] = brain[:, 40:50, :]
    notes = scan_notes(scan, slab, True, card)
    assert any("holds only" in n and "partial field of view" in n for n in notes), notes
    # a CT in Hounsfield units
    ct = read_volume(ct_scan)
    notes = scan_notes(ct, ct.data > -500, False, card)
    assert any("like CT Hounsfield units" in n for n in notes), notes


def test_a_card_without_its_preprocessing_is_named(tmp_path):
    import shutil

    shutil.copytree(SAMPLE.parent / "bundled_models" / "brain-t1-unet", tmp_path / "ckpt")
    card = json.loads((tmp_path / "ckpt" / "card.json").read_text())
    del card["preprocessing"]
    (tmp_path / "ckpt" / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"card.json: a unet3d card needs a 'preprocessing'"):
        get_detector(str(tmp_path / "ckpt"), device="cpu")
    card["architecture"] = "UNet3DDeepSup"
    (tmp_path / "ckpt" / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"the card's 'architecture' entry is not an object"):
        Checkpoint.open(tmp_path / "ckpt")


def test_a_detector_that_breaks_its_declaration_fails_its_case(tmp_path):
    """A detector that only follows the protocol and returns no map for --task pixel fails
    that case (it is not counted as written)."""
    from napari_medood.batch import predict_cases
    from napari_medood.detectors import AnomalyResult, ScoreInfo
    from napari_medood.io.cohort import Case

    class Forgetful:
        name = "forgetful"
        outputs = ("map", "score")
        score_info = ScoreInfo("nothing")

        def predict(self, volume, mask=None, progress=None, cancelled=None):
            return AnomalyResult(None, 0.5)

    summary = predict_cases([Case("scan", SCAN)], Forgetful(), tmp_path, "pixel")
    assert summary.written == [] and summary.failed == [
        ("scan", "the forgetful detector returned no map")
    ]
    assert not any(tmp_path.iterdir())


def test_roles_from_names():
    from napari_medood._napari._roles import role_from_name

    labels = {
        "IXI048 brain mask": "brain mask",
        "IXI048-HH-1326-T1_ds_DLMUSE": "brain mask",
        "aparc+aseg": "brain mask",  # a parcellation, not a lesion map
        "GOLD_STANDARD_N4_noneck": "ground truth",
        "sub-01_lesion_mask": "ground truth",
        "tumour_seg": "ground truth",
        "something": None,
    }
    for name, role in labels.items():
        assert role_from_name(name, is_labels=True) == role, name
    images = {
        "FLAIR_N4_noneck": "scan",
        "IXI048 T1 (2 mm) + anomalies": "scan",  # a playground scan, saved and reopened
        "brain_T1map": "scan",  # a quantitative map is a scan
        "IXI048 anomaly (brain-t1-unet)": "anomaly map",
        "case7_anomaly_map": "anomaly map",
        "flair_heatmap": "anomaly map",
    }
    for name, role in images.items():
        assert role_from_name(name, is_labels=False) == role, name
