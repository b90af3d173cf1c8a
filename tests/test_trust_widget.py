"""The trust gate in napari: its verdict in the Detect panel before the map, and the
"Is this scan in distribution?" panel (issue 11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import shared
from helpers import controls_without_a_tooltip

pytestmark = pytest.mark.gui
PLUGIN = "napari-medood"
FLAIR = "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"


def wait(qtbot, widget, timeout=180_000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def test_detect_shows_the_gate_verdict_on_the_sample_t1_and_no_warning(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    scan, mask = viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Detect anomalies")
    widget.device_choice.value = "cpu"
    assert widget.model_choice.value == "brain-any"  # the default, and its gate
    assert "trust gate brain-any-gate" in widget.card_label.text()
    assert widget.gate_check.isVisibleTo(widget) and widget.gate_check.isChecked()
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    report = widget.trust_report
    assert report is not None and report.in_distribution
    assert widget.trust_view.isVisibleTo(widget)
    assert widget.trust_view.verdict.text().startswith("in distribution:")
    assert "percentile of healthy IXI brains, T1 and random" in widget.trust_view.verdict.text()
    assert widget.notes == ()  # nothing to warn about
    assert widget.map_layer is not None
    assert widget.last_result.extras["trust"] is report


def test_detect_warns_on_a_ct_before_its_map(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    (ct,) = viewer.open(
        str(shared("totalsegmentator-example", "example_ct_sm.nii.gz")), plugin=PLUGIN
    )
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Detect anomalies")
    widget.device_choice.value = "cpu"
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    report = widget.trust_report
    assert report is not None and not report.in_distribution
    assert widget.trust_view.verdict.text().startswith("NOT like the training data")
    assert "#ffb347" in widget.trust_view.verdict.styleSheet()
    assert any(note.startswith("NOT like the training data") for note in widget.notes)
    # the other notes (a CT, no brain mask) are listed; the verdict is not repeated there
    assert widget.notes_label.isVisibleTo(widget)
    assert "Hounsfield" in widget.notes_label.text()
    assert "NOT like the training data" not in widget.notes_label.text()
    assert widget.map_layer is not None  # the map is still there to read, under the warning


@pytest.mark.slow  # the shipped gate's ranking of a FLAIR
def test_the_verdict_on_an_ms_flair_comes_before_the_map_and_ranks_below_the_sample(
    make_napari_viewer, qtbot
):
    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume
    from napari_medood.preprocessing.masks import load_mask

    samples = Path(__file__).resolve().parents[1] / "src" / "napari_medood" / "samples"
    sample = read_volume(samples / "ixi048_t1_2mm.nii.gz")
    sample_mask = load_mask(samples / "ixi048_brainmask_2mm.nii.gz", sample.grid)
    sample_report = get_detector("brain-t1-gate").predict(sample, sample_mask).extras["trust"]

    viewer = make_napari_viewer()
    (flair,) = viewer.open(str(shared("open-ms-lesjak-mni", "patient07", FLAIR)), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Detect anomalies")
    widget.device_choice.value = "cpu"
    widget.model_choice.value = "brain-t1-unet"  # the T1 model, checked by the T1 gate
    widget.run_button.click()
    # the verdict arrives while the map is still being computed; then cancel the map
    qtbot.waitUntil(lambda: widget.trust_report is not None, timeout=120_000)
    assert widget.map_layer is None and widget.trust_view.isVisibleTo(widget)
    assert widget.trust_report.percentile < sample_report.percentile
    widget.cancel()
    wait(qtbot, widget)
    assert widget.map_layer is None


def test_the_trust_panel_checks_any_layer_and_moves_its_threshold(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    scan, mask = viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Is this scan in distribution?")
    assert "brain-t1-gate" in widget.model_choice.choices
    widget.model_choice.value = "brain-t1-gate"
    assert set(widget.head_choice.choices) == {"flow", "mds", "knn"}
    assert widget.head_choice.value == "flow"
    before = scan.data.copy()
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    report = widget.last_report
    assert 0 < report.percentile < 100 and report.in_distribution
    assert widget.view.isVisibleTo(widget) and not widget.view.picture.pixmap().isNull()
    assert f"Score {report.score:.3f}" in widget.status.text()
    # a threshold above this scan's percentile turns the verdict, without a rerun
    widget.threshold_spin.value = min(99.9, report.percentile + 0.5)
    assert not widget.last_report.in_distribution
    assert widget.view.verdict.text().startswith("NOT like")
    np.testing.assert_array_equal(scan.data, before)  # the layer is never modified
    # a baseline head of the same model
    widget.head_choice.value = "mds"
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_report.head == "mds"


def test_the_trust_panel_starts_at_the_default_detectors_gate(make_napari_viewer):
    from napari_medood.detectors import default_model
    from napari_medood.models.checkpoint import read_card, resolve_model

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Is this scan in distribution?")
    gate = read_card(resolve_model(default_model()))["gate"]
    assert gate in widget.model_choice.choices
    assert widget.model_choice.value == gate != "adrenal3d-flow"
    assert "brain" in widget.description.text().lower()  # the gate's own card is shown


def test_every_control_of_the_trust_panel_says_what_it_does(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Is this scan in distribution?")
    assert controls_without_a_tooltip(widget) == []


def test_a_check_without_a_brain_mask_says_what_it_read(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    scan, mask = viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Is this scan in distribution?")
    widget.model_choice.value = "brain-t1-gate"
    assert widget.mask_combo.current_layer() is mask
    widget.mask_combo.setCurrentIndex(0)  # none: the sample is not skull-stripped
    assert widget.mask_combo.current_layer() is None
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.mask_note.isVisibleTo(widget)
    note = widget.mask_note.text()
    assert note.startswith("no brain mask was given: the check read an Otsu head mask")
    assert "a whole head is not what the reference brains were" in note
    without_mask = widget.last_report.percentile
    # with its brain mask the same scan ranks higher, and no note is shown
    widget.mask_combo.setCurrentIndex(widget.mask_combo.findData(mask))
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert not widget.mask_note.isVisibleTo(widget)
    assert widget.last_report.percentile > without_mask


def test_the_trust_panels_brain_mask_follows_the_scan(make_napari_viewer):
    """Two scans, each with its own mask on the same 120 x 120 x 90 shape (IXI048, the
    sample, with its brain mask; IXI012 with its DLMUSE parcellation): the mask picker moves
    to the chosen scan's own mask. Their grids differ (the scans lie elsewhere in the
    world), so same shape is not enough to call a mask a scan's own."""
    other_scan = shared("ixi-t1-2mm", "t1", "IXI012-HH-1211-T1_ds.nii.gz")
    other_mask = shared("ixi-t1-2mm", "dlmuse", "IXI012-HH-1211-T1_ds_DLMUSE.nii.gz")
    viewer = make_napari_viewer()
    scan, mask = viewer.open_sample(PLUGIN, "ixi_brain_t1")
    [scan_012] = viewer.open(str(other_scan), plugin=PLUGIN)
    [dlmuse_012] = viewer.open(str(other_mask), plugin=PLUGIN)
    assert scan.data.shape == scan_012.data.shape == dlmuse_012.data.shape
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Is this scan in distribution?")
    combo = widget.image_combo
    combo.setCurrentIndex(combo.findData(scan_012))
    assert widget.mask_combo.current_layer() is dlmuse_012
    combo.setCurrentIndex(combo.findData(scan))
    assert widget.mask_combo.current_layer() is mask
    combo.setCurrentIndex(combo.findData(scan_012))
    assert widget.mask_combo.current_layer() is dlmuse_012
