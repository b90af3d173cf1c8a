"""The fused family (``detectors.fused``) and the shipped brain-any: a lesion segmenter and an
anomaly U-Net, each read against its own calibration, fused into one map; on the command line,
in medood-eval and medood-compare, and in the Detect and Compare panels."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import REPO

SAMPLE = REPO / "src" / "napari_medood" / "samples"
PLUGIN = "napari-medood"


def test_the_exceedance_puts_each_members_calibrated_threshold_at_one_half():
    from napari_medood.detectors.fused import exceedance, fuse

    values = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    for threshold in (0.05, 0.3, 0.9):
        e = exceedance(values, threshold)
        assert e[0] == 0.0 and e[-1] == pytest.approx(1.0)
        assert np.all(np.diff(e) > 0)  # the order of a member's voxels is kept
        assert exceedance(np.array([threshold]), threshold)[0] == pytest.approx(0.5)
        assert np.all((e > 0.5) == (values > threshold))  # flagged where the member flags
    a, b = exceedance(values, 0.1), exceedance(values[::-1].copy(), 0.6)
    np.testing.assert_array_equal(fuse({"lesion": a, "anomaly": b}, "max"), np.maximum(a, b))
    np.testing.assert_allclose(fuse({"lesion": a, "anomaly": b}, "mean"), (a + b) / 2)
    np.testing.assert_array_equal(fuse({"lesion": a, "anomaly": b}, "lesion"), a)


@pytest.fixture(scope="module")
def lesioned():
    """The sample brain with five real lesion shapes implanted, brighter than their tissue
    (as in FLAIR), and its brain mask."""
    from napari_medood.io import read_volume
    from napari_medood.preprocessing.masks import load_mask
    from napari_medood.synth.lesion_implants import LesionImplanter

    volume = read_volume(SAMPLE / "ixi048_t1_2mm.nii.gz")
    brain = load_mask(SAMPLE / "ixi048_brainmask_2mm.nii.gz", volume.grid)
    implanter = LesionImplanter(polarity="brighter", spacing=tuple(volume.spacing))
    image, target, _ = implanter(
        np.asarray(volume.data, np.float32), brain, 5, np.random.default_rng(7)
    )
    return volume.with_data(image), brain, target > 0


@pytest.fixture(scope="module")
def fused(lesioned):
    from napari_medood.detectors import get_detector

    volume, brain, _ = lesioned
    detector = get_detector("brain-any", device="cpu")
    return detector, detector.predict(volume, brain)


def test_brain_any_names_its_members_by_sha256_and_fuses_their_calibrated_maps(fused, lesioned):
    from napari_medood.detectors import get_detector
    from napari_medood.detectors.fused import exceedance
    from napari_medood.models.checkpoint import Checkpoint

    detector, result = fused
    volume, brain, lesion = lesioned
    card = Checkpoint.open("brain-any").card
    assert card["detector"] == "fused" and card["rule"] == "mean"
    for entry in card["members"].values():
        member = Checkpoint.open(entry["model"]).card
        assert entry["sha256"] == member["weights"]["sha256"]
        assert entry["voxel_threshold"] == member["calibration"]["voxel_threshold"]
    assert {m["model"] for m in result.extras["members"].values()} == {
        "brain-any-seg",
        "brain-any-unet-gpu",
    }
    # the lesion member's map is the segmenter's own, as it maps the scan by itself
    alone = get_detector("brain-any-seg", device="cpu", gate=False).predict(volume, brain)
    maps = result.extras["maps"]
    np.testing.assert_allclose(maps["lesion"], alone.anomaly_map.data, atol=1e-6)
    # the fused map: the mean of the members' calibrated exceedances, inside the brain
    members = result.extras["members"]
    lesion_e = exceedance(maps["lesion"], members["lesion"]["threshold"])
    anomaly_e = exceedance(maps["anomaly"], members["anomaly"]["threshold"])
    expected = (lesion_e + anomaly_e) / 2
    expected[~brain] = 0
    np.testing.assert_allclose(result.anomaly_map.data, expected, atol=1e-6)
    np.testing.assert_array_equal(result.anomaly_map.affine, volume.affine)
    # both members' sample scores, each from its own calibration, beside the fused one
    scores = result.extras["scores"]
    assert 0 <= scores["lesion"] <= 1 and 0 <= scores["anomaly"] <= 1
    assert scores["lesion"] == members["lesion"]["score"]
    # the fused map is calibrated itself, and its gate ran before it
    assert result.extras["calibration"]["voxel_threshold"] == card["calibration"]["voxel_threshold"]
    assert result.extras["trust"] is not None and detector.gate_name == "brain-any-gate"
    # under the max rule, above 0.5 lies what either member flags at its own threshold
    fused_max = get_detector("brain-any", device="cpu", gate=False, variant="max")
    union = (maps["lesion"] > members["lesion"]["threshold"]) | (
        maps["anomaly"] > members["anomaly"]["threshold"]
    )
    by_max = fused_max.predict(volume, brain)
    np.testing.assert_array_equal(by_max.anomaly_map.data > 0.5, union & brain)
    assert "calibration" not in by_max.extras  # the card was calibrated for its own rule
    # most of the bright implanted lesions lie above the fused map's own threshold
    threshold = card["calibration"]["voxel_threshold"]
    assert np.mean(result.anomaly_map.data[lesion] > threshold) > 0.5


def test_a_fused_card_refuses_members_it_was_not_made_with(tmp_path):
    from napari_medood.detectors import get_detector
    from napari_medood.detectors.fused import fused_card
    from napari_medood.errors import MedoodError
    from napari_medood.models.checkpoint import Checkpoint

    folder = tmp_path / "fused"
    shutil.copytree(Checkpoint.open("brain-any").folder, folder)
    card = json.loads((folder / "card.json").read_text())
    card["members"]["lesion"]["sha256"] = "0" * 64
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(MedoodError, match=r"member lesion \(brain-any-seg\).*sha256"):
        get_detector(str(folder), device="cpu")
    gate = Checkpoint.open("brain-any-gate").card["weights"]["sha256"]
    card["members"]["lesion"] = {"model": "brain-any-gate", "sha256": gate}
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(MedoodError, match=r"member lesion \(brain-any-gate\) gives no map"):
        get_detector(str(folder), device="cpu")
    card["members"]["lesion"]["model"] = "no-such-model"
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(MedoodError, match=r"member lesion \(no-such-model\)"):
        get_detector(str(folder), device="cpu")
    card["members"] = {}
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(MedoodError, match="names its members"):
        get_detector(str(folder), device="cpu")
    # a member without a calibration has no threshold to be read against
    with pytest.raises(MedoodError, match=r"brain-t1-seg.*no calibration"):
        fused_card("x", {"lesion": "brain-t1-seg", "anomaly": "brain-any-unet-gpu"})
    with pytest.raises(MedoodError, match="not ensembled"):
        get_detector("brain-any,brain-any", device="cpu")
    with pytest.raises(MedoodError, match="variant"):
        get_detector("brain-any", device="cpu", variant="median")


def test_brain_any_from_medood_predict_eval_and_compare(tmp_path, lesioned, capsys):
    import nibabel as nib

    from napari_medood.cli import compare_main, eval_main, predict_main
    from napari_medood.io.writers import write_nifti

    volume, brain, lesion = lesioned
    scan = write_nifti(volume, tmp_path / "lesioned.nii.gz")
    mask = write_nifti(volume.with_data(brain.astype(np.uint8)), tmp_path / "m.nii.gz", "labels")
    label = write_nifti(volume.with_data(lesion.astype(np.uint8)), tmp_path / "l.nii.gz", "labels")
    out = tmp_path / "maps"
    argv = ["--model", "brain-any", "--device", "cpu", "--mask", str(mask), str(scan), str(out)]
    assert predict_main(argv) == 0
    written = nib.load(out / "lesioned.nii.gz").get_fdata()
    assert written.shape == brain.shape and written.min() >= 0 and written.max() <= 1
    assert written[lesion].mean() > written[brain & ~lesion].mean()
    table = tmp_path / "cohort.csv"
    table.write_text(f"Path,Mask,Label\n{scan},{mask},{label}\n")
    report = tmp_path / "report"
    argv = ["--model", "brain-any", "--device", "cpu", "--out", str(report), str(table)]
    assert eval_main(argv) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["pixel"]["ap"] > 0.1
    capsys.readouterr()
    argv = [str(scan), "--models", "brain-any,intensity", "--mask", str(mask), "--device", "cpu"]
    assert compare_main(argv) == 0
    assert "brain-any" in capsys.readouterr().out


@pytest.mark.gui
def test_the_detect_panel_shows_both_members_as_layers_and_their_scores(make_napari_viewer, qtbot):
    from napari_medood._napari._roles import ANOMALY_MAP, role_of

    viewer = make_napari_viewer()
    scan, mask = viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Detect anomalies")
    widget.device_choice.value = "cpu"
    widget.model_choice.value = "brain-any"
    text = widget.card_label.text()
    assert "fuses (mean) lesion brain-any-seg and anomaly brain-any-unet-gpu" in text
    assert "calibrated threshold" in text
    reports = []
    original = widget._progress
    widget._progress = lambda report: (reports.append(report), original(report))
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=180_000)
    assert widget.last_error is None, widget.last_error
    # progress: each member's own stages, named by the member, one after the other
    messages = [m for _, _, m in reports]
    seg = [i for i, m in enumerate(messages) if m.startswith("brain-any-seg (1 of 2): windows")]
    unet = [
        i for i, m in enumerate(messages) if m.startswith("brain-any-unet-gpu (2 of 2): windows")
    ]
    assert seg and unet and max(seg) < min(unet)
    assert any(m.startswith("fusing the members' maps (mean)") for m in messages)
    members = {layer.name: layer for layer in viewer.layers if layer.name.startswith("brain-any-")}
    assert set(members) == {
        f"brain-any-seg (lesion): {scan.name}",
        f"brain-any-unet-gpu (anomaly): {scan.name}",
    }
    for layer in members.values():
        assert role_of(layer) == ANOMALY_MAP and not layer.visible
        assert layer.data.shape == scan.data.shape
        np.testing.assert_allclose(layer.scale, scan.scale)
    status = widget.status.text()
    assert "lesion (brain-any-seg):" in status and "anomaly (brain-any-unet-gpu):" in status


@pytest.mark.gui
def test_the_compare_panel_sets_brain_any_against_a_baseline(make_napari_viewer, qtbot):
    from napari_medood._napari._layers import to_display
    from napari_medood.detectors import get_detector
    from napari_medood.evaluation.compare import map_models

    assert "brain-any" in map_models()
    viewer = make_napari_viewer()
    scan, mask = viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare two models")
    widget.device_choice.value = "cpu"
    widget.model_a_choice.value = "brain-any"
    widget.model_b_choice.value = "intensity"
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=180_000)
    assert widget.last_error is None, widget.last_error
    # its layers name the scan first
    [shown] = [layer for layer in viewer.layers if layer.name == f"{scan.name} brain-any map"]
    # the fused model's own map of the scan, as napari shows the scan
    from napari_medood.io import read_volume
    from napari_medood.preprocessing.masks import load_mask

    volume = read_volume(SAMPLE / "ixi048_t1_2mm.nii.gz")
    brain = load_mask(SAMPLE / "ixi048_brainmask_2mm.nii.gz", volume.grid)
    own = get_detector("brain-any", device="cpu", extra_maps=False).predict(volume, brain)
    np.testing.assert_allclose(shown.data, to_display(own.anomaly_map)[0], atol=1e-6)
    assert "brain-any" in widget.summary_label.text()
