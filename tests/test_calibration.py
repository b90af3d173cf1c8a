"""A map model calibrated on healthy scans (issue 12): medood-eval --calibrate stores the
voxel threshold at a chosen healthy false-positive rate in the card, and every map is then
also read as millilitres flagged above it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import shared

HELD_OUT = ("IXI039", "IXI048")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A copy of brain-t1-unet calibrated at 1 % on two of its IXI training scans."""
    from napari_medood.cli import eval_main
    from napari_medood.models.checkpoint import Checkpoint

    root = tmp_path_factory.mktemp("calibration")
    model = root / "brain-t1-unet"
    shutil.copytree(Checkpoint.open("brain-t1-unet").folder, model)
    healthy = root / "healthy"
    healthy.mkdir()
    scans = sorted(
        p for p in shared("ixi-t1-2mm", "t1").glob("*.nii.gz") if p.name[:6] not in HELD_OUT
    )
    for scan in scans[:2]:
        shutil.copy(scan, healthy / scan.name)
    code = eval_main(
        [
            "--model",
            str(model),
            "--calibrate",
            "0.01",
            "--healthy",
            str(healthy),
            "--healthy-mask",
            str(shared("ixi-t1-2mm", "dlmuse")),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    return model, healthy


def test_the_calibrated_threshold_flags_the_stated_share_of_healthy_voxels(calibrated):
    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume
    from napari_medood.preprocessing.masks import load_mask

    model, healthy = calibrated
    entry = json.loads((model / "card.json").read_text())["calibration"]
    assert entry["healthy_voxel_fpr"] == 0.01 and len(entry["healthy_scans"]) == 2
    assert 0.009 <= entry["healthy_fpr_pooled"] <= 0.01
    assert "--calibrate 0.01" in entry["command"]
    # the weights are untouched: the copy still loads against its sha256
    detector = get_detector(str(model), device="cpu", gate=False)
    flagged, shares = [], []
    for scan in sorted(healthy.glob("*.nii.gz")):
        volume = read_volume(scan)
        mask_file = next(shared("ixi-t1-2mm", "dlmuse").glob(scan.name[:14] + "*"))
        mask = load_mask(mask_file, volume.grid)
        result = detector.predict(volume, mask)
        extras = result.extras["calibration"]
        assert extras["voxel_threshold"] == entry["voxel_threshold"]
        above = result.anomaly_map.data[mask] > entry["voxel_threshold"]
        shares.append(above.mean())
        voxel_ml = abs(np.linalg.det(volume.affine[:3, :3])) / 1000
        assert extras["flagged_ml"] == pytest.approx(above.sum() * voxel_ml, abs=1e-3)
        flagged.append(extras["flagged_ml"])
    # pooled over the two scans, 1 % of their brain voxels; each scan's own share near it
    assert flagged == pytest.approx(entry["healthy_flagged_ml"], abs=1e-3)
    assert all(0.002 < s < 0.03 for s in shares)


def test_a_healthy_brain_flags_less_than_the_same_brain_with_an_anomaly(calibrated):
    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume
    from napari_medood.preprocessing.masks import load_mask
    from napari_medood.synth.validation import make_outlier

    model, _ = calibrated
    detector = get_detector(str(model), device="cpu", gate=False)
    # a held-out subject, not one the threshold was calibrated on
    scan = next(p for p in shared("ixi-t1-2mm", "t1").glob("IXI039*"))
    volume = read_volume(scan)
    mask = load_mask(next(shared("ixi-t1-2mm", "dlmuse").glob("IXI039*")), volume.grid)
    plain = detector.predict(volume, mask).extras["calibration"]["flagged_ml"]
    corrupted, label, _ = make_outlier(
        volume.data.astype(np.float32), "uniform_noise", 4, foreground=mask, radius=6
    )
    anomalous = detector.predict(volume.with_data(corrupted), mask)
    flagged = anomalous.extras["calibration"]["flagged_ml"]
    implanted_ml = label.sum() * abs(np.linalg.det(volume.affine[:3, :3])) / 1000
    assert flagged > plain + 0.25 * implanted_ml


def test_the_calibrated_sample_score_is_the_flagged_volume_relative_to_healthy(calibrated):
    from napari_medood.detectors import get_detector, topk_mean
    from napari_medood.io import read_volume
    from napari_medood.preprocessing.masks import load_mask
    from napari_medood.synth.validation import make_outlier

    model, _ = calibrated
    entry = json.loads((model / "card.json").read_text())["calibration"]
    assert entry["sample_score"] == "relative_flagged_volume"
    assert entry["made_with"] == {"tta": None, "variant": None, "mask": "given"}
    healthy_ml = float(np.mean(entry["healthy_flagged_ml"]))
    detector = get_detector(str(model), device="cpu", gate=False)
    assert "relative to healthy" in detector.describe_score().description
    scan = next(p for p in shared("ixi-t1-2mm", "t1").glob("IXI048*"))
    volume = read_volume(scan)
    mask = load_mask(next(shared("ixi-t1-2mm", "dlmuse").glob("IXI048*")), volume.grid)
    scores = []
    for data in (
        volume.data,
        make_outlier(volume.data.astype(np.float32), "local_noise", 7, foreground=mask)[0],
    ):
        result = detector.predict(volume.with_data(data), mask)
        flagged = result.extras["calibration"]["flagged_ml"]
        assert result.score == pytest.approx(flagged / (flagged + healthy_ml), abs=1e-4)
        # the family's own score is kept beside it
        uncalibrated = result.extras["scores"]["uncalibrated"]
        assert uncalibrated == pytest.approx(topk_mean(result.anomaly_map.data, 100, mask))
        scores.append(result.score)
    assert 0.0 <= scores[0] < scores[1] <= 1.0


def test_calibration_refuses_what_it_cannot_write(tmp_path):
    from napari_medood.cli import eval_main

    healthy = tmp_path / "healthy"
    healthy.mkdir()
    # a shipped model by name is not a folder whose card can be changed
    assert (
        eval_main(["--model", "brain-t1-unet", "--calibrate", "0.01", "--healthy", str(healthy)])
        != 0
    )
    # a calibration without healthy scans
    assert eval_main(["--model", str(tmp_path), "--calibrate", "0.01"]) != 0


def test_an_uncalibrated_model_adds_no_calibration():
    from napari_medood.detectors.calibration import calibration_extras, flagged_ml

    assert calibration_extras({"name": "x"}, np.zeros((2, 2, 2)), np.eye(4), None) is None
    values = np.zeros((4, 4, 4), np.float32)
    values[0, 0, :2] = 0.9
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    assert flagged_ml(values, affine, 0.5) == pytest.approx(2 * 8 / 1000)
    mask = np.zeros_like(values, dtype=bool)
    mask[0, 0, 0] = True
    assert flagged_ml(values, affine, 0.5, mask) == pytest.approx(8 / 1000)


def test_the_calibrated_score_needs_its_name_and_a_healthy_scale():
    from napari_medood.detectors.calibration import calibration_extras

    ones = np.ones((2, 2, 2))
    card = {"calibration": {"voxel_threshold": 0.5, "healthy_flagged_ml": [1.0, 3.0]}}
    extras = calibration_extras(card, ones, np.eye(4), None)
    assert extras["flagged_ml"] == pytest.approx(0.008) and "sample_score" not in extras
    assert extras["flagged_share"] == 1.0
    card["calibration"]["sample_score"] = "relative_flagged_volume"
    extras = calibration_extras(card, ones, np.eye(4), None)
    assert extras["sample_score"] == pytest.approx(0.008 / (0.008 + 2.0))
    assert calibration_extras(card, 0 * ones, np.eye(4), None)["sample_score"] == 0
    # healthy scans that flagged nothing give no scale: no calibrated score
    card["calibration"]["healthy_flagged_ml"] = [0.0, 0.0]
    assert "sample_score" not in calibration_extras(card, ones, np.eye(4), None)


def test_a_calibration_reads_only_maps_made_as_it_was_measured(calibrated):
    """Measured without test-time augmentation and inside brain masks: a TTA map, or one
    read in the scan's own foreground mask, is not read against it."""
    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume
    from napari_medood.preprocessing.masks import load_mask

    model, _ = calibrated
    scan = next(p for p in shared("ixi-t1-2mm", "t1").glob("IXI039*"))
    volume = read_volume(scan)
    mask = load_mask(next(shared("ixi-t1-2mm", "dlmuse").glob("IXI039*")), volume.grid)
    plain = get_detector(str(model), device="cpu", gate=False)
    result = plain.predict(volume, mask)
    assert "calibration" in result.extras
    assert "calibration" not in plain.predict(volume).extras  # no mask given
    flipped = get_detector(str(model), device="cpu", gate=False, tta=True).predict(volume, mask)
    assert "calibration" not in flipped.extras and "uncalibrated" not in flipped.extras["scores"]
    # an ensemble's averaged map is not what its members were calibrated on
    pair = get_detector(f"{model},{model}", device="cpu", gate=False)
    both = pair.predict(volume, mask)
    assert "calibration" not in both.extras
    assert both.score == pytest.approx(result.extras["scores"]["uncalibrated"], abs=1e-5)


def test_calibrating_needs_masks_for_all_healthy_scans_or_none(tmp_path):
    from napari_medood.detectors import get_detector
    from napari_medood.errors import MedoodError
    from napari_medood.evaluation.calibration import calibrate_on_healthy
    from napari_medood.io.cohort import Case

    scans = sorted(shared("ixi-t1-2mm", "t1").glob("*.nii.gz"))[:2]
    masks = sorted(shared("ixi-t1-2mm", "dlmuse").glob("*.nii.gz"))[:2]
    cases = [Case(scans[0].name, scans[0], masks[0]), Case(scans[1].name, scans[1], None)]
    with pytest.raises(MedoodError, match="for every healthy scan or for none"):
        calibrate_on_healthy(get_detector("intensity"), cases)


def test_a_map_far_wider_than_on_healthy_scans_carries_a_note():
    """brain-t1-unet, calibrated on 2 mm whole-head IXI T1, on a 1 mm skull-stripped MNI T1 of
    an MS patient: most of the brain lies above its threshold, and the result says why that
    is more likely the scan than the disease."""
    from napari_medood.detectors import get_detector
    from napari_medood.detectors.calibration import WIDESPREAD, widespread_note
    from napari_medood.io import read_volume

    detector = get_detector("brain-t1-unet", device="cpu", gate=False)
    scan = read_volume(
        shared("open-ms-lesjak-mni", "patient07")
        / "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
    )
    brain = scan.data > 0
    result = detector.predict(scan, brain)
    calibration = result.extras["calibration"]
    share = np.mean(result.anomaly_map.data[brain] > calibration["voxel_threshold"])
    assert calibration["flagged_share"] == pytest.approx(share, abs=1e-4)
    assert share >= WIDESPREAD * calibration["healthy_voxel_fpr"]
    note = next(n for n in result.notes if "calibrated threshold" in n)
    assert f"{100 * share:.0f} % of the brain" in note and "medood-eval --calibrate" in note
    # at the healthy share, or with no calibration, nothing is said
    assert widespread_note({**calibration, "flagged_share": 0.01}) is None
    assert widespread_note(None) is None
